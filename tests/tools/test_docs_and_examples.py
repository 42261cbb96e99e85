"""README and examples: the benchmark commands name their stored results; the plain-loop example's --steps limits the whole run."""
import io
import re
import subprocess
import sys
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


def test_readme_bench_commands_name_the_stored_results():
    text = (ROOT / "README.md").read_text()
    named = re.findall(r"--(?:json|plot) (benchmarks/\S+)", text)
    assert len(named) >= 3
    for path in named:
        assert (ROOT / path).exists(), path
    stored = {p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks/results/cpu2").glob("loader-*.json")}
    assert stored <= set(named)


@pytest.mark.slow
@pytest.mark.dali
def test_plain_loop_steps_limit_the_whole_run_not_one_epoch(tmp_path):
    import os

    pytest.importorskip("nvidia.dali")
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(6, 6), shard_size=16)  # 12 samples, batch 8: one step an epoch
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "plain_loop.py"), str(tmp_path / "ds"), "--epochs", "3",
                        "--steps", "2", "--batch-size", "8", "--image-size", "32"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "trained 2 steps" in p.stdout, p.stdout
