"""Per-batch time of fastcas mixing (parameters + apply) per kind, backend, batch size, dtype.

    python benchmarks/bench_mix.py            # B = 32, 64 on CPU (64, 256 with a GPU), 224x224
    python benchmarks/bench_mix.py --quick    # tiny smoke run

Backends: NumPy reference and torch CPU always; torch CUDA through the Numba kernels and through
torch ops when a GPU is present. Baselines where installed: torchvision ``v2.CutMix`` /
``v2.MixUp`` (one lambda per batch), timm ``Mixup`` (elem mode, a Python loop over samples),
kornia ``RandomCutMixV2``. Goals (H100, B=256): CutMix <= 0.3 ms, FMix <= 1 ms,
SaliencyMix <= 2 ms per batch.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import base_parser, print_table, timeit, write_json  # noqa: E402

GOALS_MS = {"cutmix": 0.3, "fmix": 1.0, "saliencymix": 2.0}


def _torch():
    import torch

    return torch


def bench_fastcas(kind, b, size, dtype, backend, repeat, num_classes=1000):
    from fastcas.core.rng import generator
    from fastcas.mix import apply, make_params, mix

    torch = _torch()
    rng = np.random.default_rng(0)
    host = (rng.random((b, 3, size, size), dtype=np.float32) * 255).astype(dtype)
    y = rng.integers(0, num_classes, b)
    sync = None
    if backend == "numpy":
        bg, fg = host, host[::-1].copy()
    else:
        dev = "cuda" if backend.startswith("cuda") else "cpu"
        bg = torch.from_numpy(host).to(dev)
        fg = bg.flip(0).contiguous()
        y = torch.from_numpy(y).to(dev)
        if dev == "cuda":
            sync = torch.cuda.synchronize
    apply_backend = {"cuda-torch": "torch", "cuda-numba": "numba"}.get(backend, "auto")
    gen = generator(1)
    device = "cuda" if backend.startswith("cuda") else None
    params = make_params(kind, b, size, size, alpha=1.0, generator=gen, foreground=fg, device=device)
    t_params = timeit(lambda: make_params(kind, b, size, size, alpha=1.0, generator=gen,
                                          foreground=fg, device=device), repeat=repeat, sync=sync)
    t_apply = timeit(lambda: apply(params, bg, fg, backend=apply_backend), repeat=repeat, sync=sync)
    t_mix = timeit(lambda: mix(kind, bg, fg, y, y, num_classes=num_classes, generator=gen,
                               backend=apply_backend), repeat=repeat, sync=sync)
    return {"impl": f"fastcas-{backend}", "kind": kind, "B": b, "dtype": np.dtype(dtype).name,
            "params_ms": 1e3 * t_params["median_s"], "apply_ms": 1e3 * t_apply["median_s"],
            "total_ms": 1e3 * t_mix["median_s"]}


def bench_baselines(b, size, dtype, device, repeat, num_classes=1000):
    rows = []
    torch = _torch()
    tdt = {"float32": torch.float32, "float16": torch.float16}[np.dtype(dtype).name]
    x = torch.rand(b, 3, size, size, device=device).to(tdt)
    y = torch.randint(0, num_classes, (b,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else None

    def row(impl, kind, fn):
        t = timeit(fn, repeat=repeat, sync=sync)
        rows.append({"impl": f"{impl}-{device}", "kind": kind, "B": b, "dtype": np.dtype(dtype).name,
                     "params_ms": None, "apply_ms": None, "total_ms": 1e3 * t["median_s"]})

    try:
        from torchvision.transforms import v2

        cm, mu = v2.CutMix(num_classes=num_classes), v2.MixUp(num_classes=num_classes)
        row("torchvision.v2", "cutmix", lambda: cm(x, y))
        row("torchvision.v2", "mixup", lambda: mu(x, y))
    except ImportError:
        pass
    try:
        from timm.data import Mixup

        if b % 2 == 0:
            for kind, kw in (("cutmix", {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}),
                             ("mixup", {"mixup_alpha": 1.0, "cutmix_alpha": 0.0})):
                m = Mixup(**kw, mode="elem", num_classes=num_classes)
                row("timm-elem", kind, lambda m=m: m(x.clone(), y))
    except ImportError:
        pass
    try:
        from kornia.augmentation import RandomCutMixV2

        k = RandomCutMixV2(p=1.0)
        row("kornia", "cutmix", lambda: k(x, y))
    except ImportError:
        pass
    return rows


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default=None, help="comma list (default 32,64 CPU; 64,256 GPU)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtypes", default=None, help="comma list (default float32 CPU; float32,float16 GPU)")
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--kinds", default="cutmix,fmix,saliencymix,mixup")
    args = p.parse_args(argv)
    torch = _torch()
    gpu = torch.cuda.is_available()
    sizes = [int(s) for s in (args.batch_sizes or ("64,256" if gpu else "32,64")).split(",")]
    dtypes = (args.dtypes or ("float32,float16" if gpu else "float32")).split(",")
    size, repeat = args.size, args.repeat or (20 if gpu else 5)
    if args.quick:
        sizes, size, repeat = [8], 64, 2
    backends = ["numpy", "cpu"] + (["cuda-numba", "cuda-torch"] if gpu else [])
    kinds = args.kinds.split(",")
    rows = []
    for b in sizes:
        for dt in dtypes:
            for backend in backends:
                if backend in ("numpy", "cpu") and gpu and dt == "float16":
                    continue
                for kind in kinds:
                    rows.append(bench_fastcas(kind, b, size, np.dtype(dt), backend, repeat))
            for device in ["cpu"] + (["cuda"] if gpu else []):
                if device == "cpu" and dt == "float16":
                    continue
                rows += bench_baselines(b, size, np.dtype(dt), device, repeat)
    cols = ["impl", "kind", "B", "dtype", "params_ms", "apply_ms", "total_ms"]
    print_table([{c: ("" if r[c] is None else r[c]) for c in cols} for r in rows], cols,
                title=f"mixing, {size}x{size}, ms per batch (median of {repeat})")
    goals = []
    if gpu and not args.quick:
        for kind, goal in GOALS_MS.items():
            got = [r["total_ms"] for r in rows if r["impl"] == "fastcas-cuda-numba" and r["kind"] == kind
                   and r["B"] == 256]
            if got:
                goals.append({"goal": f"{kind} B=256 <= {goal} ms", "value": min(got), "met": min(got) <= goal})
    path = write_json("bench_mix", {"sizes": sizes, "image": size, "dtypes": dtypes, "repeat": repeat,
                                    "quick": args.quick}, rows, args.out, goals=goals)
    plot(rows, path.with_suffix(".png"), f"mixing {size}x{size}, B={max(sizes)}, {dtypes[0]}",
         max(sizes), dtypes[0])
    return 0


def plot(rows, out, title, b, dtype):
    """Grouped bars: ms per batch by kind, one bar per implementation (largest B, first dtype)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["B"] == b and r["dtype"] == dtype]
    kinds = list(dict.fromkeys(r["kind"] for r in sel))
    impls = list(dict.fromkeys(r["impl"] for r in sel))
    fig, ax = plt.subplots(figsize=(1.6 * len(kinds) + 2, 3.2))
    width = 0.8 / max(len(impls), 1)
    for j, impl in enumerate(impls):
        vals = [next((r["total_ms"] for r in sel if r["impl"] == impl and r["kind"] == k), 0.0)
                for k in kinds]
        ax.bar(np.arange(len(kinds)) + j * width, vals, width, label=impl)
    ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds)
    ax.set_ylabel("ms per batch")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
