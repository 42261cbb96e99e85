"""Worker-process faults: a dead source worker raises instead of hanging, and no worker
outlives the process that started it.

Why DALI alone hangs (DALI 2.4, ``nvidia/dali/_multiproc``): an idle worker sleeps in
``multiprocessing.Condition.wait`` on its task queue (``ShmQueue.get``), which counts it in
the condition's ``_sleeping_count``. When it is killed there, the next ``pipe.run()``
schedules a batch: ``ShmQueue.put`` -> ``Condition.notify`` releases the wait semaphore for
that sleeper and then blocks in ``_woken_count.acquire()`` until the sleeper acknowledges,
which a dead process never does. DALI's ``Observer`` thread does see the death (it waits on
the process sentinels) and closes the *result* queue, but the main thread is stuck earlier,
on the *task* queue, which the observer deliberately leaves alone after an abrupt exit. With
two or more workers a live sleeper acknowledges the notify, so only ``py_workers=1`` hangs.

:class:`WorkerWatch` waits on the same sentinels in its own thread; when a worker dies it
releases ``_woken_count`` once on every task queue, so a blocked ``notify`` returns, the
main thread reaches the (closed) result queue and DALI raises; :meth:`WorkerWatch.__exit__`
turns that, or any error raised while a worker is dead, into :class:`WorkerDiedError`
naming the pid and the signal. The pipeline is dead afterwards and must be rebuilt.

Parent death: :func:`die_with_parent` arms workers forked while it is active (``fork``
start method, via ``os.register_at_fork``) and :func:`arm_current_process` arms a spawned
worker (called when the source is unpickled there). Arming sets ``PR_SET_PDEATHSIG``
(Linux; only when the fork comes from the main thread, because the kernel ties it to the
forking *thread*) and starts a daemon thread that exits the worker when its parent pid
changes (any POSIX; at most ``_POLL_S`` late).

This module reads DALI's private pool attributes (``_py_pool.pool._processes``, the task
queues' conditions); :func:`pool_processes` returns ``[]`` where they are missing, so a
future DALI degrades to DALI's own behaviour rather than failing.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import signal
import threading
import time
from multiprocessing.connection import wait as _wait_ready

from fastcas.core.errors import BatchTimeoutError, FastcasError, WorkerDiedError

_POLL_S = 0.25
_PR_SET_PDEATHSIG = 1


# -- dead workers -------------------------------------------------------------------------
def pool_processes(pipe) -> list:
    """The ``multiprocessing.Process`` objects of a DALI pipeline's source workers ([] when
    the pipeline has none: ``py_workers=0``, the baseline, or unknown DALI internals)."""
    pool = getattr(getattr(pipe, "_py_pool", None), "pool", None)
    return list(getattr(pool, "_processes", None) or [])


def _task_conditions(pipe) -> list:
    pool = getattr(getattr(pipe, "_py_pool", None), "pool", None)
    queues = [getattr(pool, "_general_task_queue", None)]
    queues += [getattr(c, "dedicated_task_queue", None) for c in getattr(pool, "_workers_contexts", None) or []]
    return [q.cv_not_empty for q in queues if q is not None and hasattr(q, "cv_not_empty")]


def describe_exit(pid, exitcode) -> str:
    """'pid 123 killed by SIGKILL' / 'pid 123 exited with status 1'."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {
            signal.SIGKILL: " (out of memory? see `dmesg`)",
            signal.SIGBUS: " (a memory-mapped shard was truncated or rewritten while being read?)",
        }.get(-exitcode, "")
        return f"pid {pid} killed by {name}{hint}"
    return f"pid {pid} exited with status {exitcode}"


