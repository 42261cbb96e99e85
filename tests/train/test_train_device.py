"""Training on a device, checked on the CPU: a GPU-written checkpoint restores the RNG on the host, bf16 autocast where
supported, only the pipeline in use stays alive."""

import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")


pytest.importorskip("nvidia.dali")


from fastcas.train import loop as train_loop  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali


def _save_as_if_on_cuda(obj, path, monkeypatch):
    """torch.save with every storage tagged 'cuda:0': the checkpoint a GPU run writes."""
    import torch.serialization as S

    with monkeypatch.context() as m:
        m.setattr(S, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path)


def test_gpu_written_checkpoint_restores_the_rng_on_the_host(tmp_path, monkeypatch):
    """A GPU run's checkpoint (tensors tagged cuda:0) must load with its torch RNG state as a
    CPU ByteTensor; map_location=<run device> put it on the GPU and torch.set_rng_state raised
    "RNG state must be a torch.ByteTensor" (on this CPU machine the load itself fails)."""
    torch.manual_seed(123)
    saved = torch.get_rng_state()
    expected = torch.rand(3)
    path = tmp_path / "checkpoint.pt"
    _save_as_if_on_cuda({"torch_rng": saved, "model": {"w": torch.ones(2)}, "epoch": 1, "optimizer": {},
                         "scaler": {}, "global_step": 0, "loader": {}}, path, monkeypatch)
    state = train_loop._load_checkpoint(path)
    assert state["torch_rng"].device.type == "cpu" and state["model"]["w"].device.type == "cpu"
    torch.manual_seed(0)
    train_loop._restore_rng(state["torch_rng"])
    assert torch.equal(torch.rand(3), expected)


def test_restore_rng_rejects_nothing_torch_can_hold_on_the_host():
    """The exact failure mode: a state that is not a CPU ByteTensor."""
    torch.manual_seed(5)
    state = torch.get_rng_state()
    expected = torch.rand(2)
    with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):
        torch.set_rng_state(state.to(torch.int64))
    train_loop._restore_rng(state.to(torch.int64))  # converted back to a host ByteTensor
    assert torch.equal(torch.rand(2), expected)


def test_amp_dtype_prefers_bfloat16_and_is_off_on_cpu(monkeypatch):
    cfg = train_loop.TrainConfig(train="x", amp=True, device="cpu")
    assert train_loop._amp_dtype(cfg, "cpu") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train_loop._amp_dtype(cfg, "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert train_loop._amp_dtype(cfg, "cuda") == torch.float16
    assert train_loop._amp_dtype(train_loop.TrainConfig(train="x", amp=False, device="cpu"), "cuda") is None


@pytest.mark.slow
def test_trainer_closes_the_pipelines_it_is_not_using(tmp_path, monkeypatch):
    from fastcas.loading.runner import Runner

    make_dataset(tmp_path / "train", counts=(8, 4), shard_size=8, size=(24, 20), seed=1)
    make_dataset(tmp_path / "val", counts=(2, 2), shard_size=8, size=(24, 20), seed=2)
    loaders = weakref.WeakSet()
    live_at_build = []
    real_build = Runner.build  # each Loader's runner builds its pipeline

    def build(self, epoch, step):
        loaders.add(self)
        others = [x for x in loaders if x is not self and x.backend.pipe is not None]
        live_at_build.append(len(others))
        return real_build(self, epoch, step)

    monkeypatch.setattr(Runner, "build", build)
    cfg = train_loop.TrainConfig(train=str(tmp_path / "train"), val=str(tmp_path / "val"), out=str(tmp_path / "run"),
                        model="resnet32", epochs=3, batch_size=4, image_size=8, epoch_length=8, py_workers=0,
                        mix="cutmix", mix_start=1, many=3, few=1, amp=False, device="cpu")
    train_loop.train(cfg)
    # plain (epoch 0), val, mixed (epoch 1: plain and val already closed), val, val
    assert len(live_at_build) >= 4
    assert max(live_at_build) <= 1, live_at_build
    assert live_at_build[2] == 0, live_at_build  # the mixed loader starts with nothing else alive
    assert np.all(np.asarray(live_at_build) <= 1)
