"""Guard: a test that is not marked ``gpu`` must never ask for a GPU.

Unmarked tests pass ``device="cpu"`` explicitly. On a GPU machine, one that relies on
``device="auto"`` would silently become a GPU test (and several such tests fail there), so this
autouse fixture FAILS any unmarked test that asks torch whether a GPU exists (how every
``device="auto"`` in fastcas resolves: ``fastcas.loading.config.resolve_device``, the scorer, the
attribute runner) or initialises CUDA, on this CPU-only machine as well as on a GPU one. Child
processes started by a test (the CLI, torchrun) get ``CUDA_VISIBLE_DEVICES=""``: they see no GPU.
The failure is raised as ``pytest.fail`` (a BaseException, so ``except Exception`` cannot
swallow it); calls from other threads and CUDA initialised by other means fail at teardown.
"""
from __future__ import annotations

import threading

import pytest

HINT = "a test not marked gpu must pass device='cpu' explicitly (or be marked @pytest.mark.gpu)"


@pytest.fixture(autouse=True)
def no_cuda_in_unmarked_tests(request, monkeypatch):
    if request.node.get_closest_marker("gpu") is not None:
        yield
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        yield
        return
    asked: list[str] = []  # from other threads, where the raise may be lost

    def refuse(what):
        def call(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                asked.append(what)
            pytest.fail(f"{what}: {HINT}", pytrace=True)
        return call

    monkeypatch.setattr(torch.cuda, "is_available", refuse("asked torch.cuda.is_available() (device='auto'?)"))
    monkeypatch.setattr(torch.cuda, "_lazy_init", refuse("initialised CUDA"))
    was_initialised = torch.cuda.is_initialized()
    yield
    if asked:
        pytest.fail(f"{asked[0]}: {HINT}", pytrace=False)
    if not was_initialised and torch.cuda.is_initialized():
        pytest.fail(f"initialised CUDA: {HINT}", pytrace=False)
