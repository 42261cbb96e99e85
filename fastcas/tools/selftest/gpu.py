"""The checks of ``fastcas selftest`` that compare the GPU with the CPU, and the host-sync check.

* :func:`check_decoder`: decoded images, nvJPEG vs the CPU decoder, within :data:`DECODER_MAD_LEVELS`;
* :func:`check_mix_params`: mixing parameters and targets identical on both devices;
* :func:`check_host_sync`: no unexpected host synchronisation in the steady-state loop
  (``torch.cuda.set_sync_debug_mode``); a SKIP with the reason on the CPU. The recorder and the
  classification (:func:`record_syncs`, :func:`classify_syncs`) run anywhere.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
from fastcas.tools.selftest.checks import (
    TARGET_ATOL,
    Check,
    Run,
    SelftestConfig,
    _check_calls,
    _same_params,
    _verdict,
    make_loader,
)

# nvJPEG (GPU) and libjpeg-turbo (CPU) differ in IDCT rounding and chroma upsampling: a few
# levels at edges, about one on average. Bound: mean |GPU - CPU| per batch on the 0..255 scale.
DECODER_MAD_LEVELS = 3.0
# Host syncs the steady-state loop is allowed today, by file: why.
# none: labels are validated when the Loader is built, every host-to-device copy is pinned and
# non-blocking, and pixel-dependent parameters are computed on the device (fastcas.mix.device)
EXPECTED_SYNCS: dict[str, str] = {}


def to_levels(x: np.ndarray) -> np.ndarray:
    """Normalised float images [B, 3, H, W] -> the 0..255 scale of the decoded JPEG."""
    m = np.asarray(IMAGENET_MEAN, np.float64)[None, :, None, None]
    s = np.asarray(IMAGENET_STD, np.float64)[None, :, None, None]
    return (x.astype(np.float64) * s + m) * 255.0


def _unmixed(run: Run) -> list:
    return [c["bg"] for c in run.calls] if run.mixed else run.images


def check_decoder(gpu_runs: dict, cpu_runs: dict) -> Check:
    """Decoded (pre-mixing) images: mean |GPU - CPU| per batch <= DECODER_MAD_LEVELS."""
    mads, worst = [], 0.0
    for name, run in gpu_runs.items():
        for g, c in zip(_unmixed(run), _unmixed(cpu_runs[name])):
            d = np.abs(to_levels(g) - to_levels(c))
            mads.append(float(d.mean()))
            worst = max(worst, float(d.max()))
    ok = bool(mads) and max(mads) <= DECODER_MAD_LEVELS
    n = {"batches": len(mads), "max_batch_mad_levels": max(mads, default=None),
         "mean_mad_levels": float(np.mean(mads)) if mads else None, "max_abs_levels": worst}
    return _verdict("decoder", "gpu", ok, f"{len(mads)} batches: mean |GPU - CPU| <= {max(mads, default=0):.2f} "
                    f"levels (max pixel {worst:.0f})", f"mean |GPU - CPU| up to {max(mads, default=0):.2f} levels",
                    n, f"mean absolute difference per batch <= {DECODER_MAD_LEVELS} of 255 levels")


def check_mix_params(gpu_runs: dict, cpu_runs: dict) -> Check:
    """Mixing parameters (lam, decision, boxes, masks) identical on both devices; targets equal.
    SaliencyMix: identical draws, and boxes from each device's own pixels (:func:`_saliency_problem`)."""
    bad, count, worst, mask_px = [], 0, 0.0, 0
    for name, run in gpu_runs.items():
        if not run.mixed:
            continue
        ref = cpu_runs[name]
        if (msg := _check_calls(run) or _check_calls(ref)):
            bad.append(msg)
            continue
        for step, (g, c) in enumerate(zip(run.calls, ref.calls)):
            count += 1
            if g["params"].kind == "saliencymix":  # boxes follow the pixels, and the decoders differ
                if (msg := _saliency_problem(g, c)):
                    bad.append(f"{name} step {step}: {msg}")
            elif not _same_params(g["params"], c["params"]):
                bad.append(f"{name} step {step}: parameters differ")
                if g["params"].masks is not None and c["params"].masks is not None:  # how far, for the report
                    mask_px += int((g["params"].box_masks() != c["params"].box_masks()).sum())
            if not np.array_equal(g["y_fg"], c["y_fg"]):
                bad.append(f"{name} step {step}: foreground labels differ")
            if g["params"].kind != "saliencymix":  # its targets follow its boxes (mix-reference checks them)
                worst = max(worst, float(np.abs(run.targets[step].astype(np.float64) - ref.targets[step]).max()))
    ok = not bad and count > 0 and worst <= TARGET_ATOL
    return _verdict("mix-params", "gpu", ok,
                    f"{count} batches: identical lam, boxes, masks; targets within {worst:.1g}",
                    "; ".join(bad[:3]) or f"targets differ by {worst:.3g}",
                    {"batches": count, "target_max_abs": worst, "mask_pixels_differing": mask_px, "problems": bad},
                    f"params exact; targets <= {TARGET_ATOL}")


