"""What ``fastcas selftest`` runs on: the software/hardware environment and a generated dataset.

:func:`environment` reports torch and its CUDA build, the GPU (name, memory, compute
capability, driver), DALI and whether DALI would use the nvJPEG hardware decoder, numba-cuda
and libNVVM, and CuPy. Nothing here raises: a missing or broken library is reported as such.

:func:`make_dataset` writes a small sharded dataset of real-ish JPEGs (seeded crops of the
photos that scikit-image / scikit-learn / matplotlib / opencv-doc ship; smooth synthetic images
when none are installed) with a long-tailed class distribution, in about a second.
"""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from fastcas.core.rng import generator

# DALI decides whether nvJPEG's hardware decoder (the NVJPG engine) exists in C++ only
# (DALI 2.4 ``include/dali/util/nvml.h``, ``HasHwDecoder``): an NVML "Tesla" (data-centre)
# brand GPU of compute capability 8.0 or 9.0 (A100/A30, H100/H200). Python cannot call it,
# so fastcas evaluates the same rule from the device's compute capability.
HW_DECODER_CAPABILITIES = ((8, 0), (9, 0))
HW_DECODER_RULE = ("DALI's rule (dali/util/nvml.h HasHwDecoder): a data-centre GPU of compute "
                   "capability 8.0 or 9.0 (A100, A30, H100, H200)")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


def _smi_gpu() -> dict | None:
    """The first GPU as nvidia-smi reports it (no CUDA context is created), or None."""
    import subprocess

    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip().splitlines()[0]
        name, mem, cap = (v.strip() for v in line.split(","))
        return {"index": 0, "name": name, "memory_gib": round(float(mem) / 1024, 1), "capability": cap,
                "source": "nvidia-smi"}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def torch_info(use_cuda: bool = True) -> dict:
    """torch version, the CUDA it was built for, and the visible GPU (name, memory, capability).
    ``use_cuda=False`` reads the GPU from nvidia-smi instead of creating a CUDA context (so a
    CPU-only selftest leaves CUDA untouched)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"version": None, "error": _err(exc), "cuda_available": False}
    info = {"version": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": bool(torch.cuda.is_available()), "gpu": None}
    if info["cuda_available"] and not use_cuda:
        info["gpu"] = _smi_gpu()
    elif info["cuda_available"]:
        try:
            i = torch.cuda.current_device()
            p = torch.cuda.get_device_properties(i)
            info["gpu"] = {"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                           "capability": f"{p.major}.{p.minor}", "count": torch.cuda.device_count(),
                           "source": "torch"}
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception as exc:  # noqa: BLE001
            info["gpu_error"] = _err(exc)
    return info


def hw_decoder(gpu: dict | None) -> dict:
    """Whether DALI's ``decoders.image(device="mixed")`` would use the hardware JPEG decoder."""
    if not gpu:
        return {"available": None, "rule": HW_DECODER_RULE,
                "reason": "cannot be queried without a GPU (DALI decides from the GPU's NVML brand and "
                          "compute capability)"}
    major, minor = (int(x) for x in gpu["capability"].split("."))
    return {"available": (major, minor) in HW_DECODER_CAPABILITIES, "rule": HW_DECODER_RULE,
            "reason": f"{gpu['name']} has compute capability {major}.{minor}"}


def dali_info(gpu: dict | None) -> dict:
    """DALI's version and builds (:func:`fastcas.loading.pipeline.dali_versions`, the only
    DALI importer) plus whether this GPU has DALI's hardware JPEG decoder."""
    from fastcas.loading.pipeline import dali_versions

    try:
        info = dali_versions()
    except Exception as exc:  # noqa: BLE001 - DALI missing or broken: report, do not fail
        return {"version": None, "error": _err(exc), "hw_decoder": hw_decoder(gpu)}
    info["hw_decoder"] = hw_decoder(gpu)
    return info


def numba_info() -> dict:
    """numba / numba-cuda versions, whether Numba sees a CUDA driver, and whether libNVVM (the
    compiler the kernels need on first launch) loads. Under NUMBA_ENABLE_CUDASIM=1 kernels run
    in Numba's CPU simulator and libNVVM is not used."""
    import os

    info = {"numba": _version("numba"), "numba_cuda": _version("numba-cuda"),
            "simulator": os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"}
    try:
        from numba import cuda

        info["cuda_available"] = bool(cuda.is_available())
    except Exception as exc:  # noqa: BLE001
        info["cuda_available"], info["error"] = False, _err(exc)
        return info
    if info["simulator"]:
        info["libnvvm"] = {"available": None, "reason": "Numba CUDA simulator active (NUMBA_ENABLE_CUDASIM=1)"}
        return info
    try:
        from numba.cuda.cudadrv import nvvm

        v = nvvm.NVVM().get_version()
        info["libnvvm"] = {"available": True, "version": ".".join(map(str, v))}
    except Exception as exc:  # noqa: BLE001
        info["libnvvm"] = {"available": False, "reason": _err(exc)}
    return info


def cupy_info() -> dict:
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001
        return {"version": None, "error": _err(exc)}
    info = {"version": cupy.__version__}
    try:
        info["is_available"] = bool(cupy.is_available())
    except Exception as exc:  # noqa: BLE001
        info["is_available"], info["error"] = False, _err(exc)
    return info


def environment(use_cuda: bool = True) -> dict:
    """Everything above plus Python, the platform, fastcas, and the driver (nvidia-smi)."""
    from fastcas import __version__
    from fastcas.tools.machine import _cpu_model, _gpu

    t = torch_info(use_cuda)
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_model(),
            "fastcas": __version__, "torchvision": _version("torchvision"), "torch": t,
            "driver": _gpu().get("driver"), "dali": dali_info(t.get("gpu")), "numba": numba_info(),
            "cupy": cupy_info()}


