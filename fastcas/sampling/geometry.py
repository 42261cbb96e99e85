"""One global sample stream per epoch, split over ranks in contiguous blocks (elastic resume).

The key scheme:

* Epoch ``e`` is a sequence of global positions ``g = 0, 1, 2, ...``. Everything random at
  ``g`` is a pure function of ``(seed, purpose, e, stream, g)``: the sample index
  (:class:`fastcas.sampling.sampler.WeightedSampler.global_index_at`), the crop window and flip
  (:mod:`fastcas.loading.augment`, keyed by ``(seed, e, stream)`` with counter ``g``) and the mixing
  parameters (:func:`fastcas.mix.make_params_at`, keyed by ``(seed, e)`` and ``g``).
* With ``W`` ranks and per-rank batch ``b`` the global batch is ``G = W * b``. At global
  step ``t`` rank ``r`` consumes positions ``t * G + r * b + i`` for ``i in [0, b)``: one
  contiguous block per rank per step. So the union over ranks of step ``t`` is
  ``[t * G, (t + 1) * G)`` whatever ``(W, b)`` are, as long as ``G`` is the same, and a state
  that records the global position consumed (always a multiple of ``G``) can be resumed at
  any ``(W', b')`` with ``W' * b' = G``.
* With another global batch the step boundaries move, so such a state is refused (a clear
  ``ValueError``); start the epoch again (``set_epoch``) to change the global batch.

The last step of an epoch of ``E`` positions (``last_batch``): ``"drop"`` skips the
``E mod G`` tail; ``"pad"`` fills the last step with positions past ``E``, which samplers
wrap to the start of the epoch (like torch's ``DistributedSampler`` padding); ``"partial"``
gives every rank ``b' = ceil((E - t * G) / W)`` positions of the last step
(``t * G + r * b' + i``; those past ``E`` wrap, as padding), so every position before ``E`` is
consumed once and all ranks take equally many steps (DDP needs that); only that last step's
split depends on ``W``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

LAST_BATCH = ("drop", "partial", "pad")


@dataclass(frozen=True)
class StreamGeometry:
    """How one epoch of ``num_samples`` global positions is cut into steps and ranks.

    num_samples: positions per epoch (E). world_size: W. batch_size: per-rank batch b.
    last_batch: ``drop`` | ``partial`` | ``pad`` (see the module docstring).
    """

    num_samples: int
    world_size: int = 1
    batch_size: int = 1
    last_batch: str = "drop"

    def __post_init__(self):
        for name in ("num_samples", "world_size", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.last_batch not in LAST_BATCH:
            raise ValueError(f"unknown last_batch {self.last_batch!r}; expected one of {', '.join(LAST_BATCH)}")

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    @property
    def steps(self) -> int:
        """Steps per epoch (the same on every rank)."""
        full, rem = divmod(self.num_samples, self.global_batch)
        return full + (1 if rem and self.last_batch != "drop" else 0)

    def step_size(self, step: int) -> int:
        """Positions each rank consumes at ``step`` (b, or fewer at a ``partial`` last step)."""
        if not 0 <= step < self.steps:
            raise ValueError(f"step must be in [0, {self.steps}), got {step}")
        rem = self.num_samples - step * self.global_batch
        if self.last_batch == "partial" and rem < self.global_batch:
            return -(-rem // self.world_size)
        return self.batch_size

    def positions(self, step: int, rank: int, padded: bool = False) -> np.ndarray:
        """int64 global positions of ``rank`` at ``step`` (``[step_size]``; ``[b]`` with
        ``padded``: the block continued past its end, for pipelines with a fixed batch size)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got rank={rank}")
        n = self.step_size(step)
        start = step * self.global_batch + rank * n
        return np.arange(start, start + (self.batch_size if padded else n), dtype=np.int64)

    def rank_positions(self, rank: int, start_step: int = 0) -> np.ndarray:
        """int64: every position ``rank`` consumes in an epoch from ``start_step`` on, in order."""
        parts = [self.positions(t, rank) for t in range(start_step, self.steps)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def local_to_global(self, local, rank: int) -> np.ndarray:
        """int64 global positions of rank-local draws ``local`` (the j-th draw of this rank in the
        epoch, counting ``b`` per step; a partial last step is padded to ``b``)."""
        j = np.asarray(local, np.int64)
        if self.batch_size == 1:  # fast path (a partial last step of b = 1 is a full one)
            return j * self.world_size + rank
        t, i = np.divmod(j, self.batch_size)
        G = self.global_batch
        rem = self.num_samples - t * G
        n = np.full_like(t, self.batch_size)
        if self.last_batch == "partial":
            n = np.where(rem < G, -(-rem // self.world_size), n)
        return t * G + rank * n + i

    def consumed(self, step: int) -> int:
        """Global position consumed after ``step`` whole steps (a multiple of G)."""
        return int(step) * self.global_batch

    def step_at(self, position: int, what: str = "state") -> int:
        """The step that starts at global ``position`` (ValueError if not a step boundary)."""
        position = int(position)
        if position < 0 or position % self.global_batch:
            raise ValueError(f"{what}: global position {position} is not a multiple of the global batch "
                             f"{self.global_batch} (a step boundary)")
        return position // self.global_batch


def digest(*parts) -> str:
    """A short stable hex digest of JSON-able values and arrays (sha256, 16 hex digits)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def check_same(saved: dict, current: dict, keys, where: str) -> None:
    """ValueError naming every key whose saved value differs from the current one."""
    diffs = [f"{k} (saved {saved.get(k)!r}, now {current.get(k)!r})" for k in keys
             if k in saved and saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError(f"{where}: the state was saved with a different configuration: " + "; ".join(diffs))
