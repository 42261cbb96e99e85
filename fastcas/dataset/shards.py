"""Writing WebDataset shards: ``{prefix}-NNNNNN.tar`` + a DALI ``v1.2`` index per shard +
``manifest.json``.

Each sample is stored as ``{key}.jpg`` (JPEG bytes), ``{key}.cls`` (ASCII class id, zero-padded
to one width per dataset because DALI cannot batch ``"3"`` with ``"111"``) and ``{key}.json``
when the sample has metadata. Tar headers are fixed (mtime 0, uid/gid 0, mode 0644, ustar), so
the same input gives the same bytes, and ``content_hash`` in the manifest is reproducible.

Crash safety: every shard and index is written to a temporary name and renamed; the manifest
is written last, so a manifest never lists an incomplete shard.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastcas.core.io import atomic_open, atomic_write_json
from fastcas.dataset import imagehdr
from fastcas.dataset.manifest import COLUMNS_DIR, Columns, ColumnWriter, install, open_view
from fastcas.dataset.wdsindex import Member, format_index

MANIFEST = "manifest.json"
FORMAT_JSON = "fastcas-shards/1"  # per-sample lists in manifest.json: older datasets (`fastcas convert` reads them)
WRITING = ".fastcas-shards-writing"  # names of the files a write in progress made (gone once it completes)
FORMAT_COLUMNS = "fastcas-shards/2"  # manifest.json + manifest.cols/ (fastcas.dataset.manifest)
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_BLOCK = 512


@dataclass(frozen=True)
class RawSample:
    """One sample to write. ``data``: encoded JPEG bytes; ``label``: class id >= 0."""

    key: str
    data: bytes
    label: int
    meta: dict | None = None
    source: str = ""  # where it came from, for error messages


#: default bound on the number of classes a dataset's labels may imply (labels 0..MAX_CLASSES-1):
#: one stray label (``50000000``) would otherwise make that many classes and a manifest of
#: hundreds of MB, or a MemoryError; ImageNet-21k has 21,841. ``max_classes`` raises it.
MAX_CLASSES = 100_000


def check_class_bound(label: int, max_classes: int, where: str) -> None:
    if label >= max_classes:
        raise ValueError(f"label {label:,} of {where} would make {label + 1:,} classes, more than max_classes "
                         f"{max_classes:,} (pass --max-classes to allow more, or fix the label)")


@dataclass(frozen=True)
class ShardWriterConfig:
    shard_size: int = 1000
    prefix: str = "shard"
    overwrite: bool = False
    class_names: tuple[str, ...] | None = None
    max_classes: int = MAX_CLASSES  # labels must be < this (without class_names), see MAX_CLASSES
    extra: dict = field(default_factory=dict)  # copied into the manifest (source, skipped, ...)

    def __post_init__(self):
        if int(self.shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if not _KEY_RE.match(self.prefix):
            raise ValueError(f"prefix must match {_KEY_RE.pattern}, got {self.prefix!r}")
        if isinstance(self.max_classes, bool) or not isinstance(self.max_classes, int) or self.max_classes < 1:
            raise ValueError(f"max_classes must be a positive integer, got {self.max_classes!r}")


def check_key(key: str, source: str = "") -> str:
    """Keys become tar member stems: no '.', '/', whitespace (webdataset splits at the first '.')."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        where = f" ({source})" if source else ""
        raise ValueError(f"invalid key {key!r}{where}: keys must match {_KEY_RE.pattern}")
    return key


