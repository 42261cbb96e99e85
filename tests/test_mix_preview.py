"""``fastcas preview``: a PNG grid of background, foreground, mask and mixed samples."""
from __future__ import annotations

import pytest

from fastcas.mix import KINDS

pytest.importorskip("fastcas.shards")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.helpers import make_dataset

    out = tmp_path_factory.mktemp("preview") / "ds"
    make_dataset(out, counts=(5, 3, 2), size=(48, 40))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_preview_writes_png(dataset, tmp_path, kind):
    from PIL import Image

    from fastcas.cli import main

    out = tmp_path / f"{kind}.png"
    extra = ["--saliency", "spectral-residual"] if kind == "saliencymix" else []
    assert main(["preview", str(dataset), "--mix", kind, "--out", str(out), "--n", "3",
                 "--size", "32", "--seed", "1", "--alpha", "0.5", *extra]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.width > 100 and im.height > 100


def test_preview_bad_n(dataset, tmp_path, capsys):
    from fastcas.cli import main

    assert main(["preview", str(dataset), "--mix", "cutmix", "--out", str(tmp_path / "x.png"),
                 "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
