"""The peers inside ``fastcas bench``: each installed one runs briefly on tiny data and its
output is checked; a peer not installed is skipped with the reason; CPU is counted over the
whole process tree, live worker processes included."""
import re
import resource
import subprocess
import sys

import numpy as np
import pytest

from fastcas.core.rng import generator
from fastcas.tools import peers
from fastcas.tools.bench import ALL, BenchConfig, run_bench
from fastcas.tools.peers import PEERS, check_batch, peer_status, rrc_window
from fastcas.tools.proctime import tree_cpu_seconds
from tests.helpers import make_dataset

B, S = 4, 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ds = tmp_path_factory.mktemp("peers") / "ds"
    make_dataset(ds, counts=(8, 8, 8), shard_size=12, size=(48, 40))
    return ds


def _bench(dataset, loaders, mix):
    return run_bench(BenchConfig(dataset=str(dataset), loaders=loaders, batch_size=B, image_size=S, mix=mix,
                                 seconds=0.5, rounds=2, warmup=1, device="cpu", baseline_workers=1))


@pytest.mark.parametrize("mix", ["none", "cutmix"])
@pytest.mark.parametrize("name", PEERS)
def test_each_installed_peer_runs_and_its_output_is_checked(tiny, name, mix):
    why = peer_status(name)
    if why is not None:
        pytest.skip(f"peer {name} not installed here: {why}")
    res = _bench(tiny, (name,), mix)
    (row,) = res["rows"]
    assert row["loader"] == name and len(row["rates"]) == 2 and row["images_per_s"] > 0
    assert row["cpu_ms_per_image"] > 0 and row["paired_ratio_vs_fastcas"] is None
    seen = res["checks"][name]
    assert seen["shape"] == [B, 3, S, S] and seen["dtype"] == "float32"
    assert seen["targets"] == ([B] if mix == "none" else [B, 3])  # CutMix: soft labels over the 3 classes
    assert res["skipped"] == {}


def test_dali_reader_and_fastcas_run_beside_a_peer_with_paired_ratios(tiny):
    pytest.importorskip("nvidia.dali")
    if peer_status("torchdata-threads") is not None:
        pytest.skip("torchdata not installed")
    res = _bench(tiny, ("fastcas", "dali-plain", "torchdata-threads"), "cutmix")
    by = {r["loader"]: r for r in res["rows"]}
    assert set(by) == {"fastcas", "dali-plain", "torchdata-threads"}
    assert by["fastcas"]["paired_ratio_vs_fastcas"] == 1.0 and by["fastcas"]["paired_cpu_ratio_vs_fastcas"] == 1.0
    assert by["torchdata-threads"]["paired_ratio_vs_fastcas"] > 0
    assert all(res["checks"][n]["shape"] == [B, 3, S, S] for n in by)


def test_a_peer_not_installed_or_a_mix_peers_do_not_do_is_skipped_with_the_reason(tiny, monkeypatch):
    monkeypatch.setitem(peers._NEEDS, "timm", "fastcas_no_such_module")
    res = _bench(tiny, ("timm",), "none")
    assert res["rows"] == [] and "fastcas_no_such_module unavailable: ModuleNotFoundError" in res["skipped"]["timm"]
    with pytest.raises(ValueError, match="peer timm cannot run here"):
        peers.make_peer("timm", BenchConfig(dataset=str(tiny), mix="none"), "cpu")
    res = _bench(tiny, ("torchdata-threads", "spdl"), "fmix")
    assert all("the peers do none, cutmix only" in why for why in res["skipped"].values()) and len(res["skipped"]) == 2


def test_all_names_fastcas_the_baselines_and_every_peer():
    cfg = BenchConfig(dataset="x", loaders=("all",))
    assert cfg.loaders == ALL and set(PEERS) <= set(cfg.loaders) and cfg.loaders[0] == "fastcas"
    with pytest.raises(ValueError, match=r"unknown loaders \['nope'\]"):
        BenchConfig(dataset="x", loaders=("fastcas", "nope"))


