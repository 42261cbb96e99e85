"""Training: recipes validate and dry-run, SIGKILL + --resume ends bitwise equal, DDP on 2 CPU
processes, the drop-in examples run, the demo writes its report."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas.cli.train import RECIPES  # noqa: E402
from fastcas.train.loop import TrainConfig, train  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402
from tests.torchrun_util import run_torchrun  # noqa: E402

pytestmark = [pytest.mark.dali, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    make_dataset(d / "train", counts=(20, 10, 5, 3), shard_size=16, size=(24, 20), seed=1)
    make_dataset(d / "val", counts=(4, 4, 4, 4), shard_size=16, size=(24, 20), seed=2)
    return d


def run_cli(args, env=None, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    p = subprocess.run([sys.executable, "-m", "fastcas", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout[-3000:] + p.stderr[-3000:])
    return p


def small(data, out, **kw):
    base = dict(train=str(data / "train"), val=str(data / "val"), out=str(out), model="resnet32", epochs=2,
                batch_size=8, image_size=16, epoch_length=32, py_workers=0, many=15, few=4, amp=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.json")))
def test_every_recipe_validates_and_dry_runs(data, tmp_path, recipe, monkeypatch):
    """Each recipe's own model, weights, mixing and CMO window (1 step an epoch, tiny images): the
    mixing loader runs exactly in mix_start <= epoch < epochs - mix_end, CAS recipes need and use
    their scores, and the saved model is the recipe's architecture."""
    import numpy as np

    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import ScoreTable, write_scores
    from fastcas.loading.loader import Loader
    from fastcas.train.models import build_model

    full = TrainConfig.from_file(RECIPES / f"{recipe}.json", train=str(data / "train"))
    # CMO's window (plain for mix_start epochs, plain again for the last mix_end) shrunk to one plain
    # epoch at each end (the full-length schedules are checked in test_train_more.py), 2 mixed ones
    start, end = min(full.mix_start, 1), min(full.mix_end, 1)
    epochs = start + end + 2
    kw = dict(train=str(data / "train"), val=str(data / "val"), out=str(tmp_path / "run"), batch_size=8,
              image_size=16, epoch_length=8, py_workers=0, epochs=epochs, eval_every=epochs, device="cpu",
              amp=False, mix_start=start, mix_end=end)
    r = ShardReader(data / "train")
    cas = 1 + np.arange(len(r)) % 7
    if full.weights in ("cas", "cas-cmo"):
        with pytest.raises(ValueError, match="need scores"):
            train(TrainConfig.from_file(RECIPES / f"{recipe}.json", **kw))
        kw["scores"] = str(tmp_path / "s.parquet")
        write_scores(kw["scores"], ScoreTable(r.keys, r.labels, cas, np.zeros((len(r), 1), np.int64), {}))
    cfg = TrainConfig.from_file(RECIPES / f"{recipe}.json", **kw)
    used = []
    iterate = Loader.__iter__

    def spy(self):
        for batch in iterate(self):
            if self.config.train:
                used.append((self.epoch, self))
            yield batch

    monkeypatch.setattr(Loader, "__iter__", spy)
    final = train(cfg)
    assert final["global_step"] == epochs and final["report"]["samples"] == 16
    mixing = {e: full.mix != "none" and start <= e < epochs - end for e in range(epochs)}
    assert sorted({e for e, _ in used}) == list(range(epochs))
    for e, loader in used:
        c = loader.config
        assert (c.mix_kind is not None) == mixing[e], (e, c.mix_kind)
        assert (c.weights, c.cas_power, c.cmo_power) == (full.weights, full.b, full.r)
        if mixing[e]:
            assert (c.mix_kind, c.alpha, c.mix_prob, c.foreground_weights) == (
                full.mix, full.alpha, full.mix_prob, full.foreground_weights)
            assert c.mix_options.get("mode", "elem") == full.mixing_mode  # CMO: one decision per batch
        if "scores" in kw:
            np.testing.assert_array_equal(loader.scores, cas)
    saved = _weights(tmp_path / "run" / "model.pt")
    want = build_model(full.model, r.num_classes).state_dict()
    assert saved.keys() == want.keys() and all(saved[k].shape == want[k].shape for k in want)


def test_recipe_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'; expected one of resnet8, .*resnet32"):
        TrainConfig(train="x", model="vgg")
    with pytest.raises(ValueError, match="unknown loss weights 'focal'"):
        TrainConfig(train="x", loss_weights="focal")


def test_training_reports_groups_and_cas_subsets(data, tmp_path):
    scores = tmp_path / "train.parquet"
    run_cli(["score", str(data / "train"), "--out", str(scores), "--batch-size", "8", "--workers", "0",
             "--device", "cpu"])
    val_scores = tmp_path / "val.parquet"
    run_cli(["score", str(data / "val"), "--out", str(val_scores), "--reference", str(scores), "--batch-size", "8",
             "--workers", "0", "--device", "cpu"])
    final = train(small(data, tmp_path / "run", weights="cas", scores=str(scores), val_scores=str(val_scores),
                        mix="cutmix", alpha=0.2, loss_weights="effective", drw_epoch=1))
    rep = final["report"]
    assert rep["samples"] == 16  # counted from the samples evaluated, not the dataset length
    top1, per_class = evaluate_saved_model(tmp_path / "run" / "model.pt", "resnet32", data / "val")
    assert rep["top1"] == pytest.approx(top1, abs=1e-12) and rep["per_class"] == pytest.approx(per_class, abs=1e-12)
    assert all(k in rep for k in ("many", "medium", "few", "cas_low", "cas_middle", "cas_high"))
    assert (tmp_path / "run" / "eval-epoch001.png").exists()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]


