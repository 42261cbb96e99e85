"""Remote shards against misbehaving servers on 127.0.0.1: silent, trickling, failing, lying
(an HTML page or a short body with status 200), and downloads killed half way (``.part``)."""
import fcntl
import io
import socket
import tarfile
import threading
import time

import pytest

from fastcas.cli import main
from fastcas.dataset.fetch import RemoteOptions, verify_tar
from fastcas.dataset.remote import BadResponseError, RemoteError, ShardCache

FAST = RemoteOptions(connect_timeout=0.5, read_timeout=0.5, retries=1, backoff=0.05)


def _tar(n: int = 3, size: int = 3000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for i in range(n):
            data = bytes((i * 7 + j) % 251 for j in range(size))
            info = tarfile.TarInfo(f"s{i:03d}.jpg")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _head(body_len: int, status: str = "200 OK", ctype: str = "application/x-tar") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {body_len}\r\n"
            "Connection: close\r\n\r\n").encode()


class _RawServer:
    """A TCP server on 127.0.0.1 that calls ``respond(conn, n)`` for its n-th connection (from 0)
    after reading the request head; counts connections in ``requests``."""

    def __init__(self, respond):
        self.respond, self.requests, self._stop = respond, 0, threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            n, self.requests = self.requests, self.requests + 1
            t = threading.Thread(target=self._one, args=(conn, n), daemon=True)
            self._threads.append(t)
            t.start()

    def _one(self, conn, n):
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    part = conn.recv(4096)
                    if not part:
                        return
                    head += part
                self.respond(conn, n, self._stop)
            except OSError:  # the client gave up (a timeout under test): nothing to answer
                pass

    def close(self):
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def server():
    made = []

    def make(respond):
        made.append(_RawServer(respond))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _silent(conn, n, stop):
    stop.wait(10)  # accepts, reads the request, never answers


def _trickle(body: bytes, gap: float, pieces: int):
    def respond(conn, n, stop):
        conn.sendall(_head(len(body)))
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            if stop.wait(gap):
                return
            conn.sendall(body[i : i + step])
    return respond


def _cache_files(root):
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


# -- timeouts and retries ----------------------------------------------------------------------
def test_silent_server_is_a_read_timeout_naming_url_timeout_and_attempts(tmp_path, server):
    srv = server(_silent)
    url = f"{srv.url}/a.tar"
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=rf"{url}: download failed after 0 bytes \(read timed out: no data for "
                                          r"0\.5 s\); 2 attempts"):
        ShardCache(tmp_path / "c", options=FAST).get(url)
    assert time.monotonic() - t0 < 5 and srv.requests == 2
    assert _cache_files(tmp_path / "c") == []


