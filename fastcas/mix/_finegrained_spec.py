"""Constants of OpenCV's fine-grained static saliency, shared by the NumPy reference
(:mod:`fastcas.mix.finegrained`) and its Numba twin (:mod:`fastcas.mix._finegrained_cpu`) so
that neither imports the other at module level."""

NEIGHBOURHOODS = (12, 24, 48, 28, 56, 112)  # centre-surround box sizes, in OpenCV's order
GREY = (7470, 38470, 19596)  # OpenCV's BGR2GRAY fixed-point weights (B, G, R), sum 2**16
