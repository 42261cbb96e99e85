"""``fastcas demo``: build the real demo data, score it, train three recipes, write a report."""
from __future__ import annotations

HELP = "build the embedded demo data and run the end-to-end demo"


def add_arguments(p) -> None:
    p.add_argument("--root", default="demo-data", help="where the demo datasets live (default ./demo-data)")
    p.add_argument("--out", default="runs/demo", help="report directory (default ./runs/demo)")
    p.add_argument("--corpus-size", type=int, default=5000, help="real-photo benchmark corpus size (0 = none)")
    p.add_argument("--fashion-mnist", default=None, help="directory with Fashion-MNIST idx files")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-length", type=int, default=4096, help="samples drawn per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true", help="rebuild the datasets even if present")
    p.add_argument("--data-only", action="store_true", help="build the data and print its statistics only")


def run(args) -> int:
    from fastcas.commands.info import format_summary, summary
    from fastcas.demo import DemoConfig, run_demo
    from fastcas.demo_data import build_demo_data
    from fastcas.reader import ShardReader

    data = build_demo_data(args.root, corpus_size=args.corpus_size, seed=args.seed,
                           fashion_mnist=args.fashion_mnist, overwrite=args.rebuild)
    for path in (data.train, data.val, data.corpus):
        if path is not None:
            print(format_summary(summary(ShardReader(path))))
    if args.data_only:
        return 0
    run_demo(DemoConfig(train=str(data.train), val=str(data.val), out=args.out,
                        corpus=str(data.corpus) if data.corpus else None, epochs=args.epochs,
                        epoch_length=args.epoch_length))
    return 0
