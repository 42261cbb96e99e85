"""``fastcas score`` decodes what the loader accepts (JPEG, PNG, WebP) and applies the loader's
pixel limit before decoding: a 60000x60000 header is refused naming the sample, never decoded."""
import io
import struct
import tarfile
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from fastcas.cli import main  # noqa: E402
from fastcas.core.errors import CorruptSampleError  # noqa: E402
from fastcas.dataset.indexer import IndexConfig, index_dataset  # noqa: E402
from fastcas.dataset.scorefile import read_scores  # noqa: E402
from tests.helpers import jpeg_bytes  # noqa: E402

N, SIZE = 12, (40, 32)


def _pixels(i: int) -> np.ndarray:
    """uint8 [H, W, 3]: what PIL decodes of test JPEG ``i`` (the source image of every format)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg_bytes(i, SIZE))).convert("RGB"))


def _encode(a: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _indexed(root, images: dict, labels: dict, max_pixels=None):
    """A ``fastcas index`` dataset at ``root`` of one tar with {key: (ext, bytes)} and .cls labels."""
    root.mkdir(parents=True)
    with tarfile.open(root / "src.tar", "w") as t:
        for key, (ext, data) in images.items():
            for name, body in ((f"{key}.{ext}", data), (f"{key}.cls", str(labels[key]).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                t.addfile(info, io.BytesIO(body))
    index_dataset([str(root / "src.tar")], root / "ds", IndexConfig(max_pixels=max_pixels))
    return root / "ds"


def _format_dataset(tmp_path, fmt: str):
    ext = {"PNG": "png", "WEBP": "webp", "JPEG": "jpg"}[fmt]
    images = {f"k{i:02d}": (ext, jpeg_bytes(i, SIZE) if fmt == "JPEG" else _encode(_pixels(i), fmt)) for i in range(N)}
    return _indexed(tmp_path / fmt.lower(), images, {f"k{i:02d}": i % 2 for i in range(N)})


def _score(ds, out, *extra) -> int:
    return main(["score", str(ds), "--out", str(out), "--device", "cpu", "--batch-size", "5", "--no-progress",
                 *extra])


def test_png_and_webp_datasets_score_like_the_same_pixels(tmp_path):
    from fastcas.dataset.reader import ShardReader
    from fastcas.scoring.run import _decode_all, decode_batch

    png, webp, jpg = (_format_dataset(tmp_path, f) for f in ("PNG", "WEBP", "JPEG"))
    # lossless formats decode to exactly the source pixels, whatever the container
    for fmt, ds in (("png", png), ("webp", webp)):
        r = ShardReader(ds)
        images, sizes = decode_batch([r[i].data for i in range(N)], 64)
        assert sizes.tolist() == [list(SIZE)] * N and tuple(images.shape) == (N, 3, 64, 64)
        got = _decode_all([r[i].data for i in range(N)], [fmt] * N, list(r.keys), list(r.keys), "cpu")
        want = [_pixels(int(k[1:])) for k in r.keys]
        assert all(np.array_equal(g.permute(1, 2, 0).numpy(), w) for g, w in zip(got, want))
    outs = {}
    for name, ds in (("png", png), ("webp", webp), ("jpg", jpg)):
        outs[name] = tmp_path / f"{name}.parquet"
        assert _score(ds, outs[name], "--decoder", "torchvision") == 0
    keys = ShardReader(png).keys
    a, b = read_scores(outs["png"], keys=keys), read_scores(outs["webp"], keys=keys)
    assert np.array_equal(a.attrs, b.attrs) and np.array_equal(a.cas, b.cas)  # PNG == lossless WebP: exact
    # the JPEGs themselves decode (libjpeg-turbo vs PIL's libjpeg) to within a grey level on average
    rj, rp = ShardReader(jpg), ShardReader(png)
    xj, _ = decode_batch([rj[i].data for i in range(N)], 32)
    xp, _ = decode_batch([rp[i].data for i in range(N)], 32)
    assert (xj.float() - xp.float()).abs().mean() < 1.0


def test_a_mixed_jpeg_png_webp_and_16bit_png_dataset_scores(tmp_path):
    from PIL import Image

    images = {}
    for i in range(N):
        fmt = ("JPEG", "PNG", "WEBP")[i % 3]
        a = _pixels(i)
        if i == 4:  # a 16-bit greyscale PNG: scaled to 8 bits, not clipped
            buf = io.BytesIO()
            Image.fromarray(a[..., 0].astype(np.uint16) * 257).save(buf, "PNG")
            images[f"k{i:02d}"] = ("png", buf.getvalue())
            continue
        images[f"k{i:02d}"] = ({"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt],
                               jpeg_bytes(i, SIZE) if fmt == "JPEG" else _encode(a, fmt))
    ds = _indexed(tmp_path / "mixed", images, {f"k{i:02d}": i % 3 for i in range(N)})
    assert _score(ds, tmp_path / "tv.parquet", "--decoder", "torchvision") == 0
    from fastcas.dataset.reader import ShardReader
    from fastcas.scoring.run import decode_batch

    r = ShardReader(ds)
    j = list(r.keys).index("k04")
    grey, _ = decode_batch([r[j].data], SIZE[0])
    assert abs(float(grey.float().mean()) - float(_pixels(4)[..., 0].mean())) < 2  # not 255 everywhere
    assert len(read_scores(tmp_path / "tv.parquet", keys=r.keys).cas) == N


@pytest.mark.dali
def test_png_and_webp_datasets_score_through_the_dali_decoder(tmp_path):
    from fastcas.dataset.reader import ShardReader

    png, webp = _format_dataset(tmp_path, "PNG"), _format_dataset(tmp_path, "WEBP")
    for name, ds in (("png", png), ("webp", webp)):
        assert _score(ds, tmp_path / f"{name}.parquet", "--decoder", "dali", "--workers", "0") == 0
    keys = ShardReader(png).keys
    a, b = read_scores(tmp_path / "png.parquet", keys=keys), read_scores(tmp_path / "webp.parquet", keys=keys)
    assert np.array_equal(a.attrs, b.attrs) and np.array_equal(a.cas, b.cas)


def _png_header_bomb(w=60000, h=60000) -> bytes:
    """A small valid PNG whose IHDR declares w x h (checksum fixed): a header-only bomb."""
    data = bytearray(_encode(np.full((16, 16, 3), 99, np.uint8), "PNG"))
    ihdr = bytearray(data[12:29])  # b"IHDR" + its 13 bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.fixture
def bomb_dataset(tmp_path):
    """7 samples, ``k03`` a 60000x60000 JPEG header and ``k05`` a 60000x60000 PNG header, indexed
    with no pixel limit (as an index built with a larger --max-pixels would hold them)."""
    from tests.dataset.test_imagehdr import _bomb

    images = {f"k{i:02d}": ("jpg", jpeg_bytes(i, SIZE)) for i in range(7)}
    images["k03"] = ("jpg", _bomb(60000, 60000))
    images["k05"] = ("png", _png_header_bomb())
    return _indexed(tmp_path / "bomb", images, {f"k{i:02d}": i % 2 for i in range(7)}, max_pixels=None)


@pytest.fixture
def no_decoding(monkeypatch):
    """torchvision's decoders fail the test if called: the refusal must come before any decode."""
    import torchvision.io

    def refuse(*a, **kw):
        raise AssertionError("a decoder was called")

    from PIL import Image

    for name in ("decode_jpeg", "decode_image", "decode_png", "decode_webp"):
        monkeypatch.setattr(torchvision.io, name, refuse)
    monkeypatch.setattr(Image, "open", refuse)


