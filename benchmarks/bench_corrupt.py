"""Throughput of the Loader over a dataset with 1% undecodable JPEGs against the clean one
(issue 36, item 4: "within 20%"), at ``py_workers`` 1 and 2, on the CPU decoder.

Datasets (real-photo crops of the demo corpus, one shard per 250 images; the same clean
images in each, 1% of them replaced by a damaged copy of themselves):

- ``clean``
- ``header``: the first Huffman table's code counts overwritten (bit rot before the first scan;
  the source's screen, ``fastcas.loading.screen``, skips it: no pipeline failure)
- ``body``: a progressive copy of the image with bytes flipped after its first scan (bit rot in
  a later scan's tables or markers, the kind DALI's decoder refuses; only copies the decoder
  really refuses are planted; the screen walks every scan and skips them)
- ``decoder``: the frame header says 12-bit samples (a valid JPEG by every rule the screen
  checks; DALI's 8-bit decoder refuses it): each costs one quarantine and one pipeline
  rebuild, in the first epoch only (the quarantine is remembered)

Each round runs every (dataset, py_workers) pair once, in an interleaved order, two epochs per
Loader: ``epoch0_s`` includes building the pipeline and the quarantines, ``epoch1_s`` is the
next epoch on the same Loader (wall times); ``cpu_s`` is the CPU time of the whole run (this
process and its DALI workers, building and closing included), the figure that other jobs on
a shared machine change least. Medians over the rounds. Counts (skipped samples, pipeline
builds) are checked in every run.

    python benchmarks/bench_corrupt.py [--quick] [--images 1000] [--rounds 5]
"""
from __future__ import annotations

import io
import os
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import base_parser, print_table, write_json  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cpu2-2026-12-07"


def _segment(b: bytes | bytearray, marker: int) -> int:
    """Byte offset of the first ``marker`` segment before the first scan."""
    i = 2
    while b[i + 1] != marker:
        if b[i + 1] == 0xDA:
            raise ValueError(f"no segment 0x{marker:02x}")
        i += 2 + struct.unpack(">H", bytes(b[i + 2:i + 4]))[0]
    return i


def header_corrupt(jpeg: bytes, rng: random.Random, probe) -> bytes:
    b = bytearray(jpeg)
    i = _segment(b, 0xC4)
    b[i + 5:i + 8] = b"\xff\xff\xff"  # code counts that overflow their lengths
    return bytes(b)


def body_corrupt(jpeg: bytes, rng: random.Random, probe) -> bytes:
    """A progressive copy with 3 bytes flipped after the first scan header, one the decoder refuses."""
    import numpy as np
    from PIL import Image

    from fastcas.dataset import imagehdr

    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, format="JPEG", progressive=True, quality=90)
    prog = buf.getvalue()
    start = _segment(prog, 0xDA)
    for _ in range(200):
        b = bytearray(prog)
        for _ in range(3):
            b[rng.randrange(start + 10, len(b) - 2)] = rng.randrange(256)
        if imagehdr.read(bytes(b)) is not None and probe(np.frombuffer(bytes(b), np.uint8), [0, 0, 1, 1]):
            return bytes(b)
    raise RuntimeError("no damaged copy the decoder refuses in 200 tries")


def decoder_corrupt(jpeg: bytes, rng: random.Random, probe) -> bytes:
    b = bytearray(jpeg)
    i = _segment(b, 0xC0)
    b[i + 4] = 12  # 12-bit samples: a valid JPEG the 8-bit decoder refuses ("Unsupported JPEG data precision 12")
    return bytes(b)


KINDS = {"clean": None, "header": header_corrupt, "body": body_corrupt, "decoder": decoder_corrupt}


