"""The conftest guard (tests/cuda_guard.py): an unmarked test that resolves device="auto" or asks
torch for a GPU fails, even when the code under test swallows exceptions; gpu-marked and
device="cpu" tests pass. Runs a small pytest session in a subprocess (its own torch state)."""

pytest_plugins = ["pytester"]


def test_guard_fails_unmarked_tests_that_ask_for_a_gpu(pytester, monkeypatch):
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a CUDA GPU\n")
    pytester.makeconftest("from tests.cuda_guard import no_cuda_in_unmarked_tests  # noqa: F401\n")
    pytester.makepyfile(test_devices='''
        import os
        import pytest
        from fastcas.loading.config import resolve_device

        def test_auto():
            resolve_device("auto")

        def test_auto_swallowed():
            try:
                resolve_device("auto")
            except Exception:
                pass

        def test_children_see_no_gpu():
            assert os.environ["CUDA_VISIBLE_DEVICES"] == ""

        def test_cpu():
            assert resolve_device("cpu") == "cpu"

        @pytest.mark.gpu
        def test_marked():
            assert resolve_device("auto") in ("cpu", "cuda")
    ''')
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-rA", "--tb=short")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines_random([
        "FAILED test_devices.py::test_auto - *", "FAILED test_devices.py::test_auto_swallowed - *",
        "PASSED test_devices.py::test_cpu", "PASSED test_devices.py::test_marked",
        "PASSED test_devices.py::test_children_see_no_gpu",
        "*asked torch.cuda.is_available() (device='auto'?): a test not marked gpu must pass device='cpu'*"])
