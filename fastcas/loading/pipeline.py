"""The DALI pipeline: the only module in fastcas that imports DALI.

    external_source(SampleSource, parallel, per sample)
      -> decoders.image_slice (ROI decode of the crop window; "mixed" on GPU, "cpu" without)
      -> resize to S x S, flipped by a right-to-left ROI
      -> crop_mirror_normalize (ImageNet mean/std, CHW/HWC, fp32/fp16)
    mixing in the graph: ... -> resize (+ flip) -> multi_paste (CutMix) or a masked select
      (FMix) with the partner's pixels -> normalize; SaliencyMix (CPU pipelines): Numba
      operators find each sample's saliency peak and its box (fastcas.mix.graph_ops, the one
      import of the mixing stage, for those functions only) -> multi_paste -> normalize

Evaluation decodes the whole image, resizes the shorter side to round(S / crop_pct) (0.875 by
default) and centre-crops S x S (the cifar policy: the whole image resized to S x S). The
augmentation policy (:mod:`fastcas.loading.transforms`) adds, in training: cifar's padded crop,
DALI's AutoAugment / RandAugment / TrivialAugment suites, colour jitter, its mean/std and random
erasing. Every random choice (window, flip, crop offset, augmentation choice, jitter factor,
erased rectangle) comes from the stateless source, not DALI's RNG.
"""
from __future__ import annotations

import gc
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastcas.core.device import to_device  # noqa: F401  (the hand-off of host outputs; re-exported)
from fastcas.core.errors import GPU_EXTRAS, missing
from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
from fastcas.loading.graph_config import DALI_TYPE_NAMES, PipelineConfig, source_prefetch
from fastcas.loading.layout import STREAM_FIELDS
from fastcas.loading.source import SampleSource
from fastcas.loading.transforms import EVAL_CROP_PCT, INTERPOLATIONS
from fastcas.mix.kinds import KINDS as MIX_KINDS

__all__ = ["PipelineConfig", "source_prefetch", "build_pipeline", "build_reader_pipeline", "to_torch", "run",
           "reset", "DecodeProbe", "require_dali", "dali_versions", "worker_start_method"]
EVAL_CROP_FRACTION = EVAL_CROP_PCT  # the default crop_pct (fastcas.loading.transforms)


def require_dali() -> None:
    """MissingDependencyError naming the pip extra when DALI is not installed (checked when a
    Loader is made, not at its first batch)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise missing("fastcas.Loader (its DALI pipeline)", "NVIDIA DALI",
                      GPU_EXTRAS + "; fastcas.TorchvisionLoader runs without it") from None


def dali_versions() -> dict:
    """{"version", "cuda_build", "nvimgcodec" (when this DALI reports it)}; raises ImportError
    when DALI is not installed."""
    import nvidia.dali as dali
    import nvidia.dali.backend as backend

    info = {"version": dali.__version__, "cuda_build": getattr(backend, "__cuda_version__", None)}
    try:
        info["nvimgcodec"] = backend.GetNvimgcodecVersion()
    except Exception:  # noqa: BLE001 - older DALI has no such call
        pass
    return info


def worker_start_method(gpu: bool) -> str:
    """How DALI starts the source's worker processes: ``spawn`` for a GPU pipeline and whenever
    the CUDA driver is already initialised in this process (by torch, CuPy, Numba or DALI),
    where DALI refuses to fork; ``fork`` otherwise (fast, nothing to pickle)."""
    from nvidia.dali import backend

    return "spawn" if gpu or backend.IsDriverInitialized() else "fork"


@dataclass(frozen=True)
class _Graph:
    """What the graph fragments of one pipeline share: DALI's ``fn`` / ``types``, the
    :class:`PipelineConfig` and the source's augmentation policy, seed and train flag. It is the
    :class:`fastcas.mix.kinds.GraphBuilder` a mix kind's fragment is given."""

    fn: Any
    types: Any
    cfg: PipelineConfig
    policy: Any  # fastcas.loading.transforms.AugmentPolicy: every transform option
    seed: int
    train: bool

    @property
    def size(self) -> int:
        return self.cfg.image_size

    @property
    def gpu(self) -> bool:
        return self.cfg.gpu

    @property
    def fmix_select(self) -> str:
        return self.cfg.fmix_select

    def numba(self, op):
        return _numba_op(op)

    def interp(self) -> dict:
        name = self.policy.interpolation
        return {} if name == "linear" else {"interp_type": getattr(self.types, INTERPOLATIONS[name])}


