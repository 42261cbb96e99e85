"""Evaluation that sees every sample once (issue 34): Lightning with its default sanity check and
limit_val_batches (1 device and DDP on 2 CPU processes), and torchrun with a per-batch
all-reduce that must finish (N = 65 on 2 ranks used to give 2 batches to one rank, 1 to the other)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")
pytest.importorskip("lightning")

from fastcas import Loader  # noqa: E402
from fastcas.dataset.reader import ShardReader  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402
from tests.torchrun_util import run_torchrun  # noqa: E402

pytestmark = pytest.mark.dali
ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("lightning_validation_app.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lval")
    make_dataset(d / "train", counts=(2,) * 13, shard_size=8, size=(16, 12), seed=1)
    make_dataset(d / "val", counts=(1,) * 13, shard_size=5, size=(16, 12), seed=2)  # 13 samples, label = sample
    return d


def expected_counts(val, world, batch, limit=None) -> list:
    """Per label, how often the valid rows of the first ``limit`` batches of every rank hold it."""
    labels = ShardReader(val).labels
    counts = np.zeros(len(labels), np.int64)
    for rank in range(world):
        loader = Loader(val, batch, train=False, last_batch="pad", rank=rank, world_size=world, device="cpu")
        for step in range(len(loader) if limit is None else min(limit, len(loader))):
            idx = loader.streams[0].index_at(0, loader.positions(step))[loader.valid(step)]
            np.add.at(counts, labels[idx], 1)
    return counts.tolist()


def run_app(data, tmp_path, devices, limit):
    out = tmp_path / f"runs-{devices}-{limit}.json"
    p = subprocess.run([sys.executable, str(APP), str(data / "train"), str(data / "val"), str(out), str(devices),
                        limit], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text())


def check(out, full, limited=None):
    runs = out["validations"]
    assert [r["sanity"] for r in runs] == [True, False, False]  # the sanity check, then one per epoch
    for r in runs[1:]:
        assert r["counts"] == (full if limited is None else limited)
    # limit_train_batches=2: Lightning's iter() per epoch starts the next epoch (Lightning fetches
    # a batch ahead, so the step is not checked here)
    assert [epoch for epoch, _ in out["train"]] == [0, 0, 1, 1]


@pytest.mark.slow
def test_lightning_one_device_validates_every_sample_once(data, tmp_path):
    check(run_app(data, tmp_path, 1, "1.0"), [1] * 13)
    # limit_val_batches: every validation sees the same first batches, each sample once
    limited = expected_counts(data / "val", 1, 4, limit=2)
    assert sum(limited) == 8
    check(run_app(data, tmp_path, 1, "2"), [1] * 13, limited)


@pytest.mark.slow
@pytest.mark.distributed
def test_lightning_ddp_two_cpu_processes_validates_every_sample_once(data, tmp_path):
    check(run_app(data, tmp_path, 2, "1.0"), [1] * 13)
    limited = expected_counts(data / "val", 2, 2, limit=3)
    assert sum(limited) == 12
    check(run_app(data, tmp_path, 2, "3"), [1] * 13, limited)


@pytest.mark.slow
def test_lightning_resume_mid_epoch_gives_the_uninterrupted_batches(data, tmp_path):
    """Lightning saves the training Loader's state_dict in its checkpoint and loads it before its
    iter(): the resumed run continues mid-epoch and into the next epoch with the same batches."""
    code = ("import json, sys\n"
            "from tests.train.lightning_validation_app import train_batches\n"
            "t, ck = sys.argv[1], sys.argv[2]\n"  # 26 samples, batch 4: 6 steps per epoch
            "runs = [train_batches(t, 9), train_batches(t, 3, save=ck), train_batches(t, 9, ckpt=ck)]\n"
            "print(json.dumps(runs))\n")  # a process of its own: Lightning probes CUDA (the test guard forbids it)
    p = subprocess.run([sys.executable, "-c", code, str(data / "train"), str(tmp_path / "mid.ckpt")], cwd=ROOT,
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    full, first, rest = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(full) == 9 and len(first) == 3 and len(rest) == 6
    assert first + rest == full


WORKER = """
import json, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
from fastcas import Loader
from fastcas.train.metrics import top1_counts
ds, out = sys.argv[1], sys.argv[2]
val = Loader(ds, 32, train=False, last_batch="pad", valid_mask=True, image_size=8, device="cpu", py_workers=0,
             num_threads=1)
counts = torch.zeros(65, dtype=torch.float64)
batches = 0
for images, labels, valid in val:
    top1 = top1_counts(torch.zeros(len(labels), 65), labels, valid)
    dist.all_reduce(top1)  # a collective per batch, as timm's validate(): hangs if the ranks' counts differ
    counts += torch.bincount(labels[valid], minlength=65).double()
    batches += 1
dist.all_reduce(counts)
if dist.get_rank() == 0:
    json.dump({"counts": counts.long().tolist(), "batches": batches, "len": len(val)}, open(out, "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.distributed
def test_torchrun_per_batch_all_reduce_finishes_and_counts_65(tmp_path):
    make_dataset(tmp_path / "val65", counts=(1,) * 65, shard_size=16, size=(16, 12), seed=3)
    script = tmp_path / "eval.py"
    script.write_text(WORKER)
    out = tmp_path / "out.json"
    p = run_torchrun([script, tmp_path / "val65", out], cwd=ROOT, env=ENV, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["batches"] == res["len"] == 2 and res["counts"] == [1] * 65
