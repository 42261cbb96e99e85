"""metrics.jsonl keeps one line per evaluated epoch, also when a run is killed between an
evaluation line and the checkpoint that follows it and is then resumed."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from fastcas.train.loop import write_metrics_line  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_a_repeated_epoch_replaces_its_line_and_drops_later_ones(tmp_path):
    p = tmp_path / "metrics.jsonl"
    for e in (0, 1, 2):
        write_metrics_line(p, {"epoch": e, "top1": e / 10})
    write_metrics_line(p, {"epoch": 1, "top1": 0.5})  # epoch 1 evaluated again after a resume
    assert [json.loads(x) for x in p.read_text().splitlines()] == [{"epoch": 0, "top1": 0.0}, {"epoch": 1, "top1": 0.5}]
    p.write_text(p.read_text() + '{"epoch": 2, "to')  # a torn line of an older writer
    write_metrics_line(p, {"epoch": 2, "top1": 0.2})
    assert [json.loads(x)["epoch"] for x in p.read_text().splitlines()] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.dali
def test_sigkill_right_after_an_evaluation_line_then_resume_lists_each_epoch_once(tmp_path):
    pytest.importorskip("nvidia.dali")
    make_dataset(tmp_path / "train", counts=(6, 5, 5), shard_size=16, size=(24, 20), seed=1)
    make_dataset(tmp_path / "val", counts=(2, 2, 2), shard_size=16, size=(24, 20), seed=2)
    args = ["train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--out", str(tmp_path / "run"),
            "--epochs", "2", "--batch-size", "8", "--image-size", "16", "--py-workers", "0", "--no-amp",
            "--device", "cpu", "--many", "5", "--few", "3", "--no-progress"]
    # kill the process the moment epoch 1's line is in metrics.jsonl, before its checkpoint
    script = ("import os, signal, sys\n"
              "import fastcas.train.loop as L\n"
              "w = L.write_metrics_line\n"
              "def kill(path, line):\n"
              "    w(path, line)\n"
              "    if line['epoch'] == 1:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "L.write_metrics_line = kill\n"
              "from fastcas.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    p = subprocess.run([sys.executable, "-m", "fastcas", *args, "--resume"], env=env, capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [0, 1]
