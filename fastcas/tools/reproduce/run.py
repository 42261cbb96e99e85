"""``fastcas reproduce``: the papers' comparisons with trained models, several seeds, paired statistics.

Data: Fashion-MNIST-LT-tint (:mod:`fastcas.tools.demo.tint`, real Fashion-MNIST images, class
ratio 100, a controlled rare attribute inside every class, validation balanced over it),
scored with the pixel encoder (:func:`fastcas.tools.demo.run.score`). Every arm is trained by
:func:`fastcas.train.loop.train` with the same model, schedule and budget; only the recipe
differs. For each seed s (the model initialisation and the data streams' key) every arm is
trained once, so the comparisons are paired by seed (:mod:`fastcas.tools.reproduce.stats`).

Arms and the settings each paper's reference code used (where the text and the code disagree,
the code that produced the tables is the reference, see /work/shared/REFERENCES.md):

* CE; CE + CMO: uniform background stream + foreground stream with per-sample weight 1/n_k
  (naver-ai/cmo ``get_weighted_sampler``, class-balanced), CutMix paste, Beta(1, 1), p = 0.5,
  mixing only while ``mix_start <= epoch < epochs - mix_end`` (the code's start/end_data_aug,
  scaled to the short schedule);
* CE + CAS: CAS weights r**b, b = 1.2, no mixing;
* CutMix / FMix / SaliencyMix, each with uniform or CAS weights: alpha = 0.2 (CAS paper, Sec.
  "Experiments"), p = 0.5 (the CIFAR setting of the SaliencyMix code; the paper does not state p).

Output (``OUT``): ``report.json`` (config, every arm x seed result, curves, summary, paired
differences), ``report.md``, ``curves.png``, ``groups.png``; per run ``ARM-seedS/``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fastcas.core.io import atomic_write_json
from fastcas.tools.reproduce.report import COMPARISONS, GROUPS, write_report  # noqa: F401 (COMPARISONS re-exported)

_MIX = dict(alpha=0.2, mix_prob=0.5)
ARMS = {
    "CE": dict(weights="uniform", mix="none"),
    "CE + CMO": dict(weights="uniform", foreground_weights="cmo", mix="cutmix", alpha=1.0, mix_prob=0.5),
    "CE + CAS": dict(weights="cas", b=1.2, mix="none"),
    "CutMix": dict(weights="uniform", mix="cutmix", **_MIX),
    "CutMix + CAS": dict(weights="cas", b=1.2, mix="cutmix", **_MIX),
    "FMix": dict(weights="uniform", mix="fmix", **_MIX),
    "FMix + CAS": dict(weights="cas", b=1.2, mix="fmix", **_MIX),
    "SaliencyMix": dict(weights="uniform", mix="saliencymix", **_MIX),
    "SaliencyMix + CAS": dict(weights="cas", b=1.2, mix="saliencymix", **_MIX),
}


@dataclass(frozen=True)
class ReproduceConfig:
    """One reproduction run. ``arms`` names keys of :data:`ARMS` (all by default)."""

    train: str
    val: str
    out: str = "build/reproduce"
    arms: tuple = tuple(ARMS)
    seeds: int = 3
    model: str = "resnet8"
    epochs: int = 8
    epoch_length: int | None = 4096
    batch_size: int = 128
    image_size: int = 28      # training and evaluation size (Fashion-MNIST is 28 px)
    score_size: int = 28      # CAS scoring size: the native resolution, whatever the training size
    lr: float = 0.1
    weight_decay: float = 5e-4
    eval_every: int = 2       # validation curve points (epochs); the last epoch is always evaluated
    many: int = 1000          # Fashion-MNIST-LT has 60..6000 images a class (same thresholds as the demo)
    few: int = 200
    py_workers: int = 1
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self):
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; expected some of {list(ARMS)}")
        if not self.arms:
            raise ValueError("arms must name at least one arm")
        for name in ("seeds", "epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "arms", tuple(self.arms))

    def cmo_window(self) -> tuple[int, int]:
        """(mix_start, mix_end) for CMO: the reference's 3 + 3 of 200 epochs, scaled, at least 0."""
        k = max(0, round(self.epochs * 3 / 200))
        return k, k


