"""The CAS and CMO exponents by their explicit names: ``cas_power`` / ``cmo_power`` on the Loader
(``b`` / ``r`` deprecated aliases that warn), and a run's ``b`` / ``r`` reach its loaders."""
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
