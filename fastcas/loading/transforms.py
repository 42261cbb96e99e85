"""The augmentation policy: one frozen owner of every transform option of the DALI graph.

:class:`AugmentPolicy` says what the graph (:mod:`fastcas.loading.pipeline`) does to each
training sample and how evaluation crops, and draws every per-sample random quantity on the host
from ``(seed, epoch, stream, position)`` with the counter-based generator
(:mod:`fastcas.core.rng`), like the crop windows of :mod:`fastcas.loading.augment`. So a resumed
or re-split run reproduces every pixel (AutoAugment and its kin included: their operation and
magnitude choices are drawn here and handed to DALI's ``nvidia.dali.auto_aug`` suites, see
:meth:`AugmentPolicy.draws`).

Training, in this order: ``imagenet``: RandomResizedCrop (``scale``, ``ratio``) decoded as an ROI,
resized to S x S (``interpolation``) with the flip folded in; ``cifar``: the whole image resized
to S x S, flipped, then an S x S crop at offset ``(dy, dx)`` in ``[0, 2 * padding]`` of the image
zero-padded by ``padding`` (torchvision ``RandomCrop(S, padding)`` + flip, as naver-ai/cmo
``cifar_train.py``). Then AutoAugment / RandAugment / TrivialAugment (``auto_augment``), colour
jitter (``color_jitter``), normalisation (``mean``, ``std``) and random erasing (``reprob``, on the
normalised image, timm's ``RandomErasing``). Evaluation: resize the shorter side to
``round(S / crop_pct)`` and centre-crop S x S; ``cifar`` without ``crop_pct``: the whole image
resized to S x S. The defaults are today's ``imagenet`` stream, bit for bit.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace

import numpy as np

from fastcas.core.rng import counter_bits, counter_uniform, derive_key
from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD, RATIO, SCALE, crop_windows

POLICIES = ("imagenet", "cifar")
# the CIFAR-LT reference's normalisation (naver-ai/cmo cifar_train.py, after LDAM-DRW); the
# policies default to ImageNet's: pass mean=CIFAR_MEAN, std=CIFAR_STD to follow the reference
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
EVAL_CROP_PCT = 0.875  # fastcas's (and timm's) default evaluation crop fraction
# interpolation names -> DALI's types.DALIInterpType member names (timm's names are aliases)
INTERPOLATIONS = {"nearest": "INTERP_NN", "linear": "INTERP_LINEAR", "cubic": "INTERP_CUBIC",
                  "lanczos": "INTERP_LANCZOS3", "triangular": "INTERP_TRIANGULAR", "gaussian": "INTERP_GAUSSIAN"}
INTERP_ALIASES = {"bilinear": "linear", "bicubic": "cubic", "lanczos3": "lanczos", "nn": "nearest"}
AUTO_AUGMENTS = ("randaugment", "trivialaugment", "autoaugment")
ERASE_MODES = ("const", "rand", "pixel")
_ERASE_ATTEMPTS = 10
# purpose tags of the draws (fastcas.loading.augment's crop/flip keep their own 0xA6)
_TAG_SHIFT, _TAG_JITTER, _TAG_ERASE, _TAG_AUTO = 0xA7, 0xA8, 0xA9, 0xAA
AUTO_DRAWS = 8  # int32 draws per sample for auto_augment (op ids, magnitude bins, signs, sub-policy)


def _pair(name: str, value, lo: float, hi: float = math.inf) -> tuple:
    """A validated ``(a, b)`` with ``lo <= a <= b <= hi`` (floats)."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (min, max), got {value!r}") from None
    if not (lo <= a <= b <= hi) or not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must satisfy {lo} <= min <= max <= {hi}, got {value!r}")
    return a, b


def parse_auto_augment(spec) -> tuple | None:
    """``None`` or ``(kind, n, m)``: "randaugment" (n 2, m 9), timm's "rand-m9-n2[-...]" (m, n read;
    other timm fields such as ``mstd`` are refused), "trivialaugment" / "ta_wide" (DALI's
    TrivialAugment Wide), "autoaugment" / "original" / "v0" (DALI's ImageNet policy)."""
    if spec is None or spec == "" or spec == "none":
        return None
    if not isinstance(spec, str):
        raise ValueError(f"auto_augment must be a string such as 'rand-m9-n2', got {spec!r}")
    s = spec.lower()
    if s in ("trivialaugment", "ta_wide", "trivial"):
        return ("trivialaugment", 1, 0)
    if s in ("autoaugment", "original", "v0"):
        return ("autoaugment", 0, 0)
    if s == "randaugment":
        return ("randaugment", 2, 9)
    parts = s.split("-")
    if parts[0] == "rand":
        n, m = 2, 9
        for p in parts[1:]:
            got = re.fullmatch(r"([mn])(\d+)", p)
            if not got:
                raise ValueError(f"auto_augment {spec!r}: only the m<int> and n<int> fields of timm's rand-... "
                                 f"are supported (DALI's RandAugment), got field {p!r}")
            n, m = (int(got[2]), m) if got[1] == "n" else (n, int(got[2]))
        if not 0 <= m <= 30 or not 1 <= n <= 4:
            raise ValueError(f"auto_augment {spec!r}: need 1 <= n <= 4 (operations per sample) and 0 <= m <= 30 "
                             "(31 magnitude bins)")
        return ("randaugment", n, m)
    raise ValueError(f"unknown auto_augment {spec!r}; expected one of {', '.join(AUTO_AUGMENTS)} or timm's "
                     "'rand-m<M>-n<N>'")


