"""Small fixtures made in the tests (never downloaded)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def jpeg_bytes(seed: int, size=(40, 32), quality: int = 90) -> bytes:
    """A random-but-smooth RGB JPEG (gradients + noise), deterministic in ``seed``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    img = (base + 2 * xx[..., None] * rng.random(3) + 3 * yy[..., None] * rng.random(3)
           + rng.normal(0, 8, (h, w, 3))) % 256
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_dataset(out: Path, counts=(6, 4, 2), *, shard_size=5, size=(40, 32), seed=0, meta=False,
                 manifest: str = "columns"):
    """Write a tiny sharded dataset with ``counts[k]`` samples of class k; returns the manifest.
    ``manifest``: "columns" (memory-mapped columns, what fastcas reads) or "json" (per-sample lists
    in manifest.json, the format of older datasets: written by ``fastcas convert --to json``; the
    reader refuses it until ``fastcas convert`` turns it back into columns)."""
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards

    samples, i = [], 0
    for k, c in enumerate(counts):
        for _ in range(c):
            samples.append(RawSample(f"s{i:04d}", jpeg_bytes(seed * 10_000 + i, size), k,
                                     {"i": i} if meta else None))
            i += 1
    order = np.random.default_rng(seed).permutation(len(samples))
    cfg = ShardWriterConfig(shard_size=shard_size, class_names=tuple(f"c{k}" for k in range(len(counts))))
    m = write_shards([samples[j] for j in order], out, cfg)
    return _as(out, m, manifest)


def _as(out: Path, m, manifest: str):
    if manifest == "json":
        from fastcas.dataset.convert import convert_manifest

        return convert_manifest(out, to="json")
    return m


def index_json(sources, out: Path, config=None):
    """``fastcas index`` then ``fastcas convert --to json``: an index in the JSON format of older
    fastcas versions (per-sample lists with member offsets); returns that manifest."""
    from fastcas.dataset.indexer import index_dataset

    return _as(out, index_dataset(sources, out, config), "json")


def convert(root: Path, **reader_options):
    """``fastcas convert ROOT`` (JSON -> columns), then the dataset opened."""
    from fastcas.dataset.convert import convert_manifest
    from fastcas.dataset.reader import ShardReader

    convert_manifest(root)
    return ShardReader(root, **reader_options)


def make_image_folder(root: Path, per_class=(3, 2), png_every: int = 2) -> Path:
    """An ImageFolder tree with JPEG and PNG files."""
    from PIL import Image

    for k, n in enumerate(per_class):
        d = root / f"class_{k}"
        d.mkdir(parents=True)
        for j in range(n):
            data = jpeg_bytes(100 * k + j)
            if j % png_every == 1:
                Image.open(io.BytesIO(data)).save(d / f"img{j}.png")
            else:
                (d / f"img{j}.jpg").write_bytes(data)
    return root


def collect(loader, n=None) -> list:
    """The first ``n`` batches of ``loader`` (all with ``n=None``), each tensor cloned: a loader may
    reuse its output buffers for the next batch."""
    out = []
    for i, batch in enumerate(loader):
        out.append([t.clone() for t in batch])
        if n is not None and i + 1 == n:
            break
    return out