def build_pipeline(source: SampleSource, cfg: PipelineConfig):
    """A built DALI pipeline whose outputs are, per stream, (images, labels), then skipped.

    With ``source.config.paste`` (mixing in the graph) the outputs are (mixed images, the labels
    of each stream, lam float64 [B, 1], skipped): each stream's resized (and flipped) uint8 HWC
    images are mixed by the mix kind's graph fragment (:meth:`fastcas.mix.kinds.MixKind.graph_mix`:
    CutMix's ``fn.multi_paste`` of the partner's box, FMix's bitwise select by a binary mask,
    SaliencyMix's box around the foreground's saliency peak found by Numba operators on CPU
    pipelines), then one normalisation without mirror. All are copies of whole pixels and
    normalisation is per pixel, so the pixels equal ``fastcas.mix.apply`` on the normalised,
    flipped images, on the CPU and the GPU alike (tested against the torch path on the CPU)."""
    from nvidia.dali import fn, pipeline_def, types

    g = _Graph(fn, types, cfg, source.config.policy, source.config.seed, source.config.train)
    kind = None if source.layout.mix is None else MIX_KINDS[source.layout.mix]

    @pipeline_def(**_pipeline_args(g))
    def pipe():
        return _graph(g, source, kind)

    if cfg.py_workers > 0 and worker_start_method(cfg.gpu) == "fork" and len(_NOT_FREED):
        # a forked worker inherits every unreachable object not yet collected here; an earlier,
        # dropped DALI pipeline among them (pipelines hold reference cycles) would be shut down
        # by the worker's garbage collector, which crashes the worker (SIGSEGV): collect first.
        # Only while some pipeline built here is not freed: a full collection takes a quarter
        # second in a large process, which a rebuild after an undecodable sample would pay
        gc.collect()
    p = pipe()
    _NOT_FREED.add(p)
    p.build()
    return p


def _pipeline_args(g: _Graph) -> dict:
    """``pipeline_def``'s arguments (conditionals only for the AutoAugment family's coin flips)."""
    cfg = g.cfg
    return dict(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=cfg.device_id if cfg.gpu else None,
                seed=1, prefetch_queue_depth=cfg.prefetch, py_num_workers=max(cfg.py_workers, 1),
                py_start_method=worker_start_method(cfg.gpu), exec_dynamic=True,
                **({"enable_conditionals": True} if g.train and g.policy.auto else {}))


def _graph(g: _Graph, source: SampleSource, kind) -> tuple:
    """The pipeline's outputs (``source.layout``'s pipeline names): the source, each stream
    decoded and resized, then mixed by ``kind`` (a :class:`fastcas.mix.kinds.MixKind`, or None
    when the graph does not mix) and normalised."""
    layout, parallel = source.layout, g.cfg.py_workers > 0
    # batch mode: the source computes a whole batch vectorised (sampler, crop windows)
    raw = layout.named(g.fn.external_source(
        source=source, num_outputs=len(layout.source_names), batch=True, batch_info=True, parallel=parallel,
        prefetch_queue_depth=source_prefetch(g.cfg) if parallel else None,
        dtype=[getattr(g.types, DALI_TYPE_NAMES[d]) for d in layout.source_dtypes()]), "source")
    streams = [_stream(g, raw, s) for s in range(layout.streams)]
    named = {"skipped": raw["skipped"]}
    named.update({f"labels{s}": label for s, (_, _, label, _) in enumerate(streams)})
    if kind is not None:
        # the kind's own graph fragment mixes the uint8 images (fastcas.mix.kinds)
        mixed, named["lam"] = kind.graph_mix(g, [img for img, *_ in streams], {k: raw[k] for k in layout.paste})
        named["images0"] = _normalise(g, mixed)
    else:
        named.update({f"images{s}": _normalise(g, img, mirror, extra)
                      for s, (img, mirror, _, extra) in enumerate(streams)})
    return layout.pack(named, "pipeline")


