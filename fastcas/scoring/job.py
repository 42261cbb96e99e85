"""The scoring job behind ``fastcas score DATASET --out scores.parquet``: attributes and CAS per image.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcas.core import npy
from fastcas.dataset.imagehdr import DEFAULT_MAX_PIXELS
from fastcas.scoring.vocabulary import ENCODERS


@dataclass(frozen=True)
class ScoreConfig:
    """One ``fastcas score`` job (the CLI flags of the same names; see ``fastcas score --help``).
    Validated on construction."""

    dataset: str
    out: str
    encoder: str = "pixel"
    model: str = "ViT-B-32"
    weights: str | None = None
    dictionary: str | None = None
    anchors: str | None = None
    top_k: int = 1
    text_only: bool = False
    reference: str | None = None
    bins: str = "fitted"
    min_share: float = 0.02
    rank: int | None = None
    world_size: int | None = None
    merge: tuple | None = None
    batch_size: int = 64
    image_size: int | None = None
    chunk_batches: int = 16
    decoder: str = "auto"
    device: str = "auto"
    workers: int = 1
    no_progress: bool = False
    overwrite: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the loader's decompression-bomb limit; None: none

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.bins not in ("fitted", "fixed"):
            raise ValueError(f"bins must be 'fitted' or 'fixed', got {self.bins!r}")
        if self.decoder not in ("auto", "dali", "torchvision"):
            raise ValueError(f"decoder must be auto, dali or torchvision, got {self.decoder!r}")
        for name, least in (("top_k", 1), ("batch_size", 1), ("chunk_batches", 1), ("workers", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int)
                                            or self.max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive integer or None, got {self.max_pixels!r}")
        if not 0 < self.min_share < 1:
            raise ValueError(f"min_share must be in (0, 1), got {self.min_share!r}")
        if self.merge is not None:
            object.__setattr__(self, "merge", tuple(self.merge))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _clip(cfg):
    from fastcas.scoring.clip import ClipEncoder

    device = "cuda" if cfg.device in ("auto", "cuda") and _cuda() else "cpu"
    return ClipEncoder(cfg.model, cfg.weights, device)


def _dictionary_path(cfg) -> Path:
    out = Path(cfg.out)
    return Path(cfg.dictionary) if cfg.dictionary else out.with_name(out.name + ".dictionary.npz")


def _encoder_settings(cfg, enc=None) -> dict:
    """What decides the resume chunks' features besides the dataset, the image size and the
    split (those :func:`encode_dataset` records itself): the encoder, its version or model and
    weights. Bins, ``top_k``, ``text_only``, the dictionary and the reference act after the
    chunks (on all samples at once), so changing them reuses the chunks correctly."""
    if cfg.encoder == "pixel":
        from fastcas.scoring.pixel import PixelEncoder

        return {"encoder": "pixel", "version": PixelEncoder.version}
    return {"encoder": cfg.encoder, "model": cfg.model, "weights": cfg.weights,
            "weights_hash": getattr(enc, "weights_hash", None)}


def _encode(cfg, dataset, features, image_size, rank, world, work, enc=None) -> tuple[np.ndarray, np.ndarray]:
    from fastcas.scoring.run import ResumeMismatch, encode_dataset

    try:
        return encode_dataset(dataset, features, batch_size=cfg.batch_size, image_size=image_size, rank=rank,
                              world_size=world, work_dir=work, chunk_batches=cfg.chunk_batches, device=cfg.device,
                              progress=not cfg.no_progress, py_workers=cfg.workers, decoder=cfg.decoder,
                              settings=_encoder_settings(cfg, enc), overwrite=cfg.overwrite,
                              max_pixels=cfg.max_pixels)
    except ResumeMismatch as e:
        raise ResumeMismatch(f"{cfg.out}: not resuming from another run's chunks: {e}. Pass --overwrite to "
                             f"discard them and score afresh, or choose another --out") from None


def _base_meta(cfg, reader, image_size) -> dict:
    from fastcas.scoring.run import _resolve_decoder
    from fastcas.scoring.vocabulary import load_vocabulary, vocabulary_digest

    vocab = load_vocabulary()
    return {"vocabulary_version": vocab["version"], "vocabulary_hash": vocabulary_digest(vocab),
            "dataset": str(reader.root), "content_hash": reader.manifest.get("content_hash"),
            "decoder": _resolve_decoder(cfg.decoder), "image_size": int(image_size)}


def _pixel_bins(cfg, raw, ref_meta):
    """The pixel bins for this run: the reference's (validation sets), fitted to ``raw``
    float [N, P] (training sets, default) or fixed; ``ValueError`` naming a reference without bins."""
    from fastcas.scoring.bins import PixelBins, fit_bins, fixed_bins

    if ref_meta is not None:
        if "pixel_bins" not in ref_meta:
            raise ValueError(f"{cfg.reference}: reference has no pixel bins (scored with pixel encoder v1?); "
                             "score the training set again")
        return PixelBins.from_dict(ref_meta["pixel_bins"], str(cfg.reference))
    if cfg.bins == "fixed":
        fixed = fixed_bins()
        return fixed.with_constant(fixed.apply(raw))
    return fit_bins(raw, min_share=cfg.min_share)


def _finish(cfg, reader, idx, attrs, emb, meta, enc=None, raw=None) -> dict:
    """Shared tail of single runs and merges: CLIP dictionary (build or load) and assignment,
    pixel bins (fit, or the reference's) and binning, key check against the dataset, CAS
    with the reference's ranks over the non-constant primaries, atomic write."""
    import sys

    from fastcas.dataset.scorefile import ScoreTable, read_scores, write_scores
    from fastcas.scoring.cas import cas_scores, fit_ranks

    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    keys = [reader.keys[int(i)] for i in idx]
    if len(idx) != len(reader) or not np.array_equal(idx, np.arange(len(reader))):
        missing = sorted(set(range(len(reader))) - set(idx.tolist()))
        what = f"sample {reader.keys[missing[0]]!r} is missing" if missing else "some samples appear twice"
        raise ValueError(f"{cfg.out}: scored samples do not cover the dataset ({len(idx)} of {len(reader)}): {what}")
    if emb is not None:
        emb = emb[order]
        enc = enc or _clip(cfg)
        enc.dictionary = _get_dictionary(cfg, enc, emb, meta["image_size"])
        attrs = enc.dictionary.assign(emb)
        meta.update(enc.metadata())
    r = read_scores(cfg.reference) if cfg.reference else None
    if r is not None and r.metadata.get("encoder") != meta.get("encoder"):
        raise ValueError(f"{cfg.reference}: reference was scored with encoder {r.metadata.get('encoder')!r}, "
                         f"this run uses {meta.get('encoder')!r}")
    used = None
    if raw is not None:
        bins = _pixel_bins(cfg, raw[order], r.metadata if r is not None else None)
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
        meta["reference"] = str(cfg.reference)
        if r.metadata.get("dictionary_hash") != meta.get("dictionary_hash"):
            raise ValueError(f"{cfg.reference}: reference was scored with dictionary "
                             f"{r.metadata.get('dictionary_hash')}, this run uses {meta.get('dictionary_hash')} "
                             "(pass the reference's --dictionary)")
    cas = cas_scores(cols(attrs), labels, ref)
    write_scores(cfg.out, ScoreTable(keys, labels, cas, attrs, meta))
    from fastcas.dataset.scorefile import random_weights_warning

    warning = random_weights_warning(meta)
    if warning:
        print(f"fastcas score: warning: {warning}", file=sys.stderr)
    return {**({"warning": warning} if warning else {}), "samples": len(idx),
            "cas_mean": float(cas.mean()) if len(cas) else None, "cas_min": int(cas.min()) if len(cas) else None,
            "cas_max": int(cas.max()) if len(cas) else None}


def _get_dictionary(cfg, enc, emb, image_size):
    from fastcas.scoring.clip import VisualDictionary, build_dictionary

    path = _dictionary_path(cfg)
    if path.exists():
        return VisualDictionary.load(path)
    texts, prims = enc.vocabulary_texts()
    anchors = emb
    if cfg.anchors:
        work = Path(str(cfg.out) + ".anchors.work")
        _, anchors = _encode(cfg, cfg.anchors, enc.embed_images, image_size, 0, 1, work, enc)
        shutil.rmtree(work, ignore_errors=True)
    d = build_dictionary(texts, anchors, prims, top_k=cfg.top_k, mode="text" if cfg.text_only else "visual",
                         meta={"model": enc.model_name, "weights_hash": enc.weights_hash,
                               "anchors": str(cfg.anchors or cfg.dataset)})
    d.save(path)
    return d


def _rank_world(cfg) -> tuple[int, int, bool]:
    """(rank, world_size, under_torchrun)."""
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.world_size is None and env_world > 1:
        return int(os.environ.get("RANK", "0")), env_world, True
    world = cfg.world_size or 1
    rank = cfg.rank or 0
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world_size={world}), got rank={rank}")
    return rank, world, False


