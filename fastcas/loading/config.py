"""Loader options: :class:`LoaderConfig` (frozen, validated on construction) and
:func:`resolve_device`. Re-exported by :mod:`fastcas.loading.loader`; kept apart so the iterator module
stays about one concern."""
from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import InitVar, dataclass, field, fields

import numpy as np

from fastcas.dataset.fetch import RemoteOptions
from fastcas.dataset.imagehdr import DEFAULT_MAX_PIXELS
from fastcas.loading import checks
from fastcas.loading.mixsched import check_window
from fastcas.loading.transforms import AugmentPolicy
from fastcas.mix.kinds import KINDS as MIX_KIND_OBJECTS
from fastcas.mix.kinds import PARAM_KINDS as MIX_KINDS
from fastcas.mix.params import MODES
from fastcas.sampling.geometry import LAST_BATCH
from fastcas.sampling.weights import NAMES as WEIGHT_NAMES
from fastcas.sampling.weights import PLAN_NAMES

# valid ``mix_options`` keys per mix kind (see fastcas.mix.make_params): ``mode`` "elem"
# (per-sample draws, default) or "batch" (one draw per batch); FMix ``decay`` (spectrum decay
# power, > 0, default 3) and ``max_soft`` (soft mask ramp in [0, 0.5], default 0);
# SaliencyMix ``saliency`` "finegrained" (default: the reference's saliency, batched), "opencv"
# (the same through OpenCV) or "spectral" (spectral residual)
MODES_READ = ("exact", "streaming")  # Loader modes: per-position draws, or each rank reading its shards in order
DEFAULT_SHUFFLE_BUFFER = 4096
MIX_OPTIONS = {name: kind.options for name, kind in MIX_KIND_OBJECTS.items()}  # (fastcas.mix.kinds)
# the transform options, all None by default (= the augment policy's value; fastcas.loading.transforms)
TRANSFORM_OPTIONS = ("mean", "std", "scale", "ratio", "interpolation", "crop_pct", "padding", "hflip",
                     "color_jitter", "auto_augment", "reprob", "remode", "erase_area", "erase_ratio")


def plan_names_used(cfg) -> list:
    """The resampling-plan weights (:data:`fastcas.sampling.weights.PLAN_NAMES`) ``cfg`` uses."""
    return [w for w in (cfg.weights, cfg.foreground_weights) if w in PLAN_NAMES]


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
    if options.get("mode", "elem") not in MODES:
        raise ValueError(f"mix_options mode must be {' or '.join(map(repr, MODES))}, got {options['mode']!r}")
    MIX_KIND_OBJECTS[mix].check_options(options)  # the kind's own options (fastcas.mix.kinds)


def _check_targets(cfg) -> None:
    """``targets`` and ``valid_mask``: one target shape per setting, whatever the mix kind."""
    if cfg.targets not in (None, "soft", "hard"):
        raise ValueError(f"targets must be 'soft' (float32 [B, K]) or 'hard' (int64 [B]), got {cfg.targets!r}")
    if not isinstance(cfg.valid_mask, bool):
        raise ValueError(f"valid_mask must be True or False, got {cfg.valid_mask!r}")
    if cfg.target_kind == "hard":
        given = "" if cfg.targets else f" (the default of train={cfg.train})"
        if cfg.mix in MIX_KINDS:  # (an unknown mix is named by its own check)
            raise ValueError(f"targets='hard'{given} gives one class id per sample, but mix={cfg.mix!r} blends two "
                             "labels per sample: use targets='soft' (float32 [B, K])")
        if cfg.label_smoothing:
            raise ValueError(f"targets='hard'{given} gives one class id per sample, but label_smoothing="
                             f"{cfg.label_smoothing} spreads each label over the classes: use targets='soft' "
                             "(float32 [B, K])")


