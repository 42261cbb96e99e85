"""The reproduction's report: summary (mean ± sd over seeds), paired differences, markdown, plots.

Input ``state`` (see :func:`fastcas.tools.reproduce.run.run_reproduce`): ``runs`` arm -> seed ->
group -> accuracy (float in [0, 1] or None), ``curves`` arm -> seed -> list of metrics.jsonl
rows, ``seconds`` arm -> seed -> wall seconds, plus ``config`` and ``attribute_check``.
Seeds may be ints or their JSON strings; a comparison pairs the seeds both arms have.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fastcas.core.io import atomic_write_bytes, atomic_write_json
from fastcas.tools.reproduce.stats import mean_sd, paired_difference

GROUPS = ("top1", "many", "medium", "few", "cas_low", "cas_middle", "cas_high", "rare_attr")
# (treatment, control, the groups the paper says should rise)
COMPARISONS = (
    ("CE + CMO", "CE", ("few", "top1")),            # CMO paper, Table 9's direction
    ("CE + CAS", "CE", ("cas_high", "rare_attr")),
    ("CutMix + CAS", "CutMix", ("cas_high", "rare_attr")),  # CAS paper, Table 2
    ("FMix + CAS", "FMix", ("cas_high", "rare_attr")),
    ("SaliencyMix + CAS", "SaliencyMix", ("cas_high", "rare_attr")),
)


def summarise(runs: dict) -> dict:
    """arm -> group -> {"mean", "sd", "n"} over the seeds the arm has."""
    out = {}
    for arm, by_seed in runs.items():
        out[arm] = {}
        for g in GROUPS:
            vals = [r.get(g) for r in by_seed.values()]
            m, s = mean_sd(vals)
            out[arm][g] = {"mean": m, "sd": s, "n": sum(v is not None for v in vals)}
    return out


def comparisons(runs: dict, pairs=None) -> list[dict]:
    """For each (treatment, control, expected groups) whose arms both ran: per group the
    paired difference over the seeds both have (:func:`paired_difference`)."""
    rows = []
    for treat, ctrl, expected in (COMPARISONS if pairs is None else pairs):
        if treat not in runs or ctrl not in runs:
            continue
        seeds = sorted(set(map(str, runs[treat])) & set(map(str, runs[ctrl])), key=int)
        if not seeds:
            continue
        a = {str(k): v for k, v in runs[treat].items()}
        b = {str(k): v for k, v in runs[ctrl].items()}
        diffs = {g: paired_difference([a[s].get(g) for s in seeds], [b[s].get(g) for s in seeds])
                 for g in GROUPS}
        rows.append({"treatment": treat, "control": ctrl, "expected": list(expected), "seeds": seeds,
                     "groups": diffs})
    return rows


def _pm(cell) -> str:
    if cell["mean"] is None:
        return "-"
    return f"{cell['mean']:.3f}" + (f" ± {cell['sd']:.3f}" if cell["sd"] is not None else "")


def _diff(d) -> str:
    if d["mean"] is None:
        return "-"
    if d["t_low"] is None:
        return f"{d['mean']:+.3f}"
    star = " *" if d["exceeds_noise"] else ""
    return f"{d['mean']:+.3f} [{d['t_low']:+.3f}, {d['t_high']:+.3f}]{star}"


def markdown(report: dict) -> str:
    cfg, summary, comps = report["config"], report["summary"], report["comparisons"]
    shown = [g for g in GROUPS if any(summary[a][g]["mean"] is not None for a in summary)]
    lines = ["# fastcas reproduce", "",
             f"{cfg['model']}, {cfg['epochs']} epochs of {cfg['epoch_length'] or 'all'} draws, batch "
             f"{cfg['batch_size']}, {cfg['image_size']} px, lr {cfg['lr']} cosine, wd {cfg['weight_decay']}; "
             f"mean ± sd over seeds (n per arm below); wall time {report['wall_seconds'] / 60:.1f} min.", ""]
    check = report.get("attribute_check")
    if check:
        d = check["draws"]
        lines += [f"CAS (pixel encoder) finds the rare attribute: within-class AUC {check['auc']:.3f}; share of "
                  f"draws uniform {d['uniform']['drawn']:.4f}, CAS weights {d['cas']['drawn']:.4f} "
                  f"(target {d['cas']['target']:.4f}).", ""]
    lines += ["| recipe | n | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for arm, row in summary.items():
        if not row["top1"]["n"]:
            continue  # not run (a stopped run, or not among --arms)
        lines.append(f"| {arm} | {row['top1']['n']} | " + " | ".join(_pm(row[g]) for g in shown) + " |")
    lines += ["", "Paired differences (treatment - control, per seed), mean [95% paired-t interval]; "
              "* = the interval excludes 0 (exceeds the seed spread).", "",
              "| comparison | seeds | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for c in comps:
        lines.append(f"| {c['treatment']} - {c['control']} | {len(c['seeds'])} | "
                     + " | ".join(_diff(c["groups"][g]) for g in shown) + " |")
    lines += ["", verdict(comps), "", "![curves](curves.png)", "", "![groups](groups.png)", ""]
    return "\n".join(lines)


def verdict(comps: list[dict]) -> str:
    """One sentence per comparison on the groups its paper says should rise."""
    out = []
    for c in comps:
        parts = []
        for g in c["expected"]:
            d = c["groups"][g]
            if d["mean"] is None or d["t_low"] is None:
                parts.append(f"{g}: too few seeds")
            elif d["exceeds_noise"]:
                parts.append(f"{g} {'rises' if d['mean'] > 0 else 'falls'} by {d['mean']:+.3f} beyond the seed spread")
            else:
                parts.append(f"{g} {d['mean']:+.3f}, within the seed spread")
        out.append(f"- {c['treatment']} vs {c['control']}: " + "; ".join(parts) + ".")
    return "\n".join(out)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(curves: dict, path: Path) -> None:
    """Validation top-1 and few-shot accuracy against epoch, mean over seeds, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for arm, by_seed in curves.items():
        rows = [r for rs in by_seed.values() for r in rs]
        if not rows:  # an arm that has not run yet
            continue
        epochs = sorted({r["epoch"] for r in rows})
        for ax, g in zip(axes, ("top1", "few")):
            ys = [np.mean([r[g] for r in rows if r["epoch"] == e and r[g] is not None] or [np.nan]) for e in epochs]
            ax.plot([e + 1 for e in epochs], ys, marker="o", label=arm)
    for ax, g in zip(axes, ("top1", "few")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {g}")
        ax.set_ylim(0, 1)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_groups(summary: dict, path: Path) -> None:
    """Grouped bars: accuracy per group, one bar per arm, error bars = sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.6))
    arms = [a for a in summary if summary[a]["top1"]["n"]]  # arms that have run
    width = 0.8 / max(len(arms), 1)
    x = np.arange(len(GROUPS))
    for i, arm in enumerate(arms):
        m = [summary[arm][g]["mean"] or 0 for g in GROUPS]
        s = [summary[arm][g]["sd"] or 0 for g in GROUPS]
        ax.bar(x + i * width, m, width, yerr=s, capsize=2, label=arm)
    ax.set_xticks(x + 0.4 - width / 2, GROUPS, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-1")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    _save(fig, path)


def write_report(out: Path, state: dict) -> dict:
    """``state`` + summary + comparisons -> OUT/report.json, report.md, curves.png, groups.png."""
    out = Path(out)
    report = dict(state)
    report["summary"] = summarise(state["runs"])
    report["comparisons"] = comparisons(state["runs"])
    atomic_write_json(out / "report.json", report)
    plot_curves(state.get("curves", {}), out / "curves.png")
    plot_groups(report["summary"], out / "groups.png")
    (out / "report.md").write_text(markdown(report))
    return report
