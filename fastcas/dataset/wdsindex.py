"""Per-shard sample indexes in the text format of DALI's ``wds2idx`` (version ``v1.2``).

Layout (one file per tar, read by ``fn.readers.webdataset(index_paths=...)`` and by
:class:`fastcas.dataset.reader.ShardReader`)::

    v1.2 <num_samples>
    <ext> <data_offset> <size> <member_name> [<ext> <data_offset> <size> <member_name> ...]
    ...

one line per sample, members in tar order; ``data_offset`` is the byte offset of the member's
data (past its 512-byte header). Writing it while the tar is written avoids a second pass
over the data (``wds2idx`` shells out to ``tar``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

VERSION = "v1.2"


@dataclass(frozen=True)
class Member:
    ext: str
    offset: int
    size: int
    name: str


def format_index(samples: list[list[Member]]) -> str:
    lines = [f"{VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in members))
    return "\n".join(lines) + "\n"


def parse_index(path: str | Path) -> list[list[Member]]:
    """Parse an index file; ``ValueError`` naming the file on any malformed line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: index file is missing") from None
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != VERSION or not head[1].isdigit():
        raise ValueError(f"{path}: not a {VERSION} webdataset index (first line {lines[:1]})")
    count = int(head[1])
    body = lines[1:]
    if len(body) != count:
        raise ValueError(f"{path}: header says {count} samples, file has {len(body)} lines")
    out = []
    for lineno, line in enumerate(body, start=2):
        parts = line.split()
        if not parts or len(parts) % 4:
            raise ValueError(f"{path}:{lineno}: expected groups of 'ext offset size name'")
        members = []
        for j in range(0, len(parts), 4):
            ext, off, size, name = parts[j : j + 4]
            if not (off.isdigit() and size.isdigit()):
                raise ValueError(f"{path}:{lineno}: offset/size must be integers, got {off!r} {size!r}")
            members.append(Member(ext, int(off), int(size), name))
        out.append(members)
    return out
