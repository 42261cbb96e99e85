"""``fastcas convert DIR``: rewrite a dataset's JSON manifest (per-sample lists, the format before
columns) as the columnar one (:mod:`fastcas.dataset.manifest`), or back with ``to="json"`` (an
export for small datasets and other tools: fastcas itself opens only columnar manifests).

This module is the only reader of JSON manifests: :class:`~fastcas.dataset.reader.ShardReader`
refuses them, naming this command. Tars and index files stay as they are; the old manifest is
kept as ``manifest.json.v1``. Converting a ``fastcas shard`` dataset reads its index files once
(the columns then carry the member offsets, so later opens parse none) and records each tar's
size. Every check the JSON format needs runs here (labels, counts, paths inside the dataset,
index files against their tars), each a :class:`~fastcas.core.errors.ShardError` naming the file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from fastcas.core.errors import ShardError
from fastcas.core.io import atomic_write_json
from fastcas.dataset.manifest import COLUMNS_DIR, PER_SAMPLE, ColumnWriter, install
from fastcas.dataset.reader import resolve_manifest
from fastcas.dataset.remote import is_url
from fastcas.dataset.wdsindex import parse_index

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_MEMBERS = ("image_offset", "image_size", "image_ext", "meta_offset", "meta_size")


def convert_manifest(path: str | Path, to: str = "columns") -> dict:
    """Convert the manifest of the dataset at ``path``; returns the new header (``to="columns"``)
    or manifest (``to="json"``). ``ValueError`` when it already has that format."""
    if to not in ("columns", "json"):
        raise ValueError(f"to must be 'columns' or 'json', got {to!r}")
    manifest = resolve_manifest(path)
    m = _load(manifest)
    if ("columns" in m) == (to == "columns"):
        raise ValueError(f"{manifest}: already a {to} manifest")
    return _to_json(manifest) if to == "json" else _to_columns(manifest, m)


def _load(manifest: Path) -> dict:
    try:
        m = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{manifest}: manifest is not valid JSON ({exc})") from None
    if not isinstance(m, dict):
        raise ShardError(f"{manifest}: not a fastcas manifest (a JSON object is expected)")
    return m


def check_labels(raw, keys: list, num_classes: int, manifest: Path) -> np.ndarray:
    """int64 [N] labels of a JSON manifest; ShardError naming the manifest and the first bad key
    for a label that is not an integer (``1.7``, ``"2"``, ``true``, null: never cast) or is
    outside ``[0, num_classes)``."""
    arr = np.asarray(raw) if len(raw) else np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        j = next((i for i, y in enumerate(raw) if isinstance(y, bool) or not isinstance(y, int)), 0)
        shown = raw[j] if j < len(raw) else raw
        raise ShardError(f"{manifest}: label {json.dumps(shown)[:40]} of sample {keys[j] if j < len(keys) else j!r} "
                         "is not an integer class id")
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        j = int(np.argmax(bad))
        raise ShardError(f"{manifest}: label {int(arr[j])} of sample {keys[j] if j < len(keys) else j!r} is outside "
                         f"[0, {num_classes}) (the manifest's {num_classes} class names)")
    return arr.astype(np.int64)


def _local(root: Path, manifest: Path, name, field: str, absolute_ok: bool) -> Path:
    """A shard's ``tar`` / ``index`` path inside the dataset (``fastcas index`` may record tars
    outside it as absolute paths: ``absolute_ok``); ShardError for one that leaves it."""
    p = Path(str(name))
    if p.is_absolute():
        if absolute_ok:
            return p
    elif ".." not in p.parts and str(name).strip():
        return root / p
    raise ShardError(f"{manifest}: shard {field} {str(name)!r} points outside the dataset directory "
                     f"{root} (absolute or '..'); refused")


def _read_json(manifest: Path, m: dict) -> dict:
    """The per-sample fields of a JSON manifest (names of :data:`PER_SAMPLE`), checked; the
    member offsets of a ``fastcas shard`` manifest come from its index files."""
    for field in ("shards", "keys", "labels", "class_names"):
        if field not in m:
            raise ShardError(f"{manifest}: manifest has no {field!r}")
    keys, n = list(m["keys"]), len(m["keys"])
    labels = check_labels(m["labels"], keys, len(m["class_names"]), manifest)
    counts = [int(s["count"]) for s in m["shards"]]
    if sum(counts) != n or len(labels) != n:
        raise ShardError(f"{manifest}: shard counts ({sum(counts)}), keys ({n}) and labels ({len(labels)}) disagree")
    rows = {"keys": keys, "labels": labels,
            "sizes": np.asarray(m["sizes"], np.int64).reshape(n, 2) if m.get("sizes") else np.zeros((n, 2), np.int64)}
    indexed = "image_offset" in m  # written by `fastcas index`: member offsets in the manifest
    if indexed:
        rows.update({k: m[k] for k in _MEMBERS})
        if not all(len(rows[k]) == n for k in _MEMBERS):
            raise ShardError(f"{manifest}: per-sample columns do not have {n} entries")
        return rows
    rows.update(image_offset=np.zeros(n, np.int64), image_size=np.zeros(n, np.int64), image_ext=["jpg"] * n,
                meta_offset=np.full(n, -1, np.int64), meta_size=np.zeros(n, np.int64))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    for s, info in enumerate(m["shards"]):
        tar = _local(manifest.parent, manifest, info["tar"], "tar", False)
        idx = _local(manifest.parent, manifest, info["index"], "index", False)
        _members_of(tar, idx, keys, int(starts[s]), int(starts[s + 1]), rows)
    return rows


def _members_of(tar: Path, idx: Path, keys: list, lo: int, hi: int, rows: dict) -> None:
    """Fill rows ``lo:hi``'s member offsets from a ``fastcas shard`` index, checked against the tar."""
    if not tar.exists():
        raise ShardError(f"{tar}: shard is missing")
    try:
        entries = parse_index(idx)
    except ValueError as exc:
        raise ShardError(str(exc)) from None
    if len(entries) != hi - lo:
        raise ShardError(f"{idx}: index lists {len(entries)} samples, manifest says {hi - lo} for {tar.name}")
    size = tar.stat().st_size
    for j, members in enumerate(entries):
        key = keys[lo + j]
        for mem in members:
            if "/" in mem.name or ".." in mem.name:
                raise ShardError(f"{tar}: unsafe member name {mem.name!r}")
            if mem.offset + mem.size > size:
                raise ShardError(f"{tar}: truncated (member {mem.name} ends at byte {mem.offset + mem.size}, "
                                 f"file has {size})")
            if mem.name.split(".", 1)[0] != key:
                raise ShardError(f"{idx}: index does not match the manifest at sample {j} "
                                 f"(member {mem.name!r}, expected key {key!r})")
            if mem.ext in _IMAGE_EXTS:
                rows["image_offset"][lo + j], rows["image_size"][lo + j] = mem.offset, mem.size
                rows["image_ext"][lo + j] = mem.ext
            elif mem.ext == "json":
                rows["meta_offset"][lo + j], rows["meta_size"][lo + j] = mem.offset, mem.size
        if rows["image_size"][lo + j] == 0:
            raise ShardError(f"{tar}: sample {key!r} has no image member")


