"""CutMix (and CMO's paste) inside the DALI graph — flip, ``multi_paste`` on uint8,
one normalisation — gives exactly the pixels of the torch path and of the NumPy reference."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastcas import Loader
from fastcas import mix as mixing
from fastcas.mix.reference import apply_numpy
from tests.helpers import make_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("paste") / "ds"
    make_dataset(root, counts=(10, 6, 4), shard_size=8, size=(48, 36))
    return root


def _loader(ds, **kw):
    opts = dict(image_size=24, epoch_length=32, seed=5, device="cpu", py_workers=0, mix="cutmix", mix_prob=0.6)
    opts.update(kw)
    return Loader(ds, 6, **opts)


def _epoch(loader):
    return [tuple(t.clone() for t in b) for b in loader]


def test_soft_fmix_masks_and_the_option_off_mix_after_the_pipeline(ds):
    assert _loader(ds, mix="fmix").graph_mix
    assert not _loader(ds, mix="fmix", mix_options={"max_soft": 0.1}).graph_mix
    assert not _loader(ds, mix="mixup").graph_mix
    # SaliencyMix: the fine-grained saliency in the graph; other saliency methods after it
    assert _loader(ds, mix="saliencymix").graph_mix
    assert not _loader(ds, mix="saliencymix", mix_options={"saliency": "spectral"}).graph_mix
    assert not _loader(ds, mix="saliencymix", mix_options={"saliency": "opencv"}).graph_mix
    assert not _loader(ds, mix="cutmix", mix_in_pipeline=False).graph_mix
    with pytest.raises(ValueError, match="mix_in_pipeline must be True or False"):
        _loader(ds, mix_in_pipeline="yes")


def test_a_gpu_loader_computes_saliencymix_boxes_after_the_pipeline(ds, monkeypatch):
    """SaliencyMix's Numba operators take host images: a GPU loader (its images are on the
    device) mixes after the pipeline, while CutMix and FMix stay in the graph."""
    # what resolve_device gives on a GPU machine (without asking torch); nothing is built here
    monkeypatch.setattr("fastcas.loading.loader.resolve_device", lambda d: "cuda")
    for kind, in_graph in (("saliencymix", False), ("cutmix", True), ("fmix", True)):
        loader = _loader(ds, mix=kind)
        assert loader.device == "cuda" and (loader.graph_mix is not None) == in_graph, kind


def test_paste_args_copy_the_box_at_its_place():
    boxes = np.array([[2, 3, 7, 9], [0, 0, 0, 0], [5, 0, 10, 10]])
    in_ids, anchors, shapes = mixing.paste_args(boxes, 10, 12, partner=np.array([1, 0, 2]))
    assert in_ids.tolist() == [[0, 1], [1, 0], [2, 2]] and in_ids.dtype == np.int32
    assert anchors[:, 0].tolist() == [[0, 0]] * 3 and shapes[:, 0].tolist() == [[10, 12]] * 3  # itself, whole
    assert anchors[:, 1].tolist() == [[2, 3], [10, 12], [5, 0]]                             # box corner (y, x)
    assert shapes[:, 1].tolist() == [[5, 6], [0, 0], [5, 10]]                                # empty box: nothing
    # every empty paste, also a box clipped to a line, is parked at (H, W): DALI's GPU kernel
    # never closes a zero-width paste opened inside the canvas (it would cover the rest)
    _, anchors, shapes = mixing.paste_args(np.array([[3, 2, 3, 6], [4, 4, 4, 4], [0, 1, 9, 1]]), 10, 12)
    assert anchors[:, 1].tolist() == [[10, 12]] * 3 and shapes[:, 1].tolist() == [[0, 0]] * 3
    assert mixing.paste_args(boxes, 10, 12)[0] is None                                           # two streams: no ids


CASES = {"one-stream": {}, "cmo-two-streams": {"foreground_weights": "cmo"}, "channels-last": {"channels_last": True},
         "batch-mode": {"mix_options": {"mode": "batch"}, "mix_prob": 1.0}, "fp16": {"dtype": "float16"},
         "partial": {"last_batch": "partial", "epoch_length": 33}, "smoothing": {"label_smoothing": 0.1},
         "cmo-batch-mode": {"foreground_weights": "cmo", "mix_options": {"mode": "batch"}, "mix_prob": 1.0}}


@pytest.mark.parametrize("kind", ["cutmix", "fmix", "saliencymix"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_mixed_in_the_pipeline_equals_the_torch_path(ds, kind, case):
    kw = {"mix": kind, **CASES[case]}
    graph = _loader(ds, **kw)
    torch_ = _loader(ds, mix_in_pipeline=False, **kw)
    assert graph.graph_mix and not torch_.graph_mix
    a, b = _epoch(graph), _epoch(torch_)
    assert len(a) == len(b) >= 5
    mixed = 0
    for step, ((xa, ya), (xb, yb)) in enumerate(zip(a, b)):
        assert xa.dtype == xb.dtype and xa.stride() == xb.stride()
        assert torch.equal(xa, xb), f"step {step}: pixels differ"
        assert torch.equal(ya, yb), f"step {step}: targets differ"
        mixed += int((ya.max(1).values < 1).sum())
    assert mixed > 0  # some samples really were mixed


def _reference_params(loader, kind, step, fg):
    """The host definition of a step's parameters; SaliencyMix's boxes come from the saliency
    of the foreground's uint8 pixels (the normalised images de-normalised)."""
    if kind != "saliencymix":
        return loader.plan(step)["params"]
    from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
    from fastcas.mix.graph_ops import pixels_u8

    cfg = loader.config
    return mixing.make_params_at(kind, cfg.seed, loader.epoch, loader.positions(step), cfg.image_size, cfg.image_size,
                            alpha=cfg.alpha, prob=cfg.mix_prob, foreground=pixels_u8(fg, IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.parametrize("kind", ["cutmix", "fmix", "saliencymix"])
def test_mixed_pixels_equal_the_reference_on_the_unmixed_stream(ds, kind):
    """The same loader without mixing decodes the same crops and flips (keyed by position):
    the NumPy reference applied to them with the loader's parameters gives its batches."""
    graph = _loader(ds, py_workers=1, mix=kind)
    plain = _loader(ds, mix=None, py_workers=1)
    for step, ((xm, tm), (xp, _)) in enumerate(zip(graph, plain)):
        pos = graph.positions(step)
        p = _reference_params(graph, kind, step, xp[mixing.pair_partner(pos)])
        ref = apply_numpy(p, xp.numpy(), xp.numpy()[mixing.pair_partner(pos)])
        np.testing.assert_array_equal(xm.numpy(), ref)
        # targets: lam of the pasted fraction, measured on the pixels themselves
        changed = (xm.numpy() != xp.numpy()).any(1).mean((1, 2))
        assert np.all(changed <= 1 - p.lam + 1e-9)
        np.testing.assert_allclose(tm.numpy(), mixing.soft_targets(p, *graph.plan(step)["labels"][:1],
                                                              graph.plan(step)["labels"][0][mixing.pair_partner(pos)],
                                                              graph.num_classes), atol=1e-6)


_DROPPED_THEN_FORK = """
import gc, os, sys
from fastcas import Loader
from fastcas.loading.baseline import TorchvisionLoader

ds, second = sys.argv[1], sys.argv[2]
collect = [False]
os.register_at_fork(after_in_child=lambda: collect[0] and gc.collect())  # what a worker's collector does, now
kw = dict(image_size=24, epoch_length=32, seed=5, device="cpu", py_workers=1, mix="cutmix", mix_prob=0.6)
gc.disable()  # keep the dropped pipeline uncollected in this process until the fork
first = Loader(ds, 6, **kw)
it = iter(first)
next(it)
it.close()
first.cycle = first  # dropped without close(), inside a reference cycle, as loaders often are
del first, it
collect[0] = True
loader = (Loader if second == "fastcas" else TorchvisionLoader)(ds, 6, **kw)
n = sum(1 for _ in loader)
print("batches", n, len(loader))
"""


@pytest.mark.parametrize("second", ["fastcas", "torchvision"])
def test_a_dropped_pipeline_is_not_shut_down_by_a_forked_worker(ds, second):
    """A dropped DALI pipeline sits in reference cycles until collected; a worker forked before
    that (DALI's source worker, or the baseline's DataLoader worker: bench builds both in one
    process) inherits it, and the worker's garbage collector shuts DALI down there: SIGSEGV or a
    hang. Both loaders collect before forking. Run in a child process with a time limit, so a
    regression fails instead of hanging the suite."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-c", _DROPPED_THEN_FORK, str(ds), second], env=env, cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "batches 5 5" in p.stdout, p.stdout


@pytest.mark.parametrize("case", ["one-stream", "cmo-two-streams", "channels-last"])
def test_fmix_select_by_dali_arithmetic_as_on_the_gpu_equals_the_numba_operator(ds, case):
    """The GPU graph selects FMix pixels with DALI's arithmetic operators, the CPU graph with one
    Numba operator (fastcas.mix.graph_ops.fmix_select): both give the same batches (the public
    seam: the Loader option fmix_select)."""
    kw = {"mix": "fmix", **CASES[case]}
    numba_op = _epoch(_loader(ds, **kw, fmix_select="numba"))
    arithmetic = _epoch(_loader(ds, **kw, fmix_select="arithmetic"))
    assert len(numba_op) == len(arithmetic) >= 5
    for (xa, ya), (xb, yb) in zip(numba_op, arithmetic):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)



def test_fmix_select_names_a_variant_and_numba_runs_on_cpu_pipelines_only():
    """The FMix select variant is a validated option (LoaderConfig and the pipeline's own config)."""
    from fastcas import LoaderConfig
    from fastcas.loading.graph_config import PipelineConfig

    assert LoaderConfig(batch_size=2).fmix_select == "auto"
    with pytest.raises(ValueError, match="fmix_select must be one of 'auto', 'numba', 'arithmetic', got 'gpu'"):
        LoaderConfig(batch_size=2, fmix_select="gpu")
    with pytest.raises(ValueError, match="fmix_select='numba' runs on CPU pipelines only"):
        PipelineConfig(batch_size=2, device="cuda", fmix_select="numba")
    assert PipelineConfig(batch_size=2, device="cpu", fmix_select="numba").fmix_select == "numba"
