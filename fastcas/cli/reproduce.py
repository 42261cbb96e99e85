"""``fastcas reproduce``: the papers' comparisons trained on Fashion-MNIST-LT-tint, paired by seed."""
from __future__ import annotations

HELP = "train the papers' comparisons on the demo data, several seeds, paired differences"


def add_arguments(p) -> None:
    from fastcas.tools.reproduce.run import ARMS, ReproduceConfig

    d = ReproduceConfig(train="", val="")
    p.add_argument("--root", default="demo-data", help="where the demo datasets live (default ./demo-data)")
    p.add_argument("--out", default=d.out, help=f"report directory (default {d.out})")
    p.add_argument("--fashion-mnist", default=None, help="directory with Fashion-MNIST idx files")
    p.add_argument("--arms", nargs="+", default=list(d.arms), choices=list(ARMS), metavar="ARM",
                   help="recipes to train (default all: " + ", ".join(ARMS) + ")")
    p.add_argument("--seeds", type=int, default=d.seeds, help=f"training seeds 0..N-1 (default {d.seeds})")
    p.add_argument("--model", default=d.model, help=f"default {d.model}")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--epoch-length", type=int, default=d.epoch_length, help="draws per epoch")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--image-size", type=int, default=d.image_size, help="training size in px (scores stay at 28)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="validation curve every N epochs")
    p.add_argument("--device", default=d.device, help="cpu (default), cuda or auto")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--attributes", action="store_true",
                   help="instead: the attribute-kind table (within-class CAS AUC of rare inverted, colour-cast, "
                   "blurred, ... Fashion-MNIST images at rare shares 2/5/10%%) -> OUT/attributes.{json,md}")
    p.add_argument("--per-class", type=int, default=600, help="images per class for --attributes (default 600)")


def run(args) -> int:
    from fastcas.tools.demo.data import build_demo_data
    from fastcas.tools.demo.tint import build_tint_data
    from fastcas.tools.reproduce.run import ReproduceConfig, run_reproduce

    if args.attributes:
        return _attributes(args)
    build_demo_data(args.root, corpus_size=0, seed=args.seed, fashion_mnist=args.fashion_mnist,
                    progress=args.progress)
    train, val = build_tint_data(args.root, seed=args.seed, fashion_mnist=args.fashion_mnist,
                                 progress=args.progress)
    cfg = ReproduceConfig(
        train=str(train),
        val=str(val),
        out=args.out,
        arms=tuple(args.arms),
        seeds=args.seeds,
        model=args.model,
        epochs=args.epochs,
        epoch_length=args.epoch_length,
        batch_size=args.batch_size,
        image_size=args.image_size,
        eval_every=args.eval_every,
        device=args.device,
        progress=args.progress,
    )
    report = run_reproduce(cfg)
    print((__import__("pathlib").Path(cfg.out) / "report.md").read_text())
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
