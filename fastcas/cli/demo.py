"""``fastcas demo``: build the real demo data, score it, run the papers' comparisons, write a report."""
from __future__ import annotations

HELP = "build the embedded demo data and run the end-to-end demo"


def add_arguments(p) -> None:
    p.add_argument("--root", default="demo-data", help="where the demo datasets live (default ./demo-data)")
    p.add_argument("--out", default="runs/demo", help="report directory (default ./runs/demo)")
    p.add_argument("--data", choices=["tint", "lt"], default="tint",
                   help="tint (default): Fashion-MNIST-LT-tint, real Fashion-MNIST images with a controlled "
                   "attribute (ink/paper tint, 85/10/4/1%% inside every class) and a validation split balanced "
                   "over it, so the report has a rare-attribute subset; lt: plain Fashion-MNIST-LT (ratio 100)")
    p.add_argument("--corpus-size", type=int, default=0,
                   help="real-photo benchmark corpus size for a loader benchmark (default 0 = none)")
    p.add_argument("--fashion-mnist", default=None, help="directory with Fashion-MNIST idx files")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--epoch-length", type=int, default=4096, help="samples drawn per epoch")
    p.add_argument("--seeds", type=int, default=2,
                   help="training seeds 0..N-1 (default 2); N > 1 reports mean ± sd and which paired differences "
                   "exceed the seed spread")
    p.add_argument("--model", default="resnet8", help="classifier (default resnet8, CIFAR-style ResNet of depth 8)")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--rebuild", action="store_true", help="rebuild the datasets even if present")
    p.add_argument("--data-only", action="store_true", help="build the data and print its statistics only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from fastcas.cli.info import format_summary, summary
    from fastcas.dataset.reader import ShardReader
    from fastcas.tools.demo.data import build_demo_data
    from fastcas.tools.demo.run import DemoConfig, run_demo

    data = build_demo_data(args.root, corpus_size=args.corpus_size, seed=args.seed,
                           fashion_mnist=args.fashion_mnist, overwrite=args.rebuild, progress=not args.no_progress)
    train, val = data.train, data.val
    if args.data == "tint":
        from fastcas.tools.demo.tint import build_tint_data

        train, val = build_tint_data(args.root, seed=args.seed, fashion_mnist=args.fashion_mnist,
                                     overwrite=args.rebuild, progress=not args.no_progress)
    for path in (train, val, data.corpus):
        if path is not None:
            print(format_summary(summary(ShardReader(path))))
    if args.data_only:
        return 0
    run_demo(
        DemoConfig(
            train=str(train),
            val=str(val),
            out=args.out,
            corpus=str(data.corpus) if data.corpus else None,
            epochs=args.epochs,
            epoch_length=args.epoch_length,
            seeds=args.seeds,
            model=args.model,
            progress=not args.no_progress,
        )
    )
    return 0
