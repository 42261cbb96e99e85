"""``fastcas score DATASET --out scores.parquet``: attributes and CAS per image.

Single process: decode + encode in resumable chunks (``OUT.work/``), then rank within classes
and write OUT. Split over ranks, either explicitly (``--rank R --world-size W --out PART``,
then ``--merge PART... --out OUT``) or under ``torchrun`` (RANK / WORLD_SIZE from the
environment: each rank writes ``OUT.part-RRR-of-WWW.parquet``, rank 0 merges into OUT after a
gloo barrier and removes the parts). CAS needs the whole training set, so parts carry
attribute ids (or, for CLIP without a saved dictionary, image embeddings in a sidecar
``.npy``) and the ranking, and the dictionary, is done once at the merge: the merged file is
identical to a single-process run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

HELP = "score images with attribute encoders and compute CAS"


def add_arguments(p) -> None:
    p.add_argument("dataset", help="dataset directory or manifest")
    p.add_argument("--out", required=True, help="score file (Parquet)")
    p.add_argument("--encoder", choices=["pixel", "clip"], default="pixel")
    p.add_argument("--model", "--clip-model", dest="model", default="ViT-B-32",
                   help="open_clip model name or model-config .json (clip encoder)")
    p.add_argument("--weights", "--clip-weights", "--clip-pretrained", dest="weights", default=None,
                   help="CLIP weights: a local file, or an open_clip pretrained tag (only a tag may use the "
                   "network); default random weights (tests and benchmarks only)")
    p.add_argument("--dictionary", default=None, help="visual dictionary .npz to reuse (built and saved there, "
                   "or beside OUT as OUT.dictionary.npz, when missing)")
    p.add_argument("--anchors", default=None, help="anchor-pool dataset for the dictionary (default: DATASET)")
    p.add_argument("--top-k", type=int, default=1, help="dictionary key = mean of the top-k anchors (paper: 1)")
    p.add_argument("--text-only", action="store_true", help="ablation: match images to text embeddings")
    p.add_argument("--reference", "--train-scores", dest="reference", default=None,
                   help="training set's score file: rank with its class statistics (for validation sets)")
    p.add_argument("--bins", choices=["fitted", "fixed"], default="fitted",
                   help="pixel encoder: bins fitted to this (training) set's quantiles, saved in OUT and "
                   "reused by --reference (default), or fixed absolute bins for comparing datasets")
    p.add_argument("--min-share", type=float, default=0.02,
                   help="pixel encoder, fitted bins: least share of the set per value (default 0.02)")
    p.add_argument("--rank", type=int, default=None, help="this part's rank (default: $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of parts (default: $WORLD_SIZE or 1)")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART", help="merge per-rank part files into OUT")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None, help="decode size (pixel: 64, clip: the model's)")
    p.add_argument("--chunk-batches", type=int, default=16, help="batches per resume chunk")
    p.add_argument("--decoder", choices=["auto", "dali", "torchvision"], default="auto",
                   help="torchvision.io.decode_jpeg (auto; nvJPEG on a GPU) or fastcas's DALI loader")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one, else cpu), cpu or cuda")
    p.add_argument("--workers", type=int, default=1, help="DALI python workers")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _clip(args):
    from fastcas.attributes.clip import ClipEncoder

    device = "cuda" if args.device in ("auto", "cuda") and _cuda() else "cpu"
    return ClipEncoder(args.model, args.weights, device)


def _dictionary_path(args) -> Path:
    out = Path(args.out)
    return Path(args.dictionary) if args.dictionary else out.with_name(out.name + ".dictionary.npz")


def _encode(args, dataset, features, image_size, rank, world, work) -> tuple[np.ndarray, np.ndarray]:
    from fastcas.attributes.run import encode_dataset

    return encode_dataset(dataset, features, batch_size=args.batch_size, image_size=image_size, rank=rank,
                          world_size=world, work_dir=work, chunk_batches=args.chunk_batches, device=args.device,
                          progress=not args.no_progress, py_workers=args.workers, decoder=args.decoder)


def _base_meta(args, reader, image_size) -> dict:
    from fastcas.attributes import load_vocabulary, vocabulary_digest
    from fastcas.attributes.run import _resolve_decoder

    vocab = load_vocabulary()
    return {"vocabulary_version": vocab["version"], "vocabulary_hash": vocabulary_digest(vocab),
            "dataset": str(reader.root), "content_hash": reader.manifest.get("content_hash"),
            "decoder": _resolve_decoder(args.decoder), "image_size": int(image_size)}


def _pixel_bins(args, raw, ref_meta):
    """The pixel bins for this run: the reference's (validation sets), fitted to ``raw``
    float [N, P] (training sets, default) or fixed; ``ValueError`` naming a reference without bins."""
    from fastcas.attributes.bins import PixelBins, fit_bins, fixed_bins

    if ref_meta is not None:
        if "pixel_bins" not in ref_meta:
            raise ValueError(f"{args.reference}: reference has no pixel bins (scored with pixel encoder v1?); "
                             "score the training set again")
        return PixelBins.from_dict(ref_meta["pixel_bins"], str(args.reference))
    if args.bins == "fixed":
        fixed = fixed_bins()
        return fixed.with_constant(fixed.apply(raw))
    return fit_bins(raw, min_share=args.min_share)


def _finish(args, reader, idx, attrs, emb, meta, enc=None, raw=None) -> dict:
    """Shared tail of single runs and merges: CLIP dictionary (build or load) and assignment,
    pixel bins (fit, or the reference's) and binning, key check against the dataset, CAS
    with the reference's ranks over the non-constant primaries, atomic write."""
    import sys

    from fastcas.scores import ScoreTable, cas_scores, fit_ranks, read_scores, write_scores

    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    keys = [reader.keys[int(i)] for i in idx]
    if len(idx) != len(reader) or not np.array_equal(idx, np.arange(len(reader))):
        missing = sorted(set(range(len(reader))) - set(idx.tolist()))
        what = f"sample {reader.keys[missing[0]]!r} is missing" if missing else "some samples appear twice"
        raise ValueError(f"{args.out}: scored samples do not cover the dataset ({len(idx)} of {len(reader)}): {what}")
    if emb is not None:
        emb = emb[order]
        enc = enc or _clip(args)
        enc.dictionary = _get_dictionary(args, enc, emb, meta["image_size"])
        attrs = enc.dictionary.assign(emb)
        meta.update(enc.metadata())
    r = read_scores(args.reference) if args.reference else None
    if r is not None and r.metadata.get("encoder") != meta.get("encoder"):
        raise ValueError(f"{args.reference}: reference was scored with encoder {r.metadata.get('encoder')!r}, "
                         f"this run uses {meta.get('encoder')!r}")
    used = None
    if raw is not None:
        bins = _pixel_bins(args, raw[order], r.metadata if r is not None else None)
        attrs = bins.apply(raw[order])
        here = bins.with_constant(attrs).constant
        used = bins.used() or list(range(attrs.shape[1]))
        meta.update(pixel_bins=bins.to_dict(), bins_digest=bins.digest(), secondaries=bins.secondary_names(),
                    constant_primaries=list(bins.constant), constant_here=list(here),
                    cas_primaries=[bins.primaries[i] for i in used])
        if here:
            print(f"fastcas score: note: primaries constant on {reader.root.name} (one value): {', '.join(here)}"
                  + ("; left out of CAS" if bins.constant else ""), file=sys.stderr)
    elif emb is None:
        attrs = attrs[order]
    labels = reader.labels[idx]
    cols = (lambda a: a[:, used]) if used is not None else (lambda a: a)
    ref = None
    if r is not None:
        ref = fit_ranks(cols(r.attrs), r.labels, reader.num_classes)
        meta["reference"] = str(args.reference)
        if r.metadata.get("dictionary_hash") != meta.get("dictionary_hash"):
            raise ValueError(f"{args.reference}: reference was scored with dictionary "
                             f"{r.metadata.get('dictionary_hash')}, this run uses {meta.get('dictionary_hash')} "
                             "(pass the reference's --dictionary)")
    cas = cas_scores(cols(attrs), labels, ref)
    write_scores(args.out, ScoreTable(keys, labels, cas, attrs, meta))
    from fastcas.scores import random_weights_warning

    warning = random_weights_warning(meta)
    if warning:
        print(f"fastcas score: warning: {warning}", file=sys.stderr)
    return {**({"warning": warning} if warning else {}), "samples": len(idx),
            "cas_mean": float(cas.mean()) if len(cas) else None, "cas_min": int(cas.min()) if len(cas) else None,
            "cas_max": int(cas.max()) if len(cas) else None}


def _get_dictionary(args, enc, emb, image_size):
    from fastcas.attributes.clip import VisualDictionary, build_dictionary

    path = _dictionary_path(args)
    if path.exists():
        return VisualDictionary.load(path)
    texts, prims = enc.vocabulary_texts()
    anchors = emb
    if args.anchors:
        work = Path(str(args.out) + ".anchors.work")
        _, anchors = _encode(args, args.anchors, enc.embed_images, image_size, 0, 1, work)
        shutil.rmtree(work, ignore_errors=True)
    d = build_dictionary(texts, anchors, prims, top_k=args.top_k, mode="text" if args.text_only else "visual",
                         meta={"model": enc.model_name, "weights_hash": enc.weights_hash,
                               "anchors": str(args.anchors or args.dataset)})
    d.save(path)
    return d


def _rank_world(args) -> tuple[int, int, bool]:
    """(rank, world_size, under_torchrun)."""
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.world_size is None and env_world > 1:
        return int(os.environ.get("RANK", "0")), env_world, True
    world = args.world_size or 1
    rank = args.rank or 0
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world_size={world}), got rank={rank}")
    return rank, world, False


