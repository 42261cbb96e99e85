"""``fastcas bench DATASET``: loader throughput against the torchvision baseline."""
from __future__ import annotations

import os

HELP = "loader throughput against the torchvision baseline"


def add_arguments(p) -> None:
    from fastcas.tools.bench import LOADERS, MIXES

    p.add_argument("dataset", help="dataset directory or manifest (e.g. demo-data/photo-corpus)")
    p.add_argument("--loaders", default="fastcas,torchvision,dali-plain,decode-only",
                   help=f"comma-separated, from {', '.join(LOADERS)}; 'all': fastcas, fastcas-torchresize, "
                   "torchvision, dali-plain and every peer (a peer not installed is skipped with the reason)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="fastcas: DALI python source workers")
    p.add_argument("--baseline-workers", type=int, default=os.cpu_count() or 2,
                   help="torchvision and the peers: DataLoader worker processes or threads (default: all cores)")
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--mix", default="cutmix",
                   help=f"one of {', '.join(MIXES)}, or several comma-separated (e.g. none,cutmix: one run per mix, "
                   "then one table of all; --json/--plot then need {{mix}} in the path)")
    p.add_argument("--weights", choices=["uniform", "cas", "cmo"], default="uniform")
    p.add_argument("--scores", help="score file for --weights cas")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per loader per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per loader")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one, else cpu), cpu or cuda")
    p.add_argument("--json", dest="json_out", help="write the result JSON here")
    p.add_argument("--plot", help="write a PNG bar chart here")


def run(args) -> int:
    from fastcas.cli._device import require_device, require_scores
    from fastcas.core.io import atomic_write_json
    from fastcas.tools.bench import BenchConfig, format_mixes, format_table, goals, plot_result, run_bench
    from fastcas.tools.machine import machine_info

    require_device(args.device)
    require_scores(args.weights, args.scores)
    mixes = [m.strip() for m in args.mix.split(",") if m.strip()]
    for flag, path in (("--json", args.json_out), ("--plot", args.plot)):
        if path and len(mixes) > 1 and "{mix}" not in path:
            raise ValueError(f"{flag} {path}: --mix names {len(mixes)} mixes; put {{mix}} in the path")
    cfgs = [BenchConfig(dataset=args.dataset, loaders=tuple(x.strip() for x in args.loaders.split(",") if x.strip()),
                        batch_size=args.batch_size, workers=args.workers, baseline_workers=args.baseline_workers,
                        threads=args.threads, image_size=args.image_size, mix=mix, weights=args.weights,
                        scores=args.scores, seconds=args.seconds, rounds=args.rounds, warmup=args.warmup,
                        device=args.device) for mix in mixes]  # every mix validated before any run
    results = {}
    for cfg in cfgs:
        res = run_bench(cfg)
        rows, dev = res["rows"], res["device"]
        print(format_table(res, cfg))
        gl = goals(rows, dev, cfg.mix)  # the project's own throughput goals: in the JSON, not on a user's screen
        payload = {"benchmark": "loader", "machine": machine_info(), "config": cfg.__dict__, "rows": rows, "goals": gl,
                   **{k: res[k] for k in ("skipped", "checks", "load_average", "others_cores")}}
        if args.json_out:
            atomic_write_json(args.json_out.replace("{mix}", cfg.mix), payload)
        if args.plot:
            plot_result(payload, args.plot.replace("{mix}", cfg.mix))
        results[cfg.mix] = res
    if len(results) > 1:
        print(format_mixes(results))
    return 0
