"""Checkpoints are data, never code: resume loads them with ``weights_only=True``, refuses a
crafted pickle without running it, and names the file for a truncated or foreign one."""
import json
import pickle

import pytest

torch = pytest.importorskip("torch")

from fastcas.cli import main  # noqa: E402
from fastcas.train.rundir import CheckpointError, claim_run_dir, load_checkpoint  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402
from tests.train.test_rundir import cfg_for  # noqa: E402


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the payload an attacker would plant."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _valid_state():
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    return {"model": m.state_dict(), "optimizer": opt.state_dict(), "scaler": {}, "epoch": 0, "global_step": 1,
            "loader": {"epoch": 0, "step": 1, "config": {"seed": 0}}, "torch_rng": torch.get_rng_state(),
            "config": {"step_epochs": (1, 2)}}


def _run_dir(tmp_path):
    make_dataset(tmp_path / "train", counts=(3, 3), shard_size=8, size=(16, 16))
    cfg = cfg_for(tmp_path)
    claim_run_dir(cfg, resume=False, overwrite=False).release()
    return cfg


def _resume(tmp_path):
    return main(["train", str(tmp_path / "train"), "--out", str(tmp_path / "run"), "--resume", "--device", "cpu",
                 "--model", "resnet32", "--epochs", "2", "--batch-size", "8", "--image-size", "16",
                 "--epoch-length", "16", "--py-workers", "0", "--no-amp"])


def test_resume_refuses_a_pickle_that_runs_code_and_the_payload_never_runs(tmp_path, capsys):
    _run_dir(tmp_path)
    marker = tmp_path / "pwned"
    state = {**_valid_state(), "config": _Payload(marker)}
    torch.save(state, tmp_path / "run" / "checkpoint.pt")  # torch's zip format, a pickle inside
    before = (tmp_path / "run" / "run.json").read_text()
    assert _resume(tmp_path) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt: refused to load" in err and "nothing in it was run" in err, err
    assert not marker.exists()
    assert (tmp_path / "run" / "run.json").read_text() == before  # no "resumed" entry recorded


def test_a_raw_pickle_checkpoint_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(pickle.dumps({**_valid_state(), "x": _Payload(marker)}))
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: (refused to load|not a readable)"):
        load_checkpoint(p)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x03\x04 truncated zip", b"random bytes " * 50])
def test_truncated_or_random_checkpoint_names_the_file_and_records_no_resume(tmp_path, capsys, content):
    _run_dir(tmp_path)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(content)
    assert _resume(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: not a readable fastcas checkpoint" in err or f"{ckpt}: refused to load" in err, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["resumed"] == []


def test_a_truncated_real_checkpoint_names_the_file(tmp_path):
    p = tmp_path / "checkpoint.pt"
    torch.save(_valid_state(), p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="checkpoint.pt: not a readable fastcas checkpoint"):
        load_checkpoint(p)


def test_a_tensor_file_that_is_not_a_checkpoint_says_what_is_missing(tmp_path):
    p = tmp_path / "checkpoint.pt"
    torch.save({"model": {}}, p)
    with pytest.raises(CheckpointError, match="not a fastcas training checkpoint .missing optimizer"):
        load_checkpoint(p)


def test_what_training_saves_loads_with_weights_only(tmp_path):
    """The checkpoint layout (model, optimizer, scaler, RNG, loader state, config with tuples)
    round-trips through the safe loader unchanged."""
    state = _valid_state()
    torch.save(state, tmp_path / "c.pt")
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["torch_rng"], state["torch_rng"]) and back["config"] == {"step_epochs": (1, 2)}
    assert back["loader"] == state["loader"]


def test_numpy_values_in_a_state_are_saved_as_plain_types():
    import numpy as np

    from fastcas.train.rundir import plain_state

    state = {**_valid_state(), "optimizer": {"param_groups": [{"lr": np.float64(0.05), "params": [0]}], "state": {}},
             "loader": {"step": np.int64(3), "rows": np.arange(2), "t": (np.int32(1),)}}
    import io

    buf = io.BytesIO()
    torch.save(plain_state(state), buf)
    back = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert back["optimizer"]["param_groups"][0]["lr"] == 0.05 and type(back["loader"]["step"]) is int
    assert back["loader"]["rows"] == [0, 1] and back["loader"]["t"] == (1,)
