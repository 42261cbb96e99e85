"""The producer thread: batches are run and finished (mixed, targets built) off the training thread.

    for batch in Producer(produce, depth=2, device="cuda"):   # produce: an iterator factory
        ...

The Loader's ``prefetch`` option (finished batches ahead of the consumer) is ``depth``; this
module is the only place that thread is started (named ``fastcas-producer``).

``produce()`` runs on one background thread and yields finished batches (tuples of torch
tensors); at most ``depth`` of them wait in a queue, so the producer works ``depth`` batches
ahead of the consumer and overlaps with its training step. On CUDA the producer runs on its
own stream; every batch carries an event recorded after its last kernel, the consumer's
current stream waits on that event (a device-side wait: no host synchronisation), and each
tensor is marked ``record_stream`` so the caching allocator does not reuse its memory while the
consumer's stream may still read it. This is the pattern of torch's DataLoader pin-memory thread
and of NVIDIA's DeepLearningExamples ``data_prefetcher``: the stream and event semantics are
torch's own, so the same code runs on CPU (no streams, no events) and on the GPU.

Errors raised by the producer are re-raised on the consumer thread, at the batch where they
happened. Closing the producer (or dropping the iterator early) stops the producer after the
batch it is working on; :attr:`produced` and :attr:`consumed` say how far each side got.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Producer:
    """Iterate over ``produce()`` with the producer on a background thread.

    produce: a zero-argument callable returning an iterator of batches (tuples/lists of tensors
    or other objects; only torch tensors get stream handling). depth: batches produced ahead
    (>= 1). device: "cpu" or "cuda" (or a torch.device): where the tensors live.
    """

    def __init__(self, produce: Callable[[], Iterator], *, depth: int = 2, device="cpu",
                 timeout: float | None = None, on_timeout: Callable[[float], BaseException] | None = None,
                 first_extra: float = 0.0):
        if int(depth) < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._produce = produce
        # the consumer waits at most `timeout` s for a batch (the first: `first_extra` s more, for
        # the producer's start-up), then raises on_timeout(timeout)
        self.timeout, self._on_timeout, self.timed_out = timeout, on_timeout, False
        self._first_extra = float(first_extra)
        self.depth = int(depth)
        self.cuda = str(device).startswith("cuda")
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.produced = 0
        self.consumed = 0
        self._stream = None
        if self.cuda:
            import torch

            # one side stream per producer; created here so it belongs to the caller's device
            self._stream = torch.cuda.Stream()

    # -- producer side -------------------------------------------------------------------
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            if self.cuda:
                import torch

                with torch.cuda.stream(self._stream):
                    self._loop(torch)
            else:
                self._loop(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(_Failure(exc))
            return
        self._put(_DONE)

    def _loop(self, torch) -> None:
        for batch in self._produce():
            event = None
            if torch is not None:
                event = torch.cuda.Event()
                event.record(self._stream)
            if not self._put((batch, event)):
                return
            self.produced += 1
            if self._stop.is_set():
                return

    # -- consumer side -------------------------------------------------------------------
    def __iter__(self):
        if self._thread is not None:
            raise RuntimeError("a Producer can be iterated once")
        self._thread = threading.Thread(target=self._run, name="fastcas-producer", daemon=True)
        self._thread.start()
        try:
            while True:
                try:
                    wait = self.timeout
                    if wait is not None and self.consumed == 0:
                        wait += self._first_extra
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    self.timed_out = True
                    self._stop.set()
                    raise (self._on_timeout(self.timeout) if self._on_timeout is not None else
                           TimeoutError(f"no batch within {self.timeout} s")) from None
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                batch, event = item
                if event is not None:
                    self._hand_over(batch, event)
                self.consumed += 1
                yield batch
        finally:
            self.close()

    def _hand_over(self, batch, event) -> None:
        import torch

        current = torch.cuda.current_stream()
        current.wait_event(event)  # device-side wait, the host goes on
        for t in _flat(batch):
            if isinstance(t, torch.Tensor) and t.is_cuda:
                t.record_stream(current)

    def close(self, stuck: Callable[[], None] | None = None) -> None:
        """Stop the producer (after the batch in hand) and wait for its thread. After a timeout
        the producer may be blocked for good: ``stuck()`` is called first to unblock it (the
        Loader ends the pipeline's workers); without it close returns without waiting, and the
        owner closes again with ``stuck``."""
        self._stop.set()
        t = self._thread
        if t is not None and t.is_alive() and t is not threading.current_thread():
            if self.timed_out:
                if stuck is None:
                    return
                stuck()
            # drain so a producer blocked on a full queue sees the stop flag
            while t.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            t.join()


def _flat(item):
    """The leaves of nested tuples/lists (a Loader's item is ``((images, targets[, valid]), keys)``)."""
    if isinstance(item, (tuple, list)):
        for x in item:
            yield from _flat(x)
    else:
        yield item
