"""Scale: what a dataset of N samples costs to index and to open, per process and per node.

Builds synthetic WebDataset tars of tiny real JPEGs (64 distinct 8-16 px images, ~300-600 B,
1,000 long-tailed classes; 1,000 samples a tar), runs ``fastcas index`` on them (time, peak
RSS), writes a score file (keys shuffled, so the join is exercised), then for each weighting
(uniform, cmo, cas) starts a fresh process that builds ``Loader(..., device="cpu")`` twice
(``cold``: the first on the node, building the cached score / CDF columns; ``warm``: a later
process mapping them) and measures construct time, time to the first batch, and RSS / Pss /
private / anonymous memory of the main process and of its DALI worker processes (from
``/proc/PID/smaps_rollup``). The growth law ``a + b * N`` of every figure is fitted over the
sizes run (at least two).

    python benchmarks/bench_scale.py [--sizes 128000 1280000] [--work /var/tmp/fastcas-scale] [--quick]
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import base_parser, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PER_TAR = 1000
CLASSES = 1000


def tiny_jpegs(k: int = 64) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        s = 8 + i % 9
        img = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=60)
        out.append(buf.getvalue())
    return out


def labels_for(n: int) -> np.ndarray:
    """Long-tailed labels: class k has weight ~ 1 / (k + 1) (deterministic)."""
    p = 1.0 / np.arange(1, CLASSES + 1)
    cdf = np.cumsum(p / p.sum())
    u = (np.arange(n) * 0.6180339887498949) % 1.0
    return np.minimum(np.searchsorted(cdf, u, side="right"), CLASSES - 1)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT)


def make_tars(out: Path, n: int) -> float:
    """Write ceil(n / PER_TAR) tars of ``{key}.jpg`` + ``{key}.cls``; returns seconds."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    jpegs = tiny_jpegs()
    labels = labels_for(n)
    pad = lambda b: b + b"\0" * (-len(b) % 512)  # noqa: E731
    for t in range(-(-n // PER_TAR)):
        parts = []
        for i in range(t * PER_TAR, min(n, (t + 1) * PER_TAR)):
            key = f"s{i:09d}"
            jpg = jpegs[i % len(jpegs)]
            cls = str(int(labels[i])).encode()
            parts += [_header(f"{key}.jpg", len(jpg)), pad(jpg), _header(f"{key}.cls", len(cls)), pad(cls)]
        parts.append(b"\0" * 1024)
        tmp = out / f".t{t:06d}.tmp"
        tmp.write_bytes(b"".join(parts))
        os.replace(tmp, out / f"train-{t:06d}.tar")
    return time.perf_counter() - t0


def run_measured(cmd: list[str], env=None) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes of the largest process of the tree, stdout)."""
    # a fresh wrapper process: RUSAGE_CHILDREN then covers only this command's process tree
    wrap = ("import resource, subprocess, sys, time; t0 = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); dt = time.perf_counter() - t0; "
            "sys.stderr.write(p.stderr[-2000:]); "
            "print(p.returncode, dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")
    p = subprocess.run([sys.executable, "-c", wrap, *cmd], capture_output=True, env=env, text=True)
    rc, dt, peak = p.stdout.split()
    if int(rc):
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}): {p.stderr[-2000:]}")
    return float(dt), int(peak), ""


_CHILD = r'''
import json, os, sys, time
t0 = time.perf_counter()
from fastcas.loading.loader import Loader
imp = time.perf_counter() - t0

def rollup(pid):
    out = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"rss": out["Rss"], "pss": out["Pss"], "private": out["Private_Clean"] + out["Private_Dirty"],
            "anon": out.get("Anonymous", 0), "shared": out["Shared_Clean"] + out["Shared_Dirty"],
            "private_dirty": out["Private_Dirty"]}

def children(pid):
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            kids += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    return kids

ds, weights, scores, workers, phase = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4]), sys.argv[5]
t0 = time.perf_counter()
loader = Loader(ds, 256, weights=weights, scores=scores, device="cpu", image_size=32, num_threads=2,
                py_workers=workers, seed=0)
t1 = time.perf_counter()
x, y = next(iter(loader))
t2 = time.perf_counter()
sd = loader.state_dict()
t3 = time.perf_counter()
mem = {"main": rollup(os.getpid()), "workers": [rollup(c) for c in children(os.getpid())]}
res = {phase: {"import_s": imp, "construct_s": t1 - t0, "first_batch_s": t2 - t1, "state_dict_s": t3 - t2,
              "batch": list(x.shape), "memory": mem}}
loader.close()
print(json.dumps(res))
'''


def loader_run(ds: Path, weights: str, scores: str, workers: int) -> dict:
    """One fresh process per phase: ``cold`` builds the cached columns, ``warm`` maps them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = {}
    for phase in ("cold", "warm"):
        p = subprocess.run([sys.executable, "-c", _CHILD, str(ds), weights, scores, str(workers), phase],
                           capture_output=True, text=True, env=env)
        if p.returncode:
            raise RuntimeError(p.stderr[-3000:])
        out.update(json.loads(p.stdout.strip().splitlines()[-1]))
    return out


def write_score_file(ds: Path, path: Path) -> float:
    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.scorefile import write_scores

    r = ShardReader(ds)
    n = len(r)
    perm = np.random.default_rng(1).permutation(n)
    keys = r.keys[perm]
    cas = (np.arange(n) * 7919 % 20 + 1)[perm]
    t0 = time.perf_counter()
    write_scores(path, keys, np.asarray(r.labels)[perm], cas, None, {"encoder": "synthetic"})
    return time.perf_counter() - t0


def fit(ns, ys) -> dict:
    b, a = np.polyfit(np.asarray(ns, float), np.asarray(ys, float), 1)
    return {"intercept": float(a), "per_sample": float(b)}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[128_000, 1_280_000])
    p.add_argument("--work", default="/var/tmp/fastcas-scale", help="where the synthetic tars go (kept for reuse)")
    p.add_argument("--weights", nargs="+", default=["uniform", "cmo", "cas"])
    p.add_argument("--workers", type=int, default=1, help="DALI py_workers of the loader")
    args = p.parse_args(argv)
    sizes = [2000, 6000] if args.quick else args.sizes
    work = Path(args.work)
    rows, details = [], {}
    for n in sizes:
        tars, ds = work / f"tars-{n}", work / f"ds-{n}"
        gen_s = 0.0
        if not (tars / f"train-{-(-n // PER_TAR) - 1:06d}.tar").exists():
            gen_s = make_tars(tars, n)
        idx_s, idx_peak, _ = run_measured([sys.executable, "-m", "fastcas", "index", str(tars), "--out", str(ds),
                                           "--overwrite", "--workers", "2"], env={**os.environ, "PYTHONPATH": str(ROOT)})
        scores = work / f"scores-{n}.parquet"
        score_s = write_score_file(ds, scores)
        disk = sum(f.stat().st_size for f in (ds / "manifest.cols").iterdir())
        for w in args.weights:
            import shutil

            shutil.rmtree(ds / ".fastcas-cache", ignore_errors=True)  # "cold": the first process on the node
            r = loader_run(ds, w, str(scores) if w == "cas" else "", args.workers)
            details[f"{n}/{w}"] = r
            for phase in ("cold", "warm"):
                m = r[phase]["memory"]
                wk = m["workers"]
                rows.append({
                    "samples": n, "weights": w, "phase": phase, "construct_s": r[phase]["construct_s"],
                    "first_batch_s": r[phase]["first_batch_s"], "state_dict_ms": 1e3 * r[phase]["state_dict_s"],
                    "main_rss_MB": m["main"]["rss"] / 1e6, "main_pss_MB": m["main"]["pss"] / 1e6,
                    "main_anon_MB": m["main"]["anon"] / 1e6,
                    "worker_pss_MB": float(np.mean([x["pss"] for x in wk])) / 1e6 if wk else 0.0,
                    "worker_private_MB": float(np.mean([x["private"] for x in wk])) / 1e6 if wk else 0.0,
                    "worker_anon_MB": float(np.mean([x["anon"] for x in wk])) / 1e6 if wk else 0.0,
                    "worker_private_dirty_MB": float(np.mean([x["private_dirty"] for x in wk])) / 1e6 if wk else 0.0,
                    "main_private_dirty_MB": m["main"]["private_dirty"] / 1e6,
                    "workers": len(wk),
                    "index_s": idx_s, "index_peak_MB": idx_peak / 1e6, "manifest_B_per_sample": disk / n,
                    "tars_s": gen_s, "score_file_s": score_s,
                })
    write_json("bench_scale", {"sizes": sizes, "weights": args.weights, "py_workers": args.workers,
                               "per_tar": PER_TAR, "classes": CLASSES, "batch_size": 256, "image_size": 32},
               rows, args.out, goals=goals(rows))
    summarise(rows, args.out)
    return 0


