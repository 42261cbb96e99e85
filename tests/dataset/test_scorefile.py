"""Score files: missing or non-finite CAS values are refused with a message naming the file and the column."""

import pytest


def _score_file(path, cas, keys=("s0000", "s0001", "s0002")):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": list(keys), "label": [0, 1, 0], "cas": cas}), path)
    return path


@pytest.mark.parametrize("cas, shown", [
    ([1.0, float("nan"), 2.0], "nan"),
    (("int-null", [1, None, 3]), "null"),
    ([1.0, 2.0, float("inf")], "inf"),
])
def test_read_scores_refuses_missing_or_non_finite_cas(tmp_path, cas, shown):
    import pyarrow as pa

    from fastcas.dataset.scorefile import read_scores

    if isinstance(cas, tuple):
        cas = pa.array(cas[1], pa.int64())
    f = _score_file(tmp_path / "s.parquet", cas)
    key = "s0002" if shown == "inf" else "s0001"
    with pytest.raises(ValueError, match=rf"s\.parquet: .*cas.* first at key '{key}' \(cas = {shown}\)"):
        read_scores(f)
