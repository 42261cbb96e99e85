"""The DALI -> torch hand-off: one function for CPU and GPU, owned by
DALI's PyTorch plugin, dispatching on each output's TensorList type; host outputs (labels) follow
the images' device. These run on real DALI CPU TensorLists, i.e. the code the GPU runs."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from fastcas.loading import pipeline  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali

DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8, "int32": torch.int32,
          "int64": torch.int64}


def _batch(dtype: str) -> list:
    return [np.arange(6, dtype=dtype).reshape(2, 3) + i for i in range(4)]


def _source(dtype: str):
    return lambda: _batch(dtype)


def _cpu_pipe(exec_dynamic: bool):
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=4, num_threads=1, device_id=None, exec_dynamic=exec_dynamic, prefetch_queue_depth=1)
    def pipe():
        return tuple(fn.external_source(source=_source(d), batch=True) for d in DTYPES)

    p = pipe()
    p.build()
    return p


@pytest.mark.parametrize("copy", [False, True])
def test_to_torch_converts_real_dali_cpu_tensorlists(copy):
    """Every dtype the pipelines emit, DLPack (zero-copy) and feed_ndarray (copy) paths alike."""
    from nvidia.dali.backend import TensorListCPU

    outs = _cpu_pipe(exec_dynamic=True).run()
    for (name, tdt), tl in zip(DTYPES.items(), outs):
        assert isinstance(tl, TensorListCPU)
        t = pipeline.to_torch(tl, copy=copy)
        assert t.device.type == "cpu" and t.dtype == tdt and t.shape == (4, 2, 3)
        assert np.array_equal(t.numpy(), np.stack(_batch(name)))


@pytest.mark.parametrize("exec_dynamic", [True, False])
def test_run_hands_off_every_output_as_host_tensors(exec_dynamic):
    """pipeline.run: DLPack with the dynamic executor, a copy with the older ones (DALI's own rule);
    the copies stay valid after the next run (no aliasing of recycled DALI buffers)."""
    p = _cpu_pipe(exec_dynamic)
    first = [t.clone() for t in pipeline.run(p)]
    kept = pipeline.run(p)
    pipeline.run(p)
    for (name, _), a, b in zip(DTYPES.items(), first, kept):
        assert torch.equal(a, b) and np.array_equal(a.numpy(), np.stack(_batch(name)))


def test_to_torch_dispatches_on_the_output_type_not_a_device_string():
    with pytest.raises(TypeError, match="TensorListCPU or TensorListGPU"):
        pipeline.to_torch(np.zeros((2, 2), np.float32))


def test_to_device_leaves_tensors_in_place_and_moves_host_tensors():
    t = torch.arange(4)
    assert pipeline.to_device(t, torch.device("cpu")) is t
    moved = pipeline.to_device(t, "meta")  # a stand-in for "not the host" on a machine without a GPU
    assert moved.device.type == "meta" and moved.shape == t.shape


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("handoff") / "ds"
    make_dataset(root, counts=(4, 4), shard_size=8, size=(24, 20))
    return root


class _OneBatch:
    """A backend (the Loader's ``backend=`` seam) whose pipeline yields ``make(in_graph)``: the
    outputs of a GPU pipeline, made by hand."""

    name, mixes_in_graph = "one-batch", True

    def __init__(self, make):
        self.make, self.pipe, self.built = make, None, None

    def build(self, source, cfg, device):
        self.pipe, self.built = object(), (source, None)

    def run(self):
        return self.make(self.built[0].config.paste is not None)

    def reset(self):
        pass

    def worker_pids(self):
        return []

    kill_workers = None

    def close(self):
        self.pipe = None


@pytest.mark.parametrize("mix", [None, "mixup", "cutmix"])
def test_labels_and_targets_follow_the_images_device(tiny, mix, monkeypatch):
    """A GPU pipeline gives images on the device and labels/skipped column on the host; labels,
    partners and targets must end up where the images are. 'meta' plays the device (no GPU
    here); the targets' label range check needs data, so it is recorded instead of run."""
    import fastcas.mix as M

    seen = {}

    def soft_targets(params, y_bg, y_fg, num_classes, smoothing):
        seen.update(y_bg=y_bg.device.type, y_fg=y_fg.device.type)
        return torch.zeros(len(y_bg), num_classes, device=y_bg.device)

    def targets_from_lam(lam, y_bg, y_fg, num_classes, smoothing):
        seen.update(lam=lam.device.type)
        return soft_targets(None, y_bg, y_fg, num_classes, smoothing)

    monkeypatch.setattr(M, "soft_targets", soft_targets)
    monkeypatch.setattr(M, "targets_from_lam", targets_from_lam)
    images = torch.zeros(4, 3, 8, 8, device="meta")
    labels = torch.tensor([[0], [1], [0], [1]])  # host outputs of the pipeline
    skipped = torch.full((4, 1), -1)
    lam = torch.full((4, 1), 0.75, dtype=torch.float64)  # mixed in the pipeline: lam is a host output too
    loader = Loader(tiny, 4, image_size=8, mix=mix, device="cpu", py_workers=0, prefetch=0,
                    backend=_OneBatch(lambda in_graph: [images, labels, lam, skipped] if in_graph
                                      else [images, labels, skipped]))
    out_images, targets = next(iter(loader))  # the public seam: a backend that yields one batch
    assert out_images.device.type == "meta" and targets.device.type == "meta"
    if mix is not None:
        assert {k: seen[k] for k in ("y_bg", "y_fg")} == {"y_bg": "meta", "y_fg": "meta"}
        if loader.graph_mix:  # mixed by DALI: targets from the lam that came with the batch
            assert seen["lam"] == "meta"
    loader.close()
