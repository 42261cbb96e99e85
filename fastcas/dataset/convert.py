"""``fastcas convert DIR``: rewrite a dataset's JSON manifest (per-sample lists) as a columnar
one (:mod:`fastcas.dataset.manifest`), or back with ``to="json"`` for small datasets.

Tars and index files stay as they are; the old manifest is kept as ``manifest.json.v1``.
Converting a ``fastcas shard`` dataset reads its index files once (the columns then carry
the member offsets, so later opens parse none) and records each tar's size.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from fastcas.core.io import atomic_write_json
from fastcas.dataset.manifest import COLUMNS_DIR, ColumnWriter, install

_PER_SAMPLE = ("keys", "labels", "sizes", "image_offset", "image_size", "image_ext", "meta_offset", "meta_size")


def convert_manifest(path: str | Path, to: str = "columns") -> dict:
    """Convert the manifest of the dataset at ``path``; returns the new header (``to="columns"``)
    or manifest (``to="json"``). ``ValueError`` when it already has that format."""
    from fastcas.dataset.reader import ShardReader

    if to not in ("columns", "json"):
        raise ValueError(f"to must be 'columns' or 'json', got {to!r}")
    r = ShardReader(path)
    root = r.root
    if r.columnar == (to == "columns"):
        raise ValueError(f"{r.manifest_path}: already a {to} manifest")
    header = {k: v for k, v in r.manifest.items() if k not in _PER_SAMPLE and k != "columns"}
    fmt = str(header.get("format", "fastcas-shards/1")).rsplit("/", 1)[0]
    if to == "json":
        m = r.manifest
        out = {**header, "format": f"{fmt}/1", "keys": m["keys"], "labels": m["labels"], "sizes": m["sizes"]}
        if r.manifest.get("source", {}).get("label_key"):  # an indexed dataset: its member columns too
            out.update({k: m[k] for k in ("image_offset", "image_size", "image_ext", "meta_offset", "meta_size")})
        out.pop("image_exts", None)
        shutil.copy2(r.manifest_path, root / "manifest.json.v2")
        atomic_write_json(r.manifest_path, out, indent=None)
        shutil.rmtree(root / COLUMNS_DIR, ignore_errors=True)
        return out
    w = ColumnWriter(root / f".{COLUMNS_DIR}.partial")
    try:
        n, step = len(r), 65536
        exts = r.image_exts
        sizes = r.sizes
        for a in range(0, n, step):
            b = min(n, a + step)
            wh = sizes[a:b].tolist() if sizes is not None else [(0, 0)] * (b - a)
            w.add_many(r.keys[a:b], r.labels[a:b].tolist(), r._offset[a:b].tolist(), r._size[a:b].tolist(), wh,
                       r._meta_offset[a:b].tolist(), r._meta_size[a:b].tolist(),
                       [exts[e] for e in r._ext[a:b].tolist()] if len(exts) > 1 else [exts[0]] * (b - a))
        info = w.finish()
    except BaseException:
        w.abort()
        raise
    shards = [dict(s) for s in header["shards"]]
    for s, p in zip(shards, r.shard_paths):
        if s.get("size") is None and p.exists():
            s["size"] = p.stat().st_size
    header.update(format=f"{fmt}/2", shards=shards, image_exts=list(exts), columns=info,
                  class_counts=r.class_counts.tolist())
    shutil.copy2(r.manifest_path, root / "manifest.json.v1")
    install(root / f".{COLUMNS_DIR}.partial", root)
    atomic_write_json(root / "manifest.json.tmp", header, indent=None)
    os.replace(root / "manifest.json.tmp", r.manifest_path)
    return header
