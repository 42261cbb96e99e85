"""The attribute-kind test of the pixel encoder: exact rare counts per class, the rendered
kinds, and CAS AUC / draw share on measurements with a known outlier attribute."""
import numpy as np
import pytest

from fastcas.scoring.primaries import PRIMARIES
from fastcas.tools.reproduce.attributes import KINDS, markdown_table, rare_mask, score_kind


def test_rare_mask_has_exact_counts_per_class_and_is_keyed():
    y = np.repeat(np.arange(3), 200)
    m = rare_mask(y, 0.05, seed=0, kind=1, share_index=1)
    assert [int(m[y == k].sum()) for k in range(3)] == [10, 10, 10]
    assert np.array_equal(m, rare_mask(y, 0.05, seed=0, kind=1, share_index=1))
    assert not np.array_equal(m, rare_mask(y, 0.05, seed=0, kind=2, share_index=1))


def test_every_kind_renders_rgb_uint8_that_differs_from_the_common_image():
    g = np.zeros((28, 28), np.uint8)
    g[6:22, 9:19] = 200  # a light, upright object on black, like Fashion-MNIST
    common = np.repeat(g[..., None], 3, -1)
    for name, f in KINDS.items():
        x = f(g)
        assert x.shape == (28, 28, 3) and x.dtype == np.uint8, name
        assert not np.array_equal(x, common), name


def test_an_outlying_attribute_gets_high_cas_and_more_draws():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 300)
    common = rng.normal(size=(600, len(PRIMARIES)))
    common[:, PRIMARIES.index("color")] = 0  # categorical: a hue sector id
    rare_raw = common + 50.0
    rare_raw[:, PRIMARIES.index("color")] = 3
    rare = rare_mask(y, 0.05, seed=0, kind=0, share_index=0)
    r = score_kind(common, rare_raw, y, rare)
    assert r["share_uniform"] == pytest.approx(0.05)
    assert r["auc"] > 0.9 and r["share_cas"] > r["share_uniform"]
    assert r["ratio"] == pytest.approx(r["share_cas"] / r["share_uniform"])
    same = score_kind(common, common, y, rare)  # no attribute: the mask is unrelated to CAS
    assert 0.2 < same["auc"] < 0.8


def test_markdown_marks_kinds_below_the_threshold():
    rows = [{"kind": k, "share": s, "auc": a, "ratio": 1.5} for k, a in (("a", 0.95), ("b", 0.7))
            for s in (0.02, 0.1)]
    md = markdown_table(rows)
    assert "| a | 0.950 | 0.950 |" in md and md.count("| yes |") == 1 and "no (AUC < 0.9" in md
