"""Mixing parameters, drawn on the host from an explicit generator, applied elsewhere.

Kernels never draw random numbers: :func:`make_params` draws every random quantity (per-sample
lambda, mix/no-mix decision, box centre, FMix spectrum) from the ``numpy.random.Generator`` it is
given and returns a frozen :class:`MixParams` that can be replayed on NumPy, torch CPU or CUDA.

Conventions (pinned, tested):

* ``lam`` (float64 ``[B]``) is the fraction of BACKGROUND pixels kept, *measured* from the region
  actually applied (clipped box area, exact FMix pixel count), not the drawn Beta value — the
  CutMix paper's "lam corrected from the clipped area" (Yun et al. 2019, Sec. 3.1) and CMO's
  "fraction of background pixels kept" (Park et al. 2022, Sec. 3). For MixUp it is the blend
  weight of the background.
* ``boxes`` (int32 ``[B, 4]``): ``(y0, x0, y1, x1)``, half-open; an empty box (all zero) means the
  sample is not mixed. ``masks`` (float32 ``[B, H, W]``): 1 = take the foreground pixel.
* Unlike the reference implementations (one lambda and one box per batch), lambda, box and
  mask are drawn per sample (``mode="elem"``, default). ``mode="batch"`` reproduces the
  references: one decision, one lambda and one region for the whole batch.

Two ways to draw: :func:`make_params` from a ``numpy.random.Generator`` (direct API use), and
:func:`make_params_at` from the global positions of the samples (the loader; the key scheme
of :mod:`fastcas.sampling.geometry`): the mix decision, lambda, box centre and FMix noise of position
``g`` of epoch ``e`` are pure functions of ``(seed, purpose, e, g)``, and the in-batch partner
is position ``g ^ 1`` (:func:`pair_partner`), so the parameters of a sample do not depend on
how the global batch is split over ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fastcas.core.rng import counter_uniform, derive_key

MODES = ("elem", "batch")


def check_alpha_prob(alpha, prob) -> tuple[float, float]:
    try:
        a, p = float(alpha), float(prob)
    except (TypeError, ValueError):
        raise ValueError(f"alpha and prob must be numbers, got alpha={alpha!r} prob={prob!r}") from None
    if not np.isfinite(a) or a <= 0:
        raise ValueError(f"alpha must be > 0 (Beta(alpha, alpha)), got alpha={alpha!r}")
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"prob must be in [0, 1], got prob={prob!r}")
    return a, p


@dataclass(frozen=True)
class MixParams:
    """Everything needed to mix one batch; pure data, replayable on any backend.

    kind: a name of :data:`fastcas.mix.kinds.PARAM_KINDS` (whose ``region`` made these
    parameters and checked which of boxes / masks it has). height/width: image size the region
    was drawn for.
    lam: float64 ``[B]`` host array, measured kept-background fraction (see module doc).
    mixed: bool ``[B]``: the sample was selected by ``prob`` (unmixed samples have lam = 1).
    boxes: int32 ``[B, 4]`` host array (cutmix, saliencymix) or None.
    masks: float32 ``[B, H, W]`` (fmix) as a NumPy array or a torch tensor (on the device the
    masks were made on) or None. mixup has neither boxes nor masks.
    """

    kind: str
    height: int
    width: int
    lam: np.ndarray
    mixed: np.ndarray
    boxes: np.ndarray | None = None
    masks: Any = None
    drawn: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"MixParams.kind must be a mix kind's name, got {self.kind!r}")
        b = len(self.lam)
        if self.lam.dtype != np.float64 or self.lam.ndim != 1:
            raise ValueError(f"MixParams.lam must be float64 [B], got {self.lam.dtype} {self.lam.shape}")
        if self.mixed.shape != (b,):
            raise ValueError(f"MixParams.mixed must be bool [{b}], got {self.mixed.shape}")
        if self.boxes is not None and (self.boxes.shape != (b, 4) or self.boxes.dtype != np.int32):
            raise ValueError(f"{self.kind} MixParams needs int32 boxes [{b}, 4]")
        if self.masks is not None and tuple(self.masks.shape) != (b, self.height, self.width):
            raise ValueError(f"{self.kind} MixParams needs float32 masks [{b}, {self.height}, {self.width}]")

    @property
    def batch_size(self) -> int:
        return len(self.lam)

    def box_masks(self) -> np.ndarray:
        """float32 ``[B, H, W]`` masks (1 = foreground) for any kind (mixup: constant 1 - lam)."""
        if self.masks is not None:
            m = self.masks
            return m if isinstance(m, np.ndarray) else m.detach().cpu().numpy()
        if self.boxes is not None:
            return boxes_to_masks(self.boxes, self.height, self.width)
        return np.broadcast_to((1.0 - self.lam)[:, None, None],
                               (self.batch_size, self.height, self.width)).astype(np.float32)


def boxes_to_masks(boxes: np.ndarray, height: int, width: int, xp=np):
    """Boolean-valued float32 masks ``[B, H, W]`` from int boxes ``[B, 4]`` by broadcasting."""
    b = xp.asarray(boxes)
    rows = xp.arange(height)[None, :, None]
    cols = xp.arange(width)[None, None, :]
    inside = ((rows >= b[:, 0, None, None]) & (rows < b[:, 2, None, None])
              & (cols >= b[:, 1, None, None]) & (cols < b[:, 3, None, None]))
    return inside.astype(xp.float32)


def sample_lam(generator: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Drawn lambda ~ Beta(alpha, alpha), float64 ``[n]``."""
    return generator.beta(alpha, alpha, size=n).astype(np.float64)


