"""Numba CUDA kernel: paste foreground boxes into background images (CutMix, SaliencyMix, CMO).

Loaded only by :mod:`fastcas.mix._backend`. Never draws random numbers: the boxes come from
:func:`fastcas.mix.make_params`. NumPy reference: :func:`fastcas.mix.reference.apply_boxes`.

Launch: one launch per batch; grid ``(ceil(W / TX), ceil(H / TY), B * C)``, block ``(TX, TY)``:
one thread per output pixel of one channel, x fastest (coalesced reads and writes). Each
element reads exactly one of ``bg`` / ``fg`` and writes ``out`` (may alias ``bg``).
"""
from numba import cuda

TX, TY = 32, 8


@cuda.jit(cache=True)
def box_paste(out, bg, fg, boxes):
    """out, bg, fg: ``[B, C, H, W]`` (same dtype); boxes: int32 ``[B, 4]`` (y0, x0, y1, x1),
    half-open. ``out = fg`` inside the box of each sample, ``bg`` elsewhere."""
    x, y = cuda.grid(2)
    z = cuda.blockIdx.z
    nc = out.shape[1]
    b = z // nc
    c = z - b * nc
    if y < out.shape[2] and x < out.shape[3]:
        if boxes[b, 0] <= y < boxes[b, 2] and boxes[b, 1] <= x < boxes[b, 3]:
            out[b, c, y, x] = fg[b, c, y, x]
        else:
            out[b, c, y, x] = bg[b, c, y, x]
