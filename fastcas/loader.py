"""``fastcas.Loader``: weighted, mixed, resumable batches from indexed shards via DALI.

    loader = fastcas.Loader("data/train", 256, weights="cas", scores="scores.parquet",
                            mix="cutmix", alpha=0.2)
    for epoch in range(E):
        loader.set_epoch(epoch)
        for images, targets in loader:   # [B,3,S,S] float on the device; [B,K] soft targets
            ...

Stages: weights -> stateless sampler(s) -> :class:`~fastcas.source.SampleSource` ->
DALI pipeline (:mod:`fastcas.pipeline`) -> mixing (:mod:`fastcas.mix`) on the same device.
Two-stream recipes (CMO) set ``foreground_weights``: each slot holds a background drawn by
``weights`` (uniform for CMO) and a foreground drawn by ``foreground_weights`` ("cmo").
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastcas import weights as W
from fastcas._rng import generator
from fastcas.imagehdr import DEFAULT_MAX_PIXELS
from fastcas.reader import ShardReader
from fastcas.sampler import WeightedSampler, _dist_defaults
from fastcas.source import SampleSource, SequentialIndex, SourceConfig, warn_skipped

MIX_KINDS = ("cutmix", "fmix", "saliencymix", "mixup")
LAST_BATCH = ("drop", "partial", "pad")
_MIX_TAG = 0x313


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int
    weights: str = "uniform"
    foreground_weights: str | None = None
    mix: str | None = None
    mix_prob: float = 1.0
    alpha: float = 1.0
    label_smoothing: float = 0.0
    train: bool = True
    image_size: int = 224
    device: str = "auto"
    seed: int = 0
    epoch_length: int | None = None
    last_batch: str = "drop"
    b: float = 1.2
    r: float = 1.0
    dtype: str = "float32"
    channels_last: bool = False
    num_threads: int = 2
    py_workers: int = 1
    strict: bool = False
    mix_options: dict = field(default_factory=dict)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    cache_dir: str | None = None
    cache_max_bytes: int | None = None

    def __post_init__(self):
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name, value in (("weights", self.weights), ("foreground_weights", self.foreground_weights or "uniform")):
            if value not in W.NAMES:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(W.NAMES)}")
        if self.mix not in (None, "none", *MIX_KINDS):
            raise ValueError(f"unknown mix {self.mix!r}; expected one of none, {', '.join(MIX_KINDS)}")
        if self.last_batch not in LAST_BATCH:
            raise ValueError(f"unknown last_batch {self.last_batch!r}; expected one of {', '.join(LAST_BATCH)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not 0 <= self.mix_prob <= 1:
            raise ValueError(f"mix_prob must be in [0, 1], got {self.mix_prob}")
        if self.epoch_length is not None and self.epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1, got {self.epoch_length}")
        if self.cache_max_bytes is not None and self.cache_max_bytes < 0:
            raise ValueError(f"cache_max_bytes must be >= 0 or None, got {self.cache_max_bytes}")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(
                self.max_pixels, (int, np.integer)) or self.max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive int or None, got {self.max_pixels!r}")
        if self.foreground_weights and not self.mix_kind:
            raise ValueError("foreground_weights (a two-stream recipe such as CMO) needs mix= to paste the foreground")

    @property
    def mix_kind(self) -> str | None:
        return None if self.mix in (None, "none") else self.mix


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; other values unchanged."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


class Loader:
    """Iterator of ``(images, targets)`` batches; see the module docstring.

    ``images``: float32/float16 [B, 3, S, S] (channels-last strides with ``channels_last``)
    on the loader's device; ``targets``: int64 [B] class ids, or float32 [B, num_classes]
    soft targets when mixing or label smoothing is on. ``len(loader)`` = steps per epoch.
    """

    def __init__(self, dataset, batch_size: int, *, scores=None, rank: int | None = None,
                 world_size: int | None = None, **options):
        self.config = LoaderConfig(batch_size=batch_size, **options)
        cfg = self.config
        self.dataset = Path(dataset.root if isinstance(dataset, ShardReader) else dataset)
        self.reader = dataset if isinstance(dataset, ShardReader) else ShardReader(
            self.dataset, cache_dir=cfg.cache_dir, cache_max_bytes=cfg.cache_max_bytes)
        self.num_classes = self.reader.num_classes
        self.rank, self.world_size = _dist_defaults(rank, world_size)
        self.device = resolve_device(cfg.device)
        self.scores = self._load_scores(scores)
        self.streams = self._make_streams()
        per_rank = len(self.streams[0])
        steps = per_rank / cfg.batch_size
        self.steps = math.floor(steps) if cfg.last_batch == "drop" else math.ceil(steps)
        if self.steps < 1:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than this rank's {per_rank} samples per epoch "
                             "with last_batch='drop'")
        self._last_size = per_rank - (self.steps - 1) * cfg.batch_size if cfg.last_batch == "partial" else cfg.batch_size
        self.epoch, self.step = 0, 0
        self.skipped: dict[str, int] = {}
        self._pipe = None
        self._pipe_at: tuple[int, int] | None = None  # (epoch, step) the pipeline yields next

    # -- construction ----------------------------------------------------------------------
    def _load_scores(self, scores):
        needs = "cas" in (self.config.weights, self.config.foreground_weights) or "cas-cmo" in (
            self.config.weights, self.config.foreground_weights)
        if scores is None:
            if needs:
                raise ValueError("weights 'cas' / 'cas-cmo' need scores= (a score file from `fastcas score` or an array)")
            return None
        if isinstance(scores, (str, os.PathLike)):
            from fastcas.scores import read_scores

            return read_scores(scores, keys=self.reader.keys).cas
        return np.asarray(scores, np.float64)

    def _sampler(self, name: str):
        cfg = self.config
        w = W.make(name, self.reader.labels, scores=self.scores, b=cfg.b, r=cfg.r)
        num = cfg.epoch_length or len(self.reader)
        if name == "uniform":
            return WeightedSampler(len(self.reader), num, seed=cfg.seed, rank=self.rank,
                                   world_size=self.world_size, replacement=False)
        return WeightedSampler(w, num, seed=cfg.seed + 7919 * len(name), rank=self.rank, world_size=self.world_size)

    def _make_streams(self) -> tuple:
        cfg = self.config
        if not cfg.train:
            return (SequentialIndex(len(self.reader), self.rank, self.world_size),)
        streams = [self._sampler(cfg.weights)]
        if cfg.foreground_weights:
            streams.append(self._sampler(cfg.foreground_weights))
        return tuple(streams)

    def sampler_indices(self, epoch: int) -> list[np.ndarray]:
        """Per stream, the global indices this rank reads in ``epoch`` (before padding)."""
        return [s.index_at(epoch, np.arange(len(s))) for s in self.streams]

    # -- epochs and state ------------------------------------------------------------------
    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if int(epoch) != self.epoch:
            self.epoch, self.step = int(epoch), 0

    def state_dict(self) -> dict:
        """Where the next batch comes from; everything else is a function of the config."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.config.seed, "rank": self.rank,
                "world_size": self.world_size, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.config.seed) != self.config.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this loader has seed {self.config.seed}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.skipped = dict(state.get("skipped", {}))

    # -- iteration ---------------------------------------------------------------------------
    def _build(self):
        from fastcas.pipeline import PipelineConfig, build_pipeline

        cfg = self.config
        self.close()
        source = SampleSource(SourceConfig(
            dataset=str(self.dataset), streams=self.streams, positions=self.steps * cfg.batch_size,
            seed=cfg.seed, rank=self.rank, epoch0=self.epoch, offset=self.step * cfg.batch_size,
            train=cfg.train, strict=cfg.strict, batch_size=cfg.batch_size, max_pixels=cfg.max_pixels,
            cache_dir=cfg.cache_dir, cache_max_bytes=cfg.cache_max_bytes))
        device_id = None
        if self.device == "cuda":
            import torch

            device_id = torch.cuda.current_device()
        pcfg = PipelineConfig(batch_size=cfg.batch_size, image_size=cfg.image_size, train=cfg.train,
                              device=self.device, device_id=device_id, num_threads=cfg.num_threads,
                              py_workers=cfg.py_workers, dtype=cfg.dtype, channels_last=cfg.channels_last)
        self._pipe = build_pipeline(source, pcfg)
        self._pipe_at = (self.epoch, self.step)

    def __iter__(self):
        from fastcas import pipeline

        if self.step >= self.steps:  # a finished epoch: the next one starts
            self.epoch, self.step = self.epoch + 1, 0
        if self._pipe is None or self._pipe_at != (self.epoch, self.step):
            self._build()
        while self.step < self.steps:
            try:
                out = pipeline.run(self._pipe, self.device)
            except StopIteration:  # pragma: no cover - the step count ends the epoch first
                break
            batch = self._finish(out)
            self.step += 1
            self._pipe_at = (self.epoch, self.step)
            yield batch
        # drain the pipeline's epoch so the next one starts clean
        try:
            while True:
                pipeline.run(self._pipe, self.device)
        except StopIteration:
            pipeline.reset(self._pipe)
        self._pipe_at = (self.epoch + 1, 0)

    def _finish(self, out):
        import torch

        cfg = self.config
        n = self._last_size if self.step == self.steps - 1 else cfg.batch_size
        skipped = out[-1][:n].reshape(-1).cpu().numpy()
        bad = [self.reader.keys[i] for i in skipped[skipped >= 0]]
        if bad:
            warn_skipped(bad, self.skipped)
        images, labels = out[0][:n], out[1][:n].reshape(-1)
        if cfg.channels_last:
            images = images.permute(0, 3, 1, 2)
        kind = cfg.mix_kind
        if kind is None:
            if cfg.label_smoothing:
                return images, self._smooth(labels)
            return images, labels
        from fastcas import mix as M

        rng = generator(cfg.seed, _MIX_TAG, self.epoch, self.rank, self.step)
        if len(self.streams) == 2:
            fg, y_fg = out[2][:n], out[3][:n].reshape(-1)
            if cfg.channels_last:
                fg = fg.permute(0, 3, 1, 2)
        else:
            perm = torch.from_numpy(M.in_batch_partner(n, rng)).to(images.device)
            fg, y_fg = images[perm], labels[perm]
        S = images.shape[-1]
        extra = {"foreground": fg} if kind == "saliencymix" else {}
        # device: FMix masks are built where the images are (no host round trip)
        params = M.make_params(kind, n, S, S, alpha=cfg.alpha, prob=cfg.mix_prob, generator=rng,
                               device=images.device, **extra, **cfg.mix_options)
        mixed = M.apply(params, images, fg)
        targets = M.soft_targets(params, labels, y_fg, self.num_classes, cfg.label_smoothing)
        return mixed, targets

    def _smooth(self, labels):
        import torch

        s = self.config.label_smoothing
        t = torch.full((len(labels), self.num_classes), s / self.num_classes, device=labels.device)
        return t.scatter_(1, labels[:, None], 1 - s + s / self.num_classes)

    def close(self) -> None:
        """Stop the DALI pipeline and its worker processes."""
        self._pipe = None  # dropping the last reference stops DALI and its workers
        self._pipe_at = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        c = self.config
        return (f"Loader({str(self.dataset)!r}, batch_size={c.batch_size}, weights={c.weights!r}, "
                f"foreground_weights={c.foreground_weights!r}, mix={c.mix!r}, train={c.train}, "
                f"device={self.device!r}, rank={self.rank}/{self.world_size}, steps={self.steps})")
