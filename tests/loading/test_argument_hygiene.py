"""Argument hygiene (issue 36, item 10): strict types (real bools, integral ints), exponents
>= 0, upper bounds with clear messages, raw TypeError / IndexError / UnicodeDecodeError /
OSError wrapped to name the file or argument, fastcas error types preserved across DALI
workers, streaming with epoch_length < world size refused at construction on every rank."""
import io
import json
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from fastcas.core.errors import CorruptSampleError, ShardError  # noqa: E402
from fastcas.dataset.remote import RemoteError, ShardCache  # noqa: E402
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards  # noqa: E402
from tests.helpers import jpeg_bytes, make_dataset  # noqa: E402

pytestmark = pytest.mark.dali


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("hygiene") / "ds"
    make_dataset(root, counts=(6, 4, 2), shard_size=4)
    return root


@pytest.mark.parametrize("options, match", [
    # real bools: "no" and "yes" are truthy strings, 1 is not a bool
    (dict(train="no"), r"train must be True or False, got 'no'"),
    (dict(strict="yes"), r"strict must be True or False, got 'yes'"),
    (dict(channels_last=1), r"channels_last must be True or False, got 1"),
    # integral ints: seed=1.5 would be the stream of seed 1
    (dict(seed=1.5), r"seed must be an integer, got 1\.5"),
    (dict(seed=-3), r"seed must be >= 0, got -3"),
    (dict(epoch_length=1e15), r"epoch_length must be an integer, got 1000000000000000\.0"),
    (dict(prefetch=1e6), r"prefetch must be an integer, got 1000000\.0"),
    # exponents
    (dict(cas_power=-1), r"cas_power must be in \[0, 16\], got -1"),
    (dict(cmo_power=float("inf")), r"cmo_power must be in \[0, 16\], got inf"),
    (dict(cas_power="1.2"), r"cas_power must be in \[0, 16\], got '1\.2'"),
    (dict(b=-1), r"cas_power must be in \[0, 16\], got -1"),  # the deprecated name, checked as cas_power
    (dict(r="1"), r"cmo_power must be in \[0, 16\], got '1'"),
    # upper bounds
    (dict(image_size=30000), r"image_size must be <= 4096 \(pixels per side\), got 30000"),
    (dict(py_workers=500), r"py_workers must be <= 128 \(worker processes, each with its own memory\), got 500"),
    (dict(num_threads=5000), r"num_threads must be <= 256 \(DALI CPU threads\), got 5000"),
    (dict(prefetch=10**6), r"prefetch must be <= 64 \(batches finished ahead, each held in memory\), got 1000000"),
    (dict(epoch_length=10**15), r"epoch_length must be <= 10000000000 \(samples per epoch\), got 1000000000000000"),
    # what used to be a raw TypeError from a comparison or Path()
    (dict(mix_prob="0.5"), r"mix_prob must be in \[0, 1\], got '0\.5'"),
    (dict(alpha=True), r"alpha must be > 0 and <= 1e\+06, got True"),
    (dict(cache_dir=5), r"cache_dir must be a path \(str or os\.PathLike\) or None, got 5"),
    (dict(cache_max_bytes=1.5), r"cache_max_bytes must be an integer, got 1\.5"),
])
def test_options_have_strict_types_and_bounds(ds, options, match):
    with pytest.raises(ValueError, match=match):
        Loader(ds, 4, device="cpu", **options)


@pytest.mark.parametrize("kw, match", [
    (dict(rank=0.5, world_size=2), r"rank must be an integer, got 0\.5"),
    (dict(rank=0, world_size=2.0), r"world_size must be an integer, got 2\.0"),
    (dict(rank=True, world_size=2), r"rank must be an integer, got True"),
    (dict(rank=2, world_size=2), r"rank must be in \[0, world_size=2\), got rank=2"),
])
def test_rank_and_world_size_are_integers(ds, kw, match):
    with pytest.raises(ValueError, match=match):
        Loader(ds, 4, device="cpu", **kw)


def test_numpy_integers_and_bools_are_accepted(ds):
    loader = Loader(ds, np.int64(4), device="cpu", image_size=np.int32(16), seed=np.uint8(3), train=np.bool_(True),
                    rank=np.int64(0), world_size=np.int64(1), py_workers=0)
    assert len(next(iter(loader))[1]) == 4


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_streaming_with_epoch_length_below_world_size_is_refused_on_every_rank(ds, rank):
    """Before, only the ranks that drew nothing failed, at their first batch (the others went
    on and waited for them in the first collective)."""
    with pytest.raises(ValueError, match=r"mode='streaming' with 2 samples per epoch \(epoch_length\) and world "
                                         r"size 4: some ranks would draw no sample"):
        Loader(ds, 1, mode="streaming", epoch_length=2, rank=rank, world_size=4, last_batch="partial", device="cpu")


