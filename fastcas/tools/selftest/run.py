"""``fastcas selftest``: prove or disprove the loader on the machine it runs on.

    report = run_selftest(SelftestConfig(device="auto"))   # prints one line per check
    report["ok"]                                           # False if any check FAILed

Prints the environment (:mod:`fastcas.tools.selftest.env`), writes a small generated dataset to a
temporary directory (or ``keep``), runs the CPU half of the checks
(:mod:`fastcas.tools.selftest.checks`) and, when a GPU is used, the GPU half, which compares the GPU
runs with the CPU ones. Without a GPU every GPU check is reported as SKIP with the reason.
The report (a JSON-ready dict) holds the environment, every check with its numbers,
tolerance and reason, and the tolerances used.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fastcas.tools.selftest.checks import (
    CONFIGS,
    GPU_CHECKS,
    MIX_ULP,
    TARGET_ATOL,
    Check,
    SelftestConfig,
    SelftestError,
    _need,
    check_handoff,
    check_identical,
    check_keys_labels,
    check_mix_reference,
    check_resume,
    check_throughput,
    collect,
)
from fastcas.tools.selftest.env import environment, format_environment, make_dataset
from fastcas.tools.selftest.gpu import (
    DECODER_MAD_LEVELS,
    EXPECTED_SYNCS,
    check_decoder,
    check_host_sync,
    check_mix_params,
)

__all__ = ["Check", "SelftestConfig", "SelftestError", "resolve_device", "run_selftest"]


def resolve_device(requested: str) -> tuple[str, str | None]:
    """(device the loaders run on, why the GPU half is skipped or None).
    ``cuda`` without a GPU raises :class:`SelftestError` (the CLI exits 2)."""
    import torch

    why = (f"no CUDA GPU is visible to torch {torch.__version__} (CUDA build {torch.version.cuda}): "
           "torch.cuda.is_available() is False")
    if requested == "cpu":
        return "cpu", "--device cpu was given" + ("; a GPU is present: use --device auto or cuda for the GPU half"
                                                  if torch.cuda.is_available() else f"; also, {why}")
    if torch.cuda.is_available():
        return "cuda", None
    if requested == "cuda":
        raise SelftestError(f"--device cuda, but {why}")
    return "cpu", why


@contextlib.contextmanager
def dataset_dir(cfg: SelftestConfig):
    """Where the dataset lives: ``cfg.keep`` (kept; an earlier selftest dataset there with the
    same size and seed is reused) or a temporary directory removed afterwards."""
    if cfg.keep:
        root = Path(cfg.keep)
        m = root / "manifest.json"
        if m.exists():
            src = json.loads(m.read_text()).get("source", {})
            if src.get("dataset") != "fastcas selftest":
                raise SelftestError(f"--keep {root}: holds a dataset that fastcas selftest did not make")
        elif root.exists() and any(root.iterdir()):
            raise SelftestError(f"--keep {root}: directory exists and is not empty")
        yield root
        return
    tmp = Path(tempfile.mkdtemp(prefix="fastcas-selftest-"))
    try:
        yield tmp / "data"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ensure_dataset(root: Path, cfg: SelftestConfig) -> dict:
    m = root / "manifest.json"
    if m.exists():
        man = json.loads(m.read_text())
        src = man.get("source", {})
        # a JSON manifest of an older fastcas is written again (runs read only columnar manifests)
        if man.get("num_samples") == cfg.samples and src.get("seed") == cfg.seed and "columns" in man:
            return man
    return make_dataset(root, cfg.samples, cfg.seed, overwrite=m.exists())  # replaces only its own shards


def _guarded(name: str, half: str, fn, *args, **kw) -> Check:
    """Run a check; an exception is a FAIL that names it (with the traceback in the JSON)."""
    try:
        return fn(*args, **kw)
    except Exception as exc:  # noqa: BLE001 - a crash is the finding
        return Check(name, half, "FAIL", reason=f"{type(exc).__name__}: {exc}",
                     numbers={"traceback": traceback.format_exc(limit=-6)})


def _collect_all(dataset, device: str, cfg: SelftestConfig, names) -> tuple[dict, dict]:
    runs, errors = {}, {}
    for name in names:
        try:
            runs[name] = collect(dataset, device, name, cfg)
        except Exception as exc:  # noqa: BLE001
            errors[name] = f"{type(exc).__name__}: {exc}"
    return runs, errors


def _needing(name, half, runs, errors, fn, *args, names=None) -> Check:
    missing = _need(runs, errors, names or list(CONFIGS))
    if missing:
        return Check(name, half, "FAIL", reason=f"loader failed: {missing}")
    return _guarded(name, half, fn, *args)


def plain(obj):
    """JSON-ready copy: NumPy scalars/arrays -> Python numbers/lists, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def run_selftest(cfg: SelftestConfig, out=print) -> dict:
    """Run every check, printing the environment and one line per check through ``out``;
    returns the report (see the module docstring). ``report["ok"]`` is False on any FAIL."""
    t0 = time.perf_counter()
    device, gpu_skip = resolve_device(cfg.device)
    env = environment(use_cuda=device == "cuda")
    out("fastcas selftest" + (" (quick)" if cfg.quick else ""))
    for line in format_environment(env):
        out("  " + line)
    checks: list[Check] = []

    last = [time.perf_counter()]

    def add(c: Check) -> None:
        now = time.perf_counter()
        c.numbers["seconds"] = round(now - last[0], 2)  # since the previous check (incl. collection)
        last[0] = now
        checks.append(c)
        out(c.line())

    names = list(CONFIGS)
    with dataset_dir(cfg) as root:
        t = time.perf_counter()
        man = _ensure_dataset(root, cfg)
        from fastcas.dataset.reader import ShardReader

        reader = ShardReader(root)
        data = {"samples": len(reader), "classes": reader.num_classes, "class_counts": reader.class_counts.tolist(),
                "photos": man.get("source", {}).get("photos"), "kept_at": str(root) if cfg.keep else None,
                "build_s": round(time.perf_counter() - t, 2)}
        out(f"  data: {data['samples']} JPEGs, {data['classes']} classes {data['class_counts']}, "
            f"{'from ' + str(data['photos']) + ' shipped photos' if data['photos'] else 'synthetic'} "
            f"({data['build_s']} s){', kept in ' + str(root) if cfg.keep else ''}")
        gpu_name = (env["torch"].get("gpu") or {}).get("name", "cuda")
        out(f"  GPU half: {'runs on ' + gpu_name if gpu_skip is None else 'SKIPPED: ' + gpu_skip}")
        out(f"  loaders: {', '.join(names)}; batch {cfg.batch_size}, {cfg.image_size} px, {cfg.steps} batches each")

        # CPU half: run every configuration twice (determinism), then the checks.
        last[0] = time.perf_counter()
        cpu, cpu_err = _collect_all(root, "cpu", cfg, names)
        again, again_err = _collect_all(root, "cpu", cfg, names)
        add(_needing("keys-labels", "cpu", cpu, cpu_err, check_keys_labels, reader, cpu, "cpu"))
        both_err = {**cpu_err, **{k: f"second run: {v}" for k, v in again_err.items()}}
        add(_needing("determinism", "cpu", {**cpu, **again}, both_err, check_identical, cpu, again, "cpu"))
        add(_needing("mix-reference", "cpu", cpu, cpu_err, check_mix_reference, cpu, "cpu"))
        add(_guarded("resume", "cpu", check_resume, root, "cpu", "cpu", cfg))
        add(_guarded("handoff", "cpu", check_handoff, root, "cpu", "cpu", cfg))
        add(_guarded("host-sync", "cpu", check_host_sync, root, "cpu", "cpu", cfg))
        if device == "cpu":
            add(_guarded("throughput", "cpu", check_throughput, root, "cpu", "cpu", cfg))

        if gpu_skip is None:
            gpu, gpu_err = _collect_all(root, "cuda", cfg, names)
            both = {k: v for k, v in cpu_err.items() if k not in gpu_err}
            add(_needing("keys-labels", "gpu", gpu, gpu_err, check_keys_labels, reader, gpu, "gpu", cpu))
            add(_needing("decoder", "gpu", {**gpu, **cpu}, {**gpu_err, **both}, check_decoder, gpu, cpu))
            add(_needing("mix-params", "gpu", {**gpu, **cpu}, {**gpu_err, **both}, check_mix_params, gpu, cpu))
            add(_needing("mix-reference", "gpu", gpu, gpu_err, check_mix_reference, gpu, "gpu"))
            add(_guarded("resume", "gpu", check_resume, root, "cuda", "gpu", cfg))
            add(_guarded("handoff", "gpu", check_handoff, root, "cuda", "gpu", cfg))
            add(_guarded("host-sync", "gpu", check_host_sync, root, "cuda", "gpu", cfg))
            add(_guarded("throughput", "gpu", check_throughput, root, "cuda", "gpu", cfg))
        else:
            for name in GPU_CHECKS:
                add(Check(name, "gpu", "SKIP", reason=f"GPU half skipped: {gpu_skip}"))

    counts = {s: sum(c.status == s for c in checks) for s in ("PASS", "FAIL", "SKIP")}
    ok = counts["FAIL"] == 0
    elapsed = time.perf_counter() - t0
    out(f"selftest {'PASSED' if ok else 'FAILED'}: {counts['PASS']} PASS, {counts['FAIL']} FAIL, "
        f"{counts['SKIP']} SKIP in {elapsed:.1f} s"
        + ("" if gpu_skip is None else f" (GPU half skipped: {gpu_skip})"))
    return plain({
        "selftest": "fastcas", "format": 1, "ok": ok, "device_requested": cfg.device, "device": device,
        "gpu_half": {"ran": gpu_skip is None, "reason": gpu_skip}, "config": asdict(cfg),
        "environment": env, "dataset": data, "configs": CONFIGS,
        "tolerances": {"decoder_mad_levels": DECODER_MAD_LEVELS, "mix_ulp": MIX_ULP, "target_atol": TARGET_ATOL,
                       "expected_syncs": EXPECTED_SYNCS},
        "checks": [asdict(c) for c in checks], "counts": counts, "elapsed_s": round(elapsed, 2)})
