"""The redesigned reproduction: end-to-end on tiny data, its controls (placebo, oracle), its
augmentation and schedule, its split, and a report whose statistics are recomputed from report.json."""
import gzip
import json

import numpy as np
import pytest

from fastcas.tools.reproduce import data as D
from fastcas.tools.reproduce.fast import cifar_augment, lr_factor
from fastcas.tools.reproduce.run import ReproduceConfig, run_reproduce, tasks


def _idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


@pytest.fixture
def tiny_fmnist(tmp_path):
    """Fashion-MNIST-shaped idx files: 10 classes, 40 train / 20 test images a class, a bright
    square whose position encodes the class (learnable), seeded noise elsewhere."""
    rng = np.random.default_rng(0)
    d = tmp_path / "fm"
    d.mkdir()
    for stem, per in (("train", 40), ("t10k", 20)):
        y = np.repeat(np.arange(10), per)
        x = rng.integers(0, 40, (len(y), 28, 28))
        for i, k in enumerate(y):
            x[i, 2 * k:2 * k + 8, 4:12] = 230
        _idx(d / f"{stem}-images-idx3-ubyte.gz", x)
        _idx(d / f"{stem}-labels-idx1-ubyte.gz", y)
    return d


def test_pipeline_runs_end_to_end_and_stats_are_recomputed_from_report_json(tiny_fmnist, tmp_path):
    from fastcas.tools.reproduce.report import _groups, _pairs, comparisons, summarise

    cfg = ReproduceConfig(fashion_mnist=str(tiny_fmnist), out=str(tmp_path / "out"), seeds=2, is_seeds=2,
                          cmo_epochs=1, cas_epochs=1, cas_per_class=20, is_epochs=1, batch_size=32, workers=1)
    run_reproduce(cfg)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(rep["parts"]) == {"cmo", "cas", "importance"}
    n_runs = sum(len(by) for p in rep["parts"].values() for by in p["runs"].values())
    assert n_runs == len(tasks(cfg)) == 2 * (4 + 6) + 2 * 8
    for part, p in rep["parts"].items():
        # the stored summary and paired intervals are exactly what the stored runs give
        assert p["summary"] == json.loads(json.dumps(summarise(p["runs"], _groups(part))))
        assert p["comparisons"] == json.loads(json.dumps(comparisons(p["runs"], _pairs(part), _groups(part))))
        assert all(c["seeds"] == ["0", "1"] for c in p["comparisons"])
    assert len(rep["parts"]["cmo"]["curves"]["CE"]["0"]) == 1  # one dev point per epoch
    md = (tmp_path / "out" / "report.md").read_text()
    assert "CutMix + CAS - CutMix + CAS placebo" in md and "CE convergence" in md
    # a second call reuses every stored run (nothing retrained)
    again = run_reproduce(cfg)
    assert again["parts"]["cas"]["runs"] == rep["parts"]["cas"]["runs"]


def test_placebo_keeps_every_class_multiset_of_weights():
    y = np.repeat(np.arange(4), [5, 9, 1, 30])
    w = np.random.default_rng(1).random(len(y))
    p = D.placebo(w, y, seed=3)
    for k in range(4):
        assert sorted(p[y == k]) == sorted(w[y == k])
    assert not np.array_equal(p, w)  # it does move weights (the largest class has 30)
    assert np.array_equal(p, D.placebo(w, y, seed=3)) and not np.array_equal(p, D.placebo(w, y, seed=4))


def test_oracle_weights_are_one_over_the_attribute_share_in_the_class():
    y = np.array([0] * 10 + [1] * 4)
    a = np.array([0] * 8 + [1] * 2 + [0, 0, 0, 1])
    w = D.oracle(a, y)
    np.testing.assert_allclose(w, [10 / 8] * 8 + [10 / 2] * 2 + [4 / 3] * 3 + [4 / 1])
    for k in (0, 1):  # every attribute value of a class carries the same total weight
        m = y == k
        assert np.allclose(np.bincount(a[m], weights=w[m]), m.sum())


def test_dev_and_test_halves_are_disjoint_and_balanced():
    y = np.repeat(np.arange(10), 1000)
    dev, test = D.split_test(y, 0)
    assert len(np.intersect1d(dev, test)) == 0 and len(dev) + len(test) == len(y)
    assert (np.bincount(y[dev]) == 500).all() and (np.bincount(y[test]) == 500).all()


def test_cifar_augment_is_a_padded_crop_with_optional_flip():
    import torch

    x = torch.from_numpy(np.random.default_rng(0).integers(1, 256, (64, 3, 8, 8)).astype(np.uint8))
    out = cifar_augment(x, np.random.default_rng(5), pad=4)
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flipped = 0
    for i in range(len(x)):
        wins = [xp[i, :, oy:oy + 8, ox:ox + 8] for oy in range(9) for ox in range(9)]
        same = any(torch.equal(out[i], w) for w in wins)
        flip = any(torch.equal(out[i], w.flip(-1)) for w in wins)
        assert same or flip
        flipped += flip and not same
    assert 16 < flipped < 48  # p = 0.5 of 64


def test_lr_factor_is_the_reference_schedule_scaled():
    # naver-ai/cmo adjust_learning_rate at 200 epochs of 1 step: warm-up (e+1)/5, x0.01 from 160, x1e-4 from 180
    ref = [(e + 1) / 5 if e < 5 else (1e-4 if e >= 180 else (1e-2 if e >= 160 else 1.0)) for e in range(200)]
    assert [lr_factor(e, 200) for e in range(200)] == pytest.approx(ref)


def test_config_refuses_unknown_parts_and_zero_seeds():
    with pytest.raises(ValueError, match="parts must be some of"):
        ReproduceConfig(parts=("cmo", "mixup"))
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        ReproduceConfig(seeds=0)


def test_papers_page_splices_the_generated_report_between_its_markers():
    from fastcas.tools.reproduce.report import BEGIN, END, splice_papers

    page = f"# P\n\nintro\n{BEGIN}\nold table\n{END}\n\n## 2. next\n"
    out = splice_papers(page, "# fastcas reproduce\n\n## CMO\n\n| a |\n\n![curves](curves.png)\n")
    assert "old table" not in out and "### CMO" in out and "](papers/curves.png)" in out
    assert out.startswith("# P\n\nintro\n") and out.endswith(f"{END}\n\n## 2. next\n")
    assert splice_papers(out, "# x\n\nnew\n").count("new") == 1
    with pytest.raises(ValueError, match="markers"):
        splice_papers("no markers", "# x\n")


def test_arms_restrict_the_tasks_and_unknown_arms_are_refused():
    cfg = ReproduceConfig(parts=("cmo", "cas"), arms=("CE", "CutMix"), seeds=2)
    assert tasks(cfg) == [("cmo", "CE", 0), ("cmo", "CutMix", 0), ("cmo", "CE", 1), ("cmo", "CutMix", 1),
                          ("cas", "CutMix", 0), ("cas", "CutMix", 1)]
    with pytest.raises(ValueError, match="unknown arms"):
        ReproduceConfig(arms=("CE", "Mixup"))
