"""The batch stream and the plan are pinned across the loading/ redesign (issue 33): sha256 digests of
every batch (pixels, targets) and of every step's :meth:`Loader.plan` (positions, indices, labels,
windows, flips, transform draws, partners, mixing parameters), recorded on the code BEFORE the
redesign (branch h33 at 6f61248, DALI CPU). Configs: each mix kind (in the DALI graph and by torch),
CMO two-stream, CAS and a resampling plan, evaluation, streaming mode, and a resume at world size 1
of a state saved by rank 0 of 2. Extends :mod:`tests.loading.test_transforms_pinned`; the digests
depend on PIL's JPEG encoder and DALI's CPU decoder and resampler (re-record on a known-good commit
if either is upgraded: ``python -m tests.loading.test_stream_identity DIR``)."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali

COUNTS = (6, 5, 3, 2)
KW = dict(image_size=16, seed=5, py_workers=0, device="cpu")
SCORES = np.linspace(0.1, 2.0, sum(COUNTS))

CONFIGS = {
    "uniform": dict(batch_size=4, epoch_length=12),
    "cutmix": dict(batch_size=4, epoch_length=12, mix="cutmix", alpha=1.0),
    "cutmix_torch": dict(batch_size=4, epoch_length=12, mix="cutmix", alpha=1.0, mix_in_pipeline=False),
    "fmix": dict(batch_size=4, epoch_length=12, mix="fmix", alpha=1.0),
    "fmix_soft": dict(batch_size=4, epoch_length=12, mix="fmix", alpha=1.0, mix_options={"max_soft": 0.2}),
    "saliencymix": dict(batch_size=4, epoch_length=12, mix="saliencymix", alpha=1.0),
    "saliencymix_torch": dict(batch_size=4, epoch_length=12, mix="saliencymix", alpha=1.0, mix_in_pipeline=False),
    "mixup": dict(batch_size=4, epoch_length=12, mix="mixup", alpha=0.4),
    "mixup_cutmix": dict(batch_size=4, epoch_length=12, mix="mixup_cutmix", alpha=1.0),
    "cmo": dict(batch_size=4, epoch_length=12, foreground_weights="cmo", mix="cutmix", mix_prob=0.5),
    "cas": dict(batch_size=4, epoch_length=12, weights="cas", scores=True),
    "oversample": dict(batch_size=4, weights="oversample"),
    "eval": dict(batch_size=5, train=False, last_batch="partial"),
    "eval_pad_rank1": dict(batch_size=3, train=False, rank=1, world_size=2, valid_mask=True),
    "streaming": dict(batch_size=4, epoch_length=16, mode="streaming", shuffle_buffer=4, mix="cutmix"),
}

PINNED = {
    'uniform/batches': 'd615bb1aef6dea566a26dd8d10b8df6c8b105c62862ab3c9f290230c205ffbcf',
    'uniform/plan': 'c353f0f56629bebfc013f2f9601f76892ef6b556ed4509fec1c800512889baf3',
    'cutmix/batches': '19de983f528c74505c650c881e79dbeef63f5b35d173cf8308f091482c9e92cc',
    'cutmix/plan': '7fbdc2340a83ba9b7b54b4a7d66cf6141541cfe81275442873f35c8e170e301f',
    'cutmix_torch/batches': '19de983f528c74505c650c881e79dbeef63f5b35d173cf8308f091482c9e92cc',
    'cutmix_torch/plan': '7fbdc2340a83ba9b7b54b4a7d66cf6141541cfe81275442873f35c8e170e301f',
    'fmix/batches': '50c5edf8d0244ea1164d2608f6b0adda37241a05de7558d276bb474aa95df652',
    'fmix/plan': 'a578060ecc4f1cfa9fb888d94027b6e842116752d0e63e5a3c8637f2d884f3ef',
    'fmix_soft/batches': 'd59afb3ce287e1feddac7848eb3e5eb65167581f18fb69ba2710fc453c69cc93',
    'fmix_soft/plan': '5c697f42de5d62055ec026963315240b7568fe1752b5010eb35cc7767ab8ec3e',
    'saliencymix/batches': 'a08c27f657a6011ab34ca31a337fe75b50335df369080dc72bd602f3de0c4d6a',
    'saliencymix/plan': 'b552d089b5ae97b5d515436b6a7b33131b2cca3dff96798a9cef04a4573b00b7',
    'saliencymix_torch/batches': 'a08c27f657a6011ab34ca31a337fe75b50335df369080dc72bd602f3de0c4d6a',
    'saliencymix_torch/plan': 'b552d089b5ae97b5d515436b6a7b33131b2cca3dff96798a9cef04a4573b00b7',
    'mixup/batches': 'ca2566ec363c60c22a87167441fa414690982b3633428a651be3dd846a2dad0c',
    'mixup/plan': '2fdf7ce2f5b704ba0fbaeb1209912f34fee4a028d8c8d52b9d0859588c22e054',
    'mixup_cutmix/batches': '7833a9b7f843259137a3dc888971a68842f762eee7836e37cb91d69cc9a82917',
    'mixup_cutmix/plan': '9e8417a1a40eb275873a3f827697b3010e2600f6c97d93c269223c86761f234a',
    'cmo/batches': 'c573ca0597c49ac717af870306f0cd1485ae22b2985d74899ec96fee815690b9',
    'cmo/plan': 'b804dfc7b3fdc6a7d6eefaa23a194b15a45af2f7aa1e4f9a6931bf89eba7b92d',
    'cas/batches': 'af228f9f2ce0c8f5d1eb82fd3dc911d944110d291a8ab9ffed77d9b083a78963',
    'cas/plan': 'b3f820e42efccf33373a2139e2466038f17c2706ef14a764cbf9ad3d5c4e681b',
    'oversample/batches': 'b28a71cba7dc4679741e4e6074370559ee92e05b77db0c8f956b4ac14bb10682',
    'oversample/plan': 'b1726d403f684877f242928f80b79551f2019c50f59e4b5e413a6d0edddc1a37',
    'eval/batches': '7c5bea1c4cedaca67aaaf44bf25fdef3b104fb61ce548eff88728685dd26aa6d',
    'eval/plan': 'e4a39da2421e280b24da639ed19b21e16634e2a90b0d26cfa223971a415b13a3',
    'eval_pad_rank1/batches': '6809a601eecef298c15131a5491fc41f697023406cb6e5445dd931007e985480',
    'eval_pad_rank1/plan': 'f49c287746d3081dd0ce6647b2f676654190da247fa23cdbfb38ea28f49f95e3',
    'streaming/batches': 'cab0ef90f21423bf74d524fdc866cb28e1228f9755a8366fea7f77fe0741e349',
    'streaming/plan': 'f12e42221c9dd763c7c049fdc260ee7728be58ff682d895cb8adbd4bc1d693de',
    'cmo/resume-2to1': '79cb9a40a0364e62dbff7ccf1a1b74cde1b5382b830c83cec295f14fb270b0ce',
    'mixup_cutmix/resume-2to1': '590e5dd61b311b7247341b7b9171741b52d958bb33d287ba1f57c6745011aa44',
    'saliencymix/resume-2to1': 'c2a88094e5d89c787285c7fe21bf5231fa3e6b774e6fa3ec3625cd9df9c130cf',
}


def _feed(h, x) -> None:
    """Hash ``x`` with its structure: arrays by dtype, shape and bytes; containers in order."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        h.update(f"a{x.dtype}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    elif dataclasses.is_dataclass(x):
        _feed(h, {f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            h.update(f"k{k}".encode())
            _feed(h, x[k])
    elif isinstance(x, (list, tuple)):
        h.update(f"l{len(x)}".encode())
        for v in x:
            _feed(h, v)
    else:
        h.update(repr(x).encode())


def make(ds, name: str, **over) -> Loader:
    kw = {**KW, **CONFIGS[name], **over}
    b = kw.pop("batch_size")
    if kw.pop("scores", None):
        kw["scores"] = SCORES
    return Loader(ds, b, **kw)


def digests(loader) -> tuple[str, str]:
    """(batches, plans) of one epoch: the batches' pixels and targets (and valid masks), and every
    step's plan."""
    hb, hp = hashlib.sha256(), hashlib.sha256()
    for step in range(len(loader)):
        _feed(hp, loader.plan(step))
    for batch in loader:
        _feed(hb, list(batch))
    return hb.hexdigest(), hp.hexdigest()


def resume_digest(ds, name: str) -> str:
    """Rank 0 of 2 (batch 2) consumes one step and saves; a world-size-1 loader (batch 4) loads the
    state and yields the rest of the epoch: its batches, plans and the saved state's config."""
    saver = make(ds, name, batch_size=2, rank=0, world_size=2)
    it = iter(saver)
    next(it)
    state = saver.state_dict()
    del it
    saver.close()
    loader = make(ds, name, batch_size=4, rank=0, world_size=1)
    loader.load_state_dict(state)
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in state["config"].items() if k != "dataset"}, sort_keys=True,
                        default=str).encode())
    for step in range(loader.step, len(loader)):
        _feed(h, loader.plan(step))
    for batch in loader:
        _feed(h, list(batch))
    loader.close()
    return h.hexdigest()


