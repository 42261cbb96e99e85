"""Trainer: distributed evaluation coverage, the recipes' schedules, resume across the CMO
schedule switch and at epoch boundaries, deferred re-weighting."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from fastcas.cli.train import RECIPES  # noqa: E402
from fastcas.dataset.reader import ShardReader  # noqa: E402
from fastcas.train.loop import TrainConfig, evaluate, train  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("trainmore")
    make_dataset(d / "train", counts=(12, 6, 3, 3), shard_size=8, size=(20, 16), seed=3)
    make_dataset(d / "val", counts=(4, 4, 4, 5), shard_size=6, size=(20, 16), seed=4)  # 17: odd
    return d


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a, b) -> bool:
    a, b = weights(a), weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- evaluation ------------------------------------------------------------------------------------
class ThreadRanks:
    """all_sum across W threads (a stand-in for torch.distributed.all_reduce)."""

    def __init__(self, world_size):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.parts: list = []
        self.lock = threading.Lock()

    def dist(self, rank):
        outer = self

        class D:
            world_size = outer.world_size
            device = "cpu"

            def all_sum(self, array):
                with outer.lock:
                    outer.parts.append(np.array(array, np.float64))
                outer.barrier.wait()  # every rank has contributed
                total = sum(outer.parts)
                outer.barrier.wait()  # every rank has read the sum
                if rank == 0:
                    outer.parts.clear()
                outer.barrier.wait()
                return total

        d = D()
        d.rank = rank
        return d


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))


def eval_loader(data, rank=0, world_size=1, batch=3):
    return Loader(data / "val", batch, train=False, last_batch="partial", image_size=16, py_workers=0,
                  device="cpu", rank=rank, world_size=world_size)


def independent_top1(model, data):
    r = ShardReader(data / "val")
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in eval_loader(data, batch=17)]).numpy()
    return float((pred == r.labels).mean()), [float((pred == r.labels)[r.labels == k].mean()) for k in range(4)]


def test_distributed_evaluation_covers_every_sample_once(data):
    """Two ranks (threads) with partial last batches: the reduced report equals one process's."""
    cfg = TrainConfig(train=str(data / "train"), many=10, few=4)
    counts = ShardReader(data / "train").class_counts
    model = tiny_model()
    top1, per_class = independent_top1(model, data)
    single = evaluate(model, eval_loader(data), counts, cfg, ThreadRanks(1).dist(0))
    assert single["samples"] == 17 and single["top1"] == pytest.approx(top1) and single["per_class"] == per_class
    ranks = ThreadRanks(2)
    reports = [None, None]
    models = [tiny_model(), tiny_model()]  # built before the threads: torch's seed is global

    def run(r):
        reports[r] = evaluate(models[r], eval_loader(data, r, 2), counts, cfg, ranks.dist(r))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for rep in reports:
        assert rep is not None
        assert rep["samples"] == 17 and rep["top1"] == pytest.approx(top1) and rep["per_class"] == per_class


def test_evaluation_refuses_a_sample_no_rank_evaluated(data):
    cfg = TrainConfig(train=str(data / "train"), many=10, few=4)
    counts = ShardReader(data / "train").class_counts
    alone = ThreadRanks(1).dist(0)  # rank 0 of 2, but nobody adds rank 1's half
    with pytest.raises(RuntimeError, match="evaluation covered 9 of 17 samples"):
        evaluate(tiny_model(), eval_loader(data, 0, 2), counts, cfg, alone)


# -- schedules ----------------------------------------------------------------------------------------
def recipe_names():
    return sorted(p.stem for p in RECIPES.glob("*.json"))


@pytest.mark.parametrize("recipe", recipe_names())
def test_recipe_schedules_follow_their_description(recipe):
    """The learning rate and the mixing window of each recipe over ALL its epochs, against the
    schedule written in its JSON (warm-up per epoch or per step, step factors or cosine; CMO
    mixing window). tests/train/test_recipes.py holds them against the reference code."""
    from fastcas.train.loop import _lr_at

    raw = json.loads((RECIPES / f"{recipe}.json").read_text())
    cfg = TrainConfig.from_file(RECIPES / f"{recipe}.json", train="unused")
    E, lr, warm = cfg.epochs, cfg.lr, raw.get("warmup_epochs", 0)
    factors = raw.get("step_factors") or [0.1 ** (i + 1) for i in range(len(raw.get("step_epochs", [])))]
    for e in range(E):
        for frac in (0.0, 0.5):
            p = e + frac
            got = _lr_at(cfg, p)
            if p < warm:
                want = lr * (e + 1) / warm if raw.get("warmup_per") == "epoch" else lr * (p + 1e-3) / warm
                assert got == pytest.approx(want)
            elif raw["schedule"] == "step":
                passed = [f for s, f in zip(raw["step_epochs"], factors) if p >= s]
                assert got == pytest.approx(lr * (passed[-1] if passed else 1.0))
            else:
                assert got == pytest.approx(0.5 * lr * (1 + np.cos(np.pi * p / E)))
        mixing = raw["mix"] != "none" and raw.get("mix_start", 0) <= e < E - raw.get("mix_end", 0)
        assert cfg.mixing_at(e) == mixing, e
    if raw["schedule"] == "step":
        assert _lr_at(cfg, E - 1) == pytest.approx(lr * factors[-1])
    else:
        assert _lr_at(cfg, E - 1e-9) == pytest.approx(0, abs=1e-9)