def test_a_key_that_is_not_utf8_names_the_key_column():
    from fastcas.dataset.manifest import KeyColumn

    keys = KeyColumn.from_strings(["a0", "b1", "c2"])
    keys.blob = keys.blob.copy()
    keys.blob[2] = 0xFF  # the first byte of "b1"
    keys.source = "ds/manifest.cols/key_bytes.npy"
    assert keys[0] == "a0"
    for get in (lambda: keys[1], lambda: keys[0:3], lambda: list(keys)):
        with pytest.raises(
            ShardError, match=r"ds/manifest.cols/key_bytes\.npy: key 1 \(b'\\xff1'\) is not valid UTF-8"
        ):
            get()


def test_index_refuses_a_tar_member_name_that_is_not_utf8(tmp_path):
    from fastcas.dataset.indexer import index_dataset

    src = tmp_path / "tars"
    src.mkdir()
    with tarfile.open(src / "shard-000000.tar", "w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as t:
        for k, name in enumerate(["x0", b"\xff\xfe".decode("utf-8", "surrogateescape")]):
            for ext, data in (("jpg", jpeg_bytes(k)), ("cls", b"0")):
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match=r"shard-000000\.tar: member name b'\\xff\\xfe\.jpg' is not valid UTF-8"):
        index_dataset([str(src)], tmp_path / "out")


def test_an_extension_code_out_of_range_names_the_manifest(tmp_path):
    from fastcas.dataset.reader import ShardReader

    root = tmp_path / "ds"
    make_dataset(root, counts=(3, 2), shard_size=5)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["image_exts"] = []  # every sample's code 0 now names no extension
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"manifest\.json: sample 0's image extension code 0 is out of range: the "
                                         r"manifest lists 0 image_exts"):
        ShardReader(root)


def test_a_pin_file_that_cannot_be_created_names_it(tmp_path):
    """A read-only cache directory (simulated by a directory where the pin file goes: root
    ignores file modes) gave a raw OSError naming nothing."""
    cache = ShardCache(tmp_path / "cache")
    url = "http://example.invalid/shards/shard-000000.tar"
    pin = cache.path_for(url).with_name(cache.path_for(url).name + ".pin")
    pin.mkdir(parents=True)
    with pytest.raises(RemoteError, match=r"shard-000000\.tar\.pin: cannot create the shard's pin file .*the cache "
                                          r"directory .*cache must be writable"):
        cache.hold([url])


def test_a_fastcas_error_raised_in_a_dali_worker_keeps_its_type(tmp_path):
    """DALI sends a worker's exception as text and raises a bare Exception; a CorruptSampleError
    (strict=True, a truncated JPEG) now arrives as CorruptSampleError, so `except` works."""
    root = tmp_path / "ds"
    samples = [RawSample(f"k{i:02d}", jpeg_bytes(i), i % 2) for i in range(8)]
    samples[2] = RawSample("k02", jpeg_bytes(2)[:200], 0)
    write_shards(samples, root, ShardWriterConfig(shard_size=4))
    loader = Loader(root, 4, train=False, image_size=16, py_workers=1, strict=True, device="cpu")
    with pytest.raises(CorruptSampleError, match=r"sample 'k02' in .*truncated JPEG"):
        list(loader)
    loader.close()


def test_a_remote_error_text_from_a_worker_is_rebuilt_as_remote_error():
    """The shape DALI 2.4 raises (nvidia/dali/_multiproc/pool.py): Exception(traceback text)
    from RuntimeError(message)."""
    from fastcas.loading.workers import restore_worker_error

    text = ("\n\nException traceback received from worker thread:\n\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in f\n    raise RemoteError(msg)\n'
            "fastcas.dataset.remote.RemoteError: http://h/s.tar: download failed\nsecond line\n")
    try:
        raise Exception(text) from RuntimeError("http://h/s.tar: download failed\nsecond line")
    except Exception as exc:
        restored = restore_worker_error(exc)
    assert type(restored) is RemoteError and str(restored) == "http://h/s.tar: download failed\nsecond line"
    plain = Exception(text.replace("fastcas.dataset.remote.RemoteError", "ValueError"))
    plain.__cause__ = RuntimeError("x")
    assert restore_worker_error(plain) is None  # not a fastcas error: left as DALI raised it
