"""The end-to-end demo: real long-tailed data -> CAS scores -> three recipes -> one report.

    score train (pixel encoder) and val (ranked with train's statistics)
    train CE (uniform), CE + CMO (uniform background + 1/n_k foreground, CutMix paste),
          CAS-weighted CutMix (w = CAS^1.2, alpha 0.2)
    evaluate top-1, many / medium / few classes, CAS low / middle / high subsets
    loader benchmark: fastcas vs torchvision on the real-photo corpus
    -> OUT/report.md, report.json, recipes.png, bench.png
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from fastcas._io import atomic_write_bytes, atomic_write_json

GROUPS = ("top1", "many", "medium", "few", "cas_low", "cas_middle", "cas_high")


@dataclass(frozen=True)
class DemoConfig:
    train: str
    val: str
    out: str = "runs/demo"
    corpus: str | None = None
    epochs: int = 3
    epoch_length: int | None = 4096
    batch_size: int = 128
    image_size: int = 28
    model: str = "resnet32"
    many: int = 1000   # Fashion-MNIST-LT has 60..6000 images a class: thresholds scaled to it
    few: int = 200
    py_workers: int = 1
    bench_seconds: float = 3.0
    device: str = "auto"  # "cpu" / "cuda" / "auto" (scoring, training and the throughput check)


def recipes(cfg: DemoConfig) -> dict:
    return {
        "CE": dict(weights="uniform", mix="none"),
        "CE + CMO": dict(weights="uniform", foreground_weights="cmo", mix="cutmix", alpha=1.0, mix_prob=0.5),
        "CAS CutMix": dict(weights="cas", mix="cutmix", alpha=0.2, b=1.2),
    }


def score(dataset: str, out: Path, reference: Path | None, image_size: int, py_workers: int,
          device: str = "auto") -> Path:
    """Pixel-encoder CAS scores through the ``fastcas score`` command (reused when present)."""
    from fastcas.cli import main

    if not out.exists():
        argv = ["score", dataset, "--out", str(out), "--encoder", "pixel", "--batch-size", "256",
                "--image-size", str(image_size), "--workers", str(py_workers), "--rank", "0", "--world-size", "1", "--device", device]
        if reference:
            argv += ["--reference", str(reference)]
        if main(argv) != 0:
            raise RuntimeError(f"scoring {dataset} failed")
    return out


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 3.4))
    names = list(results)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [results[name].get(g) or 0 for g in GROUPS]
        ax.bar(np.arange(len(GROUPS)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(GROUPS)) + 0.4 - width / 2, GROUPS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1")
    ax.legend(fontsize=8)
    ax.set_title("Fashion-MNIST-LT (ratio 100): accuracy by group")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_demo(cfg: DemoConfig) -> dict:
    from fastcas.train import TrainConfig, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_scores = score(cfg.train, out / "train-scores.parquet", None, cfg.image_size, cfg.py_workers, cfg.device)
    val_scores = score(cfg.val, out / "val-scores.parquet", train_scores, cfg.image_size, cfg.py_workers, cfg.device)
    results = {}
    for name, opts in recipes(cfg).items():
        slug = name.lower().replace(" + ", "-").replace(" ", "-")
        tc = TrainConfig(train=cfg.train, val=cfg.val, out=str(out / slug), model=cfg.model, epochs=cfg.epochs,
                         batch_size=cfg.batch_size, image_size=cfg.image_size, lr=0.1, weight_decay=2e-4,
                         scores=str(train_scores), val_scores=str(val_scores), epoch_length=cfg.epoch_length,
                         many=cfg.many, few=cfg.few, eval_every=cfg.epochs, py_workers=cfg.py_workers,
                         checkpoint_every=10**6, device=cfg.device, **opts)
        print(f"== {name}", flush=True)
        final = train(tc, overwrite=True)  # the demo owns its run directories: a re-run replaces them
        results[name] = {g: final["report"].get(g) for g in GROUPS}
    bench = None
    if cfg.corpus and cfg.bench_seconds > 0:
        from fastcas.bench import BenchConfig, run_bench

        bench = run_bench(BenchConfig(dataset=cfg.corpus, loaders=("fastcas", "torchvision"), batch_size=32,
                                      mix="cutmix", seconds=cfg.bench_seconds, rounds=2, device=cfg.device))
    _plot(results, out / "recipes.png")
    report = {"config": cfg.__dict__, "results": results, "bench": bench}
    atomic_write_json(out / "report.json", report)
    lines = ["# fastcas demo report", "",
             f"Train `{cfg.train}`, validation `{cfg.val}`; {cfg.model}, {cfg.epochs} epochs of "
             f"{cfg.epoch_length or 'all'} samples, {cfg.image_size}px. Many > {cfg.many}, few < {cfg.few} "
             "training images; CAS subsets low/middle/high = 30/30/40% of validation by CAS (pixel encoder).", "",
             "| recipe | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join("-" if r[g] is None else f"{r[g]:.3f}" for g in GROUPS) + " |")
    if bench:
        lines += ["", f"Loader throughput on the real-photo corpus ({bench['device']}, 224px, batch 32, CutMix):", ""]
        for row in bench["rows"]:
            lines.append(f"- {row['loader']}: {row['images_per_s']:.0f} images/s "
                         f"(x{row['ratio_vs_torchvision']:.2f} torchvision)")
    lines += ["", "![accuracy by group](recipes.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines[:len(results) + 6]))
    print(f"report: {out / 'report.md'}")
    return report