def _record_sgd_rates(monkeypatch) -> list:
    """The learning rate of every SGD.step, in order (recorded from inside the optimiser)."""
    seen = []
    orig = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    return seen


def test_warm_up_and_step_schedules_reach_the_optimiser(data, tmp_path, monkeypatch):
    """The rate the optimiser steps with, recorded from inside SGD.step."""
    seen = _record_sgd_rates(monkeypatch)
    cfg = small(data, tmp_path / "lr", epochs=4, schedule="step", step_epochs=(2, 3), warmup_epochs=1, lr=0.2)
    train(cfg)
    assert len(seen) == 8  # 2 steps an epoch
    assert seen[0] < seen[1] <= 0.2 + 1e-12              # warm-up: rising within epoch 0
    assert seen[2:4] == pytest.approx([0.2, 0.2])         # epoch 1: full rate
    assert seen[4:6] == pytest.approx([0.02, 0.02])       # epoch 2: x0.1
    assert seen[6:8] == pytest.approx([0.002, 0.002])     # epoch 3: x0.01


def test_reference_warm_up_and_step_factors_reach_the_optimiser(data, tmp_path, monkeypatch):
    """warmup_per='epoch' (lr * (e + 1) / W, constant within the epoch) and step factors relative
    to lr (x0.01 then x0.0001, as the CIFAR-LT reference), recorded from inside SGD.step."""
    seen = _record_sgd_rates(monkeypatch)
    cfg = small(data, tmp_path / "lr", epochs=5, schedule="step", step_epochs=(3, 4), step_factors=(0.01, 0.0001),
                warmup_epochs=2, warmup_per="epoch", lr=0.2)
    train(cfg)
    assert seen == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.002, 0.002, 0.00002, 0.00002])


# -- resume and re-weighting ---------------------------------------------------------------------------
def small(data, out, **kw):
    base = dict(train=str(data / "train"), val=None, out=str(out), model="resnet32", epochs=3, batch_size=4,
                image_size=16, epoch_length=8, py_workers=0, many=10, few=4, amp=False, device="cpu",
                checkpoint_every=1000)
    base.update(kw)
    return TrainConfig(**base)


CMO = dict(weights="uniform", foreground_weights="cmo", mix="cutmix", mix_prob=0.5, mix_start=1, mix_end=1)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    final = train(small(data, out, **CMO))
    assert final["global_step"] == 6
    return out / "model.pt"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [2, 3, 4])
def test_resume_across_the_cmo_switch_and_epoch_boundaries(data, tmp_path, uninterrupted, stop):
    """3 epochs of 2 steps, mixing only in epoch 1. Stopping after step 2 (the boundary into the
    mixed epoch), 3 (inside it) or 4 (the boundary out of it), then resuming, ends bitwise equal
    to the uninterrupted run."""
    part = train(small(data, tmp_path / "part", max_steps=stop, **CMO))
    assert part["global_step"] == stop
    resumed = train(small(data, tmp_path / "part", **CMO), resume=True)
    assert resumed["global_step"] == 6
    assert same_weights(uninterrupted, tmp_path / "part" / "model.pt")


@pytest.mark.slow
def test_deferred_reweighting_starts_at_drw_epoch(data, tmp_path):
    """drw_epoch=1: epoch 0 trains exactly as without loss weights; from epoch 1 it differs."""
    after_epoch0 = {}
    for name, kw in (("plain", {}), ("drw", dict(loss_weights="inverse", drw_epoch=1))):
        train(small(data, tmp_path / name, epochs=2, max_steps=2, **kw))
        after_epoch0[name] = weights(tmp_path / name / "model.pt")
        train(small(data, tmp_path / name, epochs=2, **kw), resume=True)
    a, b = after_epoch0["plain"], after_epoch0["drw"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not same_weights(tmp_path / "plain" / "model.pt", tmp_path / "drw" / "model.pt")


@pytest.mark.parametrize("kw, want, norm", [
    (dict(loss_weights="upweight-low", loss_weight_factor=7.0), [1, 1, 7, 7], "batch"),
    (dict(loss_weights="effective", loss_beta=0.9), "effective", "weights"),
])
def test_loss_weight_options_reach_the_loss(data, tmp_path, monkeypatch, kw, want, norm):
    """--loss-weight-factor / --loss-beta set the class weights the loss uses, with the
    weighting's normaliser (fastcas.train.losses): train counts (12, 6, 3, 3)."""
    import fastcas.train.losses as losses
    from fastcas.sampling import weights as sample_weights

    calls = []
    orig = losses.weighted_cross_entropy

    def spy(logp, targets, w, normaliser):
        calls.append((w.detach().cpu().numpy().copy(), normaliser))
        return orig(logp, targets, w, normaliser)

    monkeypatch.setattr(losses, "weighted_cross_entropy", spy)
    train(small(data, tmp_path / "run", epochs=1, max_steps=1, **kw))
    if want == "effective":
        want = sample_weights.loss_weights([12, 6, 3, 3], "effective", beta=0.9)
    assert len(calls) == 1 and calls[0][1] == norm
    np.testing.assert_allclose(calls[0][0], want, rtol=1e-6)
