"""``batch_timeout``: a stopped DALI worker (SIGSTOP, as a D-state NFS read would) raises
BatchTimeoutError naming its pid and /proc state instead of stalling forever; the loader then
closes cleanly, with no thread left waiting (issue 36, item 9). Run in a subprocess with a time
limit, so a regression fails instead of hanging the suite."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from tests.helpers import make_dataset  # noqa: E402

pytestmark = pytest.mark.dali
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("timeout") / "ds"
    make_dataset(root, counts=(8, 6, 4), shard_size=6)
    return root


STOP = """
import faulthandler, json, os, signal, sys, threading
import fastcas
from fastcas.core.errors import BatchTimeoutError
faulthandler.dump_traceback_later(100, exit=True)  # a hang fails with the stack where it hung

ds, workers, then = sys.argv[1], int(sys.argv[2]), sys.argv[3]
loader = fastcas.Loader(ds, 4, image_size=16, epoch_length=400, py_workers=workers, device="cpu",
                        batch_timeout=1.0)
it = iter(loader)
next(it)
pids = loader.worker_pids()
# every worker is stopped: DALI hands tasks to whichever worker is free, so with one of two
# stopped the other may finish the epoch alone (no stall to detect) -- the race is not the test
for pid in pids:
    os.kill(pid, signal.SIGSTOP)
out = {"pids": pids, "batches": 0}
try:
    while True:                      # the batches DALI had prefetched arrive first
        next(it)
        out["batches"] += 1
except BatchTimeoutError as exc:
    out.update(message=str(exc), stuck=exc.stuck)
except StopIteration:
    out.update(message="the epoch ended without a timeout", stuck=[])
for pid in pids:
    os.kill(pid, signal.SIGCONT if then == "cont" else signal.SIGKILL)
it.close()
loader.close()
out["threads"] = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
out["worker_pids_after_close"] = loader.worker_pids()
out["alive"] = [p for p in pids
                if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
# the loader still works: iterating again rebuilds the pipeline at the step it stopped at
again = iter(loader)
out["after"] = len(next(again)[1])
again.close()
loader.close()
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers, then", [(1, "cont"), (2, "kill")])
def test_a_stopped_worker_raises_naming_pid_and_state_then_closes_cleanly(ds, workers, then):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(STOP), str(ds), str(workers), then], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    pid = out["pids"][0]
    assert len(out["pids"]) == workers and sorted(out["stuck"]) == sorted(out["pids"])
    assert "no batch within batch_timeout=1 s" in out["message"]
    assert f"DALI source worker pid {pid} is T (stopped)" in out["message"]
    assert out["threads"] == [] and out["worker_pids_after_close"] == [] and out["alive"] == []
    assert out["after"] == 4


@pytest.mark.parametrize("options, match", [
    (dict(batch_timeout=0), r"batch_timeout must be None or seconds in \(0, 86400\], got 0"),
    (dict(batch_timeout=-1.5), r"batch_timeout must be None or seconds in \(0, 86400\], got -1\.5"),
    (dict(batch_timeout="5"), r"batch_timeout must be None or seconds in \(0, 86400\], got '5'"),
    (dict(batch_timeout=True), r"batch_timeout must be None or seconds in \(0, 86400\], got True"),
    (dict(batch_timeout=float("nan")), r"batch_timeout must be None or seconds"),
    (dict(batch_timeout=5, prefetch=0), r"batch_timeout needs prefetch >= 1"),
])
def test_batch_timeout_is_validated(ds, options, match):
    with pytest.raises(ValueError, match=match):
        Loader(ds, 4, device="cpu", **options)


def test_worker_pids_is_empty_without_workers_and_before_the_first_batch(ds):
    loader = Loader(ds, 4, image_size=16, py_workers=0, device="cpu", batch_timeout=30)
    assert loader.worker_pids() == []
    images, _ = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and loader.worker_pids() == []
    loader.close()


class _Stuck:
    """A backend (the ``backend=`` seam) whose ``run`` blocks until ``kill_workers``: a stopped
    worker. Records on which thread ``close`` ran and whether ``run`` had returned by then."""

    name, mixes_in_graph, pipe, built = "stuck", False, None, None

    def __init__(self):
        import threading

        self.released, self.running, self.closes = threading.Event(), threading.Event(), []

    def build(self, source, cfg, device):
        self.pipe, self.built = object(), (source, None)

    def run(self):
        self.running.set()
        self.released.wait(30)  # bounded: never a thread left waiting
        self.running.clear()
        raise RuntimeError("killed")

    def kill_workers(self):
        self.released.set()

    def worker_pids(self):
        return []

    def queue_depth(self):
        return 0

    def decode_probe(self):
        return None

    def reset(self):
        pass

    def close(self):
        self.closes.append(self.running.is_set())
        self.pipe = None


def test_load_state_dict_after_a_timeout_stops_the_stuck_producer_first(ds, monkeypatch):
    """After a BatchTimeoutError the producer thread may still be inside the backend's ``run``;
    ``load_state_dict`` (which closes the pipeline for a changed quarantine) must first end it
    (kill the workers, join), never close the pipeline under it from the consumer thread."""
    from fastcas.core.errors import BatchTimeoutError
    from fastcas.loading import loader as loader_module

    monkeypatch.setattr(loader_module, "STARTUP_S", 0.0)
    backend = _Stuck()
    loader = Loader(ds, 4, image_size=16, epoch_length=40, py_workers=0, device="cpu", batch_timeout=0.3,
                    backend=backend)
    state = loader.state_dict()
    with pytest.raises(BatchTimeoutError):
        next(iter(loader))
    state["quarantine"] = [loader.reader.keys[0]]  # a changed quarantine: the load closes the pipeline
    loader.load_state_dict(state)
    assert backend.released.is_set() and backend.closes and not any(backend.closes)
    loader.close()