def format_environment(env: dict) -> list[str]:
    """Human-readable lines, one per component."""
    t, d, n, c = env["torch"], env["dali"], env["numba"], env["cupy"]
    gpu = t.get("gpu")
    lines = [f"fastcas {env['fastcas']}, Python {env['python']}, {env['cpu']}",
             f"torch {t.get('version')} (CUDA build {t.get('cuda_build')}), CUDA available: {t.get('cuda_available')}"
             + (f" ({t['error']})" if t.get("error") else "")]
    lines.append(f"GPU: {gpu['name']}, {gpu['memory_gib']} GiB, capability {gpu['capability']}, driver {env['driver']}"
                 if gpu else "GPU: none visible to torch" + (f" ({t['gpu_error']})" if t.get("gpu_error") else ""))
    hw = d["hw_decoder"]
    hw_s = {True: "yes", False: "no", None: "unknown"}[hw["available"]]
    lines.append(f"DALI {d.get('version') or 'missing'}" + (f" ({d['error']})" if d.get("error") else "")
                 + f"; nvJPEG hardware decoder: {hw_s} ({hw['reason']})")
    nv = n.get("libnvvm", {})
    nv_s = ("yes " + nv.get("version", "")) if nv.get("available") else f"no ({nv.get('reason', n.get('error'))})"
    lines.append(f"numba {n.get('numba')}, numba-cuda {n.get('numba_cuda')}, CUDA driver seen by Numba: "
                 f"{n.get('cuda_available')}, libNVVM: {nv_s.strip()}")
    lines.append(f"CuPy {c.get('version') or 'missing'}, is_available: {c.get('is_available')}"
                 + (f" ({c['error']})" if c.get("error") else ""))
    return lines


# ------------------------------------------------------------------------------ dataset
NUM_CLASSES = 6
IMAGE_SIZES = ((256, 192), (192, 256))  # landscape / portrait, like photos
QUALITY = 90


def class_counts(samples: int, classes: int = NUM_CLASSES) -> list[int]:
    """Long-tailed counts (ratio 1/2 per class, at least 4 each) summing to ``samples``."""
    if samples < 4 * classes:
        raise ValueError(f"the selftest dataset needs at least {4 * classes} samples, got {samples}")
    w = 0.5 ** np.arange(classes)
    counts = np.maximum(4, np.floor(samples * w / w.sum())).astype(int)
    counts[0] += samples - counts.sum()
    return counts.tolist()


def _synthetic(rng, size) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    img = (base + xx[..., None] * rng.random(3) + yy[..., None] * rng.random(3)
           + rng.normal(0, 6, (h, w, 3)))
    return (img % 256).astype(np.uint8)


def make_dataset(out: str | Path, samples: int = 240, seed: int = 0, *, overwrite: bool = False) -> dict:
    """Write the selftest dataset under ``out`` (empty or absent, or replace its shards with
    ``overwrite``); returns the manifest.

    Sample ``i`` is a seeded crop of shipped photo ``i mod P`` resized to 256x192 or 192x256
    (quality 90), or a smooth synthetic image when no photos are installed; labels follow
    :func:`class_counts`. A pure function of ``(samples, seed)``."""
    from PIL import Image

    from fastcas.dataset.ingest import encode_jpeg
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards
    from fastcas.tools.demo.data import shipped_photos

    try:
        photos = [Image.open(p).convert("RGB") for p in shipped_photos(min_side=200)[:12]]
    except Exception:  # noqa: BLE001 - no photos: synthetic images still exercise the decoder
        photos = []
    labels = np.repeat(np.arange(NUM_CLASSES), class_counts(samples))
    order = generator(seed, 0x5E1F).permutation(samples)  # stored class-mixed
    raws = []
    for i in range(samples):
        rng = generator(seed, 0x5E1F, i)
        size = IMAGE_SIZES[int(rng.random() < 0.3)]
        if photos:
            src = photos[i % len(photos)]
            W, H = src.size
            w = int(min(W, H * size[0] / size[1]) * rng.uniform(0.4, 1.0))
            h = int(w * size[1] / size[0])
            x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            im = src.crop((x0, y0, x0 + w, y0 + h)).resize(size, Image.BILINEAR)
        else:
            im = Image.fromarray(_synthetic(rng, size))
        raws.append(RawSample(f"st{i:05d}", encode_jpeg(im, QUALITY), int(labels[i])))
    cfg = ShardWriterConfig(shard_size=64, prefix="selftest", overwrite=overwrite,
                            class_names=tuple(f"class{k}" for k in range(NUM_CLASSES)),
                            extra={"source": {"dataset": "fastcas selftest", "photos": len(photos), "seed": seed}})
    return write_shards([raws[j] for j in order], out, cfg)
