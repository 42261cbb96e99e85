"""How remote shards are fetched: timeouts, bounded retries, and what a download must prove.

:class:`RemoteOptions` is the policy :class:`fastcas.dataset.remote.ShardCache` applies to every
download: a connect timeout and an idle-read timeout (seconds without a byte, not a limit on
the whole download: an honest long download that keeps moving bytes never fails), retried with
exponential backoff a bounded number of times for transient failures only (timeouts, refused or
dropped connections, HTTP 5xx/429). A 404, a 403, or a body that fails verification is not
retried: asking again gives the same answer.

:func:`verify_tar` is what a body must pass before it may enter the cache: every 512-byte
header has a valid checksum, each member's data lies inside the file, and the archive ends
with its zero block. An HTML error page served with status 200 or a body cut short fails it.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

BLOCK = 512


@dataclass(frozen=True)
class RemoteOptions:
    """Timeouts and retries for remote shards (``fastcas index/train --connect-timeout
    --read-timeout --retries``). Seconds; ``retries`` is the number of further attempts after
    the first; attempt k waits ``backoff * 2**(k-1)`` seconds first (deterministic: no jitter)."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5

    def __post_init__(self):
        for name in ("connect_timeout", "read_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {v!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if isinstance(self.backoff, bool) or not isinstance(self.backoff, (int, float)) or self.backoff < 0:
            raise ValueError(f"backoff must be a number of seconds >= 0, got {self.backoff!r}")

    def storage_options(self, protocol: str, host: str | None = None) -> dict:
        """fsspec keyword arguments that apply these timeouts for ``protocol``. Retries are ours
        (:func:`retry_delays`), so the backends' own retries are turned off where they have any.
        ``host`` (http(s)): its ``~/.netrc`` entry, if any, becomes the session's Basic auth."""
        if protocol in ("http", "https"):
            import aiohttp

            # total=None: no limit on the whole download; sock_read: the longest gap between bytes
            # (waiting for the response headers included)
            timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.connect_timeout,
                                            sock_read=self.read_timeout)
            kwargs = {"timeout": timeout}
            login = netrc_login(host) if host else None
            if login is not None:
                kwargs["auth"] = aiohttp.BasicAuth(*login)
            return {"client_kwargs": kwargs}
        if protocol == "s3":
            return {"config_kwargs": {"connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
                                      "retries": {"max_attempts": 1, "mode": "standard"}}}
        return {}  # gs://: gcsfs's own defaults (not configurable through one common option)

    def retry_delays(self) -> list[float]:
        """Seconds to wait before each further attempt: ``retries`` entries."""
        return [self.backoff * 2 ** k for k in range(self.retries)]


def netrc_login(host: str) -> tuple[str, str] | None:
    """(login, password) for ``host`` from ``$NETRC`` or ``~/.netrc`` (its ``default`` entry
    too, as curl does), or None without a file or an entry: where HTTP credentials go, since
    a URL must not carry them. ``ValueError`` naming the file and line when it cannot be parsed."""
    import netrc

    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.isfile(path):
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except netrc.NetrcParseError as exc:
        raise ValueError(f"{path}: cannot use this netrc file: {exc.msg} (line {exc.lineno})") from None
    return None if entry is None else (entry[0] or "", entry[2] or "")


def _chain(exc: BaseException):
    """``exc`` and its causes/contexts (fsspec turns a failed HEAD into FileNotFoundError
    *from* the real error)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def timeout_kind(exc: BaseException) -> str | None:
    """"connect" or "read" when ``exc`` (or what caused it) is a timeout, else None. The whole
    chain is searched for a connect timeout first: fsspec wraps aiohttp's in a bare TimeoutError."""
    chain = list(_chain(exc))
    if any("ConnectTimeout" in type(e).__name__ or "ConnectionTimeout" in type(e).__name__ for e in chain):
        return "connect"  # aiohttp's ConnectionTimeoutError, botocore's ConnectTimeoutError
    if any("ReadTimeout" in type(e).__name__ or isinstance(e, TimeoutError | asyncio.TimeoutError) for e in chain):
        return "read"  # aiohttp's SocketTimeoutError is an asyncio.TimeoutError; botocore's ReadTimeoutError
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: a timeout, a refused/reset/dropped connection, a body cut short
    by the connection, or an HTTP 5xx/429. Not a 404/403 or anything about the bytes served."""
    for e in _chain(exc):
        if timeout_kind(e):
            return True
        if isinstance(e, FileNotFoundError | PermissionError):
            return False
        status = getattr(e, "status", None)
        if isinstance(status, int):
            return status >= 500 or status == 429
        name = type(e).__name__
        if isinstance(e, ConnectionError) or name in ("ClientConnectorError", "ServerDisconnectedError",
                                                      "ClientPayloadError", "ClientOSError",
                                                      "ContentLengthError", "EndpointConnectionError",
                                                      "ConnectionClosedError", "IncompleteReadError"):
            return True
    return False


def verify_tar(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` is not a whole tar archive, or None when it is: each header's
    checksum holds, each member's data lies inside the file, and an all-zero end block follows
    the last member. Reads one 512-byte header per member (seeks over the data)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while True:
            f.seek(offset)
            head = f.read(BLOCK)
            if len(head) < BLOCK:
                return (f"not a tar: ends at byte {size:,} without the end-of-archive block "
                        f"({'empty' if size == 0 else 'cut short?'})")
            if head == b"\0" * BLOCK:
                return None if offset > 0 else "not a tar: starts with an end-of-archive block (empty archive)"
            why = _header_problem(head)
            if why:
                return f"not a tar: {why} at byte {offset:,}" + (
                    " (an HTML page?)" if head.lstrip()[:1] == b"<" else ""
                )
            nbytes = _member_size(head)
            end = offset + BLOCK + nbytes
            if end > size:
                return (f"not a tar: member at byte {offset:,} needs {nbytes:,} bytes of data, the file ends at "
                        f"{size:,} (cut short)")
            offset += BLOCK + -(-nbytes // BLOCK) * BLOCK


def _header_problem(head: bytes) -> str | None:
    field = head[148:156]
    try:
        want = int(field.replace(b"\0", b" ").strip() or b"x", 8)
    except ValueError:
        return "no valid header checksum"
    # the checksum counts its own field as 8 spaces; some old tars summed signed bytes
    unsigned = sum(head[:148]) + 8 * 32 + sum(head[156:])
    signed = unsigned - 256 * sum(1 for b in head[:148] + head[156:] if b > 127)
    return None if want in (unsigned, signed) else f"header checksum {want} != {unsigned}"


def _member_size(head: bytes) -> int:
    field = head[124:136]
    if field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    return int(field.replace(b"\0", b" ").strip() or b"0", 8)
