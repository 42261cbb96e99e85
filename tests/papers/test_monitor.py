"""Drawn-vs-target monitor: target shares, drawn shares (chi-square, fixed seed), Kish ESS,
per-attribute tables, named groups; `fastcas sample --report`; `fastcas train` logs it."""
import json

import numpy as np
import pytest

from fastcas.sampling import weights as sample_weights
from fastcas.sampling.sampler import WeightedSampler
from fastcas.train.monitor import drawn_report, format_report

LABELS = np.repeat(np.arange(4), [600, 250, 100, 50])
ATTRS = np.stack([np.arange(len(LABELS)) % 3, (np.arange(len(LABELS)) * 7) % 5 == 0], 1).astype(np.int64)


def test_report_targets_drawn_and_ess():
    w = sample_weights.cmo(LABELS, 1.0)
    d = WeightedSampler(w, num_samples=40_000, seed=3).indices(0)
    rare = ATTRS[:, 1] == 1
    rep = drawn_report(LABELS, d, w, class_names=["a", "b", "c", "d"], attrs=ATTRS, primaries=["p", "q"],
                       groups={"rare": rare})
    np.testing.assert_allclose([c["target"] for c in rep["classes"]], 0.25)  # CMO: class-balanced target
    assert rep["class_chi2_p"] > 1e-3 and rep["max_class_deviation"] < 0.01
    assert [c["n"] for c in rep["classes"]] == [600, 250, 100, 50] and rep["classes"][3]["value"] == "d"
    # Kish ESS = (sum w)^2 / sum w^2
    assert rep["ess"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum())
    assert drawn_report(LABELS, d, np.ones(len(LABELS)))["ess"] == pytest.approx(len(LABELS))
    q = rep["attributes"][1]["values"][1]
    assert q["target"] == pytest.approx((w[rare] / w.sum()).sum()) and abs(q["drawn"] - q["target"]) < 0.01
    g = rep["groups"]["rare"]
    assert g["uniform"] == pytest.approx(rare.mean()) and g["drawn"] == pytest.approx(rare[d].mean())
    # drawn counts are the draws' histogram, not the target
    assert sum(c["drawn_count"] for c in rep["classes"]) == len(d)
    assert rep["classes"][0]["drawn_count"] == int((LABELS[d] == 0).sum())
    text = format_report(rep)
    assert "effective sample size" in text and "group 'rare'" in text
    with pytest.raises(ValueError, match="drawn indices must be in"):
        drawn_report(LABELS, np.array([len(LABELS)]), w)


def test_report_detects_a_sampler_that_ignores_the_weights():
    w = sample_weights.cmo(LABELS, 1.0)
    d = WeightedSampler(len(LABELS), num_samples=20_000, seed=1, replacement=True).indices(0)  # uniform draws
    rep = drawn_report(LABELS, d, w)
    assert rep["class_chi2_p"] < 1e-6 and rep["max_class_deviation"] > 0.2


def test_sample_cli_report_with_attributes(tmp_path, capsys):
    from fastcas.cli import main
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(12, 6, 3), size=(32, 24))
    s = tmp_path / "s.parquet"
    assert (
        main(["score", "--device", "cpu", str(tmp_path / "ds"), "--out", str(s), "--no-progress", "--batch-size", "8"])
        == 0
    )
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "ds"), "--weights", "cas", "--scores", str(s), "--num-samples", "2000",
                 "--out", str(tmp_path / "i.npy"), "--report"]) == 0
    out = capsys.readouterr().out
    assert "effective sample size" in out and "texture:" in out and "c2" in out


@pytest.mark.dali
@pytest.mark.slow
def test_train_logs_monitor_every_epoch(tmp_path):
    pytest.importorskip("nvidia.dali")
    from fastcas.train.loop import TrainConfig, train
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "train", counts=(20, 10, 5, 3), shard_size=16, size=(24, 20), seed=1)
    cfg = TrainConfig(train=str(tmp_path / "train"), out=str(tmp_path / "run"), model="resnet32", epochs=2,
                      batch_size=8, image_size=16, epoch_length=32, py_workers=0, weights="cmo", amp=False,
                      device="cpu")
    train(cfg)
    for e in (0, 1):
        rep = json.loads((tmp_path / "run" / f"monitor-epoch{e:03d}.json").read_text())
        bg = rep["streams"]["background"]
        assert bg["weights"] == "cmo" and bg["draws"] == 32
        assert (tmp_path / "run" / f"monitor-epoch{e:03d}.png").stat().st_size > 1000


def test_epoch_progress_bar_rank0_only(capsys):
    from fastcas.train.monitor import EpochProgress

    bar = EpochProgress(3, steps=4, start_step=1, batch_size=8, rank=0, every=1)
    for _ in range(3):
        bar.update(0.5)
    assert bar.bar.n == 32 and bar.step == 4
    bar.close()
    err = capsys.readouterr().err
    assert "epoch 3" in err and "img" in err and "loss=0.500" in err and "step=4/4" in err
    quiet = EpochProgress(0, steps=4, start_step=0, batch_size=8, rank=1)
    quiet.update(1.0)
    quiet.close()
    assert quiet.bar is None and capsys.readouterr().err == ""
