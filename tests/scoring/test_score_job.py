"""The scoring job under torchrun binds each rank to its local GPU."""
import pytest

torch = pytest.importorskip("torch")


pytest.importorskip("nvidia.dali")


pytestmark = pytest.mark.dali


def test_score_binds_the_local_rank_gpu(monkeypatch):
    from fastcas.scoring import job as score

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    # stand in for a GPU machine: 'cuda' resolves without asking torch (no GPU here)
    monkeypatch.setattr("fastcas.loading.config.resolve_device", lambda d: "cpu" if d == "auto" else d)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert score._bind_local_gpu("cpu") is None and calls == []
    assert score._bind_local_gpu("cuda") == 3 and calls == [3]
