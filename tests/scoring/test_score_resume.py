"""``fastcas score`` resumes from its chunks only when they are of the same run: same dataset
content, encoder settings and image size, each chunk tied to the keys it covers."""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

from fastcas.cli import main  # noqa: E402
from fastcas.dataset.reader import ShardReader  # noqa: E402
from fastcas.dataset.scorefile import read_scores  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

ARGS = ["--batch-size", "2", "--chunk-batches", "2", "--decoder", "torchvision", "--device", "cpu",
        "--no-progress"]


def _counting_measure(monkeypatch, stop_at=None):
    """Count PixelEncoder.measure calls (one per batch); raise KeyboardInterrupt at call ``stop_at``."""
    from fastcas.scoring.pixel import PixelEncoder

    real = PixelEncoder.measure
    calls = {"n": 0}

    def measure(self, images, sizes=None):
        calls["n"] += 1
        if stop_at is not None and calls["n"] == stop_at:
            raise KeyboardInterrupt
        return real(self, images, sizes)

    monkeypatch.setattr(PixelEncoder, "measure", measure)
    return calls


@pytest.fixture
def two_datasets(tmp_path):
    """Two datasets of the same size, class counts and keys but different images."""
    make_dataset(tmp_path / "a", counts=(6, 6), size=(40, 30), seed=1)
    make_dataset(tmp_path / "b", counts=(6, 6), size=(40, 30), seed=2)
    return tmp_path / "a", tmp_path / "b"


def _fresh(ds, out, *extra):
    assert main(["score", str(ds), "--out", str(out), *ARGS, *extra]) == 0
    return read_scores(out, keys=ShardReader(ds).keys)


def test_score_refuses_resume_chunks_of_another_dataset(two_datasets, tmp_path, monkeypatch, capsys):
    a, b = two_datasets
    want_b = _fresh(b, tmp_path / "b_alone.parquet")
    out = tmp_path / "scores.parquet"
    _counting_measure(monkeypatch, stop_at=4)  # 6 batches; killed after one chunk of two batches
    assert main(["score", str(a), "--out", str(out), *ARGS]) == 130
    assert len(list((tmp_path / "scores.parquet.work").glob("chunk-*.npz"))) == 1
    calls = _counting_measure(monkeypatch)
    assert main(["score", str(b), "--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "scores.parquet" in err and "another run" in err and "dataset_digest" in err and "--overwrite" in err
    assert not out.exists() and calls["n"] == 0  # refused before any work, nothing written
    assert main(["score", str(b), "--out", str(out), *ARGS, "--overwrite"]) == 0
    assert calls["n"] == 6  # every batch of b encoded afresh
    got = read_scores(out, keys=ShardReader(b).keys)
    assert np.array_equal(got.attrs, want_b.attrs) and np.array_equal(got.cas, want_b.cas)


def test_score_refuses_resume_chunks_of_another_image_size_or_encoder_version(two_datasets, tmp_path,
                                                                              monkeypatch, capsys):
    from fastcas.scoring.pixel import PixelEncoder

    a, _ = two_datasets
    out = tmp_path / "scores.parquet"
    _counting_measure(monkeypatch, stop_at=4)
    assert main(["score", str(a), "--out", str(out), *ARGS]) == 130
    _counting_measure(monkeypatch)
    assert main(["score", str(a), "--out", str(out), *ARGS, "--image-size", "32"]) == 2
    assert "image_size: 64 -> 32" in capsys.readouterr().err
    monkeypatch.setattr(PixelEncoder, "version", PixelEncoder.version + 1)
    assert main(["score", str(a), "--out", str(out), *ARGS]) == 2
    assert "settings" in capsys.readouterr().err


def test_score_resume_chunk_with_other_keys_is_refused(two_datasets, tmp_path):
    """A chunk whose stored key digest does not match the keys at its indices is not reused,
    even when the run record matches (a chunk copied in from elsewhere)."""
    from fastcas.scoring import run as scoring_run
    from fastcas.scoring.pixel import PixelEncoder

    a, _ = two_datasets
    work = tmp_path / "work"
    kw = dict(batch_size=2, chunk_batches=2, progress=False, decoder="torchvision", device="cpu", work_dir=work)
    scoring_run.encode_dataset(a, PixelEncoder().measure, **kw)
    first = scoring_run.chunk_files(work, 0, 1, 2, "torchvision")[0]
    with np.load(first) as z:
        parts = {k: z[k] for k in z.files}
    np.savez(first, **{**parts, "keys_digest": np.str_("0" * 16)})
    with pytest.raises(scoring_run.ResumeMismatch, match="covers other samples"):
        scoring_run.encode_dataset(a, PixelEncoder().measure, **kw)


def test_honest_resume_reuses_its_chunks(two_datasets, tmp_path, monkeypatch):
    a, _ = two_datasets
    want = _fresh(a, tmp_path / "alone.parquet", "--bins", "fixed")
    out = tmp_path / "scores.parquet"
    _counting_measure(monkeypatch, stop_at=4)
    assert main(["score", str(a), "--out", str(out), *ARGS]) == 130
    calls = _counting_measure(monkeypatch)
    # bins act after the chunks (on every sample at once): changing them still resumes
    assert main(["score", str(a), "--out", str(out), *ARGS, "--bins", "fixed"]) == 0
    assert calls["n"] == 4  # 6 batches: 2 from the surviving chunk, 4 encoded again
    assert not (tmp_path / "scores.parquet.work").exists()
    got = read_scores(out, keys=ShardReader(a).keys)
    assert np.array_equal(got.attrs, want.attrs) and np.array_equal(got.cas, want.cas)
