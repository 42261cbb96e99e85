"""The producer thread (the Loader option prefetch is its depth): order, look-ahead, errors, early stop."""
import threading
import time

import pytest
import torch

from fastcas.loading.producer import Producer


def _counting(n, log):
    def produce():
        for i in range(n):
            log.append(("made", i, threading.get_ident()))
            yield (torch.full((2,), i), i)
    return produce


def test_order_and_work_on_another_thread():
    log = []
    got = [int(b[1]) for b in Producer(_counting(7, log), depth=2, device="cpu")]
    assert got == list(range(7))
    assert {t for _, _, t in log} == {log[0][2]} and log[0][2] != threading.get_ident()


def test_look_ahead_is_bounded_by_depth():
    made = []

    def produce():
        for i in range(20):
            made.append(i)
            yield (i,)

    p = Producer(produce, depth=3, device="cpu")
    it = iter(p)
    next(it)
    time.sleep(0.3)  # let the producer run as far as it may
    # queue holds `depth`, plus at most one batch built and waiting for a free slot
    assert 1 + 3 <= len(made) <= 1 + 3 + 1
    p.close()


def test_producer_error_is_raised_on_the_consumer_at_its_batch():
    def produce():
        yield (1,)
        yield (2,)
        raise KeyError("sample 'k7' vanished")

    seen = []
    with pytest.raises(KeyError, match="k7"):
        for b in Producer(produce, depth=2, device="cpu"):
            seen.append(b[0])
    assert seen == [1, 2]


def test_early_stop_ends_the_producer_thread():
    def produce():
        i = 0
        while True:  # endless: only close() can stop it
            yield (i,)
            i += 1

    p = Producer(produce, depth=2, device="cpu")
    for b in p:
        if b[0] == 3:
            break
    assert p._thread is not None and not p._thread.is_alive()
    assert p.consumed == 4 and p.produced >= 4


def test_bad_depth_and_second_iteration():
    with pytest.raises(ValueError, match="prefetch depth must be >= 1, got 0"):
        Producer(lambda: iter(()), depth=0, device="cpu")
    p = Producer(lambda: iter([(1,)]), device="cpu")
    assert list(p) == [(1,)]
    with pytest.raises(RuntimeError, match="iterated once"):
        list(p)


@pytest.mark.gpu
def test_cuda_batches_are_ready_on_the_consumer_stream():
    def produce():
        for i in range(5):
            x = torch.full((1 << 20,), float(i), device="cuda")
            yield (x * 2 + 1,)  # work queued on the producer's stream

    for i, (x,) in enumerate(Producer(produce, depth=2, device="cuda")):
        assert torch.all(x == 2 * i + 1).item()
