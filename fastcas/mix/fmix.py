"""FMix masks (Harris et al. 2020, "FMix: Enhancing Mixed Sample Data Augmentation", Sec. 3),
batched over the whole batch, per sample.

Behaviour of ecs-vlc/FMix ``sample_mask`` (read, not copied): a complex Gaussian spectrum in
the real-FFT layout is scaled by ``1 / max(f, 1/max(H, W)) ** decay``, inverse-real-FFT'd into a
low-frequency grey image, and the top ``lam * H * W`` pixels are binarised (optionally with a
linear soft ramp of half-width ``max_soft * H * W``). Differences, on purpose:

* one mask per sample (the reference draws one per batch; ``batch_mode=True`` reproduces it);
* the kept count is ``round(lam * H * W)`` (the reference picks floor or ceil at random);
* odd widths use the exact ``rfftfreq`` layout (the reference takes ``w // 2 + 2`` columns);
* the mask here is 1 where the FOREGROUND is taken, so the top ``round(lam*N)`` pixels are 0
  and the measured kept-background fraction is exactly ``round(lam*N) / N``.

The spectrum noise is always drawn with NumPy on the host (:func:`fmix_masks` from the
generator it is given; :func:`noise_at` per global position, from ``(seed, epoch, position)``
alone), so the same parameters give the same noise on every device (issue 12, finding 5).
With ``device`` a CUDA torch device the FFT, sort and binarisation then run on the device;
float32 FFTs of different libraries may differ in the last bits, which can move a pixel whose
value ties the threshold, but the kept count (and so lam) is exact everywhere.
"""
from __future__ import annotations

import numpy as np

from fastcas._device import array_to_device

from fastcas._rng import generator


def _freqs(height: int, width: int) -> np.ndarray:
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_scale(height: int, width: int, decay: float) -> np.ndarray:
    """float64 ``[H, W // 2 + 1]``: ``1 / max(f, 1 / max(H, W)) ** decay``."""
    return 1.0 / np.maximum(_freqs(height, width), 1.0 / max(height, width)) ** decay


def _counts(drawn: np.ndarray, n: int, max_soft: float):
    """Per sample: kept-background count ``num`` and soft half-width ``soft`` (int64)."""
    num = np.floor(drawn * n + 0.5).astype(np.int64)
    eff = np.where((max_soft > drawn) | (max_soft > 1 - drawn), np.minimum(drawn, 1 - drawn), max_soft)
    soft = (n * eff).astype(np.int64) if max_soft > 0 else np.zeros_like(num)
    soft = np.minimum(soft, np.minimum(num, n - num))
    return num, soft


