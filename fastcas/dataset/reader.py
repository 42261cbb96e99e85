"""Random access to sharded datasets through memory-mapped tars.

``ShardReader(path)[i]`` returns the ``i``-th sample (global order = shard order) as a
:class:`Sample` whose ``data`` is a zero-copy ``memoryview`` into the tar's mmap, so a DALI
external source can hand JPEG bytes to the decoder without copying them in Python.
The manifest is columnar (:mod:`fastcas.dataset.manifest`, what ``fastcas shard`` and ``fastcas
index`` write), opened by mapping its columns: O(1) in N, nothing of size N as Python objects,
the pages shared by every process on the node; ``keys`` is a
:class:`~fastcas.dataset.manifest.KeyColumn` and pickling carries only the path. It is the one
format read at run time: a JSON manifest of an older dataset (per-sample lists) is refused with
the command that converts it (``fastcas convert DIR``, :mod:`fastcas.dataset.convert`, the only
reader of JSON manifests). Every access is O(1); workers re-open the mmaps lazily.
"""
from __future__ import annotations

import json
import mmap
import os
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fastcas.core.errors import CorruptSampleError, ShardError
from fastcas.dataset.fetch import RemoteOptions
from fastcas.dataset.remote import Prefetcher, ShardCache, is_url
from fastcas.dataset.shards import MANIFEST
from fastcas.dataset.tarname import member_name

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# (shard path, why it is unreadable) already warned about in this process: a changed shard is
# named once, not once per sample or per reader (ShardReader.name_broken)
_NAMED: set[tuple[str, str]] = set()
_NAMED_LOCK = threading.Lock()
CONVERT = "fastcas convert"  # the one command that turns a JSON manifest into the runtime (columnar) one


def not_columnar(manifest: Path, m) -> str:
    """The message for a manifest.json that is not a columnar manifest: a JSON manifest of an
    older dataset (per-sample lists) names the command that converts it."""
    if isinstance(m, dict) and "keys" in m:
        return (f"{manifest}: a JSON manifest (per-sample lists, format {m.get('format', '?')!r}); fastcas reads "
                f"only the columnar manifest at run time: convert this dataset once with "
                f"`{CONVERT} {manifest.parent}` (tars and indexes stay as they are)")
    return (f"{manifest}: not a fastcas columnar manifest (no 'columns'): write the dataset with `fastcas shard` "
            f"or `fastcas index`, or convert an older one with `{CONVERT} {manifest.parent}`")


class Sample(NamedTuple):
    key: str
    data: memoryview  # encoded image bytes, a view of the mmapped tar
    label: int


TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz")


def resolve_manifest(path: str | Path) -> Path:
    path = Path(path)
    manifest = path / MANIFEST if path.is_dir() else path
    if not manifest.exists():
        if path.is_dir():
            raise FileNotFoundError(
                f"{path}: no {MANIFEST} (not a fastcas dataset; run `fastcas shard` or `fastcas index` first)"
            )
        raise FileNotFoundError(f"{path}: no such dataset or manifest")
    if path.name.lower().endswith(TAR_SUFFIXES):
        raise ValueError(f"{path} is a tar file, not a fastcas dataset: give the dataset directory (the one with "
                         f"{MANIFEST}), or index your WebDataset tars first: fastcas index {path} --out DIR")
    return manifest