def _bind_local_gpu(device: str) -> int | None:
    """Under torchrun, each rank scores on its own GPU: ``torch.cuda.set_device(LOCAL_RANK)``
    before anything touches CUDA (the encoder, nvJPEG and the DALI loader all use the current
    device). Returns the ordinal, or None on the CPU."""
    from fastcas.loader import resolve_device

    if resolve_device(device) != "cuda":
        return None
    import torch

    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return local


def score_dataset(args, rank: int, world: int, out: Path) -> dict:
    from fastcas.reader import ShardReader
    from fastcas.scores import ScoreTable, write_scores

    reader = ShardReader(args.dataset)
    work = out.with_name(out.name + ".work")
    enc = None
    emb = attrs = raw = None
    if args.encoder == "pixel":
        from fastcas.attributes.pixel import PixelEncoder

        pix = PixelEncoder()
        size = args.image_size or 64
        idx, raw = _encode(args, args.dataset, pix.measure, size, rank, world, work)
        meta = {**_base_meta(args, reader, size), **pix.metadata()}
    else:
        enc = _clip(args)
        size = args.image_size or enc.image_size
        idx, emb = _encode(args, args.dataset, enc.embed_images, size, rank, world, work)
        meta = {**_base_meta(args, reader, size), **enc.metadata()}
        if world > 1 and _dictionary_path(args).exists():  # parts can assign right away
            from fastcas.attributes.clip import VisualDictionary

            enc.dictionary = VisualDictionary.load(_dictionary_path(args))
            attrs, emb = enc.dictionary.assign(emb), None
            meta.update(enc.metadata())
    if world > 1:  # a part: CAS (and a new dictionary / bins) need the whole set, made at the merge
        part_meta = {**meta, "rank": rank, "world_size": world, "indices": idx.tolist()}
        if args.encoder == "pixel":
            from fastcas._io import atomic_open

            side = out.with_name(out.name + ".measurements.npy")
            with atomic_open(side, "wb") as f:
                np.save(f, raw.astype(np.float64).reshape(len(idx), -1))
            part_meta["measurements"] = side.name
            attrs = np.zeros((len(idx), 0), np.int64)
        elif emb is not None:
            from fastcas._io import atomic_open

            side = out.with_name(out.name + ".embeddings.npy")
            with atomic_open(side, "wb") as f:
                np.save(f, emb.astype(np.float32))
            part_meta["embeddings"] = side.name
            attrs = np.zeros((len(idx), 0), np.int64)
        write_scores(out, ScoreTable([reader.keys[int(i)] for i in idx], reader.labels[idx],
                                     np.zeros(len(idx), np.int64), attrs, part_meta))
        shutil.rmtree(work, ignore_errors=True)
        return {"part": str(out), "samples": len(idx)}
    result = _finish(args, reader, idx, attrs, emb, meta, enc, raw=raw if args.encoder == "pixel" else None)
    shutil.rmtree(work, ignore_errors=True)  # chunks are only for resuming an interrupted run
    return result


