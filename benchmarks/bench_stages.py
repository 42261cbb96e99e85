"""Where fastcas's CPU goes: CPU ms per image of each stage of its DALI path (CPU pipelines).

DALI reports no per-operator times on the CPU, so the graph is rebuilt cumulatively, one stage
more each time, with the Loader's own SampleSource and settings, and every variant is timed in
interleaved rounds, its CPU read from ``/proc`` for the whole process tree and split into this
process (DALI's executor and threads, the Loader's finishing and prefetch thread) and its
children (the external source's worker process):

    source call        the SampleSource computing a batch, called here (no DALI)
    + worker + IPC     external_source(parallel, batch) -> raw outputs (the worker computes the
                       batch and writes it to shared memory; DALI reads it back)
    + ROI decode       decoders.image_slice of the crop window
    + resize (+ flip)  resize to S x S with the flip folded into the ROI: uint8 HWC out
    + normalise        crop_mirror_normalize to float32 CHW: fastcas.loading.pipeline.build_pipeline
    Loader             the whole Loader (to_torch, label/skip handling, prefetch thread)

and, with CutMix, ``build_pipeline`` and the Loader with the paste in the graph. Variants show
options: the whole image decoded (``decoders.image``) instead of the ROI, the resize without the
flip folded into its ROI or without antialiasing, and the source run in the main thread
(``py_workers=0``, no worker process), the ROI decode with libjpeg-turbo's fast IDCT, DALI's
ROI decode followed by torchvision's resize and one normalise per batch (a candidate design), and the
Loader with ``cpu_resize="torch"`` (that design, built: mix none and CutMix); and,
as references for a torch CPU backend, torchvision's whole-image decode, its uint8 resize of
the same kind of crops and a per-batch normalise (one torch thread, CPU of this thread). The difference between
consecutive rows is that stage's cost.

    python benchmarks/bench_stages.py DATASET [--seconds 4] [--rounds 3] [--out DIR]
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import base_parser, print_table, write_json  # noqa: E402
from fastcas.tools.bench import settle_tree  # noqa: E402  (the bench's own round accounting)
from fastcas.tools.proctime import load_average, tree_cpu_seconds  # noqa: E402


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system  # every thread of this process


def _reduced(source, pcfg, upto: str):
    """fastcas's graph (``fastcas.loading.pipeline.build_pipeline``, one stream, no mixing) cut
    after stage ``upto``: "ipc", "decode", "full-decode", "resize", or the ROI decode with
    libjpeg-turbo's fast IDCT ("decode-fast-idct"), or resize without the flip's ROI
    ("resize-noflip") or without antialiasing ("resize-noaa")."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    from fastcas.loading.pipeline import source_prefetch, worker_start_method

    layout, S = source.layout, pcfg.image_size
    dali_types = {"uint8": types.UINT8, "int32": types.INT32, "int64": types.INT64, "float32": types.FLOAT,
                  "float64": types.FLOAT64}

    @pipeline_def(batch_size=pcfg.batch_size, num_threads=pcfg.num_threads, device_id=None, seed=1,
                  prefetch_queue_depth=pcfg.prefetch, py_num_workers=max(pcfg.py_workers, 1),
                  py_start_method=worker_start_method(False), exec_dynamic=True)
    def pipe():
        raw = layout.named(fn.external_source(
            source=source, num_outputs=len(layout.source_names), batch=True, batch_info=True, parallel=True,
            prefetch_queue_depth=source_prefetch(pcfg), dtype=[dali_types[d] for d in layout.source_dtypes()]),
            "source")
        jpeg, label, window, flip = (raw[f"{f}0"] for f in ("jpegs", "labels", "windows", "flips"))
        if upto == "ipc":
            return jpeg, label, window, flip
        if upto == "full-decode":
            return fn.decoders.image(jpeg, device="cpu", output_type=types.RGB), label
        img = fn.decoders.image_slice(jpeg, window[0:2], window[2:4], device="cpu", output_type=types.RGB,
                                      axis_names="WH", use_fast_idct=upto == "decode-fast-idct")
        if upto in ("decode", "decode-fast-idct"):
            return img, label
        if upto == "resize-noflip":
            return fn.resize(img, size=[S, S]), label
        lo = fn.cast(flip, dtype=types.FLOAT) * types.Constant(np.array([0.0, 1.0], np.float32))
        hi = types.Constant(np.array([1.0, 1.0], np.float32)) - lo
        return fn.resize(img, size=[S, S], roi_start=lo, roi_end=hi, roi_relative=True,
                         antialias=upto != "resize-noaa"), label

    p = pipe()
    p.build()
    return p


