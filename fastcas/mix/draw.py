"""Drawing one batch's mixing parameters by kind name: :func:`make_params` (from a generator)
and :func:`make_params_at` (from global stream positions). Each validates the name
(:func:`check_kind`), draws the kind-independent part (:mod:`fastcas.mix.params`) and lets the
kind's object (:mod:`fastcas.mix.kinds`) build its region, so adding a kind touches neither."""
from __future__ import annotations

import numpy as np

from .kinds import KINDS, PARAM_KINDS
from .params import MixParams, check_draw, device_of, generator_draws


def check_kind(kind) -> str:
    """``kind`` lower-cased if it names a kind that draws parameters (:data:`PARAM_KINDS`), else a
    ValueError naming the accepted ones."""
    if not isinstance(kind, str) or kind.lower() not in PARAM_KINDS:
        raise ValueError(f"unknown mix kind {kind!r}; accepted kinds: {', '.join(PARAM_KINDS)}")
    return kind.lower()


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
    k = KINDS[check_kind(kind)]
    alpha, prob, height, width = check_draw(alpha, prob, mode, height, width)
    d = generator_draws(batch_size, height, width, alpha, prob, mode, decay, generator)
    return k.region(d, foreground=foreground, mode=mode, decay=decay, max_soft=max_soft, saliency=saliency,
                    device=device_of(foreground, device))


def make_params_at(kind: str, seed: int, epoch: int, positions, height: int, width: int, *,
                   alpha: float = 1.0, prob: float = 1.0, foreground=None, mode: str = "elem",
                   decay: float = 3.0, max_soft: float = 0.0, saliency: str = "finegrained",
                   device=None) -> MixParams:
    """The parameters of a batch whose samples sit at global ``positions`` (int [B]) of ``epoch``.

    Like :func:`make_params` (same kinds, options and conventions), but every random quantity of
    sample ``j`` is a pure function of ``(seed, purpose, epoch, positions[j])``: the mix
    decision (uniform < ``prob``), the drawn lambda (Beta(alpha, alpha) by inversion of a
    counter uniform, :func:`fastcas.mix.params.beta_quantile`), the CutMix centre and the FMix
    spectrum noise (:func:`fastcas.mix.params.position_drawn`, NumPy on the host whatever
    ``device`` is). So a sample's parameters are the same whatever batch, rank or device it is
    mixed on. ``mode="batch"`` takes the draws of ``positions[0]`` for the whole batch (the
    references' one region per batch; that does depend on the split). SaliencyMix centres come
    from the foreground pixels, as in :func:`make_params`.
    """
    return KINDS[check_kind(kind)].params_at(seed, epoch, positions, height, width, alpha=alpha, prob=prob,
                                             foreground=foreground, mode=mode, decay=decay, max_soft=max_soft,
                                             saliency=saliency, device=device)
