"""``TorchvisionLoader``: the same loader built the usual way, for honest benchmarks.

Same constructor and semantics as :class:`fastcas.Loader` — same dataset, same samplers,
the same crop windows and flips (from the stateless source), the same mixing — but decoded
with PIL and transformed with torchvision v2 functional ops in ``DataLoader`` worker
processes. Only the execution engine differs.
"""
from __future__ import annotations

import gc
import io
from types import SimpleNamespace


from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
from fastcas.loading.loader import Loader
from fastcas.loading.pipeline import EVAL_CROP_FRACTION
from fastcas.loading.source import SampleSource


class _Positions:
    """A map-style dataset over the positions of one epoch."""

    def __init__(self, source: SampleSource, image_size: int, train: bool, dtype: str):
        self.source, self.size, self.train, self.dtype = source, image_size, train, dtype

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
            im = F.center_crop(F.resize(im, round(S / EVAL_CROP_FRACTION), antialias=True), [S, S])
        if flip:
            im = F.horizontal_flip(im)
        t = F.to_dtype(F.pil_to_tensor(im), torch.float32, scale=True)
        t = F.normalize(t, IMAGENET_MEAN, IMAGENET_STD)
        return t.half() if self.dtype == "float16" else t

    def __getitem__(self, pos):
        import torch

        out = self.source(SimpleNamespace(idx_in_epoch=int(pos), epoch_idx=0))
        items = []
        for s in range(len(self.source.config.streams)):
            jpeg, label, window, flip = out[4 * s : 4 * s + 4]
            items += [self._image(jpeg, window, int(flip[0])), torch.from_numpy(label)]
        items.append(torch.from_numpy(out[-1]))
        return tuple(items)


class TorchvisionLoader(Loader):
    """Drop-in twin of :class:`fastcas.Loader` on ``torch.utils.data.DataLoader``.
    ``py_workers`` is the number of DataLoader worker processes."""

    def _paste_spec(self):
        return None  # no DALI graph: CutMix is applied after the DataLoader, like every other mix

    def _build(self):
        import torch

        cfg = self.config
        self.close()
        source = SampleSource(self._source_config(self.epoch, 0))  # same stream geometry as the Loader
        ds = _Positions(source, cfg.image_size, cfg.train, cfg.dtype)
        start = self.step * cfg.batch_size
        sampler = range(start, len(ds))
        if cfg.py_workers:
            gc.collect()  # as fastcas.loading.pipeline: a forked worker must not inherit (and shut down) a dropped DALI pipeline
        dl = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.py_workers, persistent_workers=False,
                                         prefetch_factor=4 if cfg.py_workers else None,
                                         # page-locked batches: the copy to the GPU is truly asynchronous
                                         pin_memory=self.device == "cuda")
        self._pipe = _DataLoaderPipe(dl, self.device)
        self._pipe_at = (self.epoch, self.step)


class _DataLoaderPipe:
    """Gives a DataLoader the ``run``/``reset`` shape of a DALI pipeline."""

    def __init__(self, dl, device):
        self.dl, self.device, self.it = dl, device, iter(dl)

    def run(self):
        out = next(self.it)
        if self.device == "cuda":  # from pinned memory; the skipped-sample column stays on the host
            out = [t.cuda(non_blocking=True) for t in out[:-1]] + [out[-1]]
        return out

    def reset(self):
        self.it = iter(self.dl)
