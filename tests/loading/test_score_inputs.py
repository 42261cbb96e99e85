"""The Loader refuses training score files with NaN CAS values."""

import pytest


def _score_file(path, cas, keys=("s0000", "s0001", "s0002")):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": list(keys), "label": [0, 1, 0], "cas": cas}), path)
    return path


def test_training_scores_with_nan_are_refused_by_the_loader(tmp_path):
    pytest.importorskip("nvidia.dali")
    from fastcas.dataset.reader import ShardReader
    from fastcas.loading.loader import Loader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(2, 1), shard_size=8)
    keys = ShardReader(tmp_path / "ds").keys
    f = _score_file(tmp_path / "train.parquet", [1.0, float("nan"), 3.0], keys)
    with pytest.raises(ValueError, match=rf"train\.parquet: .* first at key '{keys[1]}'"):
        Loader(tmp_path / "ds", 2, weights="cas", scores=str(f), device="cpu", py_workers=0)
