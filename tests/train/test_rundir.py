"""A training run owns its --out. --resume needs a checkpoint and a
compatible configuration (global batch compared, allowed changes listed); a non-empty --out
is refused without --resume / --overwrite; --overwrite clears the old run; OUT/.lock (flock)
makes a concurrent run fail and never goes stale."""
import fcntl
import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest

pytest.importorskip("torch")

from fastcas.cli import main  # noqa: E402
from fastcas.train.loop import TrainConfig  # noqa: E402
from fastcas.train.rundir import RESUMABLE_CHANGES, claim_run_dir, config_changes  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402


def cfg_for(tmp_path, **kw):
    base = dict(train=str(tmp_path / "train"), out=str(tmp_path / "run"), model="resnet32", epochs=2,
                batch_size=8, image_size=16, epoch_length=16, py_workers=0, amp=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def _saved(tmp_path, **kw):
    """A finished run's directory: run.json from claim_run_dir, a checkpoint of the right shape."""
    cfg = cfg_for(tmp_path, **kw)
    claim_run_dir(cfg, resume=False, overwrite=False).release()
    import torch  # resume loads the checkpoint (safely) before comparing configurations

    torch.save({k: {} for k in ("model", "optimizer", "scaler", "loader")} | {"epoch": 0, "global_step": 0,
               "torch_rng": torch.get_rng_state()}, tmp_path / "run" / "checkpoint.pt")
    return cfg



def test_resume_without_checkpoint_is_a_cli_error_naming_it(tmp_path, capsys):
    rc = main(["train", str(tmp_path / "train"), "--out", str(tmp_path / "run"), "--resume", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("fastcas train: error: --resume: no checkpoint ") and \
        str(tmp_path / "run" / "checkpoint.pt") in err



@pytest.mark.parametrize("change", [dict(batch_size=4), dict(weights="cmo"), dict(mix="cutmix"), dict(seed=1),
                                    dict(model="resnet18"), dict(image_size=32), dict(lr=0.2),
                                    dict(label_smoothing=0.1), dict(epoch_length=32)])
def test_resume_refuses_changes_of_stream_or_model_and_lists_them(tmp_path, change):
    _saved(tmp_path)
    name = next(iter(change))
    shown = "global batch" if name == "batch_size" else name
    with pytest.raises(ValueError, match=rf"--resume: the configuration differs .*{shown}"):
        claim_run_dir(cfg_for(tmp_path, **change), resume=True, overwrite=False)


def test_resume_lists_every_refused_change(tmp_path):
    _saved(tmp_path)
    with pytest.raises(ValueError) as e:
        claim_run_dir(cfg_for(tmp_path, weights="cmo", seed=5, epochs=9), resume=True, overwrite=False)
    msg = str(e.value)
    assert "weights: 'uniform' -> 'cmo'" in msg and "seed: 0 -> 5" in msg
    assert "differs" in msg and "epochs: 2" not in msg.split(". Resume")[0]  # allowed: not among the refused


def test_resume_allows_documented_changes_and_records_them(tmp_path, capsys):
    _saved(tmp_path)
    new = cfg_for(tmp_path, epochs=5, eval_every=2, checkpoint_every=7, max_steps=3, num_threads=1, many=50)
    claim_run_dir(new, resume=True, overwrite=False).release()
    assert "resuming" in capsys.readouterr().out
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["config"]["epochs"] == 5 and "epochs: 2 -> 5" in rec["resumed"][-1]["changed"]
    assert {"epochs", "eval_every", "checkpoint_every", "max_steps", "val"} <= RESUMABLE_CHANGES


def test_resume_compares_the_global_batch_not_the_per_rank_batch(tmp_path):
    saved = {"config": {"batch_size": 8, "seed": 0}, "world_size": 2, "global_batch": 16}
    cfg = cfg_for(tmp_path, batch_size=4)
    assert config_changes(saved, cfg, world_size=4)[0] == []         # 4 x 4 = 16: the same stream
    assert config_changes(saved, cfg_for(tmp_path, batch_size=8), world_size=2)[0] == []
    refused, _ = config_changes(saved, cfg, world_size=2)            # 4 x 2 = 8
    assert refused == ["global batch (batch_size x world size): 16 -> 8 (4 x 2)"]


def test_resume_with_a_moved_dataset_compares_its_content(tmp_path):
    make_dataset(tmp_path / "train", counts=(2, 2), shard_size=8)
    make_dataset(tmp_path / "other", counts=(2, 2), shard_size=8, seed=3)
    _saved(tmp_path)
    import shutil

    shutil.copytree(tmp_path / "train", tmp_path / "moved")
    claim_run_dir(cfg_for(tmp_path, train=str(tmp_path / "moved")), resume=True, overwrite=False).release()
    with pytest.raises(ValueError, match="train_data: .* -> .*other.* content differs"):
        claim_run_dir(cfg_for(tmp_path, train=str(tmp_path / "other")), resume=True, overwrite=False)



def test_non_empty_out_is_refused_and_overwrite_clears_the_old_run(tmp_path):
    out = tmp_path / "run"
    claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False).release()  # an earlier run's run.json
    for name in ("metrics.jsonl", "checkpoint.pt", "model.pt", "final.json", "eval-epoch000.png"):
        (out / name).write_text("old")
    (out / "keep").mkdir()
    with pytest.raises(ValueError, match=r"--out .*run is not empty \(checkpoint\.pt, eval-epoch000\.png, final\.json, "
                                         r"keep, metrics\.jsonl, \.\.\.\): pass --resume .* or --overwrite"):
        claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False)
    assert (out / "metrics.jsonl").read_text() == "old"  # refused: nothing touched
    claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=True).release()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "keep", "run.json"]