def _binarise_numpy(img: np.ndarray, num: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """img float [B, N] -> foreground mask float32 [B, N]; top ``num`` pixels are background."""
    b, n = img.shape
    if b == 0:
        return np.zeros((0, n), np.float32)
    if not soft.any():
        s = np.sort(img, axis=1)
        idx = np.clip(n - num, 0, n - 1)
        thr = np.take_along_axis(s, idx[:, None], axis=1)
        bg = (img >= thr) & (num[:, None] > 0)
        bad = np.flatnonzero(bg.sum(1) != num)  # ties at the threshold: rank exactly
        if len(bad) == 0:
            return (~bg).astype(np.float32)
    ranks = np.empty(img.shape, np.int64)
    np.put_along_axis(ranks, np.argsort(-img, axis=1, kind="stable"), np.arange(n)[None, :], axis=1)
    lo, hi = (num - soft)[:, None], (num + soft)[:, None]
    ramp = 1.0 - (ranks - lo) / np.maximum(hi - lo - 1, 1)
    t = np.where(ranks < lo, 1.0, np.where(ranks >= hi, 0.0, ramp))
    return (1.0 - t).astype(np.float32)


def low_freq_numpy(noise: np.ndarray, height: int, width: int, decay: float) -> np.ndarray:
    """noise float32 ``[B, H, W//2+1, 2]`` -> low-frequency images float32 ``[B, H, W]``
    (single precision throughout, as on the GPU: half the memory traffic of float64)."""
    scale = spectrum_scale(height, width, decay).astype(np.float32)
    spec = (noise[..., 0] + np.complex64(1j) * noise[..., 1]) * scale
    return np.fft.irfft2(spec, s=(height, width), axes=(-2, -1))


_NOISE_TAG = 0x314  # purpose tag of the per-position FMix noise


def noise_at(seed: int, epoch: int, positions, height: int, width: int) -> np.ndarray:
    """float32 ``[n, H, W//2+1, 2]`` spectrum noise of each global position: one NumPy
    generator per position seeded from ``(seed, tag, epoch, position)``, so any subset of
    positions (any split of the batch over ranks) gets the same per-sample noise."""
    g = np.asarray(positions, np.int64).reshape(-1)
    out = np.empty((len(g), height, width // 2 + 1, 2), np.float32)
    for j, p in enumerate(g.tolist()):
        out[j] = generator(int(seed), _NOISE_TAG, int(epoch), p).standard_normal(out.shape[1:], dtype=np.float32)
    return out


def _masks_torch(noise, height: int, width: int, decay: float, num, soft, device):
    """Torch twin of the NumPy mask builder: host ``noise`` float32 [m, H, W//2+1, 2] is copied
    to ``device`` (pinned, non-blocking, like every host input here); FFT, sort and binarisation
    run there."""
    import torch

    noise = array_to_device(noise, device, torch.float32)
    m = noise.shape[0]
    scale = array_to_device(spectrum_scale(height, width, decay), device, torch.float32)
    spec = torch.complex(noise[..., 0], noise[..., 1]) * scale
    img = torch.fft.irfft2(spec, s=(height, width)).reshape(m, -1)
    n = height * width
    num_t = array_to_device(num, device)[:, None]
    if not soft.any() and m:
        s = torch.sort(img, dim=1).values
        thr = torch.gather(s, 1, torch.clamp(n - num_t, 0, n - 1))
        bg = (img >= thr) & (num_t > 0)
        # exactness under ties is checked lazily only when asked (no host sync on the fast path)
        return (~bg).to(torch.float32).reshape(m, height, width)
    order = torch.argsort(-img, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=device).expand(m, n))
    soft_t = array_to_device(soft, device)[:, None]
    lo = num_t - soft_t
    hi = num_t + soft_t
    ramp = 1.0 - (ranks - lo).double() / torch.clamp(hi - lo - 1, min=1).double()
    t = torch.where(ranks < lo, 1.0, torch.where(ranks >= hi, 0.0, ramp))
    return (1.0 - t).to(torch.float32).reshape(m, height, width)


def fmix_masks(rng: np.random.Generator, drawn: np.ndarray, mixed: np.ndarray, height: int,
               width: int, *, decay: float = 3.0, max_soft: float = 0.0, batch_mode: bool = False,
               device=None):
    """Per-sample FMix masks and measured lam.

    drawn: float64 ``[B]`` Beta draws; mixed: bool ``[B]``. Returns ``(masks, lam)``: masks float32
    ``[B, H, W]`` (NumPy, or a torch tensor on ``device`` when that is a CUDA device), 1 =
    foreground, zero for unmixed samples; lam float64 ``[B]`` = kept-background fraction,
    exactly ``round(drawn * H * W) / (H * W)`` for mixed samples, 1 otherwise.
    """
    b = len(drawn)
    m = min(b, 1) if batch_mode else b
    noise = rng.standard_normal((m, height, width // 2 + 1, 2), dtype=np.float32)
    return masks_from_noise(noise, drawn, mixed, height, width, decay=decay, max_soft=max_soft,
                            batch_mode=batch_mode, device=device)


def masks_from_noise(noise: np.ndarray, drawn: np.ndarray, mixed: np.ndarray, height: int, width: int, *,
                     decay: float = 3.0, max_soft: float = 0.0, batch_mode: bool = False, device=None):
    """Masks and lam (as :func:`fmix_masks`) from host ``noise`` float32 ``[m, H, W//2+1, 2]``
    (``m = B``, or 1 in batch mode); NumPy, or torch on ``device`` when it is a CUDA device."""
    if not decay > 0:
        raise ValueError(f"fmix decay must be > 0, got decay={decay!r}")
    if not 0.0 <= max_soft <= 0.5:
        raise ValueError(f"fmix max_soft must be in [0, 0.5], got max_soft={max_soft!r}")
    b, n = len(drawn), height * width
    m = min(b, 1) if batch_mode else b
    num, soft = _counts(drawn[:m], n, max_soft)
    lam = np.where(mixed, np.repeat(num, b // max(m, 1)) / n if batch_mode else num / n, 1.0)
    on_cuda = device is not None and str(device).startswith("cuda")
    if on_cuda:
        import torch

        masks = _masks_torch(noise[:m], height, width, decay, num, soft, torch.device(device))
        if batch_mode:
            masks = masks.expand(b, height, width)
        keep = array_to_device(mixed, masks.device)[:, None, None]
        return (masks * keep).contiguous(), lam.astype(np.float64)
    img = low_freq_numpy(noise[:m], height, width, decay).reshape(m, n)
    masks = _binarise_numpy(img, num, soft).reshape(m, height, width)
    if batch_mode:
        masks = np.repeat(masks, b, axis=0)
    masks[~mixed] = 0.0
    return masks, lam.astype(np.float64)
