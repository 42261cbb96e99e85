"""Scoring a dataset: decode (fastcas's DALI loader, or torchvision.io + PIL), encode
attributes in chunks (resumable), split over ranks, merge, rank within classes and write the
CAS score file.

How work is split over ranks (:func:`rank_batches`):

* torchvision decoder (the default): the dataset is cut into global batches of
  ``batch_size`` consecutive samples and rank ``r`` of ``W`` takes batches r, r + W, ... .
  Every batch holds the same images as in a single-process run, so encoder outputs are
  bit-identical and a merged split equals the single run even for CLIP (whose nearest-key
  choice could flip on last-bit differences between batch compositions).
* DALI decoder (fastcas's loader): rank r takes samples r, r + W, ... (the loader's
  evaluation order); equal to the single run for the per-image pixel encoder.

Both decode what the loader accepts (JPEG, PNG, WebP: :mod:`fastcas.dataset.imagehdr`) and
read each header first: an image that is not complete or declares more than ``max_pixels``
(the loader's limit, default :data:`~fastcas.dataset.imagehdr.DEFAULT_MAX_PIXELS`) is refused
before anything is allocated, with an error naming the sample. A score file covers every
sample, so scoring cannot skip one as the loader does (nor substitute another image for it).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fastcas.core import npy
from fastcas.core.errors import CorruptSampleError
from fastcas.dataset import imagehdr
from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD, jpeg_size

DEFAULT_MAX_PIXELS = imagehdr.DEFAULT_MAX_PIXELS


def iter_batches(dataset, *, batch_size: int, image_size: int, rank: int, world_size: int,
                 device: str = "auto", start_step: int = 0, py_workers: int = 1,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Yield (global indices int64 [B], images float [B, 3, S, S] in [0, 1] on the device,
    original sizes int [B, 2]) for this rank's share, in order, from ``start_step`` on.
    The loader runs strict: a sample it would skip (incomplete, over ``max_pixels``, DALI
    cannot decode it) raises naming it instead of being scored as another image."""
    import torch

    from fastcas.loading.loader import Loader

    loader = Loader(dataset, batch_size, train=False, image_size=image_size, rank=rank, world_size=world_size,
                    last_batch="partial", device=device, py_workers=py_workers, strict=True,
                    max_pixels=max_pixels)
    positions = loader.sampler_indices(0)[0]
    loader.load_state_dict({"epoch": 0, "step": start_step, "seed": loader.config.seed})
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    k = start_step * batch_size
    try:
        for images, _ in loader:
            idx = positions[k : k + len(images)]
            k += len(images)
            images = images[: len(idx)]  # a rank's last batch may end in a padding repeat (equal batch counts)
            x = images.float() * std.to(images.device) + mean.to(images.device)
            sizes = np.array([jpeg_size(loader.reader[int(i)].data) for i in idx])
            yield idx, x.clamp(0, 1), sizes
            if loader.step >= len(loader):
                break
    finally:
        loader.close()


DECODERS = ("auto", "dali", "torchvision")


def _resolve_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    return "torchvision" if decoder == "auto" else decoder


