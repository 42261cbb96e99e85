"""Pixel encoder v2: bins fitted to the training set, saved with the score file (digest),
reused for validation sets, constant primaries reported and left out of CAS."""
import json

import numpy as np
import pytest

from fastcas.dataset.scorefile import read_scores
from fastcas.scoring.bins import MIN_SHARE, PixelBins, fit_bins, fit_edges, fixed_bins
from fastcas.scoring.primaries import PRIMARIES


def test_fit_edges_quantiles_and_min_share():
    rng = np.random.default_rng(0)
    v = rng.normal(size=10_000)
    e = fit_edges(v)
    share = np.bincount(np.digitize(v, e)) / len(v)
    assert len(e) == 7 and share.min() >= MIN_SHARE
    np.testing.assert_allclose(share, [0.03, 0.07, 0.15, 0.25, 0.25, 0.15, 0.07, 0.03], atol=0.002)
    # a few discrete values with ties: no empty value, every value >= min_share
    d = rng.choice([0, 1, 2, 5], p=[0.9, 0.05, 0.035, 0.015], size=5000)
    e = fit_edges(d, min_share=0.02)
    counts = np.bincount(np.digitize(d, e))
    assert counts.min() >= 0.02 * len(d) and len(counts) >= 2
    assert fit_edges(np.full(100, 3.0)) == []  # constant: one value


def test_fit_bins_constant_primary_reported_and_digest():
    rng = np.random.default_rng(1)
    raw = rng.random((500, len(PRIMARIES)))
    raw[:, PRIMARIES.index("color")] = 0          # achromatic everywhere
    raw[:, PRIMARIES.index("count")] = 1.0        # constant
    b = fit_bins(raw)
    assert set(b.constant) == {"color", "count"}
    assert PRIMARIES.index("count") not in b.used() and len(b.used()) == len(PRIMARIES) - 2
    ids = b.apply(raw)
    for i in b.used():
        assert np.bincount(ids[:, i]).min() >= MIN_SHARE * len(raw)
    d = b.to_dict()
    again = PixelBins.from_dict(json.loads(json.dumps(d)))
    assert again == b and again.digest() == b.digest()
    d["edges"][1][0] += 1e-3
    with pytest.raises(ValueError, match="digest .* does not match"):
        PixelBins.from_dict(d, "ref.parquet")
    assert fixed_bins().mode == "fixed" and fixed_bins().constant == ()


def _score(*args):
    from fastcas.cli import main

    return main(["score", "--device", "cpu", *map(str, args), "--no-progress", "--batch-size", "4"])


def test_score_file_round_trip_with_bins_and_reference_reuse(tmp_path, capsys):
    from fastcas.dataset.reader import ShardReader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "train", counts=(9, 7), size=(40, 30), seed=1)
    make_dataset(tmp_path / "val", counts=(4, 4), size=(40, 30), seed=2)
    tr, va = tmp_path / "train.parquet", tmp_path / "val.parquet"
    assert _score(tmp_path / "train", "--out", tr) == 0
    t = read_scores(tr, keys=ShardReader(tmp_path / "train").keys)
    bins = PixelBins.from_dict(t.metadata["pixel_bins"], str(tr))  # digest checked on load
    assert t.metadata["bins_digest"] == bins.digest() and bins.mode == "fitted"
    assert t.metadata["cas_primaries"] == [bins.primaries[i] for i in bins.used()]
    assert len(t.metadata["secondaries"]) == len(PRIMARIES)
    # CAS sums ranks over the non-constant primaries only
    assert (t.cas >= len(bins.used())).all()
    assert _score(tmp_path / "val", "--out", va, "--reference", tr) == 0
    v = read_scores(va)
    assert v.metadata["bins_digest"] == bins.digest()  # the training bins, not refitted
    # scored on its own, the validation set gets its own (different) fitted bins
    assert _score(tmp_path / "val", "--out", tmp_path / "val-own.parquet") == 0
    assert read_scores(tmp_path / "val-own.parquet").metadata["bins_digest"] != bins.digest()
    # and the reference's ids are its bins applied to the measurements: rescoring train with
    # itself as reference gives the same ids and CAS
    assert _score(tmp_path / "train", "--out", tmp_path / "again.parquet", "--reference", tr) == 0
    again = read_scores(tmp_path / "again.parquet")
    assert np.array_equal(again.attrs, t.attrs) and np.array_equal(again.cas, t.cas)
    # a reference without bins (encoder v1) is refused, naming the file
    from fastcas.dataset.scorefile import ScoreTable, write_scores

    old = tmp_path / "old.parquet"
    write_scores(old, ScoreTable(t.keys, t.labels, t.cas, t.attrs, {"encoder": "pixel"}))
    assert _score(tmp_path / "val", "--out", tmp_path / "v2.parquet", "--reference", old) == 2
    assert "reference has no pixel bins" in capsys.readouterr().err


def test_constant_primary_reported_by_score(tmp_path, capsys):
    """Grey images: colour and colourfulness are constant -> reported, left out of CAS."""
    from fastcas.dataset.ingest import encode_jpeg
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards

    rng = np.random.default_rng(3)
    samples = []
    for i in range(24):
        img = np.zeros((28, 28), np.uint8)
        h, w = rng.integers(4, 20, 2)
        y, x = rng.integers(0, 28 - h), rng.integers(0, 28 - w)
        img[y:y + h, x:x + w] = rng.integers(90, 255)
        samples.append(RawSample(f"g{i:03d}", encode_jpeg(img), i % 2))
    write_shards(samples, tmp_path / "grey", ShardWriterConfig(shard_size=50, class_names=("a", "b")))
    out = tmp_path / "g.parquet"
    assert _score(tmp_path / "grey", "--out", out) == 0
    err = capsys.readouterr().err
    assert "primaries constant on grey" in err and "color" in err and "left out of CAS" in err
    t = read_scores(out)
    assert "color" in t.metadata["constant_primaries"] and "color" not in t.metadata["cas_primaries"]
    used = [PRIMARIES.index(p) for p in t.metadata["cas_primaries"]]
    from fastcas.scoring.cas import cas_scores

    assert np.array_equal(t.cas, cas_scores(t.attrs[:, used], t.labels))


def test_pixel_split_over_ranks_then_merge_equals_single_run(tmp_path):
    """Parts carry raw measurements (sidecar .npy); bins are fitted once, at the merge."""
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(9, 6), size=(40, 30), seed=4)
    one = tmp_path / "one.parquet"
    assert _score(tmp_path / "ds", "--out", one) == 0
    parts = [tmp_path / f"p{r}.parquet" for r in range(2)]
    for r, p in enumerate(parts):
        assert _score(tmp_path / "ds", "--out", p, "--rank", r, "--world-size", 2) == 0
        assert p.with_name(p.name + ".measurements.npy").exists()
    merged = tmp_path / "merged.parquet"
    assert _score(tmp_path / "ds", "--out", merged, "--merge", *parts) == 0
    a, b = read_scores(one), read_scores(merged)
    assert a.keys == b.keys and np.array_equal(a.attrs, b.attrs) and np.array_equal(a.cas, b.cas)
    assert a.metadata["bins_digest"] == b.metadata["bins_digest"]