# Arms trained together seed by seed, block after block: a run cut short still has whole
# comparisons with every seed (rather than every comparison with fewer seeds). The CAS paper's
# Table 2 pair (CutMix vs CutMix + CAS) comes first, then the CMO paper's.
BLOCKS = (("CutMix", "CutMix + CAS"), ("CE", "CE + CMO", "CE + CAS"), ("FMix", "FMix + CAS"),
          ("SaliencyMix", "SaliencyMix + CAS"))


def schedule(arms, seeds: int) -> list[tuple[str, int]]:
    """(arm, seed) in training order: for each block of :data:`BLOCKS`, seed 0's arms, seed 1's, ..."""
    order = []
    for block in BLOCKS:
        chosen = [a for a in block if a in arms]
        order += [(a, s) for s in range(seeds) for a in chosen]
    return order


def slug(arm: str, seed: int) -> str:
    return arm.lower().replace(" + ", "-").replace(" ", "-") + f"-seed{seed}"


def _curve(path: Path) -> list[dict]:
    if not path.exists():
        return []
    keep = ("epoch", "top1", "many", "medium", "few", "cas_low", "cas_middle", "cas_high", "seconds")
    return [{k: r.get(k) for k in keep} for r in map(json.loads, path.read_text().splitlines()) if r]


def run_reproduce(cfg: ReproduceConfig) -> dict:
    """Train every arm x seed in :func:`schedule` order, evaluate, and rewrite the report after
    every run (a run stopped early leaves a valid report). Returns the report dict."""
    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import read_scores
    from fastcas.tools.demo.run import _evaluate, attribute_check, predict, score
    from fastcas.tools.demo.tint import RARE, load_tints
    from fastcas.train.loop import TrainConfig, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    train_scores = score(cfg.train, out / "train-scores.parquet", None, cfg.score_size, cfg.py_workers,
                         cfg.device, cfg.progress)
    val_scores = score(cfg.val, out / "val-scores.parquet", train_scores, cfg.score_size, cfg.py_workers,
                       cfg.device, cfg.progress)
    check = attribute_check(cfg.train, train_scores, cfg.epoch_length)
    vreader, treader = ShardReader(cfg.val), ShardReader(cfg.train)
    vcas = read_scores(val_scores, keys=vreader.keys).cas
    vt = load_tints(cfg.val, vreader.keys)
    rare = np.isin(vt, RARE) if vt is not None else None
    runs: dict = {arm: {} for arm in cfg.arms}
    curves: dict = {arm: {} for arm in cfg.arms}
    seconds: dict = {arm: {} for arm in cfg.arms}
    start, end = cfg.cmo_window()
    report: dict = {}
    for arm, seed in schedule(cfg.arms, cfg.seeds):
        opts = dict(ARMS[arm])
        if opts.get("foreground_weights") == "cmo":
            opts.update(mix_start=start, mix_end=end)
        d = out / slug(arm, seed)
        tc = TrainConfig(train=cfg.train, val=cfg.val, out=str(d), model=cfg.model, epochs=cfg.epochs,
                         batch_size=cfg.batch_size, image_size=cfg.image_size, lr=cfg.lr,
                         weight_decay=cfg.weight_decay, scores=str(train_scores), val_scores=str(val_scores),
                         epoch_length=cfg.epoch_length, many=cfg.many, few=cfg.few, eval_every=cfg.eval_every,
                         py_workers=cfg.py_workers, checkpoint_every=10**6, seed=seed, progress=cfg.progress,
                         device=cfg.device, **opts)
        print(f"== {arm} (seed {seed})", flush=True)
        t0 = time.time()
        train(tc, overwrite=True)  # the reproduction owns its run directories
        pred = predict(d / "model.pt", tc, cfg.val)
        np.save(d / "predictions.npy", pred)
        rep = _evaluate(vreader.labels, pred, treader.class_counts, vcas, rare, cfg)
        atomic_write_json(d / "eval.json", rep)
        runs[arm][seed] = {g: rep.get(g) for g in GROUPS}
        curves[arm][seed] = _curve(d / "metrics.jsonl")
        seconds[arm][seed] = time.time() - t0
        report = write_report(out, {"config": asdict(cfg), "attribute_check": check, "runs": runs,
                                    "curves": curves, "seconds": seconds,
                                    "wall_seconds": time.time() - t_start})
    return report
