"""The default stream is pinned: sha256 digests of batches of the default ``imagenet`` policy
(train, train + in-graph CutMix, evaluation), recorded on the code BEFORE the transform
options existed (commit 0bbe213, DALI 2.4.0 CPU). The transform options must leave the default
stream bit-identical. The digests depend on the JPEG encoder (PIL) and DALI's CPU decoder and
resampler; if either is upgraded, re-record them on a commit whose stream is known good."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali

PINNED = {
    "train": "e73905c782b615f865a7ad0596f7448fa4f55bc00c4ae5e7ef93b0aef57fc732",
    "cutmix": "11d750b662b20764e41b44e0cc64392a2d00b021e1b010773585f029ed56249d",
    "mixup": "16102ae8faa2fe5ed06d0b67978bb1954b4d2918218f2a8bf8875dcaa021d22b",
    "cmo": "ad1b3993b2ffcc367ecd2d09a829dd9b21348aea870bf5c824cd348a4f1bdf1a",
    "eval": "2b8f3f20365a6edbdcc75d2ec8f6e8988f0829b23964797b4269abdb26444f64",
}


def stream_digest(loader) -> str:
    """sha256 of every batch's pixels and its targets as float32 [B, K] (hard int64 [B] targets
    one-hot encoded first, so the digest pins the stream, not the target format)."""
    h = hashlib.sha256()
    for images, targets in loader:
        if targets.ndim == 1:
            targets = torch.nn.functional.one_hot(targets, loader.num_classes).float()
        h.update(np.ascontiguousarray(images.numpy()).tobytes())
        h.update(np.ascontiguousarray(targets.float().numpy()).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned") / "ds"
    make_dataset(root, counts=(5, 4, 3), size=(40, 32), seed=11)
    return root


def loaders(ds):
    kw = dict(image_size=16, seed=3, py_workers=0, device="cpu")
    return {"train": Loader(ds, 4, epoch_length=12, **kw),
            "cutmix": Loader(ds, 4, epoch_length=12, mix="cutmix", **kw),
            "mixup": Loader(ds, 4, epoch_length=12, mix="mixup", **kw),
            "cmo": Loader(ds, 4, epoch_length=12, foreground_weights="cmo", mix="cutmix", mix_prob=0.5, **kw),
            "eval": Loader(ds, 5, train=False, last_batch="partial", **kw)}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_default_stream_is_bit_identical_to_the_pinned_one(ds, name):
    loader = loaders(ds)[name]
    assert stream_digest(loader) == PINNED[name]


# every transform option spelled out at its default value: still the pinned stream
EXPLICIT = dict(augment="imagenet", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3), interpolation="bilinear", crop_pct=0.875, hflip=0.5, color_jitter=0, reprob=0.0,
                auto_augment=None, mix_start_epoch=0, mix_stop_epoch=None)


@pytest.mark.parametrize(
    "name,kw", [("train", dict(epoch_length=12)), ("eval", dict(train=False, last_batch="partial"))]
)
def test_explicit_default_options_give_the_pinned_stream(ds, name, kw):
    loader = Loader(
        ds, 4 if name == "train" else 5, image_size=16, seed=3, py_workers=0, device="cpu", **kw, **EXPLICIT
    )
    assert stream_digest(loader) == PINNED[name]


if __name__ == "__main__":  # re-record: python -m tests.loading.test_transforms_pinned DIR
    import sys
    from pathlib import Path

    root = Path(sys.argv[1]) / "ds"
    make_dataset(root, counts=(5, 4, 3), size=(40, 32), seed=11)
    for name, loader in loaders(root).items():
        print(name, stream_digest(loader))
