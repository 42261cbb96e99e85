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

Resume (:meth:`StreamingSampler.state_dict`): at the same world size it is exact. At another
world size the granularity is the SHARD: shards that every old rank had emitted in full are
skipped, the remaining shards are dealt to the new ranks, and samples of shards that were
partly emitted when the state was saved (the shard each old rank was reading and those with
samples still in its shuffle buffer) are read again from their start; the remaining number of
draws is kept (each new rank pads or trims its share, as at the start of an epoch). Loading replays the old ranks'
streams up to the saved point (host integers only). Reading
shards sequentially is the point of this mode, so it does not offer the exact sample-level
elasticity of :class:`fastcas.sampling.sampler.WeightedSampler`.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fastcas.core.rng import counter_uniform, derive_key, generator
from fastcas.sampling.geometry import check_same, digest
from fastcas.sampling.weights import check_weights


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
        self._resume: dict | None = None  # a loaded mid-epoch state
        self._yielded = 0

    def __len__(self) -> int:
        if self._resume is not None and self._resume["epoch"] == self.epoch:
            return self._segment_len(self._resume["segment"], self.world_size) - self._resume["skip"]
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

    def shard_order(self, epoch: int) -> np.ndarray:
        """int64: the epoch's seeded shard permutation (dealt to ranks round-robin)."""
        return generator(self.seed, 0x58, epoch).permutation(len(self.starts) - 1)

    def shards_of_rank(self, epoch: int) -> np.ndarray:
        return self.shard_order(epoch)[self.rank :: self.world_size]

    def _raw(self, epoch: int, shards) -> Iterator[int]:
        for s in shards:
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
        epoch = self.epoch if epoch is None else epoch
        n = len(self) if epoch == self.epoch else -(-self.num_samples // self.world_size)
        return np.fromiter(self.iter_epoch(epoch), np.int64, count=n)

    # -- segments: the whole epoch, or what is left of it after an elastic resume ------------
    def _segment(self, epoch: int) -> dict:
        return {"shards": self.shard_order(epoch).tolist(), "left": self.num_samples, "salt": 0}

    @staticmethod
    def _segment_len(seg: dict, world_size: int) -> int:
        return -(-seg["left"] // world_size)

    def _segment_stream(self, epoch: int, seg: dict, rank: int, world_size: int) -> Iterator[int]:
        """Rank ``rank``'s stream of a segment: its round-robin share of the segment's shards,
        repeated by the counts, through the shuffle buffer, padded/trimmed to its length."""
        shards = seg["shards"][rank::world_size]
        if not shards and seg["shards"]:  # fewer shards left than ranks: share one
            shards = [seg["shards"][rank % len(seg["shards"])]]
        if seg["salt"] == 0:
            rng = generator(self.seed, 0x59, epoch, rank)
        else:
            rng = generator(self.seed, 0x5A, epoch, rank, world_size, seg["salt"])
        target = self._segment_len(seg, world_size)
        produced = 0
        while produced < target:
            empty = True
            for x in self._shuffled(epoch, self._raw(epoch, shards), rng):
                empty = False
                yield x
                produced += 1
                if produced == target:
                    return
            if empty:
                raise ValueError(f"rank {rank} draws no samples in epoch {epoch} "
                                 "(too few shards or num_samples too small for this world size)")

    def iter_epoch(self, epoch: int) -> Iterator[int]:
        r = self._resume
        if r is not None and r["epoch"] == epoch:
            it = self._segment_stream(epoch, r["segment"], self.rank, self.world_size)
            for _ in range(r["skip"]):
                next(it)
        else:
            it = self._segment_stream(epoch, self._segment(epoch), self.rank, self.world_size)
        self._yielded = 0 if r is None or r["epoch"] != epoch else r["skip"]
        for x in it:
            self._yielded += 1
            yield x

    def __iter__(self):
        return self.iter_epoch(self.epoch)

    # -- state: exact at the same world size, shard granularity at another -------------------
    def identity(self) -> dict:
        return {"seed": self.seed, "num_samples": self.num_samples, "shuffle_buffer": self.shuffle_buffer,
                "shards_digest": digest(self.starts), "weights_digest": digest(self.p)}

    def state_dict(self, consumed: int | None = None) -> dict:
        """``consumed``: this rank's draws used so far this epoch (every rank consumes as many;
        default: what this sampler's iterator yielded). Saved by any one rank."""
        k = self._yielded if consumed is None else int(consumed)
        r = self._resume
        seg = r["segment"] if r is not None and r["epoch"] == self.epoch else self._segment(self.epoch)
        return {"epoch": self.epoch, "consumed": k, "world_size": self.world_size, "segment": seg, **self.identity()}

    def load_state_dict(self, state: dict) -> None:
        """Continue an epoch. At the saved world size: exactly (the same streams, skipping what
        was consumed). At another world size: at shard granularity — the shards every old rank
        had fully emitted are done; the rest of the epoch's draws (``left - W * consumed``) come
        from the other shards, dealt round-robin to the new ranks, so a shard that was partly
        emitted when the state was saved is read again from its start."""
        check_same(state, self.identity(), tuple(self.identity()), "StreamingSampler.load_state_dict")
        epoch, k, w_old, seg = int(state["epoch"]), int(state["consumed"]), int(state["world_size"]), state["segment"]
        left = seg["left"] - w_old * k
        if left <= 0 or k >= self._segment_len(seg, w_old):
            self._resume, self.epoch = None, epoch + 1
            return
        self.epoch = epoch
        if w_old == self.world_size:
            self._resume = {"epoch": epoch, "segment": seg, "skip": k}
            return
        done = set()
        for r in range(w_old):  # replay each old rank to see which shards it had emitted in full
            emitted: dict[int, int] = {}
            it = self._segment_stream(epoch, seg, r, w_old)
            for _ in range(k):
                s = int(np.searchsorted(self.starts, next(it), side="right") - 1)
                emitted[s] = emitted.get(s, 0) + 1
            for s, c in emitted.items():
                if c >= int(self.counts(epoch, int(self.starts[s]), int(self.starts[s + 1])).sum()):
                    done.add(s)
        rest = [s for s in seg["shards"] if s not in done]
        if not rest:
            self._resume, self.epoch = None, epoch + 1
            return
        new = {"shards": rest, "left": left, "salt": seg["salt"] + 1 + w_old * k}
        self._resume = {"epoch": epoch, "segment": new, "skip": 0}