def test_a_failed_start_does_not_block_the_next_run(tmp_path):
    """A run that stopped before its first checkpoint leaves only .lock and run.json."""
    claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False).release()
    claim_run_dir(cfg_for(tmp_path, seed=3), resume=False, overwrite=False).release()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        claim_run_dir(cfg_for(tmp_path), resume=True, overwrite=False)


def test_second_concurrent_run_fails_while_the_lock_is_held(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        with pytest.raises(ValueError, match=r"run is in use by another training run \(pid 4242"):
            claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False)
        with pytest.raises(ValueError, match="in use"):  # --overwrite does not break a live lock
            claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=True)
    finally:
        os.close(fd)
    run = claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False)  # released: free again
    with pytest.raises(ValueError, match=rf"in use by another training run \(pid {os.getpid()}"):
        claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=True)
    run.release()
    claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=True).release()


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(out / ".lock")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match="in use"):
            claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False)
    finally:
        p.kill()
        p.wait(10)
    assert (out / ".lock").exists()
    claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False).release()


def test_other_ranks_neither_lock_nor_refuse(tmp_path):
    run0 = claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False, rank=0, world_size=2)
    claim_run_dir(cfg_for(tmp_path), resume=False, overwrite=False, rank=1, world_size=2).release()
    run0.release()


# -- end to end (real training, in-process) ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.dali
def test_train_twice_into_one_out_resume_and_overwrite(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nvidia.dali")
    import fastcas.train.loop as T
    from fastcas.train.loop import train

    make_dataset(tmp_path / "train", counts=(6, 5, 5), shard_size=16, size=(24, 20), seed=1)
    make_dataset(tmp_path / "val", counts=(2, 2, 2), shard_size=16, size=(24, 20), seed=2)
    cfg = cfg_for(tmp_path, val=str(tmp_path / "val"), epochs=1, many=5, few=3)
    loaders, tried = T._loaders, []

    def concurrent_start(c, dist):  # a second run starting while the first one runs
        with pytest.raises(ValueError, match="in use by another training run"):
            claim_run_dir(c, resume=False, overwrite=True)
        tried.append(1)
        return loaders(c, dist)

    monkeypatch.setattr(T, "_loaders", concurrent_start)
    train(cfg)
    monkeypatch.setattr(T, "_loaders", loaders)
    assert tried == [1]
    out = capsys.readouterr().out
    assert re.search(r"epoch 0: top1 \d\.\d{4} many (\d\.\d{4}|-) medium (\d\.\d{4}|-) few (\d\.\d{4}|-) loss", out), (
        out
    )
    with pytest.raises(ValueError, match="is not empty"):
        train(cfg)
    with pytest.raises(ValueError, match="the configuration differs .*mix: 'none' -> 'cutmix'"):
        train(replace(cfg, mix="cutmix"), resume=True)
    train(cfg, overwrite=True)  # the lock of the first run was released; metrics start afresh
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0]
    # no --val: a line per epoch; --max-steps mid-epoch says so; then a longer resume
    capsys.readouterr()
    final = train(replace(cfg, val=None, epochs=2, max_steps=3), overwrite=True)
    out = capsys.readouterr().out
    assert "epoch 0: loss " in out and "(no --val: no evaluation)" in out
    assert "stopped by max_steps=3 at step 1 of 2 in epoch 1" in out and final["global_step"] == 3
    final = train(replace(cfg, val=None, epochs=3), resume=True)
    assert final["global_step"] == 6 and "epochs: 2 -> 3" in capsys.readouterr().out
