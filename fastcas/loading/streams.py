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

Remote shards: when the read frontier (local draw + shuffle buffer) enters shard ``k`` of this
rank's read order, shards ``k .. k + ahead`` are downloaded on a background thread
(:meth:`fastcas.dataset.reader.ShardReader.prefetch`), never further, so an LRU cache a few shards
large keeps every shard a rank is still reading (its shards are mmapped by the process reading
them, which keeps an evicted shard readable there). The plan is recomputed in every process that
asks (DALI workers included): nothing mutable is shared.
"""
from __future__ import annotations

import numpy as np

from fastcas.core.rng import derive_key
from fastcas.sampling.streaming import StreamingSampler

PURPOSE = 0x5C  # the purpose key mixed into a second (foreground) stream's seed


def stream_seed(seed: int, stream: int) -> int:
    """The StreamingSampler seed of ``stream``: the loader's seed for stream 0, a key derived
    from ``(seed, PURPOSE, stream)`` for the foreground stream (independent draws)."""
    return int(seed) if stream == 0 else int(derive_key(int(seed), PURPOSE, int(stream)) >> np.uint64(1))


class StreamIndex:
    """Streaming-mode sampler of one stream on one rank (see the module docstring).

    ``sampler``: the rank's StreamingSampler; ``geometry``: the loader's StreamGeometry;
    ``ahead``: shards downloaded ahead of the read frontier (remote datasets)."""

    def __init__(self, sampler: StreamingSampler, geometry, ahead: int = 1):
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self.sampler, self.geometry, self.ahead = sampler, geometry, int(ahead)
        self.rank = sampler.rank
        self.resume: tuple | None = None  # (epoch, first local draw, sampler state) at another world size
        self._cache: dict = {}
        self._prefetched: set = set()

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}, "_prefetched": set()}

    def __len__(self) -> int:
        return -(-self.sampler.num_samples // self.sampler.world_size)

    def _config(self) -> dict:
        return {**self.sampler._config(), "mode": "streaming"}

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

    def state_dict(self, epoch: int, consumed: int) -> dict:
        """The StreamingSampler state after this rank's first ``consumed`` local draws of ``epoch``."""
        _, start = self.epoch_indices(epoch)
        return self._cache[epoch][2].state_dict(consumed=max(0, int(consumed) - start))

    def load(self, state: dict, epoch: int, start: int, saved_world_size: int) -> None:
        """Continue ``epoch`` at local draw ``start`` from a :meth:`state_dict` saved at
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

    def shards_ahead(self, epoch: int, g) -> list[int]:
        """The shards to download now for a batch at global positions ``g``: the one the read
        frontier (last draw + shuffle buffer) is in and the ``ahead`` shards after it."""
        if self.ahead == 0 or len(g) == 0:
            return []
        order, start = self.epoch_indices(epoch)
        hit = self._cache[epoch]
        fresh = hit[2]
        seg = fresh._resume["segment"] if fresh._resume is not None else fresh._segment(epoch)
        shards = seg["shards"][self.rank::fresh.world_size] or seg["shards"][:1]
        lens = [int(fresh.counts(epoch, int(fresh.starts[s]), int(fresh.starts[s + 1])).sum()) for s in shards]
        frontier = int(self.local_of(g).max()) - start + self.sampler.shuffle_buffer
        if frontier >= sum(lens):  # past the end: nothing more to read (no wrap to the first shard)
            return []
        k = int(np.searchsorted(np.cumsum(lens), frontier, side="right"))
        # the frontier's own shard too: otherwise a download of k + 1 could evict k before it is opened
        want = [int(shards[j]) for j in range(min(k, len(shards) - 1), min(len(shards), k + 1 + self.ahead))]
        new = [s for s in want if (epoch, s) not in self._prefetched]
        self._prefetched.update((epoch, s) for s in new)
        return new


def make_stream(reader, p: np.ndarray, num: int, *, seed: int, stream: int, rank: int, world_size: int,
                shuffle_buffer: int, geometry) -> StreamIndex:
    """A StreamIndex over ``reader``'s shards for weights ``p`` (float [N], sums to 1)."""
    sampler = StreamingSampler(np.diff(reader.starts), p, num, seed=stream_seed(seed, stream), rank=rank,
                               world_size=world_size, shuffle_buffer=shuffle_buffer)
    return StreamIndex(sampler, geometry)


def from_loader(loader, name: str, stream: int) -> StreamIndex:
    """The StreamIndex of weights ``name`` for ``loader``'s rank (its CDF is the one exact mode
    would sample from: :func:`fastcas.sampling.shared.shared_cdf`)."""
    from fastcas.sampling.geometry import StreamGeometry
    from fastcas.sampling.shared import shared_cdf

    from fastcas.loading.config import DEFAULT_SHUFFLE_BUFFER

    cfg, reader = loader.config, loader.reader
    num = cfg.epoch_length or len(reader)
    p = np.ones(len(reader))
    if name != "uniform":
        cdf, _ = shared_cdf(reader, name, scores=loader.scores, scores_id=loader._scores_id, b=cfg.b, r=cfg.r)
        if cdf is not None:
            p = np.diff(np.asarray(cdf, np.float64), prepend=0.0)
    geometry = StreamGeometry(num, loader.world_size, cfg.batch_size, cfg.last_batch)
    buf = DEFAULT_SHUFFLE_BUFFER if cfg.shuffle_buffer is None else cfg.shuffle_buffer
    return make_stream(reader, p, num, seed=cfg.seed, stream=stream, rank=loader.rank,
                       world_size=loader.world_size, shuffle_buffer=buf, geometry=geometry)