def _to_columns(manifest: Path, m: dict) -> dict:
    root = manifest.parent
    rows = _read_json(manifest, m)
    header = {k: v for k, v in m.items() if k not in PER_SAMPLE}
    w = ColumnWriter(root / f".{COLUMNS_DIR}.partial")
    try:
        n, step = len(rows["keys"]), 65536
        for a in range(0, n, step):
            w.add_rows({k: rows[k][a:a + step] for k in PER_SAMPLE})
        info = w.finish()
    except BaseException:
        w.abort()
        raise
    fmt = str(header.get("format", "fastcas-shards/1")).rsplit("/", 1)[0]
    shards = [dict(s) for s in header["shards"]]
    for s in shards:  # each local tar's size, checked by every later open
        p = None if is_url(s["tar"]) else _local(root, manifest, s["tar"], "tar", fmt == "fastcas-index")
        if s.get("size") is None and p is not None and p.exists():
            s["size"] = p.stat().st_size
    header.update(format=f"{fmt}/2", num_samples=n, shards=shards, image_exts=sorted(w.exts, key=w.exts.get),
                  columns=info, class_counts=np.bincount(rows["labels"], minlength=len(m["class_names"])).tolist())
    shutil.copy2(manifest, root / "manifest.json.v1")
    install(root / f".{COLUMNS_DIR}.partial", root)
    atomic_write_json(root / "manifest.json.tmp", header, indent=None)
    os.replace(root / "manifest.json.tmp", manifest)
    return header


def _to_json(manifest: Path) -> dict:
    """A columnar manifest written back as per-sample lists (member offsets only for a
    ``fastcas index`` dataset, whose tars have no index of fastcas's own)."""
    from fastcas.dataset.manifest import open_view
    from fastcas.dataset.reader import ShardReader

    r = ShardReader(manifest)
    root = r.root
    view = open_view(root, r.manifest)
    header = {k: v for k, v in r.manifest.items() if k not in PER_SAMPLE and k not in ("columns", "image_exts")}
    fmt = str(header.get("format", "fastcas-shards/2")).rsplit("/", 1)[0]
    out = {**header, "format": f"{fmt}/1", **{k: view[k] for k in ("keys", "labels", "sizes")}}
    if r.manifest.get("source", {}).get("label_key"):  # an indexed dataset: its member columns too
        out.update({k: view[k] for k in _MEMBERS})
    r.close()
    shutil.copy2(manifest, root / "manifest.json.v2")
    atomic_write_json(manifest, out, indent=None)
    shutil.rmtree(root / COLUMNS_DIR, ignore_errors=True)
    return out
