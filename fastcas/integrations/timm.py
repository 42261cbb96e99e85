"""fastcas behind timm's ``create_dataset`` / ``create_loader``: timm's own ``train.py`` runs on
fastcas with one added line (docs/integrations.md, docs/timm-train.patch)::

    from fastcas.integrations.timm import create_dataset, create_loader

``create_dataset(name, root, split, ...)`` names a fastcas dataset (``ROOT/SPLIT``, made by
``fastcas shard`` / ``fastcas index``); ``name`` is ``""``, ``"fastcas"`` or
``"fastcas:OPTION=VALUE,..."`` with :class:`fastcas.Loader` options (``weights=cas,scores=F``).
``create_loader(dataset, **timm_arguments)`` maps timm's arguments through ONE table,
:data:`TIMM_OPTIONS`, onto Loader options; an argument whose Loader option this fastcas lacks
is accepted only at the value fastcas already uses, and refused naming it otherwise. Mixing
comes from the ``FastCollateMixup`` timm's ``train.py`` passes as ``collate_fn``.

The result, :class:`TimmLoader`, is what timm's loops touch: ``len``, iteration (batches on
the device, normalised, as timm's prefetcher gives them), ``.sampler.set_epoch`` (timm's
``_set_loader_epoch``), ``.batch_sampler`` (None), ``.dataset``, ``mixup_enabled`` (timm's
``--mixup-off-epoch``) and ``state_dict`` / ``load_state_dict`` (mid-epoch resume).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD, RATIO, SCALE
from fastcas.loading.config import DEPRECATED_OPTIONS, LoaderConfig

EVAL_CROP_PCT = 0.875  # = fastcas.loading.pipeline.EVAL_CROP_FRACTION (that module imports DALI)

# timm argument -> (Loader option, the value fastcas uses while it has no such option). The ONE
# place to change when Loader options are added or renamed. The last four come from the
# FastCollateMixup that train.py passes as collate_fn (its mixup_alpha, cutmix_alpha,
# switch_prob and mix_prob = timm's --mixup, --cutmix, --mixup-switch-prob, --mixup-prob).
TIMM_OPTIONS: dict[str, tuple[str, object]] = {
    "mean": ("mean", IMAGENET_MEAN),
    "std": ("std", IMAGENET_STD),
    "scale": ("scale", SCALE),
    "ratio": ("ratio", RATIO),
    "interpolation": ("interpolation", "bilinear"),
    "crop_pct": ("crop_pct", EVAL_CROP_PCT),
    "auto_augment": ("auto_augment", None),
    "color_jitter": ("color_jitter", 0.0),
    "re_prob": ("reprob", 0.0),
    "re_mode": ("remode", "const"),
    "hflip": ("hflip", 0.5),
}
# FastCollateMixup's settings (timm's --mixup, --cutmix, --mixup-switch-prob, --mixup-prob) ->
# fastcas: one kind with its alpha, or mix="mixup_cutmix" with switch_prob / mixup_alpha /
# cutmix_alpha in mix_options (fastcas.loading.mixsched), mix_prob as is
# timm arguments fastcas has no option for: accepted at these values (fastcas's behaviour) only
FIXED = {"no_aug": False, "vflip": 0.0, "train_crop_mode": (None, "rrc"), "color_jitter_prob": None,
         "grayscale_prob": (None, 0.0), "gaussian_blur_prob": (None, 0.0), "num_aug_repeats": 0, "num_aug_splits": 0,
         "crop_mode": (None, "center"), "crop_border_pixels": None, "tf_preprocessing": False, "re_count": 1,
         "re_split": False, "input_size_choices": None, "batch_size_choices": None}
# timm arguments without effect here: DataLoader plumbing fastcas does its own way
IGNORED = {"pin_memory", "persistent_workers", "worker_seeding", "use_prefetcher", "use_multi_epochs_loader",
           "fp16", "batch_choice_weights", "batch_choice_seed", "batch_choice_schedule",
           "batch_schedule_epochs", "batch_schedule_spread", "batch_schedule_random_mix"}
MIX_MODES = {"batch": "batch", "elem": "elem"}  # timm mixup mode -> fastcas mix_options mode ('pair': none)
_SPLIT_ALIASES = {"validation": ("validation", "val"), "val": ("val", "validation"), "test": ("test",)}
_TRAIN_SETS: dict[Path, Path] = {}  # dataset root -> its training split: an eval split is checked against it


def _loader_options() -> set[str]:
    return {f.name for f in fields(LoaderConfig)} | set(DEPRECATED_OPTIONS)


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def map_option(timm_name: str, value, accepted: set[str] | None = None) -> dict:
    """``{Loader option: value}`` for one timm argument of :data:`TIMM_OPTIONS` (``{}`` when
    unset or equal to what fastcas does anyway); ValueError when this fastcas cannot honour it."""
    option, builtin = TIMM_OPTIONS[timm_name]
    accepted = _loader_options() if accepted is None else accepted
    if value is None or (isinstance(value, str) and value == "" and builtin is None):
        return {}
    if option in accepted:
        return {option: tuple(value) if isinstance(value, list) else value}
    if _same(value, builtin):
        return {}
    raise ValueError(
        f"timm argument {timm_name}={value!r} needs the Loader option {option!r}, which this fastcas "
        f"does not have (it always uses {builtin!r}): set it to {builtin!r} (for timm's train.py, the flag that "
        f"sets {timm_name}), or use a fastcas whose Loader takes {option}="
    )


@dataclass(frozen=True)
class FastcasDataset:
    """A fastcas dataset as timm's ``create_dataset`` returns one: ``path`` (a directory with
    manifest.json), whether it trains, the seed, and Loader ``options`` from the dataset name."""

    path: Path
    is_training: bool
    seed: int = 0
    options: dict = field(default_factory=dict)
    num_samples: int | None = None

    def __len__(self) -> int:
        from fastcas.dataset.reader import ShardReader

        return len(ShardReader(self.path))

    def class_names(self) -> tuple[str, ...]:
        """The dataset's class names (their count is timm's ``--num-classes``)."""
        from fastcas.dataset.classes import class_names_of

        return class_names_of(self.path)


def _parse_name(name: str) -> dict:
    """Loader options from ``fastcas:weights=cas,scores=s.parquet`` (numbers become numbers)."""
    name = name or ""
    head, _, tail = name.partition(":")
    if head not in ("", "fastcas"):
        raise ValueError(f"--dataset {name!r}: fastcas.integrations.timm reads fastcas datasets only; give '' or "
                         "'fastcas[:OPTION=VALUE,...]' (Loader options, e.g. fastcas:weights=cas,scores=s.parquet)")
    out = {}
    for item in filter(None, (x.strip() for x in tail.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--dataset {name!r}: {item!r} is not OPTION=VALUE")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def create_dataset(name, root=None, split="validation", is_training=False, class_map=None, download=False,
                   seed=42, num_samples=None, repeats=0, **_ignored) -> FastcasDataset:
    """timm's ``create_dataset`` for fastcas: ``ROOT/SPLIT`` (``validation`` also finds ``val``).
    ``class_map`` / ``download`` / ``repeats`` are refused: a fastcas dataset carries its class
    names (``fastcas shard --classes-from``) and lives on disk."""
    for arg, value, default in (("class_map", class_map, None), ("download", download, False),
                                ("repeats", repeats, 0)):
        if value not in (default, "", None, 0, False):
            raise ValueError(f"timm create_dataset({arg}={value!r}) has no fastcas meaning; remove it")
    if root is None:
        raise ValueError(
            "timm --data-dir is required: the folder holding the fastcas datasets TRAIN_SPLIT/ and VAL_SPLIT/"
        )
    names = _SPLIT_ALIASES.get(split, (split,))
    found = next((Path(root) / s for s in names if (Path(root) / s / "manifest.json").exists()), None)
    if found is None:
        tried = " or ".join(str(Path(root) / s) for s in names)
        raise FileNotFoundError(f"no fastcas dataset at {tried} (made by fastcas shard / fastcas index)")
    if is_training:
        _TRAIN_SETS[Path(root).resolve()] = found
    return FastcasDataset(found, bool(is_training), int(seed or 0), _parse_name(name), num_samples)


def _mix_options(collate_fn, num_classes: int) -> dict:
    """Loader options for timm's ``FastCollateMixup`` (``collate_fn``), or ``{}`` without one."""
    if collate_fn is None:
        return {}
    if not all(hasattr(collate_fn, a) for a in ("mixup_alpha", "cutmix_alpha", "mix_prob", "switch_prob")):
        raise ValueError(f"collate_fn {type(collate_fn).__name__}: fastcas batches are made by its pipeline; only "
                         "timm's FastCollateMixup (--mixup / --cutmix) is understood")
    if getattr(collate_fn, "cutmix_minmax", None) is not None:
        raise ValueError("timm --cutmix-minmax has no fastcas equivalent; use --cutmix ALPHA")
    if collate_fn.mode not in MIX_MODES:
        raise ValueError(f"timm --mixup-mode {collate_fn.mode!r}: fastcas mixes per 'batch' or per 'elem'")
    if collate_fn.num_classes != num_classes:
        raise ValueError(f"timm --num-classes {collate_fn.num_classes} but the dataset has {num_classes} classes")
    mixup, cutmix = float(collate_fn.mixup_alpha), float(collate_fn.cutmix_alpha)
    opts = {"label_smoothing": float(collate_fn.label_smoothing), "mix_prob": float(collate_fn.mix_prob)}
    mode = {"mode": MIX_MODES[collate_fn.mode]}
    if mixup > 0 and cutmix > 0:  # timm's per-batch switch between MixUp and CutMix
        return {**opts, "mix": "mixup_cutmix", "mix_options": {**mode, "switch_prob": float(collate_fn.switch_prob),
                                                                "mixup_alpha": mixup, "cutmix_alpha": cutmix}}
    kind, alpha = ("mixup", mixup) if mixup > 0 else ("cutmix", cutmix)
    return {**opts, "mix": kind, "alpha": alpha, "mix_options": mode}


