import io
import json
import pickle
import tarfile

import numpy as np
import pytest

from fastcas.cli import main
from fastcas.core.errors import CorruptSampleError, ShardError
from fastcas.dataset.lt import lt_counts, lt_indices
from fastcas.dataset.reader import ShardReader
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards
from fastcas.dataset.wdsindex import parse_index
from tests.helpers import convert, jpeg_bytes, make_dataset, make_image_folder


def test_round_trip_bytes_labels_and_layout(tmp_path):
    m = make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5, meta=True)
    r = ShardReader(tmp_path / "ds")
    assert len(r) == 12 and [s["count"] for s in m["shards"]] == [5, 5, 2]
    assert r.class_counts.tolist() == [6, 4, 2] and r.labels.dtype == np.int64
    for i, s in enumerate(r):
        assert isinstance(s.data, memoryview)
        meta = r.metadata(i)
        assert bytes(s.data) == jpeg_bytes(meta["i"])
        assert s.label == r.labels[i] and s.key == r.keys[i]
    # members are {key}.cls / .jpg / .json, the .cls zero-padded to one width
    with tarfile.open(tmp_path / "ds" / m["shards"][0]["tar"]) as t:
        names = t.getnames()
        assert names[:3] == [f"{r.keys[0]}.cls", f"{r.keys[0]}.jpg", f"{r.keys[0]}.json"]
        assert t.extractfile(names[0]).read() == str(r.labels[0]).encode()  # 3 classes: width 1


def test_same_input_gives_same_bytes(tmp_path):
    a = make_dataset(tmp_path / "a")
    b = make_dataset(tmp_path / "b")
    assert a["content_hash"] == b["content_hash"]
    for s in a["shards"]:
        assert (tmp_path / "a" / s["tar"]).read_bytes() == (tmp_path / "b" / s["tar"]).read_bytes()


def test_index_matches_dali_wds2idx(tmp_path):
    """Our index is byte-identical to what DALI's wds2idx writes for the same tar."""
    wds2idx = pytest.importorskip("wds2idx")
    m = make_dataset(tmp_path / "ds", meta=True)
    tar = tmp_path / "ds" / m["shards"][0]["tar"]
    ref = tmp_path / "ref.idx"
    wds2idx.IndexCreator(str(tar), str(ref), verbose=False).create_index()
    assert (tmp_path / "ds" / m["shards"][0]["index"]).read_text() == ref.read_text()


