"""The DALI pipeline: the only module in fastcas that imports DALI.

    external_source(SampleSource, parallel, per sample)
      -> decoders.image_slice (ROI decode of the crop window; "mixed" on GPU, "cpu" without)
      -> resize to S x S, flipped by a right-to-left ROI
      -> [in-graph mixing: the mix kind's fragment, fastcas.mix.kinds.MixKind.graph_mix]
      -> crop_mirror_normalize (ImageNet mean/std, CHW/HWC, fp32/fp16)

Evaluation and the training transforms: :mod:`fastcas.loading.transforms`. Every random choice
comes from the stateless source, not DALI's RNG. DALI-free settings: :mod:`fastcas.loading.graph_config`.
"""
from __future__ import annotations

import gc
import weakref

import numpy as np

from fastcas.core.device import to_device  # noqa: F401  (the hand-off of host outputs; re-exported)
from fastcas.core.errors import GPU_EXTRAS, missing
from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
from fastcas.loading.graph_config import Graph, PipelineConfig, cached_op, dali_types, pipeline_args, source_prefetch
from fastcas.loading.layout import STREAM_FIELDS
from fastcas.loading.source import SampleSource
from fastcas.loading.transforms import EVAL_CROP_PCT, INTERPOLATIONS
from fastcas.mix.kinds import KINDS as MIX_KINDS

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


def build_pipeline(source: SampleSource, cfg: PipelineConfig, decode_only: bool = False):
    """A built DALI pipeline whose outputs are, per stream, (images, labels), then skipped; with
    ``source.config.paste`` (mixing in the graph): (mixed images, each stream's labels, lam float64
    [B, 1], skipped), the uint8 images mixed by the mix kind's fragment
    (:meth:`fastcas.mix.kinds.MixKind.graph_mix`) before one normalisation without mirror. Mixing
    copies whole pixels and normalisation is per pixel, so the pixels equal ``fastcas.mix.apply``
    on the normalised, flipped images (tested against the torch path on the CPU). ``decode_only``
    (CPU): the source's outputs with each stream's ``jpegs{s}`` replaced by its ROI-decoded crop
    window (uint8 HWC RGB, ragged); torch resizes, flips, mixes and normalises after it
    (:class:`fastcas.loading.cpu_resize.TorchResizeBackend`, ``cpu_resize="torch"``)."""
    from nvidia.dali import fn, pipeline_def, types

    c, name = source.config, source.config.policy.interpolation
    interp = {} if name == "linear" else {"interp_type": getattr(types, INTERPOLATIONS[name])}
    g = Graph(fn, types, cfg, c.policy, c.seed, c.train, interp, _numba_op)
    kind = None if source.layout.mix is None else MIX_KINDS[source.layout.mix]

    @pipeline_def(**pipeline_args(cfg, bool(g.train and g.policy.auto), worker_start_method(cfg.gpu)))
    def pipe():
        return _decoded(g, source) if decode_only else _graph(g, source, kind)

    if cfg.py_workers > 0 and worker_start_method(cfg.gpu) == "fork" and len(_NOT_FREED):
        # a forked worker inherits every unreachable object not yet collected here; an earlier,
        # dropped DALI pipeline among them (pipelines hold reference cycles) would be shut down
        # by the worker's garbage collector, which crashes the worker (SIGSEGV): collect first,
        # only while some pipeline built here is not freed (a full collection can take 0.25 s)
        gc.collect()
    p = pipe()
    _NOT_FREED.add(p)
    p.build()
    return p


def _graph(g: Graph, source: SampleSource, kind) -> tuple:
    """The pipeline's outputs (``source.layout``'s pipeline names): each stream decoded and resized,
    mixed by ``kind`` (a :class:`fastcas.mix.kinds.MixKind`; None: not in the graph), normalised."""
    layout, raw = source.layout, _source(g, source)
    streams = [_stream(g, raw, s) for s in range(layout.streams)]
    named = {"skipped": raw["skipped"]}
    named.update({f"labels{s}": label for s, (_, _, label, _) in enumerate(streams)})
    if kind is not None:  # the kind's own graph fragment mixes the uint8 images (fastcas.mix.kinds)
        mixed, named["lam"] = kind.graph_mix(g, [img for img, *_ in streams], {k: raw[k] for k in layout.paste})
        named["images0"] = _normalise(g, mixed)
    else:
        named.update({f"images{s}": _normalise(g, img, mirror, extra)
                      for s, (img, mirror, _, extra) in enumerate(streams)})
    return layout.pack(named, "pipeline")


