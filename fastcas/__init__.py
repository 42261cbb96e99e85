"""fastcas: GPU data loading for long-tailed image classification.

WebDataset shards -> CAS / CMO weighted sampling -> DALI decode -> batched CutMix / FMix /
SaliencyMix on the device -> PyTorch iterator. The top-level names are imported lazily, so
``import fastcas`` loads neither torch nor DALI.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ShardReader": "fastcas.dataset.reader",
    "WeightedSampler": "fastcas.sampling.sampler",
    "Loader": "fastcas.loading.loader",
    "LoaderConfig": "fastcas.loading.config",
    "AugmentPolicy": "fastcas.loading.transforms",
    "TorchvisionLoader": "fastcas.loading.baseline",
    "mix": "fastcas.mix",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        value = module if name == "mix" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastcas' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
