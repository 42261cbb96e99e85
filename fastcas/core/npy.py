"""Reading ``.npy`` files without ``ast``: every ``.npy`` fastcas opens goes through :func:`load`.

NumPy parses a ``.npy`` header with ``ast.literal_eval``, and CPython 3.11's AST constructor
keeps its recursion depth in per-interpreter state (gh-106905): two threads parsing at once
(train and validation Loaders built in threads, a test suite's threads) can fail with
``SystemError: AST constructor recursion depth mismatch``. The header NumPy writes is one fixed
form, ``{'descr': D, 'fortran_order': B, 'shape': (S...), }``, so it is matched here with a
regular expression; any other header (another writer's) goes to NumPy's parser under a
process-wide lock, so fastcas's own threads never parse at the same time.

A file shorter than its header promises raises ``ValueError`` naming the file (NumPy says
"mmap length is greater than file size" without one).
"""
from __future__ import annotations

import os
import re
import struct
import threading
from pathlib import Path

import numpy as np

_MAGIC = b"\x93NUMPY"
_HEADER = re.compile(r"\{'descr': '([<>|=][a-zA-Z][0-9]*)', 'fortran_order': (True|False), "
                     r"'shape': \(((?:\d+, ?)*\d*)\), \}[ \n]*")
_LOCK = threading.Lock()  # NumPy's own header parser (ast.literal_eval): one thread at a time


def read_header(f, path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` file open as ``f`` (binary), left at the
    first data byte; ``ValueError`` naming ``path`` for a file that is not a ``.npy``."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != _MAGIC or magic[6] not in (1, 2, 3):
        raise ValueError(f"{path}: not a .npy file (bad magic; truncated or another format)")
    fmt, enc = ("<H", "latin1") if magic[6] == 1 else ("<I", "latin1" if magic[6] == 2 else "utf8")
    raw = f.read(struct.calcsize(fmt))
    if len(raw) < struct.calcsize(fmt):
        raise ValueError(f"{path}: truncated .npy header")
    n = struct.unpack(fmt, raw)[0]
    text = f.read(n)
    if len(text) < n or n > 1 << 16:
        raise ValueError(f"{path}: truncated or oversized .npy header ({n} bytes)")
    m = _HEADER.fullmatch(text.decode(enc, "replace"))
    if m is not None:
        shape = tuple(int(s) for s in m.group(3).replace(" ", "").split(",") if s)
        return shape, m.group(2) == "True", np.dtype(m.group(1))
    f.seek(0)
    fmt_mod = np.lib.format
    with _LOCK:  # another writer's header form: NumPy's parser, never two threads at once
        try:
            version = fmt_mod.read_magic(f)
            shape, fortran, dtype = (fmt_mod.read_array_header_1_0(f) if version == (1, 0)
                                     else fmt_mod.read_array_header_2_0(f))
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"{path}: unreadable .npy header ({exc})") from None
    return tuple(shape), bool(fortran), np.dtype(dtype)


def load(path: str | os.PathLike, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load(path, mmap_mode=..., allow_pickle=False)`` for one ``.npy`` file, with the
    header read by :func:`read_header` (no ``ast``, safe from any number of threads).

    ``mmap_mode="r"`` returns a read-only ``np.memmap`` (an empty array as a plain ndarray:
    nothing to map); ``None`` reads the array into memory. ``ValueError`` naming the file for an
    object dtype (pickles are never loaded) or a file shorter than its header says."""
    if mmap_mode not in (None, "r", "c"):
        raise ValueError(f"mmap_mode must be None, 'r' or 'c', got {mmap_mode!r}")
    path = Path(path)
    with open(path, "rb") as f:
        shape, fortran, dtype = read_header(f, path)
        if dtype.hasobject:
            raise ValueError(f"{path}: .npy holds Python objects (a pickle); refused")
        offset = f.tell()
        count = int(np.prod(shape, dtype=np.int64))
        need = offset + count * dtype.itemsize
        size = os.fstat(f.fileno()).st_size
        if size < need:
            raise ValueError(f"{path}: truncated .npy file ({size:,} bytes, its header needs {need:,}: "
                             f"{dtype} {shape}); delete it or write it again")
        order = "F" if fortran else "C"
        if count == 0:
            return np.zeros(shape, dtype, order=order)
        if mmap_mode is None:
            a = np.fromfile(f, dtype, count)
            return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    return np.memmap(path, dtype=dtype, mode=mmap_mode, offset=offset, shape=shape, order=order)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path`` (no pickles), read under the header lock:
    NumPy parses each member's header with ``ast``."""
    with _LOCK, np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
