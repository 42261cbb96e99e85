"""Score files are checked against the dataset they weight: labels, duplicate keys, CAS >= 1;
extreme weight concentration is warned about, naming the heaviest sample."""
import warnings

import numpy as np
import pytest

from fastcas.dataset.scorefile import read_scores, write_scores
from fastcas.sampling import weights as sample_weights


def _write(path, keys, labels, cas):
    write_scores(path, keys, np.asarray(labels), np.asarray(cas), np.zeros((len(keys), 1), np.int64), {})


def test_labels_that_differ_from_the_dataset_are_refused_naming_the_key(tmp_path):
    keys = ["a", "b", "c"]
    _write(tmp_path / "s.parquet", keys, [1, 1, 1], [20, 30, 40])
    with pytest.raises(ValueError, match=r"key 'a' has label 1 in the score file, 0 in the dataset \(2 of 3"):
        read_scores(tmp_path / "s.parquet", keys=keys, labels=np.array([0, 1, 2]))
    assert read_scores(tmp_path / "s.parquet", keys=keys, labels=np.array([1, 1, 1])).cas.tolist() == [20, 30, 40]


def test_a_duplicated_row_names_the_key_not_a_bare_stopiteration(tmp_path):
    _write(tmp_path / "s.parquet", ["a", "b", "b"], [0, 0, 0], [20, 30, 30])
    with pytest.raises(ValueError, match=r"key 'b' appears in two rows \(1 and 2\)"):
        read_scores(tmp_path / "s.parquet", keys=["a", "b", "c"])


def test_a_cas_of_zero_is_refused_not_silently_excluded(tmp_path):
    _write(tmp_path / "s.parquet", ["a", "b"], [0, 0], [20, 0])
    with pytest.raises(ValueError, match=r"CAS 0 at key 'b' is below 1"):
        read_scores(tmp_path / "s.parquet", keys=["a", "b"])
    assert read_scores(tmp_path / "s.parquet").cas.tolist() == [20, 0]  # a per-rank part, before the merge ranks it


def test_one_huge_cas_warns_with_the_effective_sample_size_and_the_key():
    cas = np.full(400, 40.0)
    cas[7] = 1e15
    w = sample_weights.make("cas", np.zeros(400, np.int64), scores=cas, b=1.2, r=1.0)
    msg = sample_weights.concentration_warning(w, [f"k{i}" for i in range(400)], "weights 'cas'")
    assert msg is not None and "effective sample size 1.0 of 400" in msg and "'k7' alone takes 100.0%" in msg


def test_ordinary_long_tailed_weights_do_not_warn():
    counts = np.maximum(1, (1000 * 0.97 ** np.arange(100)).astype(int))  # imbalance ~ 20
    labels = np.repeat(np.arange(100), counts)
    for name in ("cmo", "uniform"):
        assert (
            sample_weights.concentration_warning(sample_weights.make(name, labels, scores=None, b=1.2, r=1.0)) is None
        )
    rng = np.random.default_rng(0)
    assert sample_weights.concentration_warning(rng.integers(20, 200, 1000).astype(float) ** 1.2) is None


def test_the_loader_refuses_a_score_file_with_wrong_labels_and_warns_on_concentration(tmp_path):
    from fastcas.loading.loader import Loader
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "d", counts=(3, 3))
    from fastcas.dataset.reader import ShardReader

    r = ShardReader(tmp_path / "d")
    _write(tmp_path / "bad.parquet", r.keys, 1 - r.labels, np.full(len(r), 30))
    with pytest.raises(ValueError, match="do not match the dataset's labels"):
        Loader(tmp_path / "d", 2, weights="cas", scores=str(tmp_path / "bad.parquet"), device="cpu", py_workers=0)
    cas = np.full(len(r), 30)
    cas[2] = 10**15
    _write(tmp_path / "heavy.parquet", r.keys, r.labels, cas)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        Loader(tmp_path / "d", 2, weights="cas", scores=str(tmp_path / "heavy.parquet"), device="cpu", py_workers=0)
    assert any(f"sample {r.keys[2]!r} alone takes" in str(w.message) for w in got), [str(w.message) for w in got]
    # a later process of the node maps the cached statistics and warns the same
    assert any(p.name.startswith("ess-") for p in (tmp_path / "d").rglob("*.npy"))
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        Loader(tmp_path / "d", 2, weights="cas", scores=str(tmp_path / "heavy.parquet"), device="cpu", py_workers=0)
    assert [str(w.message) for w in again if "alone takes" in str(w.message)] == \
        [str(w.message) for w in got if "alone takes" in str(w.message)]
