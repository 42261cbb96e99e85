"""One Loader, one consumer: a second thread iterating it is refused at once, and the epoch or
state cannot change under a live iteration (its state_dict would describe another stream)."""
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


def test_set_epoch_during_iteration_is_refused_and_state_stays_consistent(ds):
    loader = _loader(ds)
    it = iter(loader)
    next(it)
    with pytest.raises(RuntimeError, match=r"Loader.set_epoch\(5\) during an iteration \(epoch 0, step 1"):
        loader.set_epoch(5)
    with pytest.raises(RuntimeError, match="Loader.load_state_dict during an iteration"):
        loader.load_state_dict(loader.state_dict())
    assert loader.state_dict()["epoch"] == 0
    loader.set_epoch(0)  # the same epoch: nothing changes, allowed
    del it  # the iteration ends; now the epoch may change
    loader.set_epoch(5)
    y5 = np.concatenate([y.numpy() for _, y in loader])
    ref = _loader(ds)
    ref.set_epoch(5)
    np.testing.assert_array_equal(y5, np.concatenate([y.numpy() for _, y in ref]))
    loader.close()
    ref.close()
