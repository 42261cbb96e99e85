"""The samplers of a :class:`~fastcas.loading.loader.Loader` (``Loader.streams``), built once at
construction: the score column, one :class:`~fastcas.sampling.protocol.IndexSampler` per
stream (evaluation order, exact-mode weighted draws or a resampling plan, streaming mode), and
the warnings about the weights (concentration, class-mass shift) that a training log keeps."""
from __future__ import annotations

import os
import warnings

import numpy as np

from fastcas.core.errors import ClassMassShiftWarning
from fastcas.dataset.derived import cached_array, check_vector, score_column
from fastcas.loading import streams as streaming
from fastcas.loading.config import LoaderConfig
from fastcas.sampling.classmass import class_mass_message, class_mass_shift
from fastcas.sampling.plan import PlanSampler
from fastcas.sampling.protocol import SequentialIndex
from fastcas.sampling.sampler import WeightedSampler
from fastcas.sampling.shared import shared_cdf, shared_concentration
from fastcas.sampling.weights import PLAN_NAMES, concentration_message, make_plan


def load_scores(cfg: LoaderConfig, reader, scores) -> tuple[np.ndarray | None, str | None]:
    """``(scores float64 [N] or None, the score file's content hash or None)``: a score file is
    joined by key once per node, then a memory-mapped column shared by every process."""
    needs = "cas" in (cfg.weights, cfg.foreground_weights) or "cas-cmo" in (cfg.weights, cfg.foreground_weights)
    if scores is None:
        if needs:
            raise ValueError("weights 'cas' / 'cas-cmo' need scores= (a score file from `fastcas score` or an array)")
        return None, None
    if isinstance(scores, (str, os.PathLike)):
        return score_column(reader, scores)
    return np.asarray(scores, np.float64), None


class StreamFactory:
    """Builds the samplers of one Loader (construction only; the samplers outlive it).
    ``notes``: warnings about the sampling weights, for a training log (appended to)."""

    def __init__(self, cfg: LoaderConfig, reader, rank: int, world_size: int, scores, scores_id, notes: list):
        self.cfg, self.reader, self.rank, self.world_size = cfg, reader, rank, world_size
        self.scores, self.scores_id, self.notes = scores, scores_id, notes

    def streams(self) -> tuple:
        cfg = self.cfg
        if not cfg.train:
            return (SequentialIndex(len(self.reader), self.rank, self.world_size),)
        names = [cfg.weights] + ([cfg.foreground_weights] if cfg.foreground_weights else [])
        if cfg.mode == "streaming":
            return tuple(streaming.from_options(cfg, self.reader, name, s, rank=self.rank, world_size=self.world_size,
                                                scores=self.scores, scores_id=self.scores_id)
                         for s, name in enumerate(names))
        return tuple(self.sampler(name, s) for s, name in enumerate(names))

    def sampler(self, name: str, stream: int = 0):
        cfg, reader = self.cfg, self.reader
        num = cfg.epoch_length or len(reader)
        common = dict(seed=cfg.seed, stream=stream, rank=self.rank, world_size=self.world_size,
                      batch_size=cfg.batch_size)
        if name == "uniform":
            return WeightedSampler(len(reader), num, replacement=False, **common)
        if name in PLAN_NAMES:  # the importance-sampling paper's resampled set: its length is the epoch's
            plan = make_plan(name, reader.labels, seed=cfg.seed, threshold=cfg.threshold)
            return PlanSampler(plan, len(reader), cfg.epoch_length, **common)

        # the CDF is built once per node and memory-mapped; its digest is O(1) (fastcas.sampling.shared)
        cdf, wd = shared_cdf(reader, name, scores=self.scores, scores_id=self.scores_id,
                             b=cfg.cas_power, r=cfg.cmo_power,
                             threshold=cfg.threshold if name.endswith("sample-expected") else None)
        if cdf is None:
            return WeightedSampler(len(reader), num, weights_digest=wd, **common)
        # the weights' concentration: computed once per node beside the shared CDF
        msg = concentration_message(shared_concentration(reader, cdf, wd), reader.keys, f"weights {name!r}")
        if msg:
            warnings.warn(f"fastcas: {msg}", RuntimeWarning, stacklevel=4)
        if name == "cas":
            self.warn_class_mass(name, cdf, wd)
        return WeightedSampler.from_cdf(cdf, num, weights_digest=wd, **common)

    def warn_class_mass(self, name: str, cdf, wd: str) -> None:
        """ClassMassShiftWarning (and a line in ``notes``) when weights ``name`` move the
        class distribution of the draws (:mod:`fastcas.sampling.classmass`); the class masses
        are computed once per node and cached beside the CDF."""
        reader = self.reader
        keys = ("tv", "head", "head_before", "head_after", "tail_classes", "tail_before", "tail_after")

        def build():
            shift = class_mass_shift(reader.labels, np.diff(cdf, prepend=0.0))
            return np.array([shift[k] for k in keys], np.float64)

        values = cached_array(reader, f"classmass-{wd}", build, lambda a: check_vector(a, len(keys)))
        shift = {k: (int(v) if k in ("head", "tail_classes") else float(v)) for k, v in zip(keys, values)}
        msg = class_mass_message(shift, name, reader.class_names)
        if msg:
            self.notes.append(msg)
            warnings.warn(f"fastcas: {msg}", ClassMassShiftWarning, stacklevel=6)
