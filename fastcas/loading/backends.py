"""Execution backends of the :class:`~fastcas.loading.loader.Loader`: what turns a
:class:`~fastcas.loading.source.SampleSource` into batches in the pipeline layout
(:class:`~fastcas.loading.layout.BatchLayout`, ``pipeline_names``).

A backend builds (for a source whose next batch is a given step), runs one batch (raising
StopIteration at the end of the pipeline's epoch), resets after an epoch, and closes. The
Loader owns the rest: samplers and stream geometry, the source, finishing (mixing, targets),
state and quarantine. Three backends:

* :class:`DaliBackend` — the DALI graph (:mod:`fastcas.loading.pipeline`, the only module that
  imports DALI), its worker processes and the watcher that turns a dead worker into an error;
  it can mix in the graph.
* :class:`fastcas.loading.cpu_resize.TorchResizeBackend` — a DaliBackend whose graph only
  decodes (the same ROI decode); resize, flip, CutMix / FMix and normalisation follow in torch on
  a thread pool (``cpu_resize="torch"`` on a CPU device; the Loader's choice is
  :func:`fastcas.loading.cpu_resize.make_backend`).
* :class:`fastcas.loading.baseline.TorchvisionBackend` — the same source through
  ``torch.utils.data.DataLoader``, PIL and torchvision v2 (the honest baseline); it never mixes
  in a graph (mixing happens after it, like every torch-side mix). It lives beside the
  baseline's dataset, which imports the Loader.
"""
from __future__ import annotations

import traceback

from fastcas.loading import pipeline, workers
from fastcas.loading.pipeline import DecodeProbe, PipelineConfig, build_pipeline, require_dali


class DaliBackend:
    """The DALI pipeline of a Loader. ``pipe``: the built pipeline or None; ``built``:
    ``(source, PipelineConfig)`` of the last build, for the quarantine's decode probes."""

    name = "dali"
    mixes_in_graph = True

    def __init__(self):
        require_dali()
        self.pipe = None
        self.watch = None
        self.built = None
        self.device = None
        self.builds = 0  # pipelines built (a diagnostic: one per decode failure after the first)
        self.join_timeouts = 0  # workers still alive when close() stopped waiting for them

    def build(self, source, cfg, device: str) -> None:
        """Build the graph for ``source`` (its offset is the first step) with LoaderConfig
        ``cfg`` on ``device`` ("cpu" or "cuda")."""
        self.close()
        device_id = None
        if device == "cuda":
            import torch

            device_id = torch.cuda.current_device()
        pcfg = PipelineConfig(batch_size=cfg.batch_size, image_size=cfg.image_size, train=cfg.train,
                              device=device, device_id=device_id, num_threads=cfg.num_threads,
                              py_workers=cfg.py_workers, dtype=cfg.dtype, channels_last=cfg.channels_last,
                              fmix_select=cfg.fmix_select)
        with workers.die_with_parent():  # workers forked here exit when this process dies
            self.pipe = build_pipeline(source, pcfg)
        self.watch = workers.WorkerWatch(self.pipe)
        self.built, self.device = (source, pcfg), device
        self.builds += 1

    def run(self) -> list:
        """One batch (pipeline layout); a dead worker raises WorkerDiedError, never hangs."""
        try:
            with self.watch or workers.NO_WATCH:
                return self._outputs()
        except BaseException as exc:
            # the finished frames of the traceback (pipeline.run, DALI's Pipeline methods) hold the
            # failed pipeline in their locals: cleared, so close() really stops it and its workers
            # exit at once instead of close() waiting out its join timeout per worker (the
            # traceback still prints file and line)
            cause = exc
            for _ in range(8):  # and those of the exception it was raised from (WorkerDiedError's)
                if cause is None:
                    break
                traceback.clear_frames(cause.__traceback__)
                cause = cause.__cause__ or cause.__context__
            restored = workers.restore_worker_error(exc)
            if restored is not None:  # a fastcas error raised in a DALI worker arrives as its own type
                raise restored from exc
            raise

    def _outputs(self) -> list:
        """The pipeline's outputs of one batch as torch tensors (a subclass may keep DALI's)."""
        return pipeline.run(self.pipe, self.device)

    def worker_pids(self) -> list[int]:
        """The pids of the pipeline's source worker processes ([] without a pipeline or workers)."""
        return list(self.watch.pids) if self.watch is not None else []

    def kill_workers(self) -> None:
        """SIGKILL the pipeline's source workers: a producer blocked on a stopped one raises
        (WorkerDiedError) instead of waiting forever. The pipeline is dead afterwards."""
        if self.watch is not None:
            workers.kill_processes(self.watch.processes)

    def reset(self) -> None:
        pipeline.reset(self.pipe)

    def decode_probe(self):
        """A host decoder with the pipeline's settings (:class:`fastcas.loading.pipeline.DecodeProbe`)."""
        pcfg = self.built[1]
        return DecodeProbe(pcfg.device, pcfg.device_id)

    def queue_depth(self) -> int:
        """Batches DALI computes ahead of the one it returns (its ``prefetch_queue_depth``; not the
        Loader's ``prefetch``): a failed batch may be one of these."""
        return self.built[1].prefetch

    def close(self) -> None:
        """Stop DALI and wait (up to 10 s) for its worker processes to exit: what they held
        (streaming mode's cache pins) is released when close returns."""
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.close()
        self.pipe = None  # dropping the last reference stops DALI and its workers
        for proc in (watch.processes if watch is not None else ()):
            try:
                proc.join(10.0)
                self.join_timeouts += proc.is_alive()
            except (AssertionError, ValueError, OSError):  # not our child / already reaped
                pass