def evaluate_saved_model(model_path, model_name, val_dir):
    """Independent single-process evaluation: (top1, per_class) of a saved state dict over the
    whole validation set, in order (labels from the manifest, not from the loader)."""
    from fastcas import Loader
    from fastcas.dataset.reader import ShardReader
    from fastcas.train.models import build_model

    r = ShardReader(val_dir)
    model = build_model(model_name, r.num_classes)
    model.load_state_dict(_weights(model_path))
    model.eval()
    loader = Loader(val_dir, 5, train=False, image_size=16, last_batch="partial", py_workers=0, device="cpu")
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in loader]).numpy()
    assert len(pred) == len(r)
    correct = pred == r.labels
    per_class = [float(correct[r.labels == k].mean()) for k in range(r.num_classes)]
    return float(correct.mean()), per_class


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(data, tmp_path):
    common = ["train", str(data / "train"), "--val", str(data / "val"), "--model", "resnet32", "--epochs", "2",
              "--batch-size", "8", "--image-size", "16", "--epoch-length", "48", "--py-workers", "0",
              "--mix", "cutmix", "--weights", "cmo", "--checkpoint-every", "2", "--no-amp", "--device", "cpu"]
    run_cli(common + ["--out", str(tmp_path / "a")])
    # 6 steps an epoch: crash after step 9 (mid-epoch 1, one step past the step-8 checkpoint)
    p = run_cli(common + ["--out", str(tmp_path / "b"), "--crash-at-step", "9"], check=False)
    assert p.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "final.json").exists()
    run_cli(common + ["--out", str(tmp_path / "b"), "--resume"])
    a, b = _weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.distributed
def test_torchrun_two_cpu_processes(data, tmp_path):
    out = tmp_path / "ddp"
    # batch 3: each rank's 8 validation samples end with a partial batch
    cmd = ["-m", "fastcas", "train", str(data / "train"), "--val", str(data / "val"), "--model", "resnet32",
           "--epochs", "1", "--batch-size", "3", "--image-size", "16", "--epoch-length", "36", "--py-workers", "0",
           "--out", str(out), "--no-amp", "--weights", "cmo",
           "--device", "cpu"]
    p = run_torchrun(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    assert final["report"]["samples"] == 16  # every validation sample evaluated exactly once over the ranks
    assert final["global_step"] == 6          # 36 draws / 2 ranks / batch 3
    # the reduced report equals a single-process evaluation of the saved model
    top1, per_class = evaluate_saved_model(out / "model.pt", "resnet32", data / "val")
    assert final["report"]["top1"] == pytest.approx(top1, abs=1e-12)
    assert final["report"]["per_class"] == pytest.approx(per_class, abs=1e-12)


@pytest.mark.distributed
def test_sampler_under_torchrun_reads_rank_from_the_process_group(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "import numpy as np, torch.distributed as d\n"
        "d.init_process_group('gloo')\n"
        "from fastcas.sampling.sampler import WeightedSampler\n"
        "s = WeightedSampler(np.ones(100), num_samples=1000, seed=3)\n"
        "idx = s.indices(0)\n"
        "import torch; t = [torch.zeros(500, dtype=torch.long) for _ in range(2)]\n"
        "d.all_gather(t, torch.from_numpy(idx))\n"
        "if d.get_rank() == 0:\n"
        "    assert (s.rank, s.world_size, len(idx)) == (0, 2, 500)\n"
        "    assert not torch.equal(t[0], t[1])\n"
        "    open(%r, 'w').write('ok')\n"
        "d.barrier()\n"
        "d.destroy_process_group()\n" % str(tmp_path / "ok"))
    p = run_torchrun([script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert p.returncode == 0 and (tmp_path / "ok").exists(), p.stderr[-3000:]


@pytest.mark.parametrize("example, extra", [
    ("plain_loop.py", []), ("timm_style.py", []), ("lightning_datamodule.py", ["VAL"])])
def test_examples_run(data, example, extra):
    args = [str(data / "train")] + [str(data / "val") for _ in extra] + ["--steps", "2"]
    args += ["--image-size", "32", "--batch-size", "8", "--device", "cpu"]
    p = subprocess.run([sys.executable, str(ROOT / "examples" / example), *args], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "trained 2 steps" in p.stdout


def test_demo_writes_the_report(data, tmp_path):
    from fastcas.tools.demo.run import DemoConfig, run_demo

    rep = run_demo(DemoConfig(train=str(data / "train"), val=str(data / "val"), out=str(tmp_path / "demo"),
                              epochs=1, epoch_length=16, batch_size=8, image_size=16, many=15, few=4,
                              py_workers=0, device="cpu"))
    assert set(rep["results"]) == {"CutMix", "CutMix + CAS", "CE", "CE + CMO"}
    text = (tmp_path / "demo" / "report.md").read_text()
    assert "| CE + CMO |" in text and (tmp_path / "demo" / "recipes.png").exists()
    assert "16px, cifar augmentation" in text  # the CIFAR-LT reference policy, training and evaluation
