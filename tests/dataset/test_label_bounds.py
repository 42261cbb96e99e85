"""A stray huge label is an error naming the sample, not 50M classes or a MemoryError; a brace
pattern that expands to a billion names is refused before it is expanded."""
import pytest

from fastcas.cli import main
from fastcas.dataset.indexer import IndexConfig, expand_sources, index_dataset
from tests.dataset.test_manifest_safety import _wds
from tests.helpers import jpeg_bytes


@pytest.mark.parametrize("label", [50_000_000, 10**11])
def test_index_refuses_a_label_beyond_max_classes_naming_the_sample(tmp_path, label):
    tar = _wds(tmp_path / "w", ["k0"], label=label)
    with pytest.raises(ValueError, match=rf"label {label:,} of sample 'k0' in .*a.tar would make .* more than "
                                         r"max_classes 100,000"):
        index_dataset([tar], tmp_path / "ix")
    assert not (tmp_path / "ix").exists()



def test_max_classes_is_an_option(tmp_path):
    tar = _wds(tmp_path / "w", ["k0"], label=7)
    with pytest.raises(ValueError, match="label 7 of sample 'k0' .* more than max_classes 5"):
        index_dataset([tar], tmp_path / "ix", IndexConfig(max_classes=5))
    assert len(index_dataset([tar], tmp_path / "ix", IndexConfig(max_classes=8))["class_names"]) == 8


def test_shard_from_a_list_refuses_a_huge_label_naming_the_file(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(0, (24, 20)))
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes(1, (24, 20)))
    (tmp_path / "list.txt").write_text("a.jpg\t1\nb.jpg\t100000000000\n")
    rc = main(["shard", str(tmp_path / "list.txt"), str(tmp_path / "out"), "--from", "list"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "label 100,000,000,000 of sample 'b'" in err and "b.jpg" in err and "--max-classes" in err, err
    assert main(["shard", str(tmp_path / "list.txt"), str(tmp_path / "out2"), "--from", "list",
                 "--max-classes", "2"]) == 2


def test_a_brace_pattern_of_a_billion_names_is_refused_quickly(tmp_path):
    with pytest.raises(ValueError, match="expands to more than 1,000,000 names"):
        expand_sources([str(tmp_path / "t-{0..999999999}.tar")])
    with pytest.raises(ValueError, match="expands to more than 1,000,000 names"):
        expand_sources(["http://example.invalid/t-{0..999999999}.tar"])
