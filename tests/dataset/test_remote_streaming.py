"""Loader(mode="streaming") over real HTTP and S3 (moto) servers on 127.0.0.1 with a cache of 25%
of the data, with one and two DALI workers, and with no cache at all (``cache_max_bytes=0``)."""
import socket
import threading
from collections import Counter

import numpy as np
import pytest

from fastcas.dataset.indexer import IndexConfig, index_dataset
from fastcas.dataset.reader import ShardReader
from fastcas.dataset.remote import ShardCache
from tests.dataset.test_index import write_wds
from tests.dataset.test_remote import _Server

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

N_SHARDS, PER_SHARD, BATCH = 16, 12, 4


def _write(tmp_path):
    write_wds(tmp_path / "www", n_jpeg=N_SHARDS * PER_SHARD, n_png=0, maxcount=PER_SHARD)
    for p in (tmp_path / "www").glob("b-*.tar"):
        p.unlink()
    return sorted((tmp_path / "www").glob("a-*.tar"))


@pytest.fixture
def remote(tmp_path):
    _write(tmp_path)
    server = _Server(tmp_path / "www")
    index_dataset([f"{server.url}/a-{{000000..{N_SHARDS - 1:06d}}}.tar"], tmp_path / "remote",
                  IndexConfig(cache_dir=str(tmp_path / "c0")))
    yield server, tmp_path / "remote"
    server.close()


def _cached(cache) -> dict:
    """{name: bytes} of the shards in a cache directory now (workers evict concurrently)."""
    out = {}
    for p in cache.glob("*.tar"):
        try:
            out[p.name] = p.stat().st_size
        except FileNotFoundError:  # evicted between the listing and the stat
            pass
    return out


def _run_epochs(tmp_path, ds, gets: list, cache_max_bytes: int, py_workers: int, name: str, watch=None):
    """2 ranks x 2 epochs over ``ds``; checks, per rank and epoch, that every shard the rank
    reads is requested at most once (``gets``: the server's object paths), exactly once unless
    the rank read it the epoch before too (then its worker may still map it), that no shard of
    another rank is requested and the labels are the manifest's. ``watch(cache)`` runs after
    every batch."""
    from fastcas import Loader

    reader = ShardReader(ds, cache_dir=tmp_path / "c0")
    for rank in (0, 1):
        cache = tmp_path / f"{name}{rank}"
        loader = Loader(ds, BATCH, rank=rank, world_size=2, mode="streaming", shuffle_buffer=3, image_size=16,
                        py_workers=py_workers, device="cpu", cache_dir=str(cache), cache_max_bytes=cache_max_bytes,
                        seed=3, targets="hard")
        before: set = set()
        for epoch in (0, 1):
            gets.clear()
            loader.set_epoch(epoch)
            ys = []
            for _, y in loader:
                ys.append(y)
                if watch is not None:
                    watch(cache)
            labels = torch.cat(ys).numpy()
            idx = loader.sampler_indices(epoch)[0]
            assert len(labels) == len(loader) * BATCH and np.array_equal(labels, reader.labels[idx][: len(labels)])
            mine = {f"a-{int(s):06d}.tar" for s in loader.streams[0].sampler.shards_of_rank(epoch)}
            got = Counter(p.rsplit("/", 1)[-1] for p in gets)
            assert set(got) <= mine and max(got.values()) == 1, got
            assert set(got) >= mine - before, sorted(mine - before - set(got))
            before = mine
        loader.close()


@pytest.mark.parametrize("py_workers", [1, 2])
def test_each_shard_is_fetched_once_per_epoch_per_rank_with_a_quarter_cache(tmp_path, remote, py_workers):
    """With two workers both read batches of the same shards: their pins keep a shard one has
    downloaded until the other is done with it, so neither fetches it again."""
    server, ds = remote
    quarter = sum(p.stat().st_size for p in server.root.glob("a-*.tar")) // 4
    peak = []

    def watch(cache):
        peak.append(sum(_cached(cache).values()))

    _run_epochs(tmp_path, ds, server.gets, quarter, py_workers, "q", watch)
    assert max(peak) <= quarter, (max(peak), quarter)


