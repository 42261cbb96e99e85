"""Shared helpers for the benchmark scripts: timing, machine description, table, JSON.

Every script in ``benchmarks/`` prints a table and writes one JSON file shaped as
``{"benchmark": NAME, "machine": machine_info(), "config": {...}, "rows": [...]}`` under
``benchmarks/results/<machine-tag>/`` (or ``--out``); ``benchmarks/make_report.py`` renders
all of them into ``BENCHMARKS.md``. Speed goals live in the scripts, never in unit tests.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from fastcas.tools.machine import machine_info, machine_tag  # noqa: F401  (re-exported)

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1,
           sync: Callable[[], object] | None = None) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times; seconds per call.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs after each call so GPU work is counted.
    Returns ``{"median_s", "min_s", "max_s", "runs"}``.
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": repeat}


def print_table(rows: Sequence[dict], columns: Iterable[str] | None = None, title: str = "") -> str:
    """Print ``rows`` (dicts) as an aligned text table and return the text."""
    rows = list(rows)
    cols = list(columns or (rows[0].keys() if rows else []))

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(name: str, config: dict, rows: list[dict], out: str | os.PathLike | None = None,
               *, goals: list[dict] | None = None) -> Path:
    """Write one benchmark's result; returns the path. ``goals``: ``{"goal", "value", "met"}``."""
    info = machine_info()
    out_dir = Path(out) if out else RESULTS / machine_tag(info)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "machine": info, "config": config, "rows": rows,
               "goals": goals or []}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}", flush=True)
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark script takes: ``--out DIR`` and ``--quick`` (CI-sized run)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results/<machine>)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    return p
