"""The torch CPU resize (``cpu_resize="torch"``, issue 37): DALI decodes, torch resizes.

On a CPU device DALI's antialiased resize is over half of a training image's cost (1.18 of
2.1 ms an image on a 2-core Xeon, ``benchmarks/bench_stages.py``); torchvision resizes the same
uint8 crops about 3x cheaper (its fixed-point SIMD path). So this backend keeps everything of
the DALI path up to the pixels of the crop window and replaces what follows:

    SampleSource (unchanged: indices, windows, flips, mixing parameters, keyed by position)
      -> DALI: external_source -> decoders.image_slice (the same ROI decode, on DALI's threads)
         (:func:`fastcas.loading.pipeline.build_pipeline` with ``decode_only``)
      -> torch, on a pool of ``num_threads`` threads with one intra-op thread each:
         per sample (with its partner: pairs swap, so a pair is one unit of work): resize the
           uint8 crop to S x S (bilinear, antialiased), flip if drawn; mix as the DALI graph does,
           copies of whole uint8 pixels (CutMix: the partner's box; FMix, binary masks: the
           select ``bg ^ ((bg ^ fg) & mask)``); normalise to float (ImageNet mean/std) into the
           sample's row of the batch
      -> the pipeline layout (:class:`fastcas.loading.layout.BatchLayout`), so the Loader's
         finishing (targets from ``lam``, skips) is unchanged.

Normalisation is per pixel, so normalising pasted pixels equals :func:`fastcas.mix.apply` on
the normalised images bit for bit (tested); the pixels differ from DALI's resize within the
tolerance stated in ``tests/loading/test_cpu_resize.py`` (two bilinear antialiased resamplers
rounding differently). The pool's threads run torch with one intra-op thread each
(``torch.set_num_threads`` is per thread with OpenMP): torch's default intra-op workers would spin
beside DALI's threads on a small machine (measured 9.7 ms an image instead of 1.3). Where this
path does not apply (:func:`applies`: a GPU, evaluation, transform extras, a non-linear
interpolation) the Loader uses the DALI graph; SaliencyMix (whose box needs the foreground's
pixels) runs on this path with torch mixing after it, like MixUp and soft FMix masks.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fastcas.loading import pipeline, workers
from fastcas.loading.backends import DaliBackend
from fastcas.loading.pipeline import PipelineConfig, build_pipeline
from fastcas.mix.kinds import KINDS as MIX_KINDS


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
    (``mixes_in_graph``) is done here for the kinds that mix host pixels
    (:attr:`fastcas.mix.kinds.MixKind.host_pixels`: CutMix, FMix) and left to the Loader's torch
    mixing after the backend otherwise (SaliencyMix). Outputs: the pipeline layout, images float32/float16
    [B, 3, S, S] (HWC with ``channels_last``) on the CPU."""

    name = "dali+torch"

    def __init__(self, mix_kind: str | None = None):
        super().__init__()
        self.mixes_in_graph = mix_kind is not None and MIX_KINDS[mix_kind].host_pixels
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
            self.pipe = build_pipeline(source, pcfg, decode_only=True)
        self.watch = workers.WorkerWatch(self.pipe)
        self.built, self.device = (source, pcfg), "cpu"
        self.builds += 1
        policy = source.config.policy
        self._resizer = TorchResizer(source.layout, cfg.image_size, policy.mean, policy.std, cfg.dtype,
                                cfg.channels_last, cfg.num_threads)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(cfg.num_threads, thread_name_prefix="fastcas-resize",
                                                initializer=_one_torch_thread)

    def run(self) -> list:
        """One batch in the pipeline layout (decode by DALI, the rest by the pool)."""
        raw = super().run()  # DaliBackend.run: the dead-worker watch and error restoring
        return self._resizer(raw, self._pool)

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


