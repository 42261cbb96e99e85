"""``TorchvisionLoader``: the same loader built the usual way, for honest benchmarks.

Same constructor and semantics as :class:`fastcas.Loader` — same dataset, same samplers,
the same crop windows and flips (from the stateless source), the same mixing — but decoded
with PIL and transformed with torchvision v2 functional ops in ``DataLoader`` worker
processes. Only the execution engine differs.
"""
from __future__ import annotations

import dataclasses
import gc
import io
from types import SimpleNamespace

from fastcas.loading.loader import Loader
from fastcas.loading.source import SampleSource


class Positions:
    """A map-style dataset over the positions of one epoch."""

    def __init__(self, source: SampleSource, image_size: int, train: bool, dtype: str):
        self.source, self.size, self.train, self.dtype = source, image_size, train, dtype
        self.policy = source.config.policy  # mean/std and crop_pct (baseline_supported() checked at build)

    def __len__(self):
        return self.source.config.positions

    def _image(self, jpeg, window, flip):
        import torch
        from PIL import Image, ImageOps
        from torchvision.transforms.v2 import functional as F

        # EXIF orientation applied, as DALI's decoder does (the window is on the displayed size)
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg.tobytes()))).convert("RGB")
        W, H = im.size
        x, y, w, h = (float(v) for v in window)
        S = self.size
        if self.train:
            im = F.resized_crop(im, round(y * H), round(x * W), round(h * H), round(w * W), [S, S], antialias=True)
        else:
            im = F.center_crop(F.resize(im, self.policy.eval_resize(S), antialias=True), [S, S])
        if flip:
            im = F.horizontal_flip(im)
        t = F.to_dtype(F.pil_to_tensor(im), torch.float32, scale=True)
        t = F.normalize(t, list(self.policy.mean), list(self.policy.std))
        return t.half() if self.dtype == "float16" else t

    def __getitem__(self, pos):
        import torch

        layout = self.source.layout  # no paste: the baseline mixes after the DataLoader
        out = layout.named(self.source(SimpleNamespace(idx_in_epoch=int(pos), epoch_idx=0)))
        items = {"skipped": torch.from_numpy(out["skipped"])}
        for s in range(layout.streams):
            jpeg, label, window, flip = (out[f"{f}{s}"] for f in ("jpegs", "labels", "windows", "flips"))
            items.update({f"images{s}": self._image(jpeg, window, int(flip[0])), f"labels{s}": torch.from_numpy(label)})
        return layout.pack(items, "pipeline")


class TorchvisionBackend:
    """``DataLoader`` over the positions of one epoch (``py_workers`` worker processes),
    decoded with PIL and transformed with torchvision v2 (:mod:`fastcas.loading.baseline`)."""

    name = "torchvision"
    mixes_in_graph = False

    def __init__(self):
        self.pipe = None  # the DataLoader
        self.built = None
        self._it = None

    def build(self, source, cfg, device: str) -> None:
        import torch


        self.close()
        lacks = source.config.policy.baseline_supported()
        if lacks:
            raise ValueError(f"TorchvisionLoader reproduces the imagenet policy's crop, flip, mean/std and crop_pct "
                             f"only; not: {lacks} (use fastcas.Loader)")
        # the DataLoader's sampler starts at the step; the dataset addresses positions from 0
        start = source.config.offset
        source = SampleSource(dataclasses.replace(source.config, offset=0))
        ds = Positions(source, cfg.image_size, cfg.train, cfg.dtype)
        if cfg.py_workers:
            # as fastcas.loading.pipeline: a forked worker must not inherit (and shut down) a dropped DALI pipeline
            gc.collect()
        self.pipe = torch.utils.data.DataLoader(
            ds, batch_size=cfg.batch_size, sampler=range(start, len(ds)), num_workers=cfg.py_workers,
            persistent_workers=False, prefetch_factor=4 if cfg.py_workers else None,
            pin_memory=device == "cuda")  # page-locked batches: the copy to the GPU is truly asynchronous
        self._it, self.device, self.built = iter(self.pipe), device, (source, None)

    def run(self) -> list:
        layout = self.built[0].layout
        out = layout.named(next(self._it), "pipeline")
        if self.device == "cuda":  # from pinned memory; the skipped-sample column stays on the host
            out = {k: (v if k == "skipped" else v.cuda(non_blocking=True)) for k, v in out.items()}
        return list(layout.pack(out, "pipeline"))

    def reset(self) -> None:
        self._it = iter(self.pipe)

    def worker_pids(self) -> list[int]:
        return []  # DataLoader workers are not watched

    kill_workers = None  # nothing to kill: DataLoader times out its own workers

    def decode_probe(self):
        return None  # PIL raises at the failing sample itself: nothing to quarantine

    def queue_depth(self) -> int:
        return 0

    def close(self) -> None:
        self.pipe, self._it = None, None



class TorchvisionLoader(Loader):
    """Drop-in twin of :class:`fastcas.Loader` on ``torch.utils.data.DataLoader`` (the
    :class:`~fastcas.loading.backends.TorchvisionBackend`). ``py_workers`` is the number of
    DataLoader worker processes. Mixing, targets, state and resume are the Loader's own."""

    def __init__(self, dataset, batch_size: int, **options):
        super().__init__(dataset, batch_size, backend=TorchvisionBackend(), **options)
