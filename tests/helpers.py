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
    ``manifest``: "columns" (memory-mapped columns) or "json" (per-sample lists in manifest.json)."""
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards

    samples, i = [], 0
    for k, c in enumerate(counts):
        for _ in range(c):
            samples.append(RawSample(f"s{i:04d}", jpeg_bytes(seed * 10_000 + i, size), k,
                                     {"i": i} if meta else None))
            i += 1
    order = np.random.default_rng(seed).permutation(len(samples))
    cfg = ShardWriterConfig(shard_size=shard_size, class_names=tuple(f"c{k}" for k in range(len(counts))),
                            manifest=manifest)
    return write_shards([samples[j] for j in order], out, cfg)


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
