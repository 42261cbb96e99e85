"""``fastcas selftest``: the command end to end on the CPU, and each check against a planted bug."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastcas import cli
from fastcas.core.rng import generator
from fastcas.mix import make_params
from fastcas.mix.reference import apply_numpy
from fastcas.tools.selftest.checks import Run, SelftestConfig, check_identical, check_keys_labels, check_mix_reference
from fastcas.tools.selftest.env import class_counts, hw_decoder, make_dataset
from fastcas.tools.selftest.gpu import (
    DECODER_MAD_LEVELS,
    check_decoder,
    check_host_sync,
    check_mix_params,
    classify_syncs,
    record_syncs,
    to_levels,
)

ROOT = Path(__file__).resolve().parents[2]
B, S = 4, 12


# ------------------------------------------------------------------ synthetic runs (no DALI)
def _images(seed):
    return generator(seed).normal(0, 1, (B, 3, S, S)).astype(np.float32)


def _call(kind, seed, labels=(0, 1, 2, 1)):
    p = make_params(kind, B, S, S, alpha=1.0, generator=generator(seed))
    bg, fg = _images(seed), _images(seed + 1)
    y = np.array(labels, np.int64)
    from fastcas.mix.api import soft_targets

    return {"params": p, "bg": bg, "fg": fg, "out": apply_numpy(p, bg, fg), "y_bg": y, "y_fg": y[::-1].copy(),
            "num_classes": 3, "label_smoothing": 0.0, "targets": soft_targets(p, y, y[::-1].copy(), 3)}


def _run(name="cutmix", kind="cutmix", device="cpu", steps=2):
    calls = [_call(kind, 10 * s) for s in range(steps)]
    return Run(name, device, [np.arange(2 * B) % 4], [c["out"] for c in calls], [c["targets"] for c in calls], calls)


def _reader():
    return SimpleNamespace(keys=[f"k{i}" for i in range(8)], labels=np.array([0, 1, 2, 1, 0, 1, 2, 1], np.int64))


def test_keys_labels_check_catches_a_wrong_label():
    run = _run()
    assert check_keys_labels(_reader(), {"cutmix": run}, "cpu").status == "PASS"
    run.calls[1]["y_bg"] = run.calls[1]["y_bg"].copy()
    run.calls[1]["y_bg"][2] = 0  # the loader delivered another sample's label
    c = check_keys_labels(_reader(), {"cutmix": run}, "cpu")
    assert c.status == "FAIL" and "step 1" in c.reason


def test_keys_labels_check_compares_keys_with_the_cpu_run():
    cpu, gpu = _run(), _run(device="cuda")
    assert check_keys_labels(_reader(), {"cutmix": gpu}, "gpu", {"cutmix": cpu}).status == "PASS"
    gpu.indices = [np.roll(gpu.indices[0], 1)]  # another draw order on the GPU
    assert check_keys_labels(_reader(), {"cutmix": gpu}, "gpu", {"cutmix": cpu}).status == "FAIL"


@pytest.mark.parametrize("kind", ["cutmix", "fmix"])
def test_mix_reference_check_catches_pixels_off_the_reference(kind):
    run = _run(kind, kind)
    assert check_mix_reference({kind: run}, "cpu").status == "PASS"
    out = run.calls[0]["out"].copy()
    if kind == "cutmix":  # off-by-one box: one more row pasted
        p = run.calls[0]["params"]
        i = int(np.argmax(p.boxes[:, 2] - p.boxes[:, 0]))
        y0, x0, y1, x1 = p.boxes[i]
        out[i, :, min(y1, S - 1), x0:x1] = run.calls[0]["fg"][i, :, min(y1, S - 1), x0:x1] + 1
    else:  # a blend 4 ulp off
        out = out + 4 * np.spacing(np.abs(out).max())
    run.calls[0]["out"] = out
    c = check_mix_reference({kind: run}, "cpu")
    assert c.status == "FAIL" and "step 0" in c.reason


def _ulps_off(call, ulps):
    """The call's output with pixel [0, 0, 0, 0] moved by ``ulps`` ulp of max(|bg|, |fg|) there."""
    out = call["out"].copy()
    scale = max(abs(call["bg"][0, 0, 0, 0]), abs(call["fg"][0, 0, 0, 0]))
    out[0, 0, 0, 0] += ulps * np.spacing(np.float32(scale))
    return out