@dataclass(frozen=True)
class LoaderConfig:
    """Loader options, validated here (a ValueError naming the value), not at the first batch.
    ``mix_options`` keys per mix (:data:`MIX_OPTIONS`): ``mode`` ("elem" | "batch") for all;
    fmix adds ``decay`` (> 0) and ``max_soft`` ([0, 0.5]); saliencymix adds ``saliency``
    ("finegrained" (default) | "opencv" | "spectral"). ``prefetch``: batches finished (mixed,
    targets built) ahead on a background thread (:mod:`fastcas.loading.producer`); 0 finishes them
    on the consuming thread. ``mix_in_pipeline``: CutMix (and CMO's paste), binary FMix and, on
    CPU pipelines with the fine-grained saliency, SaliencyMix run as DALI operators inside the
    pipeline (uint8 pastes or selects before one normalisation, :mod:`fastcas.loading.pipeline`); False
    applies them with torch after the pipeline. Both give the same pixels (tested); the pipeline
    is cheaper (uint8 copies instead of float gathers and blends). ``mode``: "exact" (every
    position an independent draw, any sample read at any time) or "streaming" (each rank reads
    its own shards in order through a shuffle buffer of ``shuffle_buffer`` samples, default
    :data:`DEFAULT_SHUFFLE_BUFFER`; :mod:`fastcas.loading.streams`, docs/streaming.md)."""

    batch_size: int
    weights: str = "uniform"
    foreground_weights: str | None = None
    mix: str | None = None
    mix_prob: float = 1.0
    alpha: float = 1.0
    label_smoothing: float = 0.0
    # targets: "soft" (float32 [B, K], rows sum to 1, one-hot without mixing or smoothing) or "hard"
    # (int64 [B] class ids; refused with mixing or smoothing); None: soft for training, hard for evaluation
    targets: str | None = None
    train: bool = True
    image_size: int = 224
    device: str = "auto"
    seed: int = 0
    epoch_length: int | None = None
    last_batch: str = "drop"
    # batches are (images, targets, valid): valid bool [B] on the images' device, False for the padding
    # repeats that give every rank of an evaluation as many batches (Loader.valid)
    valid_mask: bool = False
    cas_power: float = 1.2  # CAS weights: w = CAS ** cas_power (the paper's b)
    cmo_power: float = 1.0  # CMO weights: w = 1 / n_k ** cmo_power (the paper's r)
    threshold: float | None = None  # over/undersampling threshold (None: the largest class / 25th percentile)
    dtype: str = "float32"
    channels_last: bool = False
    num_threads: int = 2
    py_workers: int = 1
    strict: bool = False
    mix_options: dict = field(default_factory=dict)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    cache_dir: str | None = None
    cache_max_bytes: int | None = None
    remote: RemoteOptions | None = None  # timeouts and retries for remote shards (None: the defaults)
    prefetch: int = 2
    mix_in_pipeline: bool = True
    fmix_select: str = "auto"  # binary FMix in the graph: "auto" | "numba" (CPU) | "arithmetic" (fastcas.mix.kinds)
    mode: str = "exact"
    shuffle_buffer: int | None = None
    # transforms (docs/loader-options.md): a policy name or AugmentPolicy, and its options (None: the policy's)
    augment: object = "imagenet"
    mean: tuple | None = None
    std: tuple | None = None
    scale: tuple | None = None
    ratio: tuple | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    padding: int | None = None
    hflip: float | None = None
    color_jitter: object = None
    auto_augment: str | None = None
    reprob: float | None = None
    remode: str | None = None
    erase_area: tuple | None = None
    erase_ratio: tuple | None = None
    # the mixing schedule: mixing on in epochs [mix_start_epoch, mix_stop_epoch) (None: no end)
    mix_start_epoch: int = 0
    mix_stop_epoch: int | None = None
    batch_timeout: float | None = None  # seconds to wait for a batch before raising BatchTimeoutError
    # on a CPU device in training: who resizes the decoded crops, DALI ("dali") or torch on a thread pool
    # ("torch", fastcas.loading.cpu_resize; ~1.7x less CPU an image); ignored on a GPU (always DALI)
    cpu_resize: str = "dali"
    # deprecated keywords (a DeprecationWarning each): b -> cas_power, r -> cmo_power
    b: InitVar[float | None] = None
    r: InitVar[float | None] = None

    def __post_init__(self, b=None, r=None):
        _apply_deprecated(self, {"b": b, "r": r})
        checks.check_option_types(self)  # types and bounds first: no TypeError from the checks below
        _check_int("batch_size", self.batch_size, 1)
        _check_int("prefetch", self.prefetch, 0)
        _check_int("image_size", self.image_size, 8)
        _check_int("num_threads", self.num_threads, 1)
        _check_int("py_workers", self.py_workers, 0)
        if not isinstance(self.mix_in_pipeline, bool):
            raise ValueError(f"mix_in_pipeline must be True or False, got {self.mix_in_pipeline!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) \
                or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        _check_targets(self)
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be > 0 (Beta(alpha, alpha)), got {self.alpha!r}")
        for name, value in (("weights", self.weights), ("foreground_weights", self.foreground_weights or "uniform")):
            if value not in WEIGHT_NAMES:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(WEIGHT_NAMES)}")
        if self.mix not in (None, "none", *MIX_KIND_OBJECTS):
            raise ValueError(f"unknown mix {self.mix!r}; expected one of none, {', '.join(MIX_KIND_OBJECTS)}")
        if self.last_batch not in LAST_BATCH:
            raise ValueError(f"unknown last_batch {self.last_batch!r}; expected one of {', '.join(LAST_BATCH)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not 0 <= self.mix_prob <= 1:
            raise ValueError(f"mix_prob must be in [0, 1], got {self.mix_prob}")
        if self.epoch_length is not None:
            _check_int("epoch_length", self.epoch_length, 1)
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(
                self.threshold, (int, float)) or not math.isfinite(self.threshold) or self.threshold < 1):
            raise ValueError(f"threshold must be a number >= 1 (samples per class) or None, got {self.threshold!r}")
        if self.cache_max_bytes is not None and self.cache_max_bytes < 0:
            raise ValueError(f"cache_max_bytes must be >= 0 or None, got {self.cache_max_bytes}")
        if self.remote is not None and not isinstance(self.remote, RemoteOptions):
            raise ValueError(f"remote must be a fastcas.dataset.fetch.RemoteOptions, got {self.remote!r}")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(
                self.max_pixels, (int, np.integer)) or self.max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive int or None, got {self.max_pixels!r}")
        if self.foreground_weights and not self.mix_kind:
            raise ValueError("foreground_weights (a two-stream recipe such as CMO) needs mix= to paste the foreground")
        _check_mix_options(self.mix_kind, self.mix_options)
        if self.mode not in MODES_READ:
            raise ValueError(f"mode must be 'exact' or 'streaming', got {self.mode!r}")
        if self.shuffle_buffer is not None:
            if self.mode != "streaming":
                raise ValueError("shuffle_buffer applies to mode='streaming' only (exact mode draws each position "
                                 "independently)")
            _check_int("shuffle_buffer", self.shuffle_buffer, 0)
        if self.mode == "streaming" and plan_names_used(self):
            raise ValueError(f"weights {', '.join(map(repr, plan_names_used(self)))} are a fixed resampling plan "
                             "(the importance-sampling paper's sets) and need mode='exact'; the weights "
                             "'oversample-expected' / 'undersample-expected' stream")
        if self.mode == "streaming" and not self.train:
            raise ValueError("mode='streaming' is for training (evaluation already reads shards in order)")
        self.transforms  # noqa: B018 - validates the transform options (a ValueError naming the option)
        check_window(self.mix_start_epoch, self.mix_stop_epoch)
        checks.check_batch_timeout(self.batch_timeout, self.prefetch)

    @property
    def transforms(self) -> AugmentPolicy:
        """The :class:`~fastcas.loading.transforms.AugmentPolicy` of ``augment`` and the transform options."""
        options = vars(self)  # this frozen dataclass's fields by name
        return AugmentPolicy.create(self.augment, **{k: options[k] for k in TRANSFORM_OPTIONS})

    @property
    def target_kind(self) -> str:
        """``targets`` resolved: "soft" (float32 [B, K]) or "hard" (int64 [B] class ids)."""
        return self.targets or ("soft" if self.train else "hard")

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


