"""``fastcas reproduce``: the papers' comparisons with controls, trained in memory, paired by seed.

Three parts (:mod:`fastcas.tools.reproduce.experiments`): ``cmo`` (CE / CutMix / CMO /
class-balanced resampling on Fashion-MNIST-LT, ratio 100, 28 px, CIFAR augmentation), ``cas``
(CutMix vs CutMix + CAS vs a within-class placebo vs oracle weights on a class-balanced tinted
set, and a rotation attribute as negative control) and ``importance`` (the importance-sampling
paper's undersample / oversample plans and loss up-weighting on frozen features).
Evaluation: Fashion-MNIST's test set split per class into a ``dev`` half (curves only) and a
``test`` half (every reported number; nothing is chosen on it).

Every (part, arm, seed) is one task; ``workers`` processes (one torch thread each) run them,
seed by seed, so a run cut short has whole comparisons for its first seeds. Each finished task
is written to ``OUT/runs/PART/ARM-seedS.json`` with its settings; a later call with the same
settings reuses it (``resume``). The report (:mod:`.report`) is rebuilt from those files.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fastcas.core.io import atomic_write_json

PARTS = ("cmo", "cas", "importance")


@dataclass(frozen=True)
class ReproduceConfig:
    """One reproduction. Defaults: the budgeted run (<= 90 min on a 2-core CPU, 2 workers)."""

    fashion_mnist: str | None = None
    out: str = "build/reproduce"
    parts: tuple = ("importance", "cmo", "cas")  # cheap first; CMO before CAS (its n >= 5 matters most)
    seeds: int = 5            # cmo and cas parts
    is_seeds: int = 10        # importance part
    cmo_epochs: int = 3       # passes over Fashion-MNIST-LT (14,886 images, 117 steps of 128)
    cas_epochs: int = 5
    cas_per_class: int = 200  # balanced tinted / rotated sets: images a class
    is_epochs: int = 20
    batch_size: int = 128
    workers: int = 2
    data_seed: int = 0
    limit: int | None = None  # tests: the first LIMIT images of every class only
    arms: tuple | None = None  # only these arms (of any part); None: every arm
    resume: bool = True

    def __post_init__(self):
        bad = [p for p in self.parts if p not in PARTS]
        if bad or not self.parts:
            raise ValueError(f"parts must be some of {PARTS}, got {list(self.parts)}")
        for name in ("seeds", "is_seeds", "cmo_epochs", "cas_epochs", "cas_per_class", "is_epochs",
                     "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "parts", tuple(self.parts))
        if self.arms is not None:
            from fastcas.tools.reproduce.experiments import ARMS
            from fastcas.tools.reproduce.importance import ARMS as IS_ARMS

            known = {a for p in ARMS.values() for a in p} | set(IS_ARMS)
            if not self.arms or set(self.arms) - known:
                raise ValueError(f"unknown arms {sorted(set(self.arms) - known)}; expected some of {sorted(known)}")
            object.__setattr__(self, "arms", tuple(self.arms))

    def settings(self, part: str) -> dict:
        """What a task's result depends on (a stored result is reused only if these match)."""
        keys = {"cmo": ("cmo_epochs",), "cas": ("cas_epochs", "cas_per_class"), "importance": ("is_epochs",)}[part]
        return {k: getattr(self, k) for k in keys + ("batch_size", "data_seed", "limit", "fashion_mnist")}


def tasks(cfg: ReproduceConfig) -> list[tuple[str, str, int]]:
    """(part, arm, seed) in training order: seed-major inside each part, parts in ``cfg.parts`` order."""
    from fastcas.tools.reproduce.experiments import ARMS
    from fastcas.tools.reproduce.importance import ARMS as IS_ARMS

    out = []
    for part in cfg.parts:
        arms = [a for a in (IS_ARMS if part == "importance" else ARMS[part]) if cfg.arms is None or a in cfg.arms]
        n = cfg.is_seeds if part == "importance" else cfg.seeds
        out += [(part, a, s) for s in range(n) for a in arms]
    return out


def slug(arm: str, seed: int) -> str:
    s = "".join(c if c.isalnum() else "-" for c in arm.lower())
    return "-".join(p for p in s.split("-") if p) + f"-seed{seed}"


