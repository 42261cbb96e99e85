"""``fastcas index SRC [SRC ...] --out DIR``: a manifest for existing WebDataset tars."""
from __future__ import annotations

import argparse
import os

HELP = "index existing WebDataset tars (local or URLs) without rewriting them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="+", help="a directory of .tar files, tar files, a brace pattern "
                   "('train-{000000..000146}.tar', quote it) or glob, or http(s):// / s3:// / gs:// URLs")
    p.add_argument("--out", required=True, help="directory for manifest.json and the DALI indexes "
                   "(must be empty unless --overwrite); the tars stay where they are")
    p.add_argument("--image-keys", default="jpg,jpeg,png,webp",
                   help="image extensions, first present wins (default jpg,jpeg,png,webp)")
    p.add_argument("--label-key", default="cls", help="extension holding the integer label (default cls), "
                   "or json:FIELD for a field of the .json member (e.g. json:label)")
    p.add_argument("--class-names", metavar="FILE|a,b,c", help="a file with one class name per line (line k = "
                   "class k), or the names separated by commas; labels that are class names are mapped to their id")
    p.add_argument("--classes-from", metavar="TRAIN_DATASET", help="take the class names from this (training) "
                   "dataset, so a validation set shares its ids")
    p.add_argument("--strict", action="store_true", help="a sample without image or label, or with an "
                   "unreadable or oversized image, is an error (default: listed in the manifest and skipped)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images declaring more pixels (default 178,956,970, PIL's bomb limit)")
    p.add_argument("--cache-dir", help="shard cache for URLs (default ~/.cache/fastcas/shards)")
    p.add_argument("--hash", action="store_true", help="also record SHA-256 of local tars (reads them whole)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes scanning local tars (default: up to 4 cores)")
    p.add_argument("--max-classes", type=int, default=None, help="refuse integer labels >= this (default "
                   "100,000): one stray label would otherwise make that many classes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index in --out")
    from fastcas.cli._remote import add_remote_arguments

    add_remote_arguments(p)


def run(args) -> int:
    from fastcas.cli._remote import remote_options
    from fastcas.dataset import imagehdr
    from fastcas.dataset.classes import class_names_of, parse_class_names
    from fastcas.dataset.indexer import IndexConfig, index_dataset
    from fastcas.dataset.remote import RemoteError

    if args.class_names and args.classes_from:
        raise ValueError("give --class-names or --classes-from, not both")
    names = parse_class_names(args.class_names) if args.class_names else None
    if args.classes_from:
        names = class_names_of(args.classes_from)
    config = IndexConfig(
        **({"max_classes": args.max_classes} if args.max_classes is not None else {}),
        image_keys=tuple(k.strip().lower().lstrip(".") for k in args.image_keys.split(",") if k.strip()),
        label_key=args.label_key, class_names=names, strict=args.strict,
        max_pixels=args.max_pixels or imagehdr.DEFAULT_MAX_PIXELS, cache_dir=args.cache_dir,
        overwrite=args.overwrite, hash_local=args.hash, remote=remote_options(args))
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        m = index_dataset(args.src, args.out, config, progress=True, workers=args.workers)
    except RemoteError as exc:  # an OSError: the CLI reports ValueErrors as `error:` lines
        raise ValueError(str(exc)) from None
    print(f"indexed {m['num_samples']} samples in {len(m['shards'])} tars, {len(m['class_names'])} classes, "
          f"into {args.out}")
    if m["skipped"]:
        print(f"skipped {len(m['skipped'])} samples (listed in manifest.json 'skipped'):")
        for s in m["skipped"][:10]:
            print(f"  {s['tar']}: {s['key']}: {s['reason']}")
    return 0