def all_digests(ds) -> dict[str, str]:
    out = {}
    for name in CONFIGS:
        loader = make(ds, name)
        out[f"{name}/batches"], out[f"{name}/plan"] = digests(loader)
        loader.close()
    for name in ("cmo", "mixup_cutmix", "saliencymix"):
        out[f"{name}/resume-2to1"] = resume_digest(ds, name)
    return out


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity") / "ds"
    make_dataset(root, counts=COUNTS, shard_size=4, size=(40, 32), seed=7)
    return root


@pytest.fixture(scope="module")
def measured(ds):
    return all_digests(ds)


def test_every_config_is_pinned():
    assert set(PINNED) == {f"{n}/batches" for n in CONFIGS} | {f"{n}/plan" for n in CONFIGS} | {
        f"{n}/resume-2to1" for n in ("cmo", "mixup_cutmix", "saliencymix")}


@pytest.mark.parametrize("key", sorted(PINNED))
def test_stream_is_bit_identical_to_the_pinned_one(measured, key):
    assert measured[key] == PINNED[key]


if __name__ == "__main__":  # re-record: python -m tests.loading.test_stream_identity DIR
    import sys
    from pathlib import Path

    root = Path(sys.argv[1]) / "ds"
    make_dataset(root, counts=COUNTS, shard_size=4, size=(40, 32), seed=7)
    for key, value in all_digests(root).items():
        print(f"    {key!r}: {value!r},")
