"""High-bit-depth images (16-bit PNG, 32-bit int and float TIFF) are scaled to 8 bits, not clipped, by the shard writer
and `fastcas shard`."""

import io

import numpy as np
import pytest

from fastcas.cli import main


def _gradient16(h=48, w=64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    # 8000..56000: most of the 16-bit range, but not all of it, so min-max stretching is caught too
    return (8000 + (xx * 1000 + yy * 300) % 48001).astype(np.uint16)


def _decode(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float64)


def test_16bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    from PIL import Image

    from fastcas.dataset.ingest import load_image_bytes

    a = _gradient16()
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    got = _decode(load_image_bytes(tmp_path / "g16.png"))
    want = a / 257.0
    assert got.shape == a.shape
    # JPEG q95 on a smooth gradient: within a few grey levels (clipping gives ~255 everywhere)
    assert np.abs(got - want).mean() < 2.0 and np.percentile(np.abs(got - want), 99) < 8
    assert got.std() > 50


@pytest.mark.parametrize("kind", ["I", "F", "F-wide"])
def test_32bit_int_and_float_tiffs_are_scaled(tmp_path, kind):
    from PIL import Image

    from fastcas.dataset.ingest import load_image_bytes

    a = _gradient16()
    if kind == "I":
        arr, want = a.astype(np.int32), a / 257.0
    elif kind == "F":
        arr, want = (a / 65535.0).astype(np.float32), a / 257.0
    else:  # floats outside [0, 1]: min-max
        arr = (a.astype(np.float32) - 30000) * 3.0
        want = (arr - arr.min()) * 255.0 / (arr.max() - arr.min())
    Image.fromarray(arr).save(tmp_path / "x.tif")
    assert Image.open(tmp_path / "x.tif").mode in ("I", "F")
    got = _decode(load_image_bytes(tmp_path / "x.tif"))
    assert np.abs(got - want).mean() < 2.0


def test_shard_cli_stores_a_scaled_16bit_png(tmp_path):
    from PIL import Image

    from fastcas.dataset.reader import ShardReader

    (tmp_path / "src" / "c0").mkdir(parents=True)
    a = _gradient16()
    Image.fromarray(a).save(tmp_path / "src" / "c0" / "g.png")
    assert main(["shard", str(tmp_path / "src"), str(tmp_path / "ds")]) == 0
    r = ShardReader(tmp_path / "ds")
    got = _decode(bytes(r[0][1]))
    assert np.abs(got - a / 257.0).mean() < 2.0
