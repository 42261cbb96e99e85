"""One Loader, one consumer: a second thread iterating it is refused at once, and the epoch or
state cannot change under another thread's live iteration (its state_dict would describe another
stream); an iterator this thread left open is superseded."""
import threading

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas.loading.loader import Loader  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    d = tmp_path_factory.mktemp("misuse") / "d"
    make_dataset(d, counts=(6, 6), shard_size=8, size=(24, 20))
    return d


def _loader(ds):
    return Loader(ds, 4, image_size=16, py_workers=0, num_threads=1, device="cpu", seed=3)


def test_a_second_thread_iterating_the_same_loader_is_refused_and_the_first_goes_on(ds):
    loader = _loader(ds)
    it = iter(loader)
    first = next(it)
    errors = []

    def other():
        try:
            next(iter(loader))
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other, name="intruder")
    t.start()
    t.join(60)
    assert not t.is_alive(), "the second consumer blocked instead of failing"
    assert len(errors) == 1 and "already being iterated by thread 'MainThread'" in errors[0]
    rest = list(it)  # the first consumer is undisturbed: the whole epoch arrives
    assert 1 + len(rest) == len(loader) and first[0].shape == (4, 3, 16, 16)
    # after the first iteration ends another thread may iterate
    got = []
    t = threading.Thread(target=lambda: got.extend(b[1].numpy() for b in loader))
    t.start()
    t.join(120)
    assert len(got) == len(loader)
    loader.close()


def _labels(batches):
    return np.concatenate([y.numpy() for _, y in batches])


def test_set_epoch_from_another_thread_during_an_iteration_is_refused(ds):
    loader = _loader(ds)
    it = iter(loader)
    next(it)
    errors = []

    def other():
        try:
            loader.set_epoch(5)
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join(60)
    assert len(errors) == 1 and "set_epoch(5) during an iteration by thread 'MainThread' (epoch 0, step 1" in errors[0]
    assert loader.state_dict()["epoch"] == 0 and loader.state_dict()["step"] == 1
    loader.close()


def test_set_epoch_or_load_state_dict_supersedes_an_iterator_left_open(ds):
    """An iterator this thread left open (Lightning keeps one after limit_*_batches, then calls
    set_epoch) is superseded: the state describes the new position and resuming the old
    iterator raises instead of reading another stream. (Until issue 34 set_epoch refused here.)"""
    loader = _loader(ds)
    ref = _loader(ds)
    epoch0 = _labels(ref)
    ref.set_epoch(5)
    epoch5 = _labels(ref)
    it = iter(loader)
    next(it)
    mid = loader.state_dict()
    loader.set_epoch(5)
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (5, 0)
    with pytest.raises(RuntimeError, match=r"superseded by a later iter\(loader\), set_epoch or load_state_dict"):
        next(it)
    np.testing.assert_array_equal(_labels(loader), epoch5)
    it = iter(loader)
    next(it)
    loader.load_state_dict(mid)  # epoch 0 after its first step
    with pytest.raises(RuntimeError, match="superseded"):
        next(it)
    np.testing.assert_array_equal(_labels(loader), epoch0[4:])
    loader.close()
    ref.close()