@dataclass(frozen=True)
class AugmentPolicy:
    """Transform options (validated on construction; a ValueError names the option and value).

    ``name``: "imagenet" | "cifar" (see the module docstring). ``mean`` / ``std``: per-channel, in
    [0, 1] pixel units (RGB; default ImageNet's). ``scale`` / ``ratio``: RandomResizedCrop's area
    fraction and aspect ranges (imagenet). ``interpolation``: the resize filter (a key of
    :data:`INTERPOLATIONS` or a timm alias). ``crop_pct``: evaluation crop fraction (None: 0.875 for
    imagenet, the whole image for cifar). ``padding``: cifar's zero padding. ``hflip``: flip
    probability. ``color_jitter``: None, a float ``j`` (brightness, contrast and saturation factors
    each ~ U[max(0, 1 - j), 1 + j], timm's ``--color-jitter``) or a triple. ``auto_augment``: see
    :func:`parse_auto_augment`. ``reprob``: random-erasing probability per sample; ``remode``:
    "const" (zeros after normalisation), "rand" (one normal colour per sample) or "pixel"
    (per-pixel normal noise); ``erase_area`` / ``erase_ratio``: timm's area fraction and aspect
    ranges (aspect log-uniform, 10 attempts)."""

    name: str = "imagenet"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    scale: tuple = SCALE
    ratio: tuple = RATIO
    interpolation: str = "linear"
    crop_pct: float | None = None
    padding: int = 4
    hflip: float = 0.5
    color_jitter: object = None
    auto_augment: str | None = None
    reprob: float = 0.0
    remode: str = "const"
    erase_area: tuple = (0.02, 1 / 3)
    erase_ratio: tuple = (0.3, 1 / 0.3)

    def __post_init__(self):
        if self.name not in POLICIES:
            raise ValueError(f"unknown augment policy {self.name!r}; expected one of {', '.join(POLICIES)}")
        for key, v in (("mean", self.mean), ("std", self.std)):
            try:
                t = tuple(float(x) for x in v)
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be 3 numbers (RGB, in [0, 1] pixel units), got {v!r}") from None
            if len(t) != 3 or not all(math.isfinite(x) for x in t) or (key == "std" and min(t) <= 0):
                raise ValueError(
                    f"{key} must be 3 finite numbers (RGB, [0, 1] units){'; std > 0' if key == 'std' else ''}"
                    f", got {v!r}"
                )
            object.__setattr__(self, key, t)
        object.__setattr__(self, "scale", _pair("scale", self.scale, 0.0, 1.0))
        if self.scale[1] <= 0:
            raise ValueError(f"scale must have max > 0, got {self.scale!r}")
        object.__setattr__(self, "ratio", _pair("ratio", self.ratio, 1e-6))
        interp = INTERP_ALIASES.get(str(self.interpolation).lower(), str(self.interpolation).lower())
        if interp not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; expected one of "
                             f"{', '.join(INTERPOLATIONS)} (or {', '.join(INTERP_ALIASES)})")
        object.__setattr__(self, "interpolation", interp)
        if self.crop_pct is not None and (isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float))
                                          or not 0 < self.crop_pct <= 1):
            raise ValueError(f"crop_pct must be in (0, 1] or None, got {self.crop_pct!r}")
        if isinstance(self.padding, bool) or not isinstance(self.padding, (int, np.integer)) or self.padding < 0:
            raise ValueError(f"padding must be an integer >= 0, got {self.padding!r}")
        for key, v in (("hflip", self.hflip), ("reprob", self.reprob)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{key} must be a probability in [0, 1], got {v!r}")
        object.__setattr__(self, "color_jitter", self._jitter(self.color_jitter))
        parse_auto_augment(self.auto_augment)
        if self.remode not in ERASE_MODES:
            raise ValueError(f"unknown remode {self.remode!r}; expected one of {', '.join(ERASE_MODES)}")
        object.__setattr__(self, "erase_area", _pair("erase_area", self.erase_area, 0.0, 1.0))
        object.__setattr__(self, "erase_ratio", _pair("erase_ratio", self.erase_ratio, 1e-6))

    @staticmethod
    def _jitter(value):
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0):
            return None
        vals = (value,) * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        try:
            t = tuple(float(v) for v in vals)
        except (TypeError, ValueError):
            raise ValueError(
                f"color_jitter must be a number or (brightness, contrast, saturation), got {value!r}"
            ) from None
        if len(t) != 3 or min(t) < 0 or not all(math.isfinite(v) for v in t):
            raise ValueError(f"color_jitter must be >= 0 (one number or a triple), got {value!r}")
        return t if any(t) else None  # all zero: no jitter (and no jitter operator in the graph)

    @classmethod
    def create(cls, augment="imagenet", **overrides) -> "AugmentPolicy":
        """A policy from a name (or an AugmentPolicy) with the options in ``overrides`` that are
        not None replacing its values (unknown options: ValueError listing the valid ones)."""
        valid = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown transform options {unknown}; valid: {', '.join(sorted(valid))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(augment, AugmentPolicy):
            return replace(augment, **given)
        if not isinstance(augment, str):
            raise ValueError(f"augment must be a policy name ({', '.join(POLICIES)}) or an AugmentPolicy, "
                             f"got {augment!r}")
        return cls(name=augment, **given)

    # -- what the graph does --------------------------------------------------------------------
    @property
    def auto(self) -> tuple | None:
        return parse_auto_augment(self.auto_augment)

    def extra_fields(self, train: bool) -> tuple:
        """The per-stream source outputs beyond jpegs/labels/windows/flips (training only):
        ``shift`` (cifar), ``auto``, ``jitter``, ``erase`` (+ ``efill`` for rand/pixel noise)."""
        if not train:
            return ()
        out = ("shift",) if self.name == "cifar" else ()
        out += ("auto",) if self.auto else ()
        out += ("jitter",) if self.color_jitter else ()
        if self.reprob > 0:
            out += ("erase",) + (("efill",) if self.remode != "const" else ())
        return out

    def eval_resize(self, size: int) -> int | None:
        """Evaluation: the shorter side before the S x S centre crop, or None (resize the whole
        image to S x S: cifar without crop_pct)."""
        if self.name == "cifar" and self.crop_pct is None:
            return None
        return round(size / (EVAL_CROP_PCT if self.crop_pct is None else self.crop_pct))

    def windows(self, key: np.uint64, counter, sizes) -> np.ndarray:
        """float32 [n, 4] decode windows ``(x, y, w, h)`` normalised: imagenet's crop windows
        (:func:`fastcas.loading.augment.crop_windows`), the whole image for cifar."""
        if self.name == "cifar":
            return np.tile(np.array([0, 0, 1, 1], np.float32), (len(counter), 1))
        return crop_windows(key, counter, sizes, self.scale, self.ratio)

    def flips(self, key: np.uint64, counter) -> np.ndarray:
        """int32 [n, 1]: 1 = mirror (p = ``hflip``; the uniform of :func:`fastcas.loading.augment.flips`)."""
        u = counter_uniform(key, np.asarray(counter, np.int64) * 32 + 29)
        return (u < self.hflip).astype(np.int32).reshape(-1, 1)

    def draws(self, seed: int, epoch: int, stream: int, counter, size: int) -> dict:
        """The extra outputs (:meth:`extra_fields`) of the samples at ``counter`` (global
        positions), each a pure function of ``(seed, epoch, stream, position)``:
        ``shift`` float32 [n, 2] the crop's (y, x) anchor in the unpadded S x S image (in
        ``[-padding, padding]``); ``auto`` int32 [n, 8] non-negative 31-bit integers (the graph
        takes them modulo its choice counts: operation, magnitude bin, sign, sub-policy) and,
        for AutoAugment's stage probabilities, uniforms ``auto / 2**31``; ``jitter`` float32 [n, 3]
        (brightness, contrast, saturation factors); ``erase`` float32 [n, 4] ``(y, x, h, w)`` in
        pixels of the S x S output (h = w = 0: not erased); ``efill`` float32 [n, 5]: "rand" the
        normal colour (3) + 2 unused, "pixel" the noise field's offset (y, x) in its last two."""
        g = np.asarray(counter, np.int64).reshape(-1)
        out = {}
        if self.name == "cifar":
            k = derive_key(seed, _TAG_SHIFT, epoch, stream)
            d = 2 * self.padding + 1
            dy = np.floor(counter_uniform(k, g * 4) * d)
            dx = np.floor(counter_uniform(k, g * 4 + 1) * d)
            out["shift"] = np.stack([dy, dx], 1).astype(np.float32) - self.padding
        if self.auto:
            k = derive_key(seed, _TAG_AUTO, epoch, stream)
            c = g[:, None] * AUTO_DRAWS + np.arange(AUTO_DRAWS)[None, :]
            out["auto"] = (counter_bits(k, c) >> np.uint64(33)).astype(np.int32)
        if self.color_jitter:
            k = derive_key(seed, _TAG_JITTER, epoch, stream)
            j = np.asarray(self.color_jitter, np.float64)[None, :]
            u = counter_uniform(k, g[:, None] * 4 + np.arange(3)[None, :])
            lo = np.maximum(0.0, 1.0 - j)
            out["jitter"] = (lo + (1.0 + j - lo) * u).astype(np.float32)
        if self.reprob > 0:
            out.update(self._erase_draws(seed, epoch, stream, g, size))
        return out

    def _erase_draws(self, seed: int, epoch: int, stream: int, g: np.ndarray, size: int) -> dict:
        """timm ``RandomErasing`` (max_count 1) per position: erase with p = ``reprob``; up to 10
        attempts of area ~ U(erase_area) * S^2 and log-uniform aspect; the first that fits
        (``h < S and w < S``) wins, at a uniform offset; none fits: not erased."""
        k = derive_key(seed, _TAG_ERASE, epoch, stream)
        base = g[:, None] * 32

        def u(i):
            return counter_uniform(k, base + i)

        S = float(size)
        att = np.arange(_ERASE_ATTEMPTS)[None, :]
        area = S * S * (self.erase_area[0] + (self.erase_area[1] - self.erase_area[0]) * u(1 + 2 * att))
        lr = np.log(self.erase_ratio)
        ar = np.exp(lr[0] + (lr[1] - lr[0]) * u(2 + 2 * att))
        h, w = np.round(np.sqrt(area * ar)), np.round(np.sqrt(area / ar))
        ok = (h < S) & (w < S) & (h > 0) & (w > 0)
        rows, first = np.arange(len(g)), np.argmax(ok, axis=1)
        h, w = h[rows, first], w[rows, first]
        on = (u(0)[:, 0] < self.reprob) & ok.any(axis=1)
        y = np.floor(u(21)[:, 0] * (S - h + 1))
        x = np.floor(u(22)[:, 0] * (S - w + 1))
        erase = np.where(on[:, None], np.stack([y, x, h, w], 1), 0.0).astype(np.float32)
        out = {"erase": erase}
        if self.remode == "rand":  # one colour per sample, N(0, 1) by Box-Muller
            u1, u2 = 1.0 - u(23 + np.arange(3)[None, :]), u(26 + np.arange(3)[None, :])
            colour = np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)
            out["efill"] = np.concatenate([colour, np.zeros((len(g), 2))], 1).astype(np.float32)
        elif self.remode == "pixel":  # an offset into the fixed noise field (noise_field)
            off = np.floor(np.stack([u(29)[:, 0], u(30)[:, 0]], 1) * size)
            out["efill"] = np.concatenate([np.zeros((len(g), 3)), off], 1).astype(np.float32)
        return out

    def noise_field(self, seed: int, size: int) -> np.ndarray:
        """float32 [2S, 2S, 3] N(0, 1) noise, a pure function of ``seed``: "pixel" erasing fills a
        sample's rectangle from the S x S window of it at the sample's keyed offset (so noise is
        resumable without a per-sample S x S x 3 host array; windows of one field overlap, so
        two samples' noise is shifted, not independent)."""
        k = derive_key(seed, _TAG_ERASE, 0xF1E1D)
        n = (2 * size) * (2 * size) * 3
        c = np.arange(n, dtype=np.int64)
        u1, u2 = 1.0 - counter_uniform(k, 2 * c), counter_uniform(k, 2 * c + 1)
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)
        return z.astype(np.float32).reshape(2 * size, 2 * size, 3)

    def noise_planes(self, seed: int, size: int, layout: str) -> tuple:
        """``(noise field, ones)`` float32 in ``layout`` ("HWC" [2S, 2S, 3] / [S, S, 3] or "CHW"
        [3, 2S, 2S] / [3, S, S], C-contiguous): :meth:`noise_field` and the all-ones plane that
        "pixel" erasing zeroes inside the rectangle (the blend's keep mask)."""
        field, ones = self.noise_field(seed, size), np.ones((size, size, 3), np.float32)
        if layout == "CHW":
            field, ones = np.ascontiguousarray(field.transpose(2, 0, 1)), ones.transpose(2, 0, 1).copy()
        return field, ones

    def baseline_supported(self) -> str | None:
        """None when the torchvision baseline reproduces this policy, else what it lacks."""
        used = {"cifar": self.name == "cifar", "auto_augment": self.auto_augment, "color_jitter": self.color_jitter,
                "reprob": self.reprob}
        extra = [name for name, value in used.items() if value]
        if self.interpolation != "linear":
            extra.append("interpolation")
        return ", ".join(extra) or None
