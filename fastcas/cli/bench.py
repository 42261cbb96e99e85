"""``fastcas bench DATASET``: loader throughput against the torchvision baseline."""
from __future__ import annotations

import os

HELP = "loader throughput against the torchvision baseline"


def add_arguments(p) -> None:
    from fastcas.tools.bench import LOADERS, MIXES

    p.add_argument("dataset", help="dataset directory or manifest (e.g. demo-data/photo-corpus)")
    p.add_argument("--loaders", default="fastcas,torchvision,dali-plain,decode-only",
                   help=f"comma-separated, from {', '.join(LOADERS)}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="fastcas: DALI python source workers")
    p.add_argument("--baseline-workers", type=int, default=os.cpu_count() or 2,
                   help="torchvision: DataLoader worker processes (default: all cores)")
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--mix", choices=MIXES, default="cutmix")
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
    from fastcas.tools.bench import BenchConfig, goals, run_bench
    from fastcas.tools.machine import machine_info

    require_device(args.device)
    require_scores(args.weights, args.scores)
    cfg = BenchConfig(
        dataset=args.dataset,
        loaders=tuple(x.strip() for x in args.loaders.split(",") if x.strip()),
        batch_size=args.batch_size,
        workers=args.workers,
        baseline_workers=args.baseline_workers,
        threads=args.threads,
        image_size=args.image_size,
        mix=args.mix,
        weights=args.weights,
        scores=args.scores,
        seconds=args.seconds,
        rounds=args.rounds,
        warmup=args.warmup,
        device=args.device,
    )
    res = run_bench(cfg)
    rows, dev = res["rows"], res["device"]
    print(f"{'loader':<16} {'img/s':>9} {'min':>9} {'max':>9} {'x torchvision':>14} {'x dali-plain':>13} "
          f"{'paired':>7} {'train-thread ms/batch':>22}   ({dev}, batch {cfg.batch_size}, {cfg.image_size}px, "
          f"mix {cfg.mix}, weights {cfg.weights})")
    for r in rows:
        tv = f"{r['ratio_vs_torchvision']:.2f}" if r["ratio_vs_torchvision"] else "-"
        dp = f"{r['ratio_vs_dali_plain']:.2f}" if r.get("ratio_vs_dali_plain") else "-"
        pr = f"{r['paired_ratio_vs_dali_plain']:.2f}" if r.get("paired_ratio_vs_dali_plain") else "-"
        print(f"{r['loader']:<16} {r['images_per_s']:>9.1f} {r['min']:>9.1f} {r['max']:>9.1f} {tv:>14} {dp:>13} "
              f"{pr:>7} {r['train_thread_ms_per_batch']:>22.2f}")
    print("(x dali-plain: ratio of the medians; paired: median over rounds of each round's ratio)")
    gl = goals(rows, dev, cfg.mix)  # the project's own throughput goals: in the JSON, not on a user's screen
    payload = {"benchmark": "loader", "machine": machine_info(), "config": cfg.__dict__, "rows": rows, "goals": gl}
    if args.json_out:
        atomic_write_json(args.json_out, payload)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([r["loader"] for r in rows], [r["images_per_s"] for r in rows],
               yerr=[[r["images_per_s"] - r["min"] for r in rows], [r["max"] - r["images_per_s"] for r in rows]])
        ax.set_ylabel("images / s")
        ax.set_title(f"{dev}: batch {cfg.batch_size}, {cfg.image_size}px, mix {cfg.mix}")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)
        plt.close(fig)
    return 0
