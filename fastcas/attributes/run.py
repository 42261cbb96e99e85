"""Scoring a dataset: decode with fastcas's loader, encode attributes in chunks (resumable),
split over ranks, merge, rank within classes and write the CAS score file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fastcas.augment import IMAGENET_MEAN, IMAGENET_STD, jpeg_size


def iter_batches(dataset, *, batch_size: int, image_size: int, rank: int, world_size: int,
                 device: str = "auto", start_step: int = 0, py_workers: int = 1):
    """Yield (global indices int64 [B], images float [B, 3, S, S] in [0, 1] on the device,
    original sizes int [B, 2]) for this rank's share, in order, from ``start_step`` on."""
    import torch

    from fastcas.loader import Loader

    loader = Loader(dataset, batch_size, train=False, image_size=image_size, rank=rank, world_size=world_size,
                    last_batch="partial", device=device, py_workers=py_workers)
    positions = loader.sampler_indices(0)[0]
    loader.load_state_dict({"epoch": 0, "step": start_step, "seed": loader.config.seed})
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    k = start_step * batch_size
    try:
        for images, _ in loader:
            idx = positions[k : k + len(images)]
            k += len(images)
            x = images.float() * std.to(images.device) + mean.to(images.device)
            sizes = np.array([jpeg_size(loader.reader[int(i)].data) for i in idx])
            yield idx, x.clamp(0, 1), sizes
            if loader.step >= len(loader):
                break
    finally:
        loader.close()


def encode_dataset(dataset, features, *, batch_size: int = 64, image_size: int = 64, rank: int = 0,
                   world_size: int = 1, work_dir=None, chunk_batches: int = 16, device: str = "auto",
                   progress: bool = True, py_workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``features(images, sizes) -> [B, F]`` to this rank's share; returns (indices, features).
    With ``work_dir`` every ``chunk_batches`` batches are saved, and a restarted run continues
    after the last complete chunk."""
    from fastcas._io import atomic_open
    from fastcas.reader import ShardReader

    n_total = len(ShardReader(dataset))
    mine = max(0, -(-(n_total - rank) // world_size))
    steps = -(-mine // batch_size)
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    if work_dir:
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        for p in sorted(work_dir.glob(f"chunk-r{rank:03d}-w{world_size:03d}-b{batch_size}-*.npz")):
            with np.load(p) as z:
                chunks.append((z["indices"], z["features"]))
    start = len(chunks) * chunk_batches
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=mine, initial=min(start * batch_size, mine), unit="img", desc=f"score r{rank}")
    pending_i, pending_f = [], []
    step = start
    for idx, images, sizes in iter_batches(dataset, batch_size=batch_size, image_size=image_size, rank=rank,
                                           world_size=world_size, device=device, start_step=start,
                                           py_workers=py_workers) if start < steps else ():
        pending_i.append(idx)
        pending_f.append(np.asarray(features(images, sizes)))
        step += 1
        if bar:
            bar.update(len(idx))
        if len(pending_i) == chunk_batches or step == steps:
            chunk = (np.concatenate(pending_i), np.concatenate(pending_f))
            if work_dir:
                name = work_dir / f"chunk-r{rank:03d}-w{world_size:03d}-b{batch_size}-{len(chunks):06d}.npz"
                with atomic_open(name, "wb") as f:
                    np.savez(f, indices=chunk[0], features=chunk[1])
            chunks.append(chunk)
            pending_i, pending_f = [], []
    if bar:
        bar.close()
    if not chunks:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])
