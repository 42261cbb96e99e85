"""``fastcas index`` keeps no ``TarInfo`` per member: reading a tar's member headers takes
memory independent of the number of members (tarfile's ``members`` list is emptied)."""
from __future__ import annotations

import io
import tarfile
import tracemalloc

from fastcas.dataset.indexer import _members


def _tar(path, n: int) -> None:
    with tarfile.open(path, "w") as t:
        for j in range(n):
            info = tarfile.TarInfo(f"s{j:06d}.cls")
            info.size = 1
            t.addfile(info, io.BytesIO(b"1"))


def _peak(path) -> tuple[int, int]:
    data = path.read_bytes()
    tracemalloc.start()
    try:
        count = sum(1 for _ in _members(path, str(path), memoryview(data)))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_member_headers_keeps_no_tarinfo_per_member(tmp_path):
    _tar(tmp_path / "small.tar", 200)
    _tar(tmp_path / "large.tar", 4000)
    n_small, small = _peak(tmp_path / "small.tar")
    n_large, large = _peak(tmp_path / "large.tar")
    assert (n_small, n_large) == (200, 4000)
    # with every TarInfo kept: about 440 bytes per member (1.7 MB here); bounded: tens of kB
    assert large < 100_000, large
    assert large < small + 20_000, (small, large)