# DataLoader / timm / Lightning argument names a user may try, and what fastcas calls them
_OPTION_HINTS = {
    "num_workers": "py_workers (DALI's Python source worker processes) and num_threads (DALI CPU threads)",
    "drop_last": "last_batch='drop' | 'partial' | 'pad'",
    "shuffle": "train=True (weighted draws, new order per epoch) / train=False (every sample once, in order)",
    "sampler": "weights= ('uniform', 'cas', 'cmo', ...)",
    "pin_memory": "nothing: host-to-device copies are always pinned",
    "img_size": "image_size", "input_size": "image_size", "smoothing": "label_smoothing",
    "mixup_prob": "mix_prob", "prob": "mix_prob",
}


#: deprecated option names -> the explicit ones (still accepted, with a DeprecationWarning)
DEPRECATED_OPTIONS = {"b": "cas_power", "r": "cmo_power"}
_POWER_DEFAULTS = {"cas_power": 1.2, "cmo_power": 1.0}


def _apply_deprecated(cfg, given: dict) -> None:
    """``b`` / ``r`` given: warn, and set ``cas_power`` / ``cmo_power`` (a ValueError when the
    new name was given too, with another value)."""
    for old, value in given.items():
        if value is None:
            continue
        new = DEPRECATED_OPTIONS[old]
        warnings.warn(f"fastcas: the option {old!r} is deprecated: use {new}={value!r}", DeprecationWarning,
                      stacklevel=4)
        now = cfg.cas_power if new == "cas_power" else cfg.cmo_power
        if now != _POWER_DEFAULTS[new] and now != value:
            raise ValueError(f"{old}={value!r} and {new}={now!r} both given: {old} is the deprecated name of {new}; "
                             f"give {new} only")
        object.__setattr__(cfg, new, value)  # frozen: set once, during construction