def test_a_huge_header_is_refused_before_decoding_naming_the_sample(tmp_path, bomb_dataset, no_decoding, capsys):
    from fastcas.scoring.pixel import PixelEncoder
    from fastcas.scoring.run import encode_dataset

    with pytest.raises(CorruptSampleError, match=r"sample 'k03' in .*bomb/ds: image declares 60000x60000 = "
                                                 r"3,600,000,000 pixels, over the limit of 178,956,970") as info:
        encode_dataset(bomb_dataset, PixelEncoder().measure, batch_size=4, progress=False, decoder="torchvision",
                       device="cpu")
    assert info.value.key == "k03"
    out = tmp_path / "s.parquet"
    assert _score(bomb_dataset, out, "--decoder", "torchvision") == 2
    err = capsys.readouterr().err
    assert "fastcas score: error: sample 'k03'" in err and "60000x60000" in err and "--max-pixels" in err
    assert not out.exists()
    # the limit is the option's: a smaller one refuses the ordinary 40x32 images too, naming the first
    with pytest.raises(CorruptSampleError, match=r"sample 'k00' .*40x32 = 1,280 pixels, over the limit of 1,000"):
        encode_dataset(bomb_dataset, PixelEncoder().measure, batch_size=4, progress=False, decoder="torchvision",
                       device="cpu", max_pixels=1000)