def test_no_cache_deletes_each_shard_after_its_last_read(tmp_path, remote):
    """``cache_max_bytes=0``: the cache holds only the shards some process still reads (a few
    at a time), each fetched once per epoch per rank, and nothing once the loader is closed."""
    server, ds = remote
    shard = max(p.stat().st_size for p in server.root.glob("a-*.tar"))
    counts = []

    def watch(cache):
        counts.append(len(_cached(cache)))

    _run_epochs(tmp_path, ds, server.gets, 0, 2, "none", watch)
    assert 1 <= max(counts) <= 5, counts  # the read window (+1 ahead), never the rank's 8 shards
    for rank in (0, 1):
        assert list((tmp_path / f"none{rank}").glob("*.tar")) == []
    assert shard * 5 < sum(p.stat().st_size for p in server.root.glob("a-*.tar")) / 2


def test_pins_are_shared_between_processes(tmp_path):
    """A shard pinned by one process is never evicted by another sharing the cache; released,
    the releasing process deletes it (flock on NAME.pin: real processes, no mocks)."""
    import multiprocessing as mp

    root = tmp_path / "cache"
    cache = ShardCache(root, max_bytes=0)
    root.mkdir()
    url = "http://127.0.0.1:1/a.tar"
    path = cache.path_for(url)
    path.write_bytes(b"x" * 1024)
    ctx = mp.get_context("spawn")
    pinned, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_pin_in_child, args=(str(root), url, pinned, done))
    child.start()
    try:
        assert pinned.wait(60)
        assert ShardCache(root, max_bytes=0).evict() == [] and path.exists()
    finally:
        done.set()
        child.join(60)
    assert child.exitcode == 0
    assert not path.exists()  # the child's release evicted it (max_bytes=0: nothing kept unpinned)


def _pin_in_child(root, url, pinned, done):
    cache = ShardCache(root, max_bytes=0)
    cache.hold([url])
    pinned.set()
    done.wait(60)
    cache.hold([])


class _CountingMoto:
    """moto's S3-compatible server on 127.0.0.1 (as moto.server.ThreadedMotoServer runs it),
    behind a WSGI wrapper that records the path of every GET."""

    def __init__(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self.gets: list = []
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            if environ["REQUEST_METHOD"] == "GET":
                self.gets.append(environ["PATH_INFO"])
            return app(environ, start_response)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server = make_server("127.0.0.1", self.port, counting, True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._thread.join()


def test_s3_streaming_fetches_each_shard_once_per_epoch_per_rank(tmp_path, monkeypatch):
    """The same property over s3:// (s3fs) against moto, two DALI workers, a 25% cache."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.moto_server.werkzeug_app")
    tars = _write(tmp_path)
    server = _CountingMoto()
    try:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.port}"}.items():
            monkeypatch.setenv(k, v)
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("fastcas-streaming")  # moto's state is per process: not test_remote's "bucket"
        for p in tars:
            fs.put(str(p), f"fastcas-streaming/wds/{p.name}")
        index_dataset([f"s3://fastcas-streaming/wds/a-{{000000..{N_SHARDS - 1:06d}}}.tar"], tmp_path / "s3ds",
                      IndexConfig(cache_dir=str(tmp_path / "c0")))
        quarter = sum(p.stat().st_size for p in tars) // 4
        object_gets = _ObjectGets(server.gets)
        _run_epochs(tmp_path, tmp_path / "s3ds", object_gets, quarter, 2, "s3")
    finally:
        server.close()


class _ObjectGets(list):
    """A view of the server's GET log holding only object reads (``/fastcas-streaming/wds/NAME``; listings
    and other calls are not shard fetches); ``clear()`` empties the log itself."""

    def __init__(self, log):
        super().__init__()
        self._log = log

    def clear(self):
        self._log.clear()

    def __iter__(self):
        return iter([p for p in self._log if p.startswith("/fastcas-streaming/wds/")])