class WorkerWatch:
    """Watches a pipeline's worker processes; use ``with watch: pipe.run()``.

    ``__enter__`` raises :class:`WorkerDiedError` if a worker is already dead; ``__exit__``
    converts an exception raised while (or because) a worker died. A no-op without workers.
    """

    def __init__(self, pipe, what: str = "DALI source worker"):
        self.what = what
        self.processes = pool_processes(pipe)
        self.pids = [p.pid for p in self.processes]
        self._conditions = _task_conditions(pipe)
        self._dead: list = []
        self._died = threading.Event()
        self._thread = None
        self._stop_r = self._stop_w = None
        if self.processes:
            self._stop_r, self._stop_w = os.pipe()
            self._thread = threading.Thread(target=self._watch, name="fastcas-worker-watch", daemon=True)
            self._thread.start()

    def _watch(self):
        sentinels = {p.sentinel: p for p in self.processes}
        try:
            ready = _wait_ready(list(sentinels) + [self._stop_r])
        except OSError:  # the stop pipe was closed under us: shutting down
            return
        if self._stop_r in ready:
            return
        self._dead = [p for p in self.processes if p.exitcode is not None] or [sentinels[s] for s in ready]
        self._died.set()
        # unblock a main thread stuck in Condition.notify waiting for the dead sleeper
        for cond in self._conditions:
            try:
                cond._woken_count.release()
            except Exception:  # pragma: no cover - DALI/multiprocessing internals changed
                pass

    def dead(self, wait: float = 0.0) -> list:
        """The processes that have exited (waiting up to ``wait`` s for the watcher)."""
        if self.processes and wait:
            self._died.wait(wait)
        return [p for p in self.processes if p.exitcode is not None]

    def error(self, dead) -> WorkerDiedError:
        desc = ", ".join(describe_exit(p.pid, p.exitcode) for p in dead)
        return WorkerDiedError(f"{self.what} died: {desc}. Its pipeline cannot continue; iterating the loader "
                               "again restarts it from the same step", pids=[p.pid for p in dead])

    def check(self) -> None:
        dead = self.dead()
        if dead:
            raise self.error(dead)

    def __enter__(self):
        self.check()
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.processes or isinstance(exc, WorkerDiedError):
            return False
        if exc_type is None or exc_type is StopIteration:
            self.check()  # a batch prefetched before the death is not delivered: the step is redone
            return False
        if not self._exiting():
            return False  # e.g. a sample DALI cannot decode: no worker to wait for
        dead = self.dead(wait=2.0)
        if dead:
            raise self.error(dead) from exc
        return False

    def _exiting(self) -> bool:
        """A worker has exited or is exiting: the watcher saw it, or a sentinel is readable
        (closed by the exiting process a moment before ``exitcode`` is set). DALI learns of a
        death through these same sentinels, so an error raised while none is readable is not
        caused by one, and needs no wait."""
        if self._died.is_set():
            return True
        try:
            return bool(_wait_ready([p.sentinel for p in self.processes], 0))
        except (OSError, ValueError):  # a closed process object: treat as exiting, the wait decides
            return True

    def close(self) -> None:
        if self._stop_w is not None:
            try:
                os.write(self._stop_w, b"x")
            except OSError:
                pass
            if self._thread is not None:
                self._thread.join(1.0)
            for fd in (self._stop_r, self._stop_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stop_r = self._stop_w = None


NO_WATCH = WorkerWatch(None)  # for pipelines without worker processes


# -- errors raised in a worker ---------------------------------------------------------------
_WORKER_TRACEBACK = "Exception traceback received from worker thread"


def restore_worker_error(exc: BaseException):
    """A fastcas error raised in a DALI source worker, rebuilt with its own type, or None.

    DALI 2.4 sends a worker's exception as ``RuntimeError(str(exc))`` plus the formatted
    traceback, and raises a bare ``Exception(traceback text) from RuntimeError(message)`` in the
    main process, so ``except RemoteError`` (or CorruptSampleError, ShardError) would never
    match. The traceback's last line names the type (``fastcas.dataset.remote.RemoteError:``);
    a subclass of :class:`~fastcas.core.errors.FastcasError` from a ``fastcas`` module is
    rebuilt with the original message (extra attributes such as ``key`` are not carried)."""
    text = str(exc)
    if type(exc) is not Exception or _WORKER_TRACEBACK not in text or exc.__cause__ is None:
        return None
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    # the final exception's header: the first unindented line after its traceback's frames
    header = next((ln for ln in lines[starts[-1] + 1:] if ln and not ln[0].isspace()), "")
    name = header.split(":", 1)[0].strip()
    module, _, cls_name = name.rpartition(".")
    if not module.startswith("fastcas.") or not cls_name.isidentifier():
        return None
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, FastcasError)):
        return None
    message = str(exc.__cause__)
    try:
        return cls(message)
    except Exception:  # a constructor with other required arguments
        err = cls.__new__(cls)
        BaseException.__init__(err, message)
        return err


# -- stalled workers ------------------------------------------------------------------------
_STATES = {"R": "running", "S": "sleeping", "D": "disk sleep", "Z": "zombie", "T": "stopped", "t": "tracing stop",
           "X": "dead", "I": "idle", "P": "parked", "W": "waking", "K": "wakekill"}
