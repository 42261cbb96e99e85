"""One object per mix kind: what the loader asks of a kind, in one place per kind.

Each :class:`MixKind` owns its ``mix_options`` keys and their checks, its region (the
:class:`~fastcas.mix.params.MixParams` built from the kind-independent draws,
:class:`~fastcas.mix.params.Drawn`, whose ``uniform`` serves a kind's own further draws), its
pixels (:meth:`MixKind.apply`), whether the DALI graph can mix it on a device, the source outputs
of in-graph mixing (the host-drawn arguments of the graph's operators, by name and dtype), its DALI
graph fragment (:meth:`MixKind.graph_mix`, handed DALI by :mod:`fastcas.loading.pipeline`), the
parameters shown by ``Loader.plan()`` and those applied by torch after the pipeline. :data:`KINDS`
maps ``mix=`` names to the objects; :mod:`fastcas.mix.draw` and the loader (:mod:`fastcas.loading`)
look a kind up there instead of comparing strings. Adding a kind is a subclass registered in
:data:`KINDS` here (or in a module of its own, registered here), plus its tests.

Every draw is position-keyed (:meth:`MixKind.params_at`, :func:`~fastcas.mix.params.saliency_draws`)
or, through :func:`fastcas.mix.make_params`, from an explicit generator.
"""
from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from fastcas.core.rng import counter_uniform, derive_key

from . import _backend
from .device import on_device, saliency_params
from .params import (
    Drawn,
    MixParams,
    box_params,
    boxes_at,
    check_draw,
    cut_sizes,
    device_of,
    paste_args,
    position_drawn,
    saliency_draws,
)
from .saliency import ALIASES as SALIENCY_ALIASES
from .saliency import METHODS as SALIENCY_METHODS
from .saliency import saliency_centres

SWITCH = "mixup_cutmix"
FMIX_SELECTS = ("auto", "numba", "arithmetic")  # how the graph selects binary FMix pixels (FMix.graph_mix)
SWITCH_OPTIONS = ("mode", "switch_prob", "mixup_alpha", "cutmix_alpha")
_TAG_SWITCH = 0x5C


class GraphBuilder(Protocol):
    """What a kind's DALI graph fragment (:meth:`MixKind.graph_mix`) is given by
    :func:`fastcas.loading.pipeline.build_pipeline` (the only module that imports DALI: the
    fragments here call DALI through ``fn`` / ``types`` and never import it). ``size``: S of the
    S x S images; ``gpu``: the pipeline's images live on the GPU; ``fmix_select``: one of
    :data:`FMIX_SELECTS`; ``numba(op)``: the DALI Numba operator (CPU) of a
    :class:`fastcas.mix.graph_ops.NumbaOp`, built once per process."""

    fn: Any
    types: Any
    size: int
    gpu: bool
    fmix_select: str

    def numba(self, op) -> Any: ...


def paste_box(g: GraphBuilder, images: list, args: dict):
    """``fn.multi_paste`` of the box given by the paste arguments ``args`` (``in_ids`` with one
    stream: the in-batch partner; two streams: input 1 pasted into input 0; ``anchors`` serve as
    both in and out anchors, :func:`fastcas.mix.params.paste_args`) into uint8 HWC ``images``."""
    anchors = args.pop("anchors")
    return g.fn.multi_paste(*images, **args, in_anchors=anchors, out_anchors=anchors, output_size=[g.size, g.size])


