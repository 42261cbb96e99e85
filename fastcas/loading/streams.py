"""The index plan of ``Loader(mode="streaming")``: each rank reads its own shards in order.

:class:`StreamIndex` wraps a :class:`fastcas.sampling.streaming.StreamingSampler` so the
stateless :class:`fastcas.loading.source.SampleSource` can ask it, like the exact-mode
samplers, for ``global_index_at(epoch, g)``. The loader's :class:`~fastcas.sampling.geometry.
StreamGeometry` is kept: global position ``g = t * W * b + r * n_t + i`` (``n_t`` = the step's
per-rank size) is rank ``r``'s local draw ``t * b + i``, and the sample there is the ``t*b+i``-th
index of that rank's streaming order (host int64, a pure function of ``(seed, epoch, rank,
world_size, shuffle_buffer)`` and, for a second stream, its purpose key). Crops, flips and mixing
parameters stay keyed by ``(seed, epoch, global position, stream)`` exactly as in exact mode, so
the two modes differ only in WHICH sample sits at a position.

Remote shards: for each batch a process reads, :meth:`StreamIndex.shard_window` names the shards
the batch and the batches its sibling workers may still be computing draw from (exact: the plan
says which draw takes which shard), plus ``ahead`` shards first drawn after it. The process pins
those in the shared cache (:meth:`fastcas.dataset.reader.ShardReader.hold`), so no process evicts
a shard another still reads, downloads the new ones on a background thread and never anything
further. The plan is recomputed in every process that asks (DALI workers included): nothing
mutable is shared but the pins.
"""
from __future__ import annotations

import numpy as np

from fastcas.core.rng import derive_key
from fastcas.loading.config import DEFAULT_SHUFFLE_BUFFER
from fastcas.sampling.geometry import StreamGeometry
from fastcas.sampling.protocol import IndexSampler
from fastcas.sampling.shared import shared_cdf
from fastcas.sampling.streaming import StreamingSampler

PURPOSE = 0x5C  # the purpose key mixed into a second (foreground) stream's seed


def stream_seed(seed: int, stream: int) -> int:
    """The StreamingSampler seed of ``stream``: the loader's seed for stream 0, a key derived
    from ``(seed, PURPOSE, stream)`` for the foreground stream (independent draws)."""
    return int(seed) if stream == 0 else int(derive_key(int(seed), PURPOSE, int(stream)) >> np.uint64(1))


