"""The stateless per-sample source behind the DALI ``external_source`` (and the baseline).

``SampleSource(info)`` maps ``(epoch, idx_in_epoch)`` -> global position (``geometry``, see
:mod:`fastcas.sampling.geometry`) -> sampler index -> zero-copy JPEG bytes from the mmapped shards ->
``(jpeg, label, window, flip)`` for each stream, plus the index of a skipped broken sample per
stream (-1 if none). It holds no mutable state, so it can run in any DALI worker process, and
a resumed loader needs only ``(epoch, offset)``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from fastcas import mix
from fastcas.core.errors import CorruptSampleError, FastcasError
from fastcas.dataset import imagehdr
from fastcas.dataset.reader import ReopenSpec, ShardReader
from fastcas.loading.augment import augment_key
from fastcas.loading.layout import BatchLayout
from fastcas.loading.screen import jpeg_tables_error
from fastcas.loading.transforms import AugmentPolicy
from fastcas.loading.workers import arm_if_child_of, spawn_parent_hint
from fastcas.mix.kinds import KINDS as MIX_KINDS
from fastcas.mix.kinds import PASTE_KINDS
from fastcas.sampling.protocol import SequentialIndex  # noqa: F401 (its former home; fastcas.scoring imports it here)


def stream_indices(streams, epoch: int, local: np.ndarray, g: np.ndarray | None) -> list[np.ndarray]:
    """Per stream, int64 [n] sample indices of one batch: training reads global positions ``g``
    of the epoch's one stream; evaluation (``g`` None) this rank's ``local`` positions, which
    wrap at the rank's ``len()`` (padding repeats its first samples, DistributedSampler's rule).
    The one rule the source and :meth:`fastcas.loading.loader.Loader.plan` both use."""
    if g is None:
        return [s.index_at(epoch, np.asarray(local, np.int64) % len(s)) for s in streams]
    return [s.global_index_at(epoch, g) for s in streams]


@dataclass(frozen=True)
class PasteSpec:
    """Mixing inside the DALI graph (:mod:`fastcas.loading.pipeline`): the source draws each sample's
    parameters from its global position with :func:`fastcas.mix.make_params_at` and emits what
    the graph's operators take, plus ``lam``, so the targets are built from exactly the
    parameters applied. ``kind``: "cutmix" (``multi_paste`` arguments,
    :func:`fastcas.mix.paste_args`), "fmix" with binary masks (partner indices and uint8
    masks, 255 = foreground) or "saliencymix" (the pixel-free draws; the graph finds each box
    from the foreground's saliency, :mod:`fastcas.mix.graph_ops`). ``size``: the output side S."""

    kind: str
    size: int
    alpha: float = 1.0
    prob: float = 1.0
    mode: str = "elem"
    decay: float = 3.0
    start_epoch: int = 0  # the mixing schedule: prob is 0 outside [start_epoch, stop_epoch)
    stop_epoch: int | None = None

    def prob_at(self, epoch: int) -> float:
        """The mixing probability of ``epoch`` (0 outside the schedule's window)."""
        on = self.start_epoch <= epoch and (self.stop_epoch is None or epoch < self.stop_epoch)
        return self.prob if on else 0.0

    def __post_init__(self):
        if self.kind not in PASTE_KINDS:
            raise ValueError(f"mixing inside the pipeline takes {', '.join(PASTE_KINDS)}, got {self.kind!r}")


@dataclass(frozen=True)
class SourceConfig:
    """``streams``: samplers (one, or background + foreground for two-stream recipes);
    ``positions``: samples per epoch (steps x batch size, padded by wrapping);
    ``epoch0``/``offset``: the pipeline's first epoch number and the position it starts at
    (a mid-epoch resume); ``train``: draw crop windows and flips; ``strict``: raise on a
    broken sample instead of substituting the next readable one. ``geometry``: a
    :class:`fastcas.sampling.geometry.StreamGeometry` mapping this rank's positions to global positions
    of the epoch's one stream (training); None: the streams take rank-local positions
    (evaluation's :class:`SequentialIndex`)."""

    dataset: ReopenSpec | str  # the caller's reader's reopen spec (a dataset path: opened with the defaults)
    streams: tuple
    positions: int
    seed: int = 0
    rank: int = 0
    epoch0: int = 0
    offset: int = 0
    train: bool = True
    strict: bool = False
    batch_size: int = 1
    quarantine: frozenset = frozenset()  # sample indices DALI cannot decode: substituted like broken ones
    geometry: object = None
    max_pixels: int | None = imagehdr.DEFAULT_MAX_PIXELS  # refuse larger images (decompression bombs)
    paste: PasteSpec | None = None  # mixing in the graph: its parameters as outputs (training only)
    augment: object = None  # fastcas.loading.transforms.AugmentPolicy (None: the default imagenet policy)
    image_size: int = 224  # the output side S (the transform draws that depend on it: erasing)

    @property
    def policy(self):
        """The :class:`~fastcas.loading.transforms.AugmentPolicy` (the default when ``augment`` is None)."""
        return AugmentPolicy() if self.augment is None else self.augment


class SampleSource:
    def __init__(self, config: SourceConfig, *, on_fetch=None):
        """``on_fetch(i)``: called with the sample index each fetch returns (a substitute's for
        a skipped one), in the process that runs this source (fastcas.loading.faults finds
        which sample each slot of a failed batch got); DALI workers get a copy without it."""
        self.config = config
        self.on_fetch = on_fetch
        self._reader = None

    def __getstate__(self):
        return {"config": self.config, "on_fetch": None, "_reader": None, "_parent": spawn_parent_hint()}

    def __setstate__(self, state):
        state = dict(state)
        hint = state.pop("_parent", None)
        self.__dict__.update(state)
        arm_if_child_of(hint)  # a spawned worker exits when its parent dies

    @property
    def reader(self):
        if self._reader is None:
            # the caller's reader's own manifest file and cache settings (a path: the defaults)
            self._reader = ReopenSpec.of(self.config.dataset).with_errors("defer").open()
        return self._reader

    @property
    def layout(self) -> BatchLayout:
        """The names of :meth:`batch`'s outputs (:class:`fastcas.loading.layout.BatchLayout`)."""
        p = self.config.paste
        return BatchLayout(len(self.config.streams), None if p is None else p.kind,
                           self.config.policy.extra_fields(self.config.train))

    def fetch(self, index: int) -> tuple[np.ndarray, int, tuple[int, int], int]:
        """(encoded image as uint8 [n] view, label, displayed (w, h), skipped index or -1).
        Incomplete images and images over ``max_pixels`` are skipped (or raise with strict)."""
        reader, n = self.reader, len(self.reader)
        skipped = -1
        for probe in range(n):
            i = (index + probe) % n
            try:
                if i in self.config.quarantine:
                    raise CorruptSampleError(
                        f"sample {reader.keys[i]!r}: quarantined (DALI cannot decode it)", reader.keys[i]
                    )
                sample = reader[i]
                # the displayed size: the decoder applies EXIF orientation, so windows are drawn on it
                try:
                    header = imagehdr.parse(sample.data)
                    imagehdr.check_pixels(header, self.config.max_pixels)
                    why = jpeg_tables_error(sample.data) if header.format == "jpeg" else None
                    if why:  # the decoder would fail the whole batch: skipped here, no rebuild
                        raise imagehdr.ImageHeaderError(f"corrupt JPEG headers, the decoder would refuse it: {why}")
                except imagehdr.ImageHeaderError as exc:
                    raise CorruptSampleError(f"sample {sample.key!r} in {reader.root}: {exc}", sample.key) from None
                size = header.display_size
            except CorruptSampleError:
                if self.config.strict:
                    raise
                if skipped < 0:
                    skipped = i
                continue
            if self.on_fetch is not None:
                self.on_fetch(i)
            return np.frombuffer(sample.data, np.uint8), sample.label, size, skipped
        raise CorruptSampleError(f"{reader.root}: no readable sample at all")

    def _hold_shards(self, epoch: int, g: np.ndarray) -> None:
        """Streaming mode over remote shards: pin the shards this batch and the batches sibling
        workers may still compute read (every stream's), before any read, then download the
        new ones in order on a background thread. Exact-mode samplers have no shard window."""
        windows = [w for w in (s.shard_window(epoch, g) for s in self.config.streams) if w is not None]
        if windows:
            self.reader.hold(set().union(*(hold for hold, _ in windows)))
            todo = [s for _, fetch in windows for s in fetch]
            if todo:
                self.reader.prefetch(todo)

    def batch(self, epoch: int, positions: np.ndarray) -> tuple:
        """Outputs for this rank's local ``positions`` of one batch, vectorised, in the order
        of :attr:`layout` (``source_names``): per stream jpegs (list of uint8 arrays), labels
        int64 [B, 1], windows float32 [B, 4], flips int32 [B, 1]; with ``paste``, the in-graph
        mixing outputs (:meth:`_paste`); then skipped int64 [B, streams]."""
        c = self.config
        outs, skipped = {}, []
        # rank-local positions -> global positions of the epoch's one stream (training)
        g = None if c.geometry is None else c.geometry.local_to_global(positions, c.rank)
        if g is not None and self.reader.cache is not None:
            self._hold_shards(epoch, g)
        for s, (sampler, indices) in enumerate(zip(c.streams, stream_indices(c.streams, epoch, positions, g))):
            fetched = [self.fetch(int(i)) for i in indices]
            key = augment_key(c.seed, epoch, s)
            n = len(positions)
            if c.train:  # every draw keyed by the position (fastcas.loading.transforms)
                counter, policy = (positions if g is None else g), c.policy
                windows = policy.windows(key, counter, np.array([f[2] for f in fetched]).reshape(n, 2))
                flip = policy.flips(key, counter)
                outs.update({f"{k}{s}": v for k, v in policy.draws(c.seed, epoch, s, counter, c.image_size).items()})
            else:
                windows = np.tile(np.array([0, 0, 1, 1], np.float32), (n, 1))
                flip = np.zeros((n, 1), np.int32)
            outs.update(
                {
                    f"jpegs{s}": [f[0] for f in fetched],
                    f"labels{s}": np.array([[f[1]] for f in fetched], np.int64),
                    f"windows{s}": windows,
                    f"flips{s}": flip,
                }
            )
            skipped.append([f[3] for f in fetched])
        if c.paste is not None:
            outs.update(self._paste(epoch, positions, positions if g is None else g))
        outs["skipped"] = np.array(skipped, np.int64).T.copy()
        return self.layout.pack(outs, "source")

    def _paste(self, epoch: int, local: np.ndarray, g: np.ndarray) -> dict:
        """In-graph mixing outputs of one batch (one step: ``local`` rank-local, ``g`` global
        positions), by name (``layout.paste``): ``in_ids`` int32 [B, 2], ``anchors`` and
        ``shapes`` int32 [B, 2, 2] (CutMix, :func:`fastcas.mix.paste_args`); ``partner`` int32
        [B, 1] and ``masks`` uint8 [B, S, S, 1] (FMix); ``lam`` float64 [B, 1]. SaliencyMix:
        ``in_ids``, and ``anchors`` / ``shapes`` / ``lam`` of an unmixed sample (the graph fills
        in the box), ``centre_ids`` int32 [B, 1] (whose saliency peak centres each box: the
        partner, the foreground stream's own sample, or in batch mode the first sample's),
        ``need`` int32 [B, 1] (1 where some mixed sample's box is centred on this sample's peak:
        the graph computes only those maps) and ``half`` int32 [B, 3] ``(cut_h // 2, cut_w // 2,
        mixed)``. Only the step's real samples
        pair up, as in :class:`fastcas.loading.finisher.Finisher` (a partial last step's padding pairs with itself
        and is dropped)."""
        c, p = self.config, self.config.paste
        out = MIX_KINDS[p.kind].source_outputs(c.seed, epoch, g, size=p.size, alpha=p.alpha, prob=p.prob_at(epoch),
                                               mode=p.mode, decay=p.decay, partner=self._partner(local, g))
        return {k: out[k] for k in self.layout.paste}  # two streams: no in-batch partner ids

    def _partner(self, local: np.ndarray, g: np.ndarray):
        """In-batch partners (local indices int64 [B]) of one stream's step, or None for two
        streams: the step's real samples pair by :func:`fastcas.mix.pair_partner`, padding with
        itself."""
        c = self.config
        if len(c.streams) != 1:
            return None
        n = len(g) if c.geometry is None else min(len(g), c.geometry.step_size(int(local[0]) // c.batch_size))
        return np.concatenate([mix.pair_partner(g[:n]), np.arange(n, len(g))])

    def __call__(self, info):
        """DALI entry point: a ``BatchInfo`` (batch mode, the loader) or a ``SampleInfo``."""
        c = self.config
        if hasattr(info, "idx_in_epoch"):  # one sample (DALI's SampleInfo, not a fastcas object)
            pos = info.idx_in_epoch + (c.offset if info.epoch_idx == 0 else 0)
            if pos >= c.positions:
                raise StopIteration
            out = self.batch(c.epoch0 + info.epoch_idx, np.array([pos], np.int64))
            return tuple(o[0] for o in out)
        start = info.iteration * self.batch_size + (c.offset if info.epoch_idx == 0 else 0)
        if start >= c.positions:
            raise StopIteration
        positions = np.arange(start, min(start + self.batch_size, c.positions), dtype=np.int64)
        out = self.batch(c.epoch0 + info.epoch_idx, positions)
        return out  # uniform outputs as whole-batch arrays (one object to pass, not one per sample)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size


def warn_skipped(reader: ShardReader, indices, counts: dict) -> None:
    """Count the samples the source skipped (``indices``: int [k] into ``reader``) in ``counts``
    (key -> draws) and warn about each new one, except that a shard unreadable as a whole (a tar
    changed since it was indexed, a missing shard) is named once, with the command that fixes
    it, instead of once per sample: the first skip of a local shard's sample reads its member
    header back here (microseconds), which marks a changed tar's whole shard broken."""
    for i in indices:
        i = int(i)
        k = reader.keys[i]
        if k not in counts:
            s = reader.shard_of(i)
            if s not in reader.broken and reader.shard_urls[s] is None:  # never a download just for a warning
                try:
                    reader[i]
                except (FastcasError, OSError, ValueError):  # ValueError: the mmap of a shard truncated to 0
                    pass  # why it is unreadable: the warning below says it was skipped
            if s in reader.broken:
                reader.name_broken(s, stacklevel=3)
            else:
                warnings.warn(f"fastcas: skipped unreadable sample {k!r} (substituted the next readable one; "
                              "pass strict=True to raise)", RuntimeWarning, stacklevel=3)
        counts[k] = counts.get(k, 0) + 1