def rank_batches(n: int, batch_size: int, rank: int, world_size: int, decoder: str) -> list:
    """This rank's batches: a list of int64 index arrays, in processing order."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad split: batch_size={batch_size}, rank={rank}, world_size={world_size}")
    if _resolve_decoder(decoder) == "dali":
        from fastcas.sampling.protocol import SequentialIndex

        seq = SequentialIndex(n, rank, world_size)
        pos = seq.index_at(0, np.arange(seq.real))  # no padding: every sample is scored once
        return [pos[i : i + batch_size] for i in range(0, len(pos), batch_size)]
    starts = range(rank * batch_size, n, world_size * batch_size)
    return [np.arange(s, min(s + batch_size, n), dtype=np.int64) for s in starts]


def _torch_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU")
    return device


def decode_batch(datas, image_size: int, device: str = "cpu", keys=None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, where: str = ""):
    """Encoded JPEG / PNG / WebP bytes -> (uint8 [B, 3, S, S] on ``device``, original sizes
    int [B, 2] (w, h)).

    Headers first (:func:`check_headers`: ``CorruptSampleError`` naming ``keys[j]`` and
    ``where`` (" in DATASET") for an incomplete image or one over ``max_pixels``, before any
    decode). JPEGs: torchvision.io.decode_jpeg (nvJPEG on a CUDA device, libjpeg on the
    CPU); PNG / WebP: PIL on the CPU (:func:`decode_pil`), then moved. RGB, then an
    antialiased bilinear resize of the whole image to S x S (no crop: attributes describe the
    whole picture)."""
    import torch
    import torch.nn.functional as F

    keys = [f"#{j}" for j in range(len(datas))] if keys is None else list(keys)
    names = [f"{k!r}{where}" for k in keys]
    formats = check_headers(datas, keys, max_pixels, names)
    imgs = _decode_all(datas, formats, keys, names, device)
    sizes = np.array([(int(im.shape[2]), int(im.shape[1])) for im in imgs], np.int64).reshape(-1, 2)
    out = torch.empty((len(imgs), 3, image_size, image_size), dtype=torch.uint8, device=device)
    for j, im in enumerate(imgs):
        if im.shape[1:] == (image_size, image_size):
            out[j] = im
        else:
            r = F.interpolate(im[None].float(), size=(image_size, image_size), mode="bilinear",
                              align_corners=False, antialias=True)
            out[j] = r[0].round_().clamp_(0, 255).to(torch.uint8)
    return out, sizes


def check_headers(datas, keys, max_pixels: int | None = DEFAULT_MAX_PIXELS, names=None) -> list[str]:
    """Each image's format ("jpeg" | "png" | "webp"), from its header alone; the loader's checks
    (:func:`fastcas.dataset.imagehdr.parse`, :func:`~fastcas.dataset.imagehdr.check_pixels`):
    ``CorruptSampleError`` naming the first image that fails them (``names[j]``, default
    ``repr(keys[j])``)."""
    formats = []
    for d, k, name in zip(datas, keys, names or [repr(k) for k in keys]):
        try:
            header = imagehdr.parse(d)
        except imagehdr.ImageHeaderError as exc:
            raise CorruptSampleError(f"sample {name}: {exc}; fastcas score scores every sample: replace the "
                                     "image or re-run `fastcas index` (which lists it as skipped)", k) from None
        try:
            imagehdr.check_pixels(header, max_pixels)
        except imagehdr.ImageHeaderError as exc:
            raise CorruptSampleError(f"sample {name}: {exc}; not decoded (pass a larger --max-pixels only "
                                     "if you trust it)", k) from None
        formats.append(header.format)
    return formats


def _decode_all(datas, formats: list[str], keys: list, names: list, device: str) -> list:
    """uint8 [3, H, W] tensors on ``device``: JPEGs batched through torchvision's decode_jpeg,
    PNG / WebP through PIL (:func:`decode_pil`); an image the decoder rejects is named."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out = [None] * len(datas)
    jpeg = [j for j, f in enumerate(formats) if f == "jpeg"]
    if jpeg:
        raw = [torch.frombuffer(bytearray(datas[j]), dtype=torch.uint8) for j in jpeg]
        try:
            imgs = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            for j, t in zip(jpeg, raw):  # which one: each alone, on the CPU
                try:
                    decode_jpeg(t, mode=ImageReadMode.RGB)
                except RuntimeError as alone:
                    raise CorruptSampleError(f"sample {names[j]}: cannot be decoded ({alone})", keys[j]) from None
            raise CorruptSampleError(f"samples {', '.join(names[j] for j in jpeg)}: the batch cannot be decoded "
                                     f"({exc})") from None
        for j, im in zip(jpeg, imgs):
            out[j] = im
    for j in (j for j, f in enumerate(formats) if f != "jpeg"):
        out[j] = decode_pil(datas[j], names[j], keys[j]).to(device)
    return out


def decode_pil(data, name: str = "image", key: str | None = None):
    """PNG / WebP bytes -> uint8 [3, H, W] CPU tensor, RGB, through PIL (as the loader's
    torchvision baseline decodes): torchvision 0.29's decode_png kills the process (SIGSEGV)
    on a corrupt IDAT chunk instead of raising. High-bit-depth greyscale (16-bit PNG) is
    scaled to 8 bits, not clipped (:func:`fastcas.dataset.ingest.to_8bit`). ``CorruptSampleError``
    naming ``name`` when PIL cannot decode it."""
    import io

    import torch
    from PIL import Image

    from fastcas.dataset.ingest import to_8bit

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            rgb = to_8bit(im).convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise CorruptSampleError(f"sample {name}: cannot be decoded ({type(exc).__name__}: {exc})", key) from None
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