@dataclass(frozen=True)
class ReopenSpec:
    """How a :class:`ShardReader` opens again in another process (a DALI worker, an unpickled
    copy): the manifest file it read (absolute), its ``on_error`` and its cache settings. The
    reader exposes its own (:attr:`ShardReader.reopen_spec`), so a worker opens the dataset the
    caller opened: the same manifest file and cache, not the dataset root with other settings."""

    manifest: str  # the manifest file, absolute (its directory is the dataset root)
    on_error: str = "raise"
    cache_dir: str | None = None  # absolute (a worker's cwd may differ); None: the manifest's, or the default
    cache_max_bytes: int | None = None
    remote: RemoteOptions | None = None  # timeouts and retries for remote shards (None: the defaults)

    def __post_init__(self):
        if not isinstance(self.manifest, str) or not os.path.isabs(self.manifest):
            raise ValueError(f"manifest must be an absolute path (str), got {self.manifest!r}")
        if self.on_error not in ("raise", "defer"):
            raise ValueError(f"on_error must be 'raise' or 'defer', got {self.on_error!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise ValueError(f"cache_dir must be a str or None, got {self.cache_dir!r}")
        if self.cache_max_bytes is not None and (isinstance(self.cache_max_bytes, bool)
                                                 or not isinstance(self.cache_max_bytes, int)
                                                 or self.cache_max_bytes < 0):
            raise ValueError(f"cache_max_bytes must be an int >= 0 or None, got {self.cache_max_bytes!r}")

    @classmethod
    def of(cls, dataset: "str | os.PathLike | ReopenSpec") -> "ReopenSpec":
        """``dataset`` as a spec: a spec as it is, a path (dataset directory or manifest file)
        with the default settings."""
        if isinstance(dataset, ReopenSpec):
            return dataset
        return cls(os.path.abspath(resolve_manifest(dataset)))

    @property
    def root(self) -> Path:
        return Path(self.manifest).parent

    def with_errors(self, on_error: str) -> "ReopenSpec":
        return replace(self, on_error=on_error)

    def open(self) -> "ShardReader":
        return ShardReader(self.manifest, on_error=self.on_error, cache_dir=self.cache_dir,
                           cache_max_bytes=self.cache_max_bytes, remote=self.remote)


def reader_for(dataset, *, cache_dir=None, cache_max_bytes: int | None = None,
               remote: RemoteOptions | None = None) -> tuple["ShardReader", bool]:
    """``(reader, opened)``: the caller's :class:`ShardReader` as it is (``opened`` False: the
    caller owns and closes it), or ``dataset`` (a path) opened with these cache settings
    (``opened`` True). A reader given with cache settings of its own that differ is a
    ValueError: the workers reopen the dataset from the reader's :attr:`~ShardReader.reopen_spec`."""
    if not isinstance(dataset, ShardReader):
        return ShardReader(dataset, cache_dir=cache_dir, cache_max_bytes=cache_max_bytes, remote=remote), True
    spec = dataset.reopen_spec
    given = {"cache_dir": None if cache_dir is None else os.path.abspath(cache_dir),
             "cache_max_bytes": cache_max_bytes, "remote": remote}
    own = {"cache_dir": spec.cache_dir, "cache_max_bytes": spec.cache_max_bytes, "remote": spec.remote}
    for name, value in given.items():
        if value is not None and value != own[name]:
            raise ValueError(f"{name}={value!r} given with a ShardReader opened with {name}={own[name]!r}: the "
                             f"reader's settings are what its workers use; open the ShardReader with {name}={value!r}, "
                             "or pass the dataset path")
    return dataset, False


class ShardReader:
    """Indexed, read-only view of a dataset written by :func:`fastcas.dataset.shards.write_shards`.

    ``on_error="raise"`` (default) checks every shard at open and raises :class:`ShardError`
    naming the shard for a missing, truncated or changed tar, or offsets outside their tar.
    ``on_error="defer"`` records such problems and raises :class:`CorruptSampleError` only when
    a sample of a broken shard is read, so a loader can skip and count it.

    The manifest's columns carry every sample's member offsets, sizes and extensions, so no
    index file is parsed at open. Shards of ``fastcas index`` datasets (foreign WebDataset tars)
    may be URLs: those are fetched whole into ``cache_dir`` (:class:`fastcas.dataset.remote.
    ShardCache`) when a sample of theirs is first read, in the process that reads it;
    ``cache_dir=None`` means the directory given to ``fastcas index --cache-dir``, else
    :func:`fastcas.dataset.remote.default_cache_dir`.
    """

    def __init__(self, path: str | Path, *, on_error: str = "raise", cache_dir: str | Path | None = None,
                 cache_max_bytes: int | None = None, remote: RemoteOptions | None = None):
        if on_error not in ("raise", "defer"):
            raise ValueError(f"on_error must be 'raise' or 'defer', got {on_error!r}")
        self.manifest_path = resolve_manifest(path)
        self.root = self.manifest_path.parent
        self.on_error = on_error
        self._cache_dir, self._cache_max_bytes, self._remote = cache_dir, cache_max_bytes, remote
        #: how this reader opens again elsewhere (DALI workers, pickling): this manifest file and settings
        cache = None if cache_dir is None else os.path.abspath(cache_dir)  # a worker may run elsewhere
        self.reopen_spec = ReopenSpec(os.path.abspath(self.manifest_path), on_error, cache, cache_max_bytes, remote)
        try:
            m = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ShardError(f"{self.manifest_path}: manifest is not valid JSON ({exc})") from None
        except UnicodeDecodeError:  # a binary file (an image, a tar) given as the dataset
            raise ShardError(f"{self.manifest_path}: not a fastcas manifest (binary, not JSON): give the dataset "
                             f"directory (the one with {MANIFEST})") from None
        if not isinstance(m, dict) or "columns" not in m:
            raise ShardError(not_columnar(self.manifest_path, m))
        self._open_columns(m)

    def _open_columns(self, m: dict) -> None:
        """A columnar manifest (:mod:`fastcas.dataset.manifest`): map the columns, O(shards) checks."""
        from fastcas.dataset.integrity import verified_counts
        from fastcas.dataset.manifest import COLUMN_FILES, Columns

        for field in ("shards", "class_names", "class_counts"):
            if field not in m:
                raise ShardError(f"{self.manifest_path}: manifest has no {field!r}")
        n = int(m["columns"].get("num_samples", -1))
        try:
            cols = Columns(self.root / m["columns"]["dir"], n)
        except (FileNotFoundError, ValueError) as exc:
            raise ShardError(f"{self.manifest_path}: {exc}") from None
        self._columns = cols
        self.manifest = m  # the header: shards, class names and counts, hashes (no per-sample lists)
        self.keys = cols.keys
        self.labels = cols.label
        self.class_names = list(m["class_names"])
        self.num_classes = len(self.class_names)
        counts = [int(s["count"]) for s in m["shards"]]
        if sum(counts) != n:
            raise ShardError(f"{self.manifest_path}: shard counts ({sum(counts)}) and columns ({n}) disagree")
        # the columns' hash checked once per node, class counts derived from the label column
        self.class_counts = verified_counts(self, m, cols, COLUMN_FILES)
        self.shard_urls = [s["tar"] if is_url(s["tar"]) else None for s in m["shards"]]
        cache_dir = self._cache_dir if self._cache_dir is not None else m.get("cache_dir")
        self.cache = ShardCache(cache_dir, self._cache_max_bytes, self._remote) if any(self.shard_urls) else None
        # only `fastcas index` records tars outside its OUT (absolute paths); shard datasets never do
        indexed = str(m.get("format", "")).startswith("fastcas-index")
        self.shard_paths = [self.cache.path_for(u) if u else self._local_path(s["tar"], "tar", indexed)
                            for u, s in zip(self.shard_urls, m["shards"])]
        self.index_paths = [self._local_path(s["index"], "index", False) for s in m["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.sizes = cols.wh
        self._offset, self._size = cols.offset, cols.size
        self._meta_offset, self._meta_size = cols.meta_offset, cols.meta_size
        self.image_exts = list(m.get("image_exts", ["jpg"]))
        self._ext = cols.ext
        if len(self._ext) and int(self._ext.max()) >= len(self.image_exts):  # uint8 [N]: one fast pass
            i = int(np.argmax(np.asarray(self._ext) >= len(self.image_exts)))
            raise ShardError(f"{self.manifest_path}: sample {i}'s image extension code {int(self._ext[i])} is out "
                             f"of range: the manifest lists {len(self.image_exts)} image_exts {self.image_exts}")
        self.label_ext = m.get("label_ext", "cls")
        self.broken = {}
        self._prefetcher = None
        for s in range(len(counts)):
            try:
                self._check_shard(s)
            except (ShardError, FileNotFoundError) as exc:
                if self.on_error == "raise":
                    raise ShardError(str(exc)) from None
                self.broken[s] = str(exc)
        self._maps, self._fds = {}, {}

    def verify_columns(self) -> np.ndarray:
        """Hash the columns again, ignoring the per-node marker that trusts an earlier check:
        int64 [num_classes] class counts; ShardError naming the column when it does not match
        the manifest's ``columns.hash`` or ``class_counts``."""
        from fastcas.dataset.integrity import verified_counts
        from fastcas.dataset.manifest import COLUMN_FILES

        return verified_counts(self, self.manifest, self._columns, COLUMN_FILES, force=True)

    @property
    def digest(self) -> str:
        """A short digest of the dataset's identity (what a checkpoint must match), O(1): the
        manifest's content and column hashes."""
        from fastcas.dataset.manifest import header_digest

        return header_digest(self.manifest)

    def indices_of(self, keys) -> np.ndarray:
        """int64 [M]: the sample index of each of ``keys`` (Python strings), -1 when absent."""
        return self.keys.positions(list(keys))

    def _local_path(self, name, field: str, absolute_ok: bool) -> Path:
        """A manifest's ``tar`` / ``index`` path, refused (ShardError naming the manifest) when it
        leaves the dataset directory: fastcas writes shards and indexes inside it, except that
        ``fastcas index`` records tars outside its OUT as absolute paths (``absolute_ok``; such a
        tar must still be a regular file of the recorded size, checked at open)."""
        p = Path(str(name))
        if p.is_absolute():
            if absolute_ok:
                return p
        elif ".." not in p.parts and str(name).strip():
            return self.root / p
        raise ShardError(f"{self.manifest_path}: shard {field} {str(name)!r} points outside the dataset directory "
                         f"{self.root} (absolute or '..'); refused")

    def _check_shard(self, s: int) -> None:
        if self.shard_urls[s]:
            return  # checked (size, hash) when it is downloaded
        tar, info = self.shard_paths[s], self.manifest["shards"][s]
        if not tar.exists():
            raise ShardError(f"{tar}: shard is missing")
        if not tar.is_file():
            raise ShardError(f"{tar}: shard is not a regular file")
        size = tar.stat().st_size
        if info.get("size") is not None and size != info["size"]:
            raise ShardError(f"{tar}: shard changed since it was written ({size:,} bytes, the manifest recorded "
                             f"{info['size']:,}: truncated or replaced); re-run `{self._writer()}`")
        lo, hi = int(self.starts[s]), int(self.starts[s + 1])
        ends = np.maximum(self._offset[lo:hi] + self._size[lo:hi], self._meta_offset[lo:hi] + self._meta_size[lo:hi])
        if hi > lo and (ends.max() > size or self._offset[lo:hi].min() < 512):
            j = lo + int(np.argmax((ends > size) | (self._offset[lo:hi] < 512)))
            raise ShardError(f"{self.manifest_path}: sample {self.keys[j]!r} lies outside its tar {tar} (offset "
                             f"{int(self._offset[j])}, ends at byte {int(ends[j - lo])}, the tar has {size:,} bytes): "
                             "the manifest does not describe this tar; re-run `fastcas index`")

    def _writer(self) -> str:
        """The command that wrote this dataset (named in errors that need it run again)."""
        return "fastcas index" if str(self.manifest.get("format", "")).startswith("fastcas-index") else "fastcas shard"

    def local_shard(self, s: int) -> Path:
        """The local file of shard ``s``, downloading a remote shard into the cache first."""
        url = self.shard_urls[s]
        if url is None:
            return self.shard_paths[s]
        if self._prefetcher is not None and s in self._prefetcher.errors:
            raise self._prefetcher.errors.pop(s)
        info = self.manifest["shards"][s]
        return self.cache.get(url, info.get("size"), info.get("sha256"))

    def prefetch(self, order) -> Prefetcher | None:
        """Start downloading remote shards in ``order`` on a background thread (streaming
        reads: shard ``order[k+1]`` arrives while ``order[k]`` is read). None when local."""
        if self.cache is None:
            return None
        self._prefetcher = Prefetcher(self.local_shard, order)
        return self._prefetcher

    def hold(self, shards) -> None:
        """Streaming reads: keep exactly ``shards`` (ids) for this process. Their cache files
        are pinned (:meth:`fastcas.dataset.remote.ShardCache.hold`: no process sharing the cache
        evicts them), and this process's maps of other remote shards are dropped, so a shard
        the cache deleted frees its disk space once no sample view of it is alive. No-op
        for local datasets."""
        if self.cache is None:
            return
        keep = {int(s) for s in shards}
        self.cache.hold([self.shard_urls[s] for s in keep if self.shard_urls[s]])
        for s in [s for s in self._maps if s not in keep and self.shard_urls[s]]:
            self._unmap(s)

    def _unmap(self, s: int) -> None:
        """Close this process's map and descriptor of shard ``s``."""
        m, fd = self._maps.pop(s), self._fds.pop(s)
        try:
            m.close()
        except BufferError:  # a caller still holds a view; the map closes with it
            pass
        os.close(fd)

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def shard_of(self, i: int) -> int:
        return int(np.searchsorted(self.starts, i, side="right") - 1)

    def _map(self, s: int) -> mmap.mmap:
        m = self._maps.get(s)
        if m is None:
            fd = os.open(self.local_shard(s), os.O_RDONLY)
            try:
                m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                # random access: a fault reads the member's pages, not a readahead window of
                # the tar (which made each process hold ~0.5 MB of pages per shard it touched)
                m.madvise(mmap.MADV_RANDOM)
            except BaseException:
                os.close(fd)
                raise
            self._maps[s], self._fds[s] = m, fd
        return m

    def _check_size(self, s: int, m: mmap.mmap, i: int, end: int) -> None:
        """Reading a mapped page past the end of a file truncated in place kills the process
        with SIGBUS; an fstat first (about a microsecond) turns that into an error naming the
        shard. A truncation racing with the read that follows can still fault (see README)."""
        size = os.fstat(self._fds[s]).st_size
        if size < end or len(m) < end:
            raise ShardError(f"{self.shard_paths[s]}: shard changed while it was being read: sample "
                             f"{self.keys[i]!r} ends at byte {end}, the file now has {min(size, len(m))} bytes "
                             "(truncated or rewritten in place; replace shards with a new file and a rename)")

    def _view(self, i: int, offset: int, size: int) -> memoryview:
        s = self.shard_of(i)
        if s in self.broken:
            raise CorruptSampleError(f"sample {self.keys[i]!r}: {self.broken[s]}", self.keys[i])
        m = self._map(s)  # a failed or changed download raises (naming the URL), never skips
        self._check_size(s, m, i, offset + size)
        # The member's own tar header sits right before its data: checking its name catches
        # an index that was regenerated for a different tar.
        if offset < 512 or offset + size > len(m):
            raise CorruptSampleError(
                f"{self.shard_paths[s]}: truncated or changed at key {self.keys[i]!r}", self.keys[i]
            )
        name = bytes(m[offset - 512 : offset - 412]).rstrip(b"\0").decode("utf-8", "replace")
        expected = (f"{self.keys[i]}.{self.image_exts[self._ext[i]]}" if offset == self._offset[i]
                    else f"{self.keys[i]}.json" if offset == self._meta_offset[i] else None)
        # non-ASCII names live in a pax header too; the ustar field holds what the writer could
        # fit there: UTF-8 bytes, or (Python's tarfile, webdataset) '?' for each non-ASCII character
        ok = (expected is None or name == expected
              or (not expected.isascii() and name == expected.encode("ascii", "replace").decode()))
        if not ok:  # a long name: in a GNU longname or pax header before the member's own
            name = member_name(m, offset)
            ok = name == expected
        if not ok:
            self._changed(s, i, offset, name)
        return memoryview(m)[offset : offset + size]

    def _changed(self, s: int, i: int, offset: int, name: str | None) -> None:
        """A member header that names another member (or none): the whole shard is marked broken
        and named once (a warning), every later read of it raises at once."""
        fix = self._writer()
        self.broken[s] = (f"{self.shard_paths[s]}: index does not match its tar at key {self.keys[i]!r} (the header "
                          f"before byte {offset} names {name!r}): this tar changed since it was indexed; none of its "
                          f"samples is read: re-run `{fix}` for {self.root}")
        self.name_broken(s, stacklevel=5)
        raise CorruptSampleError(self.broken[s], self.keys[i])

    def name_broken(self, s: int, stacklevel: int = 3) -> None:
        """Warn why shard ``s`` is unreadable (:attr:`broken`), once per shard and process
        whichever reader finds it (a Loader's own, its source's with ``py_workers=0``)."""
        key = (str(self.shard_paths[s]), self.broken[s])
        with _NAMED_LOCK:
            if key in _NAMED:
                return
            _NAMED.add(key)
        warnings.warn(f"fastcas: {self.broken[s]}", RuntimeWarning, stacklevel=stacklevel)

    def __getitem__(self, i: int) -> Sample:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        return Sample(self.keys[i], self._view(i, int(self._offset[i]), int(self._size[i])), int(self.labels[i]))

    def metadata(self, i: int) -> dict | None:
        if self._meta_offset[i] < 0:
            return None
        return json.loads(bytes(self._view(i, int(self._meta_offset[i]), int(self._meta_size[i]))))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return (f"ShardReader({str(self.root)!r}, samples={len(self)}, classes={self.num_classes}, "
                f"shards={len(self.shard_paths)})")

    # -- pickling: drop the mmaps, workers re-open them ------------------------------------
    def __getstate__(self):
        # the columns re-map in the receiving process (O(1)); never pickle N-sized data
        return {"reopen_spec": self.reopen_spec}

    def __setstate__(self, state):
        spec = state["reopen_spec"]
        self.__init__(spec.manifest, on_error=spec.on_error, cache_dir=spec.cache_dir,
                      cache_max_bytes=spec.cache_max_bytes, remote=spec.remote)

    def close(self) -> None:
        self._prefetcher = None
        if self.cache is not None:
            self.cache.release()
        for s in list(self._maps):
            self._unmap(s)
