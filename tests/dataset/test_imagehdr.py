"""Image headers (fastcas.dataset.imagehdr) and the loader's use of them."""
import io
import struct
import time

import numpy as np
import pytest

from fastcas.dataset import imagehdr
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards
from tests.helpers import jpeg_bytes


def _pil(fmt, size=(40, 24), **kw):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, fmt, **kw)
    return buf.getvalue()


def _exif_jpeg(orientation: int, big_endian=False) -> bytes:
    """An asymmetric 80x40 JPEG (left half white, top band green, a blue corner) with an APP1
    Exif block holding IFD0 orientation, in Intel (II) or Motorola (MM) byte order."""
    from PIL import Image

    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = 255
    a[:10, :, 1] = 128
    a[30:, 60:, 2] = 200
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    e = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    tiff += struct.pack(e + "H", 2)  # two IFD0 entries: a decoy tag, then orientation
    tiff += struct.pack(e + "HHI", 0x010F, 2, 4) + b"abc\0"
    tiff += struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(e + "I", 0)
    app1 = b"Exif\0\0" + tiff
    data = buf.getvalue()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def _bomb(w=20000, h=20000) -> bytes:
    """A tiny, valid-looking JPEG whose frame header declares w x h (header-only bomb)."""
    data = bytearray(jpeg_bytes(1, (16, 16)))
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def test_formats_sizes_and_truncation():
    j, p, w = jpeg_bytes(0, (40, 24)), _pil("PNG"), _pil("WEBP", quality=80)
    wl = _pil("WEBP", lossless=True)
    assert imagehdr.parse(j) == ("jpeg", 40, 24, 1)
    assert imagehdr.parse(p) == ("png", 40, 24, 1)
    assert imagehdr.parse(w)[:3] == ("webp", 40, 24) and imagehdr.parse(wl)[:3] == ("webp", 40, 24)
    for data in (j, p, w):
        assert imagehdr.read(data[: len(data) // 2]) is None  # truncated
    with pytest.raises(imagehdr.ImageHeaderError, match="not a JPEG, PNG or WebP"):
        imagehdr.parse(b"GIF89a....")
    with pytest.raises(imagehdr.ImageHeaderError, match="no end-of-image"):
        imagehdr.parse(j[:-2])


def test_trailing_bytes_after_eoi_are_valid():
    """17.4: bytes after EOI (phone trailers) do not make a JPEG invalid."""
    j = jpeg_bytes(3, (40, 24))
    assert imagehdr.parse(j + b"\0" * 1000 + b"TRAILER") == ("jpeg", 40, 24, 1)
    # but a JPEG cut inside its scan data, followed by junk without an EOI, is not
    assert imagehdr.read(j[: len(j) // 2] + b"junk") is None


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("orientation,display", [(1, (80, 40)), (3, (80, 40)), (6, (40, 80)), (8, (40, 80))])
def test_exif_orientation_both_byte_orders(orientation, display, big_endian):
    from PIL import Image, ImageOps

    data = _exif_jpeg(orientation, big_endian)
    h = imagehdr.parse(data)
    assert (h.width, h.height, h.orientation) == (80, 40, orientation)
    assert h.display_size == display
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size == display  # PIL agrees


def test_pixel_limit():
    h = imagehdr.parse(_bomb())
    assert (h.width, h.height) == (20000, 20000)
    with pytest.raises(imagehdr.ImageHeaderError, match="400,000,000 pixels, over the limit"):
        imagehdr.check_pixels(h, imagehdr.DEFAULT_MAX_PIXELS)
    imagehdr.check_pixels(h, None)


def _dataset(path, datas, labels=None):
    samples = [RawSample(f"k{i:03d}", d, (labels or [0] * len(datas))[i]) for i, d in enumerate(datas)]
    write_shards(samples, path, ShardWriterConfig(shard_size=4, class_names=("a", "b")))
    return path


def _epoch(ds, baseline=False, **kw):
    from fastcas.loading.loader import Loader

    if baseline:
        from fastcas.loading.baseline import TorchvisionLoader as Loader  # noqa: F811
    opts = dict(train=False, image_size=16, last_batch="partial", py_workers=0, device="cpu")
    opts.update(kw)
    loader = Loader(ds, opts.pop("batch", 4), **opts)
    out = [(x.cpu().numpy().copy(), y.cpu().numpy().copy()) for x, y in loader]
    loader.close()
    return loader, out


def test_loader_trains_on_jpeg_with_trailing_bytes(tmp_path):
    """17.4 before: every draw of such a sample was skipped with a warning; now it is read."""
    datas = [jpeg_bytes(i, (32, 32)) + (b"\0\0EXTRA" * 50 if i % 2 else b"") for i in range(4)]
    ds = _dataset(tmp_path / "ds", datas)
    loader, batches = _epoch(ds, weights="uniform", train=True, batch=4)
    assert loader.skipped == {}
    assert len(batches) == 1 and batches[0][0].shape == (4, 3, 16, 16)


@pytest.mark.parametrize("device,baseline", [("cpu", False), ("cpu", True),
                                             pytest.param("cuda", False, marks=pytest.mark.gpu)])
def test_exif_rotated_training_crop_is_not_stretched(tmp_path, device, baseline):
    """17.5: the crop window is drawn on the displayed size; DALI (which applies EXIF
    rotation, also in the ROI decode; on the GPU through nvImageCodec) gives the same pixels
    as PIL's exif_transpose + resize of that window; so does the torchvision baseline."""
    from PIL import Image, ImageOps

    from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD, augment_key, crop_windows, flips

    data = _exif_jpeg(6)
    ds = _dataset(tmp_path / "ds", [data] * 4)
    S = 32
    _, batches = _epoch(ds, baseline, train=True, image_size=S, batch=4, seed=5, device=device)
    images = batches[0][0]
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")  # 40 wide, 80 tall
    W, H = shown.size
    windows = crop_windows(augment_key(5, 0, 0), np.arange(4), np.array([[W, H]] * 4))
    flip = flips(augment_key(5, 0, 0), np.arange(4))
    errs = []
    for b in range(4):
        x, y, w, h = windows[b]
        box = (round(x * W), round(y * H), round((x + w) * W), round((y + h) * H))
        ref = np.asarray(shown.crop(box).resize((S, S), Image.BILINEAR), np.float32) / 255
        if flip[b]:
            ref = ref[:, ::-1]
        got = images[b].transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
        errs.append(np.abs(got - ref).mean())
    assert max(errs) < 0.06, errs  # resampling filters differ; a stretched (stored-size) crop is ~0.2+


def test_header_only_bomb_is_refused_quickly(tmp_path):
    """17.6: a 20000x20000 header is skipped and counted (not decoded), strict names the key,
    and max_pixels is configurable."""
    datas = [jpeg_bytes(i, (32, 32)) for i in range(4)]
    datas[1] = _bomb()
    ds = _dataset(tmp_path / "ds", datas)
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="k001"):
        loader, batches = _epoch(ds, batch=4)
    assert time.perf_counter() - t0 < 10
    assert loader.skipped == {"k001": 1} and batches[0][0].shape == (4, 3, 16, 16)
    with pytest.raises(Exception, match=r"k001.*over the limit"):
        _epoch(ds, batch=4, strict=True)
    # a lower limit refuses ordinary images too; None switches the check off
    with pytest.raises(Exception, match=r"k000.*1,024 pixels, over the limit of 1,000"):
        _epoch(ds, batch=4, strict=True, max_pixels=1000)
    with pytest.raises(ValueError, match="max_pixels must be"):
        _epoch(ds, max_pixels=0)


def test_shard_command_refuses_bombs(tmp_path, capsys):
    from fastcas.cli import main

    (tmp_path / "src" / "c0").mkdir(parents=True)
    (tmp_path / "src" / "c0" / "bomb.jpg").write_bytes(_bomb())
    assert main(["shard", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "bomb.jpg" in capsys.readouterr().err


def test_shard_manifest_records_displayed_sizes(tmp_path):
    from fastcas.dataset.reader import ShardReader

    ds = _dataset(tmp_path / "ds", [_exif_jpeg(6), jpeg_bytes(0, (30, 20))])
    assert ShardReader(ds).sizes.tolist() == [[40, 80], [30, 20]]