class MixKind:
    """A mix kind (see the module docstring). ``options``: its valid ``mix_options`` keys.
    ``graph``: how the DALI graph mixes it ("box": ``multi_paste`` of a host-drawn box;
    "saliency_box": the box around the foreground's saliency peak, found in the graph;
    "mask": a bitwise select by a uint8 mask), or None when only torch mixes it."""

    name = ""
    options: tuple = ("mode",)
    graph: str | None = None
    draws_params = True  # False: the kind resolves to another one per batch (:meth:`at`) and draws nothing itself
    host_pixels = False  # True: :meth:`partners` and :meth:`mix_pixels` mix its in-graph pixels in torch too
    needs_foreground = False  # the region depends on the foreground's pixels (SaliencyMix)

    def region(self, d: Drawn, *, foreground, mode: str, decay: float, max_soft: float, saliency: str,
               device) -> MixParams:
        """The batch's :class:`~fastcas.mix.params.MixParams` from its draws ``d`` (the kind's
        region: boxes, masks or none; ``foreground`` [B, C, H, W] for a kind that
        ``needs_foreground``; ``device``: where FMix masks are built)."""
        raise NotImplementedError(f"mix {self.name!r} draws no parameters itself")

    def apply(self, params, background, foreground, *, backend: str = "auto"):
        """The mixed pixels (:func:`fastcas.mix.apply`, which validated the shapes): every kind here
        is a box, a mask or a blend of ``params``, which the NumPy reference, torch ops and the Numba
        CUDA kernels apply (:mod:`fastcas.mix._backend`); a kind whose pixels are none of those
        overrides this."""
        return _backend.apply(params, background, foreground, backend=backend)

    def params_at(self, seed: int, epoch: int, positions, height: int, width: int, *, alpha: float = 1.0,
                  prob: float = 1.0, foreground=None, mode: str = "elem", decay: float = 3.0, max_soft: float = 0.0,
                  saliency: str = "finegrained", device=None) -> MixParams:
        """This kind's :func:`fastcas.mix.draw.make_params_at`: the position-keyed draws, then :meth:`region`."""
        alpha, prob, height, width = check_draw(alpha, prob, mode, height, width)
        d = position_drawn(seed, epoch, positions, height, width, alpha, prob, mode, decay)
        return self.region(d, foreground=foreground, mode=mode, decay=decay, max_soft=max_soft, saliency=saliency,
                           device=device_of(foreground, device))

    def check_options(self, options: dict) -> None:
        """ValueError for a bad value of one of this kind's own options (``mode`` is checked by the caller)."""

    def at(self, seed: int, epoch: int, step: int, alpha: float, options: dict) -> tuple:
        """``(kind name, alpha, options)`` of the batch at ``step`` (a kind that is one kind: itself)."""
        return self.name, alpha, dict(options)

    def in_graph(self, options: dict, device: str) -> bool:
        """Whether the DALI graph can mix this kind with ``options`` on ``device`` ("cpu" | "cuda")."""
        return self.graph is not None

    def paste_names(self, streams: int) -> tuple:
        """Names of the source outputs of in-graph mixing, in order (one stream mixes with an
        in-batch partner: ``in_ids`` / ``partner``; two take the foreground from stream 1)."""
        return ()

    def partners(self, args: dict):
        """int [B]: each sample's in-batch partner (one stream), from the source outputs ``args``."""
        raise NotImplementedError(f"{self.name}: no host pixel mixing")

    def mix_pixels(self, args: dict, i: int, bg, fg):
        """Sample ``i``'s uint8 [3, H, W] torch pixels ``bg`` mixed with its foreground's ``fg`` as
        :meth:`graph_mix` mixes them, bit for bit (``cpu_resize="torch"``, fastcas.loading.cpu_resize);
        ``args``: the source outputs :meth:`paste_names` as torch tensors."""
        raise NotImplementedError(f"{self.name}: no host pixel mixing")

    def paste_dtype(self, name: str) -> str:
        """The numpy dtype name of the source output ``name`` of :meth:`paste_names` (``lam``:
        float64; the indices, anchors and shapes of the graph's operators: int32)."""
        return "float64" if name == "lam" else "int32"

    def source_outputs(self, seed: int, epoch: int, g: np.ndarray, *, size: int, alpha: float, prob: float,
                       mode: str, decay: float, partner) -> dict:
        """In-graph mixing outputs of one batch at global positions ``g`` (see
        :meth:`fastcas.loading.source.SampleSource.batch`), by name."""
        raise ValueError(f"mix {self.name!r} is not mixed inside the pipeline")

    def graph_mix(self, g: GraphBuilder, images: list, args: dict) -> tuple:
        """The DALI graph fragment of in-graph mixing: ``(mixed uint8 HWC images, lam float64
        [B, 1])`` from each stream's resized (and flipped) uint8 HWC ``images`` (one or two) and
        the source outputs :meth:`paste_names` by name (``args``, this kind's own dict). With
        AutoAugment the pipeline has conditionals and DALI's autograph rewrites this function from
        its source file (as every function the pipeline calls)."""
        raise ValueError(f"mix {self.name!r} is not mixed inside the pipeline")

    def plan_params(self, seed: int, epoch: int, positions, size: int, *, alpha: float, prob: float,
                    options: dict) -> dict:
        """``Loader.plan()``'s mixing entries: ``params`` (:class:`fastcas.mix.MixParams`)."""
        return {"params": self.params_at(seed, epoch, positions, size, size, alpha=alpha, prob=prob,
                                         **options)}

    def device_params(self, seed: int, epoch: int, positions, size: int, fg, *, alpha: float, prob: float,
                      options: dict, to_device, mean, std):
        """The parameters torch applies after the pipeline, resident on ``fg``'s device
        (:class:`fastcas.mix.device.DeviceParams`); ``fg``: the foregrounds [B, 3, S, S]."""
        params = self.params_at(seed, epoch, positions, size, size, alpha=alpha, prob=prob,
                                device=fg.device, **options)
        return on_device(params, to_device)

    def __repr__(self) -> str:
        return f"MixKind({self.name!r})"