def _saliency_problem(g: dict, c: dict) -> str | None:
    """SaliencyMix on two devices: the pixel-free draws (lambda, mix decisions) must be identical,
    and each device's boxes must be the definition applied to its own foreground pixels (nvJPEG
    and libjpeg-turbo decode a few levels apart, which may move a saliency peak). None if so."""
    import torch

    from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
    from fastcas.mix.graph_ops import pixels_u8
    from fastcas.mix.params import boxes_at, cut_sizes
    from fastcas.mix.saliency import saliency_centres

    p, q = g["params"], c["params"]
    if not (np.array_equal(p.drawn, q.drawn) and np.array_equal(p.mixed, q.mixed)):
        return "drawn lambda or mix decisions differ"
    fg = g["fg"] if g["fg"].shape[1] in (1, 3) else g["fg"].transpose(0, 3, 1, 2)
    cy, cx = saliency_centres(pixels_u8(torch.from_numpy(np.ascontiguousarray(fg)), IMAGENET_MEAN, IMAGENET_STD))
    boxes = boxes_at(cy, cx, *cut_sizes(p.drawn, p.height, p.width), p.height, p.width) * p.mixed[:, None]
    return None if np.array_equal(boxes, p.boxes) else "boxes are not centred on the foreground's own saliency peaks"


@contextlib.contextmanager
def record_syncs():
    """Collect the host-sync warnings raised inside the block (torch's sync debug mode "warn"
    raises one per synchronising call, attributed to the calling Python line): a list of
    records with ``filename``, ``lineno`` and ``stack`` (the innermost Python frames)."""
    import traceback
    from types import SimpleNamespace

    records: list = []

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            stack = traceback.extract_stack()[:-1]
            records.append(SimpleNamespace(filename=filename, lineno=lineno,
                                           stack=[f"{f.filename}:{f.lineno} {f.name}" for f in stack[-6:]]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show  # restored by catch_warnings
        yield records


def classify_syncs(records, expected=EXPECTED_SYNCS) -> tuple[list, list]:
    """Split sync records (``filename``, ``lineno``) into (expected, unexpected), each a list
    of ``"file:line"`` (expected ones with their reason)."""
    ok, unexpected = [], []
    for w in records:
        path = str(w.filename).replace(os.sep, "/")
        why = next((r for f, r in expected.items() if path.endswith(f)), None)
        site = f"{path}:{w.lineno}"
        (ok if why else unexpected).append(f"{site} ({why})" if why else site)
    return ok, unexpected


def check_host_sync(dataset, device: str, half: str, cfg: SelftestConfig, names=("weighted", "cutmix")) -> Check:
    """Steady-state loop under ``torch.cuda.set_sync_debug_mode("warn")``: every host sync is
    recorded with the Python line that caused it; only :data:`EXPECTED_SYNCS` are allowed.
    On the CPU there is nothing to observe: SKIP with the reason."""
    if device != "cuda":
        return Check("host-sync", half, "SKIP", reason="torch.cuda.set_sync_debug_mode observes CUDA host "
                     "synchronisation only; nothing to check on the CPU")
    import torch

    n, all_bad = {}, []
    for name in names:
        loader = make_loader(dataset, device, name, cfg)
        try:
            it = iter(loader)
            for _ in range(2):  # warm-up: pipeline start, kernel compilation, allocator growth
                next(it)
            torch.cuda.synchronize()
            with record_syncs() as rec:
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(cfg.steps):
                        x, t = next(it)
                        (x.float().mean() + t.float().mean()).add_(0)  # device work only, like a train step
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
        finally:
            loader.close()
        ok, bad = classify_syncs(rec)
        stacks = {f"{w.filename}:{w.lineno}": w.stack for w in rec}
        n[name] = {"steps": cfg.steps, "expected": ok, "unexpected": bad,
                   "stacks": {site: stacks.get(site) for site in bad}}
        all_bad += [f"{name}: {s}" for s in bad]
    return _verdict("host-sync", half, not all_bad, "no unexpected host synchronisation in the steady-state loop",
                    f"unexpected host syncs: {', '.join(sorted(set(all_bad))[:4])}", n,
                    f"allowed: {EXPECTED_SYNCS}")
