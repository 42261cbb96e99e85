"""One class vocabulary per dataset family (issue 34, item 3): `fastcas shard --classes-from TRAIN`,
`fastcas index --class-names FILE|a,b,c`, and a Loader / `fastcas train` that refuse a validation set
numbered differently, naming the first difference."""
import pytest

from fastcas.cli import main
from fastcas.dataset.classes import check_same_classes, first_difference, parse_class_names
from fastcas.dataset.reader import ShardReader
from tests.helpers import jpeg_bytes


def _folder(root, classes, per_class=2):
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            (root / name / f"img{j}.jpg").write_bytes(jpeg_bytes(100 * k + j))
    return root


def _train_and_val(tmp_path, val_classes=("ant", "cat")):
    _folder(tmp_path / "train-src", ("ant", "bee", "cat"))
    _folder(tmp_path / "val-src", val_classes, per_class=1)
    assert main(["shard", str(tmp_path / "train-src"), str(tmp_path / "train")]) == 0
    return tmp_path / "train"


def test_val_folder_missing_a_class_keeps_the_training_ids(tmp_path):
    train = _train_and_val(tmp_path)
    # without --classes-from: 'cat' becomes id 1, the training set's 'bee' (the silent shift of the issue)
    assert main(["shard", str(tmp_path / "val-src"), str(tmp_path / "val-own")]) == 0
    assert ShardReader(tmp_path / "val-own").class_names == ["ant", "cat"]
    assert main(["shard", str(tmp_path / "val-src"), str(tmp_path / "val"), "--classes-from", str(train)]) == 0
    val = ShardReader(tmp_path / "val")
    assert val.class_names == ["ant", "bee", "cat"]
    assert sorted(val.labels.tolist()) == [0, 2] and val.class_counts.tolist() == [1, 0, 1]
    by_key = dict(zip(val.keys, val.labels.tolist()))
    assert all(lab == (0 if k.startswith("ant") else 2) for k, lab in by_key.items()), by_key


def test_val_class_absent_from_train_is_refused_naming_it(tmp_path, capsys):
    train = _train_and_val(tmp_path, val_classes=("ant", "dog"))
    assert main(["shard", str(tmp_path / "val-src"), str(tmp_path / "val"), "--classes-from", str(train)]) == 2
    err = capsys.readouterr().err
    assert "class folder 'dog' is not a class of the training set (3 classes" in err, err
    assert not (tmp_path / "val").exists()


def test_loader_refuses_val_with_other_class_names_naming_the_first_difference(tmp_path):
    from fastcas.loading.loader import Loader

    train = _train_and_val(tmp_path)
    assert main(["shard", str(tmp_path / "val-src"), str(tmp_path / "val-own")]) == 0
    with pytest.raises(ValueError, match=r"val-own: its class_names differ from the training set's: class 1 is "
                                         r"'cat' here but 'bee' in the training set.*--classes-from TRAIN"):
        Loader(tmp_path / "val-own", 2, train=False, device="cpu", class_names=train)
    # the same vocabulary passes, given as a path, a ShardReader, a Loader or the names
    assert main(["shard", str(tmp_path / "val-src"), str(tmp_path / "val"), "--classes-from", str(train)]) == 0
    tr = ShardReader(train)
    for source in (train, tr, ["ant", "bee", "cat"]):
        Loader(tmp_path / "val", 2, train=False, device="cpu", class_names=source)


def test_train_refuses_a_val_set_numbered_differently(tmp_path, capsys):
    train = _train_and_val(tmp_path)
    assert main(["shard", str(tmp_path / "val-src"), str(tmp_path / "val-own")]) == 0
    rc = main(["train", str(train), "--val", str(tmp_path / "val-own"), "--out", str(tmp_path / "run"),
               "--device", "cpu", "--epochs", "1", "--batch-size", "2", "--image-size", "16", "--py-workers", "0",
               "--no-progress", "--no-amp"])
    err = capsys.readouterr().err
    assert rc == 2 and "class 1 is 'cat' here but 'bee' in the training set" in err, err
    assert not (tmp_path / "run").exists()  # refused before OUT was claimed: the fixed run needs no --overwrite


def test_first_difference_sentences():
    assert first_difference(["a", "b"], ["a", "b"]) is None
    assert first_difference(["a", "b", "c"], ["a", "b"]) == \
        "2 classes here, 3 in the training set (first unmatched: class 2, 'c' in the training set only)"
    assert (
        first_difference(["a"], ["a", "z"])
        == "2 classes here, 1 in the training set (first unmatched: class 1, 'z' here)"
    )
    with pytest.raises(ValueError, match="VAL: its class_names differ .* class 0 is 'x' here but 'a'"):
        check_same_classes(["a"], ["x"], what="VAL")


def test_class_names_from_a_file_or_a_comma_list(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("cat\n\ndog\n")
    assert parse_class_names(str(f)) == ("cat", "dog")
    assert parse_class_names("cat, dog,eel") == ("cat", "dog", "eel")
    with pytest.raises(FileNotFoundError, match=r"--class-names 'cats': no such file; give a file .* or the names "
                                                r"separated by commas \(a,b,c\)"):
        parse_class_names("cats")
    with pytest.raises(ValueError, match="class name 'cat' appears twice"):
        parse_class_names("cat,dog,cat")
    with pytest.raises(ValueError, match="an empty name"):
        parse_class_names("cat,,dog")


def test_index_takes_class_names_as_a_comma_list_or_from_the_training_set(tmp_path):
    import webdataset as wds

    (tmp_path / "wds").mkdir()
    with wds.TarWriter(str(tmp_path / "wds" / "x.tar")) as w:
        w.write({"__key__": "k0", "jpg": jpeg_bytes(0), "cls": "dog"})
        w.write({"__key__": "k1", "jpg": jpeg_bytes(1), "cls": "ant"})
    assert main(["index", str(tmp_path / "wds"), "--out", str(tmp_path / "a"), "--class-names", "ant,bee,dog"]) == 0
    r = ShardReader(tmp_path / "a")
    assert r.class_names == ["ant", "bee", "dog"] and r.labels.tolist() == [2, 0]
    assert (
        main(["index", str(tmp_path / "wds"), "--out", str(tmp_path / "b"), "--classes-from", str(tmp_path / "a")]) == 0
    )
    assert ShardReader(tmp_path / "b").class_names == ["ant", "bee", "dog"]
