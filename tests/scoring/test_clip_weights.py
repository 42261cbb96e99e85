"""CLIP weights offline: a pretrained tag fails fast naming the tag; a download failure is a ValueError naming it."""
import time

import pytest


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
