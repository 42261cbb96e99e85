"""``fastcas score DATASET --out scores.parquet``: attributes and CAS per image."""
from __future__ import annotations

import shutil
from pathlib import Path

HELP = "score images with attribute encoders and compute CAS"


def add_arguments(p) -> None:
    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--out", required=True, help="score file (Parquet)")
    p.add_argument("--encoder", choices=["pixel", "clip"], default="pixel")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name (clip encoder)")
    p.add_argument("--weights", default=None, help="CLIP weights: a local file or an open_clip pretrained tag "
                   "(the tag needs the network); default random weights (tests only)")
    p.add_argument("--dictionary", default=None, help="visual dictionary .npz to reuse (built and saved beside "
                   "OUT when missing)")
    p.add_argument("--anchors", default=None, help="anchor-pool dataset for the dictionary (default: DATASET)")
    p.add_argument("--top-k", type=int, default=1, help="dictionary key = mean of the top-k anchors (paper: 1)")
    p.add_argument("--text-only", action="store_true", help="ablation: match images to text embeddings")
    p.add_argument("--reference", default=None, help="training set's score file: rank with its class statistics "
                   "(use for validation sets)")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--merge", nargs="+", default=None, metavar="PART", help="merge per-rank part files into OUT")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None, help="decode size (pixel: 64, clip: the model's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=1, help="DALI python workers")


def score_dataset(args) -> dict:
    import numpy as np

    from fastcas.attributes.run import encode_dataset
    from fastcas.reader import ShardReader
    from fastcas.scores import ScoreTable, cas_scores, fit_ranks, read_scores, write_scores

    if args.world_size < 1 or not 0 <= args.rank < args.world_size:
        raise ValueError(f"rank must be in [0, world_size={args.world_size}), got rank={args.rank}")
    reader = ShardReader(args.dataset)
    out = Path(args.out)
    work = out.with_name(out.name + ".work")
    kw = dict(batch_size=args.batch_size, rank=args.rank, world_size=args.world_size, device=args.device,
              py_workers=args.workers)
    if args.encoder == "pixel":
        from fastcas.attributes.pixel import PixelEncoder

        enc = PixelEncoder()
        idx, attrs = encode_dataset(args.dataset, enc.encode, image_size=args.image_size or 64,
                                    work_dir=work, **kw)
        meta = enc.metadata()
    else:
        from fastcas.attributes.clip import ClipEncoder, VisualDictionary, build_dictionary

        device = "cuda" if args.device in ("auto", "cuda") and _cuda() else "cpu"
        enc = ClipEncoder(args.model, args.weights, device)
        size = args.image_size or enc.image_size
        idx, emb = encode_dataset(args.dataset, enc.embed_images, image_size=size, work_dir=work, **kw)
        dict_path = Path(args.dictionary) if args.dictionary else out.with_suffix(".dictionary.npz")
        if dict_path.exists():
            enc.dictionary = VisualDictionary.load(dict_path)
        else:
            texts, prims = enc.vocabulary_texts()
            anchors = emb
            if args.anchors:
                _, anchors = encode_dataset(args.anchors, enc.embed_images, image_size=size,
                                            work_dir=Path(str(work) + ".anchors"), **kw)
            enc.dictionary = build_dictionary(texts, anchors, prims, top_k=args.top_k,
                                              mode="text" if args.text_only else "visual",
                                              meta={"model": args.model, "weights_hash": enc.weights_hash})
            if args.rank == 0:
                enc.dictionary.save(dict_path)
        attrs = enc.dictionary.assign(emb)
        meta = enc.metadata()
    from fastcas.attributes import load_vocabulary

    meta.update(vocabulary_version=load_vocabulary()["version"], dataset=str(reader.root),
                content_hash=reader.manifest.get("content_hash"))
    labels = reader.labels[idx]
    keys = [reader.keys[i] for i in idx]
    if args.world_size > 1:  # a part: CAS needs the whole set, computed at merge
        part = ScoreTable(keys, labels, np.zeros(len(idx), np.int64), attrs,
                          {**meta, "rank": args.rank, "world_size": args.world_size, "indices": idx.tolist()})
        write_scores(out, part)
        shutil.rmtree(work, ignore_errors=True)
        return {"part": str(out), "samples": len(idx)}
    ref = None
    if args.reference:
        r = read_scores(args.reference)
        ref = fit_ranks(r.attrs, r.labels, reader.num_classes)
        meta["reference"] = str(args.reference)
    cas = cas_scores(attrs, labels, ref)
    write_scores(out, ScoreTable(keys, labels, cas, attrs, meta))
    shutil.rmtree(work, ignore_errors=True)  # chunks are only for resuming an interrupted run
    shutil.rmtree(Path(str(work) + ".anchors"), ignore_errors=True)
    return {"samples": len(idx), "cas_mean": float(cas.mean()), "cas_min": int(cas.min()), "cas_max": int(cas.max())}


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def merge(args) -> dict:
    from fastcas.reader import ShardReader
    from fastcas.scores import ScoreTable, cas_scores, fit_ranks, merge_parts, read_scores, write_scores

    reader = ShardReader(args.dataset)
    merged = merge_parts(args.merge, args.out)
    table = read_scores(args.out, keys=reader.keys)
    ref = None
    if args.reference:
        r = read_scores(args.reference)
        ref = fit_ranks(r.attrs, r.labels, reader.num_classes)
    cas = cas_scores(table.attrs, table.labels, ref)
    write_scores(args.out, ScoreTable(table.keys, table.labels, cas, table.attrs, merged.metadata))
    return {"samples": len(cas), "parts": len(args.merge)}


def run(args) -> int:
    result = merge(args) if args.merge else score_dataset(args)
    print(f"wrote {args.out}: {result}")
    return 0
