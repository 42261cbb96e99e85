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
from typing import Any

import numpy as np

from fastcas.core.rng import counter_uniform, derive_key

from .saliency import saliency_centres

KINDS = ("cutmix", "fmix", "saliencymix", "mixup")
MODES = ("elem", "batch")


def check_kind(kind) -> str:
    if not isinstance(kind, str) or kind.lower() not in KINDS:
        raise ValueError(f"unknown mix kind {kind!r}; accepted kinds: {', '.join(KINDS)}")
    return kind.lower()


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

    kind: one of :data:`KINDS`. height/width: image size the region was drawn for.
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
        check_kind(self.kind)
        b = len(self.lam)
        if self.lam.dtype != np.float64 or self.lam.ndim != 1:
            raise ValueError(f"MixParams.lam must be float64 [B], got {self.lam.dtype} {self.lam.shape}")
        if self.mixed.shape != (b,):
            raise ValueError(f"MixParams.mixed must be bool [{b}], got {self.mixed.shape}")
        if self.kind in ("cutmix", "saliencymix"):
            if self.boxes is None or self.boxes.shape != (b, 4) or self.boxes.dtype != np.int32:
                raise ValueError(f"{self.kind} MixParams needs int32 boxes [{b}, 4]")
        if self.kind == "fmix":
            if self.masks is None or tuple(self.masks.shape) != (b, self.height, self.width):
                raise ValueError(f"fmix MixParams needs float32 masks [{b}, {self.height}, {self.width}]")

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
    """The box rule of CutMix and SaliencyMix, once for any array module ``xp`` with ``clip``
    (``numpy``, ``torch``): ``(y0, x0, y1, x1)``, the box ``[cy - half_h, cy + half_h) x [cx -
    half_w, cx + half_w)`` clipped to the image (clovaai rule: the unclipped box spans ``2 * half``
    pixels, ``half = cut // 2``). Integer arrays of ``xp`` shaped like ``cy``. (The DALI graph's
    Numba operator, :func:`fastcas.mix.graph_ops.saliency_paste`, spells the same rule on scalars:
    Numba cannot take a module; tests/mix/test_graph_ops.py checks the two agree.)"""
    return (xp.clip(cy - half_h, 0, height), xp.clip(cx - half_w, 0, width),
            xp.clip(cy + half_h, 0, height), xp.clip(cx + half_w, 0, width))


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


def make_params(kind: str, batch_size: int, height: int, width: int, *, alpha: float = 1.0,
                prob: float = 1.0, generator: np.random.Generator, foreground=None,
                mode: str = "elem", decay: float = 3.0, max_soft: float = 0.0,
                saliency: str = "finegrained", device=None) -> MixParams:
    """Draw the parameters of one batch.

    kind: cutmix | fmix | saliencymix | mixup. alpha: Beta(alpha, alpha). prob: per-sample
    probability of mixing (per-batch in ``mode="batch"``). generator: ``numpy.random.Generator``
    (the only source of randomness). foreground: ``[B, C, H, W]`` NumPy array or torch tensor,
    required by saliencymix (saliency of the patch source, per sample). FMix options: ``decay``
    (spectrum decay power, 3), ``max_soft`` (soft ramp, 0). SaliencyMix option: ``saliency`` =
    "finegrained" (default: the SaliencyMix reference's OpenCV StaticSaliencyFineGrained,
    batched in torch on the images' device, bit-exact), "opencv" (the same through OpenCV, a
    host loop) or "spectral" (batched spectral residual).
    device: where FMix masks are built (None/"cpu": NumPy; a CUDA torch device: torch on it);
    inferred from a CUDA ``foreground`` tensor when not given. The FMix noise is drawn from
    ``generator`` on the host either way, so the same generator gives the same mask on every
    device (only the noise crosses PCIe; FFT and binarisation run on the device).
    """
    kind = check_kind(kind)
    alpha, prob = check_alpha_prob(alpha, prob)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    batch_size, height, width = int(batch_size), int(height), int(width)
    if batch_size < 0 or height < 1 or width < 1:
        raise ValueError(f"bad batch geometry B={batch_size} H={height} W={width}")
    if not isinstance(generator, np.random.Generator):
        raise ValueError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
    if device is None and foreground is not None and type(foreground).__module__.startswith("torch"):
        device = foreground.device if foreground.is_cuda else None
    drawn, mixed = _draw_common(generator, batch_size, alpha, prob, mode)

    def centres(n):
        return generator.integers(0, height, size=n), generator.integers(0, width, size=n)

    def noise(m):  # the kept low-frequency box only (the whole spectrum when nothing is dropped)
        from .fmix import noise_shape  # noqa: PLC0415 (lazy: numba)

        return generator.standard_normal((m,) + noise_shape(height, width, decay), dtype=np.float32)

    return _build(kind, height, width, drawn, mixed, centres, noise, foreground=foreground, mode=mode,
                  decay=decay, max_soft=max_soft, saliency=saliency, device=device)