def _stream(g: _Graph, raw: dict, s: int) -> tuple:
    """``(image uint8 HWC, mirror, labels, extra draws)`` of stream ``s``: the ROI decode of the
    crop window (the whole image in evaluation), resized to S x S; in training flipped by the
    resize's ROI and given the policy's per-sample transforms; in evaluation resized and
    centre-cropped later by the normalisation (cifar: the whole image to S x S)."""
    fn, types, S = g.fn, g.types, g.size
    jpeg, label, window, flip = (raw[f"{f}{s}"] for f in STREAM_FIELDS)
    extra = {f: raw[f"{f}{s}"] for f in g.policy.extra_fields(g.train)}
    img = fn.decoders.image_slice(jpeg, window[0:2], window[2:4], device="mixed" if g.gpu else "cpu",
                                  output_type=types.RGB, axis_names="WH")
    if g.train:
        # the flip is folded into the resize (its ROI runs right to left): no extra pass, and
        # pasted pixels carry their own sample's flip
        lo = fn.cast(flip, dtype=types.FLOAT) * types.Constant(np.array([0.0, 1.0], np.float32))
        hi = types.Constant(np.array([1.0, 1.0], np.float32)) - lo
        img = fn.resize(img, size=[S, S], roi_start=lo, roi_end=hi, roi_relative=True, **g.interp())
        return _train_extras(img, extra, g.policy, S, fn, types), 0, label, extra
    shorter = g.policy.eval_resize(S)  # None: the whole image to S x S (cifar)
    img = fn.resize(img, **({"size": [S, S]} if shorter is None else {"resize_shorter": shorter}), **g.interp())
    return img, flip[0], label, extra  # mirror all 0 in evaluation; consumed, so DALI does not warn of an unused output


def _normalise(g: _Graph, img, mirror=0, extra=None):
    """``crop_mirror_normalize`` to S x S with the policy's mean / std, to the pipeline's dtype
    and layout; then random erasing when the policy draws it (timm: on the normalised image)."""
    types = g.types
    out = g.fn.crop_mirror_normalize(
        img, crop=(g.size, g.size), mirror=mirror, mean=[255 * m for m in g.policy.mean],
        std=[255 * s_ for s_ in g.policy.std], dtype=types.FLOAT16 if g.cfg.dtype == "float16" else types.FLOAT,
        output_layout="HWC" if g.cfg.channels_last else "CHW")
    if extra is not None and "erase" in extra:
        out = _erase(out, extra, g.policy, g.seed, g.size, g.cfg, g.fn, types)
    return out


def _train_extras(img, extra: dict, policy, S: int, fn, types):
    """The policy's per-sample transforms of a resized (and flipped) uint8 HWC S x S image, in
    order: cifar's padded crop (``fn.slice`` at the keyed anchor, zero fill outside the image),
    the keyed AutoAugment family (:func:`_auto_augment`), colour jitter (``fn.color_twist``)."""
    if "shift" in extra:
        img = fn.slice(img, extra["shift"], types.Constant(np.array([S, S], np.float32)), axis_names="HW",
                       out_of_bounds_policy="pad", fill_values=0, normalized_anchor=False, normalized_shape=False)
    if "auto" in extra:
        img = _auto_augment(img, extra["auto"], policy, S, types)
    if "jitter" in extra:
        j = extra["jitter"]
        img = fn.color_twist(img, brightness=j[0], contrast=j[1], saturation=j[2])
    return img


def _auto_augment(img, draws, policy, S: int, types):
    """DALI's own AutoAugment (ImageNet policy), RandAugment or TrivialAugment Wide suites
    (``nvidia.dali.auto_aug``), with their random choices taken from ``draws`` (int32 [8] per
    sample, keyed by position in the source) instead of DALI's RNG operators: the operation
    (``select``), the magnitude sign (``signed_bin(random_sign=...)``), TrivialAugment's magnitude
    bin and AutoAugment's sub-policy and stage coin flips. The selection logic mirrors
    ``apply_rand_augment`` / ``apply_trivial_augment`` / ``apply_auto_augment`` of DALI 2.4."""
    from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment
    from nvidia.dali.auto_aug.core import select, signed_bin

    kind, n, m = policy.auto
    kw = {"shape": (S, S), "fill_value": 128}
    if kind == "randaugment":
        suite = rand_augment.get_rand_augment_suite(use_shape=True)
        for level in range(n):
            mag = signed_bin(m, random_sign=draws[4 + level] % 2)  # n <= 4 (AugmentPolicy validates it)
            img = select(suite, draws[level] % len(suite), data=img, magnitude_bin=mag, num_magnitude_bins=31, **kw)
        return img
    if kind == "trivialaugment":
        suite = trivial_augment.get_trivial_augment_wide_suite(use_shape=True)
        mag = signed_bin(draws[1] % 31, random_sign=draws[2] % 2)
        return select(suite, draws[0] % len(suite), data=img, magnitude_bin=mag, num_magnitude_bins=31, **kw)
    pol = auto_augment.get_image_net_policy(use_shape=True)
    stages = max(len(sp) for sp in pol.sub_policies)
    sub = draws[0] % len(pol.sub_policies)
    run_p = auto_augment._sub_policy_to_probability_map(pol)[sub]
    bins = auto_augment._sub_policy_to_magnitude_bin_map(pol)[sub]
    aug_ids, augs = auto_augment._sub_policy_to_augmentation_map(pol)
    aug_ids = aug_ids[sub]
    for stage in range(stages):
        mag = signed_bin(bins[stage], random_sign=draws[1 + stage] % 2)
        u = types.Constant(np.float32(1.0 / 2 ** 31)) * draws[4 + stage]  # uniform in [0, 1)
        if u < run_p[stage]:
            img = select(augs[stage], aug_ids[stage], data=img, magnitude_bin=mag,
                         num_magnitude_bins=pol.num_magnitude_bins, **kw)
    return img


