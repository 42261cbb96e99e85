"""A stateless, distributed, resumable weighted sampler over one global stream per epoch.

Global position ``g`` of epoch ``e`` (stream ``s``: 0, or 1 for a two-stream recipe's
foreground) has its sample index as a pure function of ``(seed, e, s, g)``:

* with replacement: ``u = counter_uniform(key(seed, e, s), g)`` and the index is the
  first ``i`` with ``cdf[i] > u * total`` (inverse-CDF by binary search, O(log N) per draw,
  8 bytes of CDF per sample, vectorised). Zero-weight samples are never drawn.
* without replacement (uniform shuffling): position ``g`` is position ``g mod N`` of the
  ``g // N``-th seeded pseudo-random permutation of ``[0, N)`` of the epoch, evaluated
  pointwise by a 4-round Feistel network with cycle walking, so no O(N) permutation is
  materialised and any position can be computed alone.

Positions past ``num_samples`` (padding) wrap to the start of the epoch. Ranks split the
global stream as :mod:`fastcas.sampling.geometry` says: with per-rank batch ``b`` (``batch_size``,
default 1) rank ``r`` of ``W`` takes positions ``t * W * b + r * b + i`` at step ``t``, so
ranks read disjoint positions of one stream and the union has the target distribution; each
rank gets ``ceil(num_samples / (W * b)) * b`` draws. A state saved at ``(W, b)`` resumes at
any ``(W', b')`` with the same global batch ``W * b`` (:meth:`WeightedSampler.state_dict`).
So a DALI parallel external source can compute any sample in any worker, and resuming is
``index_at(epoch, arange(k, n))``. Pure NumPy (no torch import); it also satisfies
``torch.utils.data.Sampler``'s protocol (``__iter__``, ``__len__``, ``set_epoch``), so it
can be passed as a DataLoader ``sampler``.
"""
from __future__ import annotations

import sys

import numpy as np

from fastcas.core import npy
from fastcas.core.rng import counter_bits, counter_uniform, derive_key
from fastcas.sampling.geometry import StreamGeometry, check_same, digest
from fastcas.sampling.protocol import IndexSampler
from fastcas.sampling.weights import check_weights

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