class MixUp(MixKind):
    name = "mixup"

    def region(self, d, **_) -> MixParams:
        """No region: lam is the blend weight of the background (1 where unmixed)."""
        return MixParams(self.name, d.height, d.width, np.where(d.mixed, d.drawn, 1.0).astype(np.float64), d.mixed,
                         drawn=d.drawn)


class CutMix(MixKind):
    name = "cutmix"
    graph = "box"
    host_pixels = True

    def region(self, d, *, mode, **_) -> MixParams:
        """clovaai's box: ``cut = int(side * sqrt(1 - lam))`` at the drawn centre, clipped (batch
        mode: the first sample's box for all)."""
        n = 1 if mode == "batch" else len(d.drawn)
        cy, cx = d.centres(n)
        cut_h, cut_w = cut_sizes(d.drawn[:n], d.height, d.width)
        boxes = boxes_at(cy, cx, cut_h, cut_w, d.height, d.width)
        return box_params(self.name, d, np.repeat(boxes, len(d.drawn), axis=0) if mode == "batch" else boxes)

    def paste_names(self, streams: int) -> tuple:
        return (("in_ids",) if streams == 1 else ()) + ("anchors", "shapes", "lam")

    def source_outputs(self, seed, epoch, g, *, size, alpha, prob, mode, decay, partner) -> dict:
        params = self.params_at(seed, epoch, g, size, size, alpha=alpha, prob=prob, mode=mode)
        out = {"lam": params.lam.reshape(-1, 1)}
        out["in_ids"], out["anchors"], out["shapes"] = paste_args(params.boxes, size, size, partner)
        return out

    def graph_mix(self, g, images, args) -> tuple:
        """``fn.multi_paste`` of the host-drawn box."""
        lam = args.pop("lam")
        return paste_box(g, images, args), lam

    def partners(self, args: dict):
        return args["in_ids"][:, 1]

    def mix_pixels(self, args: dict, i: int, bg, fg):
        (y0, x0), (h, w) = args["anchors"][i, 1].tolist(), args["shapes"][i, 1].tolist()
        out = bg.clone() if h and w else bg
        out[:, y0:y0 + h, x0:x0 + w] = fg[:, y0:y0 + h, x0:x0 + w]
        return out


