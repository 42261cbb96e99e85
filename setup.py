"""fastcas: GPU data loading for long-tailed image classification.

Pins are the versions that install together on CUDA 13 machines (torch 2.14.1+cu130,
nvidia-dali-cuda130, cupy-cuda13x). GPU-only pieces are imported lazily, so the package
imports and its CPU paths run on machines without a GPU.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

INSTALL_REQUIRES = [
    "numpy>=1.26",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "nvidia-dali-cuda130==2.4.0",
    "cupy-cuda13x==14.2.0",
    "numba==0.68.1",
    "numba-cuda[cu13]==0.30.4",  # cu13: libNVVM and the CUDA 13 runtime pieces the JIT needs
    "webdataset==1.0.2",
    "open_clip_torch==3.3.0",
    "pillow>=10",
    "pyarrow>=15",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    # `fastcas index` / remote shards: brace patterns, http(s):// through fsspec + aiohttp
    "braceexpand>=0.1.7",
    "fsspec[http]>=2023.1",
]

EXTRAS = {
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        # reference saliency (SaliencyMix's own method) and real sample photos
        "opencv-contrib-python-headless==5.0.0.93",
        "scikit-image>=0.24",
        "scikit-learn>=1.4",
        "lightning>=2.4",
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
