"""Turning images on disk into :class:`~fastcas.dataset.shards.RawSample` streams.

Sources: an ImageFolder tree (one sub-folder per class), a list file (``path<TAB>label``
per line) and Fashion-MNIST idx files. JPEG files are stored byte-for-byte after a decode
check; anything else PIL reads is re-encoded as JPEG at :data:`JPEG_QUALITY` (16-bit and
other high-bit-depth greyscale scaled to 8 bits, see :func:`to_8bit`).
"""
from __future__ import annotations

import gzip
import io
import re
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastcas.dataset.shards import RawSample, check_label

JPEG_QUALITY = 95  # for re-encoded non-JPEG inputs: visually lossless, ~3x smaller than PNG
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle_boot")


@dataclass(frozen=True)
class Item:
    path: Path
    label: int
    key: str


def sanitize_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text)


HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit(image):
    """A high-bit-depth greyscale PIL image -> mode "L", values scaled (never clipped).

    PIL's own ``convert`` clips 16-bit values at 255 (a 16-bit PNG became an all-white JPEG).
    Scaling: "I;16*" (16-bit PNG / TIFF) -> round(v * 255 / 65535); "I" (32-bit int) the same
    when every value lies in [0, 65535], else min-max to [0, 255]; "F" (float) -> round(v * 255)
    when every value lies in [0, 1], else min-max; non-finite floats count as 0. Other modes
    are returned unchanged."""
    from PIL import Image

    if image.mode not in HIGH_BIT_DEPTH_MODES:
        return image
    a = np.asarray(image)
    if image.mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.min() >= 0 and a.max() <= 1:
            return Image.fromarray(np.rint(a * 255).astype(np.uint8), "L")
    else:
        a = a.astype(np.int64)
        if not a.size or (a.min() >= 0 and a.max() <= 65535):
            return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")  # round half up
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    scaled = np.zeros(a.shape) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def encode_jpeg(image, quality: int = JPEG_QUALITY) -> bytes:
    """PIL image (or HxW / HxWx3 uint8 array) -> JPEG bytes. Deterministic for equal input.
    High-bit-depth greyscale (16-bit PNG, 32-bit int or float TIFF) is scaled to 8 bits by
    :func:`to_8bit`, not clipped."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = to_8bit(image)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def load_image_bytes(path: Path) -> bytes:
    """Bytes to store for the image file ``path``: the file itself if it is a JPEG that
    decodes, else a JPEG re-encoding. ``ValueError`` naming the file if PIL cannot decode it."""
    from PIL import Image

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format == "JPEG":
                im.draft(
                    "RGB", (max(1, im.width // 8), max(1, im.height // 8))
                )  # DCT-scaled decode: checks the whole stream, 1/8 the cost
                im.load()
                return raw
            im.load()
            return encode_jpeg(im)
    except Exception as exc:  # PIL raises many types for bad data
        raise ValueError(f"{path}: not a readable image ({exc})") from None


class ItemList:
    """The input images of ``fastcas shard`` as flat arrays, not one Python object per image:
    paths and keys as UTF-8 blobs (uint8) with int64 offsets [n + 1], labels int64 [n]. About
    the bytes of the path and key per image (an ImageFolder listing as ``Item`` objects took
    ~570 B/image, so 8 GB at 14M images). ``items[i]`` / iteration give :class:`Item`."""

    def __init__(self, paths: np.ndarray, path_offsets: np.ndarray, keys: np.ndarray,
                 key_offsets: np.ndarray, labels: np.ndarray):
        self._paths, self._poff, self._keys, self._koff = paths, path_offsets, keys, key_offsets
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Item:
        i = int(i)
        path = bytes(self._paths[self._poff[i]:self._poff[i + 1]]).decode("utf-8", "surrogateescape")
        key = bytes(self._keys[self._koff[i]:self._koff[i + 1]]).decode("utf-8")
        return Item(Path(path), int(self.labels[i]), key)

    def __iter__(self) -> Iterator[Item]:
        return (self[i] for i in range(len(self)))

    def take(self, order) -> ItemList:
        """The items in ``order`` (int [n], e.g. a permutation), gathered vectorised."""
        order = np.asarray(order, np.int64)

        def gather(blob, off):
            lengths = off[order + 1] - off[order]
            new = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            idx = np.repeat(off[order] - new[:-1], lengths) + np.arange(int(new[-1]), dtype=np.int64)
            return blob[idx], new

        paths, poff = gather(self._paths, self._poff)
        keys, koff = gather(self._keys, self._koff)
        return ItemList(paths, poff, keys, koff, self.labels[order])


class _ItemListBuilder:
    def __init__(self):
        self.paths, self.keys = bytearray(), bytearray()
        self.poff, self.koff, self.labels = array("q", [0]), array("q", [0]), array("q")

    def add(self, path, label: int, key: str) -> None:
        self.paths += str(path).encode("utf-8", "surrogateescape")
        self.keys += key.encode("utf-8")
        self.poff.append(len(self.paths))
        self.koff.append(len(self.keys))
        self.labels.append(int(label))

    def build(self) -> ItemList:
        def arr(a, dtype):  # a view of the builder's buffer: no second copy at the peak
            return np.frombuffer(a, dtype) if len(a) else np.zeros(0, dtype)

        return ItemList(arr(self.paths, np.uint8), arr(self.poff, np.int64), arr(self.keys, np.uint8),
                        arr(self.koff, np.int64), arr(self.labels, np.int64))


def image_folder_items(root: Path, class_names=None) -> tuple[ItemList, list[str]]:
    """Items of an ImageFolder tree, classes in sorted folder order, files in sorted order
    (one class's file list in memory at a time). With ``class_names`` (the training set's, see
    :mod:`fastcas.dataset.classes`) a folder's label is its name's id there, a missing folder
    keeps its id with no images, and the names returned are ``class_names``."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected ROOT/<class>/<image>)")
    ids = {n: k for k, n in enumerate(classes)}
    if class_names is not None:
        from fastcas.dataset.classes import numbering

        ids = numbering(class_names, classes, where=str(root))
    items = _ItemListBuilder()
    for name in classes:
        label = ids[name]
        for p in sorted((root / name).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                rel = p.relative_to(root).with_suffix("")
                items.add(p, label, sanitize_key(str(rel)))
    return items.build(), list(class_names) if class_names is not None else classes


def list_file_items(path: Path) -> ItemList:
    """Items of a ``path<TAB>label`` list, read line by line; relative paths are relative to the
    list file."""
    path = Path(path)
    items = _ItemListBuilder()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rsplit("\t", 1) if "\t" in line else line.rsplit(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'path<TAB>label', got {line!r}")
            img, label = parts[0].strip(), check_label(parts[1].strip(), f"{path}:{lineno}")
            p = Path(img) if Path(img).is_absolute() else path.parent / img
            items.add(p, label, sanitize_key(str(Path(img).with_suffix("")).lstrip("/")))
    return items.build()


def samples_from_items(items, *, skip_bad: bool = False, skipped: list | None = None,
                       workers: int = 4) -> Iterator[RawSample]:
    """Load and check images in parallel threads (PIL decodes without the GIL), in order."""
    def load(item):
        try:
            return load_image_bytes(item.path), None
        except ValueError as exc:
            return None, str(exc)

    # A bounded window of loads in flight (``pool.map`` would submit all N at once and keep
    # every loaded image until it is consumed: memory growing with N).
    from collections import deque

    window = 8 * max(1, workers)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        inflight: deque = deque()
        it = iter(items)

        def results():
            for item in it:
                inflight.append((item, pool.submit(load, item)))
                if len(inflight) >= window:
                    head, fut = inflight.popleft()
                    yield head, fut.result()
            while inflight:
                head, fut = inflight.popleft()
                yield head, fut.result()

        for item, (data, err) in results():
            if err is not None:
                if not skip_bad:
                    raise ValueError(err)
                if skipped is not None:
                    skipped.append(str(item.path))
                continue
            yield RawSample(item.key, data, item.label, {"source": str(item.path)}, str(item.path))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of uint8")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated idx file ({arr.size} of {int(np.prod(dims))} values)")
    return arr.reshape(dims)


def find_fashion_mnist(path: str | Path | None = None) -> Path:
    """Directory with Fashion-MNIST idx files: ``path``, else the Debian package location,
    else torchvision's downloader (needs the network) into ``~/.cache/fastcas``."""
    candidates = [Path(path)] if path else [FASHION_MNIST_DIR]
    for c in candidates:
        for sub in (c, c / "FashionMNIST" / "raw"):
            if (sub / "train-images-idx3-ubyte.gz").exists() or (sub / "train-images-idx3-ubyte").exists():
                return sub
    if path:
        raise FileNotFoundError(f"{path}: no Fashion-MNIST idx files (train-images-idx3-ubyte[.gz])")
    cache = Path.home() / ".cache" / "fastcas"
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(cache), train=True, download=True)
        FashionMNIST(str(cache), train=False, download=True)
    except Exception as exc:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist) "
            f"and the download failed ({exc})") from None
    return cache / "FashionMNIST" / "raw"


def load_fashion_mnist(path: str | Path | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,28,28], labels int64 [N]) for split 'train' (60k) or 'test' (10k)."""
    d = find_fashion_mnist(path)
    stem = {"train": "train", "test": "t10k"}[split]

    def pick(name):
        p = d / f"{stem}-{name}-ubyte.gz"
        return p if p.exists() else d / f"{stem}-{name}-ubyte"

    images, labels = _read_idx(pick("images-idx3")), _read_idx(pick("labels-idx1")).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{d}: {len(images)} images but {len(labels)} labels for split {split}")
    return images, labels


def fashion_mnist_samples(images: np.ndarray, labels: np.ndarray, prefix: str,
                          indices: np.ndarray | None = None) -> Iterator[RawSample]:
    idx = np.arange(len(labels)) if indices is None else indices
    for i in idx:
        yield RawSample(f"{prefix}{int(i):05d}", encode_jpeg(images[i]), int(labels[i]),
                        {"index": int(i)}, f"{prefix}{int(i)}")
