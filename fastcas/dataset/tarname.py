"""The full name of a tar member, read backwards from its data offset.

A manifest records where each member's data starts; the 512-byte ustar header right before it
names the member, so a reader can check it reads the member the manifest means (a tar re-packed
or an offset pointing at another member). The ustar name field holds 100 bytes: a longer name
lives in a GNU longname header (type ``L``, the name as its data) or a pax extended header
(type ``x``, a ``path`` record) before the member's own header, or (POSIX ustar) split into
the 155-byte prefix field. :func:`member_name` finds it without walking the tar from its start.
"""
from __future__ import annotations

_BLOCK = 512
_MAX_EXT_BLOCKS = 32  # an extended header's data of up to 16 KiB is searched for


def _header(m, at: int) -> tuple[bytes, int] | None:
    """(typeflag, size) of a valid tar header at byte ``at`` of ``m``, else None (bad checksum)."""
    if at < 0 or at + _BLOCK > len(m):
        return None
    h = bytes(m[at : at + _BLOCK])
    try:
        stored = int(h[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
        size = int(h[124:136].replace(b"\0", b" ").strip() or b"0", 8)
    except ValueError:
        return None
    if stored != sum(h[:148]) + 8 * 32 + sum(h[156:]):
        return None
    return h[156:157], size


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of pax extended header data (``"%d %s=%s\\n"`` records)."""
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        try:
            n = int(data[pos:sp])
        except ValueError:
            return None
        rec = data[sp + 1 : pos + n]
        if n <= 0 or not rec.endswith(b"\n") or b"=" not in rec:
            return None
        key, value = rec[:-1].split(b"=", 1)
        if key == b"path":
            return value.decode("utf-8", "replace")
        pos += n
    return None


def member_name(m, offset: int) -> str | None:
    """The full name of the member whose data starts at byte ``offset`` of the mapped tar ``m``
    (GNU longname, pax ``path`` or ustar prefix + name), or None when the 512 bytes before
    ``offset`` are not a valid tar header (the offset is not a member's data start)."""
    top = offset - _BLOCK
    main = _header(m, top)
    if main is None:
        return None
    h = bytes(m[top : top + _BLOCK])
    for k in range(1, _MAX_EXT_BLOCKS + 1):  # an extended header and its k data blocks before it
        ext = _header(m, top - _BLOCK * (k + 1))
        if ext is not None and ext[0] in (b"L", b"x") and -(-ext[1] // _BLOCK) == k:
            start = top - _BLOCK * k
            data = bytes(m[start : start + ext[1]])
            if ext[0] == b"L":
                return data.rstrip(b"\0").decode("utf-8", "replace")
            path = _pax_path(data)
            if path is not None:
                return path
            break
    name = h[:100].split(b"\0", 1)[0]
    prefix = h[345:500].split(b"\0", 1)[0] if h[257:263] == b"ustar\0" else b""
    return ((prefix + b"/" + name) if prefix else name).decode("utf-8", "replace")
