"""CAS scoring throughput: the full scoring path (read shards -> decode -> resize -> encode,
as ``fastcas score`` runs it) against the bare encoder forward on the same, already decoded
batches. Goal: scoring >= 90% of the bare forward, i.e. the data path is not the
bottleneck. Encoders: the pixel encoder and an open_clip model with random weights.

    python benchmarks/bench_score.py [--quick] [--images 512] [--clip-model ViT-B-32] [--decoders torchvision dali]
"""
from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import base_parser, print_table, write_json  # noqa: E402


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401

        return True
    except ImportError:
        return False


def _bare(batches, fn) -> float:
    """images/s of ``fn`` alone over pre-decoded batches."""
    n = sum(len(b[0]) for b in batches)
    t0 = time.perf_counter()
    for _, images, sizes in batches:
        fn(images, sizes)
    return n / (time.perf_counter() - t0)


def _scoring(ds, fn, *, batch_size, image_size, decoder, device) -> tuple[float, int]:
    from fastcas.scoring.run import encode_dataset

    t0 = time.perf_counter()
    idx, _ = encode_dataset(ds, fn, batch_size=batch_size, image_size=image_size, progress=False,
                            decoder=decoder, device=device, py_workers=1)
    return len(idx) / (time.perf_counter() - t0), len(idx)


def main(argv=None) -> int:
    import torch

    from fastcas.dataset.reader import ShardReader
    from fastcas.dataset.shards import ShardWriterConfig, write_shards
    from fastcas.scoring.pixel import PixelEncoder
    from fastcas.scoring.run import decode_batch, rank_batches
    from fastcas.tools.demo.data import corpus_samples

    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--clip-model", default="ViT-B-32")
    p.add_argument("--clip-images", type=int, default=64, help="images for the (slow on CPU) CLIP rows")
    p.add_argument("--decoders", nargs="+", default=["torchvision", "dali"])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    a = p.parse_args(argv)
    n = 64 if a.quick else a.images
    n_clip = 16 if a.quick else a.clip_images
    clip_model = "ViT-S-32" if a.quick else a.clip_model
    if a.quick:
        a.batch_size = min(a.batch_size, 16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp())
    rows, goals = [], []
    try:
        write_shards(corpus_samples(n, seed=0), tmp / "ds", ShardWriterConfig(shard_size=256))
        write_shards(corpus_samples(n_clip, seed=0), tmp / "ds_clip", ShardWriterConfig(shard_size=256))
        encoders = [("pixel", PixelEncoder().encode, 64, tmp / "ds")]
        try:
            from fastcas.scoring.clip import ClipEncoder

            clip = ClipEncoder(clip_model, None, device)
            encoders.append(
                (f"clip {clip_model} (random weights)", clip.embed_images, clip.image_size, tmp / "ds_clip")
            )
        except ImportError:
            print("open_clip not installed: CLIP rows skipped")
        for name, fn, size, ds in encoders:
            r = ShardReader(ds)
            plan = rank_batches(len(r), a.batch_size, 0, 1, "torchvision")
            batches = [(idx, *decode_batch([r[int(i)].data for i in idx], size, device)) for idx in plan]
            # interleave rounds of (bare, scoring per decoder) and take medians, so both see the
            # same background load on a shared machine
            decs = [d for d in a.decoders if d != "dali" or _has_dali()]
            res = {"bare": []} | {d: [] for d in decs}
            _scoring(ds, fn, batch_size=a.batch_size, image_size=size, decoder=decs[0], device=device)  # warm
            for _ in range(a.rounds):
                res["bare"].append(_bare(batches, fn))
                for dec in decs:
                    res[dec].append(_scoring(ds, fn, batch_size=a.batch_size, image_size=size, decoder=dec,
                                             device=device)[0])
            bare = statistics.median(res["bare"])
            rows.append({"encoder": name, "path": "bare encoder forward (pre-decoded)", "image_size": size,
                         "images": len(r), "images_per_s": bare, "vs_bare": 1.0})
            for dec in decs:
                ips = statistics.median(res[dec])
                rows.append({"encoder": name, "path": f"scoring ({dec} decode + encode)", "image_size": size,
                             "images": len(r), "images_per_s": ips, "vs_bare": ips / bare})
                if dec == "torchvision":
                    goals.append({"goal": f"{name}: scoring >= 90% of bare forward", "value": ips / bare,
                                  "met": ips / bare >= 0.9})
        print_table(rows, ["encoder", "path", "image_size", "images", "images_per_s", "vs_bare"],
                    title=f"CAS scoring throughput on {device}")
        write_json(
            "bench_score",
            {
                "images": n,
                "clip_images": n_clip,
                "batch_size": a.batch_size,
                "clip_model": clip_model,
                "device": device,
                "rounds": a.rounds,
                "torch_threads": torch.get_num_threads(),
                "corpus": "fastcas.tools.demo.data.corpus_samples (real photos, seeded crops)",
            },
            rows,
            a.out,
            goals=goals,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