def _source(g: Graph, source: SampleSource) -> dict:
    """The external source's outputs by name. Batch mode: the source computes a whole batch
    vectorised (sampler, crop windows)."""
    layout, parallel = source.layout, g.cfg.py_workers > 0
    return layout.named(g.fn.external_source(
        source=source, num_outputs=len(layout.source_names), batch=True, batch_info=True, parallel=parallel,
        prefetch_queue_depth=source_prefetch(g.cfg) if parallel else None,
        dtype=dali_types(g.types, layout.source_dtypes())), "source")


def _decoded(g: Graph, source: SampleSource) -> tuple:
    raw = _source(g, source)
    raw.update({f"jpegs{s}": _decode(g, raw, s) for s in range(source.layout.streams)})
    return tuple(raw.values())


def _decode(g: Graph, raw: dict, s: int):
    """Stream ``s``'s ROI decode of its crop window (the whole image in evaluation), uint8 HWC RGB."""
    window = raw[f"windows{s}"]
    return g.fn.decoders.image_slice(raw[f"jpegs{s}"], window[0:2], window[2:4], device="mixed" if g.gpu else "cpu",
                                     output_type=g.types.RGB, axis_names="WH")


def _stream(g: Graph, raw: dict, s: int) -> tuple:
    """``(image uint8 HWC, mirror, labels, extra draws)`` of stream ``s``: the ROI decode of the crop
    window (the whole image in evaluation), resized; in training flipped by the resize's ROI and
    given the policy's per-sample transforms; in evaluation centre-cropped by the normalisation."""
    fn, types, S = g.fn, g.types, g.size
    _, label, _, flip = (raw[f"{f}{s}"] for f in STREAM_FIELDS)
    extra = {f: raw[f"{f}{s}"] for f in g.policy.extra_fields(g.train)}
    img = _decode(g, raw, s)
    if g.train:
        # the flip is folded into the resize (its ROI runs right to left): no extra pass, and
        # pasted pixels carry their own sample's flip
        lo = fn.cast(flip, dtype=types.FLOAT) * types.Constant(np.array([0.0, 1.0], np.float32))
        hi = types.Constant(np.array([1.0, 1.0], np.float32)) - lo
        img = fn.resize(img, size=[S, S], roi_start=lo, roi_end=hi, roi_relative=True, **g.interp)
        return _train_extras(g, img, extra), 0, label, extra
    shorter = g.policy.eval_resize(S)  # None: the whole image to S x S (cifar)
    img = fn.resize(img, **({"size": [S, S]} if shorter is None else {"resize_shorter": shorter}), **g.interp)
    return img, flip[0], label, extra  # mirror all 0 in evaluation; consumed, so DALI does not warn of an unused output


def _normalise(g: Graph, img, mirror=0, extra=None):
    """``crop_mirror_normalize`` to S x S with the policy's mean / std, to the pipeline's dtype
    and layout; then random erasing when the policy draws it (timm: on the normalised image)."""
    types = g.types
    out = g.fn.crop_mirror_normalize(
        img, crop=(g.size, g.size), mirror=mirror, mean=[255 * m for m in g.policy.mean],
        std=[255 * s_ for s_ in g.policy.std], dtype=types.FLOAT16 if g.cfg.dtype == "float16" else types.FLOAT,
        output_layout="HWC" if g.cfg.channels_last else "CHW")
    if extra is not None and "erase" in extra:
        out = _erase(g, out, extra)
    return out


def _train_extras(g: Graph, img, extra: dict):
    """The policy's per-sample transforms of a resized (and flipped) uint8 HWC S x S image, in
    order: cifar's padded crop (``fn.slice`` at the keyed anchor, zero fill outside the image),
    the keyed AutoAugment family (:func:`_auto_augment`), colour jitter (``fn.color_twist``)."""
    fn, S = g.fn, g.size
    if "shift" in extra:
        img = fn.slice(img, extra["shift"], g.types.Constant(np.array([S, S], np.float32)), axis_names="HW",
                       out_of_bounds_policy="pad", fill_values=0, normalized_anchor=False, normalized_shape=False)
    if "auto" in extra:
        img = _auto_augment(g, img, extra["auto"])
    if "jitter" in extra:
        j = extra["jitter"]
        img = fn.color_twist(img, brightness=j[0], contrast=j[1], saturation=j[2])
    return img


def _auto_augment(g: Graph, img, draws):
    """DALI's own AutoAugment (ImageNet policy), RandAugment or TrivialAugment Wide suites
    (``nvidia.dali.auto_aug``), their random choices (operation, magnitude sign and bin, sub-policy,
    stage coin flips) taken from ``draws`` (int32 [8] per sample, keyed by position) instead of DALI's
    RNG; the selection mirrors ``apply_rand/trivial/auto_augment`` of DALI 2.4."""
    from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment
    from nvidia.dali.auto_aug.core import select, signed_bin

    kind, n, m = g.policy.auto
    kw = {"shape": (g.size, g.size), "fill_value": 128}
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
        u = g.types.Constant(np.float32(1.0 / 2 ** 31)) * draws[4 + stage]  # uniform in [0, 1)
        if u < run_p[stage]:
            img = select(augs[stage], aug_ids[stage], data=img, magnitude_bin=mag,
                         num_magnitude_bins=pol.num_magnitude_bins, **kw)
    return img


