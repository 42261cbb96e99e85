"""A sampler over a fixed epoch plan: a given list of dataset indices (repeats allowed) read
once per epoch in a keyed order (the importance-sampling paper's resampled sets).

:func:`fastcas.sampling.weights.make_plan` builds the plan (undersampled subset or oversampled
list) once from the seed; :class:`PlanSampler` reads it like
:class:`~fastcas.sampling.sampler.WeightedSampler` reads a uniform shuffle: global position ``g``
of epoch ``e`` is ``plan[perm_e(g mod P)]`` where ``perm_e`` is the seeded Feistel permutation
of ``[0, P)`` of the epoch (P = plan length). So the epoch length is the plan length, every
plan entry is read once per epoch, ranks take the blocks :mod:`fastcas.sampling.geometry`
gives them, and the state (global position consumed) resumes at another world size with the
same global batch, exactly as the weighted sampler's.
"""
from __future__ import annotations

import numpy as np

from fastcas.sampling.geometry import digest
from fastcas.sampling.sampler import WeightedSampler


class PlanSampler(WeightedSampler):
    """Indices of ``plan`` (int [P], values in ``[0, n)``), one pass per epoch in a keyed order.

    Args:
        plan: dataset indices of one epoch, in any order (int array [P], P >= 1).
        n: the dataset size (every plan entry must be < n).
        num_samples: positions per epoch over all ranks (default P: one pass over the plan;
            more wraps into further passes, each in its own order).
        seed, rank, world_size, stream, batch_size: as :class:`WeightedSampler`.
        weights_digest: the plan's identity in checkpoints (default: a digest of the plan).
    """

    def __init__(self, plan, n: int, num_samples: int | None = None, *, weights_digest: str | None = None,
                 **kwargs):
        p = np.asarray(plan)
        if p.ndim != 1 or len(p) == 0 or not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"plan must be a non-empty 1-D integer array, got shape {p.shape} dtype {p.dtype}")
        if int(n) < 1 or p.min() < 0 or p.max() >= int(n):
            raise ValueError(f"plan indices must be in [0, n={n}), got [{p.min()}, {p.max()}]")
        self.plan = p.astype(np.int64)
        self.dataset_size = int(n)
        kwargs.pop("replacement", None)
        super().__init__(len(self.plan), num_samples, replacement=False,
                         weights_digest=weights_digest or digest("plan", self.dataset_size, self.plan), **kwargs)

    def global_index_at(self, epoch: int, positions) -> np.ndarray:
        """int64 dataset indices at global ``positions`` of ``epoch``: the plan entry at the
        epoch's permuted position (positions past ``num_samples`` wrap)."""
        return self.plan[super().global_index_at(epoch, positions)]

    def probabilities(self) -> np.ndarray:
        """float64 [n]: each dataset sample's share of one pass over the plan."""
        return np.bincount(self.plan, minlength=self.dataset_size) / len(self.plan)

    def __repr__(self) -> str:
        return (f"PlanSampler(plan={len(self.plan)} of n={self.dataset_size}, num_samples={self.num_samples}, "
                f"seed={self.seed}, stream={self.stream}, rank={self.rank}/{self.world_size}, "
                f"batch_size={self.batch_size})")
