"""Per-dataset derived columns (score columns, sampler CDFs) cached beside the manifest.

Built once per node and memory-mapped by every process: ranks and DALI workers share the
pages instead of each holding an 8 B/sample copy. Each file is named by a digest of what it
is derived from (the manifest's :attr:`~fastcas.dataset.reader.ShardReader.digest`, the
score file's SHA-256, the weight settings), so a stale entry is never read; it is written to
a temporary name and renamed, so ranks racing to build one are safe (identical bytes win).

Location: ``<dataset>/.fastcas-cache/`` when the dataset directory is writable, else
``~/.cache/fastcas/derived/<dataset digest>/``. Deleting it only costs a rebuild.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from fastcas.core.io import atomic_open, atomic_write_json

CACHE_DIR = ".fastcas-cache"


def cache_dir(reader) -> Path:
    """The derived-column directory of ``reader``'s dataset (created)."""
    d = reader.root / CACHE_DIR
    try:
        d.mkdir(exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    d = Path.home() / ".cache" / "fastcas" / "derived" / reader.digest
    d.mkdir(parents=True, exist_ok=True)
    return d


def file_sha256(path: str | Path, where: Path) -> str:
    """SHA-256 of the file at ``path``, remembered in ``where`` by (inode, size, mtime): the
    file is read once per node, later calls cost a ``stat``."""
    st = os.stat(path)
    memo = where / f"sha256-{hashlib.sha256(f'{Path(path).resolve()}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}'.encode()).hexdigest()[:16]}.json"
    try:
        return json.loads(memo.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    atomic_write_json(memo, {"path": str(path), "sha256": h.hexdigest()})
    return h.hexdigest()


def cached_array(reader, name: str, build) -> np.ndarray:
    """``np.load(<cache>/<name>.npy, mmap_mode="r")``, running ``build() -> ndarray`` and
    saving its result first when the file does not exist yet."""
    path = cache_dir(reader) / f"{name}.npy"
    if not path.exists():
        a = np.ascontiguousarray(build())
        with atomic_open(path, "wb") as f:
            np.save(f, a, allow_pickle=False)
    if path.stat().st_size <= 128:  # np.load cannot map an empty array
        return np.load(path, allow_pickle=False)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def score_column(reader, path: str | Path) -> tuple[np.ndarray, str]:
    """(float64 [N] CAS of each sample in manifest order, memory-mapped; the score file's
    SHA-256). The join by key (:func:`fastcas.dataset.scorefile.read_scores`) runs once per
    node and score file; its checks (missing keys, non-finite values) run with it."""
    d = cache_dir(reader)
    sha = file_sha256(path, d)

    def build():
        from fastcas.dataset.scorefile import read_scores

        return read_scores(path, keys=reader.keys, labels=reader.labels).cas.astype(np.float64)

    return cached_array(reader, f"cas-{reader.digest}-{sha[:16]}", build), sha