def iter_batches_torchvision(dataset, batches: list, *, image_size: int, device: str = "auto",
                             start_step: int = 0, prefetch: bool = True,
                             max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Yield (indices int64 [B], uint8 images [B, 3, S, S] on the device, original sizes
    int [B, 2]) for ``batches[start_step:]``. With ``prefetch`` the next batch is decoded in a
    background thread while the caller encodes the current one. ``CorruptSampleError`` naming
    the sample and the dataset for an image :func:`decode_batch` refuses."""
    from concurrent.futures import ThreadPoolExecutor

    from fastcas.dataset.reader import ShardReader

    reader = ShardReader(dataset)
    dev = _torch_device(device)

    def load(step):
        idx = batches[step]
        samples = [reader[int(i)] for i in idx]
        images, sizes = decode_batch([s.data for s in samples], image_size, dev, [s.key for s in samples],
                                     max_pixels, where=f" in {reader.root}")
        return idx, images, sizes

    steps = len(batches)
    if not prefetch:
        for step in range(start_step, steps):
            yield load(step)
        return
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(load, start_step) if start_step < steps else None
        for step in range(start_step, steps):
            batch = fut.result()
            fut = pool.submit(load, step + 1) if step + 1 < steps else None
            yield batch


def encode_dataset(dataset, features, *, batch_size: int = 64, image_size: int = 64, rank: int = 0,
                   world_size: int = 1, work_dir=None, chunk_batches: int = 16, device: str = "auto",
                   progress: bool = True, py_workers: int = 1, decoder: str = "auto",
                   settings: dict | None = None, overwrite: bool = False,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``features(images, sizes) -> [B, F]`` to this rank's share; returns (indices
    int64 [n], features [n, F]). ``decoder``: "dali" (fastcas's loader, images float in
    [0, 1]), "torchvision" (uint8 images; "auto" = torchvision). ``features`` is called with
    (images, original sizes int [B, 2]) and returns an array [B, F].
    With ``work_dir`` every ``chunk_batches`` batches are saved, and a restarted run continues
    after the last complete chunk. Chunks are reused only by the same run: the work dir records
    the dataset's digest, its size, ``image_size``, the decoder, the split and ``settings`` (the
    encoder and whatever else decides the features, JSON-able), and each chunk stores a digest
    of the keys it covers; anything else raises :class:`ResumeMismatch` naming what differs.
    ``overwrite`` discards this configuration's chunks first (only the files written here).
    ``max_pixels``: the loader's decompression-bomb limit; an image over it (or incomplete) raises
    ``CorruptSampleError`` naming it, before it is decoded."""
    from fastcas.core.io import atomic_open
    from fastcas.dataset.reader import ShardReader

    reader = ShardReader(dataset)
    plan = rank_batches(len(reader), batch_size, rank, world_size, decoder)
    mine = sum(len(b) for b in plan)
    steps = len(plan)
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    prefix = _chunk_prefix(rank, world_size, batch_size, decoder)
    if work_dir:
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        record = work_dir / f"{prefix}.json"
        if overwrite:
            for p in chunk_files(work_dir, rank, world_size, batch_size, decoder):
                p.unlink()
            record.unlink(missing_ok=True)
        run_id = {"dataset_digest": reader.digest, "num_samples": len(reader), "image_size": int(image_size),
                  "decoder": _resolve_decoder(decoder), "batch_size": batch_size, "chunk_batches": chunk_batches,
                  "rank": rank, "world_size": world_size, "settings": settings or {}}
        run_id = json.loads(json.dumps(run_id))  # the form it takes on disk (tuples -> lists)
        found = chunk_files(work_dir, rank, world_size, batch_size, decoder)
        if found:
            _check_record(record, run_id, work_dir)
        else:  # a fresh start: (re)write the record before the first chunk can exist
            with atomic_open(record, "w") as f:
                json.dump(run_id, f, indent=1, sort_keys=True)
        for k, p in enumerate(found):
            z = npy.load_npz(p)
            chunk = (z["indices"], z["features"])
            stored = str(z["keys_digest"]) if "keys_digest" in z else None
            want = np.concatenate(plan[k * chunk_batches : (k + 1) * chunk_batches] or [np.zeros(0, np.int64)])
            if not np.array_equal(chunk[0], want):
                raise ResumeMismatch(f"{p}: resume chunk does not fit this run (other dataset or chunk size?); "
                                     f"delete {work_dir} to start over")
            if stored != keys_digest(reader, chunk[0]):
                raise ResumeMismatch(f"{p}: resume chunk covers other samples than this dataset's keys at its "
                                     f"indices (keys digest {stored} != {keys_digest(reader, chunk[0])})")
            chunks.append(chunk)
    start = len(chunks) * chunk_batches
    bar = None
    if progress:
        from tqdm import tqdm

        done = sum(len(b) for b in plan[:start])
        bar = tqdm(total=mine, initial=done, unit="img", desc=f"score r{rank}")
    pending_i, pending_f = [], []
    step = start
    if start >= steps:
        batches = ()
    elif _resolve_decoder(decoder) == "dali":
        batches = iter_batches(dataset, batch_size=batch_size, image_size=image_size, rank=rank,
                               world_size=world_size, device=device, start_step=start, py_workers=py_workers,
                               max_pixels=max_pixels)
    else:
        batches = iter_batches_torchvision(dataset, plan, image_size=image_size, device=device, start_step=start,
                                           max_pixels=max_pixels)
    for idx, images, sizes in batches:
        pending_i.append(idx)
        pending_f.append(np.asarray(features(images, sizes)))
        step += 1
        if bar:
            bar.update(len(idx))
        if len(pending_i) == chunk_batches or step == steps:
            chunk = (np.concatenate(pending_i), np.concatenate(pending_f))
            if work_dir:
                name = work_dir / f"{prefix}-{len(chunks):06d}.npz"
                with atomic_open(name, "wb") as f:
                    np.savez(f, indices=chunk[0], features=chunk[1], keys_digest=np.str_(keys_digest(reader, chunk[0])))
            chunks.append(chunk)
            pending_i, pending_f = [], []
    if bar:
        bar.close()
    if not chunks:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


class ResumeMismatch(ValueError):
    """Resume chunks in a work dir belong to another run (dataset, encoder, settings, size)."""


def keys_digest(reader, indices) -> str:
    """sha256 (16 hex) of the sample keys at ``indices`` (int [n]), in order: ties a chunk to
    the samples it covers, whatever the index ranges say."""
    h = hashlib.sha256()
    for i in indices:
        h.update(str(reader.keys[int(i)]).encode("utf-8") + b"\x00")
    return h.hexdigest()[:16]


def _check_record(record: Path, run_id: dict, work_dir: Path) -> None:
    """``ResumeMismatch`` unless ``record`` (the JSON a run wrote before its first chunk) equals
    ``run_id``; the message names each field that differs, old and new."""
    try:
        old = json.loads(record.read_text())
    except (OSError, ValueError):
        raise ResumeMismatch(f"{work_dir}: resume chunks without a readable record of their run ({record.name}); "
                             "they may be of another dataset") from None
    diff = [f"{k}: {old.get(k)!r} -> {run_id.get(k)!r}" for k in sorted(set(old) | set(run_id))
            if old.get(k) != run_id.get(k)]
    if diff:
        raise ResumeMismatch(f"{work_dir}: resume chunks are of another run ({'; '.join(diff)})")


def _chunk_prefix(rank: int, world_size: int, batch_size: int, decoder: str) -> str:
    return f"chunk-{_resolve_decoder(decoder)}-r{rank:03d}-w{world_size:03d}-b{batch_size}"


def chunk_files(work_dir, rank: int, world_size: int, batch_size: int, decoder: str = "auto") -> list:
    """The resume chunks :func:`encode_dataset` left in ``work_dir`` for this configuration."""
    return sorted(Path(work_dir).glob(f"{_chunk_prefix(rank, world_size, batch_size, decoder)}-*.npz"))
