"""The sampler protocol: what the Loader, its sample source and its checkpoints ask of the index
plan of one stream (``Loader.streams``), declared once instead of probed with ``hasattr``.

Implemented by :class:`fastcas.sampling.sampler.WeightedSampler` (and
:class:`fastcas.sampling.plan.PlanSampler`), :class:`SequentialIndex` (evaluation order) and
:class:`fastcas.loading.streams.StreamIndex` (streaming mode). A class implements it by
subclassing :class:`IndexSampler` (which also gives the no-op defaults) and defining
:meth:`~IndexSampler.global_index_at` and :meth:`~IndexSampler.identity`.

* ``global_index_at(epoch, g)``: int64 [n] sample indices at global positions ``g`` (int64 [n])
  of ``epoch``, a pure function of the sampler's keys: any process computes any position.
* ``identity()``: the public identity checked when a state is resumed; ``identity()
  ["weights_digest"]`` names the weights (O(1)).
* ``legacy_digest()``: the weights digest fastcas wrote before O(1) digests (older checkpoints).
* ``shard_window(epoch, g)``: ``(hold, fetch)`` shard ids to pin and to download for a batch at
  ``g``, or None (no shard window: exact-mode draws read any shard at any time).
* ``state(epoch, consumed)`` / ``restore(state, epoch, start, saved_world_size)``: the sampler's
  own state after this rank's first ``consumed`` local draws of ``epoch``, and continuing from
  one (None / no-op for stateless samplers: the loader's global position is their whole state).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from fastcas.sampling.geometry import digest


@runtime_checkable
class IndexSampler(Protocol):
    """The index plan of one stream on one rank (see the module docstring)."""

    def global_index_at(self, epoch: int, positions) -> np.ndarray: ...

    def identity(self) -> dict: ...

    def legacy_digest(self) -> str:
        return "sequential"

    def shard_window(self, epoch: int, positions) -> tuple[list[int], list[int]] | None:
        return None

    def state(self, epoch: int, consumed: int) -> dict | None:
        return None

    def restore(self, state: dict | None, epoch: int, start: int, saved_world_size: int) -> None:
        return None


class SequentialIndex(IndexSampler):
    """Evaluation order, as torch's ``DistributedSampler`` without shuffling: rank ``r`` takes
    samples ``r, r + W, r + 2W, ...`` of ``[0, n)``. Every rank has ``len() = ceil(n / W)``
    positions, so all ranks take equally many batches; a position past ``n`` (at most one per
    rank) wraps to the start of the split and is padding: ``real`` counts this rank's positions
    before it. Global position ``g`` is sample ``g mod n`` (rank-local position ``p`` of rank
    ``r`` is global ``r + p * W``)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __len__(self) -> int:
        return -(-self.n // self.world_size)

    @property
    def real(self) -> int:
        """This rank's samples before padding (positions ``[0, real)`` are each read once)."""
        return max(0, -(-(self.n - self.rank) // self.world_size))

    def global_index_at(self, epoch: int, positions) -> np.ndarray:
        return np.asarray(positions, np.int64) % max(self.n, 1)

    def index_at(self, epoch: int, positions) -> np.ndarray:
        """int64 sample indices at this rank's local ``positions``."""
        return self.global_index_at(epoch, self.rank + np.asarray(positions, np.int64) * self.world_size)

    def identity(self) -> dict:
        return {"n": self.n, "weights_digest": "sequential"}


def weights_digest(streams, b: float, r: float) -> str:
    """The digest of every stream's weights (and the CAS/CMO exponents) kept in a loader's state."""
    return digest([s.identity()["weights_digest"] for s in streams], b, r)
