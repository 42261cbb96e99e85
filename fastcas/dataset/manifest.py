"""A columnar, memory-mapped manifest: per-sample metadata as fixed-width NumPy columns.

Layout, beside ``manifest.json`` (which stays the dataset's entry point and holds what is not
per-sample: shards, class names and counts, content hash, skipped samples, ``columns``)::

    manifest.cols/
        offset.npy       int64  [N]     byte offset of the image member's data in its tar
        size.npy         uint32 [N]     its size in bytes
        label.npy        int64  [N]     class id
        wh.npy           int32  [N, 2]  displayed (w, h) from the image header, EXIF applied; (0, 0) unknown
        meta_offset.npy  int64  [N]     the ``.json`` member's data offset, -1 when there is none
        meta_size.npy    uint32 [N]
        ext.npy          uint8  [N]     the image member's extension: an index into ``image_exts``
        key_offsets.npy  int64  [N+1]   key i is ``key_bytes[key_offsets[i]:key_offsets[i+1]]``
        key_bytes.npy    uint8  [K]     the keys, UTF-8, concatenated

Samples are stored shard after shard, so the shard of sample i follows from the header's
per-shard counts (O(shards)) and needs no column. Opening maps every column with
``np.load(mmap_mode="r")``: O(1) time, and the pages live in the page cache, shared by every
process that maps them (ranks, DALI workers, fork or spawn). Nothing of size N becomes a
Python object: keys are decoded one at a time (:class:`KeyColumn`) or joined in bulk with
vectorised 64-bit hashes (:meth:`KeyColumn.lookup`).

The header's ``columns.hash`` (SHA-256 of the column files, computed while they are
written) makes the manifest's identity O(1) to read (:func:`header_digest`).
Writing (:class:`ColumnWriter`) buffers at most ``chunk`` rows, so ``fastcas shard`` and
``fastcas index`` write any N in bounded memory.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fastcas.core import npy

COLUMNS_DIR = "manifest.cols"
VERSION = 2
# name -> (dtype, per-row shape); key_offsets / key_bytes are written separately
COLUMNS: dict[str, tuple[str, tuple]] = {
    "offset": ("<i8", ()), "size": ("<u4", ()), "label": ("<i8", ()), "wh": ("<i4", (2,)),
    "meta_offset": ("<i8", ()), "meta_size": ("<u4", ()), "ext": ("|u1", ()),
}
_KEY_FILES = {"key_offsets": "<i8", "key_bytes": "|u1"}
#: the per-sample fields, declared once: a manifest's name for each (the rows the writers add,
#: the lists of a JSON manifest that `fastcas convert` reads or writes) -> its column here
#: (``image_ext`` is stored as a code into the header's ``image_exts``)
PER_SAMPLE: dict[str, str] = {
    "keys": "key", "labels": "label", "image_offset": "offset", "image_size": "size", "sizes": "wh",
    "meta_offset": "meta_offset", "meta_size": "meta_size", "image_ext": "ext",
}
COLUMN_FILES = (*COLUMNS, *_KEY_FILES)  # every file of manifest.cols/, hashed into columns.hash
_COPY = 1 << 20


# -- writing -----------------------------------------------------------------------------------
class ColumnWriter:
    """Append rows to ``directory``'s columns in bounded memory; :meth:`finish` writes the
    ``.npy`` files and returns the header's ``columns`` entry.

    Rows are buffered as small Python lists up to ``chunk`` rows, then appended as raw
    little-endian bytes to one file per column; :meth:`finish` prefixes each with its ``.npy``
    header (a sequential copy, hashed on the way)."""

    def __init__(self, directory: str | Path, chunk: int = 65536):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.chunk = int(chunk)
        self.n = 0
        self._key_end = 0
        self._raw = {name: open(self.dir / f".{name}.raw", "wb") for name in (*COLUMNS, *_KEY_FILES)}
        self._raw["key_offsets"].write(np.zeros(1, "<i8").tobytes())
        self._rows: dict[str, list] = {name: [] for name in (*COLUMNS, "key")}
        self.exts: dict[str, int] = {}
        self._counts = np.zeros(0, np.int64)

    def ext_code(self, ext: str) -> int:
        code = self.exts.get(ext)
        if code is None:
            if len(self.exts) >= 255:
                raise ValueError("more than 255 distinct image extensions")
            code = self.exts[ext] = len(self.exts)
        return code

    def add(self, key: str, label: int, offset: int, size: int, wh=(0, 0), meta_offset: int = -1,
            meta_size: int = 0, ext: str = "jpg") -> None:
        r = self._rows
        r["key"].append(key)
        r["label"].append(label)
        r["offset"].append(offset)
        r["size"].append(size)
        r["wh"].append(wh)
        r["meta_offset"].append(meta_offset)
        r["meta_size"].append(meta_size)
        r["ext"].append(self.ext_code(ext))
        if len(r["key"]) >= self.chunk:
            self.flush()

    def add_rows(self, rows: Mapping[str, Sequence]) -> None:
        """Many rows at once (a shard's): ``rows`` maps every name of :data:`PER_SAMPLE` to a list
        or array, all of one length (``sizes``: [M, 2]; ``image_ext``: extension strings)."""
        self.flush()
        cols = {PER_SAMPLE[k]: v for k, v in rows.items()}
        cols["ext"] = [self.ext_code(e) for e in rows["image_ext"]]
        self._write(cols)

    def flush(self) -> None:
        if self._rows["key"]:
            self._write(self._rows)
            self._rows = {name: [] for name in self._rows}

    def _write(self, rows: dict) -> None:
        n = len(rows["key"])
        if not n:
            return
        for name, (dtype, shape) in COLUMNS.items():
            a = np.asarray(rows[name], dtype=dtype).reshape((n, *shape))
            self._raw[name].write(a.tobytes())
        labels = np.asarray(rows["label"], np.int64)
        if labels.min() < 0:
            raise ValueError(f"label {int(labels.min())} is negative")
        self._counts = _add_counts(self._counts, labels)
        encoded = [k.encode("utf-8") for k in rows["key"]]
        lengths = np.fromiter(map(len, encoded), np.int64, n)
        if (lengths == 0).any():
            raise ValueError("empty key")
        self._raw["key_bytes"].write(b"".join(encoded))
        self._raw["key_offsets"].write((self._key_end + np.cumsum(lengths)).astype("<i8").tobytes())
        self._key_end += int(lengths.sum())
        self.n += n

    def __len__(self) -> int:
        return self.n + len(self._rows["key"])

    @property
    def class_counts(self) -> np.ndarray:
        self.flush()
        return self._counts

    def finish(self) -> dict:
        """Write the ``.npy`` files; returns ``{"dir", "version", "num_samples", "hash", "dtypes"}``."""
        self.flush()
        h = hashlib.sha256()
        shapes = {name: (self.n, *shape) for name, (_, shape) in COLUMNS.items()}
        shapes.update(key_offsets=(self.n + 1,), key_bytes=(self._key_end,))
        dtypes = {**{k: v[0] for k, v in COLUMNS.items()}, **_KEY_FILES}
        for name in sorted(shapes):
            raw = self._raw[name]
            raw.close()
            _raw_to_npy(self.dir / f".{name}.raw", self.dir / f"{name}.npy", dtypes[name], shapes[name], h)
        return {"dir": COLUMNS_DIR, "version": VERSION, "num_samples": self.n, "hash": h.hexdigest(),
                "dtypes": dtypes}

    def abort(self) -> None:
        for f in self._raw.values():
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _add_counts(counts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    c = np.bincount(labels)
    if len(c) > len(counts):
        counts = np.concatenate([counts, np.zeros(len(c) - len(counts), np.int64)])
    counts[: len(c)] += c
    return counts


def _raw_to_npy(raw: Path, out: Path, dtype: str, shape: tuple, h) -> None:
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    with open(out, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        with open(raw, "rb") as src:
            while True:
                block = src.read(_COPY)
                if not block:
                    break
                h.update(block)
                f.write(block)
        f.flush()
        os.fsync(f.fileno())
    raw.unlink()


# -- reading ------------------------------------------------------------------------------------
class Columns:
    """The mapped columns of one manifest (read-only ``np.memmap`` views; see the module
    docstring for names, dtypes and shapes). ``ShardError``-free: the caller checks."""

    def __init__(self, directory: str | Path, num_samples: int):
        self.dir = Path(directory)
        n = int(num_samples)
        self.n = n
        arrays = {}
        for name, (dtype, shape) in {**COLUMNS, **{k: (v, ()) for k, v in _KEY_FILES.items()}}.items():
            path = self.dir / f"{name}.npy"
            if not path.exists():
                raise FileNotFoundError(f"{path}: manifest column is missing")
            a = npy.load(path, mmap_mode="r")  # no ast: safe from many threads (fastcas.core.npy)
            want = {"key_offsets": (n + 1,), "key_bytes": a.shape}.get(name, (n, *shape))
            if a.dtype != np.dtype(dtype) or a.shape != want:
                raise ValueError(f"{path}: manifest column has {a.dtype} {a.shape}, expected {np.dtype(dtype)} {want}")
            arrays[name] = a
        self.offset, self.size, self.label = arrays["offset"], arrays["size"], arrays["label"]
        self.wh, self.meta_offset, self.meta_size = arrays["wh"], arrays["meta_offset"], arrays["meta_size"]
        self.ext = arrays["ext"]
        self.keys = KeyColumn(arrays["key_offsets"], arrays["key_bytes"])
        self.keys.source = self.dir / "key_bytes.npy"  # named when a key is not UTF-8
        # every per-sample column by its name in COLUMNS ("key": the KeyColumn)
        self.named = {**{k: arrays[k] for k in COLUMNS}, "key": self.keys}


def header_digest(header: dict) -> str:
    """The identity of a columnar manifest in O(1): its content hash, column hash and size."""
    cols = header.get("columns") or {}
    h = hashlib.sha256(f"{header.get('content_hash')}:{cols.get('hash')}:{cols.get('num_samples')}".encode())
    return h.hexdigest()[:16]


# -- keys -------------------------------------------------------------------------------------------
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    # SplitMix64's finaliser; uint64 array arithmetic wraps modulo 2^64 (no warning for arrays)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _padded(offsets: np.ndarray, blob: np.ndarray, lo: int, hi: int, width: int) -> np.ndarray:
    """uint8 [hi - lo, width]: keys lo..hi-1, zero-padded (vectorised scatter)."""
    o = np.asarray(offsets[lo : hi + 1], np.int64)
    lengths = np.diff(o)
    out = np.zeros((hi - lo, width), np.uint8)
    total = int(o[-1] - o[0])
    if total:
        rows = np.repeat(np.arange(hi - lo), lengths)
        cols = np.arange(total) - np.repeat(o[:-1] - o[0], lengths)
        out[rows, cols] = blob[o[0] : o[-1]]
    return out


def key_hashes(offsets, blob, chunk: int = 1 << 17) -> np.ndarray:
    """uint64 [N]: a 64-bit hash of each key (bytes ``blob[offsets[i]:offsets[i+1]]``),
    vectorised over chunks of keys (memory O(chunk x longest key))."""
    offsets = np.asarray(offsets)
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    width = -(-int(lengths.max()) // 8) * 8 if n else 8
    out = np.empty(n, np.uint64)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        words = _padded(offsets, blob, lo, hi, width).view("<u8")
        h = _mix(lengths[lo:hi].astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        for j in range(words.shape[1]):
            h = _mix(h ^ words[:, j])
        out[lo:hi] = h
    return out


def encode_keys(keys: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets [M+1], uint8 bytes) of ``keys`` (for small lists of Python strings)."""
    encoded = [k.encode("utf-8") for k in keys]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), np.uint8)


