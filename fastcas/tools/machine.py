"""Where a measurement was taken: CPU model and cores, GPU and driver, library versions, date.
Used by ``fastcas bench`` and the scripts in ``benchmarks/``."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> dict:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()
        name, driver = (s.strip() for s in out[0].split(",", 1))
        return {"gpu": name, "driver": driver}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return {"gpu": None, "driver": None}


def _versions() -> dict:
    from importlib import metadata

    names = ["fastcas", "numpy", "torch", "torchvision", "nvidia-dali-cuda130", "cupy-cuda13x",
             "numba", "numba-cuda", "pillow", "webdataset", "open_clip_torch", "timm", "kornia",
             "torchdata", "spdl", "spdl_io", "ffcv"]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine_info() -> dict:
    """Where a figure was measured: CPU model and cores, GPU and driver, library versions, date."""
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
        "versions": _versions(),
    }
    info.update(_gpu())
    return info


def machine_tag(info: dict | None = None) -> str:
    info = info or machine_info()
    what = info.get("gpu") or f"cpu{info.get('cores')}"
    return re.sub(r"[^A-Za-z0-9.-]+", "-", str(what)).strip("-").lower()