def _erase(g: Graph, img, extra: dict):
    """timm-style random erasing of the normalised image at the keyed rectangle ``erase`` ``(y, x, h,
    w)``: zeros ("const"), the sample's keyed normal colour ("rand"), or per-pixel noise from the seed's
    noise field at the sample's keyed offset ("pixel": ``img * keep + noise * (1 - keep)``)."""
    fn, types, rect, policy, S, cfg = g.fn, g.types, extra["erase"], g.policy, g.size, g.cfg
    if policy.remode != "pixel":
        fill = 0.0 if policy.remode == "const" else extra["efill"][0:3]
        return fn.erase(img, anchor=rect[0:2], shape=rect[2:4], axis_names="HW", fill_value=fill)
    layout = "HWC" if cfg.channels_last else "CHW"
    field, ones = policy.noise_planes(g.seed, S, layout)
    keep = fn.erase(types.Constant(ones, layout=layout), anchor=rect[0:2], shape=rect[2:4], axis_names="HW",
                    fill_value=0.0)
    noise = fn.slice(types.Constant(field, layout=layout), extra["efill"][3:5],
                     types.Constant(np.array([S, S], np.float32)), axis_names="HW", normalized_anchor=False,
                     normalized_shape=False)
    if g.gpu:  # operands beside GPU images (the rectangle and offsets stay host arguments)
        keep, noise = keep.gpu(), noise.gpu()
    if cfg.dtype == "float16":  # the blend in float32 (DALI's arithmetic does not mix float16 and float32)
        img = fn.cast(img, dtype=types.FLOAT)
    out = img * keep + noise * (types.Constant(np.float32(1.0)) - keep)
    return fn.cast(out, dtype=types.FLOAT16) if cfg.dtype == "float16" else out


_NOT_FREED: weakref.WeakSet = weakref.WeakSet()  # pipelines built by this module and not freed yet


def _numba_op(op):
    """The DALI Numba operator (CPU) running ``op`` (a :class:`fastcas.mix.graph_ops.NumbaOp`) per
    sample on DALI's threads, built once per process (:func:`~fastcas.loading.graph_config.cached_op`:
    DALI compiles the function when the operator is constructed; one instance serves any pipeline)."""
    from nvidia.dali import types
    from nvidia.dali.plugin.numba import NumbaFunction

    return cached_op(op, lambda: NumbaFunction(
        run_fn=op.run, setup_fn=op.setup, outs_ndim=list(op.outs_ndim), ins_ndim=list(op.ins_ndim),
        out_types=dali_types(types, op.out_types), in_types=dali_types(types, op.in_types), device="cpu"))


def build_reader_pipeline(reader, *, batch_size: int, image_size: int, num_threads: int, device: str,
                          decode_only: bool = False, device_id: int | None = None):
    """DALI's own sequential ``readers.webdataset`` over a dataset's shards, with DALI's random-resized
    crop (ROI decode), resize, flip and normalise, or decode alone: the ceilings ``fastcas bench``
    compares against. ``device_id``: the GPU ordinal on ``cuda`` (default: torch's current device)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu, S = device == "cuda", image_size
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
    own PyTorch plugin (the CPU suite and the GPU run this same function). Dispatch is on the
    TYPE of the output, never on the loader's device: a ``TensorListGPU`` becomes a CUDA tensor
    on the pipeline's GPU, a ``TensorListCPU`` (every output of a CPU pipeline; labels and the
    skipped column of a GPU one) a host tensor, never fed into CUDA memory (:func:`to_device`
    moves it). ``copy=False``: zero-copy through DLPack, as ``DALIGenericIterator`` with the
    dynamic executor (torch's current stream waits on DALI's); ``copy=True``: a fresh tensor
    filled by ``feed_ndarray`` (on torch's current stream), as the iterator with older executors."""
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
    (:func:`to_torch`); StopIteration at the end of the epoch. ``device``: unused, kept for callers."""
    copy = not pipe.exec_dynamic  # DALIGenericIterator's rule
    return [to_torch(o, copy=copy) for o in pipe.run()]


def reset(pipe) -> None:
    pipe.reset()


class DecodeProbe:
    """Decodes one sample at a time with the loader's decoder (``decoders.image_slice`` on ``device``,
    the same crop window), to find which sample of a failed batch DALI cannot decode: ``probe(jpeg,
    window)`` -> None or DALI's error message (a failure invalidates the probe's pipeline: rebuilt)."""

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