def _image_size(input_size) -> int:
    size = input_size[-2:] if isinstance(input_size, (tuple, list)) else (input_size, input_size)
    if len(size) == 2 and size[0] != size[1]:
        raise ValueError(f"timm input_size {tuple(input_size)}: fastcas makes square images (S x S)")
    return int(size[-1])


def _check_fixed(kwargs: dict) -> None:
    for name, value in kwargs.items():
        if name in IGNORED:
            continue
        if name not in FIXED:
            raise ValueError(f"timm create_loader argument {name}={value!r} is not understood by "
                             "fastcas.integrations.timm (docs/integrations.md lists the mapping)")
        allowed = FIXED[name] if isinstance(FIXED[name], tuple) else (FIXED[name],)
        if not any(_same(value, a) for a in allowed):
            raise ValueError(f"timm argument {name}={value!r}: fastcas has no such option (it uses "
                             f"{' or '.join(map(repr, allowed))}); set it to that or drop the flag")


def create_loader(dataset: FastcasDataset, input_size=224, batch_size=32, is_training=False, *, collate_fn=None,
                  num_workers=1, distributed=False, img_dtype=None, device=None, num_batches=None,
                  **timm_arguments) -> "TimmLoader":
    """timm's ``create_loader`` for a :class:`FastcasDataset`; see the module docstring. An
    evaluation loader reads every sample once in order (``last_batch="partial"``) and is
    refused unless its class names equal its root's training split's. ``distributed``: rank and
    world size come from ``torch.distributed``."""
    from fastcas.loading.loader import Loader

    if not isinstance(dataset, FastcasDataset):
        raise ValueError(
            f"dataset must come from fastcas.integrations.timm.create_dataset, got {type(dataset).__name__}"
        )
    accepted = _loader_options()
    opts: dict = {}
    for name in [k for k in timm_arguments if k in TIMM_OPTIONS]:
        value = timm_arguments.pop(name)
        if (
            name in ("scale", "ratio", "color_jitter", "auto_augment", "re_prob", "re_mode", "hflip")
            and not is_training
        ):
            continue  # training augmentations: timm ignores them for evaluation too
        if name == "crop_pct" and is_training:
            continue
        opts.update(map_option(name, value, accepted))
    _check_fixed(timm_arguments)
    opts.update(dataset.options)
    opts.update(image_size=_image_size(input_size), train=bool(is_training), seed=dataset.seed,
                py_workers=int(num_workers))
    if device is not None:
        opts["device"] = "cuda" if getattr(device, "type", str(device)).startswith("cuda") else "cpu"
    if img_dtype is not None:
        opts["dtype"] = {"torch.float32": "float32", "torch.float16": "float16"}.get(str(img_dtype), str(img_dtype))
    if is_training and (num_batches or dataset.num_samples):
        opts["epoch_length"] = int(num_batches) * batch_size * _world_size(distributed) if num_batches \
            else int(dataset.num_samples)
    if not is_training:
        opts.setdefault("last_batch", "partial")
        train_set = _TRAIN_SETS.get(dataset.path.parent.resolve())
        if train_set is not None:
            opts["class_names"] = train_set
    num_classes = len(dataset.class_names())
    if is_training:  # without mixing timm's losses take class ids (int64 [B]); with it soft [B, K]
        opts.update(_mix_options(collate_fn, num_classes) if collate_fn is not None else {"targets": "hard"})
    elif collate_fn is not None:
        raise ValueError("an evaluation loader takes no collate_fn (no mixing in evaluation)")
    return TimmLoader(Loader(dataset.path, batch_size, **opts), dataset, soft=collate_fn is not None, options=opts)


