"""End-to-end loader throughput: fastcas against a torchvision baseline and DALI ceilings.

Every loader does the same work on the same images: decode, random-resized-crop to S,
flip, normalise, and (for fastcas and torchvision) the same sampler and mixing. Loaders are
built once (start-up excluded), warmed up, then timed in interleaved rounds — round r times
every loader before round r+1 — so machine noise hits all of them alike; the median and
spread over rounds are reported, with ratios to the torchvision baseline and to DALI's own
reader, and the consuming (training) thread's own CPU time per batch (``time.thread_time``):
work a loader does on the training thread is time the model cannot use.

* ``fastcas``: :class:`fastcas.Loader` (stateless weighted source -> DALI -> mixing)
* ``fastcas-torchmix``: the same Loader with ``mix_in_pipeline=False`` (CutMix / FMix applied
  with torch after the pipeline instead of by DALI operators: the same pixels), to measure
  where mixing should run
* ``torchvision``: :class:`fastcas.loading.baseline.TorchvisionLoader` (PIL + v2 ops, DataLoader workers)
* ``dali-plain``: DALI's own sequential ``readers.webdataset`` + the same decode/augment ops,
  no sampler, no mixing: the ceiling fastcas's DALI path can reach
* ``decode-only``: DALI reader + decode alone: the hardware ceiling
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

LOADERS = ("fastcas", "fastcas-torchmix", "torchvision", "dali-plain", "decode-only")
MIXES = ("none", "cutmix", "fmix", "saliencymix", "cmo")


@dataclass(frozen=True)
class BenchConfig:
    dataset: str
    loaders: tuple = ("fastcas", "torchvision")
    batch_size: int = 32
    workers: int = 1              # fastcas: DALI python source workers (the source is cheap)
    baseline_workers: int = 2     # torchvision: DataLoader workers (decode happens there)
    threads: int = 2
    image_size: int = 224
    mix: str = "cutmix"
    weights: str = "uniform"
    scores: str | None = None
    seconds: float = 5.0
    rounds: int = 3
    warmup: int = 3
    device: str = "auto"

    def __post_init__(self):
        bad = [x for x in self.loaders if x not in LOADERS]
        if bad:
            raise ValueError(f"unknown loaders {bad}; expected some of {', '.join(LOADERS)}")
        if self.mix not in MIXES:
            raise ValueError(f"unknown mix {self.mix!r}; expected one of {', '.join(MIXES)}")
        if self.seconds <= 0 or self.rounds < 1 or self.batch_size < 1:
            raise ValueError("seconds must be > 0, rounds and batch_size >= 1")


def _loader_options(cfg: BenchConfig, device: str) -> dict:
    opts = dict(image_size=cfg.image_size, weights=cfg.weights, scores=cfg.scores, device=device,
                epoch_length=10**9, py_workers=cfg.workers, num_threads=cfg.threads, seed=0)
    if cfg.mix == "cmo":
        opts.update(weights="uniform", foreground_weights="cmo", mix="cutmix")
    elif cfg.mix != "none":
        opts.update(mix=cfg.mix)
    return opts


class _DaliPlain:
    """DALI's sequential webdataset reader with DALI's own random crop/flip (or decode only)."""

    def __init__(self, cfg: BenchConfig, device: str, decode_only: bool):
        from fastcas.dataset.reader import ShardReader
        from fastcas.loading.pipeline import build_reader_pipeline

        self.pipe = build_reader_pipeline(ShardReader(cfg.dataset), batch_size=cfg.batch_size,
                                          image_size=cfg.image_size, num_threads=cfg.threads, device=device,
                                          decode_only=decode_only)
        self.device, self.decode_only = device, decode_only

    def __iter__(self):
        from fastcas.loading.pipeline import to_torch

        copy = not self.pipe.exec_dynamic  # the hand-off rule of fastcas.loading.pipeline.run
        while True:
            out = self.pipe.run()
            # decode-only outputs are ragged: the data has reached host/device, that is the point
            yield (out[0] if self.decode_only else to_torch(out[0], copy=copy)), None


def _make(name: str, cfg: BenchConfig, device: str):
    if name in ("fastcas", "fastcas-torchmix"):
        from fastcas.loading.loader import Loader

        return Loader(cfg.dataset, cfg.batch_size, **_loader_options(cfg, device),
                      mix_in_pipeline=name == "fastcas")
    if name == "torchvision":
        from fastcas.loading.baseline import TorchvisionLoader

        return TorchvisionLoader(cfg.dataset, cfg.batch_size,
                                 **{**_loader_options(cfg, device), "py_workers": cfg.baseline_workers})
    return _DaliPlain(cfg, device, decode_only=name == "decode-only")


def run_bench(cfg: BenchConfig) -> dict:
    """Returns ``{"rows": [{loader, images_per_s (median over rounds), min, max, rates (per round),
    ratio_vs_torchvision, ratio_vs_dali_plain (of the medians), paired_ratio_vs_dali_plain (median of
    the per-round ratios), train_thread_ms_per_batch}], "device"}``."""
    import torch

    from fastcas.loading.config import resolve_device

    device = resolve_device(cfg.device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    iters = {}
    for name in cfg.loaders:
        it = iter(_make(name, cfg, device))
        for _ in range(cfg.warmup):
            next(it)
        iters[name] = it
    rates: dict[str, list[float]] = {n: [] for n in cfg.loaders}
    thread_ms: dict[str, list[float]] = {n: [] for n in cfg.loaders}
    for _ in range(cfg.rounds):
        for name, it in iters.items():
            sync()
            t0, c0, n = time.perf_counter(), time.thread_time(), 0
            while time.perf_counter() - t0 < cfg.seconds:
                images, _ = next(it)
                n += cfg.batch_size
            sync()
            rates[name].append(n / (time.perf_counter() - t0))
            thread_ms[name].append(1e3 * (time.thread_time() - c0) * cfg.batch_size / max(n, 1))
    base = statistics.median(rates["torchvision"]) if "torchvision" in rates else None
    plain = statistics.median(rates["dali-plain"]) if "dali-plain" in rates else None
    rows = []
    for name, r in rates.items():
        med = statistics.median(r)
        # paired: each round's rate over DALI's reader's in the same round (seconds apart), so a
        # drift of the machine's speed between rounds cancels (shared 2-core VMs drift by 10-20%)
        paired = statistics.median(a / b for a, b in zip(r, rates["dali-plain"])) if plain else None
        rows.append({"loader": name, "images_per_s": med, "min": min(r), "max": max(r), "rates": list(r),
                     "ratio_vs_torchvision": med / base if base else None,
                     "ratio_vs_dali_plain": med / plain if plain else None,
                     "paired_ratio_vs_dali_plain": paired,
                     "train_thread_ms_per_batch": statistics.median(thread_ms[name])})
    return {"device": device, "rows": rows}


# fraction of DALI's own reader (no sampler, no mixing) fastcas must keep, per mix
DALI_PLAIN_GOAL = {"none": 0.95, "cutmix": 0.90, "fmix": 0.80, "saliencymix": 0.80}


def goals(rows: list[dict], device: str, mix: str = "cutmix") -> list[dict]:
    by = {r["loader"]: r for r in rows}
    out = []
    if "fastcas" in by and "torchvision" in by and mix in ("none", "cutmix", "cmo"):
        target = 3.0 if device == "cuda" else 1.5
        ratio = by["fastcas"]["ratio_vs_torchvision"]
        out.append({"goal": f"fastcas >= {target}x torchvision ({device}, {mix})", "value": ratio,
                    "met": ratio >= target})
    if "fastcas" in by and "dali-plain" in by and mix in DALI_PLAIN_GOAL:
        frac = by["fastcas"]["images_per_s"] / by["dali-plain"]["images_per_s"]
        target = DALI_PLAIN_GOAL[mix]
        out.append({"goal": f"fastcas >= {target:.2f} of dali-plain ({device}, {mix})", "value": frac,
                    "met": frac >= target})
    return out
