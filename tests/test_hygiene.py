"""Issue 17, data and messages: 16-bit images are scaled (not clipped), NaN / null scores are
refused naming file and key, CLIP tags fail fast offline, `--device cuda` without a GPU is a
clean CLI error, help texts, the CMO recipe clamp, README names what is stored. Every test
here runs in seconds on a 2-core CPU (no training; run directories: tests/test_rundir.py)."""
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastcas.cli import main

ROOT = Path(__file__).resolve().parent.parent


# -- item 8: high-bit-depth images -------------------------------------------------------------

def _gradient16(h=48, w=64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    # 8000..56000: most of the 16-bit range, but not all of it, so min-max stretching is caught too
    return (8000 + (xx * 1000 + yy * 300) % 48001).astype(np.uint16)


def _decode(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float64)


def test_16bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    from PIL import Image

    from fastcas.ingest import load_image_bytes

    a = _gradient16()
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    got = _decode(load_image_bytes(tmp_path / "g16.png"))
    want = a / 257.0
    assert got.shape == a.shape
    # JPEG q95 on a smooth gradient: within a few grey levels (clipping gives ~255 everywhere)
    assert np.abs(got - want).mean() < 2.0 and np.percentile(np.abs(got - want), 99) < 8
    assert got.std() > 50


@pytest.mark.parametrize("kind", ["I", "F", "F-wide"])
def test_32bit_int_and_float_tiffs_are_scaled(tmp_path, kind):
    from PIL import Image

    from fastcas.ingest import load_image_bytes

    a = _gradient16()
    if kind == "I":
        arr, want = a.astype(np.int32), a / 257.0
    elif kind == "F":
        arr, want = (a / 65535.0).astype(np.float32), a / 257.0
    else:  # floats outside [0, 1]: min-max
        arr = (a.astype(np.float32) - 30000) * 3.0
        want = (arr - arr.min()) * 255.0 / (arr.max() - arr.min())
    Image.fromarray(arr).save(tmp_path / "x.tif")
    assert Image.open(tmp_path / "x.tif").mode in ("I", "F")
    got = _decode(load_image_bytes(tmp_path / "x.tif"))
    assert np.abs(got - want).mean() < 2.0


def test_shard_cli_stores_a_scaled_16bit_png(tmp_path):
    from PIL import Image

    from fastcas.reader import ShardReader

    (tmp_path / "src" / "c0").mkdir(parents=True)
    a = _gradient16()
    Image.fromarray(a).save(tmp_path / "src" / "c0" / "g.png")
    assert main(["shard", str(tmp_path / "src"), str(tmp_path / "ds")]) == 0
    r = ShardReader(tmp_path / "ds")
    got = _decode(bytes(r[0][1]))
    assert np.abs(got - a / 257.0).mean() < 2.0


# -- item 9: NaN / null scores -----------------------------------------------------------------

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

    from fastcas.scores import read_scores

    if isinstance(cas, tuple):
        cas = pa.array(cas[1], pa.int64())
    f = _score_file(tmp_path / "s.parquet", cas)
    key = "s0002" if shown == "inf" else "s0001"
    with pytest.raises(ValueError, match=rf"s\.parquet: .*cas.* first at key '{key}' \(cas = {shown}\)"):
        read_scores(f)


def test_training_scores_with_nan_are_refused_by_the_loader(tmp_path):
    pytest.importorskip("nvidia.dali")
    from fastcas.loader import Loader
    from fastcas.reader import ShardReader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(2, 1), shard_size=8)
    keys = ShardReader(tmp_path / "ds").keys
    f = _score_file(tmp_path / "train.parquet", [1.0, float("nan"), 3.0], keys)
    with pytest.raises(ValueError, match=rf"train\.parquet: .* first at key '{keys[1]}'"):
        Loader(tmp_path / "ds", 2, weights="cas", scores=str(f), device="cpu", py_workers=0)


