"""The Loader refuses training score files with NaN CAS values."""
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
