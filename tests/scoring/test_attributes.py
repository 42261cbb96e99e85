"""Attribute encoders: vocabulary validation, pixel bins, torchvision decode path, CLIP weights
handling, visual dictionary files, CLIP scoring end to end (split over ranks, torchrun)."""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from fastcas.dataset.scorefile import read_scores

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture
def tiny_clip(tmp_path):
    """A model-config file for a very small open_clip model (random weights)."""
    pytest.importorskip("open_clip")
    path = tmp_path / "fastcas-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


@pytest.fixture
def dataset(tmp_path):
    from tests.helpers import make_dataset

    make_dataset(tmp_path / "ds", counts=(7, 5, 3), size=(40, 30))
    return tmp_path / "ds"


# -- vocabulary ---------------------------------------------------------------------------
def _vocab():
    from fastcas.scoring.vocabulary import load_vocabulary

    return json.loads(json.dumps(load_vocabulary()))


def test_packaged_vocabulary_is_valid_and_sourced():
    from fastcas.scoring.vocabulary import load_vocabulary, vocabulary_digest

    v = load_vocabulary()
    assert len(v["primaries"]) == 20 and sum(len(p["values"]) for p in v["primaries"]) >= 300
    assert "{value}" in v["prompt"] and vocabulary_digest(v) == vocabulary_digest(_vocab())


@pytest.mark.parametrize("edit, match", [
    (lambda v: v.pop("version"), "version"),
    (lambda v: v.update(prompt="no placeholder"), "prompt"),
    (lambda v: v["primaries"].pop(), "must have 20 primaries, has 19"),
    (lambda v: v["primaries"][3].update(source=""), "primary 'pattern' does not state its 'source'"),
    (lambda v: v["primaries"][0]["values"].append("red"), "primary 'color' lists value 'red' twice"),
    (lambda v: v["primaries"][1].update(name="color"), "primary 'color' appears twice"),
    (lambda v: [p.update(values=p["values"][:5]) for p in v["primaries"]], "100 secondary values"),
])
def test_invalid_vocabulary_files_are_rejected(tmp_path, edit, match):
    from fastcas.scoring.vocabulary import load_vocabulary

    v = _vocab()
    edit(v)
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(v))
    with pytest.raises(ValueError, match=match):
        load_vocabulary(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="vocab.json: not valid JSON"):
        load_vocabulary(path)
    with pytest.raises(FileNotFoundError, match="no such vocabulary file"):
        load_vocabulary(tmp_path / "missing.json")


# -- pixel encoder ------------------------------------------------------------------------
def test_pixel_encoder_uint8_red_black_and_determinism():
    torch = pytest.importorskip("torch")
    from fastcas.scoring.bins import fixed_bins
    from fastcas.scoring.pixel import PRIMARIES, PixelEncoder

    x = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    x[0, 0] = 255                     # pure red
    names = fixed_bins().secondary_names()
    enc = PixelEncoder()
    ids = enc.encode(x)
    label = lambda i, p: names[PRIMARIES.index(p)][ids[i, PRIMARIES.index(p)]]
    assert label(0, "color") == "red" and label(1, "color") == "achromatic"
    assert label(1, "brightness") == "< 0.2" and label(1, "lighting") == "< 0.1"
    assert np.array_equal(enc.encode(x.float() / 255), ids)       # uint8 and float agree
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (4, 3, 24, 24), generator=g, dtype=torch.uint8)
    assert np.array_equal(enc.encode(noise), enc.encode(noise.clone()))
    assert np.array_equal(enc.measure(noise[1:3]), enc.measure(noise)[1:3])  # per image, batch-independent
    assert ids.shape == (2, len(PRIMARIES)) and ids.dtype == np.int64 and len(PRIMARIES) >= 10
    with pytest.raises(ValueError, match=r"needs images \[B, 3, H, W\]"):
        enc.encode(x[:, :1])


def test_pixel_foreground_measurements():
    torch = pytest.importorskip("torch")
    from fastcas.scoring.pixel import PRIMARIES, PixelEncoder

    x = torch.zeros(3, 3, 32, 32)
    x[0, :, 8:24, 14:18] = 1.0        # one vertical bar, centred
    x[1, :, 14:18, 2:30] = 1.0        # one horizontal bar
    x[2, :, 2:6, 2:6] = 1.0           # two squares, off centre
    x[2, :, 2:6, 10:14] = 1.0
    m = PixelEncoder().measure(x)
    col = lambda p: m[:, PRIMARIES.index(p)]
    assert col("count").tolist() == [1, 1, 2]
    assert abs(col("orientation")[0] - 90) < 1 and min(col("orientation")[1], 180 - col("orientation")[1]) < 1
    assert col("shape")[0] > 3 and col("shape")[1] > 6
    assert abs(col("size")[0] - 64 / 1024) < 1e-9
    assert col("position in frame")[0] < 0.05 < col("position in frame")[2]


