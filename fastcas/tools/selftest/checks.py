"""The checks of ``fastcas selftest`` that run on any device (run and reported by
:mod:`fastcas.tools.selftest.run`; the GPU-vs-CPU comparisons and the host-sync check are in
:mod:`fastcas.tools.selftest.gpu`).

Each check returns one :class:`Check` (PASS / FAIL / SKIP with its numbers, tolerance and
reason). The same loader configurations (:data:`CONFIGS`) run on every device (:func:`collect`):
delivered labels match the keys the sampler drew (and, on the GPU, the CPU run's keys and
labels); two runs are identical (images, targets, mixing parameters); mixed pixels and targets
equal the NumPy reference (:mod:`fastcas.mix.reference`); a mid-epoch resume (``state_dict`` /
``load_state_dict``) gives the identical next batch; the DALI -> torch hand-off gives the
promised dtypes, layouts and devices; throughput (fastcas vs DALI's own reader vs torchvision,
via :mod:`fastcas.tools.bench`).

The mixing parameters are observed through the public :mod:`fastcas.mix` API the loader calls
(:func:`recording_mix`), not through loader internals.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from dataclasses import asdict, dataclass, field

import numpy as np

# Mixed pixels vs the NumPy reference: boxes are copies (exact); blends may differ by one
# rounding of the products (FMA contraction in the CUDA kernels): |d| <= MIX_ULP ulp(max(|bg|, |fg|)).
MIX_ULP = 1
TARGET_ATOL = 1e-6
STATUSES = ("PASS", "FAIL", "SKIP")

# The loader configurations run on every device (seed, batch size and image size from SelftestConfig).
CONFIGS = {
    "weighted": {"weights": "cmo"},                                     # class-inverse draws, no mixing
    "eval": {"train": False, "last_batch": "partial"},                  # sequential, centre crop
    "cutmix": {"mix": "cutmix", "alpha": 1.0},                          # in-batch partner, in the DALI graph
    "fmix": {"mix": "fmix", "alpha": 1.0},
    "saliencymix": {"mix": "saliencymix", "alpha": 1.0},                # in the graph on the CPU, torch on a GPU
    "cutmix-torch": {"mix": "cutmix", "alpha": 1.0, "mix_in_pipeline": False},  # torch ops / Numba kernels
    "cmo-paste": {"foreground_weights": "cmo", "mix": "cutmix", "mix_prob": 0.5},  # two streams
}
GPU_CHECKS = ("keys-labels", "decoder", "mix-params", "mix-reference", "resume", "handoff", "host-sync",
              "throughput")


class SelftestError(ValueError):
    """The selftest cannot run as asked (e.g. --device cuda without a GPU)."""


@dataclass(frozen=True)
class SelftestConfig:
    """device: auto | cpu | cuda; quick: fewer batches and shorter throughput; seconds: timed
    seconds per loader in the throughput check; keep: build (or reuse) the dataset there and
    keep it; samples / image_size / batch_size / seed: the generated data and loaders."""

    device: str = "auto"
    quick: bool = False
    seconds: float | None = None
    keep: str | None = None
    samples: int = 240
    image_size: int = 96
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if self.batch_size < 2 or self.image_size < 16:
            raise ValueError(f"batch_size must be >= 2 and image_size >= 16, got {self.batch_size}, {self.image_size}")
        if self.samples < 4 * self.batch_size:
            raise ValueError(f"samples must be >= 4 * batch_size = {4 * self.batch_size}, got {self.samples}")

    @property
    def steps(self) -> int:
        return 3 if self.quick else 6

    @property
    def bench_seconds(self) -> float:
        return self.seconds or (0.75 if self.quick else 2.0)


@dataclass
class Check:
    name: str
    half: str                      # "cpu" or "gpu"
    status: str                    # PASS | FAIL | SKIP
    summary: str = ""
    numbers: dict = field(default_factory=dict)
    tolerance: str | None = None
    reason: str | None = None

    def line(self) -> str:
        text = self.summary if self.status == "PASS" else (self.reason or self.summary)
        return f"{self.status:<4}  {self.half}.{self.name:<14} {text}"


def _verdict(name, half, ok: bool, summary: str, why: str, numbers: dict, tolerance: str | None = None) -> Check:
    return Check(name, half, "PASS" if ok else "FAIL", summary, numbers, tolerance, None if ok else why)


def _host(x):
    """torch / CuPy / NumPy array -> a NumPy copy on the host (a host sync on the GPU)."""
    if type(x).__module__.startswith("torch"):
        return np.ascontiguousarray(x.detach().cpu().numpy())
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.array(x, copy=True)


@contextlib.contextmanager
def recording_mix():
    """Record every ``fastcas.mix.apply`` / ``fastcas.mix.soft_targets`` call made inside the
    block: ``[{params, bg, fg, out, y_bg, y_fg, num_classes, label_smoothing, targets}]``, arrays
    copied to the host (so never inside the host-sync check)."""
    from fastcas import mix as mixing

    calls: list[dict] = []
    apply0, targets0 = mixing.apply, mixing.soft_targets

    def host(params):  # device-resident parameters (fastcas.mix.device) as a host MixParams
        return params.host() if hasattr(params, "host") else params

    def apply(params, background, foreground, **kw):
        out = apply0(params, background, foreground, **kw)
        calls.append({"raw": params, "params": host(params), "bg": _host(background), "fg": _host(foreground),
                      "out": _host(out)})
        return out

    def soft_targets(params, y_bg, y_fg, num_classes, label_smoothing=0.0):
        t = targets0(params, y_bg, y_fg, num_classes, label_smoothing)
        if calls and calls[-1].get("raw") is params and "y_bg" not in calls[-1]:
            rec = calls[-1]  # the apply() of the same batch
        else:
            rec = {"raw": params, "params": host(params)}
            calls.append(rec)
        rec.update(y_bg=_host(y_bg), y_fg=_host(y_fg), num_classes=int(num_classes),
                   label_smoothing=float(label_smoothing), targets=_host(t))
        return t

    mixing.apply, mixing.soft_targets = apply, soft_targets
    try:
        yield calls
    finally:
        mixing.apply, mixing.soft_targets = apply0, targets0


# ------------------------------------------------------------------------------ runs
@dataclass
class Run:
    """One configuration on one device: drawn indices (per stream, epoch 0) and, per batch,
    host copies of images, targets and the recorded mixing call."""

    name: str
    device: str
    indices: list
    images: list
    targets: list
    calls: list

    @property
    def mixed(self) -> bool:
        return CONFIGS[self.name].get("mix") is not None


def make_loader(dataset, device: str, name: str, cfg: SelftestConfig, **extra):
    from fastcas.loading.loader import Loader

    return Loader(str(dataset), cfg.batch_size, device=device, image_size=cfg.image_size, seed=cfg.seed,
                  num_threads=2, **{**CONFIGS[name], **extra})


def collect(dataset, device: str, name: str, cfg: SelftestConfig, **extra) -> Run:
    """Runs configuration ``name``. A configuration mixed inside the DALI pipeline (CutMix,
    :attr:`fastcas.loading.loader.LoaderConfig.mix_in_pipeline`) makes no ``fastcas.mix.apply`` call:
    its parameters and unmixed background and foreground pixels come from a twin run mixed by
    torch after the pipeline (same keys, same decoded pixels), and its own images and targets
    stand as the output, so :func:`check_mix_reference` holds DALI's mixing to the NumPy
    reference."""
    run = _collect(dataset, device, name, cfg, **extra)
    # (the twin's own mixing is checked by a configuration of its own: cutmix-torch)
    if run.mixed and not run.calls:  # mixed inside the pipeline: targets from the lam it applied
        twin = _collect(dataset, device, name, cfg, **{**extra, "mix_in_pipeline": False})
        run.calls = [{**t, "out": x, "targets": y, "in_pipeline": True}
                     for t, x, y in zip(twin.calls, run.images, run.targets)]
    return run


def _collect(dataset, device: str, name: str, cfg: SelftestConfig, **extra) -> Run:
    loader = make_loader(dataset, device, name, cfg, **extra)
    try:
        images, targets = [], []
        with recording_mix() as calls:
            for x, t in loader:
                images.append(_host(x))
                targets.append(_host(t))
                if len(images) == cfg.steps:
                    break
        # the loader finishes batches on a prefetch thread, ahead of the consumer: calls past the
        # last consumed batch were made for batches nobody took (in order, so the first ones match)
        return Run(name, device, [np.asarray(i) for i in loader.sampler_indices(0)], images, targets,
                   calls[:len(images)])
    finally:
        loader.close()


def _need(runs: dict, errors: dict, names) -> str | None:
    bad = [f"{n}: {errors[n]}" for n in names if n in errors]
    missing = [n for n in names if n not in runs and n not in errors]
    return "; ".join(bad + [f"{n}: not collected" for n in missing]) or None


def _check_calls(run: Run) -> str | None:
    if run.mixed and len(run.calls) != len(run.images):
        return (f"{run.name} on {run.device}: {len(run.calls)} fastcas.mix.apply calls observed for "
                f"{len(run.images)} batches (the loader no longer mixes through fastcas.mix?)")
    if run.mixed and any("y_bg" not in c for c in run.calls):
        return f"{run.name} on {run.device}: mixed batches without a fastcas.mix.soft_targets call"
    return None


# ------------------------------------------------------------------------------ checks
def labels_of(run: Run, step: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(background labels, foreground labels or None) the loader delivered at ``step``."""
    if run.mixed:
        c = run.calls[step]
        two = "foreground_weights" in CONFIGS[run.name]
        return c["y_bg"].reshape(-1), (c["y_fg"].reshape(-1) if two else None)
    t = run.targets[step]  # soft (one-hot) targets of an unmixed training loader: their argmax
    return (t.argmax(1) if t.ndim == 2 else t).reshape(-1), None