def test_the_png_header_bomb_is_refused_too(tmp_path, bomb_dataset, no_decoding):
    from fastcas.dataset.reader import ShardReader
    from fastcas.scoring.run import decode_batch

    r = ShardReader(bomb_dataset)
    j = list(r.keys).index("k05")
    with pytest.raises(CorruptSampleError, match=r"sample 'k05': image declares 60000x60000"):
        decode_batch([r[j].data], 32, keys=["k05"])


@pytest.mark.dali
def test_the_dali_decoder_refuses_a_huge_header_instead_of_scoring_another_image(tmp_path, bomb_dataset):
    from fastcas.scoring.pixel import PixelEncoder
    from fastcas.scoring.run import encode_dataset

    with pytest.raises(CorruptSampleError, match=r"sample 'k03' in .*60000x60000"):
        encode_dataset(bomb_dataset, PixelEncoder().measure, batch_size=4, progress=False, decoder="dali",
                       device="cpu", py_workers=0)


def test_an_incomplete_or_undecodable_image_is_named(no_decoding):
    from fastcas.scoring.run import decode_batch

    png = _encode(np.full((8, 8, 3), 7, np.uint8), "PNG")  # (PIL's open is patched out here)
    with pytest.raises(CorruptSampleError, match=r"sample 'cut' in DS: truncated PNG \(no IEND chunk\); "
                                                 r".*re-run `fastcas index`"):
        decode_batch([png, png[: len(png) // 2]], 16, keys=["whole", "cut"], where=" in DS")
    with pytest.raises(CorruptSampleError, match=r"sample 'gif': not a JPEG, PNG or WebP image"):
        decode_batch([b"GIF89a" + bytes(40)], 16, keys=["gif"])


def test_a_body_the_decoder_rejects_is_named():
    """A PNG whose compressed data is destroyed (torchvision 0.29's decode_png dies of SIGSEGV on
    it; PIL raises) and a JPEG body torchvision rejects: each named, the process survives."""
    from fastcas.scoring.run import decode_batch

    png = bytearray(_encode(_pixels(2), "PNG"))
    at = png.index(b"IDAT") + 8
    png[at : at + 40] = bytes(40)  # header intact, compressed data destroyed
    good = jpeg_bytes(3, SIZE)
    with pytest.raises(CorruptSampleError, match=r"sample 'bad' in DS: cannot be decoded") as info:
        decode_batch([good, bytes(png)], 16, keys=["good", "bad"], where=" in DS")
    assert info.value.key == "bad"
    j12 = bytearray(jpeg_bytes(4, SIZE))
    j12[j12.index(b"\xff\xc0") + 4] = 12  # a 12-bit JPEG: a valid header libjpeg's 8-bit decoder refuses
    with pytest.raises(CorruptSampleError, match=r"sample 'j12': cannot be decoded \(.*precision 12"):
        decode_batch([good, bytes(j12), good], 16, keys=["good", "j12", "good2"])
