"""``fastcas convert DIR``: a JSON manifest (per-sample lists) -> a memory-mapped columnar one, the
only format fastcas opens at run time (``--to json`` exports one back, for small datasets)."""
from __future__ import annotations

import argparse

HELP = ("convert an older dataset's JSON manifest to memory-mapped columns, the one format read at run time "
        "(or export back)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset directory (with manifest.json)")
    p.add_argument("--to", choices=["columns", "json"], default="columns",
                   help="target format (default columns, what fastcas reads; json: an export for small datasets "
                   "and other tools, which fastcas itself does not open)")


def run(args) -> int:
    from fastcas.dataset.convert import convert_manifest

    m = convert_manifest(args.dataset, args.to)
    print(f"{args.dataset}: manifest is now {m['format']} ({m['num_samples']} samples)")
    return 0