# -- decode path and split ----------------------------------------------------------------
def test_torchvision_decode_batch_sizes(dataset):
    pytest.importorskip("torchvision")
    from fastcas.dataset.reader import ShardReader
    from fastcas.scoring.run import decode_batch

    r = ShardReader(dataset)
    images, sizes = decode_batch([r[i].data for i in range(3)], 48)
    assert tuple(images.shape) == (3, 3, 48, 48) and str(images.dtype) == "torch.uint8"
    assert sizes.tolist() == [[40, 30]] * 3


@pytest.mark.parametrize("decoder", ["torchvision", "dali"])
def test_rank_batches_cover_every_sample_once(decoder):
    from fastcas.scoring.run import rank_batches

    parts = [rank_batches(23, 4, r, 3, decoder) for r in range(3)]
    allidx = np.concatenate([b for p in parts for b in p])
    assert sorted(allidx.tolist()) == list(range(23))
    if decoder == "torchvision":  # whole global batches: same composition as one process
        assert [b.tolist() for b in parts[1]] == [[4, 5, 6, 7], [16, 17, 18, 19]]
    with pytest.raises(ValueError, match="bad split"):
        rank_batches(23, 4, 3, 3, decoder)


def test_resume_with_torchvision_decoder(dataset, tmp_path):
    pytest.importorskip("torchvision")
    from fastcas.scoring import run as scoring_run
    from fastcas.scoring.pixel import PixelEncoder

    enc = PixelEncoder()
    kw = dict(batch_size=2, chunk_batches=2, progress=False, decoder="torchvision", device="cpu")
    full_i, full_f = scoring_run.encode_dataset(dataset, enc.encode, **kw)
    calls = {"n": 0}

    def flaky(images, sizes):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return enc.encode(images, sizes)

    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        scoring_run.encode_dataset(dataset, flaky, work_dir=work, **kw)
    assert len(scoring_run.chunk_files(work, 0, 1, 2, "torchvision")) == 2
    i, f = scoring_run.encode_dataset(dataset, flaky, work_dir=work, **kw)
    assert calls["n"] == 6 + 4  # 8 batches: 4 from chunks, the other 4 encoded again
    assert np.array_equal(i, full_i) and np.array_equal(f, full_f)
    with pytest.raises(ValueError, match=r"resume chunks are of another run \(chunk_batches: 2 -> 3\)"):
        scoring_run.encode_dataset(dataset, enc.encode, work_dir=work, **{**kw, "chunk_batches": 3})


