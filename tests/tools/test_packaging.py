"""Packaging: benchmarks/gpu.sh installs DALI with its runtime dependencies; setup.py pins numba-cuda with its CUDA 13
extra in [test]; the base requirements are loose lower bounds with the CUDA wheels and CLIP as extras (an existing
environment keeps its torch); the package imports and its DALI-free paths run without the extras."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _setup_requirements() -> dict:
    """{"install": [...], extra: [...]} read from setup.py's INSTALL_REQUIRES / CUDA / EXTRAS literals."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "INSTALL_REQUIRES":
                found["install"] = ast.literal_eval(node.value)
            elif name == "CUDA":
                found.update(ast.literal_eval(node.value))
            elif name == "EXTRAS":
                found.update(
                    {
                        ast.literal_eval(k): ast.literal_eval(v)
                        for k, v in zip(node.value.keys, node.value.values)
                        if k is not None
                    }
                )
    return found


def test_base_requirements_are_lower_bounds_and_gpu_wheels_are_extras():
    reqs = _setup_requirements()
    base = reqs["install"]
    assert {"torch>=2.4", "torchvision>=0.19", "numpy>=1.26"} <= set(base)
    assert not [r for r in base if "==" in r], base  # an existing environment keeps its versions
    heavy = ("nvidia-dali", "cupy", "numba-cuda", "open_clip")
    assert not [r for r in base if r.startswith(heavy)], base
    assert reqs["cu13"] == ["nvidia-dali-cuda130>=2.4", "cupy-cuda13x>=14", "numba-cuda[cu13]>=0.30"]
    assert reqs["cu12"] == ["nvidia-dali-cuda120>=2.4", "cupy-cuda12x>=14", "numba-cuda[cu12]>=0.30"]
    assert reqs["clip"] == ["open_clip_torch>=3.0"]
    test = " ".join(reqs["test"])  # `make test` installs .[test]: the whole suite's needs, cu13 stack included
    for need in ("nvidia-dali-cuda130", "cupy-cuda13x", "numba-cuda[cu13]", "open_clip_torch", "timm", "lightning",
                 "webdataset", "pytest"):
        assert need in test, need


_BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("cupy", "open_clip") or name.startswith("nvidia.dali") or name == "numba.cuda":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _Block())
"""


def test_without_the_extras_the_package_imports_and_names_the_extra(tmp_path):
    """No DALI, CuPy, numba-cuda or open_clip: import fastcas, shard/read a dataset, the torchvision
    baseline and torch mixing work; a Loader, the CUDA kernels and CLIP name the extra to install."""
    code = (
        _BLOCK
        + rf"""
import pytest, torch
import fastcas
from fastcas.core.errors import MissingDependencyError
from tests.helpers import make_dataset
make_dataset({str(tmp_path / 'ds')!r}, counts=(4, 4), shard_size=8)
r = fastcas.ShardReader({str(tmp_path / 'ds')!r})
b = next(iter(fastcas.TorchvisionLoader(r, 4, image_size=16, device="cpu", py_workers=0)))
assert b[0].shape == (4, 3, 16, 16)
x = torch.rand(4, 3, 8, 8)
fastcas.mix.mix("cutmix", x, x.flip(0), torch.arange(4), torch.arange(4).flip(0), num_classes=4, alpha=1.0, generator=0)
with pytest.raises(MissingDependencyError, match=r"fastcas.Loader .* needs NVIDIA DALI, which is not installed: "
                                                r"pip install 'fastcas\[cu13\]' .*'fastcas\[cu12\]'"):
    fastcas.Loader(r, 4, device="cpu")
from fastcas.mix import _backend
with pytest.raises(ImportError, match=r"CUDA mixing kernels needs numba-cuda.*fastcas\[cu13\]"):
    _backend._kernels()
from fastcas.scoring import clip
with pytest.raises(ImportError, match=r"needs open_clip_torch, which is not installed: pip install 'fastcas\[clip\]'"):
    clip.resolve_model("ViT-B-32")
print("ok")
"""
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout[-2000:] + p.stderr[-3000:]


@pytest.mark.dali
def test_gpu_sh_installs_dali_with_its_runtime_dependencies():
    pytest.importorskip("nvidia.dali")
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
    reqs = _setup_requirements()
    assert "numba-cuda[cu13]==0.30.4" in reqs["test"] and "numba-cuda[cu13]>=0.30" in reqs["cu13"]
    assert "numba-cuda[cu12]>=0.30" in reqs["cu12"]
