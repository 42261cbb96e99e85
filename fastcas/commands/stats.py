"""``fastcas stats DATASET [--scores FILE] --out DIR``: class, attribute and CAS statistics."""
from __future__ import annotations

HELP = "class, attribute and CAS statistics with plots"


def add_arguments(p) -> None:
    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--scores", help="score file from `fastcas score`")
    p.add_argument("--out", required=True, help="output directory (stats.json, classes.png, cas.png)")


def run(args) -> int:
    import io
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fastcas._io import atomic_write_bytes, atomic_write_json
    from fastcas.commands.info import summary
    from fastcas.metrics import cas_subsets
    from fastcas.reader import ShardReader
    from fastcas.scores import class_statistics, read_scores

    reader = ShardReader(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"dataset": summary(reader)}

    def save_fig(fig, name):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        atomic_write_bytes(out / name, buf.getvalue())

    order = np.argsort(-reader.class_counts)
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
        stats["cas"] = {"mean": float(t.cas.mean()), "min": int(t.cas.min()), "max": int(t.cas.max()),
                        "subset_thresholds": [int(t.cas[sub == k].max()) for k in range(2)],
                        "metadata": t.metadata}
        stats["classes"] = class_statistics(t.attrs, t.labels, t.cas, reader.class_names)
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(t.cas, bins=min(50, int(t.cas.max() - t.cas.min() + 1)))
        ax.set_xlabel("CAS (sum of within-class scarcity ranks)")
        ax.set_ylabel("images")
        ax.set_title("CAS distribution (low 30% / middle 30% / high 40%)")
        for thr in stats["cas"]["subset_thresholds"]:
            ax.axvline(thr + 0.5, color="k", ls="--")
        save_fig(fig, "cas.png")
    atomic_write_json(out / "stats.json", stats)
    print(f"wrote {out}/stats.json and plots")
    return 0
