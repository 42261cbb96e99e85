"""Score files: one Parquet file per dataset with the key, label, CAS and attribute ids of
every sample, and the metadata of the run that made them (encoder, vocabulary, bins). Pure
pyarrow + NumPy; the CAS computation itself lives in :mod:`fastcas.scoring.cas`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1


RANDOM_WEIGHTS_WARNING = ("CLIP encoder with RANDOM weights: the attributes (and CAS) are meaningless, "
                          "for tests and benchmarks only; pass --weights")


def random_weights_warning(metadata: dict) -> str | None:
    """The warning to show wherever a score file's attributes are shown, or None: set when
    the CLIP encoder ran with random weights (``weights_hash == "random"``)."""
    if metadata.get("encoder") == "clip" and metadata.get("weights_hash") == "random":
        return RANDOM_WEIGHTS_WARNING
    return None




@dataclass(frozen=True)
class ScoreTable:
    """keys [N]; labels int64 [N]; cas int64 [N]; attrs int [N, P]; metadata dict."""

    keys: list
    labels: np.ndarray
    cas: np.ndarray
    attrs: np.ndarray
    metadata: dict = field(default_factory=dict)


def write_scores(path, table, labels=None, cas=None, attr_ids=None, metadata=None) -> None:
    """Parquet with columns key (string), label (int64), cas (int64), attr_00.. (int32) and the
    JSON metadata under the schema key ``fastcas``; written atomically (temp file + rename).

    Call as ``write_scores(path, ScoreTable)`` or ``write_scores(path, keys, labels, cas,
    attr_ids, metadata)``."""
    import pyarrow as pa

    if not isinstance(table, ScoreTable):
        a = np.asarray(attr_ids) if attr_ids is not None else np.zeros((len(table), 0), np.int64)
        table = ScoreTable(
            list(table), np.asarray(labels), np.asarray(cas), a.reshape(len(a), -1), dict(metadata or {})
        )
    n = len(table.keys)
    if not (len(table.labels) == len(table.cas) == len(table.attrs) == n):
        raise ValueError(f"{path}: score columns differ in length (keys {n}, labels {len(table.labels)}, "
                         f"cas {len(table.cas)}, attrs {len(table.attrs)})")
    import pyarrow.parquet as pq

    from fastcas.core.io import atomic_open

    cols = {"key": pa.array(table.keys, pa.string()), "label": pa.array(table.labels, pa.int64()),
            "cas": pa.array(table.cas, pa.int64())}
    for p in range(table.attrs.shape[1]):
        cols[f"attr_{p:02d}"] = pa.array(table.attrs[:, p], pa.int32())
    meta = {**table.metadata, "schema_version": SCHEMA_VERSION}
    t = pa.table(cols).replace_schema_metadata({"fastcas": json.dumps(meta, sort_keys=True)})
    with atomic_open(path, "wb") as f:
        pq.write_table(t, f)


def _check_finite(path, name: str, column, keys: list) -> None:
    """``ValueError`` naming ``path`` and the first key whose ``name`` value is missing (null),
    NaN or infinite, or not a whole number: a cast to int64 would silently turn it into
    -9.2e18 (or truncate it)."""
    bad = np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = bad | ~np.isfinite(values) | (np.nan_to_num(values) != np.round(np.nan_to_num(values)))
    elif values.dtype.kind not in "iu":
        raise ValueError(f"{path}: column {name!r} must hold integers, got {column.type}")
    if bad.any():
        i = int(np.argmax(bad))
        what = "null" if column[i].as_py() is None else str(float(values[i]))
        raise ValueError(f"{path}: {int(bad.sum())} missing, non-finite or fractional {name} value(s); "
                         f"first at key {keys[i]!r} ({name} = {what})")


def read_scores(path, keys: list[str] | None = None, labels=None) -> ScoreTable:
    """Read a score file; with ``keys`` (a dataset's key order) check it matches, naming the
    first mismatching key, and return rows in that order; with ``labels`` (the dataset's, in
    ``keys`` order) check the file's labels equal them, naming the first key that differs. A
    missing (null), NaN, infinite or fractional ``label`` or ``cas``, a key in two rows, or (with
    ``keys``: a file used for a dataset) a CAS below 1 (a CAS is a sum of ranks, each >= 1) is a ``ValueError`` naming
    the file and key."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such score file")
    try:
        t = pq.read_table(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable Parquet score file ({exc})") from None
    names = t.column_names
    for c in ("key", "label", "cas"):
        if c not in names:
            raise ValueError(f"{path}: score file has no column {c!r}")
    raw = (t.schema.metadata or {}).get(b"fastcas")
    meta = json.loads(raw) if raw else {}
    joined = keys is not None and not isinstance(keys, list)  # a manifest's KeyColumn
    if joined:
        from fastcas.dataset.manifest import KeyColumn, arrow_keys

        try:
            file_keys = KeyColumn(*arrow_keys(t.column("key")))  # no Python string per key
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    else:
        file_keys = t.column("key").to_pylist()
    attr_cols = sorted(c for c in names if c.startswith("attr_"))
    attrs = (
        np.stack([t.column(c).to_numpy().astype(np.int64) for c in attr_cols], 1)
        if attr_cols
        else np.zeros((len(file_keys), 0), np.int64)
    )
    for c in ("label", "cas"):
        _check_finite(path, c, t.column(c), file_keys)
    file_labels, cas = t.column("label").to_numpy().astype(np.int64), t.column("cas").to_numpy().astype(np.int64)
    if keys is not None and len(cas) and cas.min() < 1:  # (per-rank parts hold CAS 0 until the merge ranks them)
        i = int(np.argmin(cas))
        raise ValueError(f"{path}: CAS {int(cas[i])} at key {file_keys[i]!r} is below 1 (a CAS is a sum of ranks, "
                         "each >= 1; a weight of 0 would silently exclude the sample)")
    if joined:
        return _check_labels(path, _join(path, keys, file_keys, file_labels, cas, attrs, meta), labels)
    if len(set(file_keys)) != len(file_keys):
        seen: dict = {}
        for i, k in enumerate(file_keys):
            if k in seen:
                raise ValueError(f"{path}: key {k!r} appears in two rows ({seen[k]} and {i}); a score file holds "
                                 "one row per sample")
            seen[k] = i
    if keys is not None:
        if len(keys) != len(file_keys) or keys != file_keys:
            pos = {k: i for i, k in enumerate(file_keys)}
            missing = next((k for k in keys if k not in pos), None)
            if missing is not None or len(keys) != len(file_keys):
                first = missing if missing is not None else next(k for k in file_keys if k not in set(keys))
                raise ValueError(f"{path}: scores do not match the dataset: key {first!r} "
                                 f"({len(file_keys)} scored samples, dataset has {len(keys)})")
            order = np.array([pos[k] for k in keys])
            file_keys, file_labels, cas, attrs = list(keys), file_labels[order], cas[order], attrs[order]
    return _check_labels(path, ScoreTable(file_keys, file_labels, cas, attrs, meta), labels)


def _check_labels(path, table: ScoreTable, labels) -> ScoreTable:
    """``table`` when ``labels`` (the dataset's, in key order) is None or equals its labels;
    else a ValueError naming the first key whose label differs."""
    if labels is None:
        return table
    want, file_labels = np.asarray(labels, np.int64), table.labels
    diff = np.flatnonzero(want != file_labels) if len(want) == len(file_labels) else [0]
    if len(diff):
        i = int(diff[0])
        raise ValueError(f"{path}: scores do not match the dataset's labels: key {table.keys[i]!r} has label "
                         f"{int(file_labels[i])} in the score file, {int(want[i])} in the dataset "
                         f"({len(diff)} of {len(want)} rows differ); score this dataset again")
    return table


def _join(path, keys, file_keys, labels, cas, attrs, meta) -> ScoreTable:
    """Rows of a score file in a manifest's key order, joined in bulk by
    :meth:`fastcas.dataset.manifest.KeyColumn.lookup` (vectorised hashes, no dict of N strings);
    the same checks and messages as the list path of :func:`read_scores`."""
    at = keys.lookup(file_keys.offsets, file_keys.blob)  # file row -> manifest index, -1 absent
    hit = at[at >= 0]
    if len(np.unique(hit)) != len(hit):
        values, counts = np.unique(hit, return_counts=True)
        rows = np.flatnonzero(at == values[counts > 1][0])[:2]
        raise ValueError(f"{path}: key {file_keys[int(rows[0])]!r} appears in two rows ({rows[0]} and {rows[1]}); "
                         "a score file holds one row per sample")
    row = np.full(len(keys), -1, np.int64)
    row[at[at >= 0]] = np.flatnonzero(at >= 0)
    if len(keys) != len(file_keys) or (row < 0).any() or (at < 0).any():
        first = keys[int(np.argmax(row < 0))] if (row < 0).any() else file_keys[int(np.argmax(at < 0))]
        raise ValueError(f"{path}: scores do not match the dataset: key {first!r} "
                         f"({len(file_keys)} scored samples, dataset has {len(keys)})")
    if not np.array_equal(row, np.arange(len(row))):
        labels, cas, attrs = labels[row], cas[row], attrs[row]
    return ScoreTable(keys, labels, cas, attrs, meta)


def merge_parts(parts: list, out) -> ScoreTable:
    """Concatenate per-rank score files into one (rows keep the order of their 'index' metadata)."""
    tables = [read_scores(p) for p in parts]
    if not tables:
        raise ValueError("no score parts to merge")
    meta = {k: v for k, v in tables[0].metadata.items() if k not in ("rank", "world_size", "indices")}
    idx = np.concatenate([np.asarray(t.metadata.get("indices", []), np.int64) for t in tables])
    keys = sum((t.keys for t in tables), [])
    order = np.argsort(idx, kind="stable") if len(idx) == len(keys) else np.arange(len(keys))
    merged = ScoreTable([keys[i] for i in order], np.concatenate([t.labels for t in tables])[order],
                        np.concatenate([t.cas for t in tables])[order],
                        np.concatenate([t.attrs for t in tables])[order], meta)
    write_scores(out, merged)
    return merged
