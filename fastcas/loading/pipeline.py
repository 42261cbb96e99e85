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

import numpy as np

from fastcas.core.device import to_device  # noqa: F401  (the hand-off of host outputs; re-exported)
from fastcas.core.errors import GPU_EXTRAS, missing
from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
from fastcas.loading.source import SampleSource
from fastcas.loading.transforms import EVAL_CROP_PCT, INTERPOLATIONS
from fastcas.mix.kinds import KINDS as MIX_KINDS

EVAL_CROP_FRACTION = EVAL_CROP_PCT  # the default crop_pct (fastcas.loading.transforms)


@dataclass(frozen=True)
class PipelineConfig:
    batch_size: int
    image_size: int = 224
    train: bool = True
    device: str = "cpu"           # "cpu" or "cuda"
    device_id: int | None = None  # GPU ordinal when device == "cuda"
    num_threads: int = 2
    py_workers: int = 1           # 0: the source runs in the main thread
    dtype: str = "float32"        # or "float16"
    channels_last: bool = False
    prefetch: int = 2

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


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


def source_prefetch(cfg: PipelineConfig) -> int:
    """Batches the parallel external source computes ahead. In batch mode each batch is one task
    for one worker, so fewer than ``py_workers`` batches in flight leaves workers idle (DALI's
    default is 1)."""
    return max(cfg.py_workers, cfg.prefetch, 1)


def worker_start_method(gpu: bool) -> str:
    """How DALI starts the source's worker processes: ``spawn`` for a GPU pipeline and whenever
    the CUDA driver is already initialised in this process (by torch, CuPy, Numba or DALI),
    where DALI refuses to fork; ``fork`` otherwise (fast, nothing to pickle)."""
    from nvidia.dali import backend

    return "spawn" if gpu or backend.IsDriverInitialized() else "fork"