def check_label(label, source: str = "") -> int:
    where = f" in {source}" if source else ""
    if isinstance(label, (bool, np.bool_)):
        raise ValueError(f"label {label!r}{where} is not a non-negative int")
    if isinstance(label, str):
        if not label.strip().isdigit():
            raise ValueError(f"label {label!r}{where} is not a non-negative int")
        return int(label)
    if isinstance(label, (int, np.integer)) and label >= 0:
        return int(label)
    raise ValueError(f"label {label!r}{where} is not a non-negative int")


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
    padded = -(-len(data) // _BLOCK) * _BLOCK
    ext = name.split(".", 1)[1]
    return Member(ext, tar.offset - padded, len(data), name)


class _ShardSink:
    """Writes one tar (+ index) at a time; each becomes visible only when complete."""

    def __init__(self, out: Path, config: ShardWriterConfig, label_width: int):
        self.out, self.config, self.width = out, config, label_width
        self.shards: list[dict] = []
        self._tar = None

    def _open(self):
        n = len(self.shards)
        self.name = f"{self.config.prefix}-{n:06d}"
        with open(self.out / WRITING, "a") as f:  # recorded first: a killed write's files stay recognisable
            f.write(f"{self.name}.tar\n{self.name}.idx\n")
        self._ctx = atomic_open(self.out / f"{self.name}.tar", "wb")
        self._file = self._ctx.__enter__()
        self._hash = _HashingWriter(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.USTAR_FORMAT)
        self._index: list[list[Member]] = []

    def add(self, s: RawSample):
        if self._tar is None:
            self._open()
        members = [
            _member(self._tar, f"{s.key}.cls", str(s.label).zfill(self.width).encode()),
            _member(self._tar, f"{s.key}.jpg", bytes(s.data)),
        ]
        if s.meta:
            blob = json.dumps(s.meta, sort_keys=True, separators=(",", ":")).encode()
            members.append(_member(self._tar, f"{s.key}.json", blob))
        self._index.append(members)
        shard = len(self.shards)
        if len(self._index) >= self.config.shard_size:
            self.close()
        return shard, members

    def close(self):
        if self._tar is None:
            return
        self._tar.close()  # writes the end-of-archive blocks through the hashing writer
        self._ctx.__exit__(None, None, None)
        index_name = f"{self.name}.idx"
        with atomic_open(self.out / index_name, "w") as f:
            f.write(format_index(self._index))
        self.shards.append(
            {"tar": f"{self.name}.tar", "index": index_name, "count": len(self._index),
             "sha256": self._hash.hexdigest(), "size": (self.out / f"{self.name}.tar").stat().st_size}
        )
        self._tar = None

    def abort(self):
        if self._tar is not None:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._tar = None


class _HashingWriter:
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def write(self, b):
        self.h.update(b)
        return self.f.write(b)

    def tell(self):
        return self.f.tell()

    def hexdigest(self):
        return self.h.hexdigest()


def _prepare_out(out: Path, overwrite: bool, prefix: str) -> None:
    """Make ``out`` ready for writing. ``overwrite`` replaces a dataset this writer made (a
    ``fastcas-shards`` manifest): its manifest, manifest columns and the shards and indexes the
    manifest lists, nothing else; a directory holding anything else is refused, untouched."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to replace its shards")
        ours = _own_files(out)
        # The manifest goes first: a crash from here on leaves no manifest, never a stale one.
        (out / MANIFEST).unlink(missing_ok=True)
        for p in ours:
            p.unlink(missing_ok=True)
        shutil.rmtree(out / COLUMNS_DIR, ignore_errors=True)
        (out / WRITING).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / WRITING).write_text("")


def _own_files(out: Path) -> list[Path]:
    """The shard and index files of the ``fastcas shard`` dataset in ``out`` (names from its
    manifest, and from the record of a write that failed or was killed, each a plain name
    inside ``out``); ``FileExistsError`` when ``out`` holds no such dataset (no manifest nor
    record, or a manifest of another format: someone else's files)."""
    refuse = (f"--overwrite: {out} holds no dataset written by `fastcas shard` ({MANIFEST} {{}}); refusing to "
              "delete its files. Choose an empty or new OUT")
    names = (out / WRITING).read_text().split() if (out / WRITING).is_file() else None
    try:
        m = json.loads((out / MANIFEST).read_text())
    except FileNotFoundError:
        if names is None:
            raise FileExistsError(refuse.format("missing")) from None
        m = {"format": FORMAT_COLUMNS, "shards": []}  # an unfinished write of ours: its record names its files
    except (OSError, ValueError):
        raise FileExistsError(refuse.format("unreadable")) from None
    if not isinstance(m, dict) or m.get("format") not in (FORMAT_JSON, FORMAT_COLUMNS):
        raise FileExistsError(refuse.format(f"of format {m.get('format') if isinstance(m, dict) else None!r}"))
    listed = [n for sh in m.get("shards", []) if isinstance(sh, dict) for n in (sh.get("tar"), sh.get("index"))]
    return [out / n for n in [*listed, *(names or [])]
            if isinstance(n, str) and n and Path(n).name == n and n not in (".", "..")]


def write_shards(samples: Iterable[RawSample | tuple], out: str | Path,
                 config: ShardWriterConfig | None = None, *, progress: bool = False,
                 total: int | None = None) -> dict:
    """Write ``samples`` as shards under ``out`` and return the manifest (also saved there).

    ``samples``: :class:`RawSample` or ``(key, jpeg_bytes, label[, meta])`` tuples, in the
    order they should be stored. Raises ``ValueError`` naming the key for a duplicate key, a
    bad label or empty data; ``ValueError`` for empty input; ``FileExistsError`` if ``out`` is
    not empty and ``config.overwrite`` is false.
    """
    config = config or ShardWriterConfig()
    out = Path(out)
    _prepare_out(out, config.overwrite, config.prefix)
    width = len(str(max(len(config.class_names) - 1, 0))) if config.class_names else 4
    sink = _ShardSink(out, config, width)
    cols = ColumnWriter(out / f".{COLUMNS_DIR}.partial")
    it: Iterator = iter(samples)
    if progress:
        from tqdm import tqdm

        it = iter(tqdm(it, total=total, unit="img", desc=f"shard {out.name}"))
    try:
        for s in it:
            if not isinstance(s, RawSample):
                s = RawSample(*s)
            check_key(s.key, s.source)
            label = check_label(s.label, s.source or s.key)
            if not len(s.data):
                raise ValueError(f"sample {s.key!r} ({s.source}) has no image bytes")
            if not config.class_names:
                check_class_bound(
                    label, config.max_classes, f"sample {s.key!r}" + (f" ({s.source})" if s.source else "")
                )
            if config.class_names and label >= len(config.class_names):
                raise ValueError(
                    f"label {label} of {s.key!r} is >= the number of class names ({len(config.class_names)})"
                )
            if label != s.label:
                s = RawSample(s.key, s.data, label, s.meta, s.source)
            _, members = sink.add(s)
            header = imagehdr.read(s.data)
            meta = members[2] if len(members) > 2 else None
            cols.add(s.key, label, members[1].offset, members[1].size, header.display_size if header else (0, 0),
                     meta.offset if meta else -1, meta.size if meta else 0, "jpg")
        sink.close()
        if not len(cols):
            raise ValueError(f"no samples to write to {out} (empty input)")
        counts = cols.class_counts
        info = cols.finish()
        # duplicates are found once, vectorised over the finished key column (a set of N
        # Python strings would grow without bound)
        view = Columns(cols.dir, info["num_samples"])
        dup = view.keys.first_duplicate()
        if dup is not None:
            raise ValueError(f"duplicate key {view.keys[dup[0]]!r}: samples {dup[0]} and {dup[1]} of the input")
    except BaseException:
        sink.abort()
        cols.abort()
        raise
    num_classes = len(config.class_names) if config.class_names else len(counts)
    class_names = list(config.class_names) if config.class_names else [str(k) for k in range(num_classes)]
    content = hashlib.sha256("".join(s["sha256"] for s in sink.shards).encode()).hexdigest()
    header = {
        "format": FORMAT_COLUMNS,
        "num_samples": info["num_samples"],
        "shards": sink.shards,
        "class_names": class_names,
        "class_counts": np.concatenate([counts, np.zeros(num_classes - len(counts), np.int64)]).tolist(),
        "image_exts": ["jpg"],
        "content_hash": content,
        **config.extra,
    }
    del view
    install(cols.dir, out)
    header["columns"] = info
    atomic_write_json(out / MANIFEST, header)
    (out / WRITING).unlink(missing_ok=True)
    return open_view(out, header)
