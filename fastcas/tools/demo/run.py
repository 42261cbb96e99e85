"""The end-to-end demo: real long-tailed data -> CAS scores -> the papers' comparisons -> one report.

    data  Fashion-MNIST-LT-tint (default, :mod:`fastcas.tools.demo.tint`: a controlled, long-tailed
          attribute inside every class, validation balanced over it) or plain Fashion-MNIST-LT
    score train (pixel encoder, fitted bins) and val (ranked with train's bins and statistics)
    check CAS finds the rare attribute (within-class AUC) and how often CAS weights draw it
          against uniform draws (fastcas.train.monitor)
    train with the same seed and settings: CutMix vs CutMix + CAS weights (the CAS paper's
          Table 2 comparison), CE vs CE + CMO (the CMO paper's); ``seeds`` > 1 repeats all
    evaluate top-1, many / medium / few classes, CAS low / middle / high subsets and the
          rare-attribute validation subset; mean ± sd over seeds
    loader benchmark: fastcas vs torchvision on the real-photo corpus (optional)
    -> OUT/report.md, report.json, recipes.png, bench.png, RECIPE-seedS/predictions.npy
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcas.core.io import atomic_write_bytes, atomic_write_json

GROUPS = ("top1", "many", "medium", "few", "cas_low", "cas_middle", "cas_high", "rare_attr")


@dataclass(frozen=True)
class DemoConfig:
    train: str
    val: str
    out: str = "runs/demo"
    corpus: str | None = None
    # 12 x 4,096 draws (384 steps) at 16 px: what 2 seeds x 4 recipes fit in ~10 minutes on two
    # cores. A run costs ~20 s fixed plus ~3 s an epoch, and 16 px costs about what 28 px does per
    # step there, so the budget goes into steps (at 96 steps few-shot accuracy was 0.000 for all).
    epochs: int = 12
    epoch_length: int | None = 4096
    batch_size: int = 128
    image_size: int = 16      # training and evaluation size
    score_size: int = 28      # CAS scoring at Fashion-MNIST's native size, whatever the training size
    model: str = "resnet8"   # a 2-core CPU trains resnet8 ~3x faster per step than resnet32: 2 seeds fit
    many: int = 1000   # Fashion-MNIST-LT has 60..6000 images a class: thresholds scaled to it
    few: int = 200
    py_workers: int = 1
    bench_seconds: float = 3.0
    device: str = "auto"  # "cpu" / "cuda" / "auto" (scoring, training and the throughput check)
    seeds: int = 2     # training seeds 0 .. seeds-1 (the data stay fixed)
    progress: bool = True

    def __post_init__(self):
        if self.seeds < 1 or self.epochs < 1:
            raise ValueError(f"seeds and epochs must be >= 1, got seeds={self.seeds}, epochs={self.epochs}")


def recipes(cfg: DemoConfig) -> dict:
    """The two papers' comparisons, each pair identical but for the one thing compared."""
    cutmix = dict(mix="cutmix", alpha=1.0, mix_prob=0.5)
    return {
        "CutMix": dict(weights="uniform", **cutmix),
        "CutMix + CAS": dict(weights="cas", b=1.2, **cutmix),
        "CE": dict(weights="uniform", mix="none"),
        "CE + CMO": dict(weights="uniform", foreground_weights="cmo", **cutmix),
    }


def score(dataset: str, out: Path, reference: Path | None, image_size: int, py_workers: int,
          device: str = "auto", progress: bool = True) -> Path:
    """Pixel-encoder CAS scores (the ``fastcas score`` job; reused when present)."""
    from fastcas.scoring.job import ScoreConfig
    from fastcas.scoring.job import score as run_score

    if not out.exists():
        run_score(ScoreConfig(dataset=dataset, out=str(out), encoder="pixel", batch_size=256, image_size=image_size,
                              workers=py_workers, rank=0, world_size=1, device=device,
                              reference=str(reference) if reference else None, no_progress=not progress))
    return out


def predict(model_path: Path, tc, dataset: str) -> np.ndarray:
    """int64 [N] top-1 predictions of the saved model on ``dataset``, in dataset order."""
    import torch

    from fastcas.loading.config import resolve_device
    from fastcas.loading.loader import Loader
    from fastcas.train.models import build_model

    device = resolve_device(tc.device)
    loader = Loader(dataset, tc.batch_size, train=False, last_batch="partial", image_size=tc.image_size,
                    device=device, py_workers=tc.py_workers, num_threads=tc.num_threads, seed=tc.seed)
    model = build_model(tc.model, loader.num_classes).to(device)
    model.load_state_dict(torch.load(model_path, map_location=device, weights_only=True))
    model.eval()
    pred = np.zeros(len(loader.reader), np.int64)
    positions, k = loader.sampler_indices(0)[0], 0
    try:
        with torch.no_grad():
            for images, labels in loader:
                pred[positions[k:k + len(labels)]] = model(images.float()).argmax(1).cpu().numpy()
                k += len(labels)
    finally:
        loader.close()
    return pred