@pytest.mark.dali
def test_dali_webdataset_reader_reads_our_shards(tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn

    m = make_dataset(tmp_path / "ds", counts=(5, 5, 5), shard_size=4)
    root = tmp_path / "ds"

    @dali.pipeline_def(batch_size=15, num_threads=1, device_id=None)
    def pipe():
        img, cls = fn.readers.webdataset(paths=[str(root / s["tar"]) for s in m["shards"]],
                                         index_paths=[str(root / s["index"]) for s in m["shards"]],
                                         ext=["jpg", "cls"], missing_component_behavior="error")
        return fn.decoders.image(img, device="cpu"), cls

    p = pipe()
    p.build()
    images, cls = p.run()
    labels = [int(bytes(np.array(cls[i]))) for i in range(15)]
    assert labels == m["labels"]
    assert np.array(images[0]).shape == (32, 40, 3)


def test_shard_cli_image_folder_and_list(tmp_path):
    src = make_image_folder(tmp_path / "tree", per_class=(3, 2))
    assert main(["shard", str(src), str(tmp_path / "out"), "--shard-size", "2"]) == 0
    r = ShardReader(tmp_path / "out")
    assert r.class_names == ["class_0", "class_1"] and r.class_counts.tolist() == [3, 2]
    jpg = (src / "class_0" / "img0.jpg").read_bytes()
    assert bytes(r[r.keys.index("class_0_img0")].data) == jpg  # JPEG stored byte-for-byte
    png = bytes(r[r.keys.index("class_0_img1")].data)
    assert png[:2] == b"\xff\xd8"  # PNG re-encoded as JPEG
    lst = tmp_path / "list.txt"
    lst.write_text(f"tree/class_0/img0.jpg\t7\n{src / 'class_1' / 'img0.jpg'}\t2\n")
    assert main(["shard", str(lst), str(tmp_path / "out2")]) == 0
    r2 = ShardReader(tmp_path / "out2")
    assert r2.labels.tolist() == [7, 2] and r2.num_classes == 8
    lst.write_text("tree/class_0/img0.jpg\t1\ntree/class_0/img0.jpg\t1\n")
    with pytest.raises(ValueError, match="duplicate key 'tree_class_0_img0'"):
        _shard_list(lst, tmp_path / "out3")


def _shard_list(lst, out):
    from fastcas.dataset.ingest import list_file_items, samples_from_items

    write_shards(samples_from_items(list_file_items(lst)), out)


@pytest.mark.parametrize("content, message", [
    ("a.jpg\tcat\n", "not a non-negative int"),
    ("a.jpg\t-1\n", "not a non-negative int"),
    ("a.jpg\n", "expected 'path<TAB>label'"),
])
def test_list_file_bad_labels(tmp_path, capsys, content, message):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(0))
    lst = tmp_path / "l.txt"
    lst.write_text(content)
    assert main(["shard", str(lst), str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_corrupt_image_named_and_skip_bad(tmp_path, capsys):
    src = make_image_folder(tmp_path / "tree", per_class=(2, 2))
    bad = src / "class_1" / "img0.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    assert main(["shard", str(src), str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert main(["shard", str(src), str(tmp_path / "o"), "--skip-bad", "--overwrite"]) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["skipped"] == [str(bad)] and m["num_samples"] == 3


def test_writer_rejects_bad_input(tmp_path):
    data = jpeg_bytes(0)
    with pytest.raises(ValueError, match="duplicate key 'x'"):
        write_shards([("x", data, 0), ("x", data, 1)], tmp_path / "a")
    assert not (tmp_path / "a" / "manifest.json").exists()
    with pytest.raises(ValueError, match="invalid key 'a.b'"):
        write_shards([("a.b", data, 0)], tmp_path / "b")
    with pytest.raises(ValueError, match="label -3 .* not a non-negative int"):
        write_shards([("k", data, -3)], tmp_path / "c")
    with pytest.raises(ValueError, match="empty input"):
        write_shards([], tmp_path / "d")
    with pytest.raises(ValueError, match="shard_size must be >= 1"):
        ShardWriterConfig(shard_size=0)


def test_refuses_non_empty_out_unless_overwrite(tmp_path, capsys):
    make_dataset(tmp_path / "ds")
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        make_dataset(tmp_path / "ds")
    src = make_image_folder(tmp_path / "tree")
    assert main(["shard", str(src), str(tmp_path / "ds")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["shard", str(src), str(tmp_path / "ds"), "--overwrite"]) == 0
    assert len(ShardReader(tmp_path / "ds")) == 5


def test_crash_while_writing_leaves_no_manifest(tmp_path):
    def samples():
        for i in range(7):
            yield RawSample(f"k{i}", jpeg_bytes(i), 0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(samples(), tmp_path / "o", ShardWriterConfig(shard_size=5))
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert "manifest.json" not in files
    # only the complete shard and the record of the files this write made (for --overwrite), no temp files
    assert files == [".fastcas-shards-writing", "shard-000000.idx", "shard-000000.tar"]
    assert (tmp_path / "o" / ".fastcas-shards-writing").read_text().split() == [
        "shard-000000.tar", "shard-000000.idx", "shard-000001.tar", "shard-000001.idx"]


def test_reader_errors_name_the_shard(tmp_path):
    m = make_dataset(tmp_path / "ds", shard_size=5, manifest="json")  # index files checked by `fastcas convert`
    root = tmp_path / "ds"
    tar1 = root / m["shards"][1]["tar"]
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        ShardReader(tmp_path)
    data = tar1.read_bytes()
    tar1.write_bytes(data[:1000])
    with pytest.raises(ShardError, match=f"{tar1.name}: truncated"):
        convert(root)
    tar1.unlink()
    with pytest.raises(ShardError, match=f"{tar1.name}: shard is missing"):
        convert(root)
    tar1.write_bytes(data)
    # an index regenerated for another tar
    idx0, idx1 = root / m["shards"][0]["index"], root / m["shards"][1]["index"]
    good = idx1.read_text()
    idx1.write_text(idx0.read_text())
    with pytest.raises(ShardError, match="index does not match the manifest"):
        convert(root)
    idx1.write_text(good)
    convert(root)
    # the columnar manifest: the same shard named at open; deferred, other shards stay readable
    # and the broken one raises per sample with its key
    tar1.write_bytes(data[:1000])
    with pytest.raises(ShardError, match=f"{tar1.name}: shard changed since it was written .*truncated"):
        ShardReader(root)
    r = ShardReader(root, on_error="defer")
    assert bytes(r[0].data)[:2] == b"\xff\xd8"
    with pytest.raises(CorruptSampleError, match=r.keys[5]):
        r[5]
    tar1.unlink()
    with pytest.raises(ShardError, match=f"{tar1.name}: shard is missing"):
        ShardReader(root)


def test_reader_rejects_unsafe_member_names(tmp_path):
    m = make_dataset(tmp_path / "ds", shard_size=20, manifest="json")
    idx = tmp_path / "ds" / m["shards"][0]["index"]
    idx.write_text(idx.read_text().replace(f" {m['keys'][0]}.jpg", f" ../{m['keys'][0]}.jpg", 1))
    with pytest.raises(ShardError, match="unsafe member name '../"):
        convert(tmp_path / "ds")


def test_header_check_catches_swapped_offsets(tmp_path):
    m = make_dataset(tmp_path / "ds", shard_size=20, manifest="json")
    idx = tmp_path / "ds" / m["shards"][0]["index"]
    entries = parse_index(idx)
    lines = idx.read_text().splitlines()
    # point sample 0's jpg at sample 1's data
    a, b = entries[0][1], entries[1][1]
    lines[1] = lines[1].replace(f"jpg {a.offset} {a.size}", f"jpg {b.offset} {b.size}")
    idx.write_text("\n".join(lines) + "\n")
    r = convert(tmp_path / "ds")
    with pytest.raises(CorruptSampleError, match="index does not match its tar"):
        r[0]


def test_reader_pickles_cheaply(tmp_path):
    make_dataset(tmp_path / "ds")
    r = ShardReader(tmp_path / "ds")
    first = bytes(r[0].data)
    blob = pickle.dumps(r)
    assert len(blob) < 10_000
    r2 = pickle.loads(blob)
    assert bytes(r2[0].data) == first and r2.keys == r.keys


def test_lt_counts_follow_cifar_lt_rule():
    assert lt_counts(10, 500, 100).tolist() == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    labels = np.repeat(np.arange(4), 50)
    idx = lt_indices(labels, 10, seed=3)
    assert np.bincount(labels[idx]).tolist() == lt_counts(4, 50, 10).tolist()
    assert not np.array_equal(idx, lt_indices(labels, 10, seed=4))
    assert np.array_equal(idx, lt_indices(labels, 10, seed=3))
    with pytest.raises(ValueError, match="imbalance ratio must be >= 1"):
        lt_counts(3, 10, 0.5)


def test_make_lt_cli(tmp_path, capsys):
    make_dataset(tmp_path / "ds", counts=(10, 10, 10), meta=True)
    assert main(["make-lt", str(tmp_path / "ds"), str(tmp_path / "lt"), "--imbalance-ratio", "5"]) == 0
    r = ShardReader(tmp_path / "lt")
    assert r.class_counts.tolist() == [10, 4, 2]
    src = ShardReader(tmp_path / "ds")
    for i in range(len(r)):
        j = src.keys.index(r.keys[i])
        assert bytes(r[i].data) == bytes(src[j].data) and r.metadata(i) == src.metadata(j)
    assert main(["info", str(tmp_path / "lt")]) == 0
    assert "imbalance ratio 5.0" in capsys.readouterr().out


def test_fashion_mnist_idx_source(tmp_path):
    """The idx parser and --from fashion-mnist on files made in the test."""
    import gzip

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    d = tmp_path / "fm"
    d.mkdir()
    header = lambda magic, dims: bytes([0, 0, 8, magic]) + b"".join(x.to_bytes(4, "big") for x in dims)
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header(3, (12, 28, 28)) + imgs.tobytes()))
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header(1, (12,)) + labels.tobytes()))
    assert main(["shard", str(d), str(tmp_path / "o"), "--from", "fashion-mnist"]) == 0
    r = ShardReader(tmp_path / "o")
    assert r.labels.tolist() == labels.tolist() and r.class_names[0] == "T-shirt_top"
    from PIL import Image

    assert Image.open(io.BytesIO(bytes(r[3].data))).size == (28, 28)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header(1, (12,)) + labels.tobytes()[:5]))
    with pytest.raises(ValueError, match="truncated idx file"):
        from fastcas.dataset.ingest import load_fashion_mnist
        load_fashion_mnist(d)


