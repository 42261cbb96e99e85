"""Issue 12's GPU-path findings that can be pinned on a CPU machine (3, 11, 13-16, 18): each test
drives the code the GPU runs, with the GPU-only piece (a CUDA-written checkpoint, an initialised
CUDA driver, LOCAL_RANK, bf16 support) simulated."""
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import pipeline  # noqa: E402
from fastcas import train as T  # noqa: E402
from fastcas.pipeline import PipelineConfig  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali


# -- finding 3: resume loads the checkpoint on the host ------------------------------------------
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
    _save_as_if_on_cuda({"torch_rng": saved, "model": {"w": torch.ones(2)}, "epoch": 1}, path, monkeypatch)
    state = T._load_checkpoint(path)
    assert state["torch_rng"].device.type == "cpu" and state["model"]["w"].device.type == "cpu"
    torch.manual_seed(0)
    T._restore_rng(state["torch_rng"])
    assert torch.equal(torch.rand(3), expected)


def test_restore_rng_rejects_nothing_torch_can_hold_on_the_host():
    """The exact failure mode: a state that is not a CPU ByteTensor."""
    torch.manual_seed(5)
    state = torch.get_rng_state()
    expected = torch.rand(2)
    with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):
        torch.set_rng_state(state.to(torch.int64))
    T._restore_rng(state.to(torch.int64))  # converted back to a host ByteTensor
    assert torch.equal(torch.rand(2), expected)


# -- finding 13: bf16 autocast (no scaler) where supported ----------------------------------------
def test_amp_dtype_prefers_bfloat16_and_is_off_on_cpu(monkeypatch):
    cfg = T.TrainConfig(train="x", amp=True, device="cpu")
    assert T._amp_dtype(cfg, "cpu") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert T._amp_dtype(cfg, "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert T._amp_dtype(cfg, "cuda") == torch.float16
    assert T._amp_dtype(T.TrainConfig(train="x", amp=False, device="cpu"), "cuda") is None


# -- findings 14, 15: the parallel source keeps every worker busy; spawn after CUDA init ----------
def test_source_prefetch_covers_every_worker():
    assert pipeline.source_prefetch(PipelineConfig(batch_size=4, py_workers=6)) >= 6
    assert pipeline.source_prefetch(PipelineConfig(batch_size=4, py_workers=1, prefetch=2)) >= 2


def test_workers_spawn_once_the_cuda_driver_is_initialised(monkeypatch):
    from nvidia.dali import backend

    monkeypatch.setattr(backend, "IsDriverInitialized", lambda: False)
    assert pipeline.worker_start_method(gpu=False) == "fork"
    assert pipeline.worker_start_method(gpu=True) == "spawn"
    monkeypatch.setattr(backend, "IsDriverInitialized", lambda: True)  # e.g. torch used the GPU first
    assert pipeline.worker_start_method(gpu=False) == "spawn"


def test_pipeline_asks_dali_for_the_chosen_start_method_and_prefetch(tmp_path, monkeypatch):
    """build_pipeline passes both choices to DALI (a CPU Loader with workers after CUDA init)."""
    from nvidia.dali import backend

    from fastcas import Loader

    make_dataset(tmp_path / "ds", counts=(4, 4), shard_size=8, size=(24, 20))
    monkeypatch.setattr(backend, "IsDriverInitialized", lambda: True)
    seen = {}
    import nvidia.dali.fn as dali_fn

    real_es = dali_fn.external_source

    def external_source(*a, **k):
        seen["prefetch"] = k.get("prefetch_queue_depth")
        return real_es(*a, **k)

    monkeypatch.setattr(dali_fn, "external_source", external_source)
    loader = Loader(tmp_path / "ds", 4, image_size=8, py_workers=3, device="cpu", epoch_length=8)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 8, 8)
    assert loader._pipe.py_start_method == "spawn" and seen["prefetch"] >= 3
    loader.close()


# -- finding 11: score under torchrun binds each rank to its GPU -----------------------------------
def test_score_binds_the_local_rank_gpu(monkeypatch):
    from fastcas.commands import score

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    # stand in for a GPU machine: 'cuda' resolves without asking torch (no GPU here)
    monkeypatch.setattr("fastcas.loader.resolve_device", lambda d: "cpu" if d == "auto" else d)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert score._bind_local_gpu("cpu") is None and calls == []
    assert score._bind_local_gpu("cuda") == 3 and calls == [3]


