"""The torch CPU resize (``cpu_resize="torch"``, issue 37): DALI decodes, torch resizes.

On a CPU device DALI's antialiased resize is over half of a training image's cost (1.18 of
2.1 ms an image on a 2-core Xeon, ``benchmarks/bench_stages.py``); torchvision resizes the same
uint8 crops about 3x cheaper (its fixed-point SIMD path). So this backend keeps everything of
the DALI path up to the pixels of the crop window and replaces what follows:

    SampleSource (unchanged: indices, windows, flips, mixing parameters, keyed by position)
      -> DALI: external_source -> decoders.image_slice (the same ROI decode, on DALI's threads)
         (:func:`fastcas.loading.pipeline.build_decode_pipeline`)
      -> torch, on a pool of ``num_threads`` threads with one intra-op thread each:
         per sample: resize the uint8 crop to S x S (bilinear, antialiased), flip if drawn;
         per sample: normalise to float (ImageNet mean/std), with the in-graph mix applied as a
           copy of whole pixels — CutMix: the partner's box normalised into the box; FMix (binary
           masks): the select ``bg ^ ((bg ^ fg) & mask)`` on uint8, then normalised
      -> the pipeline layout (:class:`fastcas.loading.layout.BatchLayout`), so the Loader's
         finishing (targets from ``lam``, skips) is unchanged.

Normalisation is per pixel, so pasting normalised pixels equals :func:`fastcas.mix.apply` on
the normalised images bit for bit (tested); the pixels differ from DALI's resize within the
tolerance stated in ``tests/loading/test_cpu_resize.py`` (two bilinear antialiased resamplers
rounding differently). The pool's threads run torch with one intra-op thread each
(``torch.set_num_threads`` is per thread with OpenMP): torch's default intra-op workers would spin
beside DALI's threads on a small machine (measured 9.7 ms an image instead of 1.3). Where this
path does not apply (:func:`applies`: a GPU, evaluation, transform extras, a non-linear
interpolation, SaliencyMix in the graph) the Loader uses the DALI graph.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fastcas.loading import pipeline, workers
from fastcas.loading.backends import DaliBackend
from fastcas.loading.pipeline import PipelineConfig, build_decode_pipeline

CPU_RESIZE = ("dali", "torch")  # LoaderConfig.cpu_resize
TORCH_MIXES = ("cutmix", "fmix")  # in-graph kinds this backend mixes itself (SaliencyMix: torch after)


def applies(cfg, device: str) -> bool:
    """Whether LoaderConfig ``cfg`` on ``device`` runs the torch resize: ``cpu_resize="torch"``,
    the CPU, training, the linear interpolation and no per-sample transform after the resize
    (padded crop, AutoAugment family, colour jitter, random erasing)."""
    policy = cfg.transforms
    return (cfg.cpu_resize == "torch" and device == "cpu" and cfg.train and policy.interpolation == "linear"
            and not policy.extra_fields(True))


def make_backend(cfg, device: str):
    """The Loader's default backend for LoaderConfig ``cfg`` on the resolved ``device``:
    :class:`TorchResizeBackend` where :func:`applies`, else :class:`DaliBackend`."""
    return TorchResizeBackend(cfg.mix_kind) if applies(cfg, device) else DaliBackend()


class TorchResizeBackend(DaliBackend):
    """DALI's ROI decode, then torch resize + flip + (CutMix / FMix) + normalise on a thread
    pool (see the module docstring). ``mix_kind``: the Loader's mix; the graph-side mixing
    (``mixes_in_graph``) is done here for :data:`TORCH_MIXES` and left to the Loader's torch
    mixing after the backend otherwise. Outputs: the pipeline layout, images float32/float16
    [B, 3, S, S] (HWC with ``channels_last``) on the CPU."""

    name = "dali+torch"

    def __init__(self, mix_kind: str | None = None):
        super().__init__()
        self.mixes_in_graph = mix_kind in TORCH_MIXES
        self._pool = None
        self._lock = threading.Lock()

    def build(self, source, cfg, device: str) -> None:
        """Build the decode graph for ``source`` and the resize pool (``cfg.num_threads`` threads)."""
        if device != "cpu":
            raise ValueError(f"the torch resize runs on the CPU, got device {device!r}")
        self.close()
        pcfg = PipelineConfig(batch_size=cfg.batch_size, image_size=cfg.image_size, train=cfg.train, device="cpu",
                              num_threads=cfg.num_threads, py_workers=cfg.py_workers, dtype=cfg.dtype,
                              channels_last=cfg.channels_last)
        with workers.die_with_parent():
            self.pipe = build_decode_pipeline(source, pcfg)
        self.watch = workers.WorkerWatch(self.pipe)
        self.built, self.device = (source, pcfg), "cpu"
        self.builds += 1
        policy = source.config.policy
        self._finish = Finisher(source.layout, cfg.image_size, policy.mean, policy.std, cfg.dtype,
                                cfg.channels_last)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(cfg.num_threads, thread_name_prefix="fastcas-resize",
                                                initializer=_one_torch_thread)

    def run(self) -> list:
        """One batch in the pipeline layout (decode by DALI, the rest by the pool)."""
        raw = super().run()  # DaliBackend.run: the dead-worker watch and error restoring
        return self._finish(raw, self._pool)

    def _outputs(self) -> list:
        return list(self.pipe.run())  # DALI's TensorLists: the crops are ragged

    def close(self) -> None:
        super().close()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # per thread (OpenMP): the user's threads keep their setting


class Finisher:
    """Decode-graph outputs (the source layout, crops as uint8 HWC) -> pipeline-layout outputs.
    ``mean``/``std``: the policy's, in [0, 1] units; ``dtype``: "float32" | "float16"."""

    def __init__(self, layout, size: int, mean, std, dtype: str, channels_last: bool):
        import torch

        self.layout, self.size, self.channels_last = layout, int(size), channels_last
        self.mean = torch.tensor([255 * m for m in mean], dtype=torch.float32).view(3, 1, 1)
        self.inv_std = torch.tensor([1 / (255 * s) for s in std], dtype=torch.float32).view(3, 1, 1)
        self.dtype = torch.float16 if dtype == "float16" else torch.float32

    def __call__(self, raw: list, pool) -> list:
        import torch

        src = self.layout.named(raw, "source")
        streams = self.layout.streams
        host = {k: pipeline.to_torch(v) for k, v in src.items() if not k.startswith("jpegs")}
        b = len(host["skipped"])
        # phase 1: every crop of every stream resized and flipped (uint8 CHW views, channels-last strides)
        jobs = [(s, i) for s in range(streams) for i in range(b)]
        flips = [host[f"flips{s}"].reshape(-1).tolist() for s in range(streams)]
        resized = list(pool.map(lambda job: self._resize(src[f"jpegs{job[0]}"][job[1]], flips[job[0]][job[1]]),
                                jobs))
        u8 = [resized[s * b:(s + 1) * b] for s in range(streams)]
        S = self.size
        shape = (b, S, S, 3) if self.channels_last else (b, 3, S, S)
        mix = self.layout.mix
        named = {"skipped": host["skipped"]}
        for s in range(streams):
            named[f"labels{s}"] = host[f"labels{s}"]
        outs = [torch.empty(shape, dtype=self.dtype) for _ in range(1 if mix else streams)]
        # phase 2: per sample, the (mixed) uint8 image normalised into its row of the batch
        if mix is None:
            rows = [(s, i, None) for s in range(streams) for i in range(b)]
        else:
            rows = [(0, i, self._mix_args(host, mix, i, u8)) for i in range(b)]
        list(pool.map(lambda row: self._row(outs[row[0]][row[1]], u8[row[0]][row[1]], row[2]), rows))
        for s, out in enumerate(outs):
            named[f"images{s}"] = out
        if mix is not None:
            named["lam"] = host["lam"]
        return list(self.layout.pack(named, "pipeline"))

    def _resize(self, crop, flip: int):
        """One uint8 HWC crop (a DALI tensor) -> uint8 [3, S, S] resized (bilinear, antialiased), flipped."""
        import torch
        from torchvision.transforms.v2 import functional as F

        chw = torch.from_numpy(np.asarray(crop)).permute(2, 0, 1)  # channels-last strides: torch's uint8 fast path
        out = F.resize(chw, [self.size, self.size], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        return out.flip(-1) if flip else out

    def _mix_args(self, host: dict, mix: str, i: int, u8: list):
        """What sample ``i`` mixes in: ("box", foreground, (y0, x0, y1, x1)) or ("mask", foreground,
        uint8 mask [S, S, 1]), or None when it keeps its own pixels."""
        two = self.layout.streams == 2
        if mix == "cutmix":
            (y0, x0), (h, w) = host["anchors"][i, 1].tolist(), host["shapes"][i, 1].tolist()
            if h == 0 or w == 0:
                return None
            fg = u8[1][i] if two else u8[0][int(host["in_ids"][i, 1])]
            return "box", fg, (y0, x0, y0 + h, x0 + w)
        fg = u8[1][i] if two else u8[0][int(host["partner"][i, 0])]
        return "mask", fg, host["masks"][i]

    def _row(self, out, img, mixed) -> None:
        """Normalise uint8 [3, S, S] ``img`` (with ``mixed`` applied) into ``out`` (a row of the batch)."""
        import torch

        if self.channels_last:
            out = out.permute(2, 0, 1)
        if mixed is not None and mixed[0] == "mask":  # the graph's exact bitwise select, on uint8
            fg, mask = mixed[1], mixed[2].permute(2, 0, 1)
            img = img ^ ((img ^ fg) & mask)
        self._normalise(img, out)
        if mixed is not None and mixed[0] == "box":  # a copy of the partner's normalised pixels
            y0, x0, y1, x1 = mixed[2]
            box = torch.empty((3, y1 - y0, x1 - x0), dtype=self.dtype)
            self._normalise(mixed[1][:, y0:y1, x0:x1], box)
            out[:, y0:y1, x0:x1] = box

    def _normalise(self, img, out) -> None:
        """``(img - 255 mean) * 1 / (255 std)``, two rounded float32 steps, written into ``out``."""
        import torch

        if out.dtype == torch.float32:
            torch.sub(img, self.mean, out=out)
            out.mul_(self.inv_std)
        else:
            out.copy_(torch.sub(img, self.mean).mul_(self.inv_std))