def translate_deprecated(options: dict, stacklevel: int = 3) -> dict:
    """``options`` with each deprecated name (``b``, ``r``) replaced by its explicit one, a
    DeprecationWarning attributed to the caller ``stacklevel`` frames up (so Python shows it),
    and a ValueError when both names are given with different values."""
    out = dict(options)
    for old, new in DEPRECATED_OPTIONS.items():
        if old not in out:
            continue
        value = out.pop(old)
        warnings.warn(f"fastcas: the option {old!r} is deprecated: use {new}={value!r}", DeprecationWarning,
                      stacklevel=stacklevel)
        if new in out and out[new] != value:
            raise ValueError(f"{old}={value!r} and {new}={out[new]!r} both given: {old} is the deprecated name of "
                             f"{new}; give {new} only")
        out[new] = value
    return out


def check_option_names(options: dict) -> None:
    """A TypeError naming each unknown option and what fastcas calls it (``num_workers`` ->
    ``py_workers``), instead of the dataclass's bare "unexpected keyword argument"."""
    valid = [f.name for f in fields(LoaderConfig) if f.name != "batch_size"]
    unknown = [k for k in options if k not in valid and k not in DEPRECATED_OPTIONS]
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, valid, n=1)
        hint = _OPTION_HINTS.get(k) or (close[0] if close else None)
        parts.append(f"{k!r}" + (f" (fastcas: {hint})" if hint else ""))
    raise TypeError(f"Loader got unknown option{'s' if len(parts) > 1 else ''} {', '.join(parts)}; "
                    f"valid options: {', '.join(valid)} (docs/loader-options.md)")