class WeightedSampler(IndexSampler):
    """Weighted (or uniformly shuffled) sample indices for one rank of one global stream.

    Args:
        weights: float [N] non-negative, not all zero (not necessarily normalised), or an
            int ``N`` for uniform weights without storing them.
        num_samples: global positions per epoch over all ranks (default N).
        seed, rank, world_size: the stream; rank/world_size default to torch.distributed's
            when it is initialised, else 0 / 1.
        replacement: False gives a uniform shuffle without replacement (weights must be
            uniform); ``num_samples > N`` then concatenates independent permutations.
        stream: which stream of a multi-stream recipe (0; CMO's foreground is 1).
        batch_size: the per-rank batch ``b`` of the training loop (default 1: ranks take
            positions ``r, r + W, r + 2W, ...``). Set it when the sampler feeds a DataLoader
            and you want :meth:`load_state_dict` to accept a state saved at another world size
            with the same global batch ``W * b``.
    """

    def __init__(self, weights, num_samples: int | None = None, *, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, replacement: bool = True, stream: int = 0, batch_size: int = 1,
                 weights_digest: str | None = None):
        rank, world_size = _dist_defaults(rank, world_size)
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if int(stream) < 0:
            raise ValueError(f"stream must be a non-negative integer, got {stream}")
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
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not replacement and self._cdf is not None:
            raise ValueError("replacement=False supports uniform weights only (a shuffling baseline)")
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.stream, self.batch_size = int(stream), int(batch_size)
        self.replacement = bool(replacement)
        self.geometry = StreamGeometry(self.num_samples, world_size, self.batch_size, "pad")
        self.epoch = 0
        self._start_step = 0   # a resumed epoch starts at this step
        self._yielded = 0      # this rank's draws handed out by __iter__ in this epoch
        if weights_digest is not None:
            self._weights_digest = str(weights_digest)  # O(1) identity given by the caller
        if self._cdf is not None:
            self._set_cdf(self._cdf)

    def _set_cdf(self, cdf) -> None:
        self._cdf = cdf
        self._total = float(cdf[-1])
        # the last sample of positive weight: where the CDF first reaches its total (O(log N))
        self._last = int(np.searchsorted(cdf, cdf[-1], side="left"))

    @classmethod
    def from_cdf(cls, cdf, num_samples: int | None = None, *, weights_digest: str, **kwargs) -> "WeightedSampler":
        """A weighted sampler over a precomputed float64 CDF [N] (``np.cumsum`` of checked
        weights, e.g. memory-mapped and shared by every process, see
        :mod:`fastcas.dataset.derived`); ``weights_digest`` names the weights in checkpoints.
        Draws equal those of ``WeightedSampler(weights, ...)`` with the same weights.
        A memory-mapped CDF pickles as its path (spawned DALI workers map the same pages)."""
        s = cls(len(cdf), num_samples, weights_digest=weights_digest, **kwargs)
        s._set_cdf(cdf)
        return s

    def __getstate__(self):
        state = self.__dict__.copy()
        cdf = state.get("_cdf")
        if isinstance(cdf, np.memmap) and cdf.filename and cdf.shape == npy.load(cdf.filename, mmap_mode="r").shape:
            state["_cdf"] = ("mmap", cdf.filename)
        return state

    def __setstate__(self, state):
        cdf = state.get("_cdf")
        if isinstance(cdf, tuple) and cdf and cdf[0] == "mmap":
            state["_cdf"] = npy.load(cdf[1], mmap_mode="r")
        self.__dict__.update(state)

    # -- the stream ------------------------------------------------------------------------
    @property
    def per_rank(self) -> int:
        """Draws per rank per epoch (``ceil(num_samples / (W * b)) * b``)."""
        return self.geometry.steps * self.batch_size

    def __len__(self) -> int:
        return self.per_rank - self._start_step * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if int(epoch) != self.epoch:  # keep a loaded mid-epoch position for its own epoch
            self._start_step, self._yielded = 0, 0
        self.epoch = int(epoch)

    def global_index_at(self, epoch: int, positions) -> np.ndarray:
        """int64 indices at global ``positions`` (ints >= 0) of ``epoch``; the same on every rank.
        Positions past ``num_samples`` (padding) wrap to the start of the epoch."""
        g = np.asarray(positions, np.int64)
        if g.size and g.min() < 0:
            raise ValueError("global positions must be >= 0")
        if g.size and g.max() >= self.num_samples:
            g = g % self.num_samples
        if self.replacement:
            u = counter_uniform(derive_key(self.seed, _DRAW, epoch, self.stream), g)
            if self._cdf is None:
                return np.minimum((u * self.n).astype(np.int64), self.n - 1)
            idx = np.searchsorted(self._cdf, u * self._total, side="right")
            return np.minimum(idx, self._last).astype(np.int64)
        rnd, within = np.divmod(g, self.n)
        out = np.empty_like(g)
        for r in np.unique(rnd):  # one permutation per pass over the data (few)
            sel = rnd == r
            out[sel] = self._permutation(int(epoch), int(r))(within[sel])
        return out

    def index_at(self, epoch: int, positions) -> np.ndarray:
        """int64 indices of this rank's draws at rank-local ``positions`` (ints in
        [0, per_rank)): draw ``j`` is global position ``local_to_global(j)`` (blocks of b)."""
        pos = np.asarray(positions, np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.per_rank):
            raise ValueError(f"positions must be in [0, {self.per_rank}) for this rank")
        return self.global_index_at(epoch, self.geometry.local_to_global(pos, self.rank))

    def _permutation(self, epoch: int, round_: int) -> "FeistelPermutation":
        # Cached: a source asks for the same epoch's permutation once per batch.
        cache = self.__dict__.setdefault("_perm_cache", {})
        key = (epoch, round_)
        if key not in cache:
            if len(cache) > 8:
                cache.clear()
            cache[key] = FeistelPermutation(self.n, derive_key(self.seed, _PERM, epoch, self.stream, round_))
        return cache[key]

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """int64 [per_rank]: this rank's draws for ``epoch`` (default: the current one)."""
        return self.index_at(self.epoch if epoch is None else epoch, np.arange(self.per_rank))

    def __iter__(self):
        start = self._start_step * self.batch_size
        self._yielded = start
        for chunk_start in range(start, self.per_rank, 65536):
            pos = np.arange(chunk_start, min(chunk_start + 65536, self.per_rank))
            for i in self.index_at(self.epoch, pos).tolist():
                self._yielded += 1
                yield i

    def probabilities(self) -> np.ndarray:
        """float64 [N]: the target probability of each sample per draw."""
        if self._cdf is None:
            return np.full(self.n, 1.0 / self.n)
        return np.diff(np.concatenate([[0.0], self._cdf])) / self._total

    # -- state -----------------------------------------------------------------------------
    def identity(self) -> dict:
        """What must match to resume this stream (seed, stream, sizes, ``weights_digest``, global batch)."""
        if "_weights_digest" not in self.__dict__:
            self._weights_digest = digest("uniform", self.n) if self._cdf is None else digest(self._cdf)
        return {"seed": self.seed, "stream": self.stream, "n": self.n, "num_samples": self.num_samples,
                "replacement": self.replacement, "weights_digest": self._weights_digest,
                "global_batch": self.geometry.global_batch}

    def legacy_digest(self) -> str:
        """The weights digest of fastcas before O(1) digests (a hash of every CDF value)."""
        return digest("uniform", self.n) if self._cdf is None else digest(np.asarray(self._cdf))

    def state_dict(self, consumed: int | None = None) -> dict:
        """The global position consumed in the current epoch plus what must match to resume.

        consumed: this rank's draws the training loop has used this epoch (e.g.
        ``step * batch_size``), whole batches. Default: what this sampler's iterator has
        yielded, which is exact for a DataLoader with ``num_workers=0`` but runs ahead of the
        loop with worker processes (they prefetch): pass ``consumed`` then.
        """
        k = self._yielded if consumed is None else int(consumed)
        if k < 0 or k % self.batch_size:
            raise ValueError(f"consumed must be a non-negative multiple of batch_size={self.batch_size}, got {k}")
        return {"epoch": self.epoch, "position": self.geometry.consumed(k // self.batch_size),
                "rank": self.rank, "world_size": self.world_size, "batch_size": self.batch_size, **self.identity()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the global stream where ``state`` stopped, at this sampler's own rank,
        world size and batch size (which may differ from the saved ones if the global batch
        is the same). A state at or past the end of its epoch starts the next epoch."""
        check_same(state, self.identity(), ("seed", "stream", "n", "weights_digest", "num_samples",
                                            "replacement", "global_batch"), "WeightedSampler.load_state_dict")
        epoch, step = int(state["epoch"]), self.geometry.step_at(state.get("position", 0))
        if step >= self.geometry.steps:
            epoch, step = epoch + 1, 0
        self.epoch, self._start_step, self._yielded = epoch, step, step * self.batch_size

    def __repr__(self) -> str:
        kind = "uniform" if self._cdf is None else "weighted"
        return (f"WeightedSampler({kind}, n={self.n}, num_samples={self.num_samples}, seed={self.seed}, "
                f"stream={self.stream}, rank={self.rank}/{self.world_size}, batch_size={self.batch_size}, "
                f"replacement={self.replacement})")