STUCK_STATES = ("T", "t", "D", "Z")  # a worker in one of these makes no progress by itself


def proc_state(pid: int) -> str:
    """A process's state from ``/proc/<pid>/stat``: "T (stopped)", "S (sleeping)", ...;
    "gone" when it has exited, "unknown" without ``/proc``."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            code = f.read().rsplit(")", 1)[1].split()[0]  # the name (field 2) may hold spaces and ')'
    except FileNotFoundError:
        return "gone" if os.path.isdir("/proc/self") else "unknown"
    except (OSError, IndexError):
        return "unknown"
    return f"{code} ({_STATES.get(code, 'unknown')})"


def timeout_error(pids, seconds: float, where: str) -> BatchTimeoutError:
    """The error of a batch that did not arrive within ``seconds``: names each worker pid and
    its state, the stuck ones (stopped, disk sleep, zombie) first, and what to do."""
    states = {int(p): proc_state(p) for p in pids}
    stuck = [p for p, s in states.items() if s[:1] in STUCK_STATES]
    head = f"no batch within batch_timeout={seconds:g} s ({where})"
    if stuck:
        others = [f"pid {p} {s}" for p, s in states.items() if p not in stuck]
        desc = ", ".join(f"DALI source worker pid {p} is {states[p]}" for p in stuck)
        return BatchTimeoutError(
            f"{head}: {desc}{' (others: ' + ', '.join(others) + ')' if others else ''}. A stopped worker (SIGSTOP, "
            "a debugger) or one in disk sleep (a read from a hung NFS/FUSE mount) stalls the whole pipeline: "
            f"continue it (kill -CONT {stuck[0]}) or close the loader, which ends its workers, and iterate again",
            pids=states, stuck=stuck)
    desc = ", ".join(f"pid {p} {s}" for p, s in states.items()) or "none (py_workers=0)"
    return BatchTimeoutError(f"{head}; DALI source workers: {desc}; none is stopped or in disk sleep, so the source "
                             "itself is slow (remote shards? a slow disk?) or the timeout is too short",
                             pids=states, stuck=stuck)


def kill_processes(processes) -> None:
    """SIGKILL the given worker processes that are still running (a stopped process dies too)."""
    for p in processes:
        try:
            if p.exitcode is None:
                os.kill(p.pid, signal.SIGKILL)
        except (OSError, ValueError, AssertionError):
            pass


# -- workers die with their parent ---------------------------------------------------------
_armed_parent: tuple[int, bool] | None = None  # (parent pid, forked from the main thread)
_hook_registered = False
_self_armed = False
_lock = threading.Lock()


def _prctl_pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent: int) -> None:
    while True:
        time.sleep(_POLL_S)
        if os.getppid() != parent:
            os._exit(1)


def arm_current_process(parent: int, *, pdeathsig: bool = True) -> None:
    """Make this process (a worker whose parent is ``parent``) exit when the parent dies.
    Does nothing unless ``parent`` is this process's parent, so unpickling a source in an
    unrelated process is harmless."""
    global _armed_parent, _self_armed
    _armed_parent = None  # a worker does not arm its own children
    if _self_armed:
        return
    _self_armed = True
    if pdeathsig:
        _prctl_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_poll_parent, args=(parent,), name="fastcas-parent-watch", daemon=True).start()


def _after_fork_in_child() -> None:
    armed = _armed_parent
    if armed is not None:
        arm_current_process(armed[0], pdeathsig=armed[1])


class die_with_parent:
    """Context manager: processes forked inside it (DALI starts its workers in ``build()``)
    exit when this process dies."""

    def __enter__(self):
        global _armed_parent, _hook_registered
        with _lock:
            if not _hook_registered and hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
                _hook_registered = True
            _armed_parent = (os.getpid(), threading.current_thread() is threading.main_thread())
        return self

    def __exit__(self, *exc):
        global _armed_parent
        _armed_parent = None
        return False


def spawn_parent_hint() -> tuple[int, bool]:
    """What a pickled source carries to a spawned worker: (this pid, pickled on the main thread)."""
    return os.getpid(), threading.current_thread() is threading.main_thread()


def arm_if_child_of(hint) -> None:
    """Called where a pickled source is restored: arms the process when it is a direct child
    of the process that pickled it (a spawned worker)."""
    if not hint:
        return
    parent, main = hint
    if os.getpid() != parent and os.getppid() == parent:
        arm_current_process(parent, pdeathsig=main)