def build_pipeline(source: SampleSource, cfg: PipelineConfig):
    """A built DALI pipeline whose outputs are, per stream, (images, labels), then skipped.

    With ``source.config.paste`` (mixing in the graph) the outputs are (mixed images, the labels
    of each stream, lam float64 [B, 1], skipped): each stream's resized (and flipped) uint8 HWC
    images are mixed with the in-batch partner (one stream) or the foreground stream (two streams) —
    CutMix: ``fn.multi_paste`` copies the partner's box; FMix (binary masks): a bitwise select
    ``bg ^ ((bg ^ fg) & mask)`` with the partner from ``fn.permute_batch`` — then one
    normalisation without mirror. SaliencyMix (CPU pipelines only: its Numba operators take
    host images): a Numba operator finds each sample's saliency peak on its uint8 pixels
    (:func:`fastcas.mix.graph_ops.saliency_centre`), ``fn.permute_batch`` gives each sample its
    foreground's peak, a second one makes the box's ``multi_paste`` arguments and ``lam``
    (:func:`~fastcas.mix.graph_ops.saliency_paste`), and ``fn.multi_paste`` copies the box.
    On the CPU the FMix select is one Numba operator (:func:`fastcas.mix.graph_ops.fmix_select`,
    the same expression). All are copies of whole pixels and normalisation is per pixel, so the
    pixels equal ``fastcas.mix.apply`` on the normalised, flipped images, on the CPU and the GPU
    alike (tested against the torch path on the CPU)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = cfg.device == "cuda"
    decoder_device = "mixed" if gpu else "cpu"
    S = cfg.image_size
    streams = len(source.config.streams)
    parallel = cfg.py_workers > 0
    layout = source.layout
    paste = layout.mix is not None
    dali_types = {"uint8": types.UINT8, "int32": types.INT32, "int64": types.INT64, "float32": types.FLOAT,
                  "float64": types.FLOAT64}

    policy = source.config.policy  # fastcas.loading.transforms.AugmentPolicy: every transform option
    interp = (
        {}
        if policy.interpolation == "linear"
        else {"interp_type": getattr(types, INTERPOLATIONS[policy.interpolation])}
    )
    train = source.config.train

    def normalise(img, mirror=0, extra=None):
        out = fn.crop_mirror_normalize(
            img, crop=(S, S), mirror=mirror, mean=[255 * m for m in policy.mean],
            std=[255 * s_ for s_ in policy.std], dtype=types.FLOAT16 if cfg.dtype == "float16" else types.FLOAT,
            output_layout="HWC" if cfg.channels_last else "CHW")
        if extra is not None and "erase" in extra:  # random erasing, on the normalised image (timm)
            out = _erase(out, extra, policy, source.config.seed, S, cfg, fn, types)
        return out

    @pipeline_def(batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                  device_id=cfg.device_id if gpu else None, seed=1, prefetch_queue_depth=cfg.prefetch,
                  py_num_workers=max(cfg.py_workers, 1), py_start_method=worker_start_method(gpu),
                  exec_dynamic=True, **({"enable_conditionals": True} if train and policy.auto else {}))
    def pipe():
        # batch mode: the source computes a whole batch vectorised (sampler, crop windows)
        raw = layout.named(fn.external_source(
            source=source, num_outputs=len(layout.source_names), batch=True, batch_info=True, parallel=parallel,
            prefetch_queue_depth=source_prefetch(cfg) if parallel else None,
            dtype=[dali_types[d] for d in layout.source_dtypes()]), "source")
        images, labels, extras = [], [], []
        for s in range(streams):
            jpeg, label, window, flip = (raw[f"{f}{s}"] for f in ("jpegs", "labels", "windows", "flips"))
            extra = {f: raw[f"{f}{s}"] for f in policy.extra_fields(train)}
            # ROI decode of the crop window (the whole image in evaluation)
            img = fn.decoders.image_slice(jpeg, window[0:2], window[2:4], device=decoder_device,
                                          output_type=types.RGB, axis_names="WH")
            if source.config.train:
                # the flip is folded into the resize (its ROI runs right to left): no extra pass,
                # and pasted pixels carry their own sample's flip
                lo = fn.cast(flip, dtype=types.FLOAT) * types.Constant(np.array([0.0, 1.0], np.float32))
                hi = types.Constant(np.array([1.0, 1.0], np.float32)) - lo
                img = fn.resize(img, size=[S, S], roi_start=lo, roi_end=hi, roi_relative=True, **interp)
                img = _train_extras(img, extra, policy, S, fn, types)
                mirror = 0
            else:
                shorter = policy.eval_resize(S)  # None: the whole image to S x S (cifar)
                img = fn.resize(img, **({"size": [S, S]} if shorter is None else {"resize_shorter": shorter}), **interp)
                mirror = flip[0]  # all 0 in evaluation; consumed, so DALI does not warn of an unused output
            images.append((img, mirror))
            labels.append(label)
            extras.append(extra)
        if paste:
            args = {k: raw[k] for k in layout.paste}
            lam, bg = args.pop("lam"), images[0][0]
            graph = MIX_KINDS[source.config.paste.kind].graph  # how the graph mixes it (fastcas.mix.kinds)
            if graph == "saliency_box":  # the box from the foreground's saliency peak (CPU graph only)
                if gpu:
                    raise ValueError("SaliencyMix inside the pipeline runs on CPU pipelines only (its Numba operators "
                                     "take host images); a GPU loader computes the boxes with torch after it")
                centre_op, paste_op = _graph_op("saliency_centre"), _graph_op("saliency_paste")
                centre = centre_op(images[1][0] if streams == 2 else bg, args.pop("need"))
                centre = fn.permute_batch(centre, indices=args.pop("centre_ids")[0])
                # the unmixed sample's paste arguments in, the box's out: then pasted like CutMix's
                args["anchors"], args["shapes"], lam = paste_op(args["anchors"], args["shapes"], lam,
                                                                args.pop("half"), centre)
            if graph in ("box", "saliency_box"):
                # one stream: in_ids names the in-batch partner; two: input 1 is pasted into input 0
                anchors = args.pop("anchors")
                mixed = fn.multi_paste(*[img for img, _ in images], **args, in_anchors=anchors,
                                       out_anchors=anchors, output_size=[S, S])
            else:  # FMix, binary masks: bg where mask 0, fg where 255 (exact bitwise select on uint8)
                fg = images[1][0] if streams == 2 else fn.permute_batch(bg, indices=args["partner"][0])
                if gpu or not _FMIX_SELECT_OP:  # DALI's arithmetic operators (the GPU's select)
                    masks = args["masks"].gpu() if gpu else args["masks"]  # an operand beside GPU images
                    mixed = bg ^ ((bg ^ fg) & masks)
                else:  # the same select as one vectorised Numba pass (DALI's CPU arithmetic broadcasts slowly)
                    mixed = _graph_op("fmix_select")(bg, fg, args["masks"])
            named = {"images0": normalise(mixed), "lam": lam, "skipped": raw["skipped"]}
            named.update({f"labels{s}": label for s, label in enumerate(labels)})
            return layout.pack(named, "pipeline")
        named = {"skipped": raw["skipped"]}
        for s, ((img, mirror), label, extra) in enumerate(zip(images, labels, extras)):
            named.update({f"images{s}": normalise(img, mirror, extra), f"labels{s}": label})
        return layout.pack(named, "pipeline")

    if parallel and worker_start_method(gpu) == "fork" and len(_NOT_FREED):
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
_GRAPH_OPS: dict = {}
_GRAPH_OPS_LOCK = threading.Lock()  # two threads building pipelines compile each operator once
_FMIX_SELECT_OP = True  # CPU FMix select as a Numba operator (False: DALI arithmetic, as on the GPU; for tests)


def _graph_op(name: str):
    """A DALI Numba operator (CPU) running ``fastcas.mix.graph_ops.<name>`` per sample on DALI's
    threads: ``saliency_centre`` (the saliency peak of each uint8 HWC image), ``saliency_paste``
    (the ``multi_paste`` arguments and lam of its box) or ``fmix_select``. Built once per
    process: DALI compiles a Numba function when its operator is constructed (seconds), and an
    operator instance can be placed in any number of pipelines."""
    with _GRAPH_OPS_LOCK:
        if name not in _GRAPH_OPS:
            _GRAPH_OPS[name] = _make_graph_op(name)
        return _GRAPH_OPS[name]


def _make_graph_op(name: str):
    """Builds (compiles) the DALI Numba operator of :func:`_graph_op`."""
    from nvidia.dali import types
    from nvidia.dali.plugin.numba import NumbaFunction

    from fastcas.mix import graph_ops  # noqa: PLC0415 (lazy: graph_ops loads numba)

    i32, u8, f64 = types.INT32, types.UINT8, types.FLOAT64
    spec = {  # out_types, in_types, outs_ndim, ins_ndim
        "saliency_centre": ([i32], [u8, i32], [1], [3, 1]),
        "saliency_paste": ([i32, i32, f64], [i32, i32, f64, i32, i32], [2, 2, 1], [2, 2, 1, 1, 1]),
        "fmix_select": ([u8], [u8, u8, u8], [3], [3, 3, 3]),
    }[name]
    return NumbaFunction(
        run_fn=getattr(graph_ops, name),
        setup_fn=getattr(graph_ops, name + "_setup"),
        out_types=spec[0],
        in_types=spec[1],
        outs_ndim=spec[2],
        ins_ndim=spec[3],
        device="cpu",
    )


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
    """One batch as torch tensors, each where DALI produced it (:func:`to_torch`); raises
    StopIteration at the end of the epoch. ``device`` is not consulted (outputs dispatch on
    their type; kept for callers). Objects that are not DALI pipelines (the baseline's
    DataLoader) give tensors already."""
    if not hasattr(pipe, "schedule_run"):
        return pipe.run()
    copy = not getattr(pipe, "exec_dynamic", False)  # DALIGenericIterator's rule
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


# -- the decode-only graph of the torch CPU resize (fastcas.loading.cpu_resize; issue 37) --------------
def build_decode_pipeline(source: SampleSource, cfg: PipelineConfig):
    """A built CPU DALI pipeline whose outputs are the source's outputs (``layout.source_names``,
    in order) with each stream's ``jpegs{s}`` replaced by its ROI-decoded crop window (uint8 HWC
    RGB, ragged: ``decoders.image_slice`` exactly as in :func:`build_pipeline`); every other
    output (labels, windows, flips, paste arguments, skipped) passes through. Resizing, flipping,
    mixing and normalising happen after it, in torch (:class:`fastcas.loading.cpu_resize.TorchResizeBackend`)."""
    from nvidia.dali import fn, pipeline_def, types

    layout = source.layout
    parallel = cfg.py_workers > 0
    dtypes = {"uint8": types.UINT8, "int32": types.INT32, "int64": types.INT64, "float32": types.FLOAT,
              "float64": types.FLOAT64}

    @pipeline_def(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=None, seed=1,
                  prefetch_queue_depth=cfg.prefetch, py_num_workers=max(cfg.py_workers, 1),
                  py_start_method=worker_start_method(False), exec_dynamic=True)
    def pipe():
        raw = layout.named(fn.external_source(
            source=source, num_outputs=len(layout.source_names), batch=True, batch_info=True, parallel=parallel,
            prefetch_queue_depth=source_prefetch(cfg) if parallel else None,
            dtype=[dtypes[d] for d in layout.source_dtypes()]), "source")
        for s in range(len(source.config.streams)):
            window = raw[f"windows{s}"]
            raw[f"jpegs{s}"] = fn.decoders.image_slice(raw[f"jpegs{s}"], window[0:2], window[2:4], device="cpu",
                                                       output_type=types.RGB, axis_names="WH")
        return tuple(raw.values())

    if parallel and worker_start_method(False) == "fork" and len(_NOT_FREED):
        gc.collect()  # as in build_pipeline: a forked worker must not inherit a dropped pipeline
    p = pipe()
    _NOT_FREED.add(p)
    p.build()
    return p
