"""``--overwrite`` replaces what fastcas wrote and refuses anything else, deleting nothing."""
import json

import pytest

pytest.importorskip("torch")

from fastcas.cli import main  # noqa: E402
from fastcas.train.rundir import claim_run_dir  # noqa: E402
from tests.train.test_rundir import cfg_for  # noqa: E402


def test_overwrite_of_a_directory_that_never_held_a_run_deletes_nothing(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    for name in ("thesis.tex", "notes.txt", "metrics.jsonl"):
        (home / name).write_text("mine")
    rc = main(["train", str(tmp_path / "train"), "--out", str(home), "--overwrite", "--device", "cpu"])
    assert rc == 2
    assert "is not a fastcas run directory" in capsys.readouterr().err
    assert sorted(p.name for p in home.iterdir() if p.name != ".lock") == ["metrics.jsonl", "notes.txt", "thesis.tex"]
    assert all((home / n).read_text() == "mine" for n in ("thesis.tex", "notes.txt", "metrics.jsonl"))


def test_overwrite_of_a_run_directory_holding_user_files_is_refused(tmp_path):
    cfg = cfg_for(tmp_path)
    claim_run_dir(cfg, resume=False, overwrite=False).release()
    out = tmp_path / "run"
    (out / "checkpoint.pt").write_text("old")
    (out / "paper-draft.docx").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files no fastcas run wrote \(paper-draft\.docx\)"):
        claim_run_dir(cfg, resume=False, overwrite=True)
    assert (out / "checkpoint.pt").read_text() == "old" and (out / "paper-draft.docx").read_text() == "mine"


def test_index_overwrite_keeps_a_users_own_manifest_and_indexes(tmp_path):
    from fastcas.dataset.indexer import IndexConfig, index_dataset
    from tests.dataset.test_manifest_safety import _wds

    tar = _wds(tmp_path / "d", ["k0", "k1"])
    (tmp_path / "d" / "manifest.json").write_text('{"mine": true}')
    (tmp_path / "d" / "a.idx").write_text("v1.2 my own index")
    with pytest.raises(FileExistsError, match="holds no index written by `fastcas index`"):
        index_dataset([tar], tmp_path / "d", IndexConfig(overwrite=True))
    assert (tmp_path / "d" / "manifest.json").read_text() == '{"mine": true}'
    assert (tmp_path / "d" / "a.idx").read_text() == "v1.2 my own index"
    # an index fastcas wrote is replaced, its own .idx only
    index_dataset([tar], tmp_path / "ix")
    (tmp_path / "ix" / "user.idx").write_text("mine")
    m = index_dataset([tar], tmp_path / "ix", IndexConfig(overwrite=True))
    assert m["keys"] == ["k0", "k1"] and (tmp_path / "ix" / "user.idx").read_text() == "mine"
    assert json.loads((tmp_path / "ix" / "manifest.json").read_text())["format"] == "fastcas-index/1"
