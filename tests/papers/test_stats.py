"""`fastcas stats`: the CAS paper's Table 1 (uniform / CAS-weighted / CMO), accuracy by CAS
decile, integer-aligned histogram bins, the random-CLIP-weights warning."""
import json

import numpy as np
import pytest

from fastcas.dataset.scorefile import ScoreTable, write_scores
from fastcas.scoring.cas import sampling_statistics

LABELS = np.repeat(np.arange(3), [300, 100, 20])
CAS = (10 + (np.arange(len(LABELS)) * 7919) % 23 + 5 * LABELS).astype(np.int64)


def test_table1_exact_moments_and_one_epoch_of_draws():
    t = sampling_statistics(CAS, 1.2, draws=-1, seed=0, labels=LABELS, r=1.0)
    c = CAS.astype(float)
    assert t["uniform"]["mean"] == pytest.approx(c.mean()) and t["uniform"]["std"] == pytest.approx(c.std())
    assert t["cas_weighted"]["mean"] == pytest.approx((c ** 2.2).sum() / (c ** 1.2).sum())
    # CMO (per-sample 1/n_k, r = 1): every class weighs the same -> mean of the class means
    assert t["cmo"]["mean"] == pytest.approx(np.mean([c[LABELS == k].mean() for k in range(3)]))
    for name in ("uniform", "cas_weighted", "cmo"):
        assert t[name]["draws"] == len(c)  # one epoch
        assert abs(t[name]["drawn_mean"] - t[name]["mean"]) < 4 * t[name]["std"] / np.sqrt(len(c))
        assert abs(t[name]["drawn_std"] - t[name]["std"]) < 0.15 * t[name]["std"]
    assert t["cas_weighted"]["mean"] > t["uniform"]["mean"]


def test_integer_bins_are_centred_on_integers():
    from fastcas.cli.stats import integer_bins

    e = integer_bins(11, 69)
    assert np.allclose(e % 1, 0.5) and e[0] == 10.5 and e[-1] >= 69.5
    e = integer_bins(0, 1000)
    assert len(e) <= 62 and np.allclose(e % 1, 0.5) and len(set(np.diff(e))) == 1


def test_stats_cli_table1_deciles_and_random_clip_warning(tmp_path, capsys):
    from fastcas.cli import main
    from fastcas.dataset.reader import ShardReader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(12, 6, 4), size=(32, 24))
    r = ShardReader(tmp_path / "ds")
    cas = 5 + np.arange(len(r)) % 7
    s = tmp_path / "s.parquet"
    write_scores(s, ScoreTable(r.keys, r.labels, cas, np.stack([np.arange(len(r)) % 3] * 2, 1),
                               {"encoder": "clip", "weights_hash": "random"}))
    pred = r.labels.copy()
    pred[cas >= 10] = (pred[cas >= 10] + 1) % 3     # wrong exactly on the high-CAS images
    np.save(tmp_path / "pred.npy", pred)
    st = tmp_path / "st"
    assert main(["stats", str(tmp_path / "ds"), "--scores", str(s), "--out", str(st), "--eval",
                 str(tmp_path / "pred.npy")]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "Table 1" in out
    j = json.loads((st / "stats.json").read_text())
    assert "RANDOM weights" in j["warning"] and set(j["table1"]) >= {"uniform", "cas_weighted", "cmo"}
    dec = j["accuracy_by_cas_decile"]
    assert sum(d["size"] for d in dec) == len(r)
    assert dec[0]["top1"] == 1.0 and dec[-1]["top1"] == 0.0
    for png in ("classes.png", "cas.png", "attributes.png", "cas_per_class.png", "accuracy_by_cas.png"):
        assert (st / png).stat().st_size > 1000
    # pixel score without random weights: no warning
    write_scores(s, ScoreTable(r.keys, r.labels, cas, np.zeros((len(r), 1), np.int64), {"encoder": "pixel"}))
    assert main(["stats", str(tmp_path / "ds"), "--scores", str(s), "--out", str(st)]) == 0
    assert "warning" not in json.loads((st / "stats.json").read_text())
    with pytest.raises(ValueError, match="predictions, the dataset has"):
        from fastcas.cli.stats import load_predictions
        load_predictions(tmp_path / "pred.npy", len(r) + 1)


def test_score_summary_flags_random_clip_weights(tmp_path, capsys):
    pytest.importorskip("open_clip")
    from fastcas.cli import main
    from tests.helpers import make_dataset
    from tests.scoring.test_attributes import TINY_CLIP

    (tmp_path / "clip.json").write_text(json.dumps(TINY_CLIP))
    make_dataset(tmp_path / "ds", counts=(4, 3), size=(32, 24))
    assert (
        main(
            [
                "score",
                "--device",
                "cpu",
                str(tmp_path / "ds"),
                "--out",
                str(tmp_path / "c.parquet"),
                "--encoder",
                "clip",
                "--model",
                str(tmp_path / "clip.json"),
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert "RANDOM weights" in cap.err and "'warning'" in cap.out
    # a pixel score has no such warning
    assert (
        main(["score", "--device", "cpu", str(tmp_path / "ds"), "--out", str(tmp_path / "p.parquet"), "--no-progress"])
        == 0
    )
    assert "RANDOM" not in capsys.readouterr().err