def test_mix_reference_check_allows_one_ulp_on_blends_only():
    run = _run("fmix", "fmix")
    run.calls[0]["out"] = _ulps_off(run.calls[0], 1)  # one rounding step (FMA contraction): allowed
    assert check_mix_reference({"fmix": run}, "cpu").status == "PASS"
    run.calls[0]["out"] = _ulps_off(run.calls[0], 2)
    assert check_mix_reference({"fmix": run}, "cpu").status == "FAIL"
    box = _run()
    box.calls[0]["out"] = _ulps_off(box.calls[0], 1)  # a box paste is a copy: exact
    assert check_mix_reference({"cutmix": box}, "cpu").status == "FAIL"


def test_mix_reference_check_fails_without_mixing_calls():
    run = _run("fmix", "fmix")
    run.calls = []  # the loader stopped mixing through fastcas.mix: cannot be observed
    c = check_mix_reference({"fmix": run}, "cpu")
    assert c.status == "FAIL" and "fastcas.mix" in c.reason


def test_mix_reference_check_catches_wrong_targets():
    run = _run()
    run.calls[1]["targets"] = run.calls[1]["targets"][::-1].copy()
    c = check_mix_reference({"cutmix": run}, "cpu")
    assert c.status == "FAIL" and "targets" in c.reason


def test_determinism_check_catches_a_changed_image_target_or_parameter():
    a, b = _run(), _run()
    assert check_identical({"cutmix": a}, {"cutmix": b}, "cpu").status == "PASS"
    b.images[1] = np.nextafter(b.images[1], np.float32(np.inf))
    c = check_identical({"cutmix": a}, {"cutmix": b}, "cpu")
    assert c.status == "FAIL" and "images differ" in c.reason and c.numbers["max_abs_image_diff"] > 0
    b = _run()
    b.targets[0] = b.targets[0] + 1e-7
    assert "targets differ" in check_identical({"cutmix": a}, {"cutmix": b}, "cpu").reason
    b = _run()
    p = b.calls[0]["params"]
    b.calls[0]["params"] = type(p)(p.kind, p.height, p.width, p.lam + 1e-9, p.mixed, boxes=p.boxes, drawn=p.drawn)
    assert "parameters differ" in check_identical({"cutmix": a}, {"cutmix": b}, "cpu").reason


def test_decoder_check_bounds_the_mean_difference():
    cpu = Run("weighted", "cpu", [np.arange(B)], [_images(1)], [np.zeros(B, np.int64)], [])
    step = 1 / (255 * np.asarray([0.229, 0.224, 0.225], np.float32))[None, :, None, None]  # one level
    near = Run("weighted", "cuda", cpu.indices, [cpu.images[0] + 2 * step], cpu.targets, [])
    far = Run("weighted", "cuda", cpu.indices, [cpu.images[0] + (DECODER_MAD_LEVELS + 1) * step], cpu.targets, [])
    c = check_decoder({"weighted": near}, {"weighted": cpu})
    assert c.status == "PASS" and c.numbers["max_batch_mad_levels"] == pytest.approx(2, abs=1e-3)
    assert check_decoder({"weighted": far}, {"weighted": cpu}).status == "FAIL"
    np.testing.assert_allclose(to_levels(np.zeros((1, 3, 1, 1)))[0, :, 0, 0], [123.675, 116.28, 103.53])


def test_mix_params_check_catches_device_dependent_parameters():
    cpu, gpu = _run("fmix", "fmix"), _run("fmix", "fmix", device="cuda")
    assert check_mix_params({"fmix": gpu}, {"fmix": cpu}).status == "PASS"
    p = gpu.calls[1]["params"]
    masks = p.masks.copy()
    masks[0, 0, 0] = 1 - masks[0, 0, 0]  # a mask drawn from another RNG on the GPU
    gpu.calls[1]["params"] = type(p)(p.kind, p.height, p.width, p.lam, p.mixed, masks=masks, drawn=p.drawn)
    c = check_mix_params({"fmix": gpu}, {"fmix": cpu})
    assert c.status == "FAIL" and "step 1" in c.reason


