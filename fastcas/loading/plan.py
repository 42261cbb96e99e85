"""The pure plan of every step of a :class:`~fastcas.loading.loader.Loader` (issue 33).

:class:`StepPlan` is computed once at construction from the composed config, the samplers
(``Loader.streams``) and one stream geometry, and never changes: every thread reads it, none
writes it. From it come, for a step ``t`` of an epoch, this rank's positions and batch size,
the padding mask, the sample indices per stream (:func:`fastcas.loading.source.stream_indices`,
the rule the DALI source uses too), the source's configuration (so the pipeline's batches are
this plan's) and the mixing parameters. :meth:`Loader.plan <fastcas.loading.loader.Loader.plan>`
is a view of :meth:`StepPlan.describe`.

Geometry: training reads one global stream per epoch (:class:`fastcas.sampling.geometry.StreamGeometry`,
contiguous blocks per rank); evaluation (``geometry`` None) reads this rank's rank-local
positions of :class:`fastcas.sampling.protocol.SequentialIndex`, every rank the same number of
steps (a collective per batch must not hang).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fastcas import mix
from fastcas.loading.config import LoaderConfig
from fastcas.loading.mixsched import mix_at
from fastcas.loading.source import PasteSpec, SampleSource, SourceConfig, stream_indices
from fastcas.mix.kinds import KINDS as MIX_KINDS
from fastcas.sampling.geometry import StreamGeometry
from fastcas.sampling.sampler import WeightedSampler


def paste_spec(cfg: LoaderConfig, mixes_in_graph: bool, device: str) -> PasteSpec | None:
    """The mixing the DALI graph applies, or None (torch mixes after the pipeline, or no mixing).
    CutMix and FMix (binary masks) mix inside the graph (uint8 copies on DALI's threads or GPU);
    the source draws their parameters from the same position keys, and the finisher builds the
    targets from the ``lam`` that arrives with the batch. SaliencyMix with the fine-grained
    saliency too, on CPU pipelines (:mod:`fastcas.mix.graph_ops`). ``mixes_in_graph``: whether
    the backend can (the torchvision baseline cannot)."""
    if not mixes_in_graph or not (cfg.train and cfg.mix_in_pipeline and cfg.mix_kind is not None):
        return None
    if cfg.transforms.reprob > 0:
        return None  # erasing comes before mixing (timm's order): each stream erased, then mixed by torch
    opts = cfg.mix_options
    if not MIX_KINDS[cfg.mix_kind].in_graph(opts, device):  # e.g. soft FMix masks, GPU SaliencyMix
        return None
    return PasteSpec(kind=cfg.mix_kind, size=cfg.image_size, alpha=cfg.alpha, prob=cfg.mix_prob,
                     mode=opts.get("mode", "elem"), decay=opts.get("decay", 3.0),
                     start_epoch=cfg.mix_start_epoch, stop_epoch=cfg.mix_stop_epoch)


def step_counts(cfg: LoaderConfig, streams: tuple, num_samples: int, world_size: int
                ) -> tuple[StreamGeometry | None, int, int]:
    """``(geometry, steps per epoch, the last step's batch on this rank)``. ``num_samples``: the
    dataset's size. Training: one global stream whose length is the first stream's epoch
    (epoch_length, a resampling plan's length, or the dataset size). Evaluation: ceil(n / W)
    positions per rank, padded (DistributedSampler), or floor(n / W) with last_batch="drop"."""
    b = cfg.batch_size
    if cfg.train:
        first = streams[0]
        num = first.num_samples if isinstance(first, WeightedSampler) else cfg.epoch_length or num_samples
        geometry = StreamGeometry(num, world_size, b, cfg.last_batch)
        if geometry.steps < 1:
            raise ValueError(f"the global batch {geometry.global_batch} (batch_size {b} x {world_size} ranks) is "
                             f"larger than the {geometry.num_samples} samples per epoch with last_batch='drop'")
        return geometry, geometry.steps, geometry.step_size(geometry.steps - 1)
    per_rank = len(streams[0]) if cfg.last_batch != "drop" else num_samples // world_size
    steps = math.floor(per_rank / b) if cfg.last_batch == "drop" else math.ceil(per_rank / b)
    if steps < 1:
        raise ValueError(f"batch_size {b} is larger than this rank's {per_rank} samples per epoch with "
                         "last_batch='drop'")
    return None, steps, (per_rank - (steps - 1) * b if cfg.last_batch == "partial" else b)


@dataclass(frozen=True, eq=False)  # identity, not a field-wise comparison of the samplers and keys
class StepPlan:
    """Everything about step ``t`` of an epoch that needs no pixels (see the module docstring).

    Immutable (its fields; a streaming-mode sampler's shuffle state is restored in place by
    ``load_state_dict``, between iterations, on the consumer thread); shared by the consumer thread
    (``Loader.plan``, ``positions``, ``valid``, ``state_dict``), the runner (the source it builds)
    and the finisher (positions, mixing).
    ``keys``: the dataset's sample keys (a sequence of str, index -> key); ``paste``: the mixing
    in the DALI graph (None: torch mixes, or no mixing)."""

    config: LoaderConfig
    streams: tuple
    geometry: StreamGeometry | None
    rank: int
    world_size: int
    steps: int
    last_size: int
    dataset: object  # the reader's ReopenSpec (fastcas.dataset.reader): what the DALI workers reopen
    keys: object = field(repr=False)
    paste: PasteSpec | None = None

    def __post_init__(self):
        if self.steps < 1 or not 0 < self.last_size <= self.config.batch_size:
            raise ValueError(f"a plan needs steps >= 1 and 0 < last_size <= batch_size, got {self.steps}, "
                             f"{self.last_size}")

    def size(self, step: int) -> int:
        """This rank's batch size at ``step`` (the last step may be smaller)."""
        return self.last_size if step == self.steps - 1 else self.config.batch_size

    def positions(self, step: int) -> np.ndarray:
        """int64 [n] global positions this rank consumes at ``step`` (training; evaluation: this
        rank's local positions)."""
        if self.geometry is not None:
            return self.geometry.positions(int(step), self.rank)
        return int(step) * self.config.batch_size + np.arange(self.size(step), dtype=np.int64)

    def valid(self, step: int) -> np.ndarray:
        """bool [n]: False marks a padding repeat (evaluation only)."""
        pos = self.positions(step)
        if self.geometry is not None:
            return np.ones(len(pos), bool)
        return pos < self.streams[0].real

    def sampler_indices(self, epoch: int) -> list[np.ndarray]:
        """Per stream, the global indices this rank reads in ``epoch`` (before padding)."""
        if self.geometry is not None:
            pos = self.geometry.rank_positions(self.rank)
            return [s.global_index_at(epoch, pos) for s in self.streams]
        return [s.index_at(epoch, np.arange(s.real)) for s in self.streams]  # evaluation: no padding

    def indices(self, epoch: int, step: int) -> list[np.ndarray]:
        """Per stream, int64 [n] sample indices of this rank's batch ``step``: the samples the
        pipeline delivers, padding slots included (:func:`fastcas.loading.source.stream_indices`)."""
        pos = self.positions(step)
        return stream_indices(self.streams, epoch, *((pos, None) if self.geometry is None else (None, pos)))

    def source_config(self, epoch: int, step: int, quarantine: frozenset, paste: bool = True) -> SourceConfig:
        """The source of a pipeline whose first batch is ``step`` of ``epoch``."""
        cfg = self.config
        return SourceConfig(
            dataset=self.dataset, streams=self.streams, positions=self.steps * cfg.batch_size,
            seed=cfg.seed, rank=self.rank, epoch0=epoch, offset=step * cfg.batch_size,
            train=cfg.train, strict=cfg.strict, batch_size=cfg.batch_size, geometry=self.geometry,
            quarantine=frozenset(quarantine), max_pixels=cfg.max_pixels,
            paste=self.paste if paste else None, augment=cfg.transforms, image_size=cfg.image_size)

    def describe(self, epoch: int, step: int, quarantine: frozenset = frozenset()) -> dict:
        """:meth:`Loader.plan <fastcas.loading.loader.Loader.plan>` of ``step`` of ``epoch``
        (its docstring lists the entries); labels, windows and draws come from the source itself
        (with the ``quarantine`` the pipeline substitutes)."""
        if not 0 <= step < self.steps:
            raise ValueError(f"step must be in [0, {self.steps}), got {step}")
        pos = self.positions(step)
        source = SampleSource(self.source_config(epoch, 0, quarantine, paste=False))  # params come below
        local = step * self.config.batch_size + np.arange(len(pos), dtype=np.int64)
        out = source.layout.named(source.batch(epoch, local))
        ns = len(self.streams)
        indices = self.indices(epoch, step)
        keys = [[self.keys[int(i)] for i in idx] for idx in indices]
        res = {
            "epoch": epoch, "step": step, "positions": pos, "indices": indices, "keys": keys,
            "labels": [out[f"labels{s}"].reshape(-1) for s in range(ns)],
            "windows": [out[f"windows{s}"] for s in range(ns)],
            "flips": [out[f"flips{s}"].reshape(-1) for s in range(ns)],
            "augment": [{f: out[f"{f}{s}"] for f in source.layout.extras} for s in range(ns)],
        }
        if self.config.mix_kind:
            partner = None if ns == 2 else mix.pair_partner(pos)
            res["partner"] = partner
            res["partner_keys"] = keys[1] if ns == 2 else [keys[0][j] for j in partner]
            name, alpha, prob, opts = mix_at(self.config, epoch, step)
            res.update(MIX_KINDS[name].plan_params(self.config.seed, epoch, pos, self.config.image_size,
                                                   alpha=alpha, prob=prob, options=opts))
        return res
