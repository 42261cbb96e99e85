"""``fastcas make-lt SRC OUT --imbalance-ratio R``: a long-tailed subset (CIFAR-100-LT rule)."""
from __future__ import annotations

HELP = "make a long-tailed subset of a sharded dataset"


def add_arguments(p) -> None:
    p.add_argument("src", help="dataset directory or manifest")
    p.add_argument("out", help="output directory (must be empty unless --overwrite)")
    p.add_argument("--imbalance-ratio", type=float, required=True,
                   help="n_max / n_min, e.g. 100: class k keeps floor(n_max * R^(-k/(C-1))) samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of kept samples per class (default 0)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per output shard (default 1000)")
    p.add_argument("--prefix", default=None, help="output shard file prefix (default 'shard')")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in OUT")


def run(args) -> int:
    from fastcas.dataset.lt import make_lt

    m = make_lt(args.src, args.out, args.imbalance_ratio, seed=args.seed, shard_size=args.shard_size,
                prefix=args.prefix, overwrite=args.overwrite, progress=True)
    print(f"wrote {m['num_samples']} samples; class counts {m['class_counts']}")
    return 0
