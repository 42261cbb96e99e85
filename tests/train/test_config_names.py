"""Explicit names: the CAS and CMO exponents are ``cas_power`` / ``cmo_power`` on the Loader
(``b`` / ``r`` deprecated aliases that warn), a run's ``b`` / ``r`` reach its loaders, and a
run's training dataset is ``TrainConfig.train_data`` (``train``: its recipe / CLI name)."""
from __future__ import annotations

import warnings

import pytest

from fastcas.loading.config import LoaderConfig
from fastcas.loading.loader import Loader
from fastcas.train.loop import TrainConfig, train
from tests.helpers import make_dataset


def test_explicit_names_and_deprecated_aliases():
    c = LoaderConfig(batch_size=2, cas_power=1.5, cmo_power=0.5)
    assert (c.cas_power, c.cmo_power) == (1.5, 0.5)
    with pytest.warns(DeprecationWarning, match=r"'b' is deprecated: use cas_power=1\.0"):
        old = LoaderConfig(batch_size=2, b=1.0, r=0.25)
    assert (old.cas_power, old.cmo_power) == (1.0, 0.25)
    with pytest.raises(ValueError, match=r"b=1\.0 and cas_power=1\.5 both given"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        LoaderConfig(batch_size=2, b=1.0, cas_power=1.5)
    with pytest.raises(ValueError, match=r"cmo_power must be in \[0, 16\]"):
        LoaderConfig(batch_size=2, cmo_power=-1.0)


def test_loader_accepts_the_old_names_with_a_warning_and_the_same_plan(tmp_path):
    make_dataset(tmp_path / "ds", counts=(6, 3, 1), shard_size=5, size=(24, 20))
    kw = dict(weights="cmo", device="cpu", py_workers=0, image_size=16, seed=2)
    new = Loader(tmp_path / "ds", 4, cmo_power=0.5, **kw)
    with pytest.warns(DeprecationWarning, match="'r' is deprecated: use cmo_power=0.5"):
        old = Loader(tmp_path / "ds", 4, r=0.5, **kw)
    assert old.config.cmo_power == 0.5 and old.plan(1)["indices"][0].tolist() == new.plan(1)["indices"][0].tolist()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Loader(tmp_path / "ds", 4, r=0.5, **kw)
    # attributed to the caller's line, so Python's default filters show it in a user's script
    assert [w.filename for w in caught if w.category is DeprecationWarning] == [__file__]
    with pytest.raises(ValueError, match=r"b=1\.0 and cas_power=1\.2 both given"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Loader(tmp_path / "ds", 4, b=1.0, cas_power=1.2, **kw)  # an explicit default counts as given
    assert old.state_dict()["config"] == new.state_dict()["config"]  # one stream, one digest


def test_a_runs_b_and_r_reach_its_loaders(tmp_path, monkeypatch):
    make_dataset(tmp_path / "ds", counts=(6, 3, 1), shard_size=5, size=(24, 20))
    seen = []
    init = Loader.__init__

    def spy(self, *a, **kw):
        init(self, *a, **kw)
        seen.append(self.config)

    monkeypatch.setattr(Loader, "__init__", spy)
    cfg = TrainConfig(train=str(tmp_path / "ds"), out=str(tmp_path / "run"), weights="cmo", r=0.5, b=1.0,
                      batch_size=4, image_size=16, epochs=1, max_steps=1, py_workers=0, device="cpu", amp=False,
                      progress=False)
    train(cfg)
    assert seen and all((c.cas_power, c.cmo_power) == (1.0, 0.5) for c in seen if c.train)


def test_train_data_is_the_training_dataset_and_train_its_recipe_name(tmp_path):
    from dataclasses import asdict

    from fastcas.train.rundir import config_changes

    a, b = TrainConfig(train="d"), TrainConfig(train_data="d")
    assert a == b and a.train_data == "d" and "train_data" in asdict(a) and "train" not in asdict(a)
    with pytest.raises(ValueError, match="both given"):
        TrainConfig(train="d", train_data="e")
    with pytest.raises(ValueError, match=r"train_data \(the training dataset.*is required"):
        TrainConfig()
    (tmp_path / "r.json").write_text('{"train": "from-recipe", "epochs": 3}')
    assert TrainConfig.from_file(tmp_path / "r.json").train_data == "from-recipe"
    assert TrainConfig.from_file(tmp_path / "r.json", train="cli").train_data == "cli"
    # a run.json of an earlier fastcas (its config says "train"): a changed dataset is still named and refused
    old = {"config": {**asdict(a), "train": "old"}}
    del old["config"]["train_data"]
    refused, _ = config_changes(old, a, 1)
    assert any(line.startswith("train_data: 'old' -> 'd'") for line in refused)
