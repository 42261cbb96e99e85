"""``fastcas stats DATASET [--scores FILE] [--eval PRED] --out DIR``: class, attribute and CAS
statistics, the CAS paper's Table 1 and Figs. 2 / 4 style plots.

Writes ``stats.json`` and PNG plots: ``classes.png`` (class sizes by name, sorted: the long
tail); with ``--scores`` also ``cas.png`` (CAS histogram, one bar per integer CAS, with the
low 30% / middle 30% / high 40% subset boundaries), ``cas_per_class.png`` (per-class CAS
histograms, Fig. 2 style), ``attributes.png`` (per-primary value distributions, Fig. 4
style); with ``--eval`` also ``accuracy_by_cas.png`` (top-1 per CAS decile). The JSON holds
Table 1 style statistics (mean / std of the CAS of one epoch of drawn *originals*, before any
mixing, under uniform, CAS-weighted (``--b``) and CMO (``--r``) weights; the paper's Table 1
reports the CAS of the images after augmentation, which fastcas does not re-score), per-class
statistics, subset sizes and thresholds, attribute frequencies, constant primaries and, for a CLIP score file made with
random weights, a
warning that is also printed and drawn on every attribute plot.
"""
from __future__ import annotations

HELP = "class, attribute and CAS statistics with plots"


def add_arguments(p) -> None:
    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--scores", help="score file from `fastcas score`")
    p.add_argument("--eval", dest="eval_file", default=None,
                   help="predictions for DATASET (.npy int [N] in dataset order, or .json with a 'predictions' "
                   "list): accuracy by CAS decile (needs --scores)")
    p.add_argument("--out", required=True, help="output directory (stats.json and PNG plots)")
    p.add_argument("--b", type=float, default=1.2, help="CAS weight exponent for Table 1 (w = CAS ** b)")
    p.add_argument("--r", type=float, default=1.0, help="CMO exponent for Table 1")
    p.add_argument("--draws", type=int, default=-1, help="draws for Table 1's empirical columns (-1: one epoch, N)")
    p.add_argument("--seed", type=int, default=0)


def attribute_names(metadata: dict) -> list | None:
    """[(primary, [secondary names])] for a score file's encoder, or None if unknown."""
    from fastcas.scoring.cas import attribute_names as names

    return names(metadata)


def load_predictions(path, n: int):
    """int64 [n] predictions from ``path`` (.npy, or .json with a 'predictions' list)."""
    import json
    from pathlib import Path

    import numpy as np

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such evaluation file")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if "predictions" not in data:
            raise ValueError(f"{path}: evaluation JSON has no 'predictions' list")
        pred = np.asarray(data["predictions"])
    else:
        from fastcas.core import npy

        pred = npy.load(path)  # a .npy of objects would unpickle: refused
    if pred.shape != (n,):
        raise ValueError(f"{path}: {pred.shape[0] if pred.ndim else 0} predictions, the dataset has {n} samples")
    return pred.astype(np.int64)


def accuracy_by_decile(cas, labels, pred) -> list[dict]:
    """Top-1 per CAS decile (by ascending CAS, ties by sample order, so sizes are equal)."""
    import numpy as np

    order = np.argsort(np.asarray(cas), kind="stable")
    rows = []
    for k, idx in enumerate(np.array_split(order, 10)):
        if len(idx):
            rows.append({"decile": k + 1, "size": int(len(idx)), "cas_min": int(cas[idx].min()),
                         "cas_max": int(cas[idx].max()), "top1": float((labels[idx] == pred[idx]).mean())})
    return rows