def _erase(img, extra: dict, policy, seed: int, S: int, cfg, fn, types):
    """timm-style random erasing of the normalised image at the keyed rectangle ``erase``
    ``(y, x, h, w)``: zeros ("const"), the sample's keyed normal colour ("rand", ``fn.erase``
    with a per-sample fill), or per-pixel noise from the seed's fixed noise field at the sample's
    keyed offset ("pixel": ``img * keep + noise * (1 - keep)``, ``keep`` = ones erased)."""
    rect = extra["erase"]
    if policy.remode != "pixel":
        fill = 0.0 if policy.remode == "const" else extra["efill"][0:3]
        return fn.erase(img, anchor=rect[0:2], shape=rect[2:4], axis_names="HW", fill_value=fill)
    layout = "HWC" if cfg.channels_last else "CHW"
    field = policy.noise_field(seed, S)
    ones = np.ones((S, S, 3), np.float32)
    if layout == "CHW":
        field, ones = np.ascontiguousarray(field.transpose(2, 0, 1)), ones.transpose(2, 0, 1).copy()
    keep = fn.erase(types.Constant(ones, layout=layout), anchor=rect[0:2], shape=rect[2:4], axis_names="HW",
                    fill_value=0.0)
    noise = fn.slice(
        types.Constant(field, layout=layout),
        extra["efill"][3:5],
        types.Constant(np.array([S, S], np.float32)),
        axis_names="HW",
        normalized_anchor=False,
        normalized_shape=False,
    )
    if cfg.device == "cuda":  # operands beside GPU images (the rectangle and offsets stay host arguments)
        keep, noise = keep.gpu(), noise.gpu()
    if cfg.dtype == "float16":  # the blend in float32 (DALI's arithmetic does not mix float16 and float32)
        img = fn.cast(img, dtype=types.FLOAT)
    out = img * keep + noise * (types.Constant(np.float32(1.0)) - keep)
    return fn.cast(out, dtype=types.FLOAT16) if cfg.dtype == "float16" else out


_NOT_FREED: weakref.WeakSet = weakref.WeakSet()  # pipelines built by this module and not freed yet
_NUMBA_OPS: dict = {}  # fastcas.mix.graph_ops.NumbaOp -> its DALI operator
_NUMBA_OPS_LOCK = threading.Lock()  # two threads building pipelines compile each operator once


def _numba_op(op):
    """The DALI Numba operator (CPU) running ``op`` (a :class:`fastcas.mix.graph_ops.NumbaOp`:
    e.g. the saliency peak of each uint8 HWC image, the ``multi_paste`` arguments of its box, the
    FMix select) per sample on DALI's threads. Built once per process: DALI compiles a Numba
    function when its operator is constructed (seconds), and an operator instance can be placed
    in any number of pipelines."""
    from nvidia.dali import types
    from nvidia.dali.plugin.numba import NumbaFunction

    with _NUMBA_OPS_LOCK:
        if op not in _NUMBA_OPS:
            _NUMBA_OPS[op] = NumbaFunction(
                run_fn=op.run, setup_fn=op.setup, outs_ndim=list(op.outs_ndim), ins_ndim=list(op.ins_ndim),
                out_types=[getattr(types, DALI_TYPE_NAMES[t]) for t in op.out_types],
                in_types=[getattr(types, DALI_TYPE_NAMES[t]) for t in op.in_types], device="cpu")
        return _NUMBA_OPS[op]


