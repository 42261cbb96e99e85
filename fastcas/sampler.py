"""A stateless, distributed, resumable weighted sampler.

Draw ``j`` of rank ``r`` in epoch ``e`` is a pure function of ``(seed, e, r, j)``:

* with replacement: ``u = counter_uniform(key(seed, e, r), j)`` and the index is the
  first ``i`` with ``cdf[i] > u * total`` (inverse-CDF by binary search, O(log N) per draw,
  8 bytes of CDF per sample, vectorised). Zero-weight samples are never drawn.
* without replacement (uniform shuffling): position ``j`` of rank ``r`` is global position
  ``r + j * world_size`` of a seeded pseudo-random permutation of ``[0, N)`` evaluated
  pointwise by a 4-round Feistel network with cycle walking, so no O(N) permutation is
  materialised and any position can be computed alone.

So a DALI parallel external source can compute any sample in any worker, DALI checkpoints
restore it exactly, and resuming at position ``k`` is ``index_at(epoch, arange(k, n))``.
Each rank gets ``ceil(num_samples / world_size)`` draws; ranks use independent streams
(different keys), so their union has the target distribution. Pure NumPy (no torch import);
it also satisfies ``torch.utils.data.Sampler``'s protocol (``__iter__``, ``__len__``,
``set_epoch``), so it can be passed as a DataLoader ``sampler``.
"""
from __future__ import annotations

import sys

import numpy as np

from fastcas._rng import counter_bits, counter_uniform, derive_key
from fastcas.weights import check_weights

_DRAW, _PERM = 0xD1, 0x9E  # purpose tags in the key derivation


def _dist_defaults(rank, world_size) -> tuple[int, int]:
    """rank/world size from torch.distributed when it is already imported and initialised."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return (dist.get_rank() if rank is None else int(rank),
                dist.get_world_size() if world_size is None else int(world_size))
    return (0 if rank is None else int(rank)), (1 if world_size is None else int(world_size))


class FeistelPermutation:
    """A pseudo-random bijection of ``[0, n)`` evaluated pointwise (vectorised).

    Balanced Feistel network on ``2 * half`` bits (the smallest even width covering ``n``)
    with SplitMix64 round functions, plus cycle walking: values that land outside ``[0, n)``
    are permuted again until they land inside (expected < 4 rounds since 2^bits < 4n).
    """

    ROUNDS = 4

    def __init__(self, n: int, key: np.uint64):
        if n < 1:
            raise ValueError(f"permutation size must be >= 1, got {n}")
        self.n = int(n)
        bits = max(2, int(self.n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = [derive_key(int(key), r) for r in range(self.ROUNDS)]

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (counter_bits(k, right) & self.mask)
        return (left << h) | right

    def __call__(self, positions) -> np.ndarray:
        x = np.asarray(positions, np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.n):
            raise ValueError(f"positions must be in [0, {self.n})")
        y = self._round_trip(x.astype(np.uint64))
        out_of_range = y >= np.uint64(self.n)
        while out_of_range.any():
            y[out_of_range] = self._round_trip(y[out_of_range])
            out_of_range = y >= np.uint64(self.n)
        return y.astype(np.int64)


class WeightedSampler:
    """Weighted (or uniformly shuffled) sample indices for one rank.

    Args:
        weights: float [N] non-negative, not all zero (not necessarily normalised), or an
            int ``N`` for uniform weights without storing them.
        num_samples: draws per epoch over all ranks (default N).
        seed, rank, world_size: the stream; rank/world_size default to torch.distributed's
            when it is initialised, else 0 / 1.
        replacement: False gives a uniform shuffle without replacement (weights must be
            uniform); ``num_samples > N`` then concatenates independent permutations.
    """

    def __init__(self, weights, num_samples: int | None = None, *, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, replacement: bool = True):
        rank, world_size = _dist_defaults(rank, world_size)
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if isinstance(weights, (int, np.integer)):
            if weights < 1:
                raise ValueError(f"the dataset size must be >= 1, got {weights}")
            self.n, self._cdf = int(weights), None
        else:
            w = check_weights(weights)
            self.n = len(w)
            self._cdf = None if np.all(w == w[0]) else np.cumsum(w)
        self.num_samples = self.n if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not replacement and self._cdf is not None:
            raise ValueError("replacement=False supports uniform weights only (a shuffling baseline)")
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.replacement = bool(replacement)
        self.epoch = 0
        if self._cdf is not None:
            self._total = float(self._cdf[-1])
            self._last = int(np.flatnonzero(np.diff(np.concatenate([[0.0], self._cdf])) > 0)[-1])

    # -- the stream ------------------------------------------------------------------------
    @property
    def per_rank(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        return self.per_rank

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def index_at(self, epoch: int, positions) -> np.ndarray:
        """int64 indices of this rank's draws at ``positions`` (ints in [0, len(self)))."""
        pos = np.asarray(positions, np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.per_rank):
            raise ValueError(f"positions must be in [0, {self.per_rank}) for this rank")
        if self.replacement:
            u = counter_uniform(derive_key(self.seed, _DRAW, epoch, self.rank), pos)
            if self._cdf is None:
                return np.minimum((u * self.n).astype(np.int64), self.n - 1)
            idx = np.searchsorted(self._cdf, u * self._total, side="right")
            return np.minimum(idx, self._last).astype(np.int64)
        g = self.rank + pos * self.world_size  # global position, strided over ranks
        # Ranks share the permutation; positions past num_samples wrap to its start (like
        # torch's DistributedSampler padding) so every rank yields the same count.
        g = g % self.num_samples
        rnd, within = np.divmod(g, self.n)
        out = np.empty_like(g)
        for r in np.unique(rnd):  # one permutation per pass over the data (few)
            sel = rnd == r
            out[sel] = self._permutation(int(epoch), int(r))(within[sel])
        return out

    def _permutation(self, epoch: int, round_: int) -> "FeistelPermutation":
        # Cached: a source asks for the same epoch's permutation once per batch.
        cache = self.__dict__.setdefault("_perm_cache", {})
        key = (epoch, round_)
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[key] = FeistelPermutation(self.n, derive_key(self.seed, _PERM, epoch, round_))
        return cache[key]

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """int64 [len(self)]: this rank's draws for ``epoch`` (default: the current one)."""
        return self.index_at(self.epoch if epoch is None else epoch, np.arange(self.per_rank))

    def __iter__(self):
        for chunk_start in range(0, self.per_rank, 65536):
            pos = np.arange(chunk_start, min(chunk_start + 65536, self.per_rank))
            yield from self.index_at(self.epoch, pos).tolist()

    def probabilities(self) -> np.ndarray:
        """float64 [N]: the target probability of each sample per draw."""
        if self._cdf is None:
            return np.full(self.n, 1.0 / self.n)
        return np.diff(np.concatenate([[0.0], self._cdf])) / self._total

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "rank": self.rank, "world_size": self.world_size}

    def __repr__(self) -> str:
        kind = "uniform" if self._cdf is None else "weighted"
        return (f"WeightedSampler({kind}, n={self.n}, num_samples={self.num_samples}, seed={self.seed}, "
                f"rank={self.rank}/{self.world_size}, replacement={self.replacement})")
