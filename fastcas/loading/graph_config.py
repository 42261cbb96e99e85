"""The DALI graph's settings, without DALI: :class:`PipelineConfig` (what
:func:`fastcas.loading.pipeline.build_pipeline` builds for) and the sizing rules read from it.
Kept apart from :mod:`fastcas.loading.pipeline` (the only module that imports DALI) so that the
settings can be made and checked where DALI is not installed."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

from fastcas.mix.kinds import FMIX_SELECTS

# numpy dtype names of the graph's host inputs -> the names of DALI's ``types.DALIDataType`` members
DALI_TYPES = {"uint8": "UINT8", "int32": "INT32", "int64": "INT64", "float32": "FLOAT", "float64": "FLOAT64"}


def dali_types(types, names) -> list:
    """DALI's ``types`` members of numpy dtype ``names`` (e.g. "uint8" -> ``types.UINT8``)."""
    return [getattr(types, DALI_TYPES[n]) for n in names]


@dataclass(frozen=True)
class PipelineConfig:
    """batch_size, image_size (S of the S x S outputs), train; device "cpu" or "cuda" with
    ``device_id`` its GPU ordinal; num_threads (DALI's CPU threads); py_workers (the source's
    worker processes; 0: the main thread); dtype of the images ("float32" | "float16");
    channels_last (HWC instead of CHW); prefetch (DALI's queue depth); fmix_select: how binary
    FMix is selected in the graph, one of :data:`fastcas.mix.kinds.FMIX_SELECTS` ("auto": a Numba
    operator on the CPU, DALI's arithmetic operators on the GPU; "numba" (CPU only);
    "arithmetic": DALI's arithmetic operators on both). Every variant gives the same pixels."""

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
    fmix_select: str = "auto"

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.fmix_select not in FMIX_SELECTS:
            raise ValueError(f"fmix_select must be one of {', '.join(map(repr, FMIX_SELECTS))}, "
                             f"got {self.fmix_select!r}")
        if self.fmix_select == "numba" and self.device == "cuda":
            raise ValueError("fmix_select='numba' runs on CPU pipelines only (a Numba operator takes host images)")

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"


def source_prefetch(cfg: PipelineConfig) -> int:
    """Batches the parallel external source computes ahead. In batch mode each batch is one task
    for one worker, so fewer than ``py_workers`` batches in flight leaves workers idle (DALI's
    default is 1)."""
    return max(cfg.py_workers, cfg.prefetch, 1)


def pipeline_args(cfg: PipelineConfig, conditionals: bool, start_method: str) -> dict:
    """``pipeline_def``'s arguments for ``cfg``; ``conditionals``: DALI's ``enable_conditionals``
    (only for the AutoAugment family's coin flips); ``start_method``: of the source's workers."""
    return dict(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=cfg.device_id if cfg.gpu else None,
                seed=1, prefetch_queue_depth=cfg.prefetch, py_num_workers=max(cfg.py_workers, 1),
                py_start_method=start_method, exec_dynamic=True,
                **({"enable_conditionals": True} if conditionals else {}))


@dataclass(frozen=True)
class Graph:
    """What the graph fragments of one pipeline share (:mod:`fastcas.loading.pipeline`): DALI's
    ``fn`` / ``types`` (passed in: this module imports no DALI), the :class:`PipelineConfig`, the
    source's augmentation policy (:class:`fastcas.loading.transforms.AugmentPolicy`), seed and
    train flag, the resize's interpolation arguments and ``numba(op)`` (the DALI operator of a
    :class:`fastcas.mix.graph_ops.NumbaOp`). It is the :class:`fastcas.mix.kinds.GraphBuilder` a
    mix kind's fragment is given."""

    fn: Any
    types: Any
    cfg: PipelineConfig
    policy: Any
    seed: int
    train: bool
    interp: dict
    numba: Callable

    @property
    def size(self) -> int:
        return self.cfg.image_size

    @property
    def gpu(self) -> bool:
        return self.cfg.gpu

    @property
    def fmix_select(self) -> str:
        return self.cfg.fmix_select


_OPS: dict = {}  # key -> a DALI operator instance built once per process
_OPS_LOCK = threading.Lock()  # two threads building pipelines build (compile) each operator once


def cached_op(key, make: Callable):
    """``make()`` the first time ``key`` is asked for in this process, the same object after."""
    with _OPS_LOCK:
        if key not in _OPS:
            _OPS[key] = make()
        return _OPS[key]
