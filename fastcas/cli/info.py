"""``fastcas info DATASET``: size, shards and class statistics of a sharded dataset."""
from __future__ import annotations

import json

HELP = "print a sharded dataset's statistics"


def add_arguments(p) -> None:
    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--verify", action="store_true",
                   help="hash the manifest's columns again and check them against its columns.hash and "
                        "class_counts (opening a dataset does this once per node)")


def summary(reader) -> dict:
    counts = reader.class_counts
    nz = counts[counts > 0]
    return {
        "path": str(reader.root),
        "samples": len(reader),
        "shards": len(reader.shard_paths),
        "bytes": int(sum(p.stat().st_size for p in reader.shard_paths if p.exists())),
        "classes": reader.num_classes,
        "imbalance_ratio": float(nz.max() / nz.min()) if len(nz) else 0.0,
        "class_counts": dict(zip(reader.class_names, counts.tolist())),
        "content_hash": reader.manifest.get("content_hash"),
        "skipped": len(reader.manifest.get("skipped", [])),
    }


def format_summary(s: dict) -> str:
    lines = [f"{s['path']}: {s['samples']} samples, {s['shards']} shards, {s['bytes'] / 1e6:.1f} MB, "
             f"{s['classes']} classes, imbalance ratio {s['imbalance_ratio']:.1f}"]
    width = max(len(n) for n in s["class_counts"]) if s["class_counts"] else 0
    top = max(s["class_counts"].values()) if s["class_counts"] else 1
    for name, c in s["class_counts"].items():
        lines.append(f"  {name:<{width}} {c:>8}  {'#' * max(1 if c else 0, round(40 * c / top))}")
    return "\n".join(lines)


def verify(reader) -> str:
    """Hash ``reader``'s columns again (ignoring the per-node marker); ShardError on a mismatch."""
    reader.verify_columns()
    return f"verified: the columns match columns.hash and class_counts ({len(reader)} labels)"


def run(args) -> int:
    from fastcas.dataset.reader import ShardReader

    reader = ShardReader(args.dataset)
    s = summary(reader)
    if args.verify:
        s["verified"] = verify(reader)
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    if args.verify and not args.json:
        print(s["verified"])
    return 0
