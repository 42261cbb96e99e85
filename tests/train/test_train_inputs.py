"""Training inputs: validation score files with nulls are refused; a CMO recipe with too few epochs mixes every
epoch and says so; the schedule, mixing-mode and loss-weight flags; the class-mass warning in the train output."""
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
    assert "warning: recipe cifar100-lt-cmo mixes only between epoch 4" in capsys.readouterr().err
    cfg = _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "7"])  # 4 + 3 = 7: no epoch left either
    assert (cfg.mix_start, cfg.mix_end) == (0, 0)
    cfg = _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "8"])  # one mixing epoch: kept
    assert (cfg.mix_start, cfg.mix_end) == (4, 3) and cfg.mixing_at(4) and not cfg.mixing_at(3)
    capsys.readouterr()
    with pytest.raises(ValueError, match="leave no epoch"):  # explicit flags are the user's choice
        _config(["x", "--recipe", "cifar100-lt-cmo", "--epochs", "1", "--mix-start", "1"])


def test_schedule_mix_mode_and_loss_weight_flags():
    pytest.importorskip("torch")
    cfg = _config(["x", "--schedule", "step", "--step-epochs", "160", "180", "--step-factors", "0.01", "0.0001",
                   "--warmup-epochs", "5", "--warmup-per", "epoch", "--loss-weights", "upweight-low",
                   "--loss-weight-factor", "5", "--mix", "cutmix", "--mix-mode", "elem", "--threshold", "40",
                   "--loss-beta", "0.9999", "--policy", "cifar"])
    assert (cfg.step_factors, cfg.warmup_per, cfg.loss_weight_factor, cfg.mixing_mode, cfg.threshold,
            cfg.loss_beta, cfg.policy) == ((0.01, 0.0001), "epoch", 5.0, "elem", 40.0, 0.9999, "cifar")
    assert _config(["x", "--mix", "cutmix", "--foreground-weights", "cmo"]).mixing_mode == "batch"  # CMO: per batch
    assert _config(["x", "--mix", "cutmix"]).mixing_mode == "elem"


@pytest.mark.parametrize("kw, match", [
    (dict(schedule="step", step_epochs=(5, 10), step_factors=(0.1,)), r"step_factors \[0.1\] need the step schedule "
                                                                      r"and one factor per step epoch"),
    (dict(schedule="cosine", step_factors=(0.1,)), "need the step schedule"),
    (dict(schedule="step", step_epochs=(10, 5)), r"step_epochs must be increasing, got \[10, 5\]"),
    (dict(schedule="step", step_epochs=(5,), step_factors=(0,)), r"step_factors must be finite numbers > 0"),
    (dict(warmup_per="batch"), "warmup_per must be 'step' or 'epoch', got 'batch'"),
    (dict(mix_mode="pair"), "mix_mode must be 'auto', 'elem' or 'batch', got 'pair'"),
    (dict(loss_weight_factor=-1.0), "loss_weight_factor must be a finite number > 0, got -1.0"),
    (dict(loss_beta=1.0), r"loss_beta must be in \[0, 1\), got 1.0"),
])
def test_train_config_refuses_bad_schedule_and_loss_fields(kw, match):
    pytest.importorskip("torch")
    from fastcas.train.loop import TrainConfig

    with pytest.raises(ValueError, match=match):
        TrainConfig(train="x", **kw)


def test_cas_weights_moving_class_mass_print_a_warning_line_in_train(tmp_path, capsys):
    """`fastcas train --weights cas` on long-tailed data whose CAS favours the head class: a
    'warning: weights 'cas' move the class mass' line (and the ClassMassShiftWarning)."""
    pytest.importorskip("nvidia.dali")
    import numpy as np

    from fastcas.core.errors import ClassMassShiftWarning
    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import ScoreTable, write_scores
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "train", counts=(12, 3, 1), shard_size=8, size=(24, 20))
    r = ShardReader(tmp_path / "train")
    labels = np.asarray(r.labels)
    scores = tmp_path / "s.parquet"
    write_scores(
        scores, ScoreTable(r.keys, r.labels, np.where(labels == 0, 30, 6), np.zeros((len(r), 1), np.int64), {})
    )
    with pytest.warns(ClassMassShiftWarning, match="head class 'c0'"):
        rc = main(["train", str(tmp_path / "train"), "--weights", "cas", "--scores", str(scores), "--out",
                   str(tmp_path / "run"), "--device", "cpu", "--py-workers", "0", "--batch-size", "4",
                   "--image-size", "16", "--epochs", "1", "--max-steps", "1", "--no-amp", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"warning: weights 'cas' move the class mass of the draws by 0\.\d+ .*head class 'c0' "
                     r"0\.750 -> 0\.9\d+ .*'cas-cmo'", out), out