def cut_sizes(lam: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """clovaai ``rand_bbox`` size rule: ``cut = int(side * sqrt(1 - lam))`` per sample."""
    rat = np.sqrt(np.clip(1.0 - lam, 0.0, 1.0))
    return (height * rat).astype(np.int64), (width * rat).astype(np.int64)


def clip_box(xp, cy, cx, half_h, half_w, height: int, width: int) -> tuple:
    """The box rule of CutMix and SaliencyMix for any array module ``xp`` with ``clip``
    (``numpy``, ``torch``): ``(y0, x0, y1, x1)``, the box ``[cy - half_h, cy + half_h) x [cx -
    half_w, cx + half_w)`` clipped to the image (clovaai rule: the unclipped box spans ``2 * half``
    pixels, ``half = cut // 2``). Integer arrays of ``xp`` shaped like ``cy``. One definition,
    :func:`box_rule`, which the DALI graph's Numba operator compiles too."""
    return box_rule(xp.clip, cy, cx, half_h, half_w, height, width)


def box_rule(clip, cy, cx, half_h, half_w, height: int, width: int) -> tuple:
    """:func:`clip_box` over a function ``clip(value, low, high)``: ``xp.clip`` of NumPy or torch,
    or, in :func:`fastcas.mix.graph_ops.saliency_paste` (Numba, which cannot take a module as an
    argument but can take a jitted function), a jitted scalar clip; graph_ops compiles this very
    function with ``numba.njit``, so the rule is written once."""
    return (clip(cy - half_h, 0, height), clip(cx - half_w, 0, width),
            clip(cy + half_h, 0, height), clip(cx + half_w, 0, width))


def boxes_at(cy: np.ndarray, cx: np.ndarray, cut_h: np.ndarray, cut_w: np.ndarray,
             height: int, width: int) -> np.ndarray:
    """Boxes centred at (cy, cx) with half-sizes ``cut // 2`` on both sides, clipped to the image
    (:func:`clip_box`). int32 ``[B, 4]``."""
    return np.stack(clip_box(np, cy, cx, cut_h // 2, cut_w // 2, height, width), axis=1).astype(np.int32)


def box_lam(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Kept-background fraction of each box: ``1 - area / (H * W)``, float64 ``[B]``."""
    b = boxes.astype(np.int64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return 1.0 - area / float(height * width)


def _draw_common(generator, batch_size, alpha, prob, mode):
    """(drawn lam [B], mixed [B]); in batch mode one value broadcast to the batch."""
    n = 1 if mode == "batch" else batch_size
    mixed = generator.random(n) < prob
    lam = sample_lam(generator, n, alpha)
    if mode == "batch":
        mixed = np.repeat(mixed, batch_size)
        lam = np.repeat(lam, batch_size)
    return lam, mixed


@dataclass(frozen=True)
class Drawn:
    """The drawn part of one batch's parameters, from which a mix kind builds its region
    (:meth:`fastcas.mix.kinds.MixKind.region`): ``drawn`` lambda float64 [B] and ``mixed`` bool
    [B] (batch mode: one value repeated), and two lazy draws, called at most once each, in this
    order: ``centres(n)`` -> box centres ``(cy, cx)`` int [n] and ``noise(m)`` -> FMix spectrum
    noise float32 [m, ...] on the host (from a generator, :func:`generator_draws`, or from
    position keys, :func:`position_drawn`). ``uniform(purpose)``: more uniforms for a kind that
    draws something of its own (``purpose >= KIND_PURPOSES``, one per quantity): keyed by
    ``(seed, purpose, epoch, position)`` from positions, the generator's next ones otherwise; one
    per sample, or one for the batch in batch mode."""

    height: int
    width: int
    drawn: np.ndarray
    mixed: np.ndarray
    centres: Callable
    noise: Callable
    uniform: Callable  # uniform(purpose) -> float64 [n] in [0, 1): a kind's own further per-sample draws


KIND_PURPOSES = 16  # Drawn.uniform purposes start here (0..3: the decision, lambda and centre draws)


def check_draw(alpha, prob, mode: str, height, width) -> tuple:
    """``(alpha, prob, height, width)`` validated (ValueError naming the value)."""
    alpha, prob = check_alpha_prob(alpha, prob)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"bad batch geometry H={height} W={width}")
    return alpha, prob, height, width


def device_of(foreground, device):
    """``device``, or a CUDA ``foreground`` tensor's device when not given (FMix masks are built there)."""
    if device is None and foreground is not None and type(foreground).__module__.startswith("torch"):
        return foreground.device if foreground.is_cuda else None
    return device


def generator_draws(batch_size: int, height: int, width: int, alpha: float, prob: float, mode: str, decay: float,
                    generator: np.random.Generator) -> Drawn:
    """The draws of :func:`fastcas.mix.kinds.make_params` from ``generator`` (the only source of
    randomness): decisions and lambda, then (lazily) centres and FMix noise."""
    if int(batch_size) < 0:
        raise ValueError(f"bad batch geometry B={batch_size} H={height} W={width}")
    if not isinstance(generator, np.random.Generator):
        raise ValueError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    drawn, mixed = _draw_common(generator, int(batch_size), alpha, prob, mode)

    def centres(n):
        return generator.integers(0, height, size=n), generator.integers(0, width, size=n)

    def noise(m):  # the kept low-frequency box only (the whole spectrum when nothing is dropped)
        from .fmix import noise_shape  # noqa: PLC0415 (lazy: numba)

        return generator.standard_normal((m,) + noise_shape(height, width, decay), dtype=np.float32)

    def uniform(purpose):
        return generator.random(1 if mode == "batch" else int(batch_size))

    return Drawn(height, width, drawn, mixed, centres, noise, uniform)


def box_params(kind: str, d: Drawn, boxes: np.ndarray) -> MixParams:
    """The parameters of a box kind (CutMix, SaliencyMix): unmixed samples' boxes emptied, lam
    measured from the clipped box (:func:`box_lam`)."""
    boxes[~d.mixed] = 0
    return MixParams(kind, d.height, d.width, box_lam(boxes, d.height, d.width), d.mixed, boxes=boxes,
                     drawn=d.drawn)


_MIX_TAG = 0x313  # purpose tag of the per-position mixing draws
_DECIDE, _LAM, _CY, _CX = range(4)


def beta_quantile(u, alpha: float) -> np.ndarray:
    """Beta(alpha, alpha) by inversion: float64 quantiles of uniforms ``u`` (exact and
    deterministic per value, unlike a rejection sampler, so one uniform gives one lambda)."""
    from scipy.special import betaincinv

    return np.asarray(betaincinv(alpha, alpha, np.asarray(u, np.float64)), np.float64)


def position_draws(seed: int, epoch: int, positions, alpha: float = 1.0, prob: float = 1.0):
    """The per-position draws of :func:`make_params_at`: ``(drawn lam float64 [n], mixed bool
    [n], u_y float64 [n], u_x float64 [n])`` (``u_*``: uniforms of the box centre). Each is a
    pure function of ``(seed, purpose, epoch, position)``."""
    g = np.asarray(positions, np.int64).reshape(-1)
    if g.size and g.min() < 0:
        raise ValueError("positions must be >= 0")

    def u(purpose):
        return counter_uniform(derive_key(int(seed), _MIX_TAG, int(epoch), purpose), g)

    return beta_quantile(u(_LAM), alpha), u(_DECIDE) < prob, u(_CY), u(_CX)


def saliency_draws(seed: int, epoch: int, positions, height: int, width: int, alpha: float = 1.0,
                   prob: float = 1.0, mode: str = "elem") -> tuple:
    """The pixel-free part of SaliencyMix at global ``positions`` (int [B]): ``(drawn lam
    float64 [B], mixed bool [B], half int64 [B, 2])`` with ``half = (cut_h // 2, cut_w // 2)``
    (:func:`cut_sizes`); the box is ``half`` around the foreground's saliency peak. In batch
    mode every sample takes the draws of ``positions[0]``. Shared by the torch path
    (:func:`fastcas.mix.device.saliency_params`) and the source of the in-graph path."""
    pos = np.asarray(positions, np.int64).reshape(-1)
    src = pos[:1] if mode == "batch" else pos
    drawn, mixed, _, _ = position_draws(seed, epoch, src, alpha, prob)
    if mode == "batch":
        drawn, mixed = np.repeat(drawn, len(pos)), np.repeat(mixed, len(pos))
    cut_h, cut_w = cut_sizes(drawn, height, width)
    return drawn, mixed, np.stack([cut_h // 2, cut_w // 2], axis=1).astype(np.int64)


def position_drawn(seed: int, epoch: int, positions, height: int, width: int, alpha: float, prob: float,
                   mode: str, decay: float) -> Drawn:
    """The draws of :func:`fastcas.mix.kinds.make_params_at`: every random quantity of sample
    ``j`` a pure function of ``(seed, purpose, epoch, positions[j])`` (:func:`position_draws`; the
    CutMix centre ``floor(u * H)``, ``floor(u * W)``; the FMix noise of
    :func:`fastcas.mix.fmix.noise_at`); batch mode takes the draws of ``positions[0]``."""
    pos = np.asarray(positions, np.int64).reshape(-1)
    src = pos[:1] if mode == "batch" else pos
    drawn, mixed, uy, ux = position_draws(seed, epoch, src, alpha, prob)
    if mode == "batch":
        drawn, mixed = np.repeat(drawn, len(pos)), np.repeat(mixed, len(pos))

    def centres(n):
        return (np.minimum((uy[:n] * height).astype(np.int64), height - 1),
                np.minimum((ux[:n] * width).astype(np.int64), width - 1))

    def noise(m):
        from .fmix import noise_at  # noqa: PLC0415 (lazy: numba)

        return noise_at(seed, epoch, src[:m], height, width, decay)

    def uniform(purpose):
        if not isinstance(purpose, int) or purpose < KIND_PURPOSES:
            raise ValueError(f"a kind's own draws take purposes >= {KIND_PURPOSES}, got {purpose!r}")
        return counter_uniform(derive_key(int(seed), _MIX_TAG, int(epoch), purpose), src)

    return Drawn(height, width, drawn, mixed, centres, noise, uniform)


def pair_partner(positions) -> np.ndarray:
    """In-batch partner of each sample, as local indices int64 ``[B]``: the sample at global
    position ``g`` takes its foreground from position ``g ^ 1`` (adjacent pairs swap; the
    stream order is random, so this is as random as a permutation), whatever rank or batch
    holds the pair. ``positions``: the batch's global positions. A sample whose partner is not
    in the batch (an odd per-rank batch: the block's first or last sample; a partial last
    batch) is paired with itself: its pixels stay unmixed and its target is its own label, but
    its lambda, box and crop are still those of its position.
    """
    pos = np.asarray(positions, np.int64).reshape(-1)
    where = {int(p): j for j, p in enumerate(pos.tolist())}
    return np.array([where.get(int(p) ^ 1, j) for j, p in enumerate(pos.tolist())], np.int64)


def in_batch_partner(batch_size: int, generator: np.random.Generator) -> np.ndarray:
    """A random permutation (int64 ``[B]``) for in-batch mixing: ``foreground = background[perm]``.

    References use ``randperm`` (CutMix, SaliencyMix), ``flip(0)`` (timm) or ``roll(1)``
    (torchvision); a permutation may map a sample to itself (then mixing is a no-op on pixels
    but lam still weights identical labels, so targets stay correct).
    """
    if not isinstance(generator, np.random.Generator):
        raise ValueError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    return generator.permutation(int(batch_size)).astype(np.int64)


def paste_args(boxes, height: int, width: int, partner=None) -> tuple:
    """DALI ``fn.multi_paste`` arguments that apply CutMix ``boxes`` inside the pipeline graph
    (:mod:`fastcas.loading.pipeline`), on the decoded, flipped uint8 HWC images before normalisation.

    boxes: int ``[B, 4]`` ``(y0, x0, y1, x1)`` as in :class:`MixParams` (rows ``[y0, y1)``,
    columns ``[x0, x1)``; an empty box for unmixed samples) on ``height x width`` images. partner: int ``[B]`` local
    in-batch partner indices (:func:`pair_partner`), or None for a two-stream recipe (the
    foreground is the second input of ``multi_paste``). Returns ``(in_ids, anchors, shapes)``,
    int32 ``[B, 2]`` (None without ``partner``), ``[B, 2, 2]``, ``[B, 2, 2]``: per output
    sample, paste 0 is the sample itself, whole; paste 1 is the partner's (or foreground's)
    box, at the same place (``anchors`` serve as both ``in_anchors`` and ``out_anchors``); an
    empty box is a zero-size paste at ``(height, width)``.
    Pasting is a copy, so pasting before normalisation gives exactly the pixels
    :func:`fastcas.mix.apply` gives after it.
    """
    bx = np.asarray(boxes, np.int64).reshape(-1, 4)
    b = len(bx)
    anchors = np.zeros((b, 2, 2), np.int32)
    anchors[:, 1] = bx[:, 0:2]
    shapes = np.zeros((b, 2, 2), np.int32)
    shapes[:, 0] = (int(height), int(width))
    shapes[:, 1] = np.maximum(bx[:, 2:4] - bx[:, 0:2], 0)
    # an empty paste (unmixed sample, or a box clipped to nothing) is parked at the far corner
    # (H, W): DALI's GPU kernel sweeps paste edges over a grid and never closes a zero-width
    # paste that opens inside the canvas, which would then cover the rest of it
    empty = (shapes[:, 1] == 0).any(1)
    anchors[empty, 1] = (int(height), int(width))
    shapes[empty, 1] = 0
    in_ids = None
    if partner is not None:
        in_ids = np.stack([np.arange(b), np.asarray(partner, np.int64).reshape(-1)], 1).astype(np.int32)
    return in_ids, anchors, shapes
