"""Who owns a training run's ``--out`` directory, and may a run continue there.

:func:`claim_run_dir` is called once by :func:`fastcas.train.loop.train` before anything is
written to ``OUT``:

1. **Lock.** Rank 0 takes ``fcntl.flock`` on ``OUT/.lock`` (exclusive, non-blocking) and holds
   it for the run; a second run into the same ``OUT`` fails at once naming the holder's pid.
   The kernel drops the lock when its process exits, however it exits (SIGKILL included), so
   a leftover ``.lock`` file is never stale. (Where ``fcntl`` does not exist, Windows, there
   is no lock; on network file systems ``flock`` is as reliable as the server's locking.)
2. **Non-empty OUT.** Without ``resume`` or ``overwrite``, an ``OUT`` holding anything but
   ``.lock`` (and a bare ``run.json`` left by a run that failed before its first checkpoint)
   is refused. ``overwrite`` deletes the earlier run's files, and only those: ``OUT`` must hold a
   fastcas ``run.json`` and only names a run writes (checkpoint, model, metrics, reports, see
   ``_RUN_FILES``; sub-directories are left alone); anything else (a mistyped ``--out .``)
   refuses the overwrite and deletes nothing.
3. **Resume.** ``resume`` needs ``OUT/checkpoint.pt`` (else an error naming it) and a
   configuration compatible with the saved one (``OUT/run.json``, written by every run; for
   checkpoints older than ``run.json`` the checkpoint's own ``config``). Every
   :class:`~fastcas.train.loop.TrainConfig` field may differ only if it is in
   :data:`RESUMABLE_CHANGES`: ``epochs``, ``max_steps``, ``eval_every``, ``checkpoint_every``,
   ``val``, ``val_scores``, ``many``, ``few``, ``out``, ``py_workers``, ``num_threads``,
   ``device``, ``amp``, ``channels_last``, ``progress``, the remote timeouts and retries, ``batch_size`` (only with the
   same global batch,
   below) and ``train`` (only with the same dataset content hash). Any other difference
   (model, image size, weights, mixing, seed, schedule, ...) refuses the resume and lists
   every changed field as ``name: saved -> new``. Fields added to TrainConfig later are
   compared too (refused when changed) unless added to :data:`RESUMABLE_CHANGES`.

The data stream depends on the GLOBAL batch (per-rank batch x world size, see the key scheme
in docs/ARCHITECTURE.md), not on the per-rank ``batch_size``: ``run.json`` records
``global_batch`` and ``world_size``, and resume compares ``global_batch``, so a run may resume
on another number of ranks with the same global batch (``batch_size`` itself is then allowed
to change). ``run.json``: ``{"config": asdict(TrainConfig), "world_size": W, "global_batch":
G, "dataset_hash": manifest content hash or null, "resumed": [{"changed": {...}}, ...]}``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

from fastcas.core.errors import FastcasError

LOCK_NAME = ".lock"
RUN_FILE = "run.json"
CHECKPOINT = "checkpoint.pt"

#: TrainConfig fields a resumed run may change: they alter neither the sampled data stream nor
#: the model and optimiser state. (``epochs`` stretches the learning-rate and mixing schedules
#: from the resume point on, as a user extending a run expects; ``batch_size`` may change
#: only with the world size, keeping the global batch; ``train_data`` may point elsewhere if the
#: dataset's content hash is unchanged.)
RESUMABLE_CHANGES = frozenset({
    "epochs", "max_steps", "eval_every", "checkpoint_every", "val", "val_scores", "many", "few",
    "out", "py_workers", "num_threads", "device", "amp", "channels_last", "batch_size", "train_data",
    "progress", "connect_timeout", "read_timeout", "retries",
})


def _dataset_hash(train: str) -> str | None:
    p = Path(train)
    manifest = p / "manifest.json" if p.is_dir() else p
    try:
        return json.loads(manifest.read_text()).get("content_hash")
    except (OSError, ValueError, AttributeError):
        return None


def _fmt(v) -> str:
    return "unset" if v is None else repr(v)


def config_changes(saved: dict, cfg, world_size: int) -> tuple[list[str], list[str]]:
    """(refused, allowed) changes of ``cfg`` (a TrainConfig on ``world_size`` ranks) against a
    ``run.json`` record ``saved``; each entry is ``"name: saved -> new"``."""
    old, new = saved.get("config", {}), asdict(cfg)
    if "train" in old and "train_data" not in old:  # run.json of fastcas before the rename
        old = {("train_data" if k == "train" else k): v for k, v in old.items()}
    refused, allowed = [], []
    for name, value in new.items():
        if name not in old:  # a field newer than the saved run: nothing to compare
            continue
        a, b = old[name], value
        if isinstance(a, list):
            a = tuple(a)
        if isinstance(b, list):
            b = tuple(b)
        if a == b:
            continue
        line = f"{name}: {_fmt(a)} -> {_fmt(b)}"
        if name == "train_data":
            h_old, h_new = saved.get("dataset_hash"), _dataset_hash(cfg.train_data)
            (allowed if h_old is not None and h_old == h_new else refused).append(
                line + ("" if h_old is not None and h_old == h_new else " (dataset content differs or unknown)"))
        elif name in RESUMABLE_CHANGES:
            allowed.append(line)
        else:
            refused.append(line)
    g_old = saved.get("global_batch")
    if g_old is None:  # a checkpoint's config alone: its world size is unknown, assume the same
        g_old = old.get("batch_size", cfg.batch_size) * world_size
    g_new = cfg.batch_size * world_size
    if g_old != g_new:
        refused.append(f"global batch (batch_size x world size): {g_old} -> {g_new} "
                       f"({cfg.batch_size} x {world_size})")
    return refused, allowed


class RunDir:
    """The claimed ``OUT``; holds the lock (rank 0) until :meth:`release` or process exit."""

    def __init__(self, out: Path, fd: int | None, state: dict | None = None):
        self.out, self._fd = out, fd
        self.state = state  # the checkpoint a resume continues from (loaded and checked once)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __del__(self):  # an exception escaping train(): drop the lock with the object
        self.release()


def _lock(out: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock
        return None
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"{out} is in use by another training run (pid {holder}, lock {out / LOCK_NAME}); "
                         "wait for it to finish or choose another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class CheckpointError(FastcasError, ValueError):
    """A checkpoint cannot be loaded safely (not a checkpoint, truncated, or holding Python
    objects other than tensors and plain types); the message names the file."""


#: what every checkpoint written by :func:`fastcas.train.loop.train` holds
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "epoch", "global_step", "loader", "torch_rng")


def plain_state(obj):
    """``obj`` with NumPy scalars and arrays replaced by Python numbers and lists (recursively
    through dicts, lists and tuples; tensors kept): what :func:`load_checkpoint` accepts."""
    import numpy as np

    if isinstance(obj, dict):
        return {plain_state(k): plain_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_state(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def load_checkpoint(path) -> dict:
    """A checkpoint's contents on the host, loaded with ``torch.load(weights_only=True)``:
    only tensors and plain Python types (dict, list, tuple, str, int, float, bool, None) are
    rebuilt, so a crafted pickle cannot run code (no safe-globals allow-list is needed:
    fastcas saves no other type). :class:`CheckpointError` naming ``path`` for a file that is
    not a checkpoint, is truncated, or holds other objects. ``map_location="cpu"``: the torch
    RNG state must stay a CPU ByteTensor (``load_state_dict`` moves the rest)."""
    import pickle

    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's safe unpickler met an opcode or global it refuses
        text = str(exc)
        why = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0][:200] if "WeightsUnpickler" in text \
            else text.split("\n")[0][:200]
        raise CheckpointError(f"{path}: refused to load: not a checkpoint of tensors and plain types only ({why}); "
                              "a pickle of other objects could run code, so nothing in it was run (fastcas "
                              "checkpoints never hold such objects: this file is damaged or not fastcas's)") from None
    except Exception as exc:  # truncated zip, random bytes: torch raises RuntimeError, EOFError, IndexError, ...
        raise CheckpointError(f"{path}: not a readable fastcas checkpoint (truncated or not written by torch.save: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a fastcas training checkpoint (missing {', '.join(missing)})")
    return state


def _saved_record(out: Path, state: dict | None = None) -> dict:
    run = out / RUN_FILE
    if run.exists():
        return json.loads(run.read_text())
    # a checkpoint written before run.json existed: its own config
    state = state if state is not None else load_checkpoint(out / CHECKPOINT)
    return {"config": state.get("config", {})}


def _leftovers(out: Path) -> list[str]:
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if names == [RUN_FILE]:  # a run that failed before writing anything else
        return []
    return names


#: names a training run writes at the top of OUT (all that ``overwrite`` deletes)
_RUN_FILES = re.compile(r"^(run\.json|checkpoint\.pt|model\.pt|final\.json|metrics\.jsonl|"
                        r"(eval|monitor)-epoch\d{3,}\.(json|png)|\..+\.tmp)$")


def _run_file(name: str) -> bool:
    return bool(_RUN_FILES.match(name))


def _check_owned(out: Path, left: list[str]) -> None:
    """``overwrite`` deletes an earlier run, never a user's files: ``OUT`` must hold a fastcas
    ``run.json`` (every run writes it first) and nothing but files a run writes."""
    record = None
    try:
        record = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(record, dict) or "config" not in record:
        raise ValueError(f"--overwrite: {out} is not a fastcas run directory (no {RUN_FILE} of a run); refusing "
                         f"to delete its files ({', '.join(left[:5])}{', ...' if len(left) > 5 else ''}). "
                         "Choose an empty or new --out")
    foreign = [n for n in left if not _run_file(n) and not (out / n).is_dir()]
    if foreign:
        raise ValueError(f"--overwrite: {out} holds files no fastcas run wrote ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); refusing to replace the run there. Move them "
                         "away or choose another --out")


def claim_run_dir(cfg, *, resume: bool, overwrite: bool, rank: int = 0, world_size: int = 1) -> RunDir:
    """Lock ``cfg.out`` and check it may be used (see the module docstring); ``ValueError``
    naming the directory otherwise. Ranks other than 0 only check a resume's configuration."""
    out = Path(cfg.out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if rank != 0:
        state = None
        if resume:
            state, _ = _check_resume(out, cfg, world_size)
        return RunDir(out, None, state)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out, _lock(out))
    try:
        record = {"config": asdict(cfg), "world_size": world_size, "global_batch": cfg.batch_size * world_size,
                  "dataset_hash": _dataset_hash(cfg.train_data), "resumed": []}
        if resume:
            # the checkpoint is loaded (safely) before run.json records a resume: a bad one
            # leaves run.json as it was
            run.state, allowed = _check_resume(out, cfg, world_size)
            if (out / RUN_FILE).exists():
                record["resumed"] = json.loads((out / RUN_FILE).read_text()).get("resumed", [])
            record["resumed"].append({"changed": allowed})
            if allowed:
                print(f"resuming {out} with changes: {'; '.join(allowed)}", flush=True)
        else:
            left = _leftovers(out)
            if left and not overwrite:
                shown = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
                raise ValueError(f"--out {out} is not empty ({shown}): pass --resume to continue that run "
                                 "or --overwrite to replace it, or choose another --out")
            if left:  # overwrite: only a fastcas run directory, and only the files a run writes
                _check_owned(out, left)
            for name in left:
                p = out / name
                if _run_file(name) and (p.is_file() or p.is_symlink()):
                    p.unlink()
        from fastcas.core.io import atomic_write_json

        atomic_write_json(out / RUN_FILE, record)
    except BaseException:
        run.release()
        raise
    return run


def _check_resume(out: Path, cfg, world_size: int) -> tuple[dict, list[str]]:
    """(the loaded checkpoint, the allowed changes); errors for a missing, unsafe or
    incompatible checkpoint."""
    if not (out / CHECKPOINT).exists():
        raise FileNotFoundError(f"--resume: no checkpoint {out / CHECKPOINT} to resume from "
                                "(drop --resume to start a new run)")
    state = load_checkpoint(out / CHECKPOINT)
    refused, allowed = config_changes(_saved_record(out, state), cfg, world_size)
    if refused:
        raise ValueError(f"--resume: the configuration differs from the run saved in {out} in ways that change "
                         f"the data stream or the model: {'; '.join(refused)}. Resume with the saved values, "
                         f"or start a new run (another --out, or --overwrite). Changes a resume may make: "
                         f"{', '.join(sorted(RESUMABLE_CHANGES))}")
    return state, allowed
