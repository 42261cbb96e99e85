"""CLI messages: --device cuda without a GPU is a CLI error, help texts list choices and explain flags, only rank 0 prints the final line."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastcas.train.models import MODELS

from fastcas.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("cmd", ["train", "bench", "score"])
def test_device_cuda_without_gpu_is_a_cli_error(tmp_path, capsys, cmd, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, also on one
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(2, 2), shard_size=8)
    args = {"train": ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run")],
            "bench": ["bench", str(tmp_path / "ds")],
            "score": ["score", str(tmp_path / "ds"), "--out", str(tmp_path / "s.parquet")]}[cmd]
    assert main(args + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastcas {cmd}: error: --device cuda: no CUDA GPU is visible"), err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_help_lists_choices_and_explains_flags(capsys):
    pytest.importorskip("torch")
    text = _help(capsys, "train")
    for choice in ("--model {" + ",".join(MODELS) + "}", "--weights {uniform,cas,cmo,",
                   "--mix {none,cutmix,fmix,saliencymix,mixup}", "--loss-weights {none,inverse,effective,upweight-low}"):
        assert choice in text, choice
    for flag, words in (("--many MANY", "more than MANY training images"), ("--few FEW", "fewer than FEW"),
                        ("--mix-start MIX_START", "no mixing before this epoch"),
                        ("--drw-epoch DRW_EPOCH", "deferred re-weighting"), ("--overwrite", "replace an earlier run")):
        assert re.search(re.escape(flag) + r" [^-]*" + re.escape(words), text), flag


def test_make_lt_and_sample_flags_have_help(capsys):
    text = _help(capsys, "make-lt")
    for flag in ("--seed SEED", "--shard-size SHARD_SIZE", "--prefix PREFIX", "--overwrite"):
        assert re.search(re.escape(flag) + r" [a-z(]", text), flag
    text = _help(capsys, "sample")
    assert re.search(r"--mode \{exact,streaming\} exact: .* streaming: ", text)
    assert "integer class id" in _help(capsys, "shard")


def test_make_report_help_does_not_regenerate(tmp_path):
    before = (ROOT / "BENCHMARKS.md").stat().st_mtime_ns if (ROOT / "BENCHMARKS.md").exists() else None
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_report.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("usage:") and "wrote" not in p.stdout
    after = (ROOT / "BENCHMARKS.md").stat().st_mtime_ns if (ROOT / "BENCHMARKS.md").exists() else None
    assert before == after


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_only_rank_zero_prints_the_final_line(monkeypatch, capsys, tmp_path, rank, printed):
    pytest.importorskip("torch")
    import fastcas.train.loop as T

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(T, "train", lambda cfg, **kw: {"report": {"top1": 0.123456}, "global_step": 2})
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert ("final top-1 0.1235" in out) == printed, out


def test_train_and_index_take_remote_timeouts_and_retries(capsys):
    """--connect-timeout/--read-timeout/--retries reach the loaders' RemoteOptions; bad values are refused."""
    from fastcas.cli import build_parser
    from fastcas.cli.train import config_from_args
    from fastcas.dataset.fetch import RemoteOptions

    argv = ["train", "ds", "--connect-timeout", "2.5", "--read-timeout", "7", "--retries", "1"]
    cfg = config_from_args(build_parser(argv).parse_args(argv))
    assert cfg.remote() == RemoteOptions(connect_timeout=2.5, read_timeout=7.0, retries=1)
    assert main(["train", "ds", "--retries", "-1"]) == 2
    assert "retries must be an integer >= 0, got -1" in capsys.readouterr().err
    text = _help(capsys, "index")
    assert "--connect-timeout" in text and "--read-timeout" in text and "--retries" in text
