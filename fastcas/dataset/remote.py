"""Remote shards (``http(s)://``, ``s3://``, ``gs://`` through fsspec) and their local cache.

A :class:`ShardCache` holds whole shards under one directory. The first use of a URL
downloads it to a temporary file beside its final name, checks the size and the SHA-256 the
manifest recorded, and renames it into place, so the cache never holds a partial or
unverified shard; a download that fails names the URL and leaves nothing behind. Files are
locked while they download (``fcntl.flock`` on ``NAME.lock``), so processes sharing a cache
(DALI workers, ranks on one node, nodes on a shared file system) download each shard once.
Beyond ``max_bytes`` the least recently used shards are evicted (use = file mtime, touched on
every open), except shards some process has *pinned* (:meth:`ShardCache.hold`: a shared
``fcntl.flock`` on ``NAME.pin``, which the evictor must take exclusively to delete). Streaming
mode pins the shards each process still reads, so a process never evicts a shard a sibling
(another DALI worker of its rank, another rank on the node) is about to open; ``max_bytes=0``
keeps nothing else: a shard is deleted as soon as no process holds it. Pinned shards may hold
the cache above ``max_bytes``. Each process downloads only the shards it reads.

fsspec comes with the ``http(s)`` backend (aiohttp); ``s3://`` needs ``s3fs`` and ``gs://``
needs ``gcsfs`` (``pip install fastcas[s3]`` / ``fastcas[gcs]``). Only HTTP is tested here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from fastcas.core.errors import FastcasError
from fastcas.core.urls import has_userinfo, redact
from fastcas.dataset.fetch import RemoteOptions, is_transient, timeout_kind, verify_tar

SCHEMES = ("http", "https", "s3", "gs", "gcs")
_CHUNK = 1 << 20


class RemoteError(FastcasError, OSError):
    """A remote shard cannot be fetched; the message names the URL (credentials in it, and in
    the backend's error text, redacted: ``user:***@``)."""

    def __init__(self, message, *args):
        super().__init__(redact(message), *args)


class ShardChangedError(FastcasError, ValueError):
    """A shard's size or SHA-256 differs from what its manifest recorded (URL redacted)."""

    def __init__(self, message, *args):
        super().__init__(redact(message), *args)


class BadResponseError(RemoteError, ValueError):
    """The server answered with something that is not the shard (not a whole tar: an HTML
    page, a body cut short); nothing was cached."""


def is_url(s: str) -> bool:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", str(s))
    return bool(m) and m.group(1).lower() in SCHEMES


CREDENTIALS_HELP = ("put them in ~/.netrc (http(s)://), in the environment (AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY or ~/.aws/credentials for s3://, GOOGLE_APPLICATION_CREDENTIALS for "
                    "gs://) or in fsspec's storage options (~/.config/fsspec/conf.json)")


def refuse_credentials(url: str) -> None:
    """``ValueError`` (URL redacted) when ``url`` carries ``user:password@``: a URL written into
    a manifest must hold no secret; :data:`CREDENTIALS_HELP` says where credentials go instead."""
    if has_userinfo(url):
        raise ValueError(f"{redact(url)}: credentials in a URL are refused (they would be stored in "
                         f"manifest.json and shown in messages); {CREDENTIALS_HELP}")


def default_cache_dir() -> Path:
    """``~/.cache/fastcas/shards`` (a fixed default; pass ``cache_dir`` to choose another)."""
    return Path.home() / ".cache" / "fastcas" / "shards"


def _filesystem(url: str, options: RemoteOptions):
    from urllib.parse import urlsplit

    import fsspec

    protocol = url.split("://", 1)[0].lower()
    # ~/.netrc credentials for the host, unless the URL carries its own (aiohttp refuses both)
    host = None if has_userinfo(url) else urlsplit(url).hostname
    try:
        storage = options.storage_options(protocol, host)
    except ValueError as exc:  # an unusable ~/.netrc
        raise RemoteError(f"{url}: {exc}") from None
    try:
        # a fresh instance: fsspec caches instances (and their event loop) per process, which a
        # forked DALI worker must not inherit
        return fsspec.filesystem(protocol, skip_instance_cache=True, **storage)
    except (ImportError, ValueError) as exc:
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
        hint = f" (pip install 'fastcas[{extra}]')" if extra else ""
        raise RemoteError(f"{url}: no fsspec backend for {protocol}://{hint}: {exc}") from None


def _describe(exc: BaseException, options: RemoteOptions) -> str:
    kind = timeout_kind(exc)
    if kind == "connect":
        return f"connect timed out: no connection within {options.connect_timeout:g} s"
    if kind == "read":
        return f"read timed out: no data for {options.read_timeout:g} s"
    if isinstance(exc, FileNotFoundError):  # fsspec's translation of HTTP 404 / NoSuchKey
        return "not found on the server"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


@contextlib.contextmanager
def _if_unlocked(lock_path: Path):
    """Yields True when no process holds a lock on ``lock_path`` (a missing file: nobody
    does), keeping its exclusive lock until the block ends so nobody can take one meanwhile;
    False when some process holds it (a download's ``NAME.lock``, a pin's ``NAME.pin``)."""
    import fcntl

    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _pin_file(path: Path) -> Path:
    return path.with_name(path.name + ".pin")


class _Failed(Exception):
    """One failed download attempt: the message, and whether another attempt may help."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


class ShardCache:
    """Whole-shard cache under ``root`` (``None``: :func:`default_cache_dir`); ``max_bytes``
    (``None``: unlimited) is the size beyond which least-recently-used shards are evicted
    (downloads in progress count); ``options``: timeouts and retries (default
    :class:`fastcas.dataset.fetch.RemoteOptions`)."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None,
                 options: RemoteOptions | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}")
        if options is not None and not isinstance(options, RemoteOptions):
            raise TypeError(f"options must be a RemoteOptions, got {type(options).__name__}")
        self.max_bytes = max_bytes
        self.options = options or RemoteOptions()
        self.downloads = 0  # shards this object downloaded (for tests and logs)
        self._pins: dict[Path, int] = {}  # shard path -> fd of its .pin file, LOCK_SH held
        self._pid = os.getpid()

    def __getstate__(self):
        return {**self.__dict__, "_pins": {}}  # a lock belongs to the process that took it

    def _own_pins(self) -> dict[Path, int]:
        """This process's pins. A forked child inherits the parent's pin descriptors (the same
        open file descriptions, so the same locks): it closes its copies without unlocking,
        which leaves the parent's pins in place."""
        if self._pid != os.getpid():
            for fd in self._pins.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pins, self._pid = {}, os.getpid()
        return self._pins

    def hold(self, urls) -> None:
        """Pin exactly ``urls`` for this process (downloaded or not yet): pins taken for new
        ones, released for the others, and, when some were released and ``max_bytes`` is set,
        an eviction pass (with ``max_bytes=0`` this deletes every shard no process holds).
        A pinned shard is never evicted by any process sharing the cache directory."""
        if self._pin_exactly({self.path_for(u) for u in urls}) and self.max_bytes is not None:
            self.evict()

    def release(self) -> None:
        """Drop all of this process's pins, then trim the cache to ``max_bytes`` (shards other
        processes pin stay)."""
        self._pin_exactly(set())
        if self.max_bytes is not None:
            self.evict()

    def _pin_exactly(self, want: set) -> bool:
        """Hold shared locks on the pin files of exactly ``want`` (shard paths); True when some
        pin was released."""
        import fcntl

        pins = self._own_pins()
        released = [p for p in pins if p not in want]
        for path in released:
            fd = pins.pop(path)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        new = [p for p in want if p not in pins]
        for path in new:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(_pin_file(path), os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError as exc:  # a read-only or foreign cache directory: name the file
                raise RemoteError(f"{_pin_file(path)}: cannot create the shard's pin file ({exc.strerror or exc}); "
                                  f"the cache directory {self.root} must be writable: pass another cache_dir / "
                                  "--cache-dir") from None
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an evictor is deleting this shard
            pins[path] = fd
        return bool(released)

    def path_for(self, url: str) -> Path:
        """The cache file of ``url``: a digest of the whole URL (no collisions between hosts)
        plus the readable base name. Of the URL with its password redacted: no file name or
        digest derives from a secret (the same URL without credentials has the same path)."""
        url = redact(url)
        base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[-80:] or "shard"
        return self.root / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{base}"

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as exc:
            raise RemoteError(f"cache directory {self.root} is not writable ({exc.strerror or exc}); "
                              "pass another cache_dir / --cache-dir") from None

    def get(self, url: str, size: int | None = None, sha256: str | None = None) -> Path:
        """Local path of ``url``'s bytes, downloading on first use. ``size`` / ``sha256``:
        what the manifest recorded (checked on download; a cached copy of another size is
        fetched again). Raises :class:`RemoteError` or :class:`ShardChangedError`."""
        path = self.path_for(url)
        if self._usable(path, size):
            return path
        self._check_writable()
        self.evict(reserve=size or 0)  # room first: the cache stays within max_bytes while it downloads
        with self._lock(path):
            if not self._usable(path, size):  # another process may have fetched it meanwhile
                self._download(url, path, size, sha256)
        self.evict(keep=path)
        return path

    def _usable(self, path: Path, size: int | None) -> bool:
        try:
            st = path.stat()
        except OSError:  # missing, or the cache root is not a directory (reported on download)
            return False
        if size is not None and st.st_size != size:
            return False
        if size is None and verify_tar(path):  # nothing to compare with: it must at least be a whole tar
            return False  # (a file an older fastcas cached unverified): fetched again
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for LRU eviction
        return True

    @contextlib.contextmanager
    def _lock(self, path: Path):
        import fcntl

        with open(path.with_name(path.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _download(self, url: str, path: Path, size: int | None, sha256: str | None) -> None:
        """Download with :attr:`options`' retries; only a verified body is renamed to ``path``."""
        delays = self.options.retry_delays()
        for attempt in range(len(delays) + 1):
            try:
                self._download_once(url, path, size, sha256)
                return
            except _Failed as failed:
                if not failed.transient or attempt == len(delays):
                    tries = f"; {attempt + 1} attempts" if attempt else ""
                    raise RemoteError(f"{url}: {failed}{tries}") from None
                time.sleep(delays[attempt])

    def _download_once(self, url: str, path: Path, size: int | None, sha256: str | None) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=self.root)
        h, got = hashlib.sha256(), 0
        try:
            if size:  # the part counts its whole size in every process's eviction from the start
                os.ftruncate(fd, size)  # (sparse; the body overwrites it)
            try:
                fs = _filesystem(url, self.options)
                # http: block_size=0 streams one GET (no range requests, any server works); a size
                # given skips fsspec's HEAD, which would turn a timeout into "not found"
                opts = ({"block_size": 0, "size": size or -1} if url.lower().startswith("http")
                        else {"block_size": _CHUNK})
                with os.fdopen(fd, "wb") as out, fs.open(url, "rb", **opts) as src:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
                        out.write(chunk)
                        got += len(chunk)
            except (RemoteError, ShardChangedError):
                raise
            except Exception as exc:  # fsspec/aiohttp/botocore raise many types
                raise _Failed(f"download failed after {got:,} bytes ({_describe(exc, self.options)})",
                              is_transient(exc)) from None
            bad = verify_tar(tmp)
            if size is not None and got != size:
                raise ShardChangedError(f"{url}: shard changed on the server: {got:,} bytes, the manifest "
                                        f"recorded {size:,} (re-run `fastcas index`)" + (f"; {bad}" if bad else ""))
            if sha256 and h.hexdigest() != sha256:
                raise ShardChangedError(f"{url}: shard changed on the server: SHA-256 {h.hexdigest()[:16]}..., "
                                        f"the manifest recorded {sha256[:16]}... (re-run `fastcas index`)")
            if bad:
                raise BadResponseError(f"{url}: the server's response ({got:,} bytes) is not the shard: {bad}; "
                                       "not cached")
            os.replace(tmp, path)
            self.downloads += 1
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def remove_stale_parts(self) -> list[Path]:
        """Delete the hidden ``.NAME.XXXX.part`` files of downloads no process is running any
        more (killed ones): a part whose ``NAME.lock`` nobody holds. Returns those removed."""
        removed = []
        with contextlib.suppress(OSError):
            for p in self.root.glob(".*.part"):
                target = p.name[1 : -len(".part")].rsplit(".", 1)[0]
                # a live download (this process or another) holds the lock from before its part existed
                with contextlib.suppress(OSError), _if_unlocked(self.root / f"{target}.lock") as stale:
                    if stale:
                        p.unlink()
                        removed.append(p)
        return removed

    def fetch_hashed(self, url: str) -> tuple[Path, int, str]:
        """Download ``url`` (no expected size/hash) and return (path, size, sha256): for
        ``fastcas index``, which records them."""
        path = self.get(url)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return path, path.stat().st_size, h.hexdigest()

    def evict(self, keep: Path | None = None, reserve: int = 0) -> list[Path]:
        """Delete stale ``.part`` files, then least-recently-used shards no process pins until
        the cache (live ``.part`` files included) plus ``reserve`` bytes (a download about to
        start) is within ``max_bytes``. ``keep``: a shard not to evict (just fetched)."""
        self.remove_stale_parts()
        if self.max_bytes is None:
            return []
        if not self.root.is_dir():  # nothing downloaded yet
            return []
        files, parts = [], 0
        for p in self.root.iterdir():
            if p.name.endswith((".lock", ".pin")) or not p.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                if p.name.startswith("."):  # a download in progress: counts, never evicted here
                    parts += st.st_size if p.name.endswith(".part") else 0
                    continue
                files.append((st.st_mtime, st.st_size, p))
        total = parts + sum(f[1] for f in files) + reserve
        removed = []
        for _, nbytes, p in sorted(files):
            if total <= self.max_bytes:
                break
            if keep is not None and p == keep:
                continue
            with _if_unlocked(_pin_file(p)) as unpinned:
                if not unpinned:  # some process still reads it (streaming mode)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()  # an open mmap of it stays valid until closed
                    total -= nbytes
                    removed.append(p)
        return removed


class Prefetcher:
    """Downloads shards in a given order on a background thread (streaming mode: each rank's
    shards arrive while earlier ones are read). ``fetch(s)`` is the reader's fetch function."""

    def __init__(self, fetch, order):
        self.errors: dict[int, BaseException] = {}
        self._thread = threading.Thread(target=self._run, args=(fetch, list(order)), daemon=True)
        self._thread.start()

    def _run(self, fetch, order):
        for s in order:
            try:
                fetch(int(s))
            except BaseException as exc:  # the reader raises it again when shard s is read
                self.errors[int(s)] = exc

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def iter_streaming(reader, sampler, epoch: int):
    """Streaming mode over (possibly remote) shards: the samples of ``sampler``
    (:class:`fastcas.sampling.streaming.StreamingSampler`) for this rank in ``epoch``, with this rank's
    shards downloaded in the order it reads them, ahead of the reads, and no other shard."""
    reader.prefetch(sampler.shards_of_rank(epoch))
    for i in sampler.iter_epoch(epoch):
        yield reader[i]
