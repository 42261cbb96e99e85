"""Exception types. Every fastcas error is also a ``ValueError`` where the cause is bad input,
so callers that only know the standard library still catch it."""
from __future__ import annotations


class FastcasError(Exception):
    """Base class of fastcas's own errors."""


class ShardError(FastcasError, ValueError):
    """A shard, its index or the manifest is missing, truncated or inconsistent.
    The message names the shard file (and the key where one is involved)."""


class CorruptSampleError(ShardError):
    """A stored sample cannot be decoded; the message names its key and shard."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class WorkerDiedError(FastcasError, RuntimeError):
    """A data-loading worker process died (killed, out of memory, crashed); the message names
    its pid and exit signal or status. The loader's pipeline is closed; iterating again
    rebuilds it at the same step."""

    def __init__(self, message: str, pids=()):
        super().__init__(message)
        self.pids = list(pids)


class BatchTimeoutError(FastcasError, TimeoutError):
    """No batch arrived within the Loader's ``batch_timeout``; the message names the DALI source
    workers' pids and their ``/proc/<pid>/stat`` states (``T (stopped)``, ``D (disk sleep)``).
    ``pids``: the workers; ``stuck``: those stopped, in disk sleep or zombies."""

    def __init__(self, message: str, pids=(), stuck=()):
        super().__init__(message)
        self.pids = list(pids)
        self.stuck = list(stuck)
