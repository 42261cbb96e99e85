"""Drawn vs target: what a weighting asked for and what the sampler actually drew.

For any per-sample weights w (float [N]) and drawn indices (int [M]), :func:`drawn_report`
gives, per class and per attribute value (one table per primary, from a score file's
attribute ids) and per named group (bool masks, e.g. "rare attribute"): the target share
sum_{i in group} w_i / sum w, the drawn share, the drawn and expected counts, plus

* ``ess``: Kish's effective sample size of the weights, (sum w)^2 / sum w^2 (N for uniform
  weights; how many equally weighted samples the weighting is worth);
* ``distinct``: how many different samples the draws contain;
* ``class_chi2_p``: chi-square p-value of the drawn class counts against the target.

``fastcas sample --report`` prints it (:func:`format_report`); ``fastcas train`` writes
``OUT/monitor-epochNNN.json`` and ``.png`` once per epoch (:func:`log_epoch`, rank 0, its
own share of the draws).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def _table(groups: np.ndarray, drawn: np.ndarray, p: np.ndarray, size: int, names=None) -> list[dict]:
    target = np.bincount(groups, weights=p, minlength=size)
    got = np.bincount(groups[drawn], minlength=size)
    n = np.bincount(groups, minlength=size)
    m = max(len(drawn), 1)
    return [{"value": names[k] if names is not None and k < len(names) else int(k), "n": int(n[k]),
             "target": float(target[k]), "drawn": float(got[k] / m), "drawn_count": int(got[k]),
             "expected_count": float(target[k] * len(drawn))} for k in range(size)]


def drawn_report(labels, drawn, weights, *, class_names=None, attrs=None, primaries=None, secondaries=None,
                 groups: dict | None = None) -> dict:
    """Drawn vs target (see the module docstring). ``labels`` int [N]; ``drawn`` int [M]
    global indices; ``weights`` float [N] >= 0; ``attrs`` int [N, P] secondary ids with
    ``primaries`` [P] names and ``secondaries`` [P][values] names; ``groups`` name -> bool [N]."""
    from scipy import stats

    from fastcas.sampling.weights import check_weights

    y = np.asarray(labels, np.int64)
    w = check_weights(weights, len(y))
    d = np.asarray(drawn, np.int64)
    if len(d) and (d.min() < 0 or d.max() >= len(y)):
        raise ValueError(f"drawn indices must be in [0, {len(y)}), got {d.min()}..{d.max()}")
    p = w / w.sum()
    C = int(max(y.max() + 1, len(class_names or ())))
    classes = _table(y, d, p, C, list(class_names) if class_names is not None else None)
    exp = np.array([c["expected_count"] for c in classes])
    obs = np.array([c["drawn_count"] for c in classes])
    keep = exp > 0
    chi2 = (
        float(stats.chisquare(obs[keep], exp[keep] * obs.sum() / exp[keep].sum()).pvalue)
        if keep.sum() > 1 and len(d)
        else None
    )
    rep = {"samples": int(len(y)), "draws": int(len(d)), "ess": float(w.sum() ** 2 / (w ** 2).sum()),
           "distinct": int(len(np.unique(d))), "class_chi2_p": chi2, "classes": classes,
           "max_class_deviation": float(max(abs(c["drawn"] - c["target"]) for c in classes))}
    if attrs is not None:
        a = np.asarray(attrs, np.int64)
        rep["attributes"] = []
        for j in range(a.shape[1]):
            names = secondaries[j] if secondaries is not None else None
            rep["attributes"].append({"primary": primaries[j] if primaries is not None else j,
                                      "values": _table(a[:, j], d, p, int(a[:, j].max()) + 1, names)})
    if groups:
        rep["groups"] = {}
        for name, mask in groups.items():
            mask = np.asarray(mask, bool)
            rep["groups"][name] = {"n": int(mask.sum()), "target": float(p[mask].sum()),
                                   "drawn": float(mask[d].mean()) if len(d) else 0.0,
                                   "uniform": float(mask.mean())}
    return rep


def format_report(rep: dict, max_values: int = 8) -> str:
    """Plain-text tables of :func:`drawn_report`."""
    lines = [f"{rep['draws']} draws from {rep['samples']} samples; effective sample size (Kish) "
             f"{rep['ess']:.0f}; {rep['distinct']} distinct drawn; class chi-square p = "
             + ("-" if rep["class_chi2_p"] is None else f"{rep['class_chi2_p']:.3g}")]
    width = max(5, *(len(str(c["value"])) for c in rep["classes"]))
    lines.append(f"{'class':<{width}} {'n':>8} {'target':>8} {'drawn':>8}")
    lines += [f"{str(c['value']):<{width}} {c['n']:>8} {c['target']:>8.4f} {c['drawn']:>8.4f}" for c in rep["classes"]]
    for att in rep.get("attributes", []):
        vals = sorted(att["values"], key=lambda v: -v["target"])[:max_values]
        lines.append(f"{att['primary']}: " + ", ".join(f"{v['value']} {v['target']:.3f}->{v['drawn']:.3f}"
                                                      for v in vals if v["n"]))
    for name, g in rep.get("groups", {}).items():
        lines.append(f"group {name!r} ({g['n']} samples): uniform {g['uniform']:.4f}, target {g['target']:.4f}, "
                     f"drawn {g['drawn']:.4f}")
    return "\n".join(lines)


def plot_report(rep: dict, title: str = "drawn vs target") -> bytes:
    """PNG bytes: per-class target vs drawn shares, and the primaries' values (up to 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atts = rep.get("attributes", [])[:8]
    fig, axes = plt.subplots(
        1 + (len(atts) + 3) // 4,
        4 if atts else 1,
        figsize=(12 if atts else 7, 3 + 2.2 * ((len(atts) + 3) // 4)),
        squeeze=False,
    )
    gs = axes[0, 0].get_gridspec()
    for ax in axes[0]:
        ax.remove()
    top = fig.add_subplot(gs[0, :])
    x = np.arange(len(rep["classes"]))
    top.bar(x - 0.2, [c["target"] for c in rep["classes"]], 0.4, label="target")
    top.bar(x + 0.2, [c["drawn"] for c in rep["classes"]], 0.4, label="drawn")
    top.set_xticks(x, [str(c["value"])[:14] for c in rep["classes"]], rotation=30, ha="right", fontsize=7)
    top.set_ylabel("share of draws")
    top.set_title(f"{title}: ESS {rep['ess']:.0f} of {rep['samples']}", fontsize=9)
    top.legend(fontsize=7)
    for ax, att in zip(axes[1:].ravel(), atts):
        vals = att["values"]
        xv = np.arange(len(vals))
        ax.bar(xv - 0.2, [v["target"] for v in vals], 0.4)
        ax.bar(xv + 0.2, [v["drawn"] for v in vals], 0.4)
        ax.set_xticks(xv, [str(v["value"])[:10] for v in vals], rotation=45, ha="right", fontsize=6)
        ax.set_title(str(att["primary"]), fontsize=8)
    for ax in axes[1:].ravel()[len(atts):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def score_attributes(path) -> dict:
    """{"attrs", "primaries", "secondaries"} of a score file (for :func:`drawn_report`)."""
    from fastcas.dataset.scorefile import read_scores
    from fastcas.scoring.cas import attribute_names

    t = read_scores(path)
    names = attribute_names(t.metadata)
    return {"attrs": t.attrs, "primaries": [n for n, _ in names] if names else None,
            "secondaries": [v for _, v in names] if names else None}


def log_epoch(out, epoch: int, loader, scores=None) -> dict:
    """Write ``OUT/monitor-epochNNN.json`` / ``.png`` for ``loader``'s draws of ``epoch``
    (this rank's share; one entry per stream: background, and foreground for two-stream
    recipes). ``scores``: the score file, for the per-attribute tables."""
    from fastcas.core.io import atomic_write_bytes, atomic_write_json
    from fastcas.sampling import weights as sample_weights

    cfg, reader = loader.config, loader.reader
    att = score_attributes(scores) if isinstance(scores, (str, Path)) and scores else {}
    names = [cfg.weights] + ([cfg.foreground_weights] if cfg.foreground_weights else [])
    out = Path(out)
    reports = {}
    for stream, (name, drawn) in zip(("background", "foreground"), zip(names, loader.sampler_indices(epoch))):
        w = sample_weights.make(name, reader.labels, scores=loader.scores, b=cfg.cas_power, r=cfg.cmo_power)
        reports[stream] = {"weights": name, **drawn_report(reader.labels, drawn, w, class_names=reader.class_names,
                                                           **att)}
    atomic_write_json(out / f"monitor-epoch{epoch:03d}.json", {"epoch": epoch, "streams": reports})
    first = reports["foreground" if "foreground" in reports else "background"]
    atomic_write_bytes(out / f"monitor-epoch{epoch:03d}.png",
                       plot_report(first, f"epoch {epoch}, {first['weights']} weights"))
    return reports


class EpochProgress:
    """A tqdm bar for one training epoch (rank 0 only; a no-op elsewhere or with
    ``enabled=False``): images done, img/s, step k/n and the loss (refreshed every
    ``every`` steps so the loss read does not sync a GPU each step)."""

    def __init__(self, epoch: int, steps: int, start_step: int, batch_size: int, rank: int = 0,
                 enabled: bool = True, every: int = 10):
        self.bar = None
        self.every, self.steps, self.batch = max(1, every), steps, batch_size
        self.step = start_step
        if enabled and rank == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=steps * batch_size, initial=start_step * batch_size, unit="img",
                            unit_scale=False, desc=f"epoch {epoch}", leave=True, dynamic_ncols=True)

    def update(self, loss=None) -> None:
        self.step += 1
        if self.bar is None:
            return
        self.bar.update(self.batch)
        if loss is not None and (self.step % self.every == 0 or self.step == self.steps):
            self.bar.set_postfix(step=f"{self.step}/{self.steps}", loss=f"{float(loss):.3f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