def test_val_scores_with_null_are_refused_by_train(tmp_path, capsys):
    """`fastcas train --val-scores` with a null CAS stops with the CLI error, before training."""
    pytest.importorskip("nvidia.dali")
    import pyarrow as pa

    from fastcas.reader import ShardReader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "train", counts=(4, 4), shard_size=8, size=(24, 20))
    make_dataset(tmp_path / "val", counts=(2, 1), shard_size=8, size=(24, 20), seed=2)
    keys = ShardReader(tmp_path / "val").keys
    f = _score_file(tmp_path / "val.parquet", pa.array([1, None, 3], pa.int64()), keys)
    rc = main(["train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--val-scores", str(f),
               "--out", str(tmp_path / "run"), "--device", "cpu", "--py-workers", "0", "--batch-size", "4",
               "--image-size", "16", "--epochs", "1", "--no-amp"])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(rf"fastcas train: error: .*val\.parquet: .*first at key '{keys[1]}' \(cas = null\)",
                                 err), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# -- item 14: offline CLIP tags, --device cuda without a GPU -----------------------------------

def test_clip_pretrained_tag_offline_fails_fast_naming_the_tag(monkeypatch):
    pytest.importorskip("open_clip")
    import huggingface_hub

    from fastcas.attributes import clip

    monkeypatch.setattr(clip, "_host_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    t = time.time()
    with pytest.raises(ValueError, match=r"ViT-B-32 pretrained='openai' are not in the local cache .*--weights FILE"):
        clip.ClipEncoder("ViT-B-32", "openai")
    assert time.time() - t < 10


def test_clip_download_failure_is_a_value_error_naming_the_tag(monkeypatch):
    """Reachable host but the download fails (proxy, 404, disk full): no traceback either."""
    open_clip = pytest.importorskip("open_clip")
    from fastcas.attributes import clip

    monkeypatch.setattr(clip, "check_pretrained_available", lambda model, tag: None)

    def boom(*a, **k):
        raise RuntimeError("HTTP 403 from the mirror")

    monkeypatch.setattr(open_clip, "create_model", boom)
    with pytest.raises(ValueError, match=r"pretrained='openai' could not be loaded: HTTP 403"):
        clip.ClipEncoder("ViT-B-32", "openai")


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


# -- item 16: help texts, prints ---------------------------------------------------------------

def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_train_help_lists_choices_and_explains_flags(capsys):
    pytest.importorskip("torch")
    text = _help(capsys, "train")
    for choice in ("--model {resnet32,resnet18,resnet50,resnext50}", "--weights {uniform,cas,cmo,",
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
    import fastcas.train as T

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(T, "train", lambda cfg, **kw: {"report": {"top1": 0.123456}, "global_step": 2})
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert ("final top-1 0.1235" in out) == printed, out


# -- item 17: CMO recipes with few epochs, README names ----------------------------------------

def _config(argv):
    import argparse

    from fastcas.commands import train as C

    p = argparse.ArgumentParser()
    C.add_arguments(p)
    return C.config_from_args(p.parse_args(argv))


def test_cmo_recipe_with_one_epoch_mixes_every_epoch_with_a_warning(capsys):
    pytest.importorskip("torch")
    cfg = _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "1"])
    assert (cfg.mix_start, cfg.mix_end, cfg.mixing_at(0)) == (0, 0, True)
    assert "warning: recipe cifar100-lt-cmo mixes only between epoch 3" in capsys.readouterr().err
    cfg = _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "6"])  # 3 + 3 = 6: no epoch left either
    assert (cfg.mix_start, cfg.mix_end) == (0, 0)
    cfg = _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "7"])  # one mixing epoch: kept
    assert (cfg.mix_start, cfg.mix_end) == (3, 3) and cfg.mixing_at(3)
    capsys.readouterr()
    with pytest.raises(ValueError, match="leave no epoch"):  # explicit flags are the user's choice
        _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "1", "--mix-start", "1"])


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