# -- CLIP -----------------------------------------------------------------------------------
def test_clip_weights_file_tag_and_errors(tiny_clip, tmp_path):
    torch = pytest.importorskip("torch")
    from fastcas.scoring.clip import ClipEncoder

    enc = ClipEncoder(str(tiny_clip))
    assert enc.metadata()["weights_hash"] == "random" and enc.image_size == 32
    again = ClipEncoder(str(tiny_clip))  # random init is seeded: same model in every process
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(enc.embed_images(x), again.embed_images(x))
    ckpt = tmp_path / "tiny.pt"
    with torch.no_grad():
        for prm in enc.model.parameters():
            prm.add_(0.01)
    torch.save(enc.model.state_dict(), ckpt)
    loaded = ClipEncoder(str(tiny_clip), str(ckpt))
    assert loaded.weights_hash not in ("random",) and len(loaded.weights_hash) == 16
    np.testing.assert_allclose(loaded.embed_images(x), enc.embed_images(x), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="missing.pt: no such CLIP weights file"):
        ClipEncoder(str(tiny_clip), str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="neither a weights file nor a pretrained tag"):
        ClipEncoder(str(tiny_clip), "laion-nonsense")
    other = dict(TINY_CLIP, embed_dim=16)
    (tmp_path / "fastcas-tiny-other.json").write_text(json.dumps(other))
    torch.save(ClipEncoder(str(tmp_path / "fastcas-tiny-other.json")).model.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: CLIP weights do not fit model fastcas-tiny-clip"):
        ClipEncoder(str(tiny_clip), str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="unknown open_clip model 'no-such-model'"):
        ClipEncoder("no-such-model")


def test_dictionary_files_and_errors(tmp_path):
    from fastcas.scoring.clip import VisualDictionary, build_dictionary

    anchors = np.eye(3, dtype=np.float32)
    d = build_dictionary([np.array([[1, 0.1, 0], [0, 0.2, 1]], np.float32)], anchors, ["p"], meta={"model": "m"})
    d.save(tmp_path / "d.npz")
    info = json.loads((tmp_path / "d.json").read_text())
    assert info["hash"] == d.digest() and info["sizes"] == [2] and info["model"] == "m"
    with pytest.raises(FileNotFoundError, match="no such visual dictionary"):
        VisualDictionary.load(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.npz: not a fastcas visual dictionary"):
        VisualDictionary.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        build_dictionary([anchors], anchors, ["p"], top_k=0)


def _score(args):
    from fastcas.cli import main

    return main(["score", *map(str, args), "--no-progress", "--device", "cpu"])


def test_clip_score_cli_split_merge_equals_single_and_reference(dataset, tiny_clip, tmp_path, capsys):
    common = ["--encoder", "clip", "--model", tiny_clip, "--batch-size", "4"]
    one = tmp_path / "one.parquet"
    assert _score([dataset, "--out", one, *common]) == 0
    assert (tmp_path / "one.parquet.dictionary.npz").exists() and (tmp_path / "one.parquet.dictionary.json").exists()
    parts = [tmp_path / f"p{r}.parquet" for r in range(2)]
    for r, part in enumerate(parts):
        assert _score([dataset, "--out", part, "--rank", r, "--world-size", 2, *common,
                       "--dictionary", tmp_path / "split.npz"]) == 0
    merged = tmp_path / "merged.parquet"
    assert _score([dataset, "--out", merged, "--merge", *parts, *common, "--dictionary", tmp_path / "split.npz"]) == 0
    a, b = read_scores(one), read_scores(merged)
    assert a.keys == b.keys and np.array_equal(a.attrs, b.attrs) and np.array_equal(a.cas, b.cas)
    assert a.attrs.shape[1] == 20 and a.metadata["dictionary_hash"] == b.metadata["dictionary_hash"]
    for k in ("encoder", "model", "weights_hash", "dictionary_hash", "vocabulary_version"):
        assert a.metadata[k], k
    # validation-style scoring with the training file's ranks and its dictionary
    val = tmp_path / "val.parquet"
    assert _score([dataset, "--out", val, *common, "--dictionary", tmp_path / "one.parquet.dictionary.npz",
                   "--train-scores", one]) == 0
    assert np.array_equal(read_scores(val).cas, a.cas)  # same images, same ranks
    capsys.readouterr()
    assert _score([dataset, "--out", tmp_path / "v2.parquet", *common, "--reference", one,
                   "--dictionary", tmp_path / "fresh.npz", "--text-only"]) == 2
    assert "reference was scored with dictionary" in capsys.readouterr().err
    assert _score([dataset, "--out", tmp_path / "m2.parquet", "--merge", parts[1], *common]) == 2
    assert "are not ranks 0..0 of one split" in capsys.readouterr().err
    assert not (tmp_path / "m2.parquet").exists()


def test_pixel_score_cli_torchvision_and_stats(dataset, tmp_path):
    from fastcas.cli import main
    from fastcas.dataset.reader import ShardReader

    out = tmp_path / "s.parquet"
    assert _score([dataset, "--out", out, "--batch-size", "4", "--decoder", "torchvision"]) == 0
    t = read_scores(out, keys=ShardReader(dataset).keys)
    assert t.metadata["decoder"] == "torchvision" and t.metadata["encoder"] == "pixel"
    assert (t.cas >= t.attrs.shape[1]).all()
    st = tmp_path / "st"
    assert main(["stats", str(dataset), "--scores", str(out), "--out", str(st), "--draws", "1000"]) == 0
    s = json.loads((st / "stats.json").read_text())
    assert set(s["table1"]) >= {"uniform", "cas_weighted"} and s["table1"]["b"] == 1.2
    assert sum(v["size"] for v in s["cas"]["subsets"].values()) == 15
    # Table 1 moments against an independent computation from the score file (p_i ∝ CAS_i ** b)
    c = t.cas.astype(np.float64)
    w = c ** 1.2
    for name, q in (("uniform", np.full(len(c), 1 / len(c))), ("cas_weighted", w / w.sum())):
        mean = (q * c).sum()
        assert s["table1"][name]["mean"] == pytest.approx(mean, rel=1e-9)
        assert s["table1"][name]["std"] == pytest.approx(np.sqrt((q * (c - mean) ** 2).sum()), rel=1e-9)
    for png in ("classes.png", "cas.png", "attributes.png", "cas_per_class.png"):
        assert (st / png).stat().st_size > 1000


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_single_process(dataset, tiny_clip, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    common = ["--device", "cpu", "--encoder", "clip", "--model", str(tiny_clip), "--batch-size", "4", "--no-progress"]
    one = tmp_path / "one.parquet"
    assert _score([dataset, "--out", one, *common[:-1]]) == 0
    out = tmp_path / "tr.parquet"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("WORLD_SIZE", None)
    from tests.torchrun_util import run_torchrun

    # a free port per attempt, retried if another process took it before the rendezvous bound it
    proc = run_torchrun(["-m", "fastcas", "score", str(dataset), "--out", str(out), *common], env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = read_scores(one), read_scores(out)
    assert a.keys == b.keys and np.array_equal(a.attrs, b.attrs) and np.array_equal(a.cas, b.cas)
    assert not list(tmp_path.glob("tr.parquet.part-*"))  # parts merged and removed