def check_keys_labels(reader, runs: dict, half: str, reference: dict | None = None) -> Check:
    """Each batch's labels are the labels of the keys the sampler drew (per stream, in order);
    with ``reference`` (the CPU runs) also identical keys and labels to the reference."""
    bad, total, differ = [], 0, []
    keys = np.asarray(reader.keys)
    for name, run in runs.items():
        if (msg := _check_calls(run)):
            bad.append(msg)
            continue
        for step in range(len(run.images)):
            y_bg, y_fg = labels_of(run, step)
            pos = step * run.images[0].shape[0] + np.arange(len(y_bg))
            for s, got in enumerate((y_bg, y_fg)):
                if got is None:
                    continue
                want = reader.labels[run.indices[s][pos % len(run.indices[s])]]
                total += len(got)
                if not np.array_equal(got, want):
                    bad.append(f"{name} step {step} stream {s}: {int((got != want).sum())} labels differ "
                               f"from the drawn keys' labels")
        if reference is not None and name in reference:
            ref = reference[name]
            same_keys = all(np.array_equal(keys[a], keys[b]) for a, b in zip(run.indices, ref.indices))
            same_labels = all(np.array_equal(labels_of(run, i)[0], labels_of(ref, i)[0])
                              for i in range(min(len(run.images), len(ref.images))))
            if not (same_keys and same_labels):
                differ.append(name)
    if differ:
        bad.append(f"keys or labels differ from the CPU run in {', '.join(differ)}")
    # a digest of the drawn keys per configuration: the same on every machine for the same seed
    digests = {name: hashlib.sha1("\n".join(keys[np.concatenate(run.indices)]).encode()).hexdigest()[:16]
               for name, run in runs.items()}
    n = {"configs": sorted(runs), "samples_checked": total, "keys_sha1": digests, "problems": bad}
    return _verdict("keys-labels", half, not bad,
                    f"{total} samples in {len(runs)} configs: labels match the drawn keys"
                    + (", keys and labels identical to CPU" if reference is not None else ""),
                    "; ".join(bad[:3]), n, "exact")


