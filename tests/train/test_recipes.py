"""Every shipped recipe equals the table in docs/recipes.md, names a source per value, and its
learning rate and CMO mixing window follow the reference code over all its epochs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fastcas.train.loop import TrainConfig

RECIPES = Path(__file__).resolve().parents[2] / "fastcas" / "train" / "recipes"
DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
NAMES = sorted(p.stem for p in RECIPES.glob("*.json"))


def doc_table() -> dict:
    """{recipe: {field: value}} from the markdown table after the recipes-table marker."""
    text = DOC.read_text().split("<!-- recipes-table", 1)[1]
    rows = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip().strip("`") for c in rows[0].strip("|").split("|")][1:]
    table: dict = {name: {} for name in header}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        field = cells[0].strip("`")
        for name, cell in zip(header, cells[1:]):
            if cell != "-":
                table[name][field] = json.loads(cell.strip("`"))
    return table


def raw(name: str) -> dict:
    return json.loads((RECIPES / f"{name}.json").read_text())


def test_the_doc_table_lists_every_recipe():
    assert sorted(doc_table()) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_recipe_values_equal_the_doc_table(name):
    want = doc_table()[name]
    data = {k: v for k, v in raw(name).items() if k not in ("description", "sources")}
    assert data == want
    cfg = TrainConfig.from_file(RECIPES / f"{name}.json", train="unused")
    for field, value in want.items():
        got = getattr(cfg, field)
        assert (list(got) if isinstance(got, tuple) else got) == value, field


@pytest.mark.parametrize("name", NAMES)
def test_every_value_names_its_source(name):
    """A source per value: a reference file with a line number, or 'fastcas choice: why'."""
    data = raw(name)
    values = {k for k in data if k not in ("description", "sources")}
    assert set(data["sources"]) == values
    for field, source in data["sources"].items():
        assert re.search(r"[\w/.-]+\.(py|md|txt):\d+", source) or source.startswith("fastcas choice: "), \
            (field, source)


# -- the references' schedules, transcribed ---------------------------------------------------------
def cmo_cifar_lr(lr, epoch):  # naver-ai/cmo cifar_train.py:460-472 (kaidic/LDAM-DRW cifar_train.py:366-378)
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    elif epoch > 180:
        return lr * 0.0001
    elif epoch > 160:
        return lr * 0.01
    return lr


def cmo_imagenet_lr(lr, epoch):  # naver-ai/cmo imagenet_train.py:476-489
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    elif epoch > 80:
        return lr * 0.01
    elif epoch > 60:
        return lr * 0.1
    return lr


def cmo_inat_lr(lr, epoch):  # naver-ai/cmo inat18_train.py:496-509
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    elif epoch > 160:
        return lr * 0.01
    elif epoch > 75:
        return lr * 0.1
    return lr


REFERENCE_LR = {"cifar100-lt-cmo": cmo_cifar_lr, "cifar100-lt-cmo-drw": cmo_cifar_lr,
                "imagenet-lt-cmo": cmo_imagenet_lr, "inat2018-cmo": cmo_inat_lr}


@pytest.mark.parametrize("name", sorted(REFERENCE_LR))
def test_cmo_recipes_follow_the_reference_schedule_and_window(name):
    """Rate at the start and the middle of every epoch = the reference's adjust_learning_rate (set
    once per epoch); mixing exactly while start_data_aug (3) < epoch < epochs - end_data_aug (3);
    one mixing decision per batch; DRW weights from epoch 160 with beta 0.9999."""
    from fastcas.train.loop import _lr_at

    cfg = TrainConfig.from_file(RECIPES / f"{name}.json", train="unused")
    for e in range(cfg.epochs):
        for frac in (0.0, 0.5, 0.999):
            assert _lr_at(cfg, e + frac) == pytest.approx(REFERENCE_LR[name](0.1, e), rel=1e-12), (e, frac)
        assert cfg.mixing_at(e) == (3 < e < cfg.epochs - 3), e
    assert cfg.mixing_mode == "batch" and cfg.mix_prob == 0.5
    if name.endswith("-drw"):
        assert (cfg.loss_weights, cfg.loss_beta, cfg.drw_epoch) == ("effective", 0.9999, 160)


@pytest.mark.parametrize("name", ["imagenet1k-resnet18-cas", "imagenet1k-resnext50-cas"])
def test_cas_recipes_mix_per_pair_with_cosine_and_no_warm_up(name):
    import math

    from fastcas.train.loop import _lr_at

    cfg = TrainConfig.from_file(RECIPES / f"{name}.json", train="unused")
    assert cfg.mixing_mode == "elem" and all(cfg.mixing_at(e) for e in range(cfg.epochs))
    for p in (0, 10.5, 45, 89.9):
        assert _lr_at(cfg, p) == pytest.approx(0.05 * (1 + math.cos(math.pi * p / 90)))
