"""Resume checks cover every setting that changes the stream (issue 36, item 7): streaming's
shuffle buffer, evaluation loaders and states without ``position``; epoch, step and position
are range-checked when the state is loaded, not at the first batch."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from tests.helpers import collect, make_dataset  # noqa: E402

pytestmark = pytest.mark.dali
KW = dict(image_size=16, py_workers=0, device="cpu", prefetch=0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume12") / "ds"
    make_dataset(root, counts=(6, 4, 2), shard_size=4)
    return root


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume60") / "ds"
    make_dataset(root, counts=(30, 20, 10), shard_size=8, seed=1)
    return root


def test_streaming_shuffle_buffer_is_checked_mid_epoch(large):
    kw = dict(KW, mode="streaming", epoch_length=40, seed=2)
    a = Loader(large, 4, shuffle_buffer=6, **kw)
    collect(a, 3)
    state = a.state_dict()
    with pytest.raises(ValueError, match=r"mid-epoch.*shuffle_buffer \(saved 6, now 2\)"):
        Loader(large, 4, shuffle_buffer=2, **kw).load_state_dict(state)
    same = Loader(large, 4, shuffle_buffer=6, **kw)
    same.load_state_dict(state)  # the same buffer resumes
    assert same.step == 3


def test_an_evaluation_state_of_another_dataset_is_refused(small, large):
    a = Loader(small, 4, train=False, **KW)
    collect(a, 1)
    with pytest.raises(ValueError, match=r"Loader.load_state_dict: .*dataset \(saved"):
        Loader(large, 4, train=False, **KW).load_state_dict(a.state_dict())


def test_a_state_without_position_is_checked_like_any_other(small, large):
    """A 12-sample uniform/cutmix state without 'position' (older fastcas) no longer loads into
    a 60-sample cmo/fmix loader."""
    a = Loader(small, 4, mix="cutmix", epoch_length=12, **KW)
    collect(a, 1)
    state = {k: v for k, v in a.state_dict().items() if k != "position"}
    other = Loader(large, 4, weights="uniform", foreground_weights="cmo", mix="fmix", epoch_length=12, **KW)
    with pytest.raises(ValueError, match=r"dataset \(saved .*foreground_weights \(saved None, now 'cmo'\)"):
        other.load_state_dict(state)
    # the same loader still resumes a state without position at its step
    same = Loader(small, 4, mix="cutmix", epoch_length=12, **KW)
    same.load_state_dict(state)
    assert same.step == 1


def test_a_training_state_into_an_evaluation_loader_is_refused(small):
    a = Loader(small, 4, epoch_length=12, **KW)
    collect(a, 1)
    with pytest.raises(ValueError, match=r"train \(saved True, now False\)"):
        Loader(small, 4, train=False, **KW).load_state_dict(a.state_dict())


@pytest.mark.parametrize("change, match", [
    (dict(epoch=-1), r"epoch must be a non-negative integer, got -1"),
    (dict(epoch=1.5), r"epoch must be a non-negative integer, got 1\.5"),
    (dict(epoch=True), r"epoch must be a non-negative integer, got True"),
    (dict(position=-4), r"position must be a non-negative integer, got -4"),
    (dict(position=10**9), r"position 1000000000 lies past the end of the epoch: this loader has 3 steps"),
    (dict(position=4.0), r"position must be a non-negative integer, got 4\.0"),
    (dict(step=-1), r"step must be a non-negative integer, got -1"),
])
def test_epoch_and_position_are_range_checked_at_load(small, change, match):
    a = Loader(small, 4, epoch_length=12, **KW)
    collect(a, 1)
    with pytest.raises(ValueError, match=match):
        Loader(small, 4, epoch_length=12, **KW).load_state_dict({**a.state_dict(), **change})


def test_an_evaluation_step_past_the_epoch_is_refused_and_a_hand_written_state_loads(small):
    loader = Loader(small, 4, train=False, **KW)
    with pytest.raises(ValueError, match=r"step 7 lies past the end of the epoch: this loader has 3 steps"):
        loader.load_state_dict({"epoch": 0, "step": 7, "seed": 0})
    loader.load_state_dict({"epoch": 0, "step": 2, "seed": 0})  # as fastcas.scoring.run writes it
    assert loader.step == 2
    with pytest.raises(ValueError, match=r"a state is a dict"):
        loader.load_state_dict([0, 2])
