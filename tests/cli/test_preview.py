"""``fastcas preview``: a PNG grid of background, foreground, mask and mixed samples."""
from __future__ import annotations

import pytest

from fastcas.mix import KINDS

pytest.importorskip("fastcas.dataset.shards")


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


@pytest.mark.parametrize("kind", KINDS)
def test_preview_grid_content(dataset, tmp_path, monkeypatch, kind):
    """The four rows drawn: background and foreground are dataset images, the mask row is the
    region applied, the mixed row is background outside / foreground inside it, and the lam
    printed under each column is the kept-background fraction of that mask."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.axes import Axes
    from PIL import Image

    from fastcas.cli import main
    from fastcas.dataset.reader import ShardReader

    drawn, labels = [], []
    imshow, set_xlabel = Axes.imshow, Axes.set_xlabel

    def spy_imshow(self, x, *a, **k):
        drawn.append(np.array(x))
        return imshow(self, x, *a, **k)

    def spy_xlabel(self, text, *a, **k):
        labels.append(text)
        return set_xlabel(self, text, *a, **k)

    monkeypatch.setattr(Axes, "imshow", spy_imshow)
    monkeypatch.setattr(Axes, "set_xlabel", spy_xlabel)
    n, size = 3, 24
    extra = ["--saliency", "spectral-residual"] if kind == "saliencymix" else []
    assert main(["preview", str(dataset), "--mix", kind, "--out", str(tmp_path / "g.png"), "--n", str(n),
                 "--size", str(size), "--seed", "2", "--alpha", "1.0", *extra]) == 0
    assert len(drawn) == 4 * n
    bg, fg, mask, mixed = (np.stack(drawn[r * n:(r + 1) * n]) for r in range(4))
    assert bg.shape == fg.shape == mixed.shape == (n, size, size, 3) and mask.shape == (n, size, size)
    r = ShardReader(dataset)
    dataset_images = [np.asarray(Image.open(io.BytesIO(bytes(s.data))).convert("RGB")
                                 .resize((size, size), Image.BILINEAR), np.float32) / 255 for s in r]
    for img in np.concatenate([bg, fg]):
        assert min(np.abs(img - d).max() for d in dataset_images) < 1e-6
    assert mask.min() >= 0 and mask.max() <= 1
    np.testing.assert_allclose(mixed, bg * (1 - mask[..., None]) + fg * mask[..., None], atol=1e-5)
    lams = [float(t.split("=")[1]) for t in labels]
    assert len(lams) == n
    np.testing.assert_allclose(lams, 1 - mask.reshape(n, -1).mean(1), atol=0.006)  # printed to 2 decimals
    assert (mask.reshape(n, -1).max(1) > 0).any()  # something was pasted
