"""The batch layout: one owner of the output names of the source, the DALI graph, the
Loader's finishing step, the quarantine and the torchvision baseline."""
import numpy as np
import pytest

from fastcas import Loader, TorchvisionLoader
from fastcas.loading.layout import BatchLayout
from tests.helpers import make_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    make_dataset(root, counts=(8, 5, 3), shard_size=8, size=(40, 32))
    return root


def test_names_per_stream_and_in_graph_mix():
    one = BatchLayout(1)
    assert one.source_names == ("jpegs0", "labels0", "windows0", "flips0", "skipped")
    assert one.pipeline_names == ("images0", "labels0", "skipped")
    two = BatchLayout(2)
    assert two.pipeline_names == ("images0", "labels0", "images1", "labels1", "skipped")
    cut = BatchLayout(1, "cutmix")
    assert cut.paste == ("in_ids", "anchors", "shapes", "lam")
    assert cut.pipeline_names == ("images0", "labels0", "lam", "skipped")
    # two streams take the foreground from stream 1: no in-batch partner ids
    assert BatchLayout(2, "fmix").paste == ("masks", "lam")
    assert BatchLayout(2, "cutmix").pipeline_names == ("images0", "labels0", "labels1", "lam", "skipped")


def test_source_dtypes_follow_the_names():
    lay = BatchLayout(2, "fmix")
    d = dict(zip(lay.source_names, lay.source_dtypes()))
    assert d == {"jpegs0": "uint8", "labels0": "int64", "windows0": "float32", "flips0": "int32",
                 "jpegs1": "uint8", "labels1": "int64", "windows1": "float32", "flips1": "int32",
                 "masks": "uint8", "lam": "float64", "skipped": "int64"}
    assert dict(zip(BatchLayout(1, "saliencymix").source_names, BatchLayout(1, "saliencymix").source_dtypes()))[
        "centre_ids"] == "int32"


def test_pack_and_named_round_trip_and_name_what_is_wrong():
    lay = BatchLayout(1, "cutmix")
    values = {n: i for i, n in enumerate(lay.pipeline_names)}
    packed = lay.pack(values, "pipeline")
    assert packed == tuple(range(len(lay.pipeline_names)))
    assert lay.named(packed, "pipeline") == values
    with pytest.raises(KeyError, match=r"missing .*\['lam'\]"):
        lay.pack({k: v for k, v in values.items() if k != "lam"}, "pipeline")
    with pytest.raises(KeyError, match=r"not pipeline outputs .*\['images1'\]"):
        lay.pack({**values, "images1": 0}, "pipeline")
    with pytest.raises(ValueError, match=r"2 source outputs, .* has 9"):
        lay.named((0, 1), "source")
    with pytest.raises(ValueError, match="streams must be 1 or 2"):
        BatchLayout(3)
    with pytest.raises(ValueError, match="in-graph mix must be one of"):
        BatchLayout(1, "mixup")


@pytest.mark.parametrize("opts", [dict(), dict(mix="cutmix"), dict(mix="fmix", foreground_weights="cmo"),
                                  dict(mix="saliencymix")])
def test_the_source_writes_what_the_layout_names(ds, opts):
    loader = Loader(ds, 4, device="cpu", py_workers=0, seed=3, **opts)
    source = loader.source(0, 0)
    out = source.layout.named(source.batch(0, np.arange(4)))
    assert source.layout.streams == len(loader.streams)
    assert source.layout.mix == (opts["mix"] if loader.graph_mix else None)
    for name, dtype in zip(source.layout.source_names, source.layout.source_dtypes()):
        if name.startswith("jpegs"):
            assert len(out[name]) == 4 and all(j.dtype == np.uint8 for j in out[name])
        else:
            assert out[name].dtype == np.dtype(dtype) and len(out[name]) == 4, name
    loader.close()


def test_the_baseline_is_the_loader_with_another_backend(ds):
    # the seam: the twin only chooses its backend, it overrides no Loader method
    assert set(vars(TorchvisionLoader)) - {"__module__", "__doc__", "__qualname__", "__firstlineno__",
                                            "__static_attributes__"} == {"__init__"}
    tv = TorchvisionLoader(ds, 4, device="cpu", py_workers=0, seed=3, mix="cutmix")
    dali = Loader(ds, 4, device="cpu", py_workers=0, seed=3, mix="cutmix")
    assert tv.backend.name == "torchvision" and not tv.backend.mixes_in_graph and not tv.graph_mix
    assert dali.backend.name == "dali" and dali.graph_mix
    images, targets = next(iter(tv))
    assert images.shape[0] == 4 and targets.shape == (4, tv.num_classes)
    # the same labels in the same order: the same samples reach both engines
    assert np.allclose(targets.sum(1).numpy(), 1.0)
    tv.close()
    dali.close()