def test_shard_overwrite_refuses_a_directory_that_is_not_a_fastcas_dataset(tmp_path, capsys):
    src = make_image_folder(tmp_path / "tree")
    out = tmp_path / "mine"
    out.mkdir()
    user = {"shard-000000.tar": b"my own webdataset", "shard-000000.idx": b"0 1 2", "notes.txt": b"keep me",
            "manifest.json": b'{"format": "my-own-tool/3"}'}
    for name, data in user.items():
        (out / name).write_bytes(data)
    assert main(["shard", str(src), str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds no dataset written by `fastcas shard`" in err and "'my-own-tool/3'" in err
    (out / "manifest.json").unlink()
    assert main(["shard", str(src), str(out), "--overwrite"]) == 2
    assert "manifest.json missing" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {k: v for k, v in user.items() if k != "manifest.json"}


def test_shard_overwrite_deletes_only_the_files_it_wrote(tmp_path):
    src = make_image_folder(tmp_path / "tree", per_class=(3, 3))
    out = tmp_path / "ds"
    assert main(["shard", str(src), str(out), "--shard-size", "2"]) == 0
    old = {s["tar"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert len(old) == 3
    (out / "notes.txt").write_text("keep me")
    (out / "shard-000099.tar").write_bytes(b"a tar of my own that the manifest does not list")
    assert main(["shard", str(src), str(out), "--shard-size", "4", "--overwrite"]) == 0
    new = {s["tar"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert len(new) == 2 and (out / "notes.txt").read_text() == "keep me"
    assert (out / "shard-000099.tar").exists()
    assert not (out / "shard-000002.tar").exists() and not (out / "shard-000002.idx").exists()
    assert len(ShardReader(out)) == 6


def test_shard_overwrite_recognises_the_files_of_a_write_that_failed(tmp_path):
    """A write that fails after some shards leaves no manifest; its record lets --overwrite
    replace exactly those files (a user's file beside them stays)."""
    def samples():
        for i in range(5):
            yield RawSample(f"k{i}", jpeg_bytes(i), 0)
        raise KeyboardInterrupt

    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        write_shards(samples(), out, ShardWriterConfig(shard_size=2))
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert left == ["shard-000000.idx", "shard-000000.tar", "shard-000001.idx", "shard-000001.tar"]
    (out / "notes.txt").write_text("keep me")
    write_shards([RawSample("z", jpeg_bytes(9), 0)], out, ShardWriterConfig(shard_size=2, overwrite=True))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "manifest.cols", "manifest.json", "notes.txt", "shard-000000.idx", "shard-000000.tar"]
    assert len(ShardReader(out)) == 1 and not (out / ".fastcas-shards-writing").exists()


def test_the_input_listing_is_flat_arrays_and_shuffles_vectorised(tmp_path):
    """image_folder_items keeps paths and keys as blobs + offsets (no object per image); items,
    iteration and take(order) give the same Items a list would, including non-ASCII names."""
    from fastcas.dataset.ingest import Item, ItemList, image_folder_items

    for c, names in (("cat", ["b.jpg", "a.png", "ü ñ.jpg"]), ("dog", ["x.jpeg"])):
        (tmp_path / "in" / c).mkdir(parents=True)
        for n in names:
            (tmp_path / "in" / c / n).write_bytes(b"")
    items, classes = image_folder_items(tmp_path / "in")
    assert isinstance(items, ItemList) and classes == ["cat", "dog"] and len(items) == 4
    want = [
        Item(tmp_path / "in" / "cat" / "a.png", 0, "cat_a"),
        Item(tmp_path / "in" / "cat" / "b.jpg", 0, "cat_b"),
        Item(tmp_path / "in" / "cat" / "ü ñ.jpg", 0, "cat____"),
        Item(tmp_path / "in" / "dog" / "x.jpeg", 1, "dog_x"),
    ]
    assert list(items) == want and items[3] == want[3]
    order = np.array([2, 0, 3, 1])
    assert list(items.take(order)) == [want[i] for i in order]
    assert items.labels.dtype == np.int64 and not any(isinstance(v, list) for v in vars(items).values())
