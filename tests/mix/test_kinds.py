"""One object per mix kind (fastcas.mix.kinds): the loader's questions about a kind answered by it."""
from __future__ import annotations

import numpy as np
import pytest

from fastcas.mix import kinds
from fastcas.mix.params import boxes_at, clip_box


def test_every_kind_is_registered_under_its_name():
    assert kinds.PARAM_KINDS == ("cutmix", "fmix", "saliencymix", "mixup")  # the kinds make_params draws
    assert list(kinds.KINDS) == [*kinds.PARAM_KINDS, "mixup_cutmix"]
    assert all(k.name == name for name, k in kinds.KINDS.items())
    assert kinds.PASTE_KINDS == ("cutmix", "fmix", "saliencymix")
    with pytest.raises(ValueError, match="unknown mix kind 'blend'; accepted kinds: cutmix, fmix"):
        kinds.get("blend")


@pytest.mark.parametrize("name, streams, names", [
    ("cutmix", 1, ("in_ids", "anchors", "shapes", "lam")),
    ("cutmix", 2, ("anchors", "shapes", "lam")),
    ("saliencymix", 1, ("in_ids", "centre_ids", "need", "anchors", "shapes", "lam", "half")),
    ("fmix", 1, ("partner", "masks", "lam")),
    ("fmix", 2, ("masks", "lam")),
    ("mixup", 1, ()),
])
def test_paste_names(name, streams, names):
    assert kinds.get(name).paste_names(streams) == names


@pytest.mark.parametrize("name, options, device, want", [
    ("cutmix", {}, "cuda", True),
    ("fmix", {}, "cpu", True),
    ("fmix", {"max_soft": 0.1}, "cpu", False),  # soft masks blend: torch
    ("saliencymix", {}, "cpu", True),
    ("saliencymix", {"saliency": "spectral"}, "cpu", False),
    ("saliencymix", {}, "cuda", False),  # the Numba operators take host images
    ("mixup", {}, "cpu", False),
    ("mixup_cutmix", {}, "cpu", False),
])
def test_whether_the_graph_mixes_a_kind(name, options, device, want):
    assert kinds.get(name).in_graph(options, device) is want


@pytest.mark.parametrize("name, options, match", [
    ("fmix", {"decay": 0}, r"mix_options decay must be a number in \(0, inf\), got 0"),
    ("fmix", {"max_soft": 0.7}, r"mix_options max_soft must be a number in \[0, 0.5\], got 0.7"),
    ("saliencymix", {"saliency": "x"}, r"mix_options saliency must be 'finegrained'"),
    ("mixup_cutmix", {"switch_prob": 2}, r"switch_prob must be in \[0, 1\]"),
])
def test_each_kind_checks_its_own_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        kinds.get(name).check_options(options)


def test_the_switch_resolves_per_step_and_plain_kinds_to_themselves():
    sw = kinds.get("mixup_cutmix")
    got = {sw.at(3, 0, step, 1.0, {"cutmix_alpha": 0.5, "mixup_alpha": 0.2})[:2] for step in range(64)}
    assert got == {("cutmix", 0.5), ("mixup", 0.2)}
    assert kinds.get("fmix").at(3, 0, 5, 0.4, {"decay": 2.0}) == ("fmix", 0.4, {"decay": 2.0})


def test_the_box_rule_is_one_function_for_numpy_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    cy, cx = rng.integers(0, 40, 50), rng.integers(0, 56, 50)
    hh, hw = rng.integers(0, 30, 50), rng.integers(0, 40, 50)
    ref = boxes_at(cy, cx, 2 * hh, 2 * hw, 40, 56)
    t = clip_box(torch, *(torch.from_numpy(a) for a in (cy, cx, hh, hw)), 40, 56)
    np.testing.assert_array_equal(torch.stack(t, dim=1).numpy(), ref)


def test_a_kinds_own_draws_are_keyed_by_position_whatever_the_batch():
    """Drawn.uniform: the per-sample uniforms a new kind draws for itself (one file: its region)
    are pure functions of (seed, purpose, epoch, position), like lambda and the centre."""
    from fastcas.mix.params import KIND_PURPOSES, position_drawn

    def draw(pos):
        return position_drawn(7, 2, pos, 16, 16, 1.0, 1.0, "elem", 3.0)

    whole = draw(np.arange(8)).uniform(KIND_PURPOSES)
    halves = np.concatenate([draw(np.arange(4)).uniform(KIND_PURPOSES), draw(np.arange(4, 8)).uniform(KIND_PURPOSES)])
    np.testing.assert_array_equal(whole, halves)
    assert ((whole >= 0) & (whole < 1)).all() and len(set(whole.tolist())) == 8
    assert not np.array_equal(whole, draw(np.arange(8)).uniform(KIND_PURPOSES + 1))
    with pytest.raises(ValueError, match="a kind's own draws take purposes >= 16, got 1"):
        draw(np.arange(8)).uniform(1)


def test_fastcas_mix_apply_goes_through_the_kind(monkeypatch):
    """fastcas.mix.apply asks the params' kind for the pixels (a kind whose pixels are not a box,
    a mask or a blend overrides MixKind.apply)."""
    from fastcas import mix

    params = mix.make_params("cutmix", 2, 8, 8, generator=np.random.default_rng(0))
    bg, fg = np.zeros((2, 3, 8, 8), np.float32), np.ones((2, 3, 8, 8), np.float32)
    expected = mix.apply(params, bg, fg)
    seen = []
    monkeypatch.setattr(kinds.KINDS["cutmix"], "apply", lambda p, b, f, backend="auto": seen.append(p.kind) or b)
    assert mix.apply(params, bg, fg) is bg and seen == ["cutmix"]
    monkeypatch.undo()
    np.testing.assert_array_equal(mix.apply(params, bg, fg), expected)
