"""``fastcas demo``: build the embedded real demo data and print its statistics.

The end-to-end training demo is added by the trainer (see README); this command always
starts by (re)using the demo datasets under ``--root``.
"""
from __future__ import annotations

HELP = "build the embedded demo data and run the end-to-end demo"


def add_arguments(p) -> None:
    p.add_argument("--root", default="demo-data", help="where the demo datasets live (default ./demo-data)")
    p.add_argument("--corpus-size", type=int, default=5000, help="real-photo benchmark corpus size (0 = none)")
    p.add_argument("--fashion-mnist", default=None, help="directory with Fashion-MNIST idx files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true", help="rebuild the datasets even if present")


def run(args) -> int:
    from fastcas.commands.info import format_summary, summary
    from fastcas.demo_data import build_demo_data
    from fastcas.reader import ShardReader

    data = build_demo_data(args.root, corpus_size=args.corpus_size, seed=args.seed,
                           fashion_mnist=args.fashion_mnist, overwrite=args.rebuild)
    for path in (data.train, data.val, data.corpus):
        if path is not None:
            print(format_summary(summary(ShardReader(path))))
    return 0
