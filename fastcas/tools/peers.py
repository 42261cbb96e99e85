"""The loaders a user would pick instead of fastcas, each doing the same work as fastcas's bench.

Every peer reads the same shards, decodes the JPEGs, takes a RandomResizedCrop (area 0.08-1,
aspect 3/4-4/3) to S x S with a horizontal flip (p 0.5), normalises with ImageNet's mean/std and
yields ``(images float32 [B, 3, S, S] on the bench's device, targets)``; with ``mix="cutmix"``
each also applies CutMix (targets: soft labels float32 [B, K]), in its own idiomatic place.
Each runs in its fastest honest configuration on a small CPU machine (workers or threads =
``cfg.baseline_workers``, batched where the library allows):

* ``wds-dataloader``: webdataset (resampled shards, 1000-sample shuffle buffer) in DataLoader
  workers, PIL decode + torchvision v2 crop/flip on uint8, batched and normalised in the worker
  (v2.CutMix there too)
* ``timm``: ``timm.data.create_loader`` on a map-style dataset (PIL; uint8 fast collate, the
  prefetcher normalises; CutMix by ``FastCollateMixup``)
* ``torchdata-threads``: ``torchdata.nodes.ParallelMapper`` in threads, a whole batch per call:
  ``torchvision.io.decode_jpeg`` (full decode, GIL released) + v2 ``resized_crop`` on uint8, one
  normalise per batch (+ v2.CutMix)
* ``spdl``: SPDL's FFmpeg decode with the crop, scale and flip in FFmpeg's filter graph, a batch
  per task on a thread pool (+ v2.CutMix)
* ``ffcv``: not runnable here unless ``ffcv`` imports (it needs its own .beton conversion)

:func:`peer_status` says which are installed (and why not); :func:`make_peer` builds one.
"""
from __future__ import annotations

import io
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fastcas.core.rng import generator
from fastcas.dataset.reader import ShardReader
from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD

PEERS = ("wds-dataloader", "timm", "torchdata-threads", "spdl", "ffcv")
PEER_MIXES = ("none", "cutmix")
_NEEDS = {"wds-dataloader": "webdataset", "timm": "timm", "torchdata-threads": "torchdata.nodes",
          "spdl": "spdl.io", "ffcv": "ffcv"}
_NOT_HERE = {  # what installing them takes, printed with the import error
    "ffcv": "`pip install ffcv` compiles a C extension against OpenCV and libturbojpeg found by pkg-config "
            "(here: 'Could not find required package: opencv'); and it needs its own .beton conversion",
    "spdl": "the spdl wheel needs FFmpeg 4-9 shared libraries (e.g. apt-get install libavfilter8 libavdevice59)",
}
_VIRTUAL = 1 << 20  # map-style peers: positions per "epoch" (drawn mod N), so no epoch restarts are timed