def _world_size(distributed: bool) -> int:
    from fastcas.sampling.sampler import _dist_defaults

    return _dist_defaults(None, None)[1] if distributed else 1


class _EpochSampler:
    """``loader.sampler``: what timm's ``_set_loader_epoch`` calls ``set_epoch`` on."""

    def __init__(self, owner: "TimmLoader"):
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._owner) * self._owner.loader.config.batch_size


class TimmLoader:
    """A fastcas :class:`~fastcas.Loader` with the attributes timm's ``train.py`` reads. With
    mixing configured (``soft``) every batch's targets are float [B, K] (timm's
    ``SoftTargetCrossEntropy``), also once ``mixup_enabled = False`` switches to an unmixed
    twin of the loader (same seed, weights and epoch); evaluation targets are int64 [B]."""

    batch_sampler = None

    def __init__(self, loader, dataset: FastcasDataset, *, soft: bool = False, options: dict | None = None):
        self.loader, self.dataset, self.soft = loader, dataset, soft
        self._options = dict(options or {})
        self.sampler = _EpochSampler(self)
        self._mixing = loader.config.mix_kind is not None or bool(self._options.get("mixup_alpha")) \
            or bool(self._options.get("cutmix_alpha"))

    @property
    def mixup_enabled(self) -> bool:
        return self._mixing

    @mixup_enabled.setter
    def mixup_enabled(self, value: bool) -> None:
        if bool(value) == self._mixing:
            return
        if value:
            raise ValueError("mixing cannot be switched back on; build a new loader")
        from fastcas.loading.loader import Loader

        plain = {k: v for k, v in self._options.items() if k not in ("mix", "alpha", "mix_prob", "mix_options",
                                                                      "mixup_alpha", "cutmix_alpha", "switch_prob")}
        epoch = self.loader.epoch
        self.loader.close()
        self.loader = Loader(self.dataset.path, self.loader.config.batch_size, **plain)
        self.loader.set_epoch(epoch)
        self._mixing = False

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, targets in self.loader:
            if self.soft and targets.ndim == 1:  # unmixed batches still feed SoftTargetCrossEntropy
                targets = self._one_hot(targets)
            yield images, targets

    def _one_hot(self, labels):
        import torch

        k, s = self.loader.num_classes, float(self._options.get("label_smoothing", 0.0))
        off = s / k
        out = torch.full((labels.shape[0], k), off, dtype=torch.float32, device=labels.device)
        return out.scatter_(1, labels.long()[:, None], 1.0 - s + off)

    def state_dict(self) -> dict:
        return {"loader": self.loader.state_dict(), "mixup_enabled": self._mixing}

    def load_state_dict(self, state: dict) -> None:
        if not state.get("mixup_enabled", True):
            self.mixup_enabled = False
        self.loader.load_state_dict(state["loader"])

    def close(self) -> None:
        self.loader.close()
