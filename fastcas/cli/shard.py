"""``fastcas shard SRC OUT``: WebDataset shards + DALI indexes + manifest from images."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write WebDataset shards + DALI indexes + manifest from images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="?", help="ImageFolder directory or 'path<TAB>label' list file, one image a "
                   "line, LABEL a non-negative integer class id (class names: use an ImageFolder tree); "
                   "relative paths are relative to the list file "
                   "(with --from fashion-mnist: the idx directory, default the Debian package)")
    p.add_argument("out", help="output directory (must be empty unless --overwrite)")
    p.add_argument("--from", dest="source", choices=["auto", "folder", "list", "fashion-mnist"], default="auto",
                   help="input kind (auto: a directory is an ImageFolder, a file is a list)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="Fashion-MNIST split")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--prefix", default="shard", help="shard file prefix (default 'shard')")
    p.add_argument("--shuffle", type=int, metavar="SEED", default=None,
                   help="store samples in a seeded random order (better for streaming reads)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them in the manifest")
    p.add_argument("--max-classes", type=int, default=None, help="refuse integer labels >= this (default "
                   "100,000): one stray label would otherwise make that many classes")
    p.add_argument("--classes-from", metavar="TRAIN_DATASET", help="number classes from this (training) dataset's "
                   "class_names, so a validation folder missing a class keeps the training ids; a class folder "
                   "the training set lacks is refused")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in OUT")
    p.add_argument("--workers", type=int, default=4, help="image-checking threads")


def run(args) -> int:
    from fastcas.core.rng import generator
    from fastcas.dataset.classes import check_same_classes, class_names_of
    from fastcas.dataset.ingest import (
        FASHION_MNIST_CLASSES,
        fashion_mnist_samples,
        image_folder_items,
        list_file_items,
        load_fashion_mnist,
        samples_from_items,
    )
    from fastcas.dataset.shards import ShardWriterConfig, write_shards

    kind = args.source
    skipped: list[str] = []
    train_names = class_names_of(args.classes_from) if args.classes_from else None
    if kind == "fashion-mnist":
        if train_names is not None:
            check_same_classes(train_names, FASHION_MNIST_CLASSES, what="Fashion-MNIST", train=args.classes_from)
        images, labels = load_fashion_mnist(args.src, args.split)
        order = None if args.shuffle is None else generator(args.shuffle, 0x5A).permutation(len(labels))
        samples = fashion_mnist_samples(images, labels, f"fm{args.split}", order)
        names, total, source = FASHION_MNIST_CLASSES, len(labels), f"fashion-mnist/{args.split}"
    else:
        if not args.src:
            raise ValueError("SRC is required unless --from fashion-mnist")
        src = Path(args.src)
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such file or directory")
        if kind == "auto":
            kind = "folder" if src.is_dir() else "list"
        if kind == "folder":
            items, names = image_folder_items(src, train_names)
        else:  # integer labels: the training set only names them (the writer checks label < len)
            items, names = list_file_items(src), train_names
        if not items:
            raise ValueError(f"{src}: no images found (empty input)")
        if args.shuffle is not None:
            items = items.take(generator(args.shuffle, 0x5A).permutation(len(items)))
        samples = samples_from_items(items, skip_bad=args.skip_bad, skipped=skipped, workers=args.workers)
        total, source = len(items), str(src)
    extra = {"source": {"path": source, "shuffle": args.shuffle}, "skipped": skipped}
    bound = {"max_classes": args.max_classes} if args.max_classes is not None else {}
    config = ShardWriterConfig(**bound, shard_size=args.shard_size, prefix=args.prefix, overwrite=args.overwrite,
                               class_names=tuple(names) if names else None, extra=extra)
    manifest = write_shards(samples, args.out, config, progress=True, total=total)
    print(f"wrote {manifest['num_samples']} samples in {len(manifest['shards'])} shards, "
          f"{len(manifest['class_names'])} classes, to {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (listed in manifest.json 'skipped'):")
        for s in skipped[:10]:
            print(f"  {s}")
    return 0