class TorchResizer:
    """Decode-graph outputs (the source layout, crops as uint8 HWC) -> pipeline-layout outputs.
    ``mean``/``std``: the policy's, in [0, 1] units; ``dtype``: "float32" | "float16";
    ``threads``: the pool's size (the batch is cut into ``2 * threads`` tasks)."""

    def __init__(self, layout, size: int, mean, std, dtype: str, channels_last: bool, threads: int = 2):
        import torch

        self.layout, self.size, self.channels_last, self.threads = layout, int(size), channels_last, threads
        self.mean = torch.tensor([255 * m for m in mean], dtype=torch.float32).view(3, 1, 1)
        self.inv_std = torch.tensor([1 / (255 * s) for s in std], dtype=torch.float32).view(3, 1, 1)
        self.dtype = torch.float16 if dtype == "float16" else torch.float32

    def __call__(self, raw: list, pool) -> list:
        import torch

        src = self.layout.named(raw, "source")
        host = {k: pipeline.to_torch(v) for k, v in src.items() if not k.startswith("jpegs")}
        b, streams = len(host["skipped"]), self.layout.streams
        mix = None if self.layout.mix is None else MIX_KINDS[self.layout.mix]
        crops = [src[f"jpegs{s}"] for s in range(streams)]
        flips = [host[f"flips{s}"].reshape(-1).tolist() for s in range(streams)]
        S = self.size
        shape = (b, S, S, 3) if self.channels_last else (b, 3, S, S)
        outs = [torch.empty(shape, dtype=self.dtype) for _ in range(1 if mix else streams)]
        fg_of = self._foregrounds(host, mix, b)

        def task(groups):  # a few groups: their crops resized, then their rows mixed and normalised
            for group in groups:
                u8 = {(s, i): self._resize(crops[s][i], flips[s][i]) for s, i in group}
                for s, i in group:
                    if mix is None:
                        self._normalise(u8[s, i], self._row(outs[s], i))
                    elif s == 0:
                        img = mix.mix_pixels(host, i, u8[0, i], u8[fg_of[i]])
                        self._normalise(img, self._row(outs[0], i))

        groups = self._groups(fg_of, b, streams)
        n = min(len(groups), 2 * self.threads)
        list(pool.map(task, [groups[k::n] for k in range(n)]))
        named = {"skipped": host["skipped"], **{f"labels{s}": host[f"labels{s}"] for s in range(streams)}}
        named.update({f"images{s}": out for s, out in enumerate(outs)})
        if mix is not None:
            named["lam"] = host["lam"]
        return list(self.layout.pack(named, "pipeline"))

    def _foregrounds(self, host: dict, mix, b: int) -> list | None:
        """Per sample, the (stream, sample) it mixes in: the in-batch partner, or stream 1's sample."""
        if mix is None:
            return None
        if self.layout.streams == 2:
            return [(1, i) for i in range(b)]
        return [(0, int(p)) for p in mix.partners(host).tolist()]

    def _groups(self, fg_of, b: int, streams: int) -> list:
        """The batch cut into groups of (stream, sample) whose rows need only their own crops:
        sample i of every stream; with an in-batch partner the pair (partners swap:
        :func:`fastcas.mix.pair_partner`), or the whole batch if some partner is not mutual."""
        if fg_of is None or streams == 2:
            return [[(s, i) for s in range(streams)] for i in range(b)]
        p = [j for _, j in fg_of]
        if any(p[j] != i for i, j in enumerate(p)):
            return [[(0, i) for i in range(b)]]
        return [[(0, i)] + ([(0, p[i])] if p[i] != i else []) for i in range(b) if p[i] >= i]

    def _row(self, out, i: int):
        """Row ``i`` of a batch as a CHW view (the batch may be HWC)."""
        return out[i].permute(2, 0, 1) if self.channels_last else out[i]

    def _resize(self, crop, flip: int):
        """One uint8 HWC crop (a DALI tensor) -> uint8 [3, S, S] resized (bilinear, antialiased), flipped."""
        import torch
        from torchvision.transforms.v2 import functional as F

        chw = torch.from_numpy(np.asarray(crop)).permute(2, 0, 1)  # channels-last strides: torch's uint8 fast path
        out = F.resize(chw, [self.size, self.size], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        return out.flip(-1) if flip else out

    def _normalise(self, img, out) -> None:
        """``(img - 255 mean) * 1 / (255 std)``, two rounded float32 steps, written into ``out``."""
        import torch

        if out.dtype == torch.float32:
            torch.sub(img, self.mean, out=out)
            out.mul_(self.inv_std)
        else:
            out.copy_(torch.sub(img, self.mean).mul_(self.inv_std))