def _bind_local_gpu(device: str) -> int | None:
    """Under torchrun, each rank scores on its own GPU: ``torch.cuda.set_device(LOCAL_RANK)``
    before anything touches CUDA (the encoder, nvJPEG and the DALI loader all use the current
    device). Returns the ordinal, or None on the CPU."""
    from fastcas.loading.config import resolve_device

    if resolve_device(device) != "cuda":
        return None
    import torch

    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return local


def score_dataset(cfg, rank: int, world: int, out: Path) -> dict:
    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import ScoreTable, write_scores

    reader = ShardReader(cfg.dataset)
    work = out.with_name(out.name + ".work")
    enc = None
    emb = attrs = raw = None
    if cfg.encoder == "pixel":
        from fastcas.scoring.pixel import PixelEncoder

        pix = PixelEncoder()
        size = cfg.image_size or 64
        idx, raw = _encode(cfg, cfg.dataset, pix.measure, size, rank, world, work)
        meta = {**_base_meta(cfg, reader, size), **pix.metadata()}
    else:
        enc = _clip(cfg)
        size = cfg.image_size or enc.image_size
        idx, emb = _encode(cfg, cfg.dataset, enc.embed_images, size, rank, world, work, enc)
        meta = {**_base_meta(cfg, reader, size), **enc.metadata()}
        if world > 1 and _dictionary_path(cfg).exists():  # parts can assign right away
            from fastcas.scoring.clip import VisualDictionary

            enc.dictionary = VisualDictionary.load(_dictionary_path(cfg))
            attrs, emb = enc.dictionary.assign(emb), None
            meta.update(enc.metadata())
    if world > 1:  # a part: CAS (and a new dictionary / bins) need the whole set, made at the merge
        part_meta = {**meta, "rank": rank, "world_size": world, "indices": idx.tolist()}
        if cfg.encoder == "pixel":
            from fastcas.core.io import atomic_open

            side = out.with_name(out.name + ".measurements.npy")
            with atomic_open(side, "wb") as f:
                np.save(f, raw.astype(np.float64).reshape(len(idx), -1))
            part_meta["measurements"] = side.name
            attrs = np.zeros((len(idx), 0), np.int64)
        elif emb is not None:
            from fastcas.core.io import atomic_open

            side = out.with_name(out.name + ".embeddings.npy")
            with atomic_open(side, "wb") as f:
                np.save(f, emb.astype(np.float32))
            part_meta["embeddings"] = side.name
            attrs = np.zeros((len(idx), 0), np.int64)
        write_scores(out, ScoreTable([reader.keys[int(i)] for i in idx], reader.labels[idx],
                                     np.zeros(len(idx), np.int64), attrs, part_meta))
        shutil.rmtree(work, ignore_errors=True)
        return {"part": str(out), "samples": len(idx)}
    result = _finish(cfg, reader, idx, attrs, emb, meta, enc, raw=raw if cfg.encoder == "pixel" else None)
    shutil.rmtree(work, ignore_errors=True)  # chunks are only for resuming an interrupted run
    return result