class FMix(MixKind):
    name = "fmix"
    options = ("mode", "decay", "max_soft")
    graph = "mask"
    host_pixels = True

    def region(self, d, *, mode, decay, max_soft, device, **_) -> MixParams:
        """Masks from low-frequency noise (:func:`fastcas.mix.fmix.masks_from_noise`), built on ``device``."""
        from .fmix import masks_from_noise  # noqa: PLC0415 (lazy: numba)

        b = len(d.drawn)
        m = min(b, 1) if mode == "batch" else b
        masks, lam = masks_from_noise(d.noise(m), d.drawn, d.mixed, d.height, d.width, decay=decay,
                                      max_soft=max_soft, batch_mode=(mode == "batch"), device=device)
        return MixParams(self.name, d.height, d.width, lam, d.mixed, masks=masks, drawn=d.drawn)

    def check_options(self, options: dict) -> None:
        for key, lo, hi in (("decay", 0.0, math.inf), ("max_soft", 0.0, 0.5)):
            if key in options:
                v = options[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or (
                        key == "decay" and v <= 0):
                    raise ValueError(f"mix_options {key} must be a number in "
                                     f"{'(0, inf)' if key == 'decay' else '[0, 0.5]'}, got {v!r}")

    def in_graph(self, options: dict, device: str) -> bool:
        return options.get("max_soft", 0.0) <= 0  # soft masks blend: torch after the pipeline

    def paste_names(self, streams: int) -> tuple:
        return (("partner",) if streams == 1 else ()) + ("masks", "lam")

    def paste_dtype(self, name: str) -> str:
        return "uint8" if name == "masks" else super().paste_dtype(name)  # the select's bit masks

    def source_outputs(self, seed, epoch, g, *, size, alpha, prob, mode, decay, partner) -> dict:
        params = self.params_at(seed, epoch, g, size, size, alpha=alpha, prob=prob, mode=mode,
                                decay=decay)
        # 1 -> 255 and 0 -> 0 in two cheap passes (uint8 negation wraps): the select's bit mask
        out = {"lam": params.lam.reshape(-1, 1),
               "masks": np.negative((np.asarray(params.masks) > 0.5).view(np.uint8))[..., None]}
        if partner is not None:
            out["partner"] = partner.astype(np.int32).reshape(-1, 1)
        return out

    def graph_mix(self, g, images, args) -> tuple:
        """Binary masks: the background where the mask is 0, the foreground (the in-batch partner
        from ``fn.permute_batch``, or stream 1) where 255, as the exact bitwise select ``bg ^ ((bg ^
        fg) & mask)`` on uint8: DALI's arithmetic operators (the GPU's select, and ``fmix_select=
        "arithmetic"``) or, on the CPU by default, the same expression as one Numba operator
        (:func:`fastcas.mix.graph_ops.fmix_select`: DALI's CPU arithmetic broadcasts slowly)."""
        bg = images[0]
        fg = images[1] if len(images) == 2 else g.fn.permute_batch(bg, indices=args["partner"][0])
        if g.gpu or g.fmix_select == "arithmetic":
            masks = args["masks"].gpu() if g.gpu else args["masks"]  # an operand beside GPU images
            return bg ^ ((bg ^ fg) & masks), args["lam"]
        from .graph_ops import FMIX_SELECT  # noqa: PLC0415 (lazy: graph_ops loads numba)

        return g.numba(FMIX_SELECT)(bg, fg, args["masks"]), args["lam"]

    def partners(self, args: dict):
        return args["partner"][:, 0]

    def mix_pixels(self, args: dict, i: int, bg, fg):
        return bg ^ ((bg ^ fg) & args["masks"][i].permute(2, 0, 1))


class SaliencyMix(MixKind):
    name = "saliencymix"
    options = ("mode", "saliency")
    graph = "saliency_box"
    needs_foreground = True

    def region(self, d, *, foreground, mode, saliency, **_) -> MixParams:
        """CutMix's box size centred at the foreground's saliency peak (batch mode: the first
        foreground's peak for all)."""
        b = len(d.drawn)
        if foreground is None:
            raise ValueError("saliencymix needs the foreground images (foreground=...) for saliency")
        shape = tuple(foreground.shape)
        if len(shape) != 4 or shape[0] != b or shape[2:] != (d.height, d.width):
            raise ValueError(f"foreground must be [{b}, C, {d.height}, {d.width}], got {list(shape)}")
        cy, cx = saliency_centres(foreground[:1] if (mode == "batch" and b) else foreground, method=saliency)
        if mode == "batch":
            cy, cx = np.repeat(cy, b), np.repeat(cx, b)
        cut_h, cut_w = cut_sizes(d.drawn, d.height, d.width)
        return box_params(self.name, d, boxes_at(cy, cx, cut_h, cut_w, d.height, d.width))

    def check_options(self, options: dict) -> None:
        if options.get("saliency", "finegrained") not in (*SALIENCY_METHODS, *SALIENCY_ALIASES):
            raise ValueError(f"mix_options saliency must be {', '.join(map(repr, SALIENCY_METHODS))}, "
                             f"got {options['saliency']!r}")

    def in_graph(self, options: dict, device: str) -> bool:
        # the fine-grained saliency runs as a DALI Numba operator on host images; a GPU
        # pipeline's images are on the device, where torch computes the same boxes
        name = options.get("saliency", "finegrained")
        return device == "cpu" and SALIENCY_ALIASES.get(name, name) == "finegrained"

    def paste_names(self, streams: int) -> tuple:
        return (("in_ids",) if streams == 1 else ()) + ("centre_ids", "need", "anchors", "shapes", "lam", "half")

    def source_outputs(self, seed, epoch, g, *, size, alpha, prob, mode, decay, partner) -> dict:
        """The draws of :func:`fastcas.mix.params.saliency_draws` and the unmixed ``multi_paste``
        arguments; ``centre_ids``: whose saliency peak centres each box (the partner, the
        foreground stream's own sample, or in batch mode the first sample's); ``need``: 1 where
        some mixed sample's box is centred on this sample's peak (the graph computes only those)."""
        _, mixed, half = saliency_draws(seed, epoch, g, size, size, alpha, prob, mode)
        ids = np.arange(len(g)) if partner is None else partner
        if mode == "batch":  # one box for the batch: the first foreground's peak
            ids = np.full(len(g), ids[0] if len(g) else 0)
        need = np.zeros((len(g), 1), np.int32)
        need[ids[mixed], 0] = 1
        in_ids, anchors, shapes = paste_args(np.zeros((len(g), 4), np.int64), size, size, partner)
        return {"in_ids": in_ids, "centre_ids": ids.astype(np.int32).reshape(-1, 1), "need": need,
                "anchors": anchors, "shapes": shapes, "lam": np.ones((len(g), 1), np.float64),
                "half": np.concatenate([half, mixed[:, None]], axis=1).astype(np.int32)}

    def graph_mix(self, g, images, args) -> tuple:
        """The box around the foreground's saliency peak (CPU pipelines: the Numba operators take
        host images): :func:`fastcas.mix.graph_ops.saliency_centre` on the samples ``need`` marks,
        ``fn.permute_batch`` gives each sample its foreground's peak, ``saliency_paste`` turns the
        unmixed sample's paste arguments into the box's (and lam), then pasted like CutMix's."""
        if g.gpu:
            raise ValueError("SaliencyMix inside the pipeline runs on CPU pipelines only (its Numba operators "
                             "take host images); a GPU loader computes the boxes with torch after it")
        from .graph_ops import SALIENCY_CENTRE, SALIENCY_PASTE  # noqa: PLC0415 (lazy: graph_ops loads numba)

        centre_op, paste_op = g.numba(SALIENCY_CENTRE), g.numba(SALIENCY_PASTE)
        centre = centre_op(images[-1], args.pop("need"))  # the foreground: stream 1, or the in-batch images
        centre = g.fn.permute_batch(centre, indices=args.pop("centre_ids")[0])
        args["anchors"], args["shapes"], lam = paste_op(args["anchors"], args["shapes"], args.pop("lam"),
                                                        args.pop("half"), centre)
        return paste_box(g, images, args), lam

    def plan_params(self, seed, epoch, positions, size, *, alpha, prob, options) -> dict:
        """SaliencyMix needs pixels for its boxes: ``params`` None, the pixel-free ``drawn`` / ``mixed``."""
        drawn, mixed, _ = saliency_draws(seed, epoch, positions, size, size, alpha, prob,
                                         options.get("mode", "elem"))
        return {"params": None, "drawn": drawn, "mixed": mixed}

    def device_params(self, seed, epoch, positions, size, fg, *, alpha, prob, options, to_device, mean, std):
        """The saliency (any method) of the decoded uint8 pixels, as in the graph
        (:mod:`fastcas.mix.graph_ops`); ``options`` are exactly ``saliency`` and ``mode``."""
        from .graph_ops import pixels_u8  # noqa: PLC0415 (lazy: numba)

        return saliency_params(seed, epoch, positions, pixels_u8(fg, mean, std), alpha=alpha, prob=prob,
                               to_device=to_device, **options)


def uses_cutmix(seed: int, epoch: int, step: int, switch_prob: float) -> bool:
    """timm's ``use_cutmix = rand() < switch_prob``, drawn from ``(seed, epoch, step)``."""
    return bool(counter_uniform(derive_key(int(seed), _TAG_SWITCH, int(epoch)), int(step)) < switch_prob)


def check_switch_options(options: dict) -> None:
    """ValueError for a bad ``switch_prob`` (a probability) or ``mixup_alpha`` / ``cutmix_alpha`` (> 0)."""
    p = options.get("switch_prob", 0.5)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"mix_options switch_prob must be in [0, 1] (the probability of CutMix), got {p!r}")
    for key in ("mixup_alpha", "cutmix_alpha"):
        a = options.get(key, 1.0)
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not (math.isfinite(a) and a > 0):
            raise ValueError(f"mix_options {key} must be > 0 (Beta(alpha, alpha)), got {a!r}")


