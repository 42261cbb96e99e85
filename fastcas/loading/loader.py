"""``fastcas.Loader``: weighted, mixed, resumable batches from indexed shards via DALI.

    loader = fastcas.Loader("data/train", 256, weights="cas", scores="scores.parquet",
                            mix="cutmix", alpha=0.2)
    for epoch in range(E):
        loader.set_epoch(epoch)
        for images, targets in loader:   # [B,3,S,S] float on the device; [B,K] soft targets
            ...

Iteration rule (as a ``DataLoader``): see :meth:`Loader.__iter__`.

Stages: weights -> stateless sampler(s) (:mod:`fastcas.loading.samplers`) -> the pure plan of each
step (:class:`~fastcas.loading.plan.StepPlan`) -> :class:`~fastcas.loading.source.SampleSource` ->
DALI pipeline (:mod:`fastcas.loading.pipeline`), run by the :class:`~fastcas.loading.runner.Runner`
-> the :class:`~fastcas.loading.finisher.Finisher` (mixing by :mod:`fastcas.mix`, targets) on
the same device, on the producer thread (:mod:`fastcas.loading.producer`) -> the consumer.
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

import threading
from pathlib import Path

import numpy as np

from fastcas.dataset.classes import check_same_classes
from fastcas.dataset.reader import reader_for
from fastcas.loading import checks, cpu_resize, iteration, workers
from fastcas.loading.config import LoaderConfig, check_option_names, resolve_device, translate_deprecated
from fastcas.loading.finisher import Finisher
from fastcas.loading.layout import BatchLayout
from fastcas.loading.plan import StepPlan, paste_spec, step_counts
from fastcas.loading.producer import Producer
from fastcas.loading.resume import Cursor
from fastcas.loading.runner import Runner
from fastcas.loading.samplers import StreamFactory, load_scores
from fastcas.loading.source import SampleSource, warn_skipped
from fastcas.sampling.sampler import _dist_defaults

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

    Threads and what each owns (issue 33):

    * immutable after construction, read by every thread: ``config``, ``dataset``, ``reader``,
      ``num_classes``, ``rank``, ``world_size``, ``device``, ``scores``, ``notes``, ``streams``
      (their own caches aside), ``geometry``, ``steps``, ``_plan`` (the
      :class:`~fastcas.loading.plan.StepPlan`), ``_finisher``;
    * the consumer thread (the one iterating, calling ``set_epoch`` / ``state_dict`` /
      ``load_state_dict`` / ``close``): ``_cursor`` (``epoch``, ``step``, ``skipped``:
      :class:`~fastcas.loading.resume.Cursor`), ``_next_start``, ``_loaded``, ``_producer`` (the
      producer thread of the current iteration), and ``_iter_owner`` / ``_iter_id`` under
      ``iteration.LOCK``;
    * the producer thread during an iteration (the consumer itself with ``prefetch=0``, and the
      consumer between iterations): ``_runner`` (the backend, where its pipeline is, the
      quarantine: :class:`~fastcas.loading.runner.Runner`). The consumer sees only finished
      batches and its position.
    """

    def __init__(self, dataset, batch_size: int, *, scores=None, rank: int | None = None,
                 world_size: int | None = None, backend=None, class_names=None, **options):
        self._runner: Runner | None = None  # first: close() (and __del__) of a half-built loader has nothing to stop
        self._producer: Producer | None = None  # the producer thread of the current iteration
        self._iter_owner: threading.Thread | None = None  # the thread iterating (guarded by _ITER_LOCK)
        self._iter_id = 0  # names the newest iteration (guarded by _ITER_LOCK)
        check_option_names(options)
        options = translate_deprecated(options)  # b / r: a DeprecationWarning at the caller's line
        self.config = cfg = LoaderConfig(batch_size=batch_size, **options)
        # the execution engine (fastcas.loading.backends): DALI (+ torch resize on a CPU with cpu_resize="torch",
        # fastcas.loading.cpu_resize) unless a twin asks for another
        backend = cpu_resize.make_backend(cfg, resolve_device(cfg.device)) if backend is None else backend
        # a reader the caller passed stays theirs (close() leaves it open); the workers reopen its reopen_spec
        self.reader, self._owns_reader = reader_for(dataset, cache_dir=cfg.cache_dir,
                                                    cache_max_bytes=cfg.cache_max_bytes, remote=cfg.remote)
        self.dataset = Path(self.reader.root)
        self.num_classes = self.reader.num_classes
        if class_names is not None:  # the training set's vocabulary (fastcas.dataset.classes)
            check_same_classes(class_names, self.reader.class_names, what=str(self.dataset))
        self._check_labels()
        checks.check_rank(rank, world_size)  # rank=0.5 is not rank 0
        self.rank, self.world_size = _dist_defaults(rank, world_size)
        self.device = resolve_device(cfg.device)
        self.scores, scores_id = load_scores(cfg, self.reader, scores)
        self.notes: list[str] = []  # warnings about the sampling weights, for a training log
        self.streams = StreamFactory(cfg, self.reader, self.rank, self.world_size, self.scores, scores_id,
                                     self.notes).streams()
        self.geometry, self.steps, last_size = step_counts(cfg, self.streams, len(self.reader), self.world_size)
        paste = paste_spec(cfg, backend.mixes_in_graph, self.device)
        self._plan = StepPlan(cfg, self.streams, self.geometry, self.rank, self.world_size, self.steps, last_size,
                              self.reader.reopen_spec, self.reader.keys, paste)
        layout = BatchLayout(len(self.streams), None if paste is None else paste.kind)
        self._finisher = Finisher(self._plan, layout, self.num_classes)
        self._runner = Runner(self._plan, backend, self.device, self.reader, trim_cache=self._owns_reader)
        self._cursor = Cursor(self._plan, self.reader, self._runner)
        # the iteration rule (__iter__): where the next iter() starts, when set by construction,
        # set_epoch or load_state_dict (_loaded)
        self._next_start: tuple[int, int] | None = (0, 0)
        self._loaded = False

    def _check_labels(self) -> None:
        labels = np.asarray(self.reader.labels)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
            raise ValueError(
                f"{self.dataset}: label {bad} outside [0, {self.num_classes}) (num_classes of the manifest)"
            )

    # -- the consumer's position and the runner's backend (see the class docstring) -----------
    @property
    def epoch(self) -> int:
        return self._cursor.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._cursor.epoch = value

    @property
    def step(self) -> int:
        """The next batch this rank's consumer receives in :attr:`epoch`."""
        return self._cursor.step

    @step.setter
    def step(self, value: int) -> None:
        self._cursor.step = value

    @property
    def skipped(self) -> dict[str, int]:
        """Unreadable samples substituted in the batches received, by key (a count each)."""
        return self._cursor.skipped

    @property
    def backend(self):
        """The execution engine (:mod:`fastcas.loading.backends`), owned by the runner."""
        return self._runner.backend

    # -- the plan (pure; any thread) ---------------------------------------------------------
    @property
    def graph_mix(self) -> str | None:
        """The mix kind mixed inside the DALI graph for this config, backend and device
        ("cutmix", "fmix" with binary masks, "saliencymix" on the CPU with the fine-grained
        saliency), or None: no mixing, or mixed by torch after the pipeline (mixup, soft FMix
        masks, erasing, ``mix_in_pipeline=False``, GPU SaliencyMix). The stream is the same."""
        return None if self._plan.paste is None else self._plan.paste.kind

    def sampler_indices(self, epoch: int) -> list[np.ndarray]:
        """Per stream, the global indices this rank reads in ``epoch`` (before padding)."""
        return self._plan.sampler_indices(epoch)

    def positions(self, step: int, epoch: int | None = None) -> np.ndarray:
        """int64 global positions this rank consumes at ``step`` (training; evaluation: this
        rank's local positions)."""
        return self._plan.positions(step)

    def source(self, epoch: int | None = None, step: int | None = None) -> SampleSource:
        """The stateless sample source (what each DALI worker runs) of a pipeline whose first
        batch is ``step`` of ``epoch`` (default: the next batch), with the current quarantine: to
        time or inspect the host stage on its own (``source.batch(epoch, positions)``, named by
        ``source.layout``)."""
        epoch = self.epoch if epoch is None else int(epoch)
        step = self.step if step is None else int(step)
        return SampleSource(self._plan.source_config(epoch, step, self._runner.quarantine))

    def valid(self, step: int) -> np.ndarray:
        """bool [n] for this rank's batch ``step``: False marks a padding repeat (evaluation with
        ``last_batch`` "pad", or a rank with fewer samples when ``W`` does not divide the split),
        so that metrics count every sample exactly once over all ranks. All True in training."""
        return self._plan.valid(step)

    def plan(self, step: int | None = None, epoch: int | None = None) -> dict:
        """What this rank's batch at ``step`` of ``epoch`` (default: the next one) is made of,
        computed on the host without DALI (:meth:`fastcas.loading.plan.StepPlan.describe`):
        ``positions`` int64 [n]; per stream (lists) ``indices`` int64 [n] (the samples the batch
        holds, padding included), ``keys``, ``labels`` int64 [n], ``windows`` float32 [n, 4]
        ``(x, y, w, h)`` normalised, ``flips`` int32 [n], ``augment`` (dicts of the transform
        draws, :meth:`fastcas.loading.transforms.AugmentPolicy.draws`); and when mixing,
        ``partner`` (local indices of the in-batch partners, or None for two-stream recipes),
        ``partner_keys`` and ``params``
        (:class:`fastcas.mix.MixParams`; SaliencyMix needs pixels for its boxes, so there
        ``params`` is None and ``drawn``/``mixed`` are given)."""
        epoch = self.epoch if epoch is None else int(epoch)
        step = self.step if step is None else int(step)
        return self._plan.describe(epoch, step, self._runner.quarantine)

    # -- epochs and state (consumer thread) --------------------------------------------------
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

    def state_dict(self) -> dict:
        """Where the next batch comes from (:meth:`fastcas.loading.resume.Cursor.state_dict`):
        ``epoch``, ``position`` (the global position consumed in the epoch, a multiple of the
        global batch), this rank's ``step``, the geometry it was saved at, ``config`` (what must
        match to resume: dataset, seed, weights and their digest, epoch length, global batch,
        mixing and image size), ``skipped`` and ``quarantine``. Everything else is a function of
        the config."""
        return self._cursor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``, saved by this loader or by one at another world size and
        per-rank batch with the same global batch (training). Raises ValueError naming what
        differs for a state of another dataset, seed, weights, epoch length or global batch
        (and, mid-epoch, of other mixing settings or image size). A state at the end of its
        epoch starts the next epoch. Evaluation loaders and states without ``position``
        (older fastcas) continue at ``step`` with the same world size only. The next
        ``iter(loader)`` starts there (an evaluation loader too, once: e.g. a long scoring pass
        resumed)."""
        self._check_not_iterating("load_state_dict")
        self._stop_producer()  # after a batch timeout it may still run the pipeline the load closes
        self._cursor.load_state_dict(state)
        self._next_start, self._loaded = (self.epoch, self.step), True

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self):
        """The batches of one pass, like a ``DataLoader``; where it starts is the rule of
        :mod:`fastcas.loading.iteration`: evaluation always at its first batch; training at
        the first step of the epoch set by ``set_epoch`` (or construction), else of the next
        epoch; after ``load_state_dict`` at the loaded position, once. A newer iteration
        supersedes one this thread left open (resuming that one raises RuntimeError). With
        ``prefetch > 0`` the pipeline is run and each batch finished (mixed, targets) on the
        producer thread, ``prefetch`` batches ahead of the consumer
        (:class:`fastcas.loading.producer.Producer`; on CUDA on its own stream)."""
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
            yield from self._iterate(mine)
        finally:
            with _ITER_LOCK:
                if self._iter_id == mine:
                    self._iter_owner = None

    def _iterate(self, mine: int):
        """One step's data path: the runner (producer thread) runs the pipeline at ``(epoch,
        step)`` and the finisher finishes its outputs; the consumer receives the batch, counts
        its skipped samples and advances ``step``."""
        self._stop_producer()  # an earlier iterator still alive: its producer must not share the pipeline
        iteration.begin(self)
        epoch, start, runner, finisher = self.epoch, self.step, self._runner, self._finisher
        if not runner.ready_at(epoch, start):
            runner.build(epoch, start)

        def produce():
            return runner.produce(epoch, start, finisher)

        producer = None
        if self.config.prefetch:
            producer = self._producer = Producer(produce, depth=self.config.prefetch, device=self.device,
                                                 timeout=self.config.batch_timeout, on_timeout=self._timeout_error,
                                                 first_extra=STARTUP_S)
        try:
            for batch, skipped in producer if producer is not None else produce():
                if skipped:
                    warn_skipped(self.reader, skipped, self._cursor.skipped)
                self.step += 1
                yield batch
                if self._iter_id != mine:
                    raise RuntimeError(iteration.SUPERSEDED)
        except Exception:
            if self._iter_id == mine:  # a failure (e.g. WorkerDiedError), not a break: the next iter() retries
                self._next_start = (self.epoch, self.step)
            raise
        finally:
            if producer is not None:
                producer.close()

    def _stop_producer(self) -> None:
        """Stop the producer thread of an earlier iteration. After a batch timeout it may wait
        on a stopped worker for good: the pipeline's workers are ended (SIGKILL) so that it
        returns."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(stuck=self._runner.backend.kill_workers)

    def worker_pids(self) -> list[int]:
        """The pids of the DALI source worker processes of the current pipeline ([] before the
        first batch, after :meth:`close`, with ``py_workers=0`` or another backend)."""
        return self._runner.backend.worker_pids()

    def _timeout_error(self, seconds: float):
        """No batch within ``batch_timeout``: the error names each worker's pid and /proc state."""
        return workers.timeout_error(self.worker_pids(), seconds, f"epoch {self.epoch}, step {self.step}")

    def close(self) -> None:
        """Stop the producer thread, the DALI pipeline and its worker processes."""
        if self._runner is None:  # construction failed before the runner existed
            return
        self._stop_producer()
        self._runner.close()
        if self._owns_reader:  # a reader the caller passed is theirs to close
            self.reader.close()

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