def merge(args, parts: list) -> dict:
    from fastcas.reader import ShardReader
    from fastcas.scores import read_scores

    reader = ShardReader(args.dataset)
    tables = [read_scores(p) for p in parts]
    if not tables:
        raise ValueError("no score parts to merge")
    worlds = {t.metadata.get("world_size") for t in tables}
    ranks = sorted(t.metadata.get("rank") for t in tables)
    if len(worlds) != 1 or ranks != list(range(len(tables))) or worlds != {len(tables)}:
        raise ValueError(f"parts {', '.join(map(str, parts))} are not ranks 0..{len(tables) - 1} of one split "
                         f"(ranks {ranks}, world sizes {sorted(map(str, worlds))})")
    meta = {k: v for k, v in tables[0].metadata.items()
            if k not in ("rank", "world_size", "indices", "embeddings", "measurements", "schema_version")}
    idx = np.concatenate([np.asarray(t.metadata["indices"], np.int64) for t in tables])
    for t, p in zip(tables, parts):
        if len(t.metadata["indices"]) != len(t.keys):
            raise ValueError(f"{p}: part has {len(t.keys)} rows but {len(t.metadata['indices'])} indices")
        bad = next((k for i, k in zip(t.metadata["indices"], t.keys) if i >= len(reader) or reader.keys[i] != k), None)
        if bad is not None:
            raise ValueError(f"{p}: key {bad!r} does not match the dataset {reader.root}")
    if any("measurements" in t.metadata for t in tables):
        raw = np.concatenate([np.load(Path(p).with_name(t.metadata["measurements"])) for t, p in zip(tables, parts)])
        result = _finish(args, reader, idx, None, None, meta, raw=raw)
    elif any("embeddings" in t.metadata for t in tables):
        emb = np.concatenate([np.load(Path(p).with_name(t.metadata["embeddings"])) for t, p in zip(tables, parts)])
        result = _finish(args, reader, idx, None, emb, meta)
    else:
        result = _finish(args, reader, idx, np.concatenate([t.attrs for t in tables]), None, meta)
    return {**result, "parts": len(parts)}


def _part_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank:03d}-of-{world:03d}.parquet")


def _remove_part(p: Path) -> None:
    p.unlink(missing_ok=True)
    p.with_name(p.name + ".embeddings.npy").unlink(missing_ok=True)
    p.with_name(p.name + ".measurements.npy").unlink(missing_ok=True)


def run(args) -> int:
    from fastcas.commands._device import require_device

    require_device(args.device)
    out = Path(args.out)
    if args.merge:
        result = merge(args, args.merge)
    else:
        rank, world, torchrun = _rank_world(args)
        if not torchrun:
            result = score_dataset(args, rank, world, out)
        else:
            import torch.distributed as dist

            _bind_local_gpu(args.device)
            if not dist.is_initialized():
                dist.init_process_group("gloo")
            part = _part_path(out, rank, world)
            result = score_dataset(args, rank, world, part)
            dist.barrier()
            if rank == 0:
                parts = [_part_path(out, r, world) for r in range(world)]
                result = merge(args, parts)
                for p in parts:
                    _remove_part(p)
            dist.barrier()
            dist.destroy_process_group()
            if rank != 0:
                return 0
    print(f"wrote {args.out}: {result}")
    return 0