def attribute_check(train: str, scores: Path, epoch_length: int | None, seed: int = 0) -> dict | None:
    """On tinted data: within-class AUC of CAS for the rare tints, and their share of one
    epoch of draws under uniform vs CAS weights (fastcas.train.monitor). None without tints."""
    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import read_scores
    from fastcas.sampling import weights as sample_weights
    from fastcas.sampling.sampler import WeightedSampler
    from fastcas.tools.demo.tint import RARE, load_tints, within_class_auc
    from fastcas.train.monitor import drawn_report

    reader = ShardReader(train)
    tints = load_tints(train, reader.keys)
    if tints is None:
        return None
    t = read_scores(scores, keys=reader.keys, labels=reader.labels)
    rare = np.isin(tints, RARE)
    out = {"auc": within_class_auc(t.cas, t.labels, rare), "rare_samples": int(rare.sum()), "draws": {}}
    n = epoch_length or len(reader)
    for name in ("uniform", "cas"):
        w = sample_weights.make(name, reader.labels, scores=t.cas)
        drawn = WeightedSampler(w, n, seed=seed).indices(0)
        out["draws"][name] = drawn_report(reader.labels, drawn, w, groups={"rare attribute": rare})["groups"][
            "rare attribute"
        ]
    return out


def _evaluate(labels, pred, train_counts, cas, rare, cfg: DemoConfig) -> dict:
    from fastcas.train.metrics import accuracy_report

    rep = accuracy_report(labels, pred, train_counts, cas=cas, many=cfg.many, few=cfg.few)
    rep["rare_attr"] = float((labels[rare] == pred[rare]).mean()) if rare is not None and rare.any() else None
    return rep


def _fmt(values) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"