def make_datasets(root: Path, n: int, per_shard: int) -> dict[str, tuple[Path, list[str]]]:
    """One dataset per kind: ``{kind: (root, keys of the damaged samples)}``."""
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards
    from fastcas.loading.pipeline import DecodeProbe
    from fastcas.tools.demo.data import corpus_samples

    clean = list(corpus_samples(n, seed=0))
    bad = sorted(random.Random(36).sample(range(n), max(1, n // 100)))
    probe, out = DecodeProbe("cpu"), {}
    for kind, damage in KINDS.items():
        samples = list(clean)
        if damage is not None:
            rng = random.Random(kind)
            for i in bad:
                s = clean[i]
                samples[i] = RawSample(s.key, damage(s.data, rng, probe), s.label)
        write_shards(samples, root / kind, ShardWriterConfig(shard_size=per_shard))
        out[kind] = (root / kind, [] if damage is None else [clean[i].key for i in bad])
    return out


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its reaped children (the DALI workers):
    what the loader costs, little changed by other jobs on a shared machine, unlike wall time."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_once(path: Path, bad: list[str], workers: int, a) -> dict:
    import warnings

    from fastcas import Loader
    from fastcas.loading.backends import DaliBackend

    cpu0 = _cpu_s()
    backend = DaliBackend()
    loader = Loader(path, a.batch, image_size=a.image_size, py_workers=workers, device="cpu", seed=0,
                    backend=backend)
    times, seen = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one per damaged sample; counted below instead
        for epoch in range(2):
            loader.set_epoch(epoch)
            t = time.perf_counter()
            seen.append(sum(len(b[1]) for b in loader))
            times.append(time.perf_counter() - t)
    skipped, builds, quarantined = dict(loader.skipped), backend.builds, len(loader.state_dict().get("quarantine", []))
    loader.close()  # joins the workers: their CPU time is in RUSAGE_CHILDREN from here on
    cpu = _cpu_s() - cpu0
    if seen != [a.images // a.batch * a.batch] * 2:  # training drops the last partial batch
        raise AssertionError(f"{path.name}, py_workers {workers}: {seen} samples in 2 epochs of {a.images}")
    missing = set(bad) - set(skipped)
    if missing or set(skipped) - set(bad):
        raise AssertionError(f"skipped {sorted(skipped)} but damaged {bad}")
    return {"epoch0_s": times[0], "epoch1_s": times[1], "cpu_s": cpu, "builds": builds, "quarantined": quarantined,
            "skipped": len(skipped)}


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--workers", default="1,2")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.rounds = 200, 1
    workers = [int(w) for w in a.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_corrupt-"))
    try:
        data = make_datasets(tmp, a.images, 250)
        pairs = [(k, w) for k in KINDS for w in workers]
        runs: dict[tuple, list[dict]] = {pr: [] for pr in pairs}
        load = []
        for r in range(a.rounds):
            order = list(pairs)
            random.Random(r).shuffle(order)  # interleaved: a busy minute on the shared machine hits every pair
            for kind, w in order:
                load.append(os.getloadavg()[0])
                runs[kind, w].append(run_once(*data[kind], w, a))
            print(f"round {r + 1}/{a.rounds} done (load {load[-1]:.1f})", flush=True)
        rows = []
        for kind, w in pairs:
            rs = runs[kind, w]
            clean = runs["clean", w]
            row = {"dataset": kind, "py_workers": w, "damaged": len(data[kind][1])}
            for col in ("epoch0_s", "epoch1_s", "cpu_s"):
                row[col] = round(statistics.median(x[col] for x in rs), 3)
                base = statistics.median(x[col] for x in clean)
                row[col.replace("_s", "_vs_clean")] = f"{100 * (row[col] / base - 1):+.1f}%"
            row["cpu_ms_per_img"] = round(1000 * row["cpu_s"] / (2 * a.images), 2)
            row["img_per_s_2ep"] = round(2 * a.images / statistics.median(x["epoch0_s"] + x["epoch1_s"] for x in rs), 1)
            row["builds"] = max(x["builds"] for x in rs)
            row["quarantined"] = max(x["quarantined"] for x in rs)
            row["skipped"] = max(x["skipped"] for x in rs)
            rows.append(row)
        print_table(rows, title=f"1% damaged JPEGs vs clean ({a.images} images, batch {a.batch}, "
                                f"{a.image_size}px, device cpu; median of {a.rounds} interleaved rounds)")
        print(f"load average during the runs: min {min(load):.1f}, median {statistics.median(load):.1f}, "
              f"max {max(load):.1f} on {os.cpu_count()} CPUs (a shared machine: other jobs ran beside it)")
        config = {"images": a.images, "rounds": a.rounds, "batch": a.batch, "image_size": a.image_size,
                  "workers": workers, "per_shard": 250, "device": "cpu",
                  "load_avg": {"min": min(load), "median": statistics.median(load), "max": max(load)},
                  "note": "shared 2-core machine; medians of interleaved rounds"}
        write_json("corrupt", config, rows, a.out or DEFAULT_OUT)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
