"""End-to-end loader throughput: fastcas against a torchvision baseline and DALI ceilings.

Every loader does the same work on the same images: decode, random-resized-crop to S,
flip, normalise, and (for fastcas and torchvision) the same sampler and mixing. Loaders are
built once (start-up excluded), warmed up, then timed in interleaved rounds — round r times
every loader before round r+1 — so machine noise hits all of them alike; the median and
spread over rounds are reported, with ratios to the torchvision baseline and to DALI's own
reader, and the consuming (training) thread's own CPU time per batch (``time.thread_time``):
work a loader does on the training thread is time the model cannot use.

* ``fastcas``: :class:`fastcas.Loader` (stateless weighted source -> DALI -> mixing)
* ``fastcas-torchresize``: the same Loader with ``cpu_resize="torch"`` (on a CPU device: DALI's ROI
  decode, then resize, flip, CutMix and normalise in torch on a thread pool,
  :mod:`fastcas.loading.cpu_resize`; on a GPU the same as ``fastcas``)
* ``fastcas-torchmix``: the same Loader with ``mix_in_pipeline=False`` (CutMix / FMix applied
  with torch after the pipeline instead of by DALI operators: the same pixels), to measure
  where mixing should run
* ``torchvision``: :class:`fastcas.loading.baseline.TorchvisionLoader` (PIL + v2 ops, DataLoader workers)
* ``dali-plain``: DALI's own sequential ``readers.webdataset`` + the same decode/augment ops,
  no sampler, no mixing: the ceiling fastcas's DALI path can reach
* ``decode-only``: DALI reader + decode alone: the hardware ceiling
* the peers a user would pick instead (:mod:`fastcas.tools.peers`: webdataset + DataLoader,
  timm, torchdata.nodes threads, SPDL, FFCV), mix ``none`` or ``cutmix``; one not installed is
  listed under ``skipped`` with the reason. ``all`` names fastcas, fastcas-torchresize,
  torchvision, dali-plain and every peer.

Each round also reads the CPU seconds of this process tree from ``/proc`` (every thread of
this process and of every live worker process: :mod:`fastcas.tools.proctime`), so each loader
gets CPU ms per image from all its processes, and the cores other processes on the machine
used meanwhile; after each round the tree is left to go idle (the loader refilling its queues,
billed to it) before the next round starts. Each loader's first batch is checked (shape, dtype,
value range: :func:`fastcas.tools.peers.check_batch`).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from fastcas.tools.peers import PEER_MIXES, PEERS, check_batch, make_peer, peer_status
from fastcas.tools.proctime import load_average, machine_cpu_seconds, tree_cpu_seconds

LOADERS = ("fastcas", "fastcas-torchresize", "fastcas-torchmix", "torchvision", "dali-plain", "decode-only") + PEERS
ALL = ("fastcas", "fastcas-torchresize", "torchvision", "dali-plain") + PEERS  # what ``--loaders all`` means
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
        if "all" in self.loaders:
            object.__setattr__(self, "loaders", tuple(dict.fromkeys(
                x for n in self.loaders for x in (ALL if n == "all" else (n,)))))
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
    if name in ("fastcas", "fastcas-torchresize", "fastcas-torchmix"):
        from fastcas.loading.loader import Loader

        return Loader(cfg.dataset, cfg.batch_size, **_loader_options(cfg, device),
                      mix_in_pipeline=name != "fastcas-torchmix",
                      cpu_resize="torch" if name == "fastcas-torchresize" else "dali")
    if name == "torchvision":
        from fastcas.loading.baseline import TorchvisionLoader

        return TorchvisionLoader(cfg.dataset, cfg.batch_size,
                                 **{**_loader_options(cfg, device), "py_workers": cfg.baseline_workers})
    if name in PEERS:
        return make_peer(name, cfg, device)
    return _DaliPlain(cfg, device, decode_only=name == "decode-only")


def _unavailable(name: str, cfg: BenchConfig) -> str | None:
    """Why loader ``name`` cannot run in this bench (a peer not installed, a mix peers do not
    do), or None."""
    if name not in PEERS:
        return None
    if cfg.mix not in PEER_MIXES:
        return f"mix {cfg.mix!r}: the peers do {', '.join(PEER_MIXES)} only"
    return peer_status(name)


def _start(cfg: BenchConfig, device: str) -> tuple[dict, dict, dict]:
    """Builds every runnable loader, checks its first batch and warms it up:
    ({name: iterator}, {name: output check}, {name: why skipped})."""
    iters, checks, skipped = {}, {}, {}
    for name in cfg.loaders:
        why = _unavailable(name, cfg)
        if why is not None:
            skipped[name] = why
            continue
        it = iter(_make(name, cfg, device))
        images, targets = next(it)
        if name != "decode-only":  # ragged uint8 DALI outputs: nothing to check
            checks[name] = check_batch(name, images, targets, cfg.batch_size, cfg.image_size)
        for _ in range(cfg.warmup - 1):
            next(it)
        iters[name] = it
    return iters, checks, skipped


def settle_tree(max_s: float = 3.0, idle_cores: float = 0.1, step: float = 0.25) -> tuple[float, float]:
    """Waits (at most ``max_s``) until this process tree uses under ``idle_cores``: the loader
    just timed is refilling its queues. Returns (the tree's CPU seconds then, the CPU seconds
    the polling itself cost this thread, to be taken off)."""
    t_end, own = time.perf_counter() + max_s, time.thread_time()
    c = tree_cpu_seconds()
    while time.perf_counter() < t_end:
        time.sleep(step)  # polling /proc, not synchronising with a thread
        c, before = tree_cpu_seconds(), c
        if c - before < idle_cores * step:
            break
    return c, time.thread_time() - own


def _time_round(it, cfg: BenchConfig, sync) -> dict:
    """One timed round of one loader: images/s, CPU ms per image of the whole process tree,
    the consuming thread's ms per batch, the cores other processes used meanwhile.

    Every loader keeps batches in flight (prefetch queues), full when a round starts, so its
    CPU is read from the round's start until the tree is idle again after it: the round's own
    images plus refilling the queues to where they started, i.e. exactly the work of the
    images it delivered. The rate is the round's own (a full queue at the start is a few
    percent free for every loader alike)."""
    sync()
    p0, m0 = tree_cpu_seconds(), machine_cpu_seconds()
    t0, c0, n = time.perf_counter(), time.thread_time(), 0
    while time.perf_counter() - t0 < cfg.seconds:
        next(it)
        n += cfg.batch_size
    sync()
    wall, thread = time.perf_counter() - t0, time.thread_time() - c0
    p_round, m1 = tree_cpu_seconds(), machine_cpu_seconds()
    p1, polling = settle_tree()
    return {"rate": n / wall, "cpu_ms": 1e3 * (p1 - p0 - polling) / n, "thread_ms": 1e3 * thread * cfg.batch_size / n,
            "others": max(0.0, (m1 - m0) - (p_round - p0)) / wall}


def run_bench(cfg: BenchConfig) -> dict:
    """Returns ``{"rows": [{loader, images_per_s (median over rounds), min, max, rates (per round),
    ratio_vs_torchvision, ratio_vs_dali_plain (of the medians), paired_ratio_vs_dali_plain and
    paired_ratio_vs_fastcas (medians of the per-round ratios), cpu_ms_per_image (median; all
    processes and threads), cpu_ms_rounds, paired_cpu_ratio_vs_fastcas, train_thread_ms_per_batch,
    others_cores}], "skipped": {loader: why}, "checks": {loader: first batch seen}, "device",
    "load_average": {"start", "end"}, "others_cores"}``."""
    import torch

    from fastcas.loading.config import resolve_device

    device = resolve_device(cfg.device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    load_start = load_average()
    iters, checks, skipped = _start(cfg, device)
    rounds: dict[str, list[dict]] = {n: [] for n in iters}
    settle_tree()  # every queue full before the first round
    for _ in range(cfg.rounds):
        for name, it in iters.items():
            rounds[name].append(_time_round(it, cfg, sync))
    rows = [_row(name, rounds) for name in rounds]
    others = [r["others"] for rs in rounds.values() for r in rs]
    return {"device": device, "rows": rows, "skipped": skipped, "checks": checks,
            "load_average": {"start": load_start, "end": load_average()},
            "others_cores": statistics.median(others) if others else None}


def _paired(a: list[float], b: list[float] | None):
    # each round's value over the reference's in the same round (seconds apart), so a drift of
    # the machine's speed between rounds cancels (shared 2-core VMs drift by 10-20%)
    return statistics.median(x / y for x, y in zip(a, b)) if b else None


def _row(name: str, rounds: dict) -> dict:
    def col(n, key):
        return [r[key] for r in rounds[n]] if n in rounds else None

    r, cpu = col(name, "rate"), col(name, "cpu_ms")
    med = statistics.median(r)
    base, plain = col("torchvision", "rate"), col("dali-plain", "rate")
    return {"loader": name, "images_per_s": med, "min": min(r), "max": max(r), "rates": r,
            "ratio_vs_torchvision": med / statistics.median(base) if base else None,
            "ratio_vs_dali_plain": med / statistics.median(plain) if plain else None,
            "paired_ratio_vs_dali_plain": _paired(r, plain),
            "paired_ratio_vs_fastcas": _paired(r, col("fastcas", "rate")),
            "cpu_ms_per_image": statistics.median(cpu), "cpu_ms_rounds": cpu,
            "paired_cpu_ratio_vs_fastcas": _paired(cpu, col("fastcas", "cpu_ms")),
            "train_thread_ms_per_batch": statistics.median(col(name, "thread_ms")),
            "others_cores": statistics.median(col(name, "others"))}


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


def format_table(res: dict, cfg: BenchConfig) -> str:
    """The printed table of :func:`run_bench`'s result: one line per loader, then the skipped
    loaders with their reasons and the machine's load."""
    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    lines = [f"{'loader':<18} {'img/s':>7} {'min':>7} {'max':>7} {'x fastcas':>9} {'CPU ms/img':>10} "
             f"{'CPU x fastcas':>13} {'x torchvision':>13} {'x dali-plain':>12} {'train ms/batch':>14}   "
             f"({res['device']}, batch {cfg.batch_size}, {cfg.image_size}px, mix {cfg.mix}, weights {cfg.weights})"]
    for r in sorted(res["rows"], key=lambda r: -r["images_per_s"]):
        lines.append(f"{r['loader']:<18} {r['images_per_s']:>7.1f} {r['min']:>7.1f} {r['max']:>7.1f} "
                     f"{f(r['paired_ratio_vs_fastcas']):>9} {r['cpu_ms_per_image']:>10.2f} "
                     f"{f(r['paired_cpu_ratio_vs_fastcas']):>13} {f(r['ratio_vs_torchvision']):>13} "
                     f"{f(r['paired_ratio_vs_dali_plain']):>12} {r['train_thread_ms_per_batch']:>14.2f}")
    lines.append("(x fastcas, CPU x fastcas, x dali-plain: medians over rounds of each round's paired ratio; "
                 "x torchvision: ratio of the medians; CPU: every thread of every process of the loader)")
    for name, why in res.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    la = res.get("load_average") or {}
    lines.append(f"load average at start {la.get('start')}, end {la.get('end')}; other processes used a median "
                 f"{f(res.get('others_cores'))} cores during the rounds")
    return "\n".join(lines)