def integer_bins(lo: int, hi: int, max_bars: int = 60):
    """Histogram edges for integer values in [lo, hi]: each bar covers whole values and is
    centred on them (edges at v - 0.5), at most ``max_bars`` bars. float64 [B + 1]."""
    import numpy as np

    step = max(1, -(-(int(hi) - int(lo) + 1) // max_bars))
    return np.arange(int(lo), int(hi) + step + 1, step) - 0.5


def run(args) -> int:
    import io
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from fastcas.cli.info import summary
    from fastcas.core.io import atomic_write_bytes, atomic_write_json
    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import random_weights_warning, read_scores
    from fastcas.scoring.cas import attribute_frequencies, cas_subsets, class_statistics, sampling_statistics

    reader = ShardReader(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names_of = [str(n) for n in reader.class_names]
    stats = {"dataset": summary(reader), "class_counts": reader.class_counts.tolist(),
             "empty_classes": [reader.class_names[k] for k in np.flatnonzero(reader.class_counts == 0)]}
    warning = None

    def save_fig(fig, name):
        if warning:  # every attribute plot carries it
            fig.suptitle(f"WARNING: {warning}", color="red", fontsize=8, y=1.0)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")  # no cut-off labels
        plt.close(fig)
        atomic_write_bytes(out / name, buf.getvalue())

    order = np.argsort(-reader.class_counts, kind="stable")
    C = reader.num_classes
    fig, ax = plt.subplots(figsize=(max(7, 0.25 * min(C, 60)), 3.2))
    ax.bar(range(C), reader.class_counts[order])
    ax.set_yscale("log")
    if C <= 60:
        ax.set_xticks(range(C), [names_of[k][:16] for k in order], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("class (sorted by size)")
    ax.set_ylabel("samples")
    ax.set_title(f"{reader.root.name}: class sizes")
    save_fig(fig, "classes.png")
    if not args.scores:
        if args.eval_file:
            raise ValueError("--eval needs --scores (accuracy by CAS decile)")
        atomic_write_json(out / "stats.json", stats)
        print(f"wrote {out}/stats.json and plots")
        return 0
    t = read_scores(args.scores, keys=reader.keys, labels=reader.labels)
    warning = random_weights_warning(t.metadata)
    if warning:
        stats["warning"] = warning
        print(f"fastcas stats: warning: {warning}")
    sub = cas_subsets(t.cas)
    names = attribute_names(t.metadata)
    stats["cas"] = {
        "mean": float(t.cas.mean()), "std": float(t.cas.std()), "cv": float(t.cas.std() / max(t.cas.mean(), 1e-12)),
        "min": int(t.cas.min()), "max": int(t.cas.max()),
        "subsets": {n: {"size": int((sub == k).sum()),
                        "cas_min": int(t.cas[sub == k].min()) if (sub == k).any() else None,
                        "cas_max": int(t.cas[sub == k].max()) if (sub == k).any() else None}
                    for k, n in enumerate(("low", "middle", "high"))},
        "constant_primaries": t.metadata.get("constant_primaries", []),
        "cas_primaries": t.metadata.get("cas_primaries"),
        "metadata": {k: v for k, v in t.metadata.items() if k not in ("pixel_bins", "secondaries")}}
    stats["table1"] = sampling_statistics(t.cas, args.b, draws=args.draws, seed=args.seed, labels=t.labels, r=args.r)
    stats["classes"] = class_statistics(t.attrs, t.labels, t.cas, reader.class_names)
    stats["attribute_frequencies"] = attribute_frequencies(t.attrs, names)
    edges = integer_bins(t.cas.min(), t.cas.max())
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(t.cas, bins=edges)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("CAS (sum of within-class scarcity ranks)")
    ax.set_ylabel("images")
    ax.set_title("CAS distribution (low 30% / middle 30% / high 40%)")
    for n in ("low", "middle"):
        if stats["cas"]["subsets"][n]["cas_max"] is not None:
            ax.axvline(stats["cas"]["subsets"][n]["cas_max"] + 0.5, color="k", ls="--")
    save_fig(fig, "cas.png")
    top = [k for k in order[:12] if reader.class_counts[k] > 0]
    cols = 4
    rows = max(1, -(-len(top) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.3 * rows), squeeze=False, sharex=True)
    for ax, k in zip(axes.ravel(), top):
        ck = t.cas[t.labels == k]
        ax.hist(ck, bins=edges)
        ax.set_title(f"{names_of[k][:20]} (n={len(ck)})", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(top):]:
        ax.axis("off")
    fig.supxlabel("CAS", fontsize=8)
    save_fig(fig, "cas_per_class.png")
    P = t.attrs.shape[1]
    const = set(stats["cas"]["constant_primaries"])
    rows = max(1, -(-P // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.4 * rows), squeeze=False)
    for p, ax in enumerate(axes.ravel()):
        if p >= P:
            ax.axis("off")
            continue
        counts = stats["attribute_frequencies"][p]["counts"][:10]
        ax.barh(range(len(counts)), [c for _, c in counts])
        ax.set_yticks(range(len(counts)), [str(n)[:18] for n, _ in counts], fontsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        ax.tick_params(axis="x", labelsize=6)
        ax.invert_yaxis()
        prim = str(stats["attribute_frequencies"][p]["primary"])
        ax.set_title(prim + (" (constant, not in CAS)" if prim in const else ""), fontsize=8)
    save_fig(fig, "attributes.png")
    if args.eval_file:
        pred = load_predictions(args.eval_file, len(reader))
        stats["accuracy_by_cas_decile"] = rows_ = accuracy_by_decile(t.cas, reader.labels, pred)
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar([r["decile"] for r in rows_], [r["top1"] for r in rows_])
        ax.set_xticks([r["decile"] for r in rows_], [f"{r['decile']}\n{r['cas_min']}-{r['cas_max']}" for r in rows_],
                      fontsize=7)
        ax.set_xlabel("CAS decile (CAS range)")
        ax.set_ylabel("top-1")
        ax.set_ylim(0, 1)
        ax.set_title("accuracy by CAS decile")
        save_fig(fig, "accuracy_by_cas.png")
    atomic_write_json(out / "stats.json", stats)
    t1 = stats["table1"]
    print("Table 1 style (CAS of one epoch of drawn originals, before mixing; the paper's Table 1 is after "
          "augmentation), mean ± sd: " + ", ".join(
        f"{n} {t1[n].get('drawn_mean', t1[n]['mean']):.1f} ± {t1[n].get('drawn_std', t1[n]['std']):.1f}"
        for n in ("uniform", "cas_weighted", "cmo")))
    print(f"wrote {out}/stats.json and plots")
    return 0
