"""Mixed batches arrive mixed from a prefetch thread; the parameters live on the images'
device (no host synchronisation per step); the same parameters as the host definition."""
import threading

import numpy as np
import pytest
import torch

from fastcas import Loader
from fastcas import mix as mixing
from fastcas.mix.device import on_device, saliency_params
from tests.helpers import make_dataset

KINDS = ("cutmix", "fmix", "mixup", "saliencymix")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixing") / "ds"
    make_dataset(root, counts=(10, 6, 4), shard_size=8, size=(48, 36))
    return root


def _loader(ds, **kw):
    opts = dict(image_size=24, epoch_length=32, seed=3, device="cpu", py_workers=0, alpha=1.0)
    opts.update(kw)
    return Loader(ds, 4, **opts)


def _epoch(loader):
    return [tuple(t.clone() for t in b) for b in loader]


@pytest.mark.parametrize("kind", KINDS)
def test_prefetched_batches_equal_the_synchronous_ones(ds, kind):
    sync = _epoch(_loader(ds, mix=kind, prefetch=0))
    ahead = _epoch(_loader(ds, mix=kind, prefetch=3))
    assert len(sync) == len(ahead) == 8
    for (xa, ya), (xb, yb) in zip(sync, ahead):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batches_are_finished_off_the_training_thread(ds, monkeypatch):
    where = []
    finish = Loader._finish

    def spy(self, out, step=None):
        where.append(threading.get_ident())
        return finish(self, out, step)

    monkeypatch.setattr(Loader, "_finish", spy)
    list(_loader(ds, mix="cutmix", prefetch=2))
    assert where and threading.get_ident() not in where
    where.clear()
    list(_loader(ds, mix="cutmix", prefetch=0))
    assert set(where) == {threading.get_ident()}