def merge(cfg, parts: list) -> dict:
    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import read_scores

    reader = ShardReader(cfg.dataset)
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
        raw = np.concatenate([npy.load(Path(p).with_name(t.metadata["measurements"])) for t, p in zip(tables, parts)])
        result = _finish(cfg, reader, idx, None, None, meta, raw=raw)
    elif any("embeddings" in t.metadata for t in tables):
        emb = np.concatenate([npy.load(Path(p).with_name(t.metadata["embeddings"])) for t, p in zip(tables, parts)])
        result = _finish(cfg, reader, idx, None, emb, meta)
    else:
        result = _finish(cfg, reader, idx, np.concatenate([t.attrs for t in tables]), None, meta)
    return {**result, "parts": len(parts)}


def _part_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank:03d}-of-{world:03d}.parquet")


def _remove_part(p: Path) -> None:
    p.unlink(missing_ok=True)
    p.with_name(p.name + ".embeddings.npy").unlink(missing_ok=True)
    p.with_name(p.name + ".measurements.npy").unlink(missing_ok=True)


def score(cfg: ScoreConfig) -> dict:
    """Run one scoring job (or merge, with ``merge``); returns the summary dict of OUT. Under
    torchrun, ranks other than 0 return an empty dict."""
    out = Path(cfg.out)
    if cfg.merge:
        result = merge(cfg, cfg.merge)
    else:
        rank, world, torchrun = _rank_world(cfg)
        if not torchrun:
            result = score_dataset(cfg, rank, world, out)
        else:
            import torch.distributed as dist

            _bind_local_gpu(cfg.device)
            if not dist.is_initialized():
                dist.init_process_group("gloo")
            part = _part_path(out, rank, world)
            result = score_dataset(cfg, rank, world, part)
            dist.barrier()
            if rank == 0:
                parts = [_part_path(out, r, world) for r in range(world)]
                result = merge(cfg, parts)
                for p in parts:
                    _remove_part(p)
            dist.barrier()
            dist.destroy_process_group()
            if rank != 0:
                return {}
    return result