class StreamIndex(IndexSampler):
    """Streaming-mode sampler of one stream on one rank (see the module docstring).

    ``sampler``: the rank's StreamingSampler; ``geometry``: the loader's StreamGeometry;
    ``ahead``: shards downloaded ahead of the batch being read (remote datasets); ``behind``:
    rank-local draws before a batch whose shards stay held (the batches sibling DALI workers
    may still be reading)."""

    def __init__(self, sampler: StreamingSampler, geometry, ahead: int = 1, behind: int = 0):
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        if behind < 0:
            raise ValueError(f"behind must be >= 0, got {behind}")
        self.sampler, self.geometry, self.ahead, self.behind = sampler, geometry, int(ahead), int(behind)
        self.rank = sampler.rank
        self.resume: tuple | None = None  # (epoch, first local draw, sampler state) at another world size
        self._cache: dict = {}
        self._requested: set = set()  # (epoch, shard) downloads requested in this process
        self._need = None

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}, "_requested": set(), "_need": None}

    def __len__(self) -> int:
        return -(-self.sampler.num_samples // self.sampler.world_size)

    def identity(self) -> dict:
        return {**self.sampler.identity(), "mode": "streaming"}

    def set_resume(self, epoch: int, start: int, state: dict) -> None:
        """Continue ``epoch`` from local draw ``start`` with a sampler state saved at another
        world size (shard-granular, :meth:`StreamingSampler.load_state_dict`)."""
        self.resume = (int(epoch), int(start), state)
        self._cache.clear()

    def epoch_indices(self, epoch: int) -> tuple[np.ndarray, int]:
        """(int64 [n] this rank's read order in ``epoch``, local draw of its first entry)."""
        hit = self._cache.get(epoch)
        if hit is None:
            s = self.sampler
            fresh = StreamingSampler(np.diff(s.starts), s.p, s.num_samples, seed=s.seed, rank=s.rank,
                                     world_size=s.world_size, shuffle_buffer=s.shuffle_buffer)
            start = 0
            if self.resume is not None and self.resume[0] == epoch:
                fresh.load_state_dict(self.resume[2])
                start = self.resume[1]
            if fresh.epoch != epoch:  # the saved state had finished its epoch
                fresh = StreamingSampler(np.diff(s.starts), s.p, s.num_samples, seed=s.seed, rank=s.rank,
                                         world_size=s.world_size, shuffle_buffer=s.shuffle_buffer)
            fresh.set_epoch(epoch)
            hit = (fresh.indices(epoch), start, fresh)
            self._cache = {epoch: hit}  # one epoch at a time: a rank's plan is E / W integers
        return hit[0], hit[1]

    def state(self, epoch: int, consumed: int) -> dict:
        """The StreamingSampler state after this rank's first ``consumed`` local draws of ``epoch``."""
        _, start = self.epoch_indices(epoch)
        return self._cache[epoch][2].state_dict(consumed=max(0, int(consumed) - start))

    def restore(self, state: dict, epoch: int, start: int, saved_world_size: int) -> None:
        """Continue ``epoch`` at local draw ``start`` from a :meth:`state` saved at
        ``saved_world_size``: at this world size the stream is a function of the keys (exact);
        at another, the sampler's shard-granular continuation (its docstring)."""
        if saved_world_size == self.sampler.world_size and state["segment"]["salt"] == 0:
            self.resume = None
            self._cache.clear()
            return
        self.set_resume(epoch, start, state)

    def local_of(self, g) -> np.ndarray:
        """int64 rank-local draws of this rank's global positions ``g`` (inverse of
        :meth:`StreamGeometry.local_to_global`)."""
        geo, g = self.geometry, np.asarray(g, np.int64)
        G, b, W = geo.global_batch, geo.batch_size, geo.world_size
        t, rem = np.divmod(g, G)
        n = np.full_like(t, b)
        if geo.last_batch == "partial":
            left = geo.num_samples - t * G
            n = np.where(left < G, -(-left // W), n)
        return t * b + (rem - self.rank * n)

    def global_index_at(self, epoch: int, g) -> np.ndarray:
        """int64 sample indices at this rank's global positions ``g`` of ``epoch``."""
        order, start = self.epoch_indices(epoch)
        local = self.local_of(g) - start
        return order[np.mod(local, len(order))]

    def _needs(self, epoch: int) -> tuple:
        """(shard ids, first need, last need) of this rank's plan in ``epoch``: each shard it
        reads, in the order of its first draw, with the first and last rank-local draw
        (relative to the plan's start) that takes a sample of it. Cached per epoch."""
        order, start = self.epoch_indices(epoch)
        key = (epoch, start, len(order))
        if self._need is None or self._need[0] != key:
            sh = np.searchsorted(self.sampler.starts, order, side="right") - 1
            ids, first = np.unique(sh, return_index=True)
            last = len(sh) - 1 - np.unique(sh[::-1], return_index=True)[1]
            o = np.argsort(first, kind="stable")
            self._need = (key, ids[o], first[o], last[o])
        return self._need[1:]

    def shard_window(self, epoch: int, g) -> tuple[list[int], list[int]]:
        """The shards to keep and to download for a batch at this rank's global positions ``g``:
        (hold, fetch). ``hold``: every shard some draw in ``[lo - behind, hi]`` takes a sample of
        (``lo``..``hi`` = the batch's local draws; ``behind`` covers the batches a sibling DALI
        worker may still be computing), plus the ``ahead`` shards first drawn after ``hi``.
        ``fetch``: those of ``hold`` not requested before in this process and epoch (downloaded in
        hold's order). The needs are exact (the plan is known), so a sample the shuffle buffer
        kept long still finds its shard held."""
        if len(g) == 0:
            return [], []
        ids, first, last = self._needs(epoch)
        order, start = self.epoch_indices(epoch)
        n = len(order)
        local = self.local_of(g) - start
        lo, hi = int(local.min()), int(local.max())
        spans = [(lo - self.behind, hi)]
        if hi >= n:  # a short rank cycles its plan: the wrapped part reads the plan's head again
            spans = [(lo - self.behind, n - 1), (max(0, lo - n) - self.behind, hi - n)]
        inside = np.zeros(len(ids), bool)
        for a, b in spans:
            inside |= (first <= b) & (last >= a)
        later = np.flatnonzero(first > min(hi, n - 1))[: self.ahead]
        hold = [int(s) for s in ids[inside]] + [int(s) for s in ids[later]]
        fetch = [s for s in hold if (epoch, s) not in self._requested]
        self._requested.update((epoch, s) for s in fetch)
        return hold, fetch


def make_stream(reader, p: np.ndarray, num: int, *, seed: int, stream: int, rank: int, world_size: int,
                shuffle_buffer: int, geometry, behind: int = 0) -> StreamIndex:
    """A StreamIndex over ``reader``'s shards for weights ``p`` (float [N], sums to 1)."""
    sampler = StreamingSampler(np.diff(reader.starts), p, num, seed=stream_seed(seed, stream), rank=rank,
                               world_size=world_size, shuffle_buffer=shuffle_buffer)
    return StreamIndex(sampler, geometry, behind=behind)


def from_options(cfg, reader, name: str, stream: int, *, rank: int, world_size: int, scores=None,
                 scores_id=None) -> StreamIndex:
    """The StreamIndex of weights ``name`` for ``rank`` of a Loader with LoaderConfig ``cfg``
    over ``reader`` (its CDF is the one exact mode would sample from:
    :func:`fastcas.sampling.shared.shared_cdf`)."""
    num = cfg.epoch_length or len(reader)
    if num < world_size:  # every rank refuses, not only the one that would draw nothing
        raise ValueError(f"mode='streaming' with {num} samples per epoch (epoch_length) and world size "
                         f"{world_size}: some ranks would draw no sample; use epoch_length >= world size")
    p = np.ones(len(reader))
    if name != "uniform":
        cdf, _ = shared_cdf(reader, name, scores=scores, scores_id=scores_id, b=cfg.cas_power, r=cfg.cmo_power)
        if cdf is not None:
            p = np.diff(np.asarray(cdf, np.float64), prepend=0.0)
    geometry = StreamGeometry(num, world_size, cfg.batch_size, cfg.last_batch)
    buf = DEFAULT_SHUFFLE_BUFFER if cfg.shuffle_buffer is None else cfg.shuffle_buffer
    # DALI's parallel source has max(py_workers, DALI's queue depth) batches in flight, one per
    # worker (fastcas.loading.pipeline.source_prefetch); the queue depth (2) is not the Loader's
    # `prefetch` (finished batches ahead of the consumer). Only py_workers > 1 has a sibling
    # worker to lag behind, and then the batches in flight are py_workers; the Loader's
    # `prefetch` widens the held window further as a margin (kept: changing it moves no sample)
    in_flight = max(cfg.py_workers, cfg.prefetch, 1)
    behind = in_flight * cfg.batch_size if cfg.py_workers > 1 else 0
    return make_stream(reader, p, num, seed=cfg.seed, stream=stream, rank=rank,
                       world_size=world_size, shuffle_buffer=buf, geometry=geometry, behind=behind)
