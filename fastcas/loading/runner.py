"""The runner of a :class:`~fastcas.loading.loader.Loader`: build, run, drain, the
undecodable-sample quarantine and the rebuild after it, owned by one thread (issue 33).

A step's data path: the consumer thread starts an iteration at ``(epoch, step)`` and hands the
runner to the producer thread (:class:`fastcas.loading.producer.Producer`, with ``prefetch > 0``;
with ``prefetch=0`` the consumer runs the same generator inline). :meth:`Runner.produce` runs
the backend (the DALI graph of a :class:`~fastcas.loading.source.SampleSource` configured by the
:class:`~fastcas.loading.plan.StepPlan`), gives each step's pipeline outputs to the finisher
(:class:`fastcas.loading.finisher.Finisher`) and yields the finished batch; after the last step
it drains the pipeline's epoch. A batch DALI cannot decode is traced to its samples
(:mod:`fastcas.loading.faults`), which are quarantined, and the pipeline is rebuilt at the same
step, on the same thread: the consumer never sees a half-built runner.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

from fastcas.core.errors import CorruptSampleError, FastcasError
from fastcas.loading import workers
from fastcas.loading.faults import failed_slot, undecodable
from fastcas.loading.plan import StepPlan
from fastcas.loading.source import SampleSource


class Runner:
    """The execution backend of one Loader and where its pipeline is.

    Thread ownership: while an iteration runs, only the thread producing its batches (the
    producer thread, or the consumer inline with ``prefetch=0``) calls :meth:`produce`,
    :meth:`run`, :meth:`build` and the quarantine; between iterations (after the producer has
    stopped) the consumer thread does (:meth:`ready_at`, :meth:`build`, :meth:`close`,
    :meth:`set_quarantine`). Fields, all written by the owner only: ``backend`` (the engine,
    :mod:`fastcas.loading.backends`), ``pipe_at`` ((epoch, step) the pipeline yields next, None:
    not built), ``built`` ((epoch, step) of the last build), ``quarantine`` (frozenset of sample
    indices DALI cannot decode; replaced, never mutated, so the consumer's ``state_dict`` reads a
    consistent snapshot at any time). The consumer's one other read during an iteration is a
    diagnostic: ``backend.worker_pids()`` / ``backend.kill_workers`` after a batch timeout.
    """

    def __init__(self, plan: StepPlan, backend, device: str, reader, trim_cache: bool):
        self.plan, self.backend, self.device, self.reader = plan, backend, device, reader
        # after the pipeline closed, its workers' pins are gone: this process's pins are dropped and the
        # shard cache trimmed (only for a reader the Loader opened: a caller's reader keeps its pins)
        self._trim_cache = trim_cache
        self.quarantine: frozenset[int] = frozenset()
        self.pipe_at: tuple[int, int] | None = None
        self.built: tuple[int, int] | None = None

    def ready_at(self, epoch: int, step: int) -> bool:
        """Whether the pipeline's next batch is ``step`` of ``epoch`` (no rebuild needed)."""
        return self.backend.pipe is not None and self.pipe_at == (epoch, step)

    def build(self, epoch: int, step: int) -> None:
        """(Re)build the backend so that its next batch is ``step`` of ``epoch``."""
        self.close()
        source = SampleSource(self.plan.source_config(epoch, step, self.quarantine))
        self.backend.build(source, self.plan.config, self.device)
        self.pipe_at = self.built = (epoch, step)

    def produce(self, epoch: int, step: int, finish: Callable) -> Iterator:
        """``finish(outputs, epoch, step)`` of each step from ``step`` to the end of ``epoch``.
        Keeps ``pipe_at`` = where the pipeline is, so a consumer that stops early (or a producer
        that ran ahead) makes the next iteration rebuild at the step it really wants."""
        while step < self.plan.steps:
            try:
                out = self.run()
            except StopIteration:  # pragma: no cover - the step count ends the epoch first
                return
            self.pipe_at = (epoch, step + 1)
            yield finish(out, epoch, step)
            step += 1
        try:  # drain the pipeline's epoch so the next one starts clean
            while True:
                self.run()
        except StopIteration:
            self.backend.reset()
        self.pipe_at = (epoch + 1, 0)

    def run(self):
        """One batch from the backend (pipeline layout); a dead worker raises WorkerDiedError
        (never hangs) and closes the pipeline, so the next iteration rebuilds it at this step;
        an undecodable sample is quarantined and the pipeline rebuilt (or raised, ``strict``)."""
        while True:
            try:
                return self.backend.run()
            except workers.WorkerDiedError:
                self.close()
                raise
            except StopIteration:
                raise
            except Exception as exc:
                if not self._quarantine_undecodable(exc):
                    raise

    def _quarantine_undecodable(self, exc) -> bool:
        """After a failed batch: find the samples DALI cannot decode (fastcas.loading.faults). strict:
        raise naming key and shard; else quarantine them, rebuild at this step, return True.
        False when no sample is to blame (the error is not a decode error)."""
        if self.built is None or self.pipe_at is None or self.backend.built is None or isinstance(exc, FastcasError):
            return False  # fastcas's own errors already say what failed
        probe = self.backend.decode_probe()
        if probe is None:  # this backend reports the failing sample itself
            return False
        source = self.backend.built[0]
        (epoch0, step0), (epoch, at) = self.built, self.pipe_at  # `at`: the batch that failed
        first = at - (step0 if epoch == epoch0 else 0)
        try:  # the failed batch, or one DALI had queued; the slot DALI named first
            bad = undecodable(source, first, 1 + self.backend.queue_depth(), epoch - epoch0, probe, failed_slot(exc),
                              self.quarantine)
        except Exception:  # the batch cannot even be recomputed: report the original error
            return False
        del probe  # its pipeline is freed before the rebuild (fastcas.loading.pipeline collects otherwise)
        if not bad:
            return False
        r = self.reader
        where = {i: f"sample {r.keys[i]!r} in {r.shard_paths[r.shard_of(i)]}" for i, _ in bad}
        if self.plan.config.strict:
            i, why = bad[0]
            raise CorruptSampleError(f"{where[i]}: DALI cannot decode it ({why}); pass strict=False to skip and "
                                     "count such samples", r.keys[i]) from exc
        for i, why in bad:
            warnings.warn(f"fastcas: {where[i]}: DALI cannot decode it ({why}); quarantined: every draw of it is "
                          "substituted by the next readable sample and counted in loader.skipped", RuntimeWarning,
                          stacklevel=4)
        self.quarantine = self.quarantine | {i for i, _ in bad}
        self.build(epoch, at)  # same (epoch, step): only the quarantined samples change
        return True

    def set_quarantine(self, quarantine: frozenset) -> None:
        """The quarantine of a loaded state (consumer thread, between iterations): the pipeline's
        source carries it, so a change closes the pipeline (the next iteration rebuilds)."""
        if frozenset(quarantine) != self.quarantine:
            self.quarantine = frozenset(quarantine)
            self.close()

    def close(self) -> None:
        """Stop the pipeline and its worker processes; the next iteration rebuilds."""
        self.backend.close()
        self.pipe_at = None
        if self._trim_cache and self.reader.cache is not None:
            self.reader.cache.release()  # never reader.close(): the consumer may be reading the reader