def test_sync_classification_allows_only_the_listed_sites():
    rec = [SimpleNamespace(filename="/x/fastcas/mix/api.py", lineno=120),
           SimpleNamespace(filename="/x/fastcas/loader.py", lineno=200)]
    ok, bad = classify_syncs(rec, {"fastcas/mix/api.py": "label range check"})
    assert len(ok) == 1 and "label range" in ok[0]
    assert bad == ["/x/fastcas/loader.py:200"]
    assert classify_syncs(rec)[0] == []  # the loader's steady state allows none


def _sync_here():
    warnings.warn("called a synchronizing CUDA operation", UserWarning)  # what torch's "warn" mode raises


def test_sync_recorder_traces_each_sync_to_its_line_and_stack():
    with record_syncs() as rec:
        _sync_here()
        _sync_here()
        warnings.warn("something else")  # not a sync: ignored
    assert len(rec) == 2 and rec[0].filename == __file__
    assert any("_sync_here" in f for f in rec[0].stack) and any("test_sync_recorder" in f for f in rec[0].stack)
    assert classify_syncs(rec)[1] == [f"{__file__}:{rec[0].lineno}"] * 2


def test_host_sync_check_is_a_noop_with_reason_on_cpu():
    c = check_host_sync(None, "cpu", "cpu", SelftestConfig(device="cpu"))
    assert c.status == "SKIP" and "CPU" in c.reason


def test_hw_decoder_rule_follows_dali():
    assert hw_decoder(None)["available"] is None and "without a GPU" in hw_decoder(None)["reason"]
    assert hw_decoder({"name": "H100", "capability": "9.0"})["available"] is True
    assert hw_decoder({"name": "RTX 4090", "capability": "8.9"})["available"] is False


def test_selftest_dataset_is_long_tailed_and_reproducible(tmp_path):
    assert class_counts(240) == [124, 60, 30, 15, 7, 4] and sum(class_counts(31)) == 31
    with pytest.raises(ValueError, match="at least 24 samples"):
        class_counts(10)
    a, b = make_dataset(tmp_path / "a", 30, seed=3), make_dataset(tmp_path / "b", 30, seed=3)
    assert a["keys"] == b["keys"] and a["labels"] == b["labels"]
    assert [p.read_bytes() for p in sorted((tmp_path / "a").glob("*.tar"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "b").glob("*.tar"))]


def test_selftest_config_is_validated():
    with pytest.raises(ValueError, match="device must be"):
        SelftestConfig(device="gpu")
    with pytest.raises(ValueError, match="seconds must be > 0"):
        SelftestConfig(seconds=0)


def test_device_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, also on one
    assert cli.main(["selftest", "--device", "cuda"]) == 2
    assert "fastcas selftest: error: --device cuda, but no CUDA GPU" in capsys.readouterr().err


