"""Loading on a device, checked on the CPU: the parallel source keeps every worker busy, workers spawn once CUDA is
initialised, the pipeline gets the start method, prefetch and device id, the baseline pins memory for GPU copies."""

import pytest

torch = pytest.importorskip("torch")


pytest.importorskip("nvidia.dali")


from fastcas.loading import pipeline  # noqa: E402
from fastcas.loading.pipeline import PipelineConfig  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali


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
    assert loader.backend.pipe.py_start_method == "spawn" and seen["prefetch"] >= 3
    loader.close()


def test_reader_pipeline_takes_the_device_id():
    import inspect

    assert "device_id" in inspect.signature(pipeline.build_reader_pipeline).parameters


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_baseline_pins_memory_for_gpu_copies(tmp_path, monkeypatch, device, pinned):
    from fastcas.loading import baseline

    make_dataset(tmp_path / "ds", counts=(4, 4), shard_size=8, size=(24, 20))
    seen = {}

    class DL:
        def __init__(self, ds, **kw):
            seen.update(kw)

        def __iter__(self):
            return iter(())

    monkeypatch.setattr(torch.utils.data, "DataLoader", DL)
    # stand in for a GPU machine: 'cuda' resolves without asking torch (no GPU here)
    monkeypatch.setattr("fastcas.loading.loader.resolve_device", lambda d: "cpu" if d == "auto" else d)
    loader = baseline.TorchvisionLoader(tmp_path / "ds", 4, image_size=8, py_workers=0, device=device, prefetch=0)
    assert list(loader) == []  # builds the DataLoader (empty here) only; no CUDA is touched
    assert seen["pin_memory"] is pinned