def noise_lines(runs: dict, groups=GROUPS) -> list[str]:
    """Which of the demo's paired differences (treatment - control, paired by seed) exceed the
    seed spread: the 95% paired-t interval excludes 0 (:mod:`fastcas.tools.reproduce.stats`).
    ``runs`` recipe -> list over seeds of group -> accuracy. Needs >= 2 seeds."""
    from fastcas.tools.reproduce.stats import paired_difference

    lines = []
    for treat, ctrl in (("CutMix + CAS", "CutMix"), ("CE + CMO", "CE")):
        if treat not in runs or ctrl not in runs or min(len(runs[treat]), len(runs[ctrl])) < 2:
            continue
        beyond, within = [], []
        for g in groups:
            d = paired_difference([r.get(g) for r in runs[treat]], [r.get(g) for r in runs[ctrl]])
            if d["t_low"] is None:
                continue
            (beyond if d["exceeds_noise"] else within).append(
                f"{g} {d['mean']:+.3f} [{d['t_low']:+.3f}, {d['t_high']:+.3f}]")
        lines.append(f"- {treat} vs {ctrl}: beyond the seed spread: {', '.join(beyond) or 'none'}; "
                     f"within it: {', '.join(within) or 'none'}.")
    return lines


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
    ax.set_xticks(np.arange(len(GROUPS)) + 0.4 - width / 2, GROUPS, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1")
    ax.legend(fontsize=8)
    ax.set_title("accuracy by group (mean over seeds)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_demo(cfg: DemoConfig) -> dict:
    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import read_scores
    from fastcas.tools.demo.tint import RARE, load_tints
    from fastcas.train.loop import TrainConfig, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_scores = score(cfg.train, out / "train-scores.parquet", None, cfg.score_size, cfg.py_workers, cfg.device,
                         cfg.progress)
    val_scores = score(cfg.val, out / "val-scores.parquet", train_scores, cfg.score_size, cfg.py_workers,
                       cfg.device, cfg.progress)
    check = attribute_check(cfg.train, train_scores, cfg.epoch_length)
    if check:
        d = check["draws"]
        print(f"rare attribute: within-class CAS AUC {check['auc']:.3f}; share of one epoch of draws: "
              f"uniform {d['uniform']['drawn']:.4f}, CAS weights {d['cas']['drawn']:.4f} "
              f"(target {d['cas']['target']:.4f})", flush=True)
    vreader, treader = ShardReader(cfg.val), ShardReader(cfg.train)
    vcas = read_scores(val_scores, keys=vreader.keys, labels=vreader.labels).cas
    vt = load_tints(cfg.val, vreader.keys)
    rare = np.isin(vt, RARE) if vt is not None else None
    runs: dict = {name: [] for name in recipes(cfg)}
    for seed in range(cfg.seeds):
        for name, opts in recipes(cfg).items():
            slug = name.lower().replace(" + ", "-").replace(" ", "-") + (f"-seed{seed}" if cfg.seeds > 1 else "")
            tc = TrainConfig(train=cfg.train, val=None, out=str(out / slug), model=cfg.model, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, image_size=cfg.image_size, lr=0.1, weight_decay=2e-4,
                             scores=str(train_scores), epoch_length=cfg.epoch_length, many=cfg.many, few=cfg.few,
                             py_workers=cfg.py_workers, checkpoint_every=10**6, seed=seed, progress=cfg.progress,
                             device=cfg.device, **opts)
            print(f"== {name} (seed {seed})", flush=True)
            train(tc, overwrite=True)  # the demo owns its run directories: a re-run replaces them
            pred = predict(out / slug / "model.pt", tc, cfg.val)
            np.save(out / slug / "predictions.npy", pred)
            rep = _evaluate(vreader.labels, pred, treader.class_counts, vcas, rare, cfg)
            atomic_write_json(out / slug / "eval.json", rep)
            runs[name].append({g: rep.get(g) for g in GROUPS})
    results = {name: {g: float(np.mean([r[g] for r in rs])) if all(r[g] is not None for r in rs) else None
                      for g in GROUPS} for name, rs in runs.items()}
    bench = None
    if cfg.corpus and cfg.bench_seconds > 0:
        from fastcas.tools.bench import BenchConfig, run_bench

        bench = run_bench(BenchConfig(dataset=cfg.corpus, loaders=("fastcas", "torchvision"), batch_size=32,
                                      mix="cutmix", seconds=cfg.bench_seconds, rounds=2, device=cfg.device))
    _plot(results, out / "recipes.png")
    report = {"config": cfg.__dict__, "results": results, "runs": runs, "attribute_check": check, "bench": bench}
    atomic_write_json(out / "report.json", report)
    shown = [g for g in GROUPS if any(r[g] is not None for rs in runs.values() for r in rs)]
    lines = ["# fastcas demo report", "",
             f"Train `{cfg.train}`, validation `{cfg.val}`; {cfg.model}, {cfg.epochs} epochs of "
             f"{cfg.epoch_length or 'all'} samples, {cfg.image_size}px, batch {cfg.batch_size}, "
             f"{cfg.seeds} seed(s){' (mean ± sd)' if cfg.seeds > 1 else ''}. Many > {cfg.many}, few < {cfg.few} "
             "training images; CAS subsets low/middle/high = 30/30/40% of validation by CAS (pixel encoder, "
             "training-set bins)" + ("; rare_attr = validation images with a tint that is rare (<= 4%) in "
                                     "training." if rare is not None else "."), ""]
    if check:
        d = check["draws"]
        lines += [f"CAS finds the rare attribute: within-class AUC {check['auc']:.3f} ({check['rare_samples']} "
                  f"training images). Share of one epoch of draws: uniform {d['uniform']['drawn']:.4f}, "
                  f"CAS weights {d['cas']['drawn']:.4f} (target {d['cas']['target']:.4f}).", ""]
    lines += ["| recipe | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for name, rs in runs.items():
        lines.append(f"| {name} | " + " | ".join(_fmt([r[g] for r in rs]) for g in shown) + " |")
    if cfg.seeds > 1:
        lines += ["", f"Paired by seed ({cfg.seeds} seeds), treatment - control, mean [95% paired-t interval]:", ""]
        lines += noise_lines(runs, shown)
    else:
        lines += ["", "One seed: no difference can be told from the seed spread (use --seeds 2 or more)."]
    if bench:
        lines += ["", f"Loader throughput on the real-photo corpus ({bench['device']}, 224px, batch 32, CutMix):", ""]
        for row in bench["rows"]:
            lines.append(f"- {row['loader']}: {row['images_per_s']:.0f} images/s "
                         f"(x{row['ratio_vs_torchvision']:.2f} torchvision)")
    lines += ["", "![accuracy by group](recipes.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(line for line in lines if not line.startswith("![")))
    print(f"report: {out / 'report.md'}")
    return report
