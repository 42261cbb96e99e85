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

from fastcas import _workers
from fastcas import weights as W
from fastcas._rng import generator
from fastcas.reader import ShardReader
from fastcas.sampler import WeightedSampler, _dist_defaults
from fastcas.source import SampleSource, SequentialIndex, SourceConfig, warn_skipped

MIX_KINDS = ("cutmix", "fmix", "saliencymix", "mixup")
LAST_BATCH = ("drop", "partial", "pad")
_MIX_TAG = 0x313
# valid ``mix_options`` keys per mix kind (see fastcas.mix.make_params): ``mode`` "elem"
# (per-sample draws, default) or "batch" (one draw per batch); FMix ``decay`` (spectrum decay
# power, > 0, default 3) and ``max_soft`` (soft mask ramp in [0, 0.5], default 0);
# SaliencyMix ``saliency`` "spectral" (default) or "finegrained"
MIX_OPTIONS = {"cutmix": ("mode",), "mixup": ("mode",), "fmix": ("mode", "decay", "max_soft"),
               "saliencymix": ("mode", "saliency")}


def _check_int(name: str, value, minimum: int) -> None:
    """A clear ValueError unless ``value`` is an integer >= ``minimum`` (bools and 2.5 refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_mix_options(mix: str | None, options) -> None:
    if not isinstance(options, dict):
        raise ValueError(f"mix_options must be a dict, got {type(options).__name__}")
    if options and mix is None:
        raise ValueError(f"mix_options {sorted(options)} given without mix=")
    if mix is None:
        return
    unknown = sorted(set(options) - set(MIX_OPTIONS[mix]))
    if unknown:
        raise ValueError(f"unknown mix_options {unknown} for mix={mix!r}; valid keys: {', '.join(MIX_OPTIONS[mix])}")
    if options.get("mode", "elem") not in ("elem", "batch"):
        raise ValueError(f"mix_options mode must be 'elem' or 'batch', got {options['mode']!r}")
    if options.get("saliency", "spectral") not in ("spectral", "finegrained", "spectral-residual", "fine-grained"):
        raise ValueError(f"mix_options saliency must be 'spectral' or 'finegrained', got {options['saliency']!r}")
    for key, lo, hi in (("decay", 0.0, math.inf), ("max_soft", 0.0, 0.5)):
        if key in options:
            v = options[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or (key == "decay" and v <= 0):
                raise ValueError(f"mix_options {key} must be a number in {'(0, inf)' if key == 'decay' else '[0, 0.5]'}, got {v!r}")


@dataclass(frozen=True)
class LoaderConfig:
    """Loader options, validated here (a ValueError naming the value), not at the first batch.
    ``mix_options`` keys per mix (:data:`MIX_OPTIONS`): ``mode`` ("elem" | "batch") for all;
    fmix adds ``decay`` (> 0) and ``max_soft`` ([0, 0.5]); saliencymix adds ``saliency``
    ("spectral" | "finegrained")."""

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

    def __post_init__(self):
        _check_int("batch_size", self.batch_size, 1)
        _check_int("image_size", self.image_size, 8)
        _check_int("num_threads", self.num_threads, 1)
        _check_int("py_workers", self.py_workers, 0)
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) \
                or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be > 0 (Beta(alpha, alpha)), got {self.alpha!r}")
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
        if self.epoch_length is not None:
            _check_int("epoch_length", self.epoch_length, 1)
        if self.foreground_weights and not self.mix_kind:
            raise ValueError("foreground_weights (a two-stream recipe such as CMO) needs mix= to paste the foreground")
        _check_mix_options(self.mix_kind, self.mix_options)

    @property
    def mix_kind(self) -> str | None:
        return None if self.mix in (None, "none") else self.mix


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; other values unchanged."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                             "use device='cpu' or 'auto'")
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
        self.reader = dataset if isinstance(dataset, ShardReader) else ShardReader(self.dataset)
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
        self._quarantine: set[int] = set()  # indices DALI cannot decode (strict=False), see fastcas.faults
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
                "world_size": self.world_size, "skipped": dict(self.skipped),
                "quarantine": sorted(self.reader.keys[i] for i in self._quarantine)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.config.seed) != self.config.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this loader has seed {self.config.seed}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.skipped = dict(state.get("skipped", {}))
        quarantine = set()
        if state.get("quarantine"):
            where = {k: i for i, k in enumerate(self.reader.keys)}
            quarantine = {where[k] for k in state["quarantine"] if k in where}
        if quarantine != self._quarantine:
            self._quarantine = quarantine
            self.close()  # the pipeline's source carries the quarantine: rebuild

    # -- iteration ---------------------------------------------------------------------------
    def _build(self):
        from fastcas.pipeline import PipelineConfig, build_pipeline

        cfg = self.config
        self.close()
        source = SampleSource(SourceConfig(
            dataset=str(self.dataset), streams=self.streams, positions=self.steps * cfg.batch_size,
            seed=cfg.seed, rank=self.rank, epoch0=self.epoch, offset=self.step * cfg.batch_size,
            train=cfg.train, strict=cfg.strict, batch_size=cfg.batch_size,
            quarantine=frozenset(getattr(self, "_quarantine", ()))))
        device_id = None
        if self.device == "cuda":
            import torch

            device_id = torch.cuda.current_device()
        pcfg = PipelineConfig(batch_size=cfg.batch_size, image_size=cfg.image_size, train=cfg.train,
                              device=self.device, device_id=device_id, num_threads=cfg.num_threads,
                              py_workers=cfg.py_workers, dtype=cfg.dtype, channels_last=cfg.channels_last)
        with _workers.die_with_parent():  # workers forked here exit when this process dies
            self._pipe = build_pipeline(source, pcfg)
        self._watch = _workers.WorkerWatch(self._pipe)
        self._pipe_at = (self.epoch, self.step)
        self._built = (source, pcfg, self.epoch, self.step)  # for fastcas.faults after a decode error

    def _run(self):
        """One batch from the pipeline; a dead worker raises WorkerDiedError (never hangs)
        and closes the pipeline, so the next ``iter(loader)`` rebuilds it at this step."""
        from fastcas import pipeline

        while True:
            try:
                with getattr(self, "_watch", None) or _workers.NO_WATCH:
                    return pipeline.run(self._pipe, self.device)
            except _workers.WorkerDiedError:
                self.close()
                raise
            except StopIteration:
                raise
            except Exception as exc:  # an undecodable sample? quarantined and rebuilt, or raised
                if not self._quarantine_undecodable(exc):
                    raise

    def _quarantine_undecodable(self, exc) -> bool:
        """After a failed batch: find the samples DALI cannot decode (fastcas.faults). strict:
        raise naming key and shard; else quarantine them, rebuild at this step, return True.
        False when no sample is to blame (the error is not a decode error)."""
        import warnings

        from fastcas.errors import CorruptSampleError, FastcasError
        from fastcas.faults import undecodable
        from fastcas.pipeline import DecodeProbe

        built = getattr(self, "_built", None)
        if built is None or isinstance(exc, FastcasError):  # fastcas's own errors already say what failed
            return False
        source, pcfg, epoch0, step0 = built
        epoch_idx = self.epoch - epoch0
        first = self.step - (step0 if epoch_idx == 0 else 0)
        probe = DecodeProbe(pcfg.device, pcfg.device_id)
        bad = []
        try:
            for k in range(1 + pcfg.prefetch):  # the failed batch, else one DALI had prefetched
                bad = [(i, why) for i, why in undecodable(source, first + k, epoch_idx, probe) if i not in self._quarantine]
                if bad:
                    break
        except Exception:  # the batch cannot even be recomputed: report the original error
            return False
        if not bad:
            return False
        r = self.reader
        where = {i: f"sample {r.keys[i]!r} in {r.shard_paths[r.shard_of(i)]}" for i, _ in bad}
        if self.config.strict:
            i, why = bad[0]
            raise CorruptSampleError(f"{where[i]}: DALI cannot decode it ({why}); pass strict=False to skip and "
                                     "count such samples", r.keys[i]) from exc
        for i, why in bad:
            warnings.warn(f"fastcas: {where[i]}: DALI cannot decode it ({why}); quarantined: every draw of it is "
                          "substituted by the next readable sample and counted in loader.skipped", RuntimeWarning,
                          stacklevel=4)
            self._quarantine.add(i)
        self.close()
        self._build()  # same (epoch, step): only the quarantined samples change
        return True

    def __iter__(self):
        from fastcas import pipeline

        if self.step >= self.steps:  # a finished epoch: the next one starts
            self.epoch, self.step = self.epoch + 1, 0
        if self._pipe is None or self._pipe_at != (self.epoch, self.step):
            self._build()
        while self.step < self.steps:
            try:
                out = self._run()
            except StopIteration:  # pragma: no cover - the step count ends the epoch first
                break
            batch = self._finish(out)
            self.step += 1
            self._pipe_at = (self.epoch, self.step)
            yield batch
        # drain the pipeline's epoch so the next one starts clean
        try:
            while True:
                self._run()
        except StopIteration:
            pipeline.reset(self._pipe)
        self._pipe_at = (self.epoch + 1, 0)

    def _finish(self, out):
        import torch

        from fastcas import pipeline

        cfg = self.config
        n = self._last_size if self.step == self.steps - 1 else cfg.batch_size
        skipped = out[-1][:n].reshape(-1).cpu().numpy()
        bad = [self.reader.keys[i] for i in skipped[skipped >= 0]]
        if bad:
            warn_skipped(bad, self.skipped)
        images = out[0][:n]
        # labels are a host output even of a GPU pipeline: they follow the images' device
        labels = pipeline.to_device(out[1][:n].reshape(-1), images.device)
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
            fg, y_fg = out[2][:n], pipeline.to_device(out[3][:n].reshape(-1), images.device)
            if cfg.channels_last:
                fg = fg.permute(0, 3, 1, 2)
        else:
            perm = pipeline.to_device(torch.from_numpy(M.in_batch_partner(n, rng)), images.device)
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
        watch, self._watch = getattr(self, "_watch", None), None
        if watch is not None:
            watch.close()
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