def test_check_batch_rejects_wrong_shape_dtype_range_and_constant_images():
    import torch

    good = torch.linspace(-2.0, 2.5, B * 3 * S * S).reshape(B, 3, S, S)
    labels = torch.zeros(B, dtype=torch.int64)
    assert check_batch("x", good, labels, B, S)["shape"] == [B, 3, S, S]
    with pytest.raises(ValueError, match=r"loader x: .*shape \(4, 3, 32, 16\)"):
        check_batch("x", good[..., :16], labels, B, S)
    with pytest.raises(ValueError, match="dtype torch.float16"):
        check_batch("x", good.half(), labels, B, S)
    with pytest.raises(ValueError, match="outside"):
        check_batch("x", good * 100, labels, B, S)  # not normalised
    with pytest.raises(ValueError, match="constant images"):
        check_batch("x", torch.zeros(B, 3, S, S), labels, B, S)
    with pytest.raises(ValueError, match="not 4 rows"):
        check_batch("x", good, labels[:2], B, S)


def test_rrc_window_stays_inside_the_image_with_torchvisions_area_and_aspect():
    rng = generator(0, 1)
    for _ in range(200):
        top, left, h, w = rrc_window(rng, 500, 375)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        assert 0.08 * 500 * 375 * 0.97 <= h * w <= 500 * 375 and 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # a strip too thin for any try: the central crop, clamped to the aspect range
    assert rrc_window(generator(0, 2), 1000, 10) == (0, 493, 10, 13)


_BURN = ("import sys, time\n"
         "t = time.process_time()\n"
         "while time.process_time() - t < 0.3: pass\n"
         "print('burnt', flush=True)\n"
         "sys.stdin.read()\n")


def test_tree_cpu_seconds_counts_a_live_child_that_getrusage_misses():
    before, ru = tree_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen([sys.executable, "-c", _BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"  # the child has used 0.3 s and is still alive
        used = tree_cpu_seconds() - before
        ru_used = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - ru.ru_utime
    finally:
        child.stdin.close()
        child.wait()
    assert used >= 0.29 and ru_used == 0.0
    assert np.isfinite(tree_cpu_seconds(child.pid + 10**7))  # a pid that does not exist: 0, no error


def test_cli_bench_loaders_all_prints_one_table_and_stores_machine_versions_load_and_a_png(tiny, tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    import json

    from fastcas.cli import main

    out = tmp_path / "peers.json"
    assert main(["bench", str(tiny), "--loaders", "all", "--mix", "cutmix", "--seconds", "0.2", "--rounds", "1",
                 "--warmup", "1", "--batch-size", str(B), "--image-size", str(S), "--baseline-workers", "1",
                 "--device", "cpu", "--json", str(out), "--plot", str(tmp_path / "peers.png")]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    ran = [r["loader"] for r in res["rows"]]
    assert sorted(ran + list(res["skipped"])) == sorted(ALL)
    assert all(f"skipped {n}: " in text for n in res["skipped"])
    assert all(re.search(rf"^{re.escape(n)} +[0-9.]+ ", text, re.M) for n in ran)
    assert "CPU ms/img" in text and "load average at start" in text
    m = res["machine"]
    assert m["cores"] and m["date"] and m["versions"]["torch"] and len(res["load_average"]["start"]) == 3
    assert res["config"]["loaders"] == list(ALL) and set(res["checks"]) == set(ran)
    assert (tmp_path / "peers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_several_mixes_runs_each_and_prints_one_table_of_all(tiny, tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    import json

    from fastcas.cli import main

    base = ["bench", str(tiny), "--loaders", "fastcas,timm", "--mix", "none,cutmix", "--seconds", "0.2",
            "--rounds", "1", "--warmup", "1", "--batch-size", str(B), "--image-size", str(S),
            "--baseline-workers", "1", "--device", "cpu"]
    assert main(base + ["--json", str(tmp_path / "one.json")]) == 2
    assert "--json" in capsys.readouterr().err and not (tmp_path / "one.json").exists()
    assert main(base + ["--json", str(tmp_path / "p-{mix}.json")]) == 0
    text = capsys.readouterr().out
    assert "| loader | none: img/s (min-max) | x fastcas | CPU ms/img | cutmix: img/s (min-max) |" in text
    assert re.search(r"^\| fastcas \| [0-9]+ \([0-9]+-[0-9]+\) \| 1\.00 \| [0-9.]+ \| [0-9]+ ", text, re.M)
    for mix in ("none", "cutmix"):
        assert json.loads((tmp_path / f"p-{mix}.json").read_text())["config"]["mix"] == mix