def _same_params(p, q) -> bool:
    if p.kind != q.kind or not np.array_equal(p.lam, q.lam) or not np.array_equal(p.mixed, q.mixed):
        return False
    if (p.boxes is None) != (q.boxes is None) or (p.boxes is not None and not np.array_equal(p.boxes, q.boxes)):
        return False
    return p.masks is None or np.array_equal(p.box_masks(), q.box_masks())


def check_identical(runs: dict, others: dict, half: str) -> Check:
    """Two runs of each configuration on the same device give bit-identical batches."""
    worst_img, worst_t, bad = 0.0, 0.0, []
    for name, a in runs.items():
        b = others[name]
        for step, (x, y) in enumerate(zip(a.images, b.images)):
            worst_img = max(worst_img, float(np.abs(x - y).max()))
            worst_t = max(worst_t, float(np.abs(a.targets[step].astype(np.float64) - b.targets[step]).max()))
        if len(a.images) != len(b.images) or not all(np.array_equal(x, y) for x, y in zip(a.images, b.images)):
            bad.append(f"{name}: images differ")
        if not all(np.array_equal(x, y) for x, y in zip(a.targets, b.targets)):
            bad.append(f"{name}: targets differ")
        if not all(_same_params(c["params"], d["params"]) for c, d in zip(a.calls, b.calls)):
            bad.append(f"{name}: mixing parameters differ")
    return _verdict("determinism", half, not bad, f"{len(runs)} configs run twice: bit-identical images, "
                    "targets and mixing parameters", "; ".join(bad),
                    {"max_abs_image_diff": worst_img, "max_abs_target_diff": worst_t, "problems": bad}, "exact")