def _build(kind, height, width, drawn, mixed, centres, noise, *, foreground, mode, decay, max_soft,
           saliency, device) -> MixParams:
    """MixParams from drawn lambda / decisions; ``centres(n)`` gives CutMix centres and
    ``noise(m)`` FMix spectrum noise (host float32), called lazily in that order."""
    batch_size = len(drawn)
    if kind == "mixup":
        lam = np.where(mixed, drawn, 1.0)
        return MixParams(kind, height, width, lam.astype(np.float64), mixed, drawn=drawn)

    if kind == "fmix":
        from .fmix import masks_from_noise  # noqa: PLC0415 (lazy: numba)

        m = min(batch_size, 1) if mode == "batch" else batch_size
        masks, lam = masks_from_noise(noise(m), drawn, mixed, height, width, decay=decay,
                                      max_soft=max_soft, batch_mode=(mode == "batch"), device=device)
        return MixParams(kind, height, width, lam, mixed, masks=masks, drawn=drawn)

    if kind == "cutmix":
        if mode == "batch":
            cy, cx = centres(1)
            cut_h, cut_w = cut_sizes(drawn[:1], height, width)
            boxes = np.repeat(boxes_at(cy, cx, cut_h, cut_w, height, width), batch_size, axis=0)
        else:
            cy, cx = centres(batch_size)
            cut_h, cut_w = cut_sizes(drawn, height, width)
            boxes = boxes_at(cy, cx, cut_h, cut_w, height, width)
    else:  # saliencymix
        if foreground is None:
            raise ValueError("saliencymix needs the foreground images (foreground=...) for saliency")
        shape = tuple(foreground.shape)
        if len(shape) != 4 or shape[0] != batch_size or shape[2:] != (height, width):
            raise ValueError(f"foreground must be [{batch_size}, C, {height}, {width}], got {list(shape)}")
        src = foreground[:1] if (mode == "batch" and batch_size) else foreground
        cy, cx = saliency_centres(src, method=saliency)
        cut_h, cut_w = cut_sizes(drawn, height, width)
        if mode == "batch":
            cy, cx = np.repeat(cy, batch_size), np.repeat(cx, batch_size)
        boxes = boxes_at(cy, cx, cut_h, cut_w, height, width)
    boxes[~mixed] = 0
    return MixParams(kind, height, width, box_lam(boxes, height, width), mixed, boxes=boxes,
                     drawn=drawn)


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


def make_params_at(kind: str, seed: int, epoch: int, positions, height: int, width: int, *,
                   alpha: float = 1.0, prob: float = 1.0, foreground=None, mode: str = "elem",
                   decay: float = 3.0, max_soft: float = 0.0, saliency: str = "finegrained",
                   device=None) -> MixParams:
    """The parameters of a batch whose samples sit at global ``positions`` (int [B]) of ``epoch``.

    Like :func:`make_params` (same kinds, options and conventions), but every random quantity of
    sample ``j`` is a pure function of ``(seed, purpose, epoch, positions[j])``: the mix
    decision (uniform < ``prob``), the drawn lambda (Beta(alpha, alpha) by inversion of a
    counter uniform, :func:`beta_quantile`), the CutMix centre (``floor(u * H)``,
    ``floor(u * W)``) and the FMix spectrum noise (:func:`fastcas.mix.fmix.noise_at`, NumPy on
    the host whatever ``device`` is). So a sample's parameters are the same whatever batch,
    rank or device it is mixed on. ``mode="batch"`` takes the draws of ``positions[0]`` for the
    whole batch (the references' one region per batch; that does depend on the split).
    SaliencyMix centres come from the foreground pixels, as in :func:`make_params`.
    """
    kind = check_kind(kind)
    alpha, prob = check_alpha_prob(alpha, prob)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pos = np.asarray(positions, np.int64).reshape(-1)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"bad batch geometry H={height} W={width}")
    if device is None and foreground is not None and type(foreground).__module__.startswith("torch"):
        device = foreground.device if foreground.is_cuda else None
    b = len(pos)
    src = pos[:1] if mode == "batch" else pos
    drawn, mixed, uy, ux = position_draws(seed, epoch, src, alpha, prob)
    if mode == "batch":
        drawn, mixed = np.repeat(drawn, b), np.repeat(mixed, b)

    def centres(n):
        return (np.minimum((uy[:n] * height).astype(np.int64), height - 1),
                np.minimum((ux[:n] * width).astype(np.int64), width - 1))

    def noise(m):
        from .fmix import noise_at  # noqa: PLC0415 (lazy: numba)

        return noise_at(seed, epoch, src[:m], height, width, decay)

    return _build(kind, height, width, drawn, mixed, centres, noise, foreground=foreground, mode=mode,
                  decay=decay, max_soft=max_soft, saliency=saliency, device=device)


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
