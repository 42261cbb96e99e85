"""CLIP weights offline: a pretrained tag fails fast naming the tag; a download failure is a ValueError naming it."""
import io
import time
from pathlib import Path

import numpy as np
import pytest

from fastcas.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _gradient16(h=48, w=64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    # 8000..56000: most of the 16-bit range, but not all of it, so min-max stretching is caught too
    return (8000 + (xx * 1000 + yy * 300) % 48001).astype(np.uint16)


def _decode(jpeg: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), np.float64)


def _score_file(path, cas, keys=("s0000", "s0001", "s0002")):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": list(keys), "label": [0, 1, 0], "cas": cas}), path)
    return path


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def _config(argv):
    import argparse

    from fastcas.cli import train as C

    p = argparse.ArgumentParser()
    C.add_arguments(p)
    return C.config_from_args(p.parse_args(argv))


def test_clip_pretrained_tag_offline_fails_fast_naming_the_tag(monkeypatch):
    pytest.importorskip("open_clip")
    import huggingface_hub

    from fastcas.scoring import clip

    monkeypatch.setattr(clip, "_host_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    t = time.time()
    with pytest.raises(ValueError, match=r"ViT-B-32 pretrained='openai' are not in the local cache .*--weights FILE"):
        clip.ClipEncoder("ViT-B-32", "openai")
    assert time.time() - t < 10


def test_clip_download_failure_is_a_value_error_naming_the_tag(monkeypatch):
    """Reachable host but the download fails (proxy, 404, disk full): no traceback either."""
    open_clip = pytest.importorskip("open_clip")
    from fastcas.scoring import clip

    monkeypatch.setattr(clip, "check_pretrained_available", lambda model, tag: None)

    def boom(*a, **k):
        raise RuntimeError("HTTP 403 from the mirror")

    monkeypatch.setattr(open_clip, "create_model", boom)
    with pytest.raises(ValueError, match=r"pretrained='openai' could not be loaded: HTTP 403"):
        clip.ClipEncoder("ViT-B-32", "openai")