# ------------------------------------------------------------------ the command (DALI, CPU)
@pytest.mark.slow
def test_cli_cpu_half_passes_and_reports_the_gpu_half_skipped(tmp_path):
    out = tmp_path / "selftest.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "fastcas", "selftest", "--device", "cpu", "--quick",
                           "--seconds", "0.3", "--json", str(out)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert r["ok"] and r["device"] == "cpu" and r["gpu_half"]["ran"] is False
    assert "--device cpu" in r["gpu_half"]["reason"]
    status = {f"{c['half']}.{c['name']}": c for c in r["checks"]}
    assert {k for k, c in status.items() if c["status"] == "PASS"} == {
        "cpu.keys-labels", "cpu.determinism", "cpu.mix-reference", "cpu.resume", "cpu.handoff", "cpu.throughput"}
    gpu = [c for c in r["checks"] if c["half"] == "gpu"]
    assert len(gpu) == 8 and all(c["status"] == "SKIP" and "GPU half skipped" in c["reason"] for c in gpu)
    assert status["cpu.host-sync"]["status"] == "SKIP" and status["cpu.host-sync"]["reason"]
    assert status["cpu.mix-reference"]["tolerance"] and r["environment"]["dali"]["version"]
    lines = [ln for ln in proc.stdout.splitlines() if ln[:4] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == len(r["checks"]) and "GPU half skipped" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("where", ["graph", "torch"])
def test_planted_bugs_fail_the_selftest_with_a_nonzero_exit(tmp_path, monkeypatch, capsys, where):
    """The same one-row-too-tall CutMix box planted in DALI's paste (graph) or in the torch
    path after the pipeline (torch): either alone fails mix-reference."""
    from fastcas import mix
    from fastcas.loading.loader import Loader
    from fastcas.mix import _backend
    from fastcas.tools.selftest import run as selftest

    apply_torch = _backend.apply_torch

    def off_by_one(params, bg, fg):  # CutMix boxes one row too tall
        if params.boxes is not None:
            boxes = np.array(params.boxes)  # host or device-resident (fastcas.mix.device) parameters
            boxes[:, 2] = np.minimum(boxes[:, 2] + (boxes[:, 2] > boxes[:, 0]), params.height)
            params = type(params)(params.kind, params.height, params.width, params.lam, params.mixed,
                                  boxes=boxes, drawn=params.drawn)
        return apply_torch(params, bg, fg)

    paste_args = mix.paste_args

    def off_by_one_paste(boxes, height, width, partner=None):  # the same bug in DALI's paste (CutMix, CMO)
        boxes = np.array(boxes)
        boxes[:, 2] = np.minimum(boxes[:, 2] + (boxes[:, 2] > boxes[:, 0]), height)
        return paste_args(boxes, height, width, partner)

    def forgetful(self, state):  # resume restarts the epoch
        self.epoch, self.step = int(state["epoch"]), 0

    if where == "torch":
        monkeypatch.setattr(_backend, "apply_torch", off_by_one)
    else:
        from fastcas.mix import kinds

        monkeypatch.setattr(kinds, "paste_args", off_by_one_paste)  # where the CutMix/CMO kinds call it
    monkeypatch.setattr(Loader, "load_state_dict", forgetful)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, also on one
    monkeypatch.setattr(selftest, "check_throughput", lambda *a: selftest.Check("throughput", "cpu", "PASS"))
    out = tmp_path / "r.json"
    assert cli.main(["selftest", "--device", "cpu", "--quick", "--json", str(out)]) == 1
    r = json.loads(out.read_text())
    status = {f"{c['half']}.{c['name']}": c["status"] for c in r["checks"]}
    assert not r["ok"] and status["cpu.mix-reference"] == "FAIL" and status["cpu.resume"] == "FAIL"
    assert status["cpu.keys-labels"] == "PASS" and status["cpu.determinism"] == "PASS"
    text = capsys.readouterr().out
    assert "FAIL  cpu.mix-reference" in text and "selftest FAILED" in text


def test_keep_builds_the_dataset_once_and_refuses_foreign_directories(tmp_path):
    from fastcas.tools.selftest.run import SelftestError, _ensure_dataset, dataset_dir

    cfg = SelftestConfig(device="cpu", keep=str(tmp_path / "kept"), samples=64, batch_size=4)
    from fastcas.dataset.reader import ShardReader

    with dataset_dir(cfg) as root:
        _ensure_dataset(root, cfg)
        first = list(ShardReader(root).keys)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    with dataset_dir(cfg) as again:
        _ensure_dataset(again, cfg)
        assert list(ShardReader(again).keys) == first and len(first) == cfg.samples
    assert again == root and (root / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SelftestError, match="not empty"):
        with dataset_dir(SelftestConfig(keep=str(tmp_path / "other"))):
            pass
    with dataset_dir(SelftestConfig(device="cpu", samples=64, batch_size=4)) as tmp:
        _ensure_dataset(tmp, cfg)
    assert not tmp.parent.exists()  # the temporary directory is removed
    kept = SelftestConfig(device="cpu", keep=str(tmp_path / "kept"), samples=72, batch_size=4)
    (root / "notes.txt").write_text("mine")
    with dataset_dir(kept) as root:  # another size: its shards are replaced, nothing else
        assert len(_ensure_dataset(root, kept)["keys"]) == 72
    assert (root / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_gpu_half_comparisons_run_end_to_end_with_the_cpu_standing_in(tmp_path, monkeypatch):
    """The GPU half's plumbing (collect on a second device, compare with the CPU runs) on real
    loader batches, with "cuda" mapped to the CPU: every comparison must PASS with zero
    difference. The checks that need CUDA itself (hand-off devices, host syncs, throughput)
    are stubbed."""
    from fastcas.tools.selftest import checks as selftest_checks
    from fastcas.tools.selftest import run as selftest

    make = selftest_checks.make_loader
    monkeypatch.setattr(selftest_checks, "make_loader",
                        lambda dataset, device, *a, **kw: make(dataset, "cpu", *a, **kw))
    monkeypatch.setattr(selftest, "resolve_device", lambda requested: ("cuda", None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the environment report asks
    env = selftest.environment
    monkeypatch.setattr(selftest, "environment", lambda use_cuda: env(use_cuda=False))  # never touch CUDA
    for name in ("check_handoff", "check_host_sync", "check_throughput"):
        monkeypatch.setattr(selftest, name, lambda *a, _n=name: selftest.Check(_n, a[2], "PASS"))
    r = selftest.run_selftest(SelftestConfig(device="cuda", quick=True), out=lambda line: None)
    status = {f"{c['half']}.{c['name']}": c for c in r["checks"]}
    for name in ("keys-labels", "decoder", "mix-params", "mix-reference", "resume"):
        assert status[f"gpu.{name}"]["status"] == "PASS", status[f"gpu.{name}"]
    assert r["ok"] and r["gpu_half"]["ran"]
    assert status["gpu.decoder"]["numbers"]["max_batch_mad_levels"] == 0
    assert status["gpu.mix-params"]["numbers"]["batches"] == 15  # 5 mixed configurations x 3 batches (--quick)


def test_recording_mix_pairs_each_apply_with_its_targets_and_restores_the_api():
    import torch

    from fastcas import mix
    from fastcas.tools.selftest.checks import recording_mix

    apply0 = mix.apply
    bg, fg = torch.from_numpy(_images(1)), torch.from_numpy(_images(2))
    y = torch.tensor([0, 1, 2, 1])
    with recording_mix() as calls:
        for seed in (1, 2):
            p = mix.make_params("cutmix", B, S, S, generator=generator(seed))
            out = mix.apply(p, bg, fg)
            mix.soft_targets(p, y, y.flip(0), 3)
    assert mix.apply is apply0 and len(calls) == 2
    assert calls[1]["params"] is p and np.array_equal(calls[1]["out"], out.numpy())
    assert np.array_equal(calls[1]["y_fg"], [1, 2, 1, 0]) and calls[1]["targets"].shape == (B, 3)
    assert check_mix_reference({"cutmix": Run("cutmix", "cpu", [], [None, None], [], calls)}, "cpu").status == "PASS"


def test_gpu_saliencymix_boxes_are_checked_against_each_devices_own_pixels():
    """SaliencyMix on two devices: the draws must be identical and each device's boxes centred
    on its own foreground's saliency peaks (decoders differ by a few levels)."""
    from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
    from fastcas.mix import make_params_at
    from fastcas.mix.graph_ops import pixels_u8
    from fastcas.tools.selftest.gpu import _saliency_problem

    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (6, 3, 20, 28), dtype=np.uint8)
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    fg = ((u8 / 255.0 - mean) / std).astype(np.float32)  # what the loader hands over
    pos = np.arange(10, 16)
    p = make_params_at("saliencymix", 3, 0, pos, 20, 28, alpha=1.0, prob=0.7,
                       foreground=pixels_u8(torch.from_numpy(fg), IMAGENET_MEAN, IMAGENET_STD))
    assert p.mixed.any()
    call = {"params": p, "fg": fg}
    assert _saliency_problem(call, call) is None
    other = make_params_at("saliencymix", 3, 0, pos, 20, 28, alpha=1.0, prob=0.7,
                           foreground=torch.from_numpy(u8[::-1].copy()))
    msg = _saliency_problem({"params": other, "fg": fg}, call)  # the same draws, boxes from other pixels
    assert msg is not None and "saliency peaks" in msg
    draws = make_params_at("saliencymix", 4, 0, pos, 20, 28, alpha=1.0, prob=0.7, foreground=torch.from_numpy(u8))
    assert "drawn lambda" in _saliency_problem({"params": draws, "fg": fg}, call)
