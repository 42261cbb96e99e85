"""Score files: missing or non-finite CAS values are refused with a message naming the file and the column."""
import io
from pathlib import Path

import numpy as np
import pytest

from fastcas.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _gradient16(h=48, w=64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    # 8000..56000: most of the 16-bit range, but not all of it, so min-max stretching is caught too
    return (8000 + (xx * 1000 + yy * 300) % 48001).astype(np.uint16)


def _decode(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float64)


def _score_file(path, cas, keys=("s0000", "s0001", "s0002")):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": list(keys), "label": [0, 1, 0], "cas": cas}), path)
    return path


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def _config(argv):
    import argparse

    from fastcas.cli import train as C

    p = argparse.ArgumentParser()
    C.add_arguments(p)
    return C.config_from_args(p.parse_args(argv))


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