def test_index_over_a_silent_server_says_timed_out_not_not_found(tmp_path, server, capsys):
    srv = server(_silent)
    rc = main(["index", f"{srv.url}/a-000000.tar", "--out", str(tmp_path / "out"), "--cache-dir",
               str(tmp_path / "c"), "--read-timeout", "0.5", "--retries", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "read timed out: no data for 0.5 s" in err and "not found" not in err
    assert f"{srv.url}/a-000000.tar" in err and not (tmp_path / "out").exists()
    assert main(["index", "x.tar", "--out", str(tmp_path / "o2"), "--read-timeout", "0"]) == 2
    assert "read_timeout must be a number of seconds > 0" in capsys.readouterr().err


def test_connect_timeout_is_reported_as_such(tmp_path):
    """A listener whose accept queue is full drops new SYNs: the connection never completes."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the backlog (never accepted)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("this kernel completes connections beyond the backlog")
        except (TimeoutError, socket.timeout):
            pass
        finally:
            probe.close()
        opts = RemoteOptions(connect_timeout=0.3, read_timeout=5, retries=1, backoff=0.01)
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match=r"connect timed out: no connection within 0\.3 s\); 2 attempts"):
            ShardCache(tmp_path / "c", options=opts).get(f"http://127.0.0.1:{port}/a.tar")
        assert time.monotonic() - t0 < 5
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_trickle_slower_than_the_idle_timeout_fails(tmp_path, server):
    srv = server(_trickle(_tar(), gap=1.0, pieces=4))
    with pytest.raises(RemoteError, match=r"read timed out: no data for 0\.5 s"):
        ShardCache(tmp_path / "c", options=FAST).get(f"{srv.url}/a.tar")
    assert _cache_files(tmp_path / "c") == []


def test_slow_download_that_keeps_moving_succeeds(tmp_path, server):
    """No limit on the whole download: 12 gaps of 0.15 s (1.8 s in all) under a 0.5 s idle timeout."""
    body = _tar()
    srv = server(_trickle(body, gap=0.15, pieces=12))
    t0 = time.monotonic()
    path = ShardCache(tmp_path / "c", options=FAST).get(f"{srv.url}/a.tar")
    assert time.monotonic() - t0 > 1.0 and path.read_bytes() == body and srv.requests == 1


def test_server_failing_twice_then_answering_succeeds_with_retries(tmp_path, server):
    body = _tar()

    def flaky(conn, n, stop):
        if n < 2:
            conn.sendall(_head(5, "503 Service Unavailable", "text/plain") + b"busy!")
        else:
            conn.sendall(_head(len(body)) + body)

    srv = server(flaky)
    opts = RemoteOptions(retries=3, backoff=0.05)
    assert ShardCache(tmp_path / "c", options=opts).get(f"{srv.url}/a.tar").read_bytes() == body
    assert srv.requests == 3
    srv2 = server(flaky)
    with pytest.raises(RemoteError, match=r"503.*; 2 attempts"):
        ShardCache(tmp_path / "c2", options=RemoteOptions(retries=1, backoff=0.01)).get(f"{srv2.url}/a.tar")


def test_not_found_is_not_retried(tmp_path, server):
    srv = server(lambda conn, n, stop: conn.sendall(_head(9, "404 Not Found", "text/plain") + b"not found"))
    with pytest.raises(RemoteError, match=r"a\.tar: download failed after 0 bytes \(not found on the server\)$"):
        ShardCache(tmp_path / "c", options=RemoteOptions(retries=3, backoff=0.01)).get(f"{srv.url}/a.tar")
    assert srv.requests == 1


def test_loader_over_a_silent_server_fails_within_seconds(tmp_path, server):
    from fastcas.dataset.indexer import IndexConfig, index_dataset
    from fastcas.loading.loader import Loader
    from tests.dataset.test_index import write_wds

    write_wds(tmp_path / "www", n_jpeg=3, n_png=0)
    body = (tmp_path / "www" / "a-000000.tar").read_bytes()
    good = server(lambda conn, n, stop: conn.sendall(_head(len(body)) + body))
    index_dataset([f"{good.url}/a-000000.tar"], tmp_path / "ds", IndexConfig(cache_dir=str(tmp_path / "c0")))
    # the manifest names the good server's URL: make that port silent from now on
    good.respond = _silent
    loader = Loader(tmp_path / "ds", 2, train=False, image_size=16, last_batch="partial", py_workers=0,
                    device="cpu", cache_dir=str(tmp_path / "c1"), remote=FAST)
    t0 = time.monotonic()
    try:
        with pytest.raises(Exception, match=r"read timed out: no data for 0\.5 s"):  # FAST reached the reader
            list(loader)
    finally:
        loader.close()
    assert time.monotonic() - t0 < 30


# -- nothing unverified enters the cache ----------------------------------------------------------
def test_verify_tar_accepts_whole_archives_and_names_what_is_wrong():
    body = _tar()
    assert verify_tar_bytes(body) is None
    assert "cut short" in verify_tar_bytes(body[:2000])                  # inside the first member's data
    assert "end-of-archive" in verify_tar_bytes(body[: 512 + 3072])     # whole members, no end block
    assert "an HTML page" in verify_tar_bytes(b"<!DOCTYPE html><html>" + b" " * 600)
    assert "checksum" in verify_tar_bytes(b"\x01" * 1024)
    assert "empty" in verify_tar_bytes(b"")
    assert "empty archive" in verify_tar_bytes(b"\0" * 1024)


def verify_tar_bytes(data: bytes):
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        return verify_tar(f.name)


def test_html_page_with_status_200_is_not_cached_and_is_fetched_again_once_fixed(tmp_path, server, capsys):
    from tests.dataset.test_index import write_wds

    write_wds(tmp_path / "www", n_jpeg=3, n_png=0)
    body = (tmp_path / "www" / "a-000000.tar").read_bytes()
    page = b"<!DOCTYPE html><html><body>Please log in</body></html>" * 20
    state = {"broken": True}

    def respond(conn, n, stop):
        data = page if state["broken"] else body
        conn.sendall(_head(len(data), ctype="text/html" if state["broken"] else "application/x-tar") + data)

    srv = server(respond)
    url = f"{srv.url}/a-000000.tar"
    args = ["index", url, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert url in err and "is not the shard: not a tar" in err and "an HTML page" in err
    assert _cache_files(tmp_path / "c") == [] and srv.requests == 1
    state["broken"] = False
    assert main(args) == 0
    assert srv.requests == 2  # downloaded again, not served from a poisoned cache
    assert "indexed 3 samples" in capsys.readouterr().out


def test_a_poisoned_file_already_in_the_cache_is_fetched_again_when_no_size_is_known(tmp_path, server):
    """A cache entry that is not a whole tar (left by a version that did not verify) is not
    trusted by `fastcas index` (which knows no size): it is downloaded again."""
    body = _tar()
    srv = server(lambda conn, n, stop: conn.sendall(_head(len(body)) + body))
    cache = ShardCache(tmp_path / "c", options=FAST)
    url = f"{srv.url}/a.tar"
    cache.root.mkdir()
    cache.path_for(url).write_bytes(b"<html>Please log in</html>")
    path, size, _ = cache.fetch_hashed(url)
    assert path.read_bytes() == body and size == len(body) and srv.requests == 1
    assert cache.fetch_hashed(url)[0] == path and srv.requests == 1  # a verified entry is a hit


def test_short_body_is_rejected_and_not_cached(tmp_path, server):
    body = _tar()
    short = body[:5000]
    srv = server(lambda conn, n, stop: conn.sendall(_head(len(short)) + short))
    url = f"{srv.url}/a.tar"
    with pytest.raises(BadResponseError, match=rf"{url}: the server's response \(5,000 bytes\) is not the shard: "
                                               r"not a tar: .*cut short"):
        ShardCache(tmp_path / "c", options=FAST).get(url)
    assert _cache_files(tmp_path / "c") == [] and srv.requests == 1  # a bad body is not retried


# -- killed downloads: .part files -------------------------------------------------------------
def test_stale_part_files_are_removed_and_live_ones_count_against_max_bytes(tmp_path, server):
    import os

    body = _tar()
    srv = server(lambda conn, n, stop: conn.sendall(_head(len(body)) + body))
    root = tmp_path / "c"
    cache = ShardCache(root, max_bytes=2 * len(body) + 100, options=FAST)
    old = cache.get(f"{srv.url}/old.tar")
    os.utime(old, (time.time() - 100, time.time() - 100))
    # a download killed half way: its .part stays, nobody holds its lock
    stale = root / f".{cache.path_for(f'{srv.url}/killed.tar').name}.k1ll3d00.part"
    stale.write_bytes(b"x" * 1000)
    # a download in progress in another process: its lock is held
    live_target = cache.path_for(f"{srv.url}/live.tar")
    live = root / f".{live_target.name}.l1ve0000.part"
    live.write_bytes(b"y" * len(body))
    with open(root / f"{live_target.name}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        fresh = cache.get(f"{srv.url}/new.tar")
        assert not stale.exists() and live.exists() and fresh.exists()
        # old + new + the live part exceed max_bytes: the least recently used shard goes
        assert not old.exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    assert cache.remove_stale_parts() == [live]  # its download ended without renaming it
