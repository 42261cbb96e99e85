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
import torch  # noqa: F401 - a training process has imported torch before it builds a Loader
torch_imp = time.perf_counter() - t0
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
res = {phase: {"torch_import_s": torch_imp, "import_s": imp, "construct_s": t1 - t0, "first_batch_s": t2 - t1,
              "state_dict_s": t3 - t2, "batch": list(x.shape), "memory": mem}}
loader.close()
print(json.dumps(res))
'''


def _previous_index(path: str, n: int):
    """(index_s, index_peak bytes) of ``n`` samples in an earlier bench_scale.json, or None."""
    for r in json.loads(Path(path).read_text())["rows"]:
        if r["samples"] == n and r.get("replicated", 1) == 1:
            return r["index_s"], r["index_peak_MB"] * 1e6
    return None


def _renamed_tar(data: np.ndarray, shift: int) -> np.ndarray:
    """A copy of one of :func:`make_tars`' tars whose member names ``s{i:09d}.*`` read
    ``s{i + shift:09d}.*`` (the same length, so every offset stays), header checksums redone;
    vectorised over the tar's headers. ``data``: uint8 [bytes] of the tar."""
    out = data.copy()
    pos, p, n = [], 0, len(data)
    while p + 512 <= n and data[p]:  # walk the ustar headers (sizes in octal at 124..136)
        pos.append(p)
        size = int(bytes(data[p + 124:p + 136]).rstrip(b"\0 ").decode() or "0", 8)
        p += 512 + -(-size // 512) * 512
    pos = np.asarray(pos, np.int64)
    digits = out[pos[:, None] + np.arange(1, 10)].astype(np.int64) - ord("0")
    value = (digits * 10 ** np.arange(8, -1, -1)).sum(1) + shift
    new = (value[:, None] // 10 ** np.arange(8, -1, -1)) % 10 + ord("0")
    out[pos[:, None] + np.arange(1, 10)] = new.astype(np.uint8)
    out[pos[:, None] + np.arange(148, 156)] = ord(" ")
    chk = out[pos[:, None] + np.arange(512)].astype(np.int64).sum(1)
    field = np.array([list(f"{c:06o}".encode()) + [0, ord(" ")] for c in chk], np.uint8)
    out[pos[:, None] + np.arange(148, 156)] = field
    return out


def replicate_manifest(src: Path, dst: Path, k: int, tars: Path) -> None:
    """A dataset of ``k * N`` distinct samples from ``src``'s ``N`` without encoding new images:
    replica ``j`` of every tar is a copy whose member names are shifted by ``j * N``
    (:func:`_renamed_tar`; same bytes otherwise, so same offsets), and the manifest's columns are
    the source's ``k`` times with the shifted keys. Written with the indexer's
    :class:`~fastcas.dataset.manifest.ColumnWriter` one shard at a time (bounded memory). Not an
    index run (``fastcas index`` of 14M samples takes ~1 h here); ``dst`` is rebuilt only when
    missing. Columns, keys and sampler state are those of ``k * N`` distinct images; only the
    image bytes repeat."""
    import hashlib
    import shutil

    from fastcas.dataset.manifest import COLUMNS_DIR, Columns, ColumnWriter

    if (dst / "manifest.json").exists():
        return
    header = json.loads((src / "manifest.json").read_text())
    n = header["num_samples"]
    cols = Columns(src / COLUMNS_DIR, n)
    exts = list(header.get("image_exts") or ["jpg"])
    stage = dst.with_name(dst.name + ".part")
    shutil.rmtree(stage, ignore_errors=True)
    w = ColumnWriter(stage / COLUMNS_DIR)
    starts = np.concatenate([[0], np.cumsum([s["count"] for s in header["shards"]])])
    shards = []
    for j in range(k):
        for s, (a, b) in zip(header["shards"], zip(starts[:-1], starts[1:])):
            tar = Path(s["tar"])
            if j:
                tar = tars.with_name(f"{tars.name}-r{j}") / tar.name
                if not tar.exists():
                    tar.parent.mkdir(parents=True, exist_ok=True)
                    data = np.fromfile(s["tar"], np.uint8)
                    tmp = tar.with_suffix(".tmp")
                    _renamed_tar(data, j * n).tofile(tmp)
                    os.replace(tmp, tar)
            keys = [f"s{int(key[1:]) + j * n:09d}" for key in cols.keys[int(a):int(b)]]
            w.add_rows({"keys": keys, "labels": cols.label[a:b], "image_offset": cols.offset[a:b],
                        "image_size": cols.size[a:b], "sizes": cols.wh[a:b], "meta_offset": cols.meta_offset[a:b],
                        "meta_size": cols.meta_size[a:b], "image_ext": [exts[e] for e in cols.ext[a:b]]})
            # the DALI-reader index of a replica lists the same offsets and extensions: shared
            shards.append({**s, "tar": str(tar), "sha256": None})
    new = dict(header)
    new["columns"] = {**header["columns"], **w.finish()}
    new["num_samples"] = n * k
    new["shards"] = shards
    new["class_counts"] = [c * k for c in header["class_counts"]]
    new["content_hash"] = hashlib.sha256(f"{header['content_hash']}x{k}".encode()).hexdigest()
    new["source"] = {**header.get("source", {}), "sources": [s["tar"] for s in shards]}
    new["replicated"] = {"from": str(src), "times": k}
    for s in header["shards"]:
        shutil.copy2(src / s["index"], stage / s["index"])
    (stage / "manifest.json").write_text(json.dumps(new))
    shutil.rmtree(dst, ignore_errors=True)
    stage.rename(dst)


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
    p.add_argument("--reuse-index", default=None, metavar="JSON",
                   help="keep an existing dataset of a size and take its index time / peak from this earlier "
                        "bench_scale.json instead of indexing again (rows say index_reused)")
    p.add_argument("--replicate", type=int, default=1,
                   help="also measure a manifest of K x the largest size whose entries point K times at the "
                        "same shards (unique keys): 14M samples from the 1.28M tars without 14M images on disk")
    args = p.parse_args(argv)
    sizes = [2000, 6000] if args.quick else args.sizes
    work = Path(args.work)
    rows, details = [], {}
    plan = [(n, 1) for n in sizes] + ([(max(sizes), args.replicate)] if args.replicate > 1 else [])
    for base, k in plan:
        n = base * k
        tars, ds = work / f"tars-{base}", work / (f"ds-{n}" if k == 1 else f"ds-{base}x{k}")
        gen_s = 0.0
        if not (tars / f"train-{-(-base // PER_TAR) - 1:06d}.tar").exists():
            gen_s = make_tars(tars, base)
        reused = _previous_index(args.reuse_index, n) if args.reuse_index and (ds / "manifest.json").exists() else None
        if reused is not None:  # the dataset and its index figures from an earlier run of this script
            idx_s, idx_peak = reused
        elif k == 1:
            idx_s, idx_peak, _ = run_measured([sys.executable, "-m", "fastcas", "index", str(tars), "--out", str(ds),
                                               "--overwrite", "--workers", "2"],
                                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        else:  # not an index run: the manifest of `base` samples, each entry k times (see replicate_manifest)
            idx_s, idx_peak = float("nan"), float("nan")
            replicate_manifest(work / f"ds-{base}", ds, k, tars)
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
                    "replicated": k, "index_reused": reused is not None, "torch_import_s": r[phase]["torch_import_s"],
                    "fastcas_import_s": r[phase]["import_s"],
                    "tars_s": gen_s, "score_file_s": score_s,
                })
    write_json("bench_scale", {"sizes": sizes, "weights": args.weights, "py_workers": args.workers,
                               "per_tar": PER_TAR, "classes": CLASSES, "batch_size": 256, "image_size": 32},
               rows, args.out, goals=goals(rows))
    summarise(rows, args.out)
    return 0


def goals(rows: list[dict]) -> list[dict]:
    """The issue's goals that these sizes can measure (warm = a later process on the node):
    construct <= 0.3 s and first batch <= 1.5 s at the largest indexed size, <= 1 s and <= 3 s
    at a replicated (14M-class) manifest."""
    out = []
    big = max(r["samples"] for r in rows if r.get("replicated", 1) == 1)
    for r in rows:
        if r["phase"] != "warm" or (r["samples"] != big and r.get("replicated", 1) == 1):
            continue
        c_goal, f_goal = (0.3, 1.5) if r.get("replicated", 1) == 1 else (1.0, 3.0)
        n = r["samples"]
        out.append({"goal": f"{n:,} samples, {r['weights']}: construct <= {c_goal} s", "value": r["construct_s"],
                    "met": r["construct_s"] <= c_goal})
        out.append({"goal": f"{n:,} samples, {r['weights']}: first batch <= {f_goal} s (torch imported)",
                    "value": r["first_batch_s"], "met": r["first_batch_s"] <= f_goal})
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
    sizes = sorted({r["samples"] for r in rows})  # replicated manifests count as sizes (the same shards)
    if len(sizes) < 2:
        return {}
    laws = {}
    for w in dict.fromkeys(r["weights"] for r in rows):
        sel = [r for r in rows if r["weights"] == w and r["phase"] == "warm"]
        laws[w] = {k: fit([r["samples"] for r in sel], [r[k] * (1e6 if k.endswith("_MB") else 1) for r in sel])
                   for k in ("construct_s", "first_batch_s", "main_private_dirty_MB", "main_pss_MB",
                             "worker_private_MB", "worker_private_dirty_MB", "worker_pss_MB")}
    first = rows[0]["weights"]
    sel = [r for r in rows if r["weights"] == first and r["phase"] == "cold" and r.get("replicated", 1) == 1]
    if len({r["samples"] for r in sel}) < 2:
        return laws
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
