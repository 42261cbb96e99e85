"""Packaging: benchmarks/gpu.sh installs DALI with its runtime dependencies; setup.py pins numba-cuda with its CUDA 13 extra."""
import pytest


pytest.importorskip("nvidia.dali")


pytestmark = pytest.mark.dali


def test_gpu_sh_installs_dali_with_its_runtime_dependencies():
    """gpu.sh installed DALI with --no-deps: `import nvidia.dali` then fails on optree, and the
    decoders lack nvImageCodec / nvCOMP. Every Requires-Dist of the DALI wheel is named in the
    carrying instructions, and the install resolves dependencies (from the carried folder)."""
    import re
    from importlib import metadata
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh").read_text()
    install_lines = [x for x in text.splitlines() if "pip install" in x and not x.lstrip().startswith("#")]
    assert install_lines and not any("--no-deps" in x for x in install_lines)
    assert "nvidia-dali-cuda130==2.4.0" in text
    reqs = metadata.requires("nvidia-dali-cuda130") or []
    names = {re.split(r"[\s\[<>=~!;]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r}
    assert {"optree", "nvidia-nvimgcodec-cu13", "nvidia-libnvcomp-cu13"} <= names
    missing = sorted(n for n in names - {"numpy"} if n not in text)
    assert not missing, f"gpu.sh does not carry/document {missing}"


def test_setup_pins_numba_cuda_with_its_cuda13_extra():
    """Without the cu13 extra a runtime-only CUDA image has no libNVVM: the first kernel compile fails."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    assert '"numba-cuda[cu13]==0.30.4"' in text