@pytest.mark.parametrize(
    "kw",
    [
        {"mix": "fmix"},
        {"mix": "saliencymix"},
        {"mix": "saliencymix", "mix_in_pipeline": False},
        {"mix": "saliencymix", "foreground_weights": "cmo"},
    ],
    ids=["fmix", "saliencymix", "saliencymix-torch", "saliencymix-cmo"],
)
def test_stopping_early_then_resuming_gives_the_uninterrupted_stream(ds, kw):
    whole = _epoch(_loader(ds, prefetch=2, **kw))
    loader = _loader(ds, prefetch=3, **kw)
    got = []
    for b in loader:  # the producer runs ahead; the consumer stops after 3
        got.append(tuple(t.clone() for t in b))
        if len(got) == 3:
            break
    state = loader.state_dict()
    assert state["step"] == 3
    loader.load_state_dict(state)  # (a bare iter() after a break starts the next epoch: issue 34)
    got += _epoch(loader)  # the same loader: rebuilt at the step consumed, not produced
    fresh = _loader(ds, prefetch=2, **kw)
    fresh.load_state_dict(state)
    tail = _epoch(fresh)
    assert len(got) == len(whole) and len(tail) == len(whole) - 3
    for (xa, ya), (xb, yb) in zip(whole, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(whole[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_producer_errors_reach_the_consumer(ds, monkeypatch):
    def broken(self, out, step=None):
        raise RuntimeError(f"mixing failed at step {step}")

    monkeypatch.setattr(Loader, "_finish", broken)
    with pytest.raises(RuntimeError, match="mixing failed at step 0"):
        next(iter(_loader(ds, mix="cutmix", prefetch=2)))


@pytest.mark.parametrize("kind", ["cutmix", "fmix", "mixup"])
def test_device_params_are_the_host_params(ds, kind):
    loader = _loader(ds, mix=kind)
    host = loader.plan(1, epoch=0)["params"]  # the host parameters of step 1 (image_size 24)
    dev = on_device(host, lambda t: t.clone()).host()
    for f in ("lam", "mixed", "boxes", "masks"):
        a, b = getattr(host, f), getattr(dev, f)
        assert (a is None) == (b is None) and (a is None or np.array_equal(np.asarray(a), np.asarray(b))), f


@pytest.mark.parametrize("saliency", ["finegrained", "spectral"])
@pytest.mark.parametrize("mode", ["elem", "batch"])
def test_device_saliency_boxes_equal_make_params_at(saliency, mode):
    rng = np.random.default_rng(0)
    fg = torch.from_numpy(rng.random((6, 3, 40, 56), dtype=np.float32))
    fg[:, :, 10:14, 30:34] += 2.0  # something salient
    pos = np.arange(100, 106)
    ref = mixing.make_params_at("saliencymix", 7, 2, pos, 40, 56, alpha=0.5, prob=0.7, foreground=fg,
                           saliency=saliency, mode=mode)
    got = saliency_params(7, 2, pos, fg, alpha=0.5, prob=0.7, to_device=lambda t: t, saliency=saliency,
                          mode=mode).host()
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.lam, ref.lam)
    np.testing.assert_array_equal(got.mixed, ref.mixed)
    if mode == "elem":
        assert ref.mixed.any() and not ref.mixed.all()  # both branches exercised


def test_mixed_targets_match_the_pasted_fraction(ds):
    """The loader's targets put lam on the background label where lam is the fraction of pixels
    that are still the background's (the partner of position g is g ^ 1)."""
    loader = _loader(ds, mix="cutmix", prefetch=2, alpha=1.0)
    plain = _epoch(_loader(ds, mix=None, prefetch=0, targets="hard"))
    for step, (x, t) in enumerate(_epoch(loader)):
        bg, y = plain[step]
        partner = mixing.pair_partner(loader.positions(step))
        kept = (x == bg).all(dim=1).float().mean(dim=(1, 2))
        onehot = torch.nn.functional.one_hot(y, loader.num_classes).float()
        expected = kept[:, None] * onehot + (1 - kept[:, None]) * onehot[partner]
        same = (bg == bg[partner]).all(dim=1).float().mean(dim=(1, 2))  # pixels equal in both: ambiguous
        assert torch.allclose(t, expected, atol=float(same.max()) + 1e-6)


def test_label_outside_the_manifest_classes_is_refused_at_construction(ds, monkeypatch):
    from fastcas.dataset.reader import ShardReader

    reader = ShardReader(ds)
    reader.labels = np.array(reader.labels)
    reader.labels[5] = reader.num_classes
    with pytest.raises(ValueError, match=rf"label {reader.num_classes} outside \[0, {reader.num_classes}\)"):
        Loader(reader, 4, device="cpu", py_workers=0)


def test_prefetch_option_is_validated():
    with pytest.raises(ValueError, match="prefetch must be >= 0, got -1"):
        from fastcas.loading.config import LoaderConfig

        LoaderConfig(batch_size=4, prefetch=-1, device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", [None, *KINDS, "cmo"])
def test_no_host_sync_per_step_on_the_gpu(ds, kind):
    opts = dict(weights="uniform", foreground_weights="cmo", mix="cutmix") if kind == "cmo" else dict(mix=kind)
    loader = Loader(ds, 4, image_size=24, epoch_length=32, seed=3, device="cuda", py_workers=1, **opts)
    it = iter(loader)
    next(it), next(it)  # warm-up: pipeline build, kernel compilation, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            x, t = next(it)
            y = (x.float().mean() + t.float().mean())  # the training step's use, on the device
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(y).item()


def test_a_second_iteration_stops_the_first_producer(ds):
    """An iterator still alive when the loader is iterated again: its prefetch thread must stop
    (never two threads driving one pipeline), the new iteration starts the next epoch (until
    issue 34 it continued the half epoch) and the old iterator raises instead of going on."""
    ref = _loader(ds, mix="cutmix", prefetch=2)
    _epoch(ref)
    epoch1 = _epoch(ref)
    loader = _loader(ds, mix="cutmix", prefetch=3)
    first = iter(loader)
    for _ in range(2):
        next(first)
    stage = loader._stage
    got = _epoch(loader)  # `first` is still referenced here
    assert not stage._thread.is_alive()
    assert loader.epoch == 1 and len(got) == len(epoch1)
    for (xa, ya), (xb, yb) in zip(epoch1, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(RuntimeError, match="superseded"):
        next(first)
    loader.close()
    del first
