"""``fastcas sample DATASET``: draw weighted sample indices and save them as ``.npy``."""
from __future__ import annotations

HELP = "draw weighted sample indices (CAS, CMO, over/under-sampling)"


def add_arguments(p) -> None:
    from fastcas.sampling.weights import NAMES

    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--weights", choices=NAMES, default="uniform")
    p.add_argument("--scores", help="CAS score file (Parquet from `fastcas score`), for cas / cas-cmo")
    p.add_argument("--b", type=float, default=1.2, help="CAS exponent (default 1.2)")
    p.add_argument("--r", type=float, default=1.0, help="CMO exponent (default 1.0)")
    p.add_argument("--threshold", type=float, default=None, help="over/under-sampling threshold")
    p.add_argument("--num-samples", type=int, default=None, help="draws per epoch over all ranks (default N)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--epoch", type=int, default=0, help="epoch whose indices to draw (default 0)")
    p.add_argument("--rank", type=int, default=0, help="this rank's share of the epoch (default 0)")
    p.add_argument("--world-size", type=int, default=1, help="number of ranks sharing the epoch (default 1)")
    p.add_argument("--mode", choices=["exact", "streaming"], default="exact",
                   help="exact: independent weighted draws over the whole dataset (random access); streaming: "
                   "each rank reads whole shards in order, repeating each sample by its weight (systematic "
                   "rounding) and mixing through --shuffle-buffer (sequential reads) (default exact)")
    p.add_argument("--shuffle-buffer", type=int, default=4096, help="streaming mode shuffle buffer")
    p.add_argument("--out", required=True, help="output .npy of int64 global indices")
    p.add_argument("--report", action="store_true",
                   help="print drawn vs target shares per class (and per attribute value with --scores), "
                   "and the effective sample size")


def run(args) -> int:
    import numpy as np

    from fastcas.cli._device import require_scores
    from fastcas.core.io import atomic_open
    from fastcas.dataset.reader import ShardReader
    from fastcas.sampling import weights

    require_scores(args.weights, args.scores)
    reader = ShardReader(args.dataset)
    scores = table = None
    if args.scores:
        from fastcas.dataset.scorefile import read_scores

        table = read_scores(args.scores, keys=reader.keys, labels=reader.labels)
        scores = table.cas
    w = weights.make(args.weights, reader.labels, scores=scores, b=args.b, r=args.r, threshold=args.threshold)
    num = args.num_samples
    if num is None and args.weights in ("oversample-expected", "undersample-expected"):
        num = int(round(w.sum()))  # the resampled epoch size
    if args.weights in weights.PLAN_NAMES:  # the paper's resampled set, one pass per epoch
        if args.mode != "exact":
            raise ValueError(f"--weights {args.weights} is a fixed resampling plan: use --mode exact")
        from fastcas.sampling.plan import PlanSampler

        plan = weights.make_plan(args.weights, reader.labels, seed=args.seed, threshold=args.threshold)
        sampler = PlanSampler(plan, len(reader.labels), num, seed=args.seed, rank=args.rank,
                              world_size=args.world_size)
    elif args.mode == "exact":
        from fastcas.sampling.sampler import WeightedSampler

        sampler = WeightedSampler(w, num, seed=args.seed, rank=args.rank, world_size=args.world_size)
    else:
        from fastcas.sampling.streaming import StreamingSampler

        counts = [s["count"] for s in reader.manifest["shards"]]
        sampler = StreamingSampler(counts, w, num, seed=args.seed, rank=args.rank,
                                   world_size=args.world_size, shuffle_buffer=args.shuffle_buffer)
    idx = sampler.indices(args.epoch)
    with atomic_open(args.out, "wb") as f:
        np.save(f, idx)
    print(f"wrote {len(idx)} indices ({args.weights}, {args.mode}, rank {args.rank}/{args.world_size}, "
          f"epoch {args.epoch}) to {args.out}")
    if args.report:
        from fastcas.dataset.scorefile import random_weights_warning
        from fastcas.scoring.cas import attribute_names
        from fastcas.train.monitor import drawn_report, format_report

        att = {}
        if table is not None:
            names = attribute_names(table.metadata)
            att = {"attrs": table.attrs, "primaries": [n for n, _ in names] if names else None,
                   "secondaries": [v for _, v in names] if names else None}
            if random_weights_warning(table.metadata):
                print(f"warning: {random_weights_warning(table.metadata)}")
        print(format_report(drawn_report(reader.labels, idx, w, class_names=reader.class_names, **att)))
    return 0
