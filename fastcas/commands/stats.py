"""``fastcas stats DATASET [--scores FILE] --out DIR``: class, attribute and CAS statistics.

Writes ``stats.json`` and PNG plots: ``classes.png`` (class sizes, sorted: the long tail);
with ``--scores`` also ``cas.png`` (CAS histogram with the low 30% / middle 30% / high 40%
subset boundaries), ``cas_per_class.png`` (CAS distribution inside the largest classes) and
``attributes.png`` (single-attribute frequencies per primary). The JSON holds the CAS paper's
Table 1 (mean / std of the CAS of drawn samples under uniform and CAS-weighted sampling),
per-class statistics, subset sizes and thresholds, and attribute frequencies.
"""
from __future__ import annotations

HELP = "class, attribute and CAS statistics with plots"


def add_arguments(p) -> None:
    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--scores", help="score file from `fastcas score`")
    p.add_argument("--out", required=True, help="output directory (stats.json and PNG plots)")
    p.add_argument("--b", type=float, default=1.2, help="CAS weight exponent for Table 1 (w = CAS ** b)")
    p.add_argument("--draws", type=int, default=100_000, help="samples drawn for Table 1's empirical columns")
    p.add_argument("--seed", type=int, default=0)


def attribute_names(metadata: dict) -> list | None:
    """[(primary, [secondary names])] for a score file's encoder, or None if unknown."""
    if metadata.get("encoder") == "pixel" and metadata.get("primaries"):
        return list(zip(metadata["primaries"], metadata["secondaries"]))
    if metadata.get("encoder") == "clip":
        from fastcas.attributes import load_vocabulary

        return [(p["name"], p["values"]) for p in load_vocabulary()["primaries"]]
    return None


def run(args) -> int:
    import io
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fastcas._io import atomic_write_bytes, atomic_write_json
    from fastcas.commands.info import summary
    from fastcas.reader import ShardReader
    from fastcas.scores import (attribute_frequencies, cas_subsets, class_statistics, read_scores,
                                sampling_statistics)

    reader = ShardReader(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"dataset": summary(reader), "class_counts": reader.class_counts.tolist(),
             "empty_classes": [reader.class_names[k] for k in np.flatnonzero(reader.class_counts == 0)]}

    def save_fig(fig, name):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        atomic_write_bytes(out / name, buf.getvalue())

    order = np.argsort(-reader.class_counts, kind="stable")
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(range(reader.num_classes), reader.class_counts[order])
    ax.set_yscale("log")
    ax.set_xlabel("class (sorted by size)")
    ax.set_ylabel("samples")
    ax.set_title(f"{reader.root.name}: class sizes")
    save_fig(fig, "classes.png")
    if args.scores:
        t = read_scores(args.scores, keys=reader.keys)
        sub = cas_subsets(t.cas)
        names = attribute_names(t.metadata)
        stats["cas"] = {
            "mean": float(t.cas.mean()), "std": float(t.cas.std()), "min": int(t.cas.min()), "max": int(t.cas.max()),
            "subsets": {n: {"size": int((sub == k).sum()),
                            "cas_min": int(t.cas[sub == k].min()) if (sub == k).any() else None,
                            "cas_max": int(t.cas[sub == k].max()) if (sub == k).any() else None}
                        for k, n in enumerate(("low", "middle", "high"))},
            "metadata": t.metadata}
        stats["table1"] = sampling_statistics(t.cas, args.b, draws=args.draws, seed=args.seed)
        stats["classes"] = class_statistics(t.attrs, t.labels, t.cas, reader.class_names)
        stats["attribute_frequencies"] = attribute_frequencies(t.attrs, names)
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(t.cas, bins=max(1, min(50, int(t.cas.max() - t.cas.min() + 1))))
        ax.set_xlabel("CAS (sum of within-class scarcity ranks)")
        ax.set_ylabel("images")
        ax.set_title("CAS distribution (low 30% / middle 30% / high 40%)")
        for n in ("low", "middle"):
            if stats["cas"]["subsets"][n]["cas_max"] is not None:
                ax.axvline(stats["cas"]["subsets"][n]["cas_max"] + 0.5, color="k", ls="--")
        save_fig(fig, "cas.png")
        top = [k for k in order[:8] if reader.class_counts[k] > 0]
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.boxplot([t.cas[t.labels == k] for k in top], showfliers=True)
        ax.set_xticks(range(1, len(top) + 1), [str(reader.class_names[k])[:12] for k in top], rotation=30)
        ax.set_ylabel("CAS")
        ax.set_title("CAS within the largest classes")
        save_fig(fig, "cas_per_class.png")
        P = t.attrs.shape[1]
        cols = 4
        rows = max(1, -(-P // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(12, 2.2 * rows), squeeze=False)
        for p, ax in enumerate(axes.ravel()):
            if p >= P:
                ax.axis("off")
                continue
            counts = stats["attribute_frequencies"][p]["counts"]
            labels = [n for n, _ in counts[:10]]
            ax.barh(range(len(labels)), [c for _, c in counts[:10]])
            ax.set_yticks(range(len(labels)), [str(n)[:16] for n in labels], fontsize=6)
            ax.invert_yaxis()
            ax.set_title(str(stats["attribute_frequencies"][p]["primary"]), fontsize=8)
        save_fig(fig, "attributes.png")
    atomic_write_json(out / "stats.json", stats)
    print(f"wrote {out}/stats.json and plots")
    return 0
