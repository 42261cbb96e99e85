"""The columns of a manifest checked against its header, once per node.

The header's ``columns.hash`` is the SHA-256 of the column files' data bytes (in name order,
as :class:`fastcas.dataset.manifest.ColumnWriter` wrote them) and the dataset's digest, which
checkpoints and derived caches are keyed by, includes it. :func:`verified_counts` re-hashes the
columns and compares; it also derives the class counts from the label column (a header whose
``class_counts`` disagree is refused, naming both) and checks every label is a class id.

Hashing reads every column (about 70 bytes per sample), so it runs once per node and column
state: a marker ``columns-<digest>.json`` in the derived cache (:mod:`fastcas.dataset.derived`)
records each file's ``inode:size:mtime_ns:ctime_ns`` and the counts; a later open whose files
stat the same costs nine ``stat`` calls. Any write to a column changes its ``ctime``, so an edit
in place (``label.npy`` reversed) is hashed again and refused. A marker written in the clock
tick of a column's last change is not trusted (git's "racily clean" rule). Processes opening the
same dataset at once take a lock (``flock``), so one hashes and the others read its marker.
``fastcas info --verify`` hashes regardless of the marker.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from fastcas.core import npy
from fastcas.core.errors import ShardError
from fastcas.core.io import atomic_write_json

_BLOCK = 1 << 20


def columns_hash(directory: Path, names) -> str:
    """SHA-256 (hex) of the data bytes of ``directory/<name>.npy`` for ``names`` in sorted order."""
    h = hashlib.sha256()
    for name in sorted(names):
        path = directory / f"{name}.npy"
        with open(path, "rb") as f:
            npy.read_header(f, path)
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
    return h.hexdigest()


def label_counts(labels: np.ndarray, num_classes: int, keys, where) -> np.ndarray:
    """int64 [num_classes]: samples per class of the label column (chunked); ``ShardError``
    naming ``where`` and the first key whose label is not in ``[0, num_classes)``."""
    counts = np.zeros(num_classes, np.int64)
    for lo in range(0, len(labels), _BLOCK):
        c = np.asarray(labels[lo : lo + _BLOCK])
        bad = (c < 0) | (c >= num_classes)
        if bad.any():
            j = lo + int(np.argmax(bad))
            raise ShardError(f"{where}: label {int(labels[j])} of sample {keys[j]!r} is outside [0, {num_classes}) "
                             f"(the manifest's {num_classes} class names)")
        counts += np.bincount(c, minlength=num_classes)
    return counts


def _stats(directory: Path, names) -> dict:
    from fastcas.dataset.derived import stat_id

    return {name: stat_id(directory / f"{name}.npy") for name in sorted(names)}


def _trusted(marker: Path, stats: dict, directory: Path, names) -> dict | None:
    try:
        m = json.loads(marker.read_text())
        newest = max(os.stat(directory / f"{name}.npy").st_ctime_ns for name in names)
        if m.get("stat") == stats and newest < marker.stat().st_mtime_ns:
            return m
    except (OSError, ValueError, TypeError):
        pass
    return None


@contextlib.contextmanager
def _locked(path: Path):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only cache: no lock, each process hashes
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some NFS setups): each process hashes
            pass
        yield
    finally:
        os.close(fd)


def verified_counts(reader, header: dict, columns, names, *, force: bool = False) -> np.ndarray:
    """int64 [C] class counts of ``reader``'s label column, after checking the columns' hash
    against ``header['columns']['hash']`` (once per node: see the module docstring; ``force``:
    always). ``ShardError`` naming the manifest for a hash mismatch, a label outside the classes
    or header ``class_counts`` that differ from the labels'."""
    from fastcas.dataset.derived import cache_dir

    where, directory = reader.manifest_path, columns.dir
    want = (header.get("columns") or {}).get("hash")
    if not want:
        raise ShardError(f"{where}: the manifest records no columns.hash; write the dataset again "
                         "(`fastcas shard` / `fastcas index`)")
    stats = _stats(directory, names)
    try:
        cache = cache_dir(reader)
    except OSError:
        cache = None
    marker = cache / f"columns-{reader.digest}.json" if cache is not None else None
    with _locked(cache / f"columns-{reader.digest}.lock") if cache is not None else contextlib.nullcontext():
        m = None if force or marker is None else _trusted(marker, stats, directory, names)
        if m is not None:
            counts = np.asarray(m["class_counts"], np.int64)
        else:
            got = columns_hash(directory, names)
            if got != want:
                raise ShardError(
                    f"{where}: the columns in {directory} do not match the manifest (SHA-256 {got[:16]}..., "
                    f"columns.hash says {want[:16]}...): a column file was changed after the manifest was "
                    "written; write the dataset again (`fastcas shard` / `fastcas index`)"
                )
            counts = label_counts(columns.label, reader.num_classes, columns.keys, where)
            if marker is not None and _stats(directory, names) == stats:
                with contextlib.suppress(OSError):
                    atomic_write_json(marker, {"stat": stats, "class_counts": counts.tolist()})
    claimed = np.asarray(header.get("class_counts", []), np.int64)
    if claimed.shape != counts.shape or not np.array_equal(claimed, counts):
        raise ShardError(f"{where}: class_counts {claimed.tolist()} in the header disagree with the label column's "
                         f"{counts.tolist()}; write the dataset again (`fastcas shard` / `fastcas index`)")
    return counts
