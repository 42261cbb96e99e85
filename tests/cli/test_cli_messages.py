"""CLI messages: --device cuda without a GPU is a CLI error, help texts list choices and explain flags, only rank 0
prints the final line; issue 34's messages say what to do (tar paths, --scores, recipes, option names, --label-key,
--max-steps, broken pipes, bench goals)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastcas.cli import main
from fastcas.train.models import MODELS

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
    for choice in (
        "--model {" + ",".join(MODELS) + "}",
        "--weights {uniform,cas,cmo,",
        "--mix {none,cutmix,fmix,saliencymix,mixup}",
        "--loss-weights {none,inverse,effective,upweight-low}",
    ):
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


# -- issue 34, item 8: messages that say what to do ------------------------------------------------
def test_a_tar_given_as_the_dataset_says_to_index_it(tmp_path, capsys):
    from fastcas.dataset.reader import ShardReader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(2, 2), shard_size=8)
    tar = next((tmp_path / "ds").glob("*.tar"))
    with pytest.raises(ValueError, match=r"is a tar file, not a fastcas dataset: .* fastcas index .*\.tar --out DIR"):
        ShardReader(tar)
    assert main(["info", str(tar)]) == 2
    assert "fastcas index" in capsys.readouterr().err
    jpg = tmp_path / "x.jpg"
    jpg.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(128, 256)) * 40)
    with pytest.raises(ValueError, match=r"not a fastcas manifest \(binary, not JSON\)"):
        ShardReader(jpg)


@pytest.mark.parametrize("cmd", ["train", "bench", "sample"])
def test_cas_weights_without_scores_name_the_cli_flag(tmp_path, capsys, cmd):
    pytest.importorskip("torch")
    args = {"train": ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--weights", "cas", "--device", "cpu"],
            "bench": ["bench", str(tmp_path), "--weights", "cas", "--device", "cpu"],
            "sample": ["sample", str(tmp_path), "--weights", "cas", "--out", str(tmp_path / "idx.npy")]}[cmd]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--weights cas needs a CAS score file: add --scores FILE" in err and "scores=" not in err, err


def test_unknown_recipe_lists_the_packaged_ones(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["train", str(tmp_path), "--recipe", "imagenet-lt", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    from fastcas.cli.train import RECIPES

    listed = ", ".join(sorted(x.stem for x in RECIPES.glob("*.json")))
    assert "cifar100-lt-cmo" in listed and "imagenet-lt-cmo" in listed
    assert f"unknown recipe 'imagenet-lt': not a file, and not one of the packaged recipes: {listed}" in err, err


def test_dataloader_option_names_point_to_fastcas_ones(tmp_path):
    from fastcas.loading.loader import Loader

    with pytest.raises(TypeError, match=r"unknown option 'num_workers' \(fastcas: py_workers .*num_threads"):
        Loader(tmp_path, 2, num_workers=4, device="cpu")
    with pytest.raises(TypeError, match=r"unknown options 'drop_last' \(fastcas: last_batch=.*\), 'image_sise' "
                                        r"\(fastcas: image_size\); valid options: "):
        Loader(tmp_path, 2, drop_last=True, image_sise=32, device="cpu")


def test_json_labelled_tars_hint_at_label_key(tmp_path):
    import webdataset as wds

    from fastcas.dataset.indexer import IndexConfig, index_dataset
    from tests.helpers import jpeg_bytes

    (tmp_path / "wds").mkdir()
    with wds.TarWriter(str(tmp_path / "wds" / "x.tar")) as w:
        w.write({"__key__": "k0", "jpg": jpeg_bytes(0), "json": {"caption": "a cat", "class_id": 3}})
    with pytest.raises(ValueError, match=r"no label \(cls\); it has a \.json member: labels in JSON need "
                                         r"--label-key json:class_id"):
        index_dataset([str(tmp_path / "wds")], tmp_path / "idx", IndexConfig())


def test_max_steps_with_val_says_why_no_evaluation_ran(monkeypatch, capsys, tmp_path):
    pytest.importorskip("torch")
    import fastcas.train.loop as T

    monkeypatch.setattr(T, "train", lambda cfg, **kw: {"report": None, "global_step": 3})
    assert main(["train", str(tmp_path), "--val", str(tmp_path), "--max-steps", "3", "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "no --val" not in out and "no evaluation ran (--max-steps 3 stopped the run before the end of an " \
                                      "epoch" in out, out


def test_info_into_a_closed_pipe_ends_quietly(tmp_path):
    """`fastcas info DS | head`: the reader is gone before the first write; no BrokenPipeError traceback."""
    import os

    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(2, 2), shard_size=8)
    r, w = os.pipe()
    os.close(r)  # the reader has left: every write gets EPIPE
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "fastcas", "info", str(tmp_path / "ds")], stdout=w,
                       stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    os.close(w)
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, p.stderr
    assert p.returncode == 141


def test_bench_prints_no_internal_goal_lines(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    import json

    import fastcas.tools.bench as B

    row = {"loader": "fastcas", "images_per_s": 10.0, "min": 9.0, "max": 11.0, "ratio_vs_torchvision": 0.5,
           "train_thread_ms_per_batch": 1.0, "paired_ratio_vs_fastcas": 1.0, "cpu_ms_per_image": 2.0,
           "paired_cpu_ratio_vs_fastcas": 1.0, "paired_ratio_vs_dali_plain": None}
    monkeypatch.setattr(B, "run_bench", lambda cfg: {"rows": [row], "device": "cpu", "skipped": {}, "checks": {},
                                                     "load_average": None, "others_cores": None})
    monkeypatch.setattr(B, "goals", lambda rows, dev, mix: [{"goal": "fastcas >= 1.5x torchvision", "value": 0.5,
                                                             "met": False}])
    assert main(["bench", str(tmp_path), "--device", "cpu", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "goal" not in out and "MISSED" not in out, out
    assert json.loads((tmp_path / "b.json").read_text())["goals"][0]["met"] is False