def goals(rows: list[dict]) -> list[dict]:
    """The issue's goals that these sizes can measure (warm = a later process on the node)."""
    out = []
    big = max(r["samples"] for r in rows)
    for r in rows:
        if r["samples"] == big and r["phase"] == "warm":
            out.append({"goal": f"{big:,} samples, {r['weights']}: construct <= 0.3 s", "value": r["construct_s"],
                        "met": r["construct_s"] <= 0.3})
            out.append({"goal": f"{big:,} samples, {r['weights']}: first batch <= 1.5 s", "value": r["first_batch_s"],
                        "met": r["first_batch_s"] <= 1.5})
    laws = growth_laws(rows)
    for w, d in laws.items():
        if "worker_private_dirty_MB" in d:
            b = d["worker_private_dirty_MB"]["per_sample"]
            out.append({"goal": f"{w}: unshareable memory per additional (worker) process <= 8 B/sample",
                        "value": b, "met": b <= 8})
    return out


def growth_laws(rows: list[dict]) -> dict:
    """{weights: {figure: {"intercept", "per_sample"}}}: ``a + b * N`` over the sizes run
    (memory in bytes); "index": the indexer's time and peak RSS."""
    sizes = sorted({r["samples"] for r in rows})
    if len(sizes) < 2:
        return {}
    laws = {}
    for w in dict.fromkeys(r["weights"] for r in rows):
        sel = [r for r in rows if r["weights"] == w and r["phase"] == "warm"]
        laws[w] = {k: fit([r["samples"] for r in sel], [r[k] * (1e6 if k.endswith("_MB") else 1) for r in sel])
                   for k in ("construct_s", "first_batch_s", "main_private_dirty_MB", "main_pss_MB",
                             "worker_private_MB", "worker_private_dirty_MB", "worker_pss_MB")}
    first = rows[0]["weights"]
    sel = [r for r in rows if r["weights"] == first and r["phase"] == "cold"]
    laws["index"] = {k: fit([r["samples"] for r in sel], [r[k] * (1e6 if k.endswith("_MB") else 1) for r in sel])
                     for k in ("index_s", "index_peak_MB")}
    return laws


def summarise(rows: list[dict], out=None) -> None:
    cols = ["samples", "weights", "phase", "construct_s", "first_batch_s", "state_dict_ms", "main_rss_MB",
            "main_pss_MB", "main_private_dirty_MB", "worker_pss_MB", "worker_private_MB", "worker_private_dirty_MB"]
    print_table(rows, cols, title="Loader at scale (2 cores, device='cpu')")
    print_table([r for r in rows if r["weights"] == rows[0]["weights"] and r["phase"] == "cold"],
                ["samples", "index_s", "index_peak_MB", "manifest_B_per_sample", "tars_s", "score_file_s"],
                title="fastcas index")
    laws = growth_laws(rows)
    law_rows = [{"weights": w, "figure": k, "intercept": v["intercept"], "per_sample": v["per_sample"]}
                for w, d in laws.items() for k, v in d.items()]
    if law_rows:
        print_table(law_rows, title="growth law a + b*N (memory in bytes)")
        write_json("bench_scale_laws", {"fitted_from": sorted({r["samples"] for r in rows}),
                                        "law": "a + b * N; memory figures in bytes"}, law_rows, out)


if __name__ == "__main__":
    raise SystemExit(main())
