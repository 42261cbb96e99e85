"""Weighted sampling for storage where random access is slow: read shards in order.

Per epoch, each sample ``i`` is emitted ``c_i`` times with ``E[c_i] = m_i = E * p_i``
(``E`` = samples per epoch). fastcas uses the lower-variance *systematic* rounding
``c_i = floor(m_i) + Bernoulli(frac(m_i))`` instead of ``Poisson(m_i)``: same mean, variance
``frac(1 - frac) <= 1/4`` instead of ``m_i``. The Bernoulli draw is a stateless function of
``(seed, epoch, i)``, so every rank agrees on the counts without talking.

Shards are dealt to ranks after a seeded per-epoch shard permutation (shard ``s`` of the
permuted list goes to rank ``s % world_size``); each rank streams its shards in order,
repeats samples by their counts and mixes them through a seeded shuffle buffer. Every rank
yields exactly ``ceil(E / world_size)`` indices: a rank with fewer cycles its own stream
again from the start (pad), a rank with more stops early (trim).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fastcas._rng import counter_uniform, derive_key, generator
from fastcas.weights import check_weights


class StreamingSampler:
    """Args: ``shard_counts`` samples per shard (global order = shard order), ``weights``
    float [N], ``num_samples`` E (default N), ``shuffle_buffer`` size (0 = no shuffling)."""

    def __init__(self, shard_counts, weights, num_samples: int | None = None, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle_buffer: int = 4096):
        self.starts = np.concatenate([[0], np.cumsum(np.asarray(shard_counts, np.int64))])
        w = check_weights(weights, int(self.starts[-1]))
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        self.p = w / w.sum()
        self.num_samples = len(w) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle_buffer = int(shuffle_buffer)
        self.epoch = 0

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def counts(self, epoch: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """int64 repeat counts of samples ``lo..hi`` in ``epoch`` (systematic rounding)."""
        hi = len(self.p) if hi is None else hi
        m = self.num_samples * self.p[lo:hi]
        base = np.floor(m)
        u = counter_uniform(derive_key(self.seed, 0x57, epoch), np.arange(lo, hi))
        return (base + (u < m - base)).astype(np.int64)

    def shards_of_rank(self, epoch: int) -> np.ndarray:
        order = generator(self.seed, 0x58, epoch).permutation(len(self.starts) - 1)
        return order[self.rank :: self.world_size]

    def _raw(self, epoch: int) -> Iterator[int]:
        for s in self.shards_of_rank(epoch):
            lo, hi = int(self.starts[s]), int(self.starts[s + 1])
            c = self.counts(epoch, lo, hi)
            yield from np.repeat(np.arange(lo, hi), c).tolist()

    def _shuffled(self, epoch: int, stream: Iterator[int], rng: np.random.Generator) -> Iterator[int]:
        if self.shuffle_buffer <= 1:
            yield from stream
            return
        buf: list[int] = []
        for x in stream:
            if len(buf) < self.shuffle_buffer:
                buf.append(x)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], x = x, buf[j]
            yield x
        rng.shuffle(buf)
        yield from buf

    def indices(self, epoch: int | None = None) -> np.ndarray:
        return np.fromiter(self.iter_epoch(self.epoch if epoch is None else epoch), np.int64, count=len(self))

    def iter_epoch(self, epoch: int) -> Iterator[int]:
        target = len(self)
        rng = generator(self.seed, 0x59, epoch, self.rank)
        produced = 0
        while produced < target:
            empty = True
            for x in self._shuffled(epoch, self._raw(epoch), rng):
                empty = False
                yield x
                produced += 1
                if produced == target:
                    return
            if empty:
                raise ValueError(f"rank {self.rank} draws no samples in epoch {epoch} "
                                 "(too few shards or num_samples too small for this world size)")

    def __iter__(self):
        return self.iter_epoch(self.epoch)
