"""``fastcas.Loader``: weighted, mixed, resumable batches from indexed shards via DALI.

    loader = fastcas.Loader("data/train", 256, weights="cas", scores="scores.parquet",
                            mix="cutmix", alpha=0.2)
    for epoch in range(E):
        loader.set_epoch(epoch)
        for images, targets in loader:   # [B,3,S,S] float on the device; [B,K] soft targets
            ...

Iteration rule (as a ``DataLoader``): see :meth:`Loader.__iter__`.

Stages: weights -> stateless sampler(s) -> :class:`~fastcas.loading.source.SampleSource` ->
DALI pipeline (:mod:`fastcas.loading.pipeline`) -> mixing (:mod:`fastcas.mix`) on the same device.
Two-stream recipes (CMO) set ``foreground_weights``: each slot holds a background drawn by
``weights`` (uniform for CMO) and a foreground drawn by ``foreground_weights`` ("cmo").

Training reads one global stream per epoch (:mod:`fastcas.sampling.geometry`): rank ``r`` of ``W`` takes
positions ``t * W * b + r * b + i`` at step ``t``, and the sample, crop, flip and mixing
parameters of a position do not depend on ``(W, b)``. So :meth:`Loader.state_dict` (the global
position consumed and a digest of what must match) resumes exactly at another world size and
per-rank batch with the same global batch ``W * b``; :meth:`Loader.plan` shows a step's
positions, samples and parameters without running DALI.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from fastcas import mix
from fastcas.core.errors import ClassMassShiftWarning, CorruptSampleError, FastcasError
from fastcas.dataset.classes import check_same_classes
from fastcas.dataset.derived import cached_array, check_vector, score_column
from fastcas.dataset.reader import reader_for
from fastcas.loading import checks, iteration, mixsched, pipeline, resume, workers
from fastcas.loading import streams as streaming
from fastcas.loading.backends import DaliBackend
from fastcas.loading.config import LoaderConfig, check_option_names, resolve_device
from fastcas.loading.faults import undecodable
from fastcas.loading.layout import BatchLayout
from fastcas.loading.mixsched import mix_at
from fastcas.loading.prefetch import Prefetcher
from fastcas.loading.source import PasteSpec, SampleSource, SourceConfig, warn_skipped
from fastcas.mix.kinds import KINDS as MIX_KINDS
from fastcas.sampling.classmass import class_mass_message, class_mass_shift
from fastcas.sampling.geometry import StreamGeometry
from fastcas.sampling.plan import PlanSampler
from fastcas.sampling.protocol import SequentialIndex
from fastcas.sampling.sampler import WeightedSampler, _dist_defaults
from fastcas.sampling.shared import shared_cdf, shared_concentration
from fastcas.sampling.weights import PLAN_NAMES, concentration_message, make_plan

_ITER_LOCK = iteration.LOCK  # guards Loader._iter_owner (which thread iterates a loader)
STARTUP_S = 60.0  # batch_timeout allowance for an iteration's first batch (DALI loads its decoders)


class Loader:
    """Iterator of ``(images, targets)`` batches; see the module docstring.

    ``images``: float32/float16 [B, 3, S, S] (channels-last strides with ``channels_last``)
    on the loader's device; ``targets`` (option ``targets``): "soft" (the default for
    training) float32 [B, num_classes] whatever the mixing (one-hot rows without mixing or
    smoothing), "hard" (the default for evaluation) int64 [B] class ids. With ``valid_mask`` a
    third element ``valid`` bool [B] marks padding repeats False (:meth:`valid`).
    ``len(loader)`` = steps per epoch, the same on every rank.
    ``class_names``: the training set's vocabulary (names, a dataset path, a ShardReader or a
    Loader): a dataset whose ``class_names`` differ is refused, naming the first difference.
    """

    def __init__(self, dataset, batch_size: int, *, scores=None, rank: int | None = None,
                 world_size: int | None = None, backend=None, class_names=None, **options):
        check_option_names(options)
        self.config = LoaderConfig(batch_size=batch_size, **options)
        # the execution engine (fastcas.loading.backends): DALI unless a twin asks for another
        self.backend = DaliBackend() if backend is None else backend
        self._stage = None  # the prefetch thread of the current iteration
        self._iter_owner: threading.Thread | None = None  # the thread iterating (guarded by _ITER_LOCK)
        cfg = self.config
        # a reader the caller passed stays theirs (close() leaves it open); the workers reopen its reopen_spec
        self.reader, self._owns_reader = reader_for(dataset, cache_dir=cfg.cache_dir,
                                                    cache_max_bytes=cfg.cache_max_bytes, remote=cfg.remote)
        self.dataset = Path(self.reader.root)
        self.num_classes = self.reader.num_classes
        if class_names is not None:  # the training set's vocabulary (fastcas.dataset.classes)
            check_same_classes(class_names, self.reader.class_names, what=str(self.dataset))
        labels = np.asarray(self.reader.labels)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
            raise ValueError(
                f"{self.dataset}: label {bad} outside [0, {self.num_classes}) (num_classes of the manifest)"
            )
        checks.check_rank(rank, world_size)  # rank=0.5 is not rank 0
        self.rank, self.world_size = _dist_defaults(rank, world_size)
        self.device = resolve_device(cfg.device)
        self._scores_id = None  # the score file's content hash, when scores came from one
        self.scores = self._load_scores(scores)
        self.notes: list[str] = []  # warnings about the sampling weights, for a training log
        self.streams = self._make_streams()
        self._set_steps()
        self._digests: dict = {}
        self.epoch, self.step = 0, 0
        # the iteration rule (__iter__): where the next iter() starts, when set by construction,
        # set_epoch or load_state_dict (_loaded); _iter_id names the newest iteration
        self._next_start: tuple[int, int] | None = (0, 0)
        self._loaded, self._iter_id = False, 0
        self.skipped: dict[str, int] = {}
        self._quarantine: set[int] = set()  # indices DALI cannot decode (strict=False), see fastcas.loading.faults
        self._pipe_at: tuple[int, int] | None = None  # (epoch, step) the pipeline yields next
        self._built: tuple[int, int] | None = None  # (epoch, step) the backend was last built at
        self._paste = self._paste_spec()
        self._layout = BatchLayout(len(self.streams), None if self._paste is None else self._paste.kind)

    # -- construction ----------------------------------------------------------------------
    def _set_steps(self) -> None:
        """``geometry`` (training: one global stream, contiguous blocks per rank; evaluation: None),
        ``steps`` per epoch and ``_last_size`` (the last step's batch on this rank)."""
        cfg = self.config
        self.geometry = None
        if cfg.train:  # one global stream, contiguous blocks per rank (fastcas.sampling.geometry)
            # the first stream's epoch: epoch_length, a resampling plan's length, or the dataset size
            first = self.streams[0]
            num = first.num_samples if isinstance(first, WeightedSampler) else cfg.epoch_length or len(self.reader)
            self.geometry = StreamGeometry(num, self.world_size, cfg.batch_size, cfg.last_batch)
            self.steps = self.geometry.steps
            if self.steps < 1:
                raise ValueError(f"the global batch {self.geometry.global_batch} (batch_size {cfg.batch_size} x "
                                 f"{self.world_size} ranks) is larger than the {self.geometry.num_samples} samples "
                                 "per epoch with last_batch='drop'")
            self._last_size = self.geometry.step_size(self.steps - 1)
        else:
            # every rank the same number of steps (a collective per batch must not hang): ceil(n / W)
            # positions each, padded (DistributedSampler), or floor(n / W) with last_batch="drop"
            per_rank = len(self.streams[0]) if cfg.last_batch != "drop" else len(self.reader) // self.world_size
            steps = per_rank / cfg.batch_size
            self.steps = math.floor(steps) if cfg.last_batch == "drop" else math.ceil(steps)
            if self.steps < 1:
                raise ValueError(f"batch_size {cfg.batch_size} is larger than this rank's {per_rank} samples per "
                                 "epoch with last_batch='drop'")
            self._last_size = (
                per_rank - (self.steps - 1) * cfg.batch_size if cfg.last_batch == "partial" else cfg.batch_size
            )

    def _load_scores(self, scores):
        needs = "cas" in (self.config.weights, self.config.foreground_weights) or "cas-cmo" in (
            self.config.weights, self.config.foreground_weights)
        if scores is None:
            if needs:
                raise ValueError(
                    "weights 'cas' / 'cas-cmo' need scores= (a score file from `fastcas score` or an array)"
                )
            return None
        if isinstance(scores, (str, os.PathLike)):
            # joined by key once per node, then a memory-mapped column shared by every process
            cas, self._scores_id = score_column(self.reader, scores)
            return cas
        return np.asarray(scores, np.float64)

    def _sampler(self, name: str, stream: int = 0):
        cfg = self.config
        num = cfg.epoch_length or len(self.reader)
        common = dict(seed=cfg.seed, stream=stream, rank=self.rank, world_size=self.world_size,
                      batch_size=cfg.batch_size)
        if name == "uniform":
            return WeightedSampler(len(self.reader), num, replacement=False, **common)
        if name in PLAN_NAMES:  # the importance-sampling paper's resampled set: its length is the epoch's
            plan = make_plan(name, self.reader.labels, seed=cfg.seed, threshold=cfg.threshold)
            return PlanSampler(plan, len(self.reader), cfg.epoch_length, **common)

        # the CDF is built once per node and memory-mapped; its digest is O(1) (fastcas.sampling.shared)
        cdf, wd = shared_cdf(self.reader, name, scores=self.scores, scores_id=self._scores_id, b=cfg.cas_power,
                             r=cfg.cmo_power, threshold=cfg.threshold if name.endswith("sample-expected") else None)
        if cdf is None:
            return WeightedSampler(len(self.reader), num, weights_digest=wd, **common)
        # the weights' concentration: computed once per node beside the shared CDF
        msg = concentration_message(shared_concentration(self.reader, cdf, wd), self.reader.keys, f"weights {name!r}")
        if msg:
            warnings.warn(f"fastcas: {msg}", RuntimeWarning, stacklevel=3)
        if name == "cas":
            self._warn_class_mass(name, cdf, wd)
        return WeightedSampler.from_cdf(cdf, num, weights_digest=wd, **common)

    def _warn_class_mass(self, name: str, cdf, wd: str) -> None:
        """ClassMassShiftWarning (and a line in ``self.notes``) when weights ``name`` move the
        class distribution of the draws (:mod:`fastcas.sampling.classmass`); the class masses
        are computed once per node and cached beside the CDF."""
        keys = ("tv", "head", "head_before", "head_after", "tail_classes", "tail_before", "tail_after")

        def build():
            shift = class_mass_shift(self.reader.labels, np.diff(cdf, prepend=0.0))
            return np.array([shift[k] for k in keys], np.float64)

        values = cached_array(self.reader, f"classmass-{wd}", build, lambda a: check_vector(a, len(keys)))
        shift = {k: (int(v) if k in ("head", "tail_classes") else float(v)) for k, v in zip(keys, values)}
        msg = class_mass_message(shift, name, self.reader.class_names)
        if msg:
            self.notes.append(msg)
            warnings.warn(f"fastcas: {msg}", ClassMassShiftWarning, stacklevel=5)

    def _make_streams(self) -> tuple:
        cfg = self.config
        if not cfg.train:
            return (SequentialIndex(len(self.reader), self.rank, self.world_size),)
        names = [cfg.weights] + ([cfg.foreground_weights] if cfg.foreground_weights else [])
        if cfg.mode == "streaming":
            return tuple(streaming.from_loader(self, name, s) for s, name in enumerate(names))
        return tuple(self._sampler(name, s) for s, name in enumerate(names))

    def sampler_indices(self, epoch: int) -> list[np.ndarray]:
        """Per stream, the global indices this rank reads in ``epoch`` (before padding)."""
        if self.geometry is not None:
            pos = self.geometry.rank_positions(self.rank)
            return [s.global_index_at(epoch, pos) for s in self.streams]
        return [s.index_at(epoch, np.arange(s.real)) for s in self.streams]  # evaluation: no padding

    def positions(self, step: int, epoch: int | None = None) -> np.ndarray:
        """int64 global positions this rank consumes at ``step`` (training; evaluation: this
        rank's local positions)."""
        if self.geometry is not None:
            return self.geometry.positions(int(step), self.rank)
        n = self._last_size if step == self.steps - 1 else self.config.batch_size
        return int(step) * self.config.batch_size + np.arange(n, dtype=np.int64)

    def valid(self, step: int) -> np.ndarray:
        """bool [n] for this rank's batch ``step``: False marks a padding repeat (evaluation with
        ``last_batch`` "pad", or a rank with fewer samples when ``W`` does not divide the split),
        so that metrics count every sample exactly once over all ranks. All True in training."""
        pos = self.positions(step)
        if self.geometry is not None:
            return np.ones(len(pos), bool)
        return pos < self.streams[0].real

    def plan(self, step: int | None = None, epoch: int | None = None) -> dict:
        """What this rank's batch at ``step`` of ``epoch`` (default: the next one) is made of,
        computed on the host without DALI: ``positions`` int64 [n]; per stream (lists)
        ``indices`` int64 [n], ``keys``, ``labels`` int64 [n], ``windows`` float32 [n, 4]
        ``(x, y, w, h)`` normalised, ``flips`` int32 [n], ``augment`` (dicts of the transform
        draws, :meth:`fastcas.loading.transforms.AugmentPolicy.draws`); and when mixing, ``partner`` (local
        indices of the in-batch partners, or None for two-stream recipes), ``partner_keys`` and
        ``params`` (:class:`fastcas.mix.MixParams`; SaliencyMix needs pixels for its boxes, so
        there ``params`` is None and ``drawn``/``mixed`` are given)."""
        epoch = self.epoch if epoch is None else int(epoch)
        step = self.step if step is None else int(step)
        if not 0 <= step < self.steps:
            raise ValueError(f"step must be in [0, {self.steps}), got {step}")
        pos = self.positions(step, epoch)
        n = len(pos)
        source = SampleSource(dataclasses.replace(self._source_config(epoch, 0), paste=None))  # params come below
        out = source.layout.named(source.batch(epoch, step * self.config.batch_size + np.arange(n, dtype=np.int64)))
        ns = len(self.streams)
        indices = [s.global_index_at(epoch, pos) if self.geometry is not None else s.index_at(epoch, pos)
                   for s in self.streams]
        res = {
            "epoch": epoch,
            "step": step,
            "positions": pos,
            "indices": indices,
            "keys": [[self.reader.keys[int(i)] for i in idx] for idx in indices],
            "labels": [out[f"labels{s}"].reshape(-1) for s in range(ns)],
            "windows": [out[f"windows{s}"] for s in range(ns)],
            "flips": [out[f"flips{s}"].reshape(-1) for s in range(ns)],
            "augment": [{f: out[f"{f}{s}"] for f in source.layout.extras} for s in range(ns)],
        }
        kind = self.config.mix_kind
        if kind:
            partner = None if ns == 2 else mix.pair_partner(pos)
            res["partner"] = partner
            res["partner_keys"] = res["keys"][1] if ns == 2 else [res["keys"][0][j] for j in partner]

            name, alpha, prob, opts = mix_at(self.config, epoch, step)
            res.update(MIX_KINDS[name].plan_params(self.config.seed, epoch, pos, self.config.image_size, alpha=alpha,
                                                   prob=prob, options=opts))
        return res

    # -- epochs and state ------------------------------------------------------------------
    def __len__(self) -> int:
        return self.steps

    def _check_not_iterating(self, what: str) -> None:
        """Before the epoch or state changes (:func:`fastcas.loading.iteration.supersede`):
        RuntimeError while another thread iterates; an iterator this thread left open is
        superseded."""
        iteration.supersede(self, what)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter(loader)`` starts ``epoch`` at its first step, also when ``epoch`` is
        the current one or has just finished; unless a state was just loaded
        (:meth:`load_state_dict`) whose next batch is in ``epoch``: then it resumes at the loaded
        position (trainers call ``set_epoch`` after restoring a checkpoint). An iteration of
        ``epoch`` still open in this thread goes on (Lightning starts one before it calls
        ``set_epoch``); one of another epoch is superseded. RuntimeError while another thread
        iterates."""
        iteration.set_epoch(self, epoch)

    # what must match to continue a stream mid-epoch; the second group only matters mid-epoch
    def state_dict(self) -> dict:
        """Where the next batch comes from (:func:`fastcas.loading.resume.state_dict`): ``epoch``,
        ``position`` (the global position consumed in the epoch), this rank's ``step``, the
        geometry it was saved at, and ``config`` (what must match to resume)."""
        return resume.state_dict(self)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``, saved by this loader or by one at another world size and
        per-rank batch with the same global batch (training); ValueError naming what differs
        otherwise (:func:`fastcas.loading.resume.load_state_dict`). The next ``iter(loader)``
        starts there (an evaluation loader too, once: e.g. a long scoring pass resumed)."""
        resume.load_state_dict(self, state)
        self._next_start, self._loaded = (self.epoch, self.step), True

    @property
    def graph_mix(self) -> str | None:
        """The mix kind mixed inside the DALI graph for this config, backend and device
        ("cutmix", "fmix" with binary masks, "saliencymix" on the CPU with the fine-grained
        saliency), or None: no mixing, or mixed by torch after the pipeline (mixup, soft FMix
        masks, erasing, ``mix_in_pipeline=False``, GPU SaliencyMix). The stream is the same."""
        spec = self._paste_spec()
        return None if spec is None else spec.kind

    def source(self, epoch: int | None = None, step: int | None = None) -> SampleSource:
        """The stateless sample source the pipeline is built from at ``step`` of ``epoch``
        (default: the next batch), what the DALI workers run: ``source.batch(epoch, offsets)``
        computes its outputs on the host, named by ``source.layout``."""
        epoch = self.epoch if epoch is None else int(epoch)
        return SampleSource(self._source_config(epoch, self.step if step is None else int(step)))

    # -- iteration ---------------------------------------------------------------------------
    def _source_config(self, epoch: int, step: int) -> SourceConfig:
        cfg = self.config
        return SourceConfig(
            dataset=self.reader.reopen_spec, streams=self.streams, positions=self.steps * cfg.batch_size,
            seed=cfg.seed, rank=self.rank, epoch0=epoch, offset=step * cfg.batch_size,
            train=cfg.train, strict=cfg.strict, batch_size=cfg.batch_size, geometry=self.geometry,
            quarantine=frozenset(self._quarantine), max_pixels=cfg.max_pixels,
            paste=self._paste,
            augment=cfg.transforms, image_size=cfg.image_size)

    def _paste_spec(self) -> PasteSpec | None:
        """CutMix and FMix (binary masks) are mixed inside the DALI graph (uint8 copies on DALI's
        threads or GPU) instead of by torch after it; the source draws their parameters from
        the same position keys, and the targets are built here from the ``lam`` that arrives
        with the batch (:meth:`_finish`). SaliencyMix with the fine-grained saliency too, on
        CPU pipelines (the saliency and box as DALI Numba operators, :mod:`fastcas.mix.graph_ops`)."""
        cfg = self.config
        opts = cfg.mix_options
        if not self.backend.mixes_in_graph:
            return None  # e.g. the torchvision baseline: mixed by torch after it, like every other mix
        if not (cfg.train and cfg.mix_in_pipeline and cfg.mix_kind is not None):
            return None
        if cfg.transforms.reprob > 0:
            return None  # erasing comes before mixing (timm's order): each stream erased, then mixed by torch
        if not MIX_KINDS[cfg.mix_kind].in_graph(opts, self.device):  # e.g. soft FMix masks, GPU SaliencyMix
            return None
        return PasteSpec(kind=cfg.mix_kind, size=cfg.image_size, alpha=cfg.alpha, prob=cfg.mix_prob,
                         mode=opts.get("mode", "elem"), decay=opts.get("decay", 3.0),
                         start_epoch=cfg.mix_start_epoch, stop_epoch=cfg.mix_stop_epoch)

    def _build(self, step: int | None = None):
        """Build the backend so that its next batch is ``step`` (default: the next one
        consumed) of this epoch."""
        step = self.step if step is None else int(step)
        self.close()
        self.backend.build(SampleSource(self._source_config(self.epoch, step)), self.config, self.device)
        self._pipe_at = self._built = (self.epoch, step)

    def _run(self):
        """One batch from the backend; a dead worker raises WorkerDiedError (never hangs)
        and closes the pipeline, so the next ``iter(loader)`` rebuilds it at this step."""
        while True:
            try:
                return self.backend.run()
            except workers.WorkerDiedError:
                self.close()
                raise
            except StopIteration:
                raise
            except Exception as exc:  # an undecodable sample? quarantined and rebuilt, or raised
                if not self._quarantine_undecodable(exc):
                    raise

    def _quarantine_undecodable(self, exc) -> bool:
        """After a failed batch: find the samples DALI cannot decode (fastcas.loading.faults). strict:
        raise naming key and shard; else quarantine them, rebuild at this step, return True.
        False when no sample is to blame (the error is not a decode error)."""
        if self._built is None or self.backend.built is None or isinstance(exc, FastcasError):
            return False  # fastcas's own errors already say what failed
        probe = self.backend.decode_probe()
        if probe is None:  # this backend reports the failing sample itself
            return False
        source = self.backend.built[0]
        epoch0, step0 = self._built
        epoch_idx = self.epoch - epoch0
        at = self._pipe_at[1] if self._pipe_at else self.step  # the batch that failed (the producer's)
        first = at - (step0 if epoch_idx == 0 else 0)
        bad = []
        try:
            for k in range(1 + self.backend.prefetch_depth()):  # the failed batch, else one DALI had prefetched
                bad = [
                    (i, why) for i, why in undecodable(source, first + k, epoch_idx, probe) if i not in self._quarantine
                ]
                if bad:
                    break
        except Exception:  # the batch cannot even be recomputed: report the original error
            return False
        del probe  # its pipeline is freed before the rebuild (fastcas.loading.pipeline collects otherwise)
        if not bad:
            return False
        r = self.reader
        where = {i: f"sample {r.keys[i]!r} in {r.shard_paths[r.shard_of(i)]}" for i, _ in bad}
        if self.config.strict:
            i, why = bad[0]
            raise CorruptSampleError(f"{where[i]}: DALI cannot decode it ({why}); pass strict=False to skip and "
                                     "count such samples", r.keys[i]) from exc
        for i, why in bad:
            warnings.warn(f"fastcas: {where[i]}: DALI cannot decode it ({why}); quarantined: every draw of it is "
                          "substituted by the next readable sample and counted in loader.skipped", RuntimeWarning,
                          stacklevel=4)
            self._quarantine.add(i)
        self.close()
        self._build(at)  # same (epoch, step): only the quarantined samples change
        return True

    def __iter__(self):
        """The batches of one pass, like a ``DataLoader``; where it starts is the rule of
        :mod:`fastcas.loading.iteration`: evaluation always at its first batch; training at
        the first step of the epoch set by ``set_epoch`` (or construction), else of the next
        epoch; after ``load_state_dict`` at the loaded position, once. A newer iteration
        supersedes one this thread left open (resuming that one raises RuntimeError). With
        ``prefetch > 0`` the pipeline is run and each batch finished (mixed, targets) on a
        background thread, ``prefetch`` batches ahead of the consumer
        (:class:`fastcas.loading.prefetch.Prefetcher`; on CUDA on its own stream)."""
        me = threading.current_thread()
        with _ITER_LOCK:  # one consumer at a time: two threads would share one pipeline and position
            owner = self._iter_owner
            if owner is not None and owner is not me and owner.is_alive():
                raise RuntimeError(f"this Loader is already being iterated by thread {owner.name!r}; a Loader "
                                   "serves one consumer: build one Loader per thread (or per rank)")
            self._iter_owner = me
            self._iter_id += 1
            mine = self._iter_id
        try:
            yield from self._iterate(Prefetcher, mine)
        finally:
            with _ITER_LOCK:
                if self._iter_id == mine:
                    self._iter_owner = None

    def _iterate(self, Prefetcher, mine: int):
        self._stop_stage()  # an earlier iterator still alive: its producer must not share the pipeline
        iteration.begin(self)
        if self.backend.pipe is None or self._pipe_at != (self.epoch, self.step):
            self._build()
        start, stage = self.step, None
        if self.config.prefetch:
            stage = self._stage = Prefetcher(lambda: self._produce(start), depth=self.config.prefetch,
                                             device=self.device, timeout=self.config.batch_timeout,
                                             on_timeout=self._timeout_error, first_extra=STARTUP_S)
        try:
            for batch in stage if stage is not None else self._produce(start):
                self.step += 1
                yield batch
                if self._iter_id != mine:
                    raise RuntimeError(iteration.SUPERSEDED)
        except Exception:
            if self._iter_id == mine:  # a failure (e.g. WorkerDiedError), not a break: the next iter() retries
                self._next_start = (self.epoch, self.step)
            raise
        finally:
            if stage is not None:
                stage.close()

    def _produce(self, step: int):
        """Finished batches from ``step`` to the end of the epoch (the producer side). Keeps
        ``_pipe_at`` = where the pipeline is, so a consumer that stops early (or a prefetcher
        that ran ahead) makes the next ``iter()`` rebuild at the step it really wants."""
        epoch = self.epoch
        while step < self.steps:
            try:
                out = self._run()
            except StopIteration:  # pragma: no cover - the step count ends the epoch first
                return
            self._pipe_at = (epoch, step + 1)
            yield self._finish(out, step)
            step += 1
        # drain the pipeline's epoch so the next one starts clean
        try:
            while True:
                self._run()
        except StopIteration:
            self.backend.reset()
        self._pipe_at = (epoch + 1, 0)

    def _finish(self, out, step: int | None = None):
        """Pipeline outputs of ``step`` -> ``(images, targets)``, or ``(images, targets, valid)``
        with ``valid_mask`` (bool [n] on the images' device, :meth:`valid`)."""
        step = self.step if step is None else step
        images, targets = self._images_targets(out, step)
        if not self.config.valid_mask:
            return images, targets
        import torch

        return images, targets, pipeline.to_device(torch.from_numpy(self.valid(step)), images.device)

    def _images_targets(self, out, step: int):
        """Pipeline outputs of ``step`` -> ``(images, targets)`` on the images' device, with no
        host synchronisation: host outputs (labels, the skipped column) and the host-drawn
        mixing parameters cross to the device once each, pinned and non-blocking
        (:func:`fastcas.loading.pipeline.to_device`); pixel-dependent parameters (SaliencyMix boxes) are
        computed there (:mod:`fastcas.mix.device`); labels were range-checked at construction."""
        import torch

        cfg = self.config
        n = self._last_size if step == self.steps - 1 else cfg.batch_size
        out = self._layout.named(out, "pipeline")
        skipped = out["skipped"][:n].reshape(-1).numpy()  # a host output: no device round trip
        bad = [self.reader.keys[i] for i in skipped[skipped >= 0]]
        if bad:
            warn_skipped(bad, self.skipped)
        images = out["images0"][:n]
        dev = images.device

        def to_dev(t):
            return pipeline.to_device(t, dev)

        # labels are a host output even of a GPU pipeline: they follow the images' device
        labels = to_dev(out["labels0"][:n].reshape(-1))
        if cfg.channels_last:
            images = images.permute(0, 3, 1, 2)
        kind = cfg.mix_kind
        if kind is None:  # one target shape per `targets` setting, whatever the mixing
            return images, (labels if cfg.target_kind == "hard" else self._smooth(labels))

        # every parameter is keyed by the samples' global positions (fastcas.sampling.geometry)
        positions = self.positions(step)[:n]
        if self._layout.mix is not None:  # mixed by DALI: targets from the lam it applied
            lam = to_dev(out["lam"][:n].reshape(-1))
            if len(self.streams) == 2:
                y_fg = to_dev(out["labels1"][:n].reshape(-1))
            else:
                y_fg = labels[to_dev(torch.from_numpy(mix.pair_partner(positions)))]
            return images, mix.targets_from_lam(lam, labels, y_fg, self.num_classes, cfg.label_smoothing)
        if len(self.streams) == 2:
            fg, y_fg = out["images1"][:n], to_dev(out["labels1"][:n].reshape(-1))
            if cfg.channels_last:
                fg = fg.permute(0, 3, 1, 2)
        else:
            perm = to_dev(torch.from_numpy(mix.pair_partner(positions)))
            fg, y_fg = images[perm], labels[perm]
        params = self._device_params(self.epoch, positions, images.shape[-1], fg, to_dev, step)
        mixed = mix.apply(params, images, fg)
        targets = mix.soft_targets(params, labels, y_fg, self.num_classes, cfg.label_smoothing)
        return mixed, targets

    def _device_params(self, epoch: int, positions, size: int, fg, to_dev, step: int):
        """:meth:`_mix_params` resident on the images' device (:mod:`fastcas.mix.device`)."""
        cfg = self.config
        kind, alpha, prob, opts = mixsched.mix_at(cfg, epoch, step)
        policy = cfg.transforms
        return MIX_KINDS[kind].device_params(cfg.seed, epoch, positions, size, fg, alpha=alpha, prob=prob, options=opts,
                                             to_device=to_dev, mean=policy.mean, std=policy.std)

    def _mix_params(self, epoch: int, positions, size: int, step: int | None = None, **extra):
        """Mixing parameters of the samples at global ``positions`` (batch ``step``), keyed by
        (seed, epoch, position) only; the kind (``mixup_cutmix``) and whether the epoch mixes
        at all by (seed, epoch, step) (:func:`fastcas.loading.mixsched.mix_at`). ``device``: FMix
        masks are built where the images are, from noise drawn on the host."""
        cfg = self.config
        if step is None:  # the global step holding these positions (steps are global_batch apart)
            pos = np.asarray(positions, np.int64).reshape(-1)
            step = int(pos[0]) // self.geometry.global_batch if self.geometry is not None and len(pos) else 0
        kind, alpha, prob, opts = mixsched.mix_at(cfg, epoch, step)
        return mix.make_params_at(kind, cfg.seed, epoch, positions, size, size, alpha=alpha, prob=prob, **extra, **opts)

    def _smooth(self, labels):
        """float32 [n, K]: one-hot rows, smoothed by ``label_smoothing`` (0: exactly one-hot)."""
        import torch

        s = self.config.label_smoothing
        t = torch.full((len(labels), self.num_classes), s / self.num_classes, device=labels.device)
        return t.scatter_(1, labels[:, None], 1 - s + s / self.num_classes)

    def _stop_stage(self) -> None:
        """Stop the prefetch thread of an earlier iteration, unless called from that thread
        (the producer closes and rebuilds the pipeline itself after a decode error). After a
        batch timeout its producer may wait on a stopped worker for good: the pipeline's
        workers are ended (SIGKILL) so that it returns."""
        stage = self._stage
        if stage is not None and stage._thread is not threading.current_thread():
            self._stage = None
            stage.close(stuck=self.backend.kill_workers)

    def worker_pids(self) -> list[int]:
        """The pids of the DALI source worker processes of the current pipeline ([] before the
        first batch, after :meth:`close`, with ``py_workers=0`` or another backend)."""
        return self.backend.worker_pids()

    def _timeout_error(self, seconds: float):
        """No batch within ``batch_timeout``: the error names each worker's pid and /proc state."""
        return workers.timeout_error(self.worker_pids(), seconds, f"epoch {self.epoch}, step {self.step}")

    def close(self) -> None:
        """Stop the prefetch thread, the DALI pipeline and its worker processes."""
        if "backend" not in self.__dict__:  # construction failed before the backend existed
            return
        self._stop_stage()
        self.backend.close()
        self._pipe_at = None
        reader = self.__dict__.get("reader")  # None: construction failed before the reader existed
        if reader is not None and self._owns_reader:  # a reader the caller passed is theirs to close
            reader.close()  # the workers are gone with their pins: trim the cache to its limit

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        c = self.config
        return (f"Loader({str(self.dataset)!r}, batch_size={c.batch_size}, weights={c.weights!r}, "
                f"foreground_weights={c.foreground_weights!r}, mix={c.mix!r}, train={c.train}, "
                f"device={self.device!r}, rank={self.rank}/{self.world_size}, steps={self.steps})")
