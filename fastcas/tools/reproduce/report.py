"""The reproduction's report: per part, mean ± sd over seeds, paired differences, markdown, plots.

Input ``parts`` (see :func:`fastcas.tools.reproduce.run.collect`): part -> {"runs": arm -> seed
-> group -> accuracy (float or None), "curves": arm -> seed -> list of {"epoch", group...} on the
dev half, "seconds": arm -> seed -> wall seconds}. Seeds are JSON strings; a comparison pairs
the seeds both arms have. Everything in report.json's "summary" and "comparisons" is
recomputed from its "parts" (a test does so).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fastcas.core.io import atomic_write_bytes, atomic_write_json
from fastcas.tools.reproduce.stats import mean_sd, paired_difference

TITLES = {"cmo": "CMO on Fashion-MNIST-LT (ratio 100, 28 px, CIFAR augmentation)",
          "cas": "CAS with controls (class-balanced tinted set; rotation = negative control)",
          "importance": "Importance-sampling schemes on frozen features"}


def _pairs(part: str):
    from fastcas.tools.reproduce.experiments import COMPARISONS
    from fastcas.tools.reproduce.importance import COMPARISONS as IS

    return IS if part == "importance" else COMPARISONS[part]


def _groups(part: str):
    from fastcas.tools.reproduce.experiments import GROUPS

    return GROUPS[part]


def summarise(runs: dict, groups) -> dict:
    """arm -> group -> {"mean", "sd", "n"} over the seeds the arm has."""
    out = {}
    for arm, by_seed in runs.items():
        out[arm] = {}
        for g in groups:
            vals = [r.get(g) for r in by_seed.values()]
            m, s = mean_sd(vals)
            out[arm][g] = {"mean": m, "sd": s, "n": sum(v is not None for v in vals)}
    return out


def comparisons(runs: dict, pairs, groups) -> list[dict]:
    """Per (treatment, control, expected) whose arms both ran: per group the paired difference
    over the seeds both have (:func:`paired_difference`)."""
    rows = []
    for treat, ctrl, expected in pairs:
        if treat not in runs or ctrl not in runs:
            continue
        a = {str(k): v for k, v in runs[treat].items()}
        b = {str(k): v for k, v in runs[ctrl].items()}
        seeds = sorted(set(a) & set(b), key=int)
        if not seeds:
            continue
        diffs = {g: paired_difference([a[s].get(g) for s in seeds], [b[s].get(g) for s in seeds]) for g in groups}
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
    return f"{d['mean']:+.3f} [{d['t_low']:+.3f}, {d['t_high']:+.3f}]" + (" *" if d["exceeds_noise"] else "")


def verdict(c: dict) -> str:
    parts = []
    for g in c["expected"] or list(c["groups"])[:2]:
        d = c["groups"][g]
        if d["mean"] is None or d["t_low"] is None:
            parts.append(f"{g}: too few seeds")
        elif d["exceeds_noise"]:
            parts.append(f"{g} {'rises' if d['mean'] > 0 else 'falls'} by {d['mean']:+.3f} beyond the seed spread")
        else:
            parts.append(f"{g} {d['mean']:+.3f}, within the seed spread")
    return f"- {c['treatment']} vs {c['control']}: " + "; ".join(parts) + "."


def curve_table(curves: dict, arm: str, groups=("top1", "few")) -> str:
    """One line per epoch: the mean over seeds of ``groups`` on the dev half."""
    rows = [r for rs in curves.get(arm, {}).values() for r in rs]
    if not rows:
        return ""
    lines = ["| epoch | " + " | ".join(f"dev {g}" for g in groups) + " |", "|---|" + "---|" * len(groups)]
    for e in sorted({r["epoch"] for r in rows}):
        vals = [np.mean([r[g] for r in rows if r["epoch"] == e and r.get(g) is not None] or [np.nan]) for g in groups]
        lines.append(f"| {e + 1} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    lines = ["# fastcas reproduce", "", f"Wall time of this call {report['wall_seconds'] / 60:.1f} min ("
             f"{report.get('trained', '?')} runs trained, {report.get('reused', 0)} stored runs reused); "
             f"sum of the runs' own times {report['run_seconds'] / 60:.1f} min (over {report['config']['workers']} "
             "workers). Mean ± sd over seeds; paired differences = treatment - control per seed, mean [95% "
             "paired-t interval], * = the interval excludes 0. All numbers on the *test* half.", ""]
    for part, rep in report["parts"].items():
        groups, summary = _groups(part), rep["summary"]
        lines += [f"## {TITLES[part]}", ""]
        if part == "cas" and report.get("attribute_check"):
            for key, c in report["attribute_check"].items():
                sh = c["rare_share"]
                lines.append(f"- {'tint (rare tints 2, 3)' if key == 'tint' else 'rotation (negative control)'}: "
                             f"within-class AUC of CAS {c['auc']:.3f}; rare images' share of the draws: uniform "
                             f"{sh['uniform']:.3f}, CAS {sh['cas']:.3f}, placebo {sh['placebo']:.3f}, "
                             f"oracle {sh['oracle']:.3f}")
            lines.append("")
        lines += ["| arm | n | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
        lines += [f"| {a} | {row[groups[0]]['n']} | " + " | ".join(_pm(row[g]) for g in groups) + " |"
                  for a, row in summary.items()]
        lines += ["", "| comparison | seeds | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
        lines += [f"| {c['treatment']} - {c['control']} | {len(c['seeds'])} | "
                  + " | ".join(_diff(c["groups"][g]) for g in groups) + " |" for c in rep["comparisons"]]
        lines += [""] + [verdict(c) for c in rep["comparisons"]] + [""]
        if part == "cmo" and "CE" in rep["curves"]:
            lines += ["CE convergence (dev half, mean over seeds):", "", curve_table(rep["curves"], "CE"), "",
                      "![curves](curves.png)", ""]
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(curves: dict, path: Path) -> None:
    """Dev top-1 and few-shot accuracy against epoch, mean over seeds, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for arm, by_seed in curves.items():
        rows = [r for rs in by_seed.values() for r in rs]
        if not rows:
            continue
        epochs = sorted({r["epoch"] for r in rows})
        for ax, g in zip(axes, ("top1", "few")):
            ys = [np.mean([r[g] for r in rows if r["epoch"] == e and r.get(g) is not None] or [np.nan]) for e in epochs]
            ax.plot([e + 1 for e in epochs], ys, marker="o", label=arm)
    for ax, g in zip(axes, ("top1", "few")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"dev {g}")
        ax.set_ylim(0, 1)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def write_report(out: Path, parts: dict, meta: dict) -> dict:
    """``parts`` + summaries + comparisons -> OUT/report.json, report.md, curves.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(meta)
    report["parts"] = {}
    for part, p in parts.items():
        g = _groups(part)
        report["parts"][part] = {**p, "summary": summarise(p["runs"], g),
                                 "comparisons": comparisons(p["runs"], _pairs(part), g)}
    report["run_seconds"] = float(sum(s for p in parts.values() for by in p["seconds"].values() for s in by.values()))
    atomic_write_json(out / "report.json", report)
    if "cmo" in parts:
        plot_curves(parts["cmo"]["curves"], out / "curves.png")
    (out / "report.md").write_text(markdown(report))
    return report


BEGIN, END = "<!-- reproduce report: begin (generated from report.md) -->", "<!-- reproduce report: end -->"


def splice_papers(page: str, report_md: str, image_dir: str = "papers/") -> str:
    """``page`` (docs/papers.md) with the text between :data:`BEGIN` and :data:`END` replaced by
    ``report_md`` (its title dropped, headings one level down, images under ``image_dir``)."""
    if BEGIN not in page or END not in page:
        raise ValueError(f"the page has no {BEGIN!r} ... {END!r} markers")
    body = report_md.split("\n", 1)[1].strip() if report_md.startswith("# ") else report_md.strip()
    body = "\n".join(("#" + ln) if ln.startswith("## ") else ln for ln in body.splitlines())
    body = body.replace("](curves.png)", f"]({image_dir}curves.png)")
    head, rest = page.split(BEGIN, 1)
    return head + BEGIN + "\n\n" + body + "\n\n" + END + rest.split(END, 1)[1]
