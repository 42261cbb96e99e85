"""``fastcas index``: foreign WebDataset tars load like a ``fastcas shard`` dataset."""
import io
import json
import tarfile

import numpy as np
import pytest

from fastcas.cli import main
from fastcas.core.errors import ShardError
from fastcas.dataset.indexer import IndexConfig, index_dataset
from fastcas.dataset.reader import ShardReader
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards
from fastcas.dataset.wdsindex import parse_index
from tests.dataset.test_imagehdr import _bomb, _exif_jpeg
from tests.helpers import jpeg_bytes


def png_bytes(seed, size=(36, 28), fmt="PNG"):
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes(seed, size))).save(buf, fmt, **({"quality": 90} if fmt == "WEBP" else {}))
    return buf.getvalue()


def write_wds(root, n_jpeg=7, n_png=5, maxcount=4):
    """WebDataset tars written by webdataset.ShardWriter: ``a-*.tar`` with .jpeg + .cls,
    ``b-*.tar`` with .png (every third .webp) + .json {"label": y}. Returns the (key, bytes, label) written."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    items = []
    with wds.ShardWriter(str(root / "a-%06d.tar"), maxcount=maxcount, verbose=0) as w:
        for i in range(n_jpeg):
            key, data, y = f"a{i:03d}", jpeg_bytes(i, (40, 32)), i % 3
            w.write({"__key__": key, "jpeg": data, "cls": y})
            items.append((key, data, y))
    with wds.ShardWriter(str(root / "b-%06d.tar"), maxcount=maxcount, verbose=0) as w:
        for i in range(n_png):
            ext = "webp" if i % 3 == 2 else "png"
            key, data, y = f"b{i:03d}", png_bytes(100 + i, fmt=ext.upper()), (i + 1) % 3
            w.write({"__key__": key, ext: data, "json": {"label": y, "note": "x"}})
            items.append((key, data, y))
    return items


def _loader_epoch(ds, **kw):
    from fastcas.loading.loader import Loader

    opts = dict(train=False, image_size=24, last_batch="partial", py_workers=0, device="cpu")
    opts.update(kw)
    loader = Loader(ds, 5, **opts)
    xs, ys = zip(*[(x.numpy().copy(), y.numpy().copy()) for x, y in loader])
    loader.close()
    return np.concatenate(xs), np.concatenate(ys)


def test_index_matches_a_shard_dataset_of_the_same_images(tmp_path):
    items = write_wds(tmp_path / "wds")
    # two label rules over two sets of tars: index each, then compare with write_shards
    a = index_dataset([str(tmp_path / "wds" / "a-{000000..000001}.tar")], tmp_path / "ia", workers=2)
    b = index_dataset([str(tmp_path / "wds" / "b-*.tar")], tmp_path / "ib",
                      IndexConfig(label_key="json:label", class_names=("x", "y", "z")))
    assert a["num_samples"] == 7 and b["num_samples"] == 5 and a["skipped"] == b["skipped"] == []
    assert len(a["shards"]) == 2 and set(a["image_ext"]) == {"jpeg"} and set(b["image_ext"]) == {"png", "webp"}
    for sub, idx in (("a", tmp_path / "ia"), ("b", tmp_path / "ib")):
        part = [it for it in items if it[0].startswith(sub)]
        ref = tmp_path / f"ref-{sub}"
        write_shards([RawSample(k, d, y) for k, d, y in part], ref, ShardWriterConfig(shard_size=3))
        r, q = ShardReader(idx), ShardReader(ref)
        assert r.keys == q.keys == [k for k, _, _ in part]
        assert r.labels.tolist() == q.labels.tolist() == [y for _, _, y in part]
        assert [bytes(s.data) for s in r] == [d for _, d, _ in part]
        assert r.sizes.tolist() == q.sizes.tolist()
        for train in (False, True):
            x1, y1 = _loader_epoch(idx, train=train, seed=4)
            x2, y2 = _loader_epoch(ref, train=train, seed=4)
            assert y1.tolist() == y2.tolist() and np.array_equal(x1, x2)  # same decoded pixels
    # the DALI index of each tar lists every member, as wds2idx would
    entries = parse_index(tmp_path / "ia" / a["shards"][0]["index"])
    assert [[m.ext for m in e] for e in entries] == [["cls", "jpeg"]] * 4 or \
        [[m.ext for m in e] for e in entries] == [["jpeg", "cls"]] * 4


def test_index_cli_skips_and_lists_samples_without_label(tmp_path, capsys):
    import webdataset as wds

    (tmp_path / "wds").mkdir()
    with wds.TarWriter(str(tmp_path / "wds" / "x.tar")) as w:
        w.write({"__key__": "k0", "jpg": jpeg_bytes(0), "cls": 1})
        w.write({"__key__": "k1", "jpg": jpeg_bytes(1)})                 # no label
        w.write({"__key__": "k2", "txt": "caption", "cls": 0})           # no image
        w.write({"__key__": "k3", "jpg": jpeg_bytes(3)[:200], "cls": 0})  # truncated image
        w.write({"__key__": "k4", "jpg": jpeg_bytes(4), "cls": 0})
        w.write({"__key__": "k5", "jpg": _bomb(), "cls": 0})                # 20000x20000 header
        w.write({"__key__": "k6", "jpg": _exif_jpeg(6), "cls": 1})          # stored 80x40, shown 40x80
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    assert main(["index", str(tmp_path / "wds"), "--out", str(tmp_path / "idx"), "--class-names", str(names)]) == 0
    out = capsys.readouterr().out
    assert "indexed 3 samples" in out and "skipped 4" in out
    r = ShardReader(tmp_path / "idx")
    assert r.keys == ["k0", "k4", "k6"] and r.class_names == ["cat", "dog"] and r.labels.tolist() == [1, 0, 1]
    assert r.sizes.tolist() == [[40, 32], [40, 32], [40, 80]]  # displayed sizes
    skipped = {s["key"]: s["reason"] for s in r.manifest["skipped"]}
    assert set(skipped) == {"k1", "k2", "k3", "k5"} and "no label" in skipped["k1"] and "truncated" in skipped["k3"]
    assert "400,000,000 pixels, over the limit" in skipped["k5"]
    # --strict: the first such sample is an error naming tar and key, and nothing is written
    assert main(["index", str(tmp_path / "wds"), "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "x.tar: sample 'k1': no label" in err and not (tmp_path / "strict").exists()


def _tar(path, members):
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("case,match", [
    ("not-a-tar", r"bad\.tar: not a tar file"),
    ("truncated", r"bad\.tar: truncated tar \(member 'k1\.jpg'"),
    ("cut-at-boundary", r"bad\.tar: truncated tar \(no end-of-archive"),
    ("empty-pattern", r"nothing-\{0\.\.3\}\.tar: matches no file"),
    ("bad-label", r"bad\.tar: sample 'k0': label '-3' in \.cls is not a non-negative integer"),
    ("bad-json-label", r"bad\.tar: sample 'k0': label json:label = 2\.5 is not a non-negative integer"),
    ("duplicate", r"duplicate key 'k0': in .*good\.tar and in .*bad\.tar"),
    ("dotdot", r"bad\.tar: unsafe member name '\.\./k0\.jpg'"),
    ("absolute", r"bad\.tar: unsafe member name '/tmp/k0\.jpg'"),
    ("label-range", r"label 5 of 'k0' is >= the number of class names \(2\)"),
])
def test_bad_inputs_are_named_and_nothing_is_written(tmp_path, case, match):
    src = tmp_path / "src"
    src.mkdir()
    good = _tar(src / "good.tar", [("k0.jpg", jpeg_bytes(0)), ("k0.cls", b"0")])
    bad = src / "bad.tar"
    cfg = IndexConfig()
    sources = [str(good), str(bad)]
    if case == "not-a-tar":
        bad.write_bytes(b"hello, this is not a tar" * 40)
    elif case == "truncated":
        _tar(bad, [("k9.jpg", jpeg_bytes(9)), ("k9.cls", b"1"), ("k1.jpg", jpeg_bytes(1)), ("k1.cls", b"1")])
        with tarfile.open(bad) as t:
            cut = t.getmember("k1.jpg").offset_data + 100
        bad.write_bytes(bad.read_bytes()[:cut])
    elif case == "cut-at-boundary":
        _tar(bad, [("k9.jpg", jpeg_bytes(9)), ("k9.cls", b"1"), ("k1.jpg", jpeg_bytes(1)), ("k1.cls", b"1")])
        with tarfile.open(bad) as t:
            cut = t.getmember("k1.jpg").offset
        bad.write_bytes(bad.read_bytes()[:cut])
    elif case == "empty-pattern":
        sources = [str(src / "nothing-{0..3}.tar")]
    elif case == "bad-label":
        _tar(bad, [("k0.jpg", jpeg_bytes(0)), ("k0.cls", b"-3")])
        sources = [str(bad)]
    elif case == "bad-json-label":
        _tar(bad, [("k0.jpg", jpeg_bytes(0)), ("k0.json", b'{"label": 2.5}')])
        sources, cfg = [str(bad)], IndexConfig(label_key="json:label")
    elif case == "duplicate":
        _tar(bad, [("k0.jpg", jpeg_bytes(1)), ("k0.cls", b"1")])
    elif case == "dotdot":
        _tar(bad, [("../k0.jpg", jpeg_bytes(0)), ("../k0.cls", b"0")])
    elif case == "absolute":
        _tar(bad, [("/tmp/k0.jpg", jpeg_bytes(0)), ("/tmp/k0.cls", b"0")])
    elif case == "label-range":
        _tar(bad, [("k0.jpg", jpeg_bytes(0)), ("k0.cls", b"5")])
        sources, cfg = [str(bad)], IndexConfig(class_names=("a", "b"))
    with pytest.raises((ValueError, ShardError), match=match):
        index_dataset(sources, tmp_path / "out", cfg, workers=2)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_overwrite_and_failed_reindex_keep_no_stale_manifest(tmp_path):
    write_wds(tmp_path / "wds", n_jpeg=3, n_png=0)
    src = str(tmp_path / "wds" / "a-000000.tar")
    index_dataset([src], tmp_path / "out")
    with pytest.raises(FileExistsError, match="not empty"):
        index_dataset([src], tmp_path / "out")
    (tmp_path / "bad.tar").write_bytes(b"x" * 1024)
    with pytest.raises(ShardError, match="not a tar"):
        index_dataset([str(tmp_path / "bad.tar")], tmp_path / "out", IndexConfig(overwrite=True))
    # the old index is still whole: a failure while scanning writes nothing
    assert len(ShardReader(tmp_path / "out")) == 3


def test_indexed_tar_changed_afterwards_is_named(tmp_path):
    write_wds(tmp_path / "wds", n_jpeg=3, n_png=0)
    tar = tmp_path / "wds" / "a-000000.tar"
    index_dataset([str(tar)], tmp_path / "out")
    tar.write_bytes(tar.read_bytes() + b"\0" * 512)
    with pytest.raises(ShardError, match=r"a-000000\.tar: shard changed since it was written .*re-run `fastcas index`"):
        ShardReader(tmp_path / "out")


def test_commands_accept_an_indexed_dataset(tmp_path, capsys):
    write_wds(tmp_path / "wds", n_jpeg=6, n_png=0)
    index_dataset([str(tmp_path / "wds")], tmp_path / "idx")
    assert main(["info", str(tmp_path / "idx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 6
    assert main(["sample", str(tmp_path / "idx"), "--weights", "cmo", "--out", str(tmp_path / "i.npy")]) == 0
    assert main(["sample", str(tmp_path / "idx"), "--weights", "uniform", "--mode", "streaming",
                 "--out", str(tmp_path / "s.npy")]) == 0
    assert len(np.load(tmp_path / "i.npy")) == 6
    assert main(["score", str(tmp_path / "idx"), "--out", str(tmp_path / "s.parquet"), "--device", "cpu",
                 "--decoder", "dali", "--batch-size", "4", "--workers", "0"]) == 0
    assert (
        main(["stats", str(tmp_path / "idx"), "--scores", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "st")])
        == 0
    )


@pytest.mark.dali
def test_dali_reader_ceiling_reads_an_indexed_dataset(tmp_path):
    """bench's dali-plain loader (DALI's own webdataset reader) works on foreign extensions."""
    pytest.importorskip("nvidia.dali")
    from fastcas.loading.pipeline import build_reader_pipeline

    write_wds(tmp_path / "wds", n_jpeg=4, n_png=0)
    index_dataset([str(tmp_path / "wds")], tmp_path / "idx")
    p = build_reader_pipeline(ShardReader(tmp_path / "idx"), batch_size=4, image_size=16, num_threads=1,
                              device="cpu", decode_only=True)
    images, cls = p.run()
    assert np.array(images[0]).shape == (32, 40, 3)


@pytest.mark.parametrize("source", ["pipe:touch {m}", "file://{m}", "x.tar; touch {m}", "$(touch {m}).tar",
                                    "`touch {m}`.tar"])
def test_command_like_sources_run_nothing_and_are_refused(tmp_path, source):
    """webdataset would run ``pipe:`` sources through a shell; fastcas opens only local paths and
    http(s)/s3/gs URLs, so a command-like source is an unknown file, and nothing runs."""
    from fastcas.dataset.indexer import index_dataset

    marker = tmp_path / "ran"
    with pytest.raises(
        (FileNotFoundError, ValueError, OSError), match=r"(?i)not found|no such|no tar|unsupported|scheme|exist"
    ):
        index_dataset([source.format(m=marker)], tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / "manifest.json").exists()
