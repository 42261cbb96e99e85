"""Validation helpers of the loading stage: what a resumed state may hold
(:func:`check_state_numbers`, :func:`check_state_config`, used by
:mod:`fastcas.loading.resume`). Kept apart from the modules that use them so each stays about
one concern; every failure is a ValueError naming the argument or key and its value."""
from __future__ import annotations

import os

import numpy as np

from fastcas.mix.kinds import FMIX_SELECTS
from fastcas.sampling.geometry import check_same

WHERE = "Loader.load_state_dict"


def is_int(value) -> bool:
    """A real integer: int or NumPy integer, never a bool (True is 1 to Python) or 1.0."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_state_numbers(state: dict) -> None:
    """``epoch``, ``step`` and ``position`` of a state are non-negative integers (where
    present); ValueError naming the key otherwise. A negative epoch or a float position would
    load and fail later, far from the cause ("seed components must be non-negative")."""
    if not isinstance(state, dict):
        raise ValueError(f"{WHERE}: a state is a dict (from Loader.state_dict), got {type(state).__name__}")
    if "epoch" not in state:
        raise ValueError(f"{WHERE}: the state has no 'epoch' (not a Loader.state_dict?); keys: {sorted(state)}")
    for key in ("epoch", "step", "position"):
        if key in state and not (is_int(state[key]) and state[key] >= 0):
            raise ValueError(f"{WHERE}: {key} must be a non-negative integer, got {state[key]!r}")
    if "position" not in state and "step" not in state:
        raise ValueError(f"{WHERE}: the state has neither 'position' nor 'step' (not a Loader.state_dict?)")


def check_step_in_epoch(loader, step: int, what: str) -> None:
    """``step`` (from the state's step or position) within this loader's epoch: ``step ==
    len(loader)`` is the end of the epoch (the next one starts), beyond is an error."""
    if step > loader.steps:
        raise ValueError(f"{WHERE}: {what} lies past the end of the epoch: this loader has {loader.steps} steps "
                         f"per epoch; was the state saved with another dataset, epoch_length or batch size?")


def check_state_config(loader, state: dict, now: dict, stream_keys, augment_keys, legacy_digest) -> None:
    """Evaluation loaders and states without ``position`` continue at ``step``: their saved
    ``config`` is checked like a training state's (the stream keys always; the global batch,
    mixing and image size mid-epoch), so a state of another dataset, weights or mixing is
    refused instead of silently continuing another stream. A state without ``config`` (written
    by hand, e.g. ``{"epoch", "step", "seed"}``) has nothing to compare. ``legacy_digest(loader)``:
    the weights digest of fastcas before O(1) digests, accepted too."""
    if "step" not in state:
        raise ValueError(f"{WHERE}: the state has no 'step' (an evaluation loader, or a state without "
                         "'position', continues at its step)")
    saved = state.get("config") or {}
    if not isinstance(saved, dict):
        raise ValueError(f"{WHERE}: the state's 'config' must be a dict, got {type(saved).__name__}")
    if "global_batch" not in saved and "global_batch" in state:
        saved = {**saved, "global_batch": state["global_batch"]}
    if saved.get("weights_digest") not in (None, now["weights_digest"]) and \
            saved["weights_digest"] == legacy_digest(loader):
        now = {**now, "weights_digest": saved["weights_digest"]}  # a state of fastcas before O(1) digests
    check_same(saved, now, tuple(k for k in stream_keys if k != "global_batch"), WHERE)
    step = int(state.get("step", 0))
    if 0 < step < loader.steps:
        check_same(saved, now, ("global_batch", *augment_keys), WHERE + " (resuming mid-epoch)")
    check_step_in_epoch(loader, step, f"step {step}")


# -- Loader options ------------------------------------------------------------------------
MAX_BATCH_TIMEOUT = 86_400.0  # one day: beyond it "never" (None) is meant


def check_batch_timeout(value, prefetch) -> None:
    """``batch_timeout``: None, or seconds in (0, 1 day]; needs ``prefetch >= 1`` (the pipeline
    runs on the prefetch thread, and the consumer waits for it with the timeout)."""
    if value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 < value <= MAX_BATCH_TIMEOUT:
        raise ValueError(f"batch_timeout must be None or seconds in (0, {MAX_BATCH_TIMEOUT:g}], got {value!r}")
    if prefetch == 0:
        raise ValueError("batch_timeout needs prefetch >= 1: the pipeline runs on the prefetch thread, which the "
                         "consumer waits for with the timeout (prefetch=0 runs it on the calling thread)")


# upper bounds of integer options: far above any real use, low enough that a typo (an extra
# zero, a float written for an int) fails here rather than as an allocation of terabytes or
# thousands of processes; docs/loader-options.md lists them
INT_BOUNDS = {  # name: (minimum, maximum or None, why the maximum)
    "batch_size": (1, None, ""),
    "prefetch": (0, 64, "batches finished ahead, each held in memory"),
    "image_size": (8, 4096, "pixels per side"),
    "num_threads": (1, 256, "DALI CPU threads"),
    "py_workers": (0, 128, "worker processes, each with its own memory"),
    "seed": (0, 2**63 - 1, "a non-negative 64-bit integer"),
    "epoch_length": (1, 10**10, "samples per epoch"),
    "shuffle_buffer": (0, 10**8, "samples held in memory"),
    "cache_max_bytes": (0, None, ""),
}
BOOL_OPTIONS = ("train", "strict", "channels_last", "mix_in_pipeline")
CHOICE_OPTIONS = {"fmix_select": FMIX_SELECTS, "cpu_resize": ("dali", "torch")}  # name: its accepted values
MAX_EXPONENT = 16.0  # cas_power, cmo_power: CAS ** b and n_k ** -r stay far inside float64 (CAS < 10^4, n_k < 10^9)
NUMBER_OPTIONS = {  # name: (low, high, low open, high open)
    "mix_prob": (0.0, 1.0, False, False),
    "alpha": (0.0, 1e6, True, False),
    "label_smoothing": (0.0, 1.0, False, True),
    "cas_power": (0.0, MAX_EXPONENT, False, False),
    "cmo_power": (0.0, MAX_EXPONENT, False, False),
}


def check_int_option(name: str, value, minimum: int, maximum: int | None = None, why: str = "") -> None:
    """A clear ValueError unless ``value`` is a real integer (no bool, no 1.0) in
    ``[minimum, maximum]``."""
    if not is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum} ({why}), got {value}")


def check_option_types(cfg) -> None:
    """Strict types and bounds of :class:`~fastcas.loading.config.LoaderConfig` options, before
    any other check compares them: real bools (``train="no"`` is truthy), real integers
    (``seed=1.5`` would be seed 1), finite numbers in range (``cas_power=-1``), no raw TypeError.
    The tables above name the fields; their values come from the dataclass's own field dict."""
    options = vars(cfg)  # LoaderConfig's fields by name (a frozen dataclass: no attribute probing)
    for name in BOOL_OPTIONS:
        value = options[name]
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    for name, (lo, hi, why) in INT_BOUNDS.items():
        value = options[name]
        if value is not None or name in ("batch_size", "prefetch", "image_size", "num_threads", "py_workers", "seed"):
            check_int_option(name, value, lo, hi, why)
    for name, (lo, hi, lo_open, hi_open) in NUMBER_OPTIONS.items():
        value = options[name]
        ok = (
            isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_))
            and np.isfinite(value)
            and (lo < value if lo_open else lo <= value)
            and (value < hi if hi_open else value <= hi)
        )
        if not ok:
            span = f"> {lo:g} and <= {hi:g}" if lo_open else f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise ValueError(f"{name} must be {span}, got {value!r}")
    for name, choices in CHOICE_OPTIONS.items():
        if options[name] not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {options[name]!r}")
    if cfg.cache_dir is not None and not isinstance(cfg.cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir must be a path (str or os.PathLike) or None, got {cfg.cache_dir!r}")


def check_rank(rank, world_size) -> None:
    """``rank`` / ``world_size`` given to a Loader: real integers, ``0 <= rank < world_size``
    (``rank=0.5`` would silently be rank 0)."""
    if world_size is not None:
        check_int_option("world_size", world_size, 1, 1 << 20, "processes")
    if rank is not None:
        check_int_option("rank", rank, 0)
        if world_size is not None and rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
