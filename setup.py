"""fastcas: GPU data loading for long-tailed image classification.

Requirements are loose lower bounds, so ``pip install fastcas[cu12]`` into an existing
environment (timm, Lightning) keeps its torch. The CUDA-specific wheels are extras:
``fastcas[cu13]`` / ``fastcas[cu12]`` (DALI, CuPy, numba-cuda for that CUDA major version; they
also run on a CPU-only machine), ``fastcas[clip]`` the CLIP encoder, ``fastcas[test]`` everything
the test suite needs at the exact versions CI tests together (``make setup`` installs it).
GPU-only pieces are imported lazily: the package imports and its DALI-free paths run without
the extras, and a missing one is named with its extra when used (fastcas.core.errors).
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

INSTALL_REQUIRES = [
    "numpy>=1.26",
    "torch>=2.4",
    "torchvision>=0.19",
    "numba>=0.60",  # the CPU twins of the mixing kernels (@njit); the CUDA target comes with an extra
    "pillow>=10",
    "pyarrow>=15",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    # `fastcas index` / remote shards: brace patterns, http(s):// through fsspec + aiohttp
    "braceexpand>=0.1.7",
    "fsspec[http]>=2023.1",
]

CUDA = {
    # the DALI pipeline (a Loader needs it, CPU-only too), CuPy arrays, the Numba CUDA kernels
    "cu13": ["nvidia-dali-cuda130>=2.4", "cupy-cuda13x>=14", "numba-cuda[cu13]>=0.30"],
    "cu12": ["nvidia-dali-cuda120>=2.4", "cupy-cuda12x>=14", "numba-cuda[cu12]>=0.30"],
}

EXTRAS = {
    **CUDA,
    "clip": ["open_clip_torch>=3.0"],
    # the suite: the CUDA 13 stack, CLIP, the integrations' trainers, pinned at the versions CI tests
    "test": [
        "torch==2.14.1",
        "torchvision==0.29.1",
        "nvidia-dali-cuda130==2.4.0",
        "cupy-cuda13x==14.2.0",
        "numba==0.68.1",
        "numba-cuda[cu13]==0.30.4",  # cu13: libNVVM and the CUDA 13 runtime pieces the JIT needs
        "open_clip_torch==3.3.0",
        "webdataset==1.0.2",  # foreign WebDataset tars for `fastcas index`
        "timm>=1.0.17",
        "lightning>=2.4",
        "pytest>=8",
        "pytest-timeout>=2.3",
        "ruff==0.17.5",  # the lint configuration in ruff.toml, run by tests/tools/test_lint.py
        # reference saliency (SaliencyMix's own method) and real sample photos
        "opencv-contrib-python-headless==5.0.0.93",
        "scikit-image>=0.24",
        "scikit-learn>=1.4",
        # an S3-compatible server on 127.0.0.1 for the s3:// test
        "moto[server]>=5",
        "s3fs>=2023.1",
    ],
    # object-store backends for remote shards (http(s):// needs nothing extra)
    "s3": ["s3fs>=2023.1"],
    "gcs": ["gcsfs>=2023.1"],
    # the peers `fastcas bench --loaders all` runs (spdl needs FFmpeg 4-9 shared libraries;
    # ffcv is not listed: its build needs OpenCV and libturbojpeg development files)
    "bench": ["timm>=1.0", "torchdata>=0.11", "spdl>=0.8"],
}

setup(
    name="fastcas",
    version="0.1.0",
    description="GPU data loading for long-tailed image classification: WebDataset shards, "
    "DALI decode, CAS/CMO weighted sampling, batched CutMix/FMix/SaliencyMix kernels.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `kernels/` (device code) ships inside the package as `fastcas.kernels`.
    packages=find_packages(include=["fastcas", "fastcas.*"]) + ["fastcas.kernels"],
    package_dir={"fastcas": "fastcas", "fastcas.kernels": "kernels"},
    package_data={"fastcas.scoring": ["*.json"], "fastcas.train": ["recipes/*.json"], "fastcas.kernels": ["*.cu", "*.cuh"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["fastcas = fastcas.cli:main"]},
)
