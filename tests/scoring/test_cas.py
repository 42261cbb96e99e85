"""CAS: ranks, tie rule, validation against training statistics, score files, encoders, CLI."""
import numpy as np
import pytest

from fastcas.dataset.scorefile import ScoreTable, read_scores, write_scores
from fastcas.scoring.cas import (
    attribute_frequencies,
    cas,
    cas_scores,
    cas_subsets,
    fit_ranks,
    sampling_statistics,
    subset_indices,
)
from fastcas.train.metrics import accuracy_report, shot_groups


def test_cas_is_the_sum_of_within_class_frequency_ranks():
    # class 0, primary 0: value 5 x3 (rank 1), value 7 x1 (rank 2); primary 1: 1 x2, 2 x2 (tie -> both rank 1)
    attrs = np.array([[5, 1], [5, 1], [5, 2], [7, 2], [9, 4]])
    labels = np.array([0, 0, 0, 0, 1])
    assert cas_scores(attrs, labels).tolist() == [2, 2, 2, 3, 2]


def test_competition_tie_rule():
    attrs = np.array([[0], [0], [1], [1], [2]])  # counts 2, 2, 1 -> ranks 1, 1, 3 ("1224" rule)
    assert cas_scores(attrs, np.zeros(5, int)).tolist() == [1, 1, 1, 1, 3]


def test_validation_uses_training_ranks_and_unseen_values_are_rarest():
    train = np.array([[0], [0], [0], [1], [2], [2]])
    ref = fit_ranks(train, np.zeros(6, int))
    val = np.array([[0], [1], [2], [9]])
    # train ranks: 0 -> 1, 2 -> 2, 1 -> 3; unseen 9 -> 3 distinct + 1 = 4
    assert cas_scores(val, np.zeros(4, int), ref).tolist() == [1, 3, 2, 4]
    with pytest.raises(ValueError, match="label 3 is not a class of the reference"):
        cas_scores(val, np.full(4, 3), ref)


def test_cas_subsets_are_30_30_40_by_ascending_cas():
    cas = np.arange(100)[::-1]
    sub = cas_subsets(cas)
    assert np.bincount(sub).tolist() == [30, 30, 40]
    assert cas[sub == 0].max() < cas[sub == 1].min() and cas[sub == 1].max() < cas[sub == 2].min()


def test_accuracy_report_groups():
    counts = np.array([500, 50, 5])
    assert shot_groups(counts).tolist() == [0, 1, 2]
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 0, 1, 0, 0, 0])
    rep = accuracy_report(y, p, counts, cas=np.arange(6))
    assert rep["top1"] == pytest.approx(0.5)
    assert (rep["many"], rep["medium"], rep["few"]) == (1.0, 0.5, 0.0)
    assert rep["per_class"] == [1.0, 0.5, 0.0]
    # CAS subsets 30/30/40 of 6 samples by ascending CAS: {0, 1}, {2, 3}, {4, 5}
    assert (rep["cas_low"], rep["cas_middle"], rep["cas_high"]) == (1.0, 0.5, 0.0)
    rev = accuracy_report(y, p, counts, cas=np.arange(6)[::-1])  # CAS order reversed: subsets swap
    assert (rev["cas_low"], rev["cas_middle"], rev["cas_high"]) == (0.0, 0.5, 1.0)
    # many-shot is > many, few-shot < few; the thresholds themselves are medium
    assert shot_groups([101, 100, 20, 19]).tolist() == [0, 1, 1, 2]
    assert shot_groups([11, 10, 5, 4], many=10, few=5).tolist() == [0, 1, 1, 2]
    # a group with no samples is None, not 0
    assert accuracy_report(y[:2], p[:2], counts)["few"] is None


def test_score_file_round_trip_and_key_mismatch(tmp_path):
    t = ScoreTable(["a", "b", "c"], np.array([0, 1, 0]), np.array([3, 4, 5]), np.array([[1, 2], [3, 4], [5, 6]]),
                   {"encoder": "pixel"})
    path = tmp_path / "s.parquet"
    write_scores(path, t)
    back = read_scores(path, keys=["c", "a", "b"])  # reordered to the dataset's key order
    assert back.keys == ["c", "a", "b"] and back.cas.tolist() == [5, 3, 4]
    assert back.attrs.tolist() == [[5, 6], [1, 2], [3, 4]] and back.metadata["encoder"] == "pixel"
    with pytest.raises(ValueError, match="key 'zz'"):
        read_scores(path, keys=["a", "b", "zz"])
    with pytest.raises(FileNotFoundError, match="no such score file"):
        read_scores(tmp_path / "none.parquet")