class Switch(MixKind):
    """timm's per-batch switch between MixUp and CutMix: :meth:`at` resolves it for one step."""

    name = SWITCH
    options = SWITCH_OPTIONS
    draws_params = False

    def check_options(self, options: dict) -> None:
        check_switch_options(options)

    def at(self, seed: int, epoch: int, step: int, alpha: float, options: dict) -> tuple:
        """``(kind name, alpha, options)`` of the batch at ``step``: CutMix with probability
        ``switch_prob`` (keyed by ``(seed, epoch, step)``), each with its own alpha."""
        opts = dict(options)
        cut = uses_cutmix(seed, epoch, step, opts.pop("switch_prob", 0.5))
        a_mix, a_cut = opts.pop("mixup_alpha", alpha), opts.pop("cutmix_alpha", alpha)
        return ("cutmix", a_cut, opts) if cut else ("mixup", a_mix, opts)


KINDS: dict[str, MixKind] = {k.name: k for k in (CutMix(), FMix(), SaliencyMix(), MixUp(), Switch())}
PASTE_KINDS = tuple(name for name, k in KINDS.items() if k.graph is not None)  # the graph can mix these
PARAM_KINDS = tuple(name for name, k in KINDS.items() if k.draws_params)  # make_params draws these


def get(name: str) -> MixKind:
    """The kind of ``mix=`` ``name``; ValueError naming the accepted ones."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown mix kind {name!r}; accepted kinds: {', '.join(KINDS)}") from None