def format_mixes(results: dict) -> str:
    """One table of several :func:`run_bench` results ``{mix: result}``: per loader and mix,
    images/s median (min-max), paired ratio to fastcas and CPU ms per image."""
    order = list(dict.fromkeys(r["loader"] for res in results.values()
                               for r in sorted(res["rows"], key=lambda r: -r["images_per_s"])))
    head = "| loader | " + " | ".join(f"{m}: img/s (min-max) | x fastcas | CPU ms/img" for m in results) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(results)]
    for name in order:
        cells = []
        for res in results.values():
            r = next((r for r in res["rows"] if r["loader"] == name), None)
            if r is None:
                cells += ["-", "-", "-"]
                continue
            paired = r["paired_ratio_vs_fastcas"]
            cells += [f"{r['images_per_s']:.0f} ({r['min']:.0f}-{r['max']:.0f})",
                      "-" if paired is None else f"{paired:.2f}", f"{r['cpu_ms_per_image']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_result(payload: dict, path: str) -> None:
    """A PNG of one stored ``fastcas bench`` JSON: images/s (median, min-max) and CPU ms per
    image of each loader, titled with the machine, date and load average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cfg, m = payload["rows"], payload["config"], payload["machine"]
    names = [r["loader"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax.bar(names, [r["images_per_s"] for r in rows],
           yerr=[[r["images_per_s"] - r["min"] for r in rows], [r["max"] - r["images_per_s"] for r in rows]])
    ax.set_ylabel("images / s (median, min-max)")
    ax2.bar(names, [r.get("cpu_ms_per_image") or 0 for r in rows], color="tab:orange")
    ax2.set_ylabel("CPU ms / image (all processes)")
    for a in (ax, ax2):
        a.tick_params(axis="x", labelrotation=40, labelsize=8)
    la, others = payload.get("load_average") or {}, payload.get("others_cores")
    fig.suptitle(f"batch {cfg['batch_size']}, {cfg['image_size']}px, mix {cfg['mix']}; {m['cpu']} x{m['cores']}, "
                 f"{'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}, {m['date']}; load average {la.get('start')} -> "
                 f"{la.get('end')}, other processes {'?' if others is None else f'{others:.2f}'} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
