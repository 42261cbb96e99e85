"""The embedded default data, all real images that install offline:

* ``train``: Fashion-MNIST's 60k training images made long-tailed with ratio 100 (14,886
  images, 6,000 down to 60 per class) — Debian ``dataset-fashion-mnist``, else torchvision's
  downloader;
* ``val``: the balanced 10k test split;
* ``corpus``: a benchmark corpus of real-photo JPEGs at ImageNet-like sizes (500x375 or
  375x500, quality 90) made by seeded random crops, rescales and flips of the photos that
  installed packages ship (scikit-image, scikit-learn, matplotlib, Debian ``opencv-doc``).
  Its label is the source photo, so it is also a (small, many-class) classification set.

Everything is a pure function of ``seed``: rebuilding gives byte-identical shards.
"""
from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcas.core.rng import generator
from fastcas.dataset.ingest import FASHION_MNIST_CLASSES, encode_jpeg, fashion_mnist_samples, load_fashion_mnist
from fastcas.dataset.lt import lt_indices
from fastcas.dataset.shards import MANIFEST, RawSample, ShardWriterConfig, write_shards

CORPUS_SIZE = (500, 375)  # (long side, short side), ImageNet's median is about 500x375
CORPUS_QUALITY = 90
_SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                   "retina.jpg", "motorcycle_left.png", "motorcycle_right.png", "camera.png", "coins.png",
                   "moon.png", "gravel.png", "brick.png", "grass.png")
_OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")


@dataclass(frozen=True)
class DemoData:
    train: Path
    val: Path
    corpus: Path | None


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def shipped_photos(min_side: int = 200) -> list[Path]:
    """Real photographs shipped by installed packages, in a fixed order."""
    found = []
    sk = _package_dir("skimage")
    if sk:
        found += [sk / "data" / n for n in _SKIMAGE_PHOTOS]
    sl = _package_dir("sklearn")
    if sl:
        found += [sl / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
    mpl = _package_dir("matplotlib")
    if mpl:
        found.append(mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    if _OPENCV_DOC.is_dir():
        found += sorted(_OPENCV_DOC.glob("*.jpg"))
    from PIL import Image

    keep = []
    for p in found:
        try:
            with Image.open(p) as im:
                if min(im.size) >= min_side:
                    keep.append(p)
        except (OSError, ValueError):
            continue
    return keep


def corpus_samples(n: int, seed: int = 0, photos: list[Path] | None = None):
    """``n`` RawSamples of seeded crops of the shipped photos (label = photo index)."""
    from PIL import Image

    photos = photos if photos is not None else shipped_photos()
    if not photos:
        raise FileNotFoundError("no real photos found in scikit-image/scikit-learn/matplotlib/opencv-doc")
    sources = [Image.open(p).convert("RGB") for p in photos]

    def make(i):
        rng = generator(seed, 0xC0, i)
        j = i % len(sources)
        src = sources[j]
        W, H = src.size
        portrait = rng.random() < 0.25
        aspect = (CORPUS_SIZE[1] / CORPUS_SIZE[0]) if portrait else (CORPUS_SIZE[0] / CORPUS_SIZE[1])
        area = W * H * rng.uniform(0.3, 1.0)
        w = min(W, int(round(np.sqrt(area * aspect))))
        h = min(H, int(round(w / aspect)))
        x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        size = (CORPUS_SIZE[1], CORPUS_SIZE[0]) if portrait else CORPUS_SIZE
        im = src.crop((x0, y0, x0 + w, y0 + h)).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        meta = {"photo": photos[j].name, "crop": [x0, y0, w, h]}
        return RawSample(f"photo{i:06d}", encode_jpeg(im, CORPUS_QUALITY), j, meta, photos[j].name)

    with ThreadPoolExecutor(max_workers=4) as pool:
        yield from pool.map(make, range(n))


def _done(path: Path) -> bool:
    return (path / MANIFEST).exists()


def build_demo_data(root: str | Path, *, corpus_size: int = 5000, seed: int = 0,
                    fashion_mnist: str | Path | None = None, imbalance_ratio: float = 100.0,
                    overwrite: bool = False, progress: bool = True) -> DemoData:
    """Build (or reuse, unless ``overwrite``) the demo datasets under ``root``."""
    root = Path(root)
    train, val, corpus = root / "fmnist-lt-train", root / "fmnist-val", root / "photo-corpus"
    names = tuple(FASHION_MNIST_CLASSES)
    if overwrite or not (_done(train) and _done(val)):
        images, labels = load_fashion_mnist(fashion_mnist, "train")
        keep = lt_indices(labels, imbalance_ratio, seed)
        # Stored in a seeded random order so sequential (streaming) reads are class-mixed.
        keep = keep[generator(seed, 0x5A).permutation(len(keep))]
        write_shards(
            fashion_mnist_samples(images, labels, "fmtrain", keep),
            train,
            ShardWriterConfig(
                shard_size=2000,
                prefix="train",
                overwrite=True,
                class_names=names,
                extra={"source": {"dataset": "fashion-mnist/train", "imbalance_ratio": imbalance_ratio, "seed": seed}},
            ),
            progress=progress,
            total=len(keep),
        )
        vimages, vlabels = load_fashion_mnist(fashion_mnist, "test")
        write_shards(fashion_mnist_samples(vimages, vlabels, "fmtest"), val,
                     ShardWriterConfig(shard_size=2000, prefix="val", overwrite=True, class_names=names,
                                       extra={"source": {"dataset": "fashion-mnist/t10k"}}),
                     progress=progress, total=len(vlabels))
    if corpus_size <= 0:
        return DemoData(train, val, None)
    if overwrite or not _done(corpus) or _manifest_count(corpus) != corpus_size:
        photos = shipped_photos()
        write_shards(corpus_samples(corpus_size, seed, photos), corpus,
                     ShardWriterConfig(shard_size=1000, prefix="photo", overwrite=True,
                                       class_names=tuple(p.stem for p in photos),
                                       extra={"source": {"dataset": "shipped photos", "seed": seed}}),
                     progress=progress, total=corpus_size)
    return DemoData(train, val, corpus)


def _manifest_count(path: Path) -> int:
    import json

    return int(json.loads((path / MANIFEST).read_text())["num_samples"])
