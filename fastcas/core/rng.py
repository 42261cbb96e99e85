"""Explicit, reproducible randomness.

Two tools, used everywhere in fastcas instead of global RNG state:

* :func:`generator` — a ``numpy.random.Generator`` seeded from a tuple of non-negative
  integers such as ``(seed, epoch, rank, step)`` (like webdataset's ``make_seed`` and FFCV's
  ``seed + epoch``, but collision-free through ``SeedSequence``). Never seeded from time or pid.
* :func:`counter_uniform` — a *stateless* counter-based generator: the uniform number at
  ``(key, counter)`` is a pure function of both, so any worker can compute draw ``i`` of a
  stream without computing draws ``0..i-1`` (needed by DALI's parallel external source and by
  exact mid-epoch resume). It is SplitMix64 applied twice (Steele, Lea & Flood 2014); NumPy and
  CuPy evaluate the identical integer arithmetic, so CPU and GPU get identical numbers.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def _check_keys(keys: tuple[int, ...]) -> list[int]:
    out = []
    for k in keys:
        k = int(k)
        if k < 0:
            raise ValueError(f"seed components must be non-negative integers, got {k}")
        out.append(k)
    return out


def generator(*keys: int) -> np.random.Generator:
    """A NumPy ``Generator`` (PCG64) that is a pure function of ``keys``.

    ``generator(seed, epoch, rank)`` and ``generator(seed, epoch, rank, 0)`` are different
    streams; use a fixed arity per purpose and put a purpose tag first where two purposes
    share a seed.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(_check_keys(keys))))


def derive_key(*keys: int) -> np.uint64:
    """A 64-bit stream key for :func:`counter_uniform`, a pure function of ``keys``."""
    return np.random.SeedSequence(_check_keys(keys)).generate_state(1, dtype=np.uint64)[0]


def _splitmix64(z, xp=np):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def counter_bits(key: np.uint64, counter, xp=np):
    """64 random bits for each counter. ``counter``: integer array (any shape), NumPy or CuPy.

    Returns a uint64 array of the same shape, on the same device (``xp`` is numpy or cupy).
    """
    c = xp.asarray(counter).astype(xp.uint64, copy=False)
    with np.errstate(over="ignore"):
        z = _splitmix64(c * _GOLDEN + np.uint64(key), xp)
        return _splitmix64(z ^ np.uint64(key), xp)


def counter_uniform(key: np.uint64, counter, xp=np):
    """Uniform float64 in [0, 1) for each counter, 53 random bits each; see :func:`counter_bits`."""
    return (counter_bits(key, counter, xp) >> _S11).astype(xp.float64) * (1.0 / (1 << 53))
