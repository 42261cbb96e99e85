"""The reproduction's report: every arm x seed, mean ± sd, paired comparisons, plots, markdown;
its configuration refuses unknown arms."""
import json

import pytest

from fastcas.tools.reproduce.report import GROUPS, write_report
from fastcas.tools.reproduce.run import ARMS, COMPARISONS, ReproduceConfig


def _state(seeds=3):
    runs, curves = {}, {}
    for i, arm in enumerate(ARMS):
        runs[arm] = {s: {g: 0.3 + 0.01 * i + 0.02 * s + 0.001 * k for k, g in enumerate(GROUPS)}
                     for s in range(seeds)}
        curves[arm] = {s: [{"epoch": e, "top1": 0.2 + 0.1 * e, "few": 0.1 * e} for e in range(3)]
                       for s in range(seeds)}
    cfg = dict(model="resnet8", epochs=3, epoch_length=64, batch_size=8, image_size=28, lr=0.1, weight_decay=5e-4)
    return {"config": cfg, "attribute_check": None, "runs": runs, "curves": curves,
            "seconds": {a: {s: 1.0 for s in range(seeds)} for a in ARMS}, "wall_seconds": 60.0}


def test_report_has_every_arm_and_seed_and_each_comparison(tmp_path):
    rep = write_report(tmp_path, _state())
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["runs"]) == set(ARMS) and all(len(v) == 3 for v in saved["runs"].values())
    assert [(c["treatment"], c["control"]) for c in rep["comparisons"]] == [(t, c) for t, c, _ in COMPARISONS]
    i, j = list(ARMS).index("CutMix + CAS"), list(ARMS).index("CutMix")
    for c in rep["comparisons"]:
        assert c["seeds"] == ["0", "1", "2"] and set(c["groups"]) == set(GROUPS)
    cut = next(c for c in rep["comparisons"] if c["treatment"] == "CutMix + CAS")
    # treatment - control is the same 0.01 * (i - j) on every seed: sd 0, interval collapses on it
    assert cut["groups"]["top1"]["mean"] == pytest.approx(0.01 * (i - j))
    assert cut["groups"]["top1"]["sd"] == pytest.approx(0, abs=1e-12)
    s = rep["summary"]["CE"]["top1"]
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.32) and s["sd"] == pytest.approx(0.02)
    md = (tmp_path / "report.md").read_text()
    assert all(f"| {arm} | 3 |" in md for arm in ARMS) and "CutMix + CAS vs CutMix" in md
    for png in ("curves.png", "groups.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_partial_run_pairs_only_the_seeds_both_arms_have(tmp_path):
    st = _state()
    del st["runs"]["CE"][2]
    st["runs"].pop("FMix")
    rep = write_report(tmp_path, st)
    cmo = next(c for c in rep["comparisons"] if c["treatment"] == "CE + CMO")
    assert cmo["seeds"] == ["0", "1"] and cmo["groups"]["top1"]["n"] == 2
    assert not any(c["control"] == "FMix" for c in rep["comparisons"])


def test_config_refuses_unknown_arms_and_zero_seeds():
    with pytest.raises(ValueError, match="unknown arms"):
        ReproduceConfig(train="t", val="v", arms=("CE", "Mixup"))
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        ReproduceConfig(train="t", val="v", seeds=0)
    assert ReproduceConfig(train="t", val="v", epochs=200).cmo_window() == (3, 3)


def test_schedule_trains_whole_comparisons_before_the_next_block():
    from fastcas.tools.reproduce.run import schedule

    order = schedule(tuple(ARMS), 3)
    assert sorted(order) == sorted((a, s) for a in ARMS for s in range(3))  # every arm x seed once
    # the CutMix pair has all three seeds before any other run starts, then CE's block
    first_ce = next(i for i, (a, _) in enumerate(order) if a.startswith("CE"))
    assert {(a, s) for a, s in order[:first_ce]} == {(a, s) for a in ("CutMix", "CutMix + CAS") for s in range(3)}
    assert order[first_ce:first_ce + 3] == [("CE", 0), ("CE + CMO", 0), ("CE + CAS", 0)]
    assert schedule(("FMix",), 2) == [("FMix", 0), ("FMix", 1)]
