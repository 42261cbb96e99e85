"""Remote shards over a real HTTP server on 127.0.0.1, through the local cache."""
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from fastcas.cli import main
from fastcas.dataset.indexer import IndexConfig, index_dataset
from fastcas.dataset.reader import ShardReader
from fastcas.dataset.remote import RemoteError, ShardCache, ShardChangedError, iter_streaming
from fastcas.sampling.streaming import StreamingSampler
from tests.dataset.test_index import write_wds


class _Server:
    """http.server in a thread serving ``root``; counts GET requests and bytes sent;
    ``die_after`` (bytes) makes every response stop mid-body and drop the connection."""

    def __init__(self, root: Path):
        self.root, self.gets, self.bytes_sent, self.die_after = root, [], 0, None
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(outer.root), **kw)

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.gets.append(self.path)
                path = outer.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if outer.die_after is not None:
                    self.wfile.write(data[: outer.die_after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data)
                outer.bytes_sent += len(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    write_wds(tmp_path / "www", n_jpeg=7, n_png=0)
    (tmp_path / "www" / "b-000000.tar").unlink()  # ShardWriter leaves an empty tar
    server = _Server(tmp_path / "www")
    yield server
    server.close()


def _epoch(ds, cache, **kw):
    from fastcas.loading.loader import Loader

    opts = dict(train=False, image_size=16, last_batch="partial", py_workers=0, device="cpu", cache_dir=str(cache))
    opts.update(kw)
    loader = Loader(ds, 4, **opts)
    xs, ys = zip(*[(x.numpy().copy(), y.numpy().copy()) for x, y in loader])
    loader.close()
    return np.concatenate(xs), np.concatenate(ys)


def test_http_exact_mode_through_the_cache_matches_local(tmp_path, served):
    pattern = "a-{000000..000001}.tar"
    cache = tmp_path / "cache"
    index_dataset([f"{served.url}/{pattern}"], tmp_path / "remote", IndexConfig(cache_dir=str(cache)))
    index_dataset([str(served.root / pattern)], tmp_path / "local")
    m = ShardReader(tmp_path / "remote").manifest
    assert [s["tar"] for s in m["shards"]] == [f"{served.url}/a-00000{i}.tar" for i in range(2)]
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    # a fresh cache: the loader downloads each shard once (in the DALI worker process) ...
    fresh = tmp_path / "cache2"
    served.gets.clear()
    x1, y1 = _epoch(tmp_path / "remote", fresh, py_workers=1)
    assert sorted(served.gets) == ["/a-000000.tar", "/a-000001.tar"]
    x0, y0 = _epoch(tmp_path / "local", tmp_path / "unused")
    assert y1.tolist() == y0.tolist() and np.array_equal(x1, x0)
    # ... and a second run reads nothing from the server
    served.gets.clear()
    sent = served.bytes_sent
    x2, _ = _epoch(tmp_path / "remote", fresh)
    assert served.gets == [] and served.bytes_sent == sent and np.array_equal(x2, x0)
    assert not list(fresh.glob(".*.part"))


def test_http_streaming_mode_fetches_only_this_ranks_shards(tmp_path, served):
    index_dataset([f"{served.url}/a-{{000000..000001}}.tar"], tmp_path / "remote",
                  IndexConfig(cache_dir=str(tmp_path / "c0")))

    counts = [s["count"] for s in ShardReader(tmp_path / "remote").manifest["shards"]]
    seen = {}
    for rank in (0, 1):
        served.gets.clear()
        reader = ShardReader(tmp_path / "remote", cache_dir=tmp_path / f"rank{rank}")
        sampler = StreamingSampler(counts, np.ones(sum(counts)), seed=1, rank=rank, world_size=2, shuffle_buffer=3)
        samples = list(iter_streaming(reader, sampler, epoch=0))
        mine = sampler.shards_of_rank(0)
        assert sorted(served.gets) == [f"/a-{s:06d}.tar" for s in sorted(mine)]  # only its own shards
        assert len(list((tmp_path / f"rank{rank}").glob("*.tar"))) == len(mine)
        for s in samples:
            i = reader.keys.index(s.key)
            assert reader.shard_of(i) in mine
            seen[s.key] = bytes(s.data)
    local = ShardReader(tmp_path / "remote", cache_dir=tmp_path / "c0")
    assert all(seen[k] == bytes(local[local.keys.index(k)].data) for k in seen)


def test_server_dying_mid_transfer_leaves_no_partial_file(tmp_path, served):
    index_dataset([f"{served.url}/a-000000.tar"], tmp_path / "remote", IndexConfig(cache_dir=str(tmp_path / "c0")))
    served.die_after = 3000
    cache = tmp_path / "cache"
    reader = ShardReader(tmp_path / "remote", cache_dir=cache)
    with pytest.raises(RemoteError, match=rf"{served.url}/a-000000\.tar: download failed"):
        reader[0]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    served.die_after = None
    assert bytes(reader[0].data)[:2] == b"\xff\xd8"  # a later attempt succeeds


def test_changed_shard_is_a_clear_error(tmp_path, served):
    index_dataset([f"{served.url}/a-000000.tar"], tmp_path / "remote", IndexConfig(cache_dir=str(tmp_path / "c0")))
    tar = served.root / "a-000000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes
    tar.write_bytes(bytes(data))
    with pytest.raises(ShardChangedError, match=r"a-000000\.tar: shard changed on the server: SHA-256"):
        ShardReader(tmp_path / "remote", cache_dir=tmp_path / "c1")[0]
    tar.write_bytes(bytes(data) + b"\0" * 512)
    with pytest.raises(
        ShardChangedError, match=r"a-000000\.tar: shard changed on the server: [0-9,]+ bytes, the manifest recorded"
    ):
        ShardReader(tmp_path / "remote", cache_dir=tmp_path / "c2")[0]
    assert not [p for p in (tmp_path / "c2").iterdir() if p.suffix == ".tar"]
    # through the loader (strict=False) it is not skipped silently: the error surfaces
    with pytest.raises(Exception, match="shard changed on the server"):
        _epoch(tmp_path / "remote", tmp_path / "c3")


def test_unreachable_url_and_unwritable_cache(tmp_path, served, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a-000000.tar"
    with pytest.raises(RemoteError, match=rf"127\.0\.0\.1:{port}/a-000000\.tar: download failed"):
        ShardCache(tmp_path / "cache").get(url)
    assert main(["index", url, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert f"127.0.0.1:{port}/a-000000.tar: download failed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RemoteError, match=r"cache directory .*file/c is not writable"):
        ShardCache(tmp_path / "file" / "c").get(f"{served.url}/a-000000.tar")
    with pytest.raises(RemoteError, match=r"missing\.tar: download failed after 0 bytes \(not found on the server\)"):
        ShardCache(tmp_path / "cache").get(f"{served.url}/missing.tar")


def test_lru_eviction_beyond_the_size_limit(tmp_path, served):
    import os
    import shutil
    import time

    shutil.copy(served.root / "a-000000.tar", served.root / "c.tar")
    size = max((served.root / n).stat().st_size for n in ("a-000000.tar", "a-000001.tar", "c.tar"))
    cache = ShardCache(tmp_path / "cache", max_bytes=2 * size + 100)  # room for two shards
    a = cache.get(f"{served.url}/a-000000.tar")
    os.utime(a, (time.time() - 100, time.time() - 100))
    b = cache.get(f"{served.url}/a-000001.tar")
    os.utime(b, (time.time() - 50, time.time() - 50))
    served.gets.clear()
    assert cache.get(f"{served.url}/a-000000.tar") == a and served.gets == []  # a hit, now the most recent
    c = cache.get(f"{served.url}/c.tar")
    assert a.exists() and c.exists() and not b.exists()  # b was the least recently used
    assert cache.downloads == 3


def test_loader_with_a_cache_smaller_than_the_dataset(tmp_path, served):
    """cache_max_bytes on the Loader: shards are evicted as others arrive; batches stay right."""
    index_dataset([f"{served.url}/a-{{000000..000001}}.tar"], tmp_path / "remote",
                  IndexConfig(cache_dir=str(tmp_path / "c0")))
    index_dataset([str(served.root / "a-{000000..000001}.tar")], tmp_path / "local")
    size = max(p.stat().st_size for p in served.root.glob("a-*.tar"))
    x1, y1 = _epoch(tmp_path / "remote", tmp_path / "small", cache_max_bytes=size + 100)
    x0, y0 = _epoch(tmp_path / "local", tmp_path / "unused")
    assert y1.tolist() == y0.tolist() and np.array_equal(x1, x0)
    assert len(list((tmp_path / "small").glob("*.tar"))) == 1
    with pytest.raises(ValueError, match="cache_max_bytes must be"):
        _epoch(tmp_path / "remote", tmp_path / "small", cache_max_bytes=-1)


def test_index_cli_over_http(tmp_path, served, capsys):
    assert main(["index", f"{served.url}/a-{{000000..000001}}.tar", "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "indexed 7 samples in 2 tars" in capsys.readouterr().out
    served.gets.clear()
    r = ShardReader(tmp_path / "out")  # the cache dir given to `fastcas index`, which it filled
    assert r.cache.root == (tmp_path / "cache").resolve()
    assert len([r[i] for i in range(len(r))]) == 7 and served.gets == []
    assert main(["info", str(tmp_path / "out")]) == 0 and served.gets == []


def test_s3_through_a_local_moto_server(tmp_path, monkeypatch):
    """s3:// through s3fs against moto's S3-compatible server on 127.0.0.1 (skips without them)."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(k, v)
        import s3fs

        write_wds(tmp_path / "src", n_jpeg=5, n_png=0)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bucket")
        fs.put(str(tmp_path / "src" / "a-000000.tar"), "bucket/wds/a-000000.tar")
        fs.put(str(tmp_path / "src" / "a-000001.tar"), "bucket/wds/a-000001.tar")
        index_dataset(["s3://bucket/wds/a-{000000..000001}.tar"], tmp_path / "idx",
                      IndexConfig(cache_dir=str(tmp_path / "c0")))
        index_dataset([str(tmp_path / "src" / "a-{000000..000001}.tar")], tmp_path / "local")
        x1, y1 = _epoch(tmp_path / "idx", tmp_path / "c1")
        x0, y0 = _epoch(tmp_path / "local", tmp_path / "unused")
        assert y1.tolist() == y0.tolist() and np.array_equal(x1, x0)
        with pytest.raises(RemoteError, match=r"s3://bucket/nope\.tar: download failed"):
            ShardCache(tmp_path / "c2").get("s3://bucket/nope.tar")
    finally:
        server.stop()