def mix_errors(call: dict) -> dict:
    """Mixed pixels and targets of one recorded call against the NumPy reference."""
    from fastcas.mix.api import soft_targets
    from fastcas.mix.reference import apply_numpy

    p, bg, fg, out = call["params"], call["bg"], call["fg"], call["out"]
    if bg.shape[1] != 3 and bg.shape[-1] == 3:  # channels-last hand-off: back to [B, C, H, W]
        bg, fg, out = (a.transpose(0, 3, 1, 2) for a in (bg, fg, out))
    ref = apply_numpy(p, bg, fg)
    d = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    scale = np.maximum(np.abs(bg), np.abs(fg)).astype(ref.dtype)
    ulp = np.spacing(scale).astype(np.float64) if np.issubdtype(ref.dtype, np.floating) else np.ones_like(d)
    t_ref = soft_targets(p, call["y_bg"].reshape(-1), call["y_fg"].reshape(-1), call["num_classes"],
                         call["label_smoothing"])
    return {"kind": p.kind, "max_abs": float(d.max(initial=0)), "max_ulp": float((d / ulp).max(initial=0)),
            "exact": bool(np.array_equal(out, ref)),
            "target_max_abs": float(np.abs(call["targets"].astype(np.float64) - t_ref).max(initial=0))}


def check_mix_reference(runs: dict, half: str) -> Check:
    bad, errs = [], []
    for name, run in runs.items():
        if not run.mixed:
            continue
        if (msg := _check_calls(run)):
            bad.append(msg)
            continue
        for step, call in enumerate(run.calls):
            e = mix_errors(call)
            errs.append(e)
            boxes = call["params"].boxes is not None
            if (boxes and not e["exact"]) or e["max_ulp"] > MIX_ULP:
                bad.append(f"{name} step {step}: pixels off the reference by {e['max_abs']:.3g} "
                           f"({e['max_ulp']:.1f} ulp)")
            if e["target_max_abs"] > TARGET_ATOL:
                bad.append(f"{name} step {step}: targets off the reference by {e['target_max_abs']:.3g}")
    n = {"batches": len(errs), "max_abs": max((e["max_abs"] for e in errs), default=0.0),
         "max_ulp": max((e["max_ulp"] for e in errs), default=0.0),
         "target_max_abs": max((e["target_max_abs"] for e in errs), default=0.0), "problems": bad}
    return _verdict("mix-reference", half, not bad and bool(errs),
                    f"{len(errs)} mixed batches equal fastcas.mix.reference (max {n['max_ulp']:.1f} ulp, "
                    f"targets within {n['target_max_abs']:.1g})", "; ".join(bad[:3]) or "no mixed batch observed", n,
                    f"boxes exact; blends <= {MIX_ULP} ulp of max(|bg|, |fg|); targets <= {TARGET_ATOL}")


def check_resume(dataset, device: str, half: str, cfg: SelftestConfig, names=("cutmix", "cmo-paste")) -> Check:
    """Stop after k batches, save ``state_dict``; a new loader with ``load_state_dict`` must yield
    the same next batch as the uninterrupted loader, bit for bit."""
    k, bad, n = max(1, cfg.steps // 2), [], {}
    for name in names:
        a = make_loader(dataset, device, name, cfg)
        it = iter(a)
        for _ in range(k):
            next(it)
        state = copy.deepcopy(a.state_dict())
        want = [_host(v) for v in next(it)]
        a.close()
        b = make_loader(dataset, device, name, cfg)
        b.load_state_dict(state)
        got = [_host(v) for v in next(iter(b))]
        b.close()
        diff = max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(want, got))
        n[name] = {"resumed_at_step": k, "max_abs_diff": diff}
        if not all(np.array_equal(x, y) for x, y in zip(want, got)):
            bad.append(f"{name}: batch {k} after resume differs (max {diff:.3g})")
    return _verdict("resume", half, not bad,
                    f"resumed mid-epoch at step {k} ({', '.join(names)}): identical next batch",
                    "; ".join(bad), n, "exact")