def arrow_keys(column) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets [M+1], uint8 bytes) of a pyarrow string column, without Python strings
    (the Arrow buffers, zero-copy where the column is one chunk of ``large_string``)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise ValueError(f"{arr.null_count} null key(s)")
    if not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    _, off, data = arr.buffers()
    offsets = np.frombuffer(off, np.int64)[arr.offset : arr.offset + len(arr) + 1]
    blob = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets, blob


class KeyColumn(Sequence):
    """The keys of a manifest as a read-only sequence of ``str`` over (offsets, UTF-8 bytes),
    usually memory-mapped; a key becomes a Python string only when it is asked for.

    ``keys[i]`` -> str; ``keys[a:b]`` / ``keys[int array]`` -> list of str; ``==`` compares
    with any sequence of str; :meth:`lookup` / :meth:`positions` join other keys in bulk."""

    def __init__(self, offsets: np.ndarray, blob: np.ndarray):
        self.offsets, self.blob = offsets, blob
        self._index = None  # (sorted hashes, order), built on the first bulk lookup
        self.source = None  # the file the bytes come from (for errors)

    def _not_utf8(self, i: int):
        """A ShardError naming key ``i``, its bytes and the column file: a raw
        UnicodeDecodeError would name neither."""
        from fastcas.core.errors import ShardError

        raw = bytes(self.blob[self.offsets[i]:self.offsets[i + 1]])
        where = f"{self.source}: " if self.source is not None else ""
        return ShardError(f"{where}key {i} ({raw[:60]!r}) is not valid UTF-8: the manifest's key column is corrupt; "
                          "write the manifest again (fastcas shard / fastcas index)")

    @classmethod
    def from_strings(cls, keys: Iterable[str]) -> "KeyColumn":
        return cls(*encode_keys(keys))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _one(self, i: int) -> str:
        try:
            return bytes(self.blob[self.offsets[i] : self.offsets[i + 1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self._not_utf8(i) from None

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._many(range(*i.indices(len(self))))
        if isinstance(i, (np.ndarray, list)):
            return self._many(np.asarray(i, np.int64))
        i = int(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"key index {i} out of range for {n} keys")
        return self._one(i)

    def _many(self, idx) -> list[str]:
        idx = np.asarray(idx, np.int64)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"key index out of range for {len(self)} keys")
        idx = np.where(idx < 0, idx + len(self), idx)
        lo, hi = self.offsets[idx], self.offsets[idx + 1]
        try:
            return [bytes(self.blob[a:b]).decode("utf-8") for a, b in zip(lo.tolist(), hi.tolist())]
        except UnicodeDecodeError:
            for i in idx.tolist():
                self._one(i)  # raises naming the first bad key
            raise

    def __iter__(self):
        n = len(self)
        for a in range(0, n, 8192):
            b = min(n, a + 8192)
            o = np.asarray(self.offsets[a : b + 1], np.int64)
            block = bytes(self.blob[o[0] : o[-1]])
            o = (o - o[0]).tolist()
            for j in range(b - a):
                try:
                    key = block[o[j] : o[j + 1]].decode("utf-8")
                except UnicodeDecodeError:
                    raise self._not_utf8(a + j) from None
                yield key

    def tolist(self) -> list[str]:
        return list(self)

    def __array__(self, dtype=None, copy=None):
        return np.array(self.tolist(), dtype=dtype)

    def __eq__(self, other) -> bool:
        if isinstance(other, KeyColumn):
            return (len(self) == len(other) and np.array_equal(np.diff(self.offsets), np.diff(other.offsets))
                    and np.array_equal(self.blob[self.offsets[0] : self.offsets[-1]],
                                       other.blob[other.offsets[0] : other.offsets[-1]]))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and self.positions([key])[0] >= 0

    def index(self, key, start: int = 0, stop: int | None = None) -> int:
        i = int(self.positions([key])[0]) if isinstance(key, str) else -1
        if i < 0 or i < start or (stop is not None and i >= stop):
            raise ValueError(f"{key!r} is not in the keys")
        return i

    def __repr__(self) -> str:
        head = ", ".join(repr(k) for k in self[:3])
        return f"KeyColumn([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    def __reduce__(self):
        return (KeyColumn, (np.asarray(self.offsets), np.asarray(self.blob)))

    # -- bulk joins ---------------------------------------------------------------------------
    def positions(self, keys: Sequence[str]) -> np.ndarray:
        """int64 [M]: the index of each of ``keys`` (Python strings) here, -1 when absent."""
        return self.lookup(*encode_keys(keys))

    def lookup(self, offsets: np.ndarray, blob: np.ndarray) -> np.ndarray:
        """int64 [M]: for each key ``blob[offsets[j]:offsets[j+1]]``, its index in this column or
        -1 when absent. Vectorised: hashes sorted once per column, binary search, then a
        byte-wise check of every match (a 64-bit collision falls back to a scan of the equal
        hashes). O((N + M) log N) time, no Python object per key. With duplicate keys here,
        the first occurrence in hash order is returned."""
        offsets = np.asarray(offsets, np.int64)
        m = len(offsets) - 1
        if m == len(self) and _same_bytes(self.offsets, self.blob, offsets, blob):
            return np.arange(m, dtype=np.int64)  # the same keys in the same order: the usual case
        if self._index is None:
            h = key_hashes(self.offsets, self.blob)
            order = np.argsort(h, kind="stable")
            self._index = (h[order], order)
        hs, order = self._index
        hq = key_hashes(offsets, blob) if m else np.zeros(0, np.uint64)
        j = np.minimum(np.searchsorted(hs, hq), max(len(hs) - 1, 0))
        out = np.full(m, -1, np.int64)
        if not len(hs):
            return out
        hit = np.flatnonzero(hs[j] == hq)
        cand = order[j[hit]]
        ok = _equal_keys(self.offsets, self.blob, cand, offsets, blob, hit)
        out[hit[ok]] = cand[ok]
        for q in hit[~ok]:  # a hash collision: scan the run of equal hashes
            want = bytes(blob[offsets[q] : offsets[q + 1]])
            lo, hi = np.searchsorted(hs, hq[q], "left"), np.searchsorted(hs, hq[q], "right")
            for c in order[lo:hi]:
                if bytes(self.blob[self.offsets[c] : self.offsets[c + 1]]) == want:
                    out[q] = c
                    break
        return out

    def first_duplicate(self) -> tuple[int, int] | None:
        """(i, j), i < j, of the first repeated key found, or None when all keys differ."""
        if len(self) < 2:
            return None
        h = key_hashes(self.offsets, self.blob)
        order = np.argsort(h, kind="stable")
        hs = h[order]
        same = np.flatnonzero(hs[1:] == hs[:-1])
        if not len(same):
            return None
        a, b = order[same], order[same + 1]
        eq = _equal_keys(self.offsets, self.blob, a, self.offsets, self.blob, b)
        if not eq.any():
            return None  # 64-bit collisions of distinct keys only
        pairs = np.sort(np.stack([a[eq], b[eq]], 1), axis=1)
        k = int(np.argmin(pairs[:, 1]))
        return int(pairs[k, 0]), int(pairs[k, 1])


def _same_bytes(o1, b1, o2, b2) -> bool:
    o1, o2 = np.asarray(o1, np.int64), np.asarray(o2, np.int64)
    return (np.array_equal(o1 - o1[0], o2 - o2[0])
            and np.array_equal(b1[o1[0] : o1[-1]], b2[o2[0] : o2[-1]]))


def _equal_keys(o1, b1, i1: np.ndarray, o2, b2, i2: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """bool [len(i1)]: key ``i1[k]`` of (o1, b1) equals key ``i2[k]`` of (o2, b2)."""
    out = np.zeros(len(i1), bool)
    for lo in range(0, len(i1), chunk):
        a, b = i1[lo : lo + chunk], i2[lo : lo + chunk]
        la, lb = o1[a + 1] - o1[a], o2[b + 1] - o2[b]
        same_len = la == lb
        width = int(la.max()) if len(a) else 0
        ga = _gather(o1, b1, a, width)
        gb = _gather(o2, b2, b, width)
        out[lo : lo + chunk] = same_len & (ga == gb).all(axis=1)
    return out


def _gather(offsets, blob, idx: np.ndarray, width: int) -> np.ndarray:
    """uint8 [len(idx), width]: keys ``idx`` (any order), zero-padded / cut to ``width``."""
    start = np.asarray(offsets[idx], np.int64)
    length = np.minimum(np.asarray(offsets[idx + 1], np.int64) - start, width)
    pos = start[:, None] + np.arange(width)[None, :]
    valid = np.arange(width)[None, :] < length[:, None]
    out = np.zeros((len(idx), width), np.uint8)
    if len(blob):
        out[valid] = np.asarray(blob)[np.where(valid, pos, 0)[valid]]
    return out


# -- the manifest as a mapping ----------------------------------------------------------------------
class ManifestView(Mapping):
    """What the writers return: a columnar manifest's header fields, and the per-sample lists
    (the names of :data:`PER_SAMPLE`) built from the columns when first asked for (O(N) Python
    objects: for small datasets and tests; no run-time path asks, the reader maps the columns)."""

    def __init__(self, header: dict, columns: Columns):
        self.header, self.columns = header, columns
        self._lists: dict = {}

    def _build(self, key: str) -> list:
        if key == "image_ext":
            exts = self.header.get("image_exts", ["jpg"])
            return [exts[e] for e in self.columns.ext.tolist()]
        return self.columns.named[PER_SAMPLE[key]].tolist()

    def __getitem__(self, key):
        if key in self.header:
            return self.header[key]
        if key in PER_SAMPLE:
            if key not in self._lists:
                self._lists[key] = self._build(key)
            return self._lists[key]
        raise KeyError(key)

    def __iter__(self):
        yield from self.header
        yield from (k for k in PER_SAMPLE if k not in self.header)

    def __len__(self) -> int:
        return len(set(self.header) | set(PER_SAMPLE))


def open_view(root: str | Path, header: dict) -> ManifestView:
    return ManifestView(header, Columns(Path(root) / header["columns"]["dir"], header["columns"]["num_samples"]))


def install(partial: Path, root: Path) -> None:
    """Move a finished column directory ``partial`` to ``root/manifest.cols`` (replacing one)."""
    final = root / COLUMNS_DIR
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
