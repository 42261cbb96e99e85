"""Training inputs: validation score files with nulls are refused; a CMO recipe with too few epochs mixes every epoch and says so."""
import re

import pytest

from fastcas.cli import main


def _score_file(path, cas, keys=("s0000", "s0001", "s0002")):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": list(keys), "label": [0, 1, 0], "cas": cas}), path)
    return path


def _config(argv):
    import argparse

    from fastcas.cli import train as C

    p = argparse.ArgumentParser()
    C.add_arguments(p)
    return C.config_from_args(p.parse_args(argv))


def test_val_scores_with_null_are_refused_by_train(tmp_path, capsys):
    """`fastcas train --val-scores` with a null CAS stops with the CLI error, before training."""
    pytest.importorskip("nvidia.dali")
    import pyarrow as pa

    from fastcas.dataset.reader import ShardReader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "train", counts=(4, 4), shard_size=8, size=(24, 20))
    make_dataset(tmp_path / "val", counts=(2, 1), shard_size=8, size=(24, 20), seed=2)
    keys = ShardReader(tmp_path / "val").keys
    f = _score_file(tmp_path / "val.parquet", pa.array([1, None, 3], pa.int64()), keys)
    rc = main(["train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--val-scores", str(f),
               "--out", str(tmp_path / "run"), "--device", "cpu", "--py-workers", "0", "--batch-size", "4",
               "--image-size", "16", "--epochs", "1", "--no-amp"])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(rf"fastcas train: error: .*val\.parquet: .*first at key '{keys[1]}' \(cas = null\)",
                                 err), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cmo_recipe_with_one_epoch_mixes_every_epoch_with_a_warning(capsys):
    pytest.importorskip("torch")
    cfg = _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "1"])
    assert (cfg.mix_start, cfg.mix_end, cfg.mixing_at(0)) == (0, 0, True)
    assert "warning: recipe cifar100-lt-cmo mixes only between epoch 3" in capsys.readouterr().err
    cfg = _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "6"])  # 3 + 3 = 6: no epoch left either
    assert (cfg.mix_start, cfg.mix_end) == (0, 0)
    cfg = _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "7"])  # one mixing epoch: kept
    assert (cfg.mix_start, cfg.mix_end) == (3, 3) and cfg.mixing_at(3)
    capsys.readouterr()
    with pytest.raises(ValueError, match="leave no epoch"):  # explicit flags are the user's choice
        _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "1", "--mix-start", "1"])