def _torch_references(dataset: str, batch: int, size: int, rounds: int = 3) -> list[dict]:
    """CPU ms per image, on this thread with one torch thread, of what a torch CPU backend would
    do instead of DALI's operators: ``torchvision.io.decode_jpeg`` of whole images (one call per
    batch) and a v2 ``resize`` of uint8 crops (antialiased) to S x S, on the same crops fastcas
    decodes; and one normalise to float32 per batch."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    from fastcas.core.rng import generator
    from fastcas.dataset.reader import ShardReader
    from fastcas.tools.peers import rrc_window

    reader, threads = ShardReader(dataset), torch.get_num_threads()
    rng = generator(0, 0x57A9E)
    raw = [torch.frombuffer(bytearray(reader[int(i)].data), dtype=torch.uint8)
           for i in rng.integers(0, len(reader), 4 * batch)]
    torch.set_num_threads(1)
    try:
        imgs = decode_jpeg(raw, mode=ImageReadMode.RGB)
        crops = [im[:, t:t + h, x:x + w] for im in imgs for t, x, h, w in [rrc_window(rng, im.shape[2], im.shape[1])]]
        u8 = torch.stack([F.resize(c, [size, size], antialias=True) for c in crops[:batch]])
        mean = torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1)
        std = torch.tensor([58.4, 57.1, 57.4]).view(1, 3, 1, 1)
        jobs = {"reference: torchvision.io.decode_jpeg, whole image (1 torch thread)":
                    (lambda: decode_jpeg(raw, mode=ImageReadMode.RGB), len(raw)),
                "reference: torchvision v2 resize of uint8 crops, antialias (1 torch thread)":
                    (lambda: [F.resize(c, [size, size], antialias=True) for c in crops], len(crops)),
                "reference: torch normalise uint8 -> float32, per batch (1 torch thread)":
                    (lambda: u8.float().sub_(mean).div_(std), batch)}
        rows = []
        for name, (job, n) in jobs.items():
            job()
            ms = []
            for _ in range(rounds):
                c0, k = time.thread_time(), 0
                while time.thread_time() - c0 < 1.0:
                    job()
                    k += n
                ms.append(1e3 * (time.thread_time() - c0) / k)
            rows.append({"variant": name, "cpu_ms_per_image": statistics.median(ms), "cpu_ms_rounds": ms})
        return rows
    finally:
        torch.set_num_threads(threads)


def _hybrid(pipe, size: int):
    """One batch of a candidate design: DALI's ROI decode (pipeline ``pipe``), then each uint8
    crop resized by torchvision (antialiased) and the batch normalised once, on this thread."""
    import numpy as np
    import torch
    from torchvision.transforms.v2 import functional as F

    from fastcas.tools.peers import _normalise

    def run():
        crops = pipe.run()[0]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # torch's spinning OpenMP workers would bill DALI's threads' waits
        try:
            # HWC views of DALI's buffers as CHW (channels-last strides: torch's uint8 fast path)
            out = [F.resize(torch.from_numpy(np.asarray(crops[i])).permute(2, 0, 1), [size, size], antialias=True)
                   for i in range(len(crops))]
            return _normalise(torch.stack(out))
        finally:
            torch.set_num_threads(threads)
    return run


def _variants(dataset: str, batch: int, threads: int, size: int) -> dict:
    """{name: a callable giving one batch}, in stage order; built once (start-up excluded)."""
    import dataclasses

    from fastcas.loading.loader import Loader
    from fastcas.loading.pipeline import PipelineConfig, build_pipeline

    opts = dict(image_size=size, device="cpu", epoch_length=10**9, py_workers=1, num_threads=threads, seed=0)
    plain, cutmix = Loader(dataset, batch, **opts), Loader(dataset, batch, mix="cutmix", **opts)
    pcfg = PipelineConfig(batch_size=batch, image_size=size, num_threads=threads, py_workers=1)
    src = plain.source(0, 0)
    src_mix = cutmix.source(0, 0)
    calls = iter(range(10**9))
    out = {"source call": lambda: src(SimpleNamespace(iteration=next(calls), epoch_idx=0))}
    for name, upto in (("+ worker + IPC", "ipc"), ("+ ROI decode", "decode"), ("+ resize (+ flip), uint8", "resize")):
        out[name] = _reduced(src, pcfg, upto).run
    out["+ normalise float32 CHW (build_pipeline)"] = build_pipeline(src, pcfg).run
    out["Loader, mix none"] = iter(plain).__next__
    out["build_pipeline, CutMix in the graph"] = build_pipeline(src_mix, pcfg).run
    out["Loader, CutMix"] = iter(cutmix).__next__
    out["variant: whole-image decode instead of ROI"] = _reduced(src, pcfg, "full-decode").run
    out["variant: resize without the flip's right-to-left ROI"] = _reduced(src, pcfg, "resize-noflip").run
    out["variant: resize (+ flip) with antialias=False"] = _reduced(src, pcfg, "resize-noaa").run
    out["variant: ROI decode with use_fast_idct=True"] = _reduced(src, pcfg, "decode-fast-idct").run
    out["variant: DALI ROI decode, then torch resize + normalise on the main thread"] = _hybrid(
        _reduced(src, pcfg, "decode"), size)
    out["variant: build_pipeline, source in the main thread"] = build_pipeline(
        src, dataclasses.replace(pcfg, py_workers=0)).run
    # the design that came of it (issue 37): the whole Loader with cpu_resize="torch" (fastcas.loading.cpu_resize)
    for mix in (None, "cutmix"):
        torch_path = Loader(dataset, batch, cpu_resize="torch", **opts, **({"mix": mix} if mix else {}))
        out[f"variant: Loader, cpu_resize='torch' (ROI decode by DALI, the rest in torch), {mix or 'mix none'}"] = \
            iter(torch_path).__next__
    return out


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", type=int, default=224)
    a = p.parse_args(argv)
    if a.quick:
        a.seconds, a.rounds = 0.5, 1
    load_start = load_average()
    fns = _variants(a.dataset, a.batch_size, a.threads, a.image_size)
    for f in fns.values():  # warm-up: workers started, first batches decoded
        for _ in range(3):
            f()
    per: dict[str, list[dict]] = {n: [] for n in fns}
    settle_tree()
    for _ in range(a.rounds):
        for name, f in fns.items():
            # as fastcas bench: CPU from the round's start until the queues are refilled after it
            t0, c0, s0, n = time.perf_counter(), tree_cpu_seconds(), _self_cpu(), 0
            while time.perf_counter() - t0 < a.seconds:
                f()
                n += a.batch_size
            wall = time.perf_counter() - t0
            c1, polling = settle_tree()
            s1 = _self_cpu() - polling
            per[name].append({"rate": n / wall, "cpu": 1e3 * (c1 - c0 - polling) / n, "main": 1e3 * (s1 - s0) / n})
    rows, prev = [], None
    for name, rs in per.items():
        cpu = statistics.median(r["cpu"] for r in rs)
        main_ms = statistics.median(r["main"] for r in rs)
        stage = not name.startswith(("variant", "build_pipeline, CutMix", "Loader, CutMix"))
        rows.append({"variant": name, "images_per_s": statistics.median(r["rate"] for r in rs),
                     "cpu_ms_per_image": cpu, "main_process_ms": main_ms, "worker_process_ms": cpu - main_ms,
                     "stage_ms": (cpu - prev) if (stage and prev is not None) else None,
                     "cpu_ms_rounds": [r["cpu"] for r in rs]})
        if stage:
            prev = cpu
    rows += _torch_references(a.dataset, a.batch_size, a.image_size, a.rounds)
    print_table(rows, ["variant", "images_per_s", "cpu_ms_per_image", "main_process_ms", "worker_process_ms",
                       "stage_ms"], title=f"fastcas CPU per image by stage ({a.rounds} x {a.seconds:g} s, "
                                          f"load average {load_start})")
    write_json("stages", {**vars(a), "load_average": {"start": load_start, "end": load_average()}}, rows, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
