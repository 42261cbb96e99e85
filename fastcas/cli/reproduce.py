"""``fastcas reproduce``: the papers' comparisons trained on Fashion-MNIST-LT-tint, paired by seed."""
from __future__ import annotations

HELP = "the papers' comparisons with controls (CMO, CAS + placebo/oracle, importance sampling), paired by seed"


def add_arguments(p) -> None:
    from fastcas.tools.reproduce.run import PARTS, ReproduceConfig

    d = ReproduceConfig()
    p.add_argument("--out", default=d.out, help=f"report directory (default {d.out})")
    p.add_argument("--fashion-mnist", default=None, help="directory with Fashion-MNIST idx files")
    p.add_argument("--parts", nargs="+", default=list(d.parts), choices=list(PARTS),
                   help="which comparisons (default all: " + ", ".join(PARTS) + ")")
    p.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                   help="only these arms (e.g. CE for a longer convergence run); default every arm of the parts")
    p.add_argument("--seeds", type=int, default=d.seeds, help=f"seeds of the cmo and cas parts (default {d.seeds})")
    p.add_argument("--is-seeds", type=int, default=d.is_seeds,
                   help=f"seeds of the importance part (default {d.is_seeds})")
    p.add_argument("--cmo-epochs", type=int, default=d.cmo_epochs, help=f"default {d.cmo_epochs}")
    p.add_argument("--cas-epochs", type=int, default=d.cas_epochs, help=f"default {d.cas_epochs}")
    p.add_argument("--cas-per-class", type=int, default=d.cas_per_class, help=f"default {d.cas_per_class}")
    p.add_argument("--is-epochs", type=int, default=d.is_epochs, help=f"default {d.is_epochs}")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--workers", type=int, default=d.workers,
                   help=f"training processes, one thread each (default {d.workers})")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--no-resume", action="store_true", help="retrain runs already stored under OUT/runs")
    p.add_argument("--attributes", action="store_true",
                   help="instead: the attribute-kind table (within-class CAS AUC of rare inverted, colour-cast, "
                   "blurred, ... Fashion-MNIST images at rare shares 2/5/10%%) -> OUT/attributes.{json,md}")
    p.add_argument("--per-class", type=int, default=600, help="images per class for --attributes (default 600)")


def run(args) -> int:
    from pathlib import Path

    from fastcas.tools.reproduce.run import ReproduceConfig, run_reproduce

    if args.attributes:
        return _attributes(args)
    cfg = ReproduceConfig(fashion_mnist=args.fashion_mnist, out=args.out, parts=tuple(args.parts), seeds=args.seeds,
                          is_seeds=args.is_seeds, cmo_epochs=args.cmo_epochs, cas_epochs=args.cas_epochs,
                          cas_per_class=args.cas_per_class, is_epochs=args.is_epochs, batch_size=args.batch_size,
                          workers=args.workers, data_seed=args.seed, resume=not args.no_resume,
                          arms=tuple(args.arms) if args.arms else None)
    report = run_reproduce(cfg)
    print((Path(cfg.out) / "report.md").read_text())
    print(f"report: {cfg.out}/report.md ({report['wall_seconds'] / 60:.1f} min)")
    return 0


def _attributes(args) -> int:
    from pathlib import Path

    from fastcas.core.io import atomic_write_json
    from fastcas.dataset.ingest import load_fashion_mnist
    from fastcas.tools.reproduce.attributes import attribute_table, markdown_table

    images, labels = load_fashion_mnist(args.fashion_mnist, "train")
    rows = attribute_table(images, labels, per_class=args.per_class, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "attributes.json", {"per_class": args.per_class, "seed": args.seed, "rows": rows})
    table = markdown_table(rows)
    (out / "attributes.md").write_text(table + "\n")
    print(table)
    return 0
