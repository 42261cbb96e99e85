"""``fastcas selftest``: check the environment and prove the loader on this machine (CPU half,
and the GPU half when a GPU is used); one PASS/FAIL/SKIP line per check, exit 1 on any FAIL."""
from __future__ import annotations

HELP = "check the environment and prove the loader on this machine (CPU and GPU)"


def add_arguments(p) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU half runs when torch sees a GPU; cpu: CPU half only; "
                        "cuda: require a GPU (error without one)")
    p.add_argument("--json", dest="json_out", metavar="FILE",
                   help="write the report (environment, every check with numbers, tolerance, reason)")
    p.add_argument("--quick", action="store_true", help="fewer batches and a shorter throughput check")
    p.add_argument("--seconds", type=float, default=None,
                   help="timed seconds per loader in the throughput check (default 2, --quick 0.75)")
    p.add_argument("--keep", metavar="DIR", help="build the generated dataset in DIR and keep it (reused next time)")


def run(args) -> int:
    from fastcas.core.io import atomic_write_json
    from fastcas.tools.selftest.run import SelftestConfig, run_selftest

    cfg = SelftestConfig(device=args.device, quick=args.quick, seconds=args.seconds, keep=args.keep)
    report = run_selftest(cfg, out=lambda line: print(line, flush=True))
    if args.json_out:
        atomic_write_json(args.json_out, report)
        print(f"report: {args.json_out}")
    return 0 if report["ok"] else 1
