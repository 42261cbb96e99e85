"""The DALI graph's settings, without DALI: :class:`PipelineConfig` (what
:func:`fastcas.loading.pipeline.build_pipeline` builds for) and the sizing rules read from it.
Kept apart from :mod:`fastcas.loading.pipeline` (the only module that imports DALI) so that the
settings can be made and checked where DALI is not installed."""
from __future__ import annotations

from dataclasses import dataclass

from fastcas.mix.kinds import FMIX_SELECTS

# numpy dtype names of the graph's host inputs -> the names of DALI's ``types.DALIDataType`` members
DALI_TYPE_NAMES = {"uint8": "UINT8", "int32": "INT32", "int64": "INT64", "float32": "FLOAT", "float64": "FLOAT64"}


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