def check_handoff(dataset, device: str, half: str, cfg: SelftestConfig) -> Check:
    """DALI -> torch: float32 [B,3,S,S] images and soft targets on the loader's device; int64
    labels on the same device; float16 + channels_last gives channels-last fp16 images equal to
    the float32 ones up to fp16 rounding."""
    import torch

    B, S, bad, seen = cfg.batch_size, cfg.image_size, [], {}
    with contextlib.ExitStack() as stack:
        def first(name, **kw):
            loader = make_loader(dataset, device, name, cfg, **kw)
            stack.callback(loader.close)
            return next(iter(loader))
        x, t = first("cutmix")
        y_x, y = first("weighted", targets="hard")  # int64 class ids (a training loader's default is soft)
        h, _ = first("weighted", dtype="float16", channels_last=True)
    for what, v in (("mixed images", x), ("targets", t), ("images", y_x), ("labels", y), ("fp16 images", h)):
        seen[what] = {"dtype": str(v.dtype), "shape": list(v.shape), "device": str(v.device)}
        if v.device.type != device:
            bad.append(f"{what} on {v.device}, expected {device}")
    want = {"mixed images": (torch.float32, [B, 3, S, S]), "targets": (torch.float32, None),
            "images": (torch.float32, [B, 3, S, S]), "labels": (torch.int64, [B]),
            "fp16 images": (torch.float16, [B, 3, S, S])}
    for (what, (dt, shape)), v in zip(want.items(), (x, t, y_x, y, h)):
        if v.dtype != dt or (shape and list(v.shape) != shape):
            bad.append(f"{what}: {v.dtype} {list(v.shape)}, expected {dt} {shape}")
    if t.ndim == 2 and not torch.allclose(t.sum(1).double().cpu(), torch.ones(len(t), dtype=torch.float64), atol=1e-5):
        bad.append("targets rows do not sum to 1")
    if not h.is_contiguous(memory_format=torch.channels_last):
        bad.append("float16 channels_last images are not channels-last in memory")
    fp16_err = float((h.float() - y_x).abs().max() / (y_x.abs().max() + 1e-6)) if h.shape == y_x.shape else float("inf")
    if fp16_err > 2 ** -10:
        bad.append(f"float16 images differ from float32 by {fp16_err:.3g} (relative), more than fp16 rounding")
    return _verdict("handoff", half, not bad, f"dtypes, shapes, layouts and devices as promised ({device})",
                    "; ".join(bad), {"tensors": seen, "fp16_relative_error": fp16_err},
                    "fp16 vs fp32 relative error <= 2^-10")


def check_throughput(dataset, device: str, half: str, cfg: SelftestConfig) -> Check:
    """A short fastcas.tools.bench run: fastcas vs DALI's own reader vs torchvision, same data."""
    from fastcas.tools.bench import BenchConfig, run_bench

    quick = cfg.quick and device == "cpu"  # --quick on a CPU: smaller batches, one warm-up batch
    bc = BenchConfig(dataset=str(dataset), loaders=("fastcas", "dali-plain", "torchvision"),
                     batch_size=cfg.batch_size if quick else 2 * cfg.batch_size, workers=1,
                     baseline_workers=min(os.cpu_count() or 2, 16), threads=min(os.cpu_count() or 2, 8),
                     image_size=160 if quick else 224, mix="cutmix", seconds=cfg.bench_seconds, rounds=1,
                     warmup=1 if quick else 2, device=device)
    res = run_bench(bc)
    rows = {r["loader"]: round(r["images_per_s"], 1) for r in res["rows"]}
    ok = all(v > 0 for v in rows.values())
    ratio = res["rows"][0]["ratio_vs_torchvision"]
    return _verdict("throughput", half, ok, ", ".join(f"{k} {v:.0f} img/s" for k, v in rows.items())
                    + f" ({ratio:.2f}x torchvision; {bc.seconds:g} s each, indicative only)",
                    "a loader delivered nothing", {"images_per_s": rows, "ratio_vs_torchvision": ratio,
                                                   "config": asdict(bc)}, "runs and delivers images (no speed bound)")