def build_reader_pipeline(reader, *, batch_size: int, image_size: int, num_threads: int, device: str,
                          decode_only: bool = False, device_id: int | None = None):
    """DALI's own sequential ``readers.webdataset`` over a dataset's shards and indexes, with
    DALI's random-resized-crop (ROI decode), resize, flip and normalise, or decode alone:
    the ceilings ``fastcas bench`` compares against (no sampler, no mixing). ``device_id``: the
    GPU ordinal on ``cuda`` (default: torch's current device, i.e. this rank's GPU)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device == "cuda"
    S = image_size
    if gpu and device_id is None:
        import torch

        device_id = torch.cuda.current_device()

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if gpu else None, seed=0)
    def pipe():
        jpeg, cls = fn.readers.webdataset(paths=[str(reader.local_shard(s)) for s in range(len(reader.shard_paths))],
                                          index_paths=[str(p) for p in reader.index_paths],
                                          ext=[";".join(reader.image_exts), reader.label_ext],
                                          missing_component_behavior="skip",
                                          random_shuffle=True, initial_fill=1024, name="reader")
        dev = "mixed" if gpu else "cpu"
        if decode_only:
            return fn.decoders.image(jpeg, device=dev, output_type=types.RGB), cls
        img = fn.decoders.image_random_crop(jpeg, device=dev, output_type=types.RGB,
                                            random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
        img = fn.resize(img, size=[S, S])
        img = fn.crop_mirror_normalize(img, mirror=fn.random.coin_flip(), dtype=types.FLOAT,
                                       mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
                                       output_layout="CHW")
        return img, cls

    p = pipe()
    p.build()
    return p


def to_torch(tensor_list, *, copy: bool = False):
    """One DALI output (uniform shape) -> a torch tensor where DALI produced it, through DALI's
    own PyTorch plugin. The CPU suite and the GPU run this same function.

    Dispatch is on the TYPE of the output, never on the loader's device: a ``TensorListGPU``
    (images of a GPU pipeline) becomes a CUDA tensor on the pipeline's GPU; a
    ``TensorListCPU`` (every output of a CPU pipeline, and the labels and skipped-sample
    column of a GPU pipeline) becomes a host tensor. A CPU TensorList is never fed into CUDA
    memory (a host memcpy to a device pointer); use :func:`to_device` to move it.

    ``copy=False``: zero-copy through DLPack, as ``DALIGenericIterator`` does with the dynamic
    executor (whose outputs own their buffers); for a GPU output torch makes its current stream
    wait on DALI's. ``copy=True``: a fresh torch tensor filled by ``feed_ndarray`` (on torch's
    current stream for GPU outputs), as the iterator does with the older executors.
    """
    import torch
    from nvidia.dali.backend import TensorListCPU, TensorListGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    if isinstance(tensor_list, TensorListGPU):
        device = torch.device("cuda", tensor_list.device_id())
    elif isinstance(tensor_list, TensorListCPU):
        device = torch.device("cpu")
    else:
        raise TypeError(f"expected a DALI TensorListCPU or TensorListGPU, got {type(tensor_list).__name__}")
    t = tensor_list.as_tensor()
    if not copy:
        return torch.from_dlpack(t)
    out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    return feed_ndarray(t, out, cuda_stream=stream)


def run(pipe, device: str | None = None) -> list:
    """One batch of the DALI pipeline ``pipe`` as torch tensors, each where DALI produced it
    (:func:`to_torch`); raises StopIteration at the end of the epoch. ``device`` is not consulted
    (outputs dispatch on their type; kept for callers)."""
    copy = not pipe.exec_dynamic  # DALIGenericIterator's rule
    return [to_torch(o, copy=copy) for o in pipe.run()]


def reset(pipe) -> None:
    pipe.reset()


class DecodeProbe:
    """Decodes one sample at a time with the loader's decoder (``decoders.image_slice`` on
    ``device``, the same crop window), to find which sample of a failed batch DALI cannot
    decode. ``probe(jpeg, window)`` -> None if it decodes, else DALI's error message. A
    failure invalidates a DALI pipeline, so the probe rebuilds its own after each one."""

    def __init__(self, device: str = "cpu", device_id: int | None = None):
        self.device, self.device_id = device, device_id
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device == "cuda"

        @pipeline_def(batch_size=1, num_threads=1, device_id=self.device_id if gpu else None, seed=1,
                      prefetch_queue_depth=1, exec_pipelined=False, exec_async=False)
        def pipe():
            jpeg = fn.external_source(name="jpeg", dtype=types.UINT8)
            window = fn.external_source(name="window", dtype=types.FLOAT)
            return fn.decoders.image_slice(jpeg, window[0:2], window[2:4], device="mixed" if gpu else "cpu",
                                           output_type=types.RGB, axis_names="WH")

        p = pipe()
        _NOT_FREED.add(p)
        p.build()
        return p

    def __call__(self, jpeg: np.ndarray, window) -> str | None:
        if self._pipe is None:
            self._pipe = self._build()
        try:
            self._pipe.feed_input("jpeg", [np.asarray(jpeg, np.uint8)])
            self._pipe.feed_input("window", [np.asarray(window, np.float32).reshape(4)])
            self._pipe.run()
        except RuntimeError as exc:
            self._pipe = None
            return str(exc)
        return None