def test_pixel_encoder_bins_synthetic_images():
    torch = pytest.importorskip("torch")
    from fastcas.scoring.bins import fixed_bins
    from fastcas.scoring.pixel import PRIMARIES, PixelEncoder

    x = torch.zeros(3, 3, 32, 32)
    x[0, 0] = 0.85
    x[0, 1:] = 0.1          # red
    x[1] = 0.02             # nearly black
    x[2] = 0.97             # nearly white
    names = fixed_bins().secondary_names()
    ids = PixelEncoder().encode(x, [(32, 32), (640, 480), (300, 600)])
    label = lambda i, p: names[PRIMARIES.index(p)][ids[i, PRIMARIES.index(p)]]
    assert label(0, "color") == "red" and label(1, "color") == "achromatic" == label(2, "color")
    assert label(1, "brightness") == "< 0.2" and label(2, "brightness") == ">= 0.8"
    assert label(1, "style") == "< 0.0588" and ids[0, PRIMARIES.index("style")] >= 4


def test_vocabulary_has_20_primaries_and_300_values():
    from fastcas.scoring.vocabulary import load_vocabulary

    v = load_vocabulary()
    assert len(v["primaries"]) == 20 and sum(len(p["values"]) for p in v["primaries"]) >= 300
    assert all(p["source"] for p in v["primaries"]) and v["version"]


def test_visual_dictionary_picks_the_anchor_nearest_each_text(tmp_path):
    from fastcas.scoring.clip import VisualDictionary, build_dictionary

    anchors = np.eye(4, dtype=np.float32)          # four orthogonal image embeddings
    texts = [np.array([[0.9, 0.1, 0, 0], [0, 0, 0.2, 1.0]], np.float32)]  # one primary, two values
    d = build_dictionary(texts, anchors, ["p"])
    np.testing.assert_allclose(d.keys[0], anchors[[0, 3]])  # top-1 anchors are the keys
    imgs = np.array([[1, 0.2, 0, 0], [0, 0, 0.1, 0.9]], np.float32)
    assert d.assign(imgs).tolist() == [[0], [1]]
    d.save(tmp_path / "d.npz")
    again = VisualDictionary.load(tmp_path / "d.npz")
    assert again.digest() == d.digest() and again.assign(imgs).tolist() == [[0], [1]]
    text_only = build_dictionary(texts, anchors, ["p"], mode="text")
    assert text_only.mode == "text" and text_only.digest() != d.digest()
    top2 = build_dictionary(texts, anchors, ["p"], top_k=2)
    # value 0 is nearest anchors 0 then 1, value 1 anchors 3 then 2: keys are their normalised means
    want = np.stack([anchors[[0, 1]].mean(0), anchors[[3, 2]].mean(0)])
    np.testing.assert_allclose(top2.keys[0], want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)


def test_clip_encoder_with_random_weights_offline():
    pytest.importorskip("open_clip")
    torch = pytest.importorskip("torch")
    from fastcas.scoring.clip import ClipEncoder, build_dictionary

    enc = ClipEncoder("ViT-S-32", None, "cpu")
    imgs = torch.rand(4, 3, 64, 64)
    emb = enc.embed_images(imgs)
    assert emb.shape[0] == 4 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    texts = [enc.embed_texts(["The photo is red.", "The photo is blue."])]
    enc.dictionary = build_dictionary(texts, emb, ["color"])
    ids = enc.encode(imgs)
    assert ids.shape == (4, 1) and set(ids.ravel()) <= {0, 1}
    # each image gets the value whose key (its nearest image embedding) is most cosine-similar
    keys = enc.dictionary.keys[0]
    np.testing.assert_array_equal(ids[:, 0], np.argmax(emb @ keys.T, axis=1))
    assert enc.metadata()["weights_hash"] == "random"