def test_reader_pipeline_takes_the_device_id():
    import inspect

    assert "device_id" in inspect.signature(pipeline.build_reader_pipeline).parameters


# -- finding 18: the torchvision baseline pins its batches on the GPU ------------------------------
@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_baseline_pins_memory_for_gpu_copies(tmp_path, monkeypatch, device, pinned):
    from fastcas import baseline

    make_dataset(tmp_path / "ds", counts=(4, 4), shard_size=8, size=(24, 20))
    seen = {}

    class DL:
        def __init__(self, ds, **kw):
            seen.update(kw)

        def __iter__(self):
            return iter(())

    monkeypatch.setattr(torch.utils.data, "DataLoader", DL)
    # stand in for a GPU machine: 'cuda' resolves without asking torch (no GPU here)
    monkeypatch.setattr("fastcas.loader.resolve_device", lambda d: "cpu" if d == "auto" else d)
    loader = baseline.TorchvisionLoader(tmp_path / "ds", 4, image_size=8, py_workers=0, device=device)
    loader._build()  # builds the DataLoader only; no CUDA is touched
    assert seen["pin_memory"] is pinned


# -- finding 16: the trainer keeps only the pipeline in use alive ----------------------------------
@pytest.mark.slow
def test_trainer_closes_the_pipelines_it_is_not_using(tmp_path, monkeypatch):
    from fastcas.loader import Loader

    make_dataset(tmp_path / "train", counts=(8, 4), shard_size=8, size=(24, 20), seed=1)
    make_dataset(tmp_path / "val", counts=(2, 2), shard_size=8, size=(24, 20), seed=2)
    loaders = weakref.WeakSet()
    live_at_build = []
    real_build = Loader._build

    def build(self):
        loaders.add(self)
        others = [x for x in loaders if x is not self and x._pipe is not None]
        live_at_build.append(len(others))
        return real_build(self)

    monkeypatch.setattr(Loader, "_build", build)
    cfg = T.TrainConfig(train=str(tmp_path / "train"), val=str(tmp_path / "val"), out=str(tmp_path / "run"),
                        model="resnet32", epochs=3, batch_size=4, image_size=8, epoch_length=8, py_workers=0,
                        mix="cutmix", mix_start=1, many=3, few=1, amp=False, device="cpu")
    T.train(cfg)
    # plain (epoch 0), val, mixed (epoch 1: plain and val already closed), val, val
    assert len(live_at_build) >= 4
    assert max(live_at_build) <= 1, live_at_build
    assert live_at_build[2] == 0, live_at_build  # the mixed loader starts with nothing else alive
    assert np.all(np.asarray(live_at_build) <= 1)


# -- findings 9, 10: what a bare GPU machine needs at run time -------------------------------------
def test_gpu_sh_installs_dali_with_its_runtime_dependencies():
    """gpu.sh installed DALI with --no-deps: `import nvidia.dali` then fails on optree, and the
    decoders lack nvImageCodec / nvCOMP. Every Requires-Dist of the DALI wheel is named in the
    carrying instructions, and the install resolves dependencies (from the carried folder)."""
    import re
    from importlib import metadata
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.sh").read_text()
    install_lines = [x for x in text.splitlines() if "pip install" in x and not x.lstrip().startswith("#")]
    assert install_lines and not any("--no-deps" in x for x in install_lines)
    assert "nvidia-dali-cuda130==2.4.0" in text
    reqs = metadata.requires("nvidia-dali-cuda130") or []
    names = {re.split(r"[\s\[<>=~!;]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r}
    assert {"optree", "nvidia-nvimgcodec-cu13", "nvidia-libnvcomp-cu13"} <= names
    missing = sorted(n for n in names - {"numpy"} if n not in text)
    assert not missing, f"gpu.sh does not carry/document {missing}"


def test_setup_pins_numba_cuda_with_its_cuda13_extra():
    """Without the cu13 extra a runtime-only CUDA image has no libNVVM: the first kernel compile fails."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
    assert '"numba-cuda[cu13]==0.30.4"' in text