def peer_status(name: str) -> str | None:
    """None when peer ``name`` can run here, else why not (the import error, or the reason)."""
    import importlib

    try:
        importlib.import_module(_NEEDS[name])
        if name == "spdl":  # the wheel installs without FFmpeg; its libraries load on first use
            import spdl.io

            spdl.io.demux_image(_tiny_jpeg())
    except Exception as exc:  # noqa: BLE001 - any import failure means "not installed here"
        note = f" ({_NOT_HERE[name]})" if name in _NOT_HERE else ""
        return f"{_NEEDS[name]} unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}{note}"
    if name == "ffcv":
        return "ffcv imports, but this bench has no .beton writer for it yet"
    return None


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def rrc_window(rng, width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop parameters (10 tries, then the central crop clamped to the
    aspect range) drawn from numpy Generator ``rng``: (top, left, h, w) in pixels."""
    area = width * height
    log_r = np.log(ratio)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_r))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _normalise(batch_u8):
    """uint8 [B, 3, S, S] -> float32 normalised (one pass per batch)."""
    import torch

    mean = torch.tensor([255 * m for m in IMAGENET_MEAN]).view(1, 3, 1, 1)
    std = torch.tensor([255 * s for s in IMAGENET_STD]).view(1, 3, 1, 1)
    return batch_u8.float().sub_(mean).div_(std)


class _Cutmix:
    """torchvision v2.CutMix on (images, int labels) -> (images, soft labels [B, K])."""

    def __init__(self, mix: str, num_classes: int):
        from torchvision.transforms import v2

        self.op = v2.CutMix(num_classes=num_classes) if mix == "cutmix" else None

    def __call__(self, images, labels):
        return self.op(images, labels) if self.op is not None else (images, labels)


class _Peer:
    """An endless iterator of (images, targets) on ``device``."""

    def __init__(self, it, device: str, close=None):
        self._it, self.device, self._close = it, device, close

    def __iter__(self):
        for images, targets in self._it:
            if self.device != "cpu":
                images, targets = images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            yield images, targets

    def close(self):
        if self._close is not None:
            self._close()


def _wds_dataloader(reader: ShardReader, cfg, mix: str):
    import torch
    import webdataset as wds
    from torchvision.transforms import v2

    crop = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(cfg.image_size, antialias=True),
                       v2.RandomHorizontalFlip()])
    cutmix = _Cutmix(mix, reader.num_classes)

    def finish(batch):
        images, labels = batch
        return cutmix(_normalise(images), torch.as_tensor(labels))

    urls = [str(reader.local_shard(s)) for s in range(len(reader.shard_paths))]
    ds = (wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=None, empty_check=False)
          .shuffle(1000).decode("pil").to_tuple("jpg;jpeg;png", "cls").map_tuple(crop, int)
          .batched(cfg.batch_size, partial=False).map(finish))
    dl = wds.WebLoader(ds, batch_size=None, num_workers=cfg.baseline_workers,
                       persistent_workers=cfg.baseline_workers > 0, prefetch_factor=2 if cfg.baseline_workers else None)
    return iter(dl), None


class _TimmDataset:
    """Map-style (PIL image, label) over ``_VIRTUAL`` positions; timm sets ``transform``."""

    def __init__(self, reader: ShardReader):
        self.reader, self.transform = reader, None

    def __len__(self):
        return _VIRTUAL

    def __getitem__(self, pos):
        from PIL import Image

        sample = self.reader[int(pos) % len(self.reader)]
        img = Image.open(io.BytesIO(sample.data)).convert("RGB")
        return (self.transform(img) if self.transform else img), sample.label


def _timm(reader: ShardReader, cfg, mix: str):
    import torch
    from timm.data import FastCollateMixup, create_loader

    collate = (FastCollateMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=reader.num_classes)
               if mix == "cutmix" else None)
    loader = create_loader(_TimmDataset(reader), input_size=(3, cfg.image_size, cfg.image_size),
                           batch_size=cfg.batch_size, is_training=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                           hflip=0.5, color_jitter=0.0, re_prob=0.0, interpolation="bilinear",
                           num_workers=cfg.baseline_workers, collate_fn=collate, device=torch.device("cpu"),
                           use_prefetcher=True, persistent_workers=cfg.baseline_workers > 0)
    return itertools.chain.from_iterable(itertools.repeat(loader)), None


class _BatchFn:
    """One batch per call from its batch number: indices, crop windows and flips keyed by
    (seed, batch, purpose); decode by ``decode`` (jpeg bytes, window, flip -> uint8 [3, S, S])."""

    def __init__(self, reader: ShardReader, cfg, mix: str, decode):
        self.reader, self.cfg, self.decode = reader, cfg, decode
        self.cutmix = _Cutmix(mix, reader.num_classes)

    def __call__(self, b: int):
        import torch

        rng = generator(0, 0x9EE5, int(b))
        idx = rng.integers(0, len(self.reader), self.cfg.batch_size)
        samples = [self.reader[int(i)] for i in idx]
        images = self.decode([s.data for s in samples], rng)
        labels = torch.tensor([s.label for s in samples])
        return self.cutmix(_normalise(images), labels)


def _tv_decode(size: int):
    def decode(datas, rng):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        out = []
        for img in decode_jpeg(raw, mode=ImageReadMode.RGB):  # one call per batch, GIL released
            top, left, h, w = rrc_window(rng, img.shape[2], img.shape[1])
            img = F.resized_crop(img, top, left, h, w, [size, size], antialias=True)
            out.append(F.horizontal_flip(img) if rng.random() < 0.5 else img)
        return torch.stack(out)
    return decode


def _spdl_decode(size: int):
    def decode(datas, rng):
        import spdl.io
        import torch

        out = []
        for d in datas:
            packets = spdl.io.demux_image(bytes(d))
            top, left, h, w = rrc_window(rng, packets.width, packets.height)
            flip = ",hflip" if rng.random() < 0.5 else ""
            desc = f"crop={w}:{h}:{left}:{top},scale={size}:{size}:flags=bilinear{flip},format=pix_fmts=rgb24"
            frames = spdl.io.decode_packets(packets, filter_desc=desc)
            out.append(spdl.io.to_numpy(spdl.io.convert_frames(frames)))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return decode


def _torchdata_threads(reader: ShardReader, cfg, mix: str):
    from torchdata.nodes import IterableWrapper, Loader, ParallelMapper, Prefetcher

    fn = _BatchFn(reader, cfg, mix, _tv_decode(cfg.image_size))
    node = ParallelMapper(IterableWrapper(itertools.count()), map_fn=fn, num_workers=max(cfg.baseline_workers, 1),
                          method="thread", in_order=False)
    return iter(Loader(Prefetcher(node, prefetch_factor=2))), None


def _spdl(reader: ShardReader, cfg, mix: str):
    fn = _BatchFn(reader, cfg, mix, _spdl_decode(cfg.image_size))
    pool = ThreadPoolExecutor(max(cfg.baseline_workers, 1), thread_name_prefix="spdl-peer")
    ahead = max(cfg.baseline_workers, 1) + 1

    def batches():
        futures = [pool.submit(fn, b) for b in range(ahead)]
        for b in itertools.count(ahead):
            done = futures.pop(0)
            futures.append(pool.submit(fn, b))
            yield done.result()
    return batches(), lambda: pool.shutdown(wait=True, cancel_futures=True)


_BUILDERS = {"wds-dataloader": _wds_dataloader, "timm": _timm, "torchdata-threads": _torchdata_threads,
             "spdl": _spdl}


def make_peer(name: str, cfg, device: str) -> _Peer:
    """Peer ``name`` over ``cfg.dataset`` (a :class:`fastcas.tools.bench.BenchConfig`), yielding
    (images float32 [B, 3, S, S], targets int64 [B] or soft float32 [B, K]) on ``device``.
    Raises ValueError for an unknown peer, a mix peers do not do, or a peer not installed."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    if cfg.mix not in PEER_MIXES:
        raise ValueError(f"peer {name}: mix {cfg.mix!r} is not one the peers do ({', '.join(PEER_MIXES)})")
    why = peer_status(name)
    if why is not None:
        raise ValueError(f"peer {name} cannot run here: {why}")
    it, close = _BUILDERS[name](ShardReader(cfg.dataset), cfg, cfg.mix)
    return _Peer(it, device, close)


def check_batch(name: str, images, targets, batch_size: int, image_size: int) -> dict:
    """Checks one output batch of any loader: float32 [B, 3, S, S], finite, within the range
    normalised uint8 pixels can take, not constant; targets with B rows. Returns what it saw;
    raises ValueError naming the loader otherwise."""
    import torch

    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)) - 1e-3
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)) + 1e-3
    x = images.float()
    seen = {"shape": list(images.shape), "dtype": str(images.dtype).replace("torch.", ""),
            "min": float(x.min()), "max": float(x.max())}
    first = targets[0] if isinstance(targets, (tuple, list)) else targets
    seen["targets"] = list(first.shape) if hasattr(first, "shape") else type(targets).__name__
    problems = []
    if tuple(images.shape) != (batch_size, 3, image_size, image_size):
        problems.append(f"shape {tuple(images.shape)} != {(batch_size, 3, image_size, image_size)}")
    if images.dtype != torch.float32:
        problems.append(f"dtype {images.dtype} != float32")
    if not bool(torch.isfinite(x).all()) or seen["min"] < lo or seen["max"] > hi:
        problems.append(f"values {seen['min']:.3f}..{seen['max']:.3f} outside [{lo:.3f}, {hi:.3f}]")
    elif seen["max"] - seen["min"] < 0.1:
        problems.append("constant images")
    if hasattr(first, "shape") and (first.ndim == 0 or first.shape[0] != batch_size):
        problems.append(f"targets shape {tuple(first.shape)}, not {batch_size} rows")
    if problems:
        raise ValueError(f"loader {name}: bad output batch: {'; '.join(problems)}")
    return seen
