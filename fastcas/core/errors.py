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


# the pip extras that bring the optional pieces (setup.py's extras_require)
GPU_EXTRAS = "pip install 'fastcas[cu13]' (CUDA 13) or 'fastcas[cu12]' (CUDA 12); both also run on a CPU-only machine"


class MissingDependencyError(FastcasError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def missing(what: str, package: str, install: str) -> MissingDependencyError:
    """The error for ``what`` needing ``package``, with the ``install`` command."""
    return MissingDependencyError(f"{what} needs {package}, which is not installed: {install}")


class ClassMassShiftWarning(UserWarning):
    """Sampling weights (CAS) move the class distribution of the draws away from the class
    frequencies by more than :data:`fastcas.sampling.weights.CLASS_SHIFT_WARN` (total
    variation); the message gives the head and tail class mass before and after."""


class BatchTimeoutError(FastcasError, TimeoutError):
    """No batch arrived within the Loader's ``batch_timeout``; the message names the DALI source
    workers' pids and their ``/proc/<pid>/stat`` states (``T (stopped)``, ``D (disk sleep)``).
    ``pids``: the workers; ``stuck``: those stopped, in disk sleep or zombies."""

    def __init__(self, message: str, pids=(), stuck=()):
        super().__init__(message)
        self.pids = list(pids)
        self.stuck = list(stuck)
