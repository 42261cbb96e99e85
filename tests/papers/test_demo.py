"""The controlled-imbalance demo data: tints long-tailed inside every class, a validation
split balanced over them, and CAS (pixel encoder v2, fitted bins) ranking the rare tints
above the other images of their class (within-class AUC >= 0.9)."""
import numpy as np
import pytest

from fastcas.tools.demo.tint import RARE, TINTS, TRAIN_SHARES, assign_tints, load_tints, render, within_class_auc


def test_assign_tints_exact_long_tailed_counts_per_class():
    labels = np.repeat(np.arange(3), [1000, 200, 30])
    t = assign_tints(labels, TRAIN_SHARES, seed=0, purpose=1)
    assert np.bincount(t[labels == 0]).tolist() == [850, 100, 40, 10]
    assert np.bincount(t[labels == 2], minlength=4).min() >= 1  # every tint present
    v = assign_tints(labels, [0.25] * 4, seed=0, purpose=2)
    assert np.bincount(v[labels == 0]).tolist() == [250] * 4  # validation balanced over tints
    assert np.array_equal(t, assign_tints(labels, TRAIN_SHARES, seed=0, purpose=1))


def test_render_ink_and_paper():
    g = np.array([[0, 255]], np.uint8)
    for k, (_, ink, paper, _) in enumerate(TINTS):
        rgb = render(g, k)
        assert rgb.shape == (1, 2, 3)
        np.testing.assert_allclose(rgb[0, 1] / 255, ink, atol=0.01)
        np.testing.assert_allclose(rgb[0, 0] / 255, paper, atol=0.01)  # pixel (0, 0) is on an unshaded stripe


def test_within_class_auc():
    y = np.array([0, 0, 0, 1, 1, 1])
    pos = np.array([1, 0, 0, 1, 0, 0], bool)
    assert within_class_auc([5, 1, 2, 9, 3, 4], y, pos) == 1.0
    assert within_class_auc([0, 1, 2, 0, 3, 4], y, pos) == 0.0
    assert within_class_auc([2, 2, 2, 2, 2, 2], y, pos) == 0.5
    # pooled within classes: a positive is never compared with another class's negatives
    assert within_class_auc([5, 1, 2, 5, 9, 9], y, pos) == 0.5
    with pytest.raises(ValueError, match="no class has both"):
        within_class_auc([1, 2], [0, 1], [True, False])


def _grey_items(n, seed):
    """Fashion-MNIST-like 28 px grey items: a bright shape with texture on black."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    for i in range(n):
        cy, cx = rng.uniform(10, 18, 2)
        ry, rx = rng.uniform(4, 12, 2)
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        out[i][m] = np.clip(rng.normal(rng.uniform(90, 230), 25, m.sum()), 0, 255).astype(np.uint8)
    return out


def _score_tinted(tmp_path, images, labels, tints):
    from fastcas.cli import main
    from fastcas.dataset.ingest import encode_jpeg
    from fastcas.dataset.scorefile import read_scores
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards

    samples = [RawSample(f"t{i:05d}", encode_jpeg(render(images[i], int(tints[i]))), int(labels[i]))
               for i in range(len(labels))]
    write_shards(samples, tmp_path / "ds", ShardWriterConfig(shard_size=1000, class_names=tuple(
        f"c{k}" for k in range(int(labels.max()) + 1))))
    assert (
        main(
            [
                "score",
                "--device",
                "cpu",
                str(tmp_path / "ds"),
                "--out",
                str(tmp_path / "s.parquet"),
                "--no-progress",
                "--image-size",
                "28",
                "--batch-size",
                "128",
            ]
        )
        == 0
    )
    return read_scores(tmp_path / "s.parquet", keys=[s.key for s in samples])


def test_rare_tints_score_higher_cas_within_class(tmp_path):
    labels = np.repeat(np.arange(2), [400, 200])
    tints = assign_tints(labels, TRAIN_SHARES, seed=0, purpose=1)
    t = _score_tinted(tmp_path, _grey_items(len(labels), 1), labels, tints)
    auc = within_class_auc(t.cas, t.labels, np.isin(tints, RARE))
    assert auc >= 0.9, auc


@pytest.mark.slow
def test_rare_tints_auc_on_real_fashion_mnist(tmp_path):
    from fastcas.dataset.ingest import FASHION_MNIST_DIR, load_fashion_mnist

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():  # never download in tests
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    images, labels = load_fashion_mnist(FASHION_MNIST_DIR, "train")
    from fastcas.dataset.lt import lt_indices

    keep = lt_indices(labels, 100, 0)[::5]  # a fifth of the demo's training set
    tints = assign_tints(labels[keep], TRAIN_SHARES, seed=0, purpose=1)
    t = _score_tinted(tmp_path, images[keep], labels[keep], tints)
    assert within_class_auc(t.cas, t.labels, np.isin(tints, RARE)) >= 0.9
    assert t.cas.std() / t.cas.mean() >= 0.2


def test_load_tints_follows_key_order(tmp_path):
    import json

    (tmp_path / "tints.json").write_text(json.dumps({"a": 2, "b": 0}))
    assert load_tints(tmp_path, ["b", "a"]).tolist() == [0, 2]
    assert load_tints(tmp_path / "none", ["a"]) is None