@pytest.mark.dali
def test_score_cli_single_and_split_over_ranks_agree(tmp_path):
    from fastcas.cli import main
    from fastcas.dataset.reader import ShardReader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(7, 5, 3), size=(40, 30))
    one = tmp_path / "one.parquet"
    assert (
        main(
            [
                "score",
                str(tmp_path / "ds"),
                "--out",
                str(one),
                "--batch-size",
                "4",
                "--workers",
                "0",
                "--decoder",
                "dali",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    parts = []
    for r in range(2):
        part = tmp_path / f"part{r}.parquet"
        assert main(["score", str(tmp_path / "ds"), "--out", str(part), "--rank", str(r), "--world-size", "2",
                     "--batch-size", "4", "--workers", "0", "--decoder", "dali", "--device", "cpu"]) == 0
        parts.append(str(part))
    merged = tmp_path / "merged.parquet"
    assert main(["score", str(tmp_path / "ds"), "--out", str(merged), "--merge", *parts, "--device", "cpu"]) == 0
    keys = ShardReader(tmp_path / "ds").keys
    a, b = read_scores(one, keys=keys), read_scores(merged, keys=keys)
    assert np.array_equal(a.attrs, b.attrs) and np.array_equal(a.cas, b.cas)
    assert a.cas.min() >= a.attrs.shape[1]  # every rank is >= 1
    assert not (tmp_path / "one.parquet.work").exists()  # resume chunks cleaned up
    assert main(["stats", str(tmp_path / "ds"), "--scores", str(one), "--out", str(tmp_path / "st")]) == 0
    assert (tmp_path / "st" / "cas.png").exists() and (tmp_path / "st" / "stats.json").exists()


@pytest.mark.dali
def test_interrupted_scoring_resumes_from_chunks(tmp_path, monkeypatch):
    from fastcas.scoring import run as scoring_run
    from fastcas.scoring.pixel import PixelEncoder
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(6, 6), size=(40, 30))
    enc = PixelEncoder()
    full_i, full_f = scoring_run.encode_dataset(
        tmp_path / "ds",
        enc.encode,
        batch_size=2,
        chunk_batches=2,
        progress=False,
        py_workers=0,
        decoder="dali",
        device="cpu",
    )
    calls = {"n": 0}

    def flaky(images, sizes):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return enc.encode(images, sizes)

    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        scoring_run.encode_dataset(tmp_path / "ds", flaky, batch_size=2, chunk_batches=2, work_dir=work, progress=False,
                         py_workers=0, decoder="dali", device="cpu")
    assert len(list(work.glob("*.npz"))) == 1  # one complete chunk survived
    calls["n"] = 10
    i, f = scoring_run.encode_dataset(
        tmp_path / "ds",
        flaky,
        batch_size=2,
        chunk_batches=2,
        work_dir=work,
        progress=False,
        py_workers=0,
        decoder="dali",
        device="cpu",
    )
    assert calls["n"] == 10 + 4  # only the 4 missing batches were encoded again
    assert np.array_equal(i, full_i) and np.array_equal(f, full_f)


def test_cas_alias_and_hand_computed_multi_class_example():
    # class 0: p0 values [1,1,2,3,3,3] -> counts 1:2, 2:1, 3:3 -> ranks 3:1, 1:2, 2:3
    #          p1 values [0,0,0,0,5,5] -> ranks 0:1, 5:2
    # class 1: p0 [4,4] -> 4:1 ; p1 [7,8] tie -> both rank 1
    attrs = np.array([[1, 0], [1, 0], [2, 0], [3, 0], [3, 5], [3, 5], [4, 7], [4, 8]])
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    expected = [2 + 1, 2 + 1, 3 + 1, 1 + 1, 1 + 2, 1 + 2, 1 + 1, 1 + 1]
    assert cas(attrs, labels).tolist() == expected
    assert cas(attrs[::-1], labels[::-1]).tolist() == expected[::-1]  # order-free
    assert cas(attrs + 100, labels).tolist() == expected              # id-free (competition ranks)


def test_reference_class_without_samples_is_an_error():
    ref = fit_ranks(np.array([[0], [1]]), np.array([0, 0]), num_classes=3)
    with pytest.raises(ValueError, match="class 2 has no samples in the reference"):
        cas_scores(np.array([[0]]), np.array([2]), ref)
    with pytest.raises(ValueError, match=r"attribute ids must be an int array \[N, P\]"):
        cas_scores(np.array([0.5, 1.0]), np.array([0, 0]))


def test_sampling_statistics_table1_moments():
    c = np.array([1.0, 3.0])
    s = sampling_statistics(c, b=1.0, draws=20000, seed=3)
    assert s["uniform"]["mean"] == pytest.approx(2.0) and s["uniform"]["std"] == pytest.approx(1.0)
    # p = [1/4, 3/4]: mean 2.5, var = 1/4*2.25 + 3/4*0.25 = 0.75
    assert s["cas_weighted"]["mean"] == pytest.approx(2.5)
    assert s["cas_weighted"]["std"] == pytest.approx(np.sqrt(0.75))
    assert abs(s["cas_weighted"]["drawn_mean"] - 2.5) < 0.05
    assert sampling_statistics(c, b=1.0, draws=100, seed=3) == sampling_statistics(c, b=1.0, draws=100, seed=3)
    with pytest.raises(ValueError, match="must be positive"):
        sampling_statistics(np.array([0, 2]))


def test_subset_indices_and_attribute_frequencies():
    sub = subset_indices(np.arange(10))
    assert [len(sub[k]) for k in ("low", "middle", "high")] == [3, 3, 4]
    assert sub["high"].tolist() == [6, 7, 8, 9]
    f = attribute_frequencies(np.array([[0, 1], [2, 1], [2, 0]]), [("c", ["a", "b", "z"]), ("d", ["x", "y"])])
    assert f[0] == {"primary": "c", "counts": [["z", 2], ["a", 1]]}
    assert f[1]["counts"] == [["y", 2], ["x", 1]]


def test_score_file_metadata_and_missing_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "s.parquet"
    write_scores(path, ScoreTable(["a"], np.array([0]), np.array([2]), np.array([[1, 1]]),
                                  {"encoder": "clip", "dictionary_hash": "abc", "vocabulary_version": "1.0"}))
    t = read_scores(path)
    assert t.metadata["dictionary_hash"] == "abc" and t.metadata["schema_version"] == 1
    assert t.attrs.shape == (1, 2) and pq.read_table(path).column_names == ["key", "label", "cas", "attr_00", "attr_01"]
    pq.write_table(pa.table({"key": ["a"], "label": [0]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet: score file has no column 'cas'"):
        read_scores(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="key 'b'"):
        read_scores(path, keys=["a", "b"])