def prepare(cfg: ReproduceConfig, parts=None) -> dict:
    """The data of ``parts`` (default ``cfg.parts``) in memory (see :mod:`.data`), CAS scores included."""
    from fastcas.tools.reproduce import data as D

    parts = cfg.parts if parts is None else parts
    src = D.load(cfg.fashion_mnist, cfg.limit)
    out: dict = {}
    lt = D.lt_data(src, 100.0, cfg.data_seed)
    if "cmo" in parts:
        out["lt"] = lt
    if "cas" in parts:
        for key, fn in (("tint", D.tinted_data), ("rot", D.rotated_data)):
            d = fn(src, cfg.cas_per_class, seed=cfg.data_seed)
            d["cas"] = D.cas_of(d["x"], d["y"])
            out[key] = d
    if "importance" in parts:
        from fastcas.tools.reproduce.importance import feature_data

        out["importance"] = feature_data(lt)
    return out


_DATA: dict = {}


def _init(data: dict) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: the machine is shared
    _DATA.update(data)


def _task(args) -> tuple:
    from fastcas.tools.reproduce.experiments import run_one

    part, arm, seed, cfg = args
    return part, arm, seed, run_one(part, arm, seed, _DATA, cfg)


def _path(cfg, part, arm, seed) -> Path:
    return Path(cfg.out) / "runs" / part / (slug(arm, seed) + ".json")


def _stored(cfg, part, arm, seed) -> dict | None:
    p = _path(cfg, part, arm, seed)
    if not (cfg.resume and p.exists()):
        return None
    r = json.loads(p.read_text())
    return r if r.get("settings") == cfg.settings(part) else None


def run_reproduce(cfg: ReproduceConfig) -> dict:
    """Run every task not stored yet, then write the report; returns the report dict."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from fastcas.tools.reproduce.report import write_report

    t0 = time.time()
    todo = [t for t in tasks(cfg) if _stored(cfg, *t) is None]
    if todo:
        data = prepare(cfg, {t[0] for t in todo})  # only the parts that still have runs to train
        print(f"data ready in {time.time() - t0:.0f} s; {len(todo)} runs to train", flush=True)
        with ProcessPoolExecutor(cfg.workers, mp.get_context("spawn"), initializer=_init, initargs=(data,)) as pool:
            for part, arm, seed, res in pool.map(_task, [(*t, cfg) for t in todo]):
                res.update(part=part, arm=arm, seed=seed, settings=cfg.settings(part))
                atomic_write_json(_path(cfg, part, arm, seed), res)
                m = res["metrics"]
                print(f"{part:10s} {arm:26s} seed {seed}: " + " ".join(f"{k} {v:.3f}" for k, v in m.items()
                                                                        if v is not None)
                      + f" ({res['seconds']:.0f} s)", flush=True)
    meta = {"config": asdict(cfg), "wall_seconds": time.time() - t0, "trained": len(todo),
            "reused": len(tasks(cfg)) - len(todo)}
    if "cas" in cfg.parts:
        meta["attribute_check"] = attribute_check(cfg)
    return write_report(Path(cfg.out), collect(cfg), meta)


def attribute_check(cfg: ReproduceConfig) -> dict:
    """Per CAS data set ("tint", "rot"): the within-class AUC of CAS for the rare attribute and the
    rare images' expected share of the draws under each arm's weights (exact, no draws; the
    placebo's with seed 0)."""
    from fastcas.tools.demo.tint import within_class_auc
    from fastcas.tools.reproduce.experiments import _weights

    out = {}
    for key, d in prepare(cfg, ("cas",)).items():
        row = {"auc": within_class_auc(d["cas"], d["y"], d["rare"]), "rare_share": {}}
        for name in ("uniform", "cas", "placebo", "oracle"):
            w = _weights(name, d, 0)
            row["rare_share"][name] = float(w[d["rare"]].sum() / w.sum())
        out[key] = row
    return out


def collect(cfg: ReproduceConfig) -> dict:
    """part -> {"runs": arm -> seed -> metrics, "curves": arm -> seed -> curve, "seconds": ...}."""
    out = {}
    for part, arm, seed in tasks(cfg):
        r = _stored(cfg, part, arm, seed) if cfg.resume else None
        if r is None and _path(cfg, part, arm, seed).exists():
            r = json.loads(_path(cfg, part, arm, seed).read_text())
            if r.get("settings") != cfg.settings(part):
                continue
        if r is None:
            continue
        p = out.setdefault(part, {"runs": {}, "curves": {}, "seconds": {}})
        for key, val in (("runs", r["metrics"]), ("curves", r.get("curve", [])), ("seconds", r["seconds"])):
            p[key].setdefault(arm, {})[str(seed)] = val
    return out
