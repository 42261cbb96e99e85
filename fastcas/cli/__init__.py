"""The ``fastcas`` command line: one sub-command per module in :mod:`fastcas.cli`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``fastcas
--help`` stays fast and a command's heavy dependencies (torch, DALI) load only when needed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module under fastcas.cli; order is the order shown in --help
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "reproduce": "reproduce",
    "shard": "shard",
    "index": "index",
    "convert": "convert",
    "make-lt": "make_lt",
    "info": "info",
    "sample": "sample",
    "score": "score",
    "stats": "stats",
    "preview": "preview",
    "train": "train",
    "bench": "bench",
    "selftest": "selftest",
}

# One-line help without importing the command module (kept in step by a test).
SUMMARY: dict[str, str] = {
    "demo": "build the embedded demo data and run the end-to-end demo",
    "reproduce": "the papers' comparisons with controls (CMO, CAS + placebo/oracle, importance sampling), "
                 "paired by seed",
    "shard": "write WebDataset shards + DALI indexes + manifest from images",
    "index": "index existing WebDataset tars (local or URLs) without rewriting them",
    "convert": "convert an older dataset's JSON manifest to memory-mapped columns, the one format read at run "
               "time (or export back)",
    "make-lt": "make a long-tailed subset of a sharded dataset",
    "info": "print a sharded dataset's statistics",
    "sample": "draw weighted sample indices (CAS, CMO, over/under-sampling)",
    "score": "score images with attribute encoders and compute CAS",
    "stats": "class, attribute and CAS statistics with plots",
    "preview": "PNG grid of mixed samples and their masks",
    "train": "train and evaluate a classifier with a fastcas recipe",
    "bench": "loader throughput against the torchvision baseline",
    "selftest": "check the environment and prove the loader on this machine (CPU and GPU)",
}


class CommandError(Exception):
    """A user-facing failure: printed as ``fastcas <cmd>: error: <msg>``, exit status 2."""


def _load(name: str):
    return importlib.import_module(f"fastcas.cli.{COMMANDS[name]}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastcas",
        description="GPU data loading for long-tailed image classification.",
    )
    from fastcas import __version__

    parser.add_argument("--version", action="version", version=f"fastcas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the selected command's module is imported; the rest get a stub parser.
    wanted = next((a for a in (argv or []) if a in COMMANDS), None)
    for name in COMMANDS:
        p = sub.add_parser(name, help=SUMMARY[name], description=SUMMARY[name])
        if name == wanted:
            _load(name).add_arguments(p)
        p.set_defaults(command=name)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError
    again (the Python docs' recipe for SIGPIPE)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by an object without a descriptor (tests)
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(_load(args.command).run(args) or 0)
    except KeyboardInterrupt:
        print(f"fastcas {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastcas info DS | head`: the reader left; stop quietly, as `cat` does
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a program killed by it
    except (CommandError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as exc:
        from fastcas.core.urls import redact  # no password of a URL in a message reaches the terminal

        print(f"fastcas {args.command}: error: {redact(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
