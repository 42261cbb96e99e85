"""``fastcas train TRAIN --val VAL ...``: train and evaluate with a fastcas recipe."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "train and evaluate a classifier with a fastcas recipe"
RECIPES = Path(__file__).resolve().parent.parent / "train" / "recipes"

# --help text per TrainConfig field (fields not listed show only their default)
FIELD_HELP = {
    "out": "run directory: checkpoint, metrics.jsonl, reports, model.pt; must be empty unless --resume "
           "or --overwrite, and is locked while a run uses it",
    "connect_timeout": "remote shards: seconds to wait for a connection",
    "read_timeout": "remote shards: seconds without a byte before a download is abandoned (no limit on one "
                    "that keeps moving)",
    "retries": "remote shards: further attempts after a timeout, dropped connection or HTTP 5xx (backoff)",
    "model": "network", "schedule": "learning-rate schedule after the warm-up",
    "step_epochs": "step schedule: epochs (0-based) from which the rate is lr x the matching --step-factors "
                   "(default x0.1 per step)",
    "step_factors": "step schedule: the rate's multiplier, relative to --lr, from each --step-epochs epoch on "
                    "(unset: 0.1, 0.01, ...; the CIFAR-100-LT reference: 0.01 0.0001)",
    "warmup_per": "warm-up: 'step' ramps linearly every step; 'epoch' is the reference code's lr x (e + 1) / "
                  "WARMUP_EPOCHS, constant within epoch e",
    "threshold": "--weights oversample / undersample (and *-expected): samples per class to raise / cap classes "
                 "to (unset: the largest class / the 25th percentile of the class counts)",
    "policy": "augmentation policy of the loader (cifar: pad-4 random crop + flip, full-image evaluation; "
              "imagenet: random resized crop, centre-crop evaluation; unset: the loader's default)",
    "mix_mode": "batch: one mixing decision, lambda and box per batch (the CMO reference); elem: per sample; "
                "auto: batch with --foreground-weights (CMO), elem otherwise",
    "weights": "how training samples are drawn (cas needs --scores; cmo: class-inverse 1/n_k)",
    "foreground_weights": "CMO recipe: weights of the pasted foreground stream (background: --weights)",
    "mix": "mixing of pairs in a batch (with --foreground-weights: foregrounds from the second stream)",
    "alpha": "Beta(alpha, alpha) for the mixing ratio", "mix_prob": "probability that a sample is mixed",
    "mix_start": "CMO schedule: no mixing before this epoch",
    "mix_end": "CMO schedule: no mixing in the last MIX_END epochs (recipes with --epochs too small for "
               "MIX_START + MIX_END are clamped to mix every epoch, with a warning)",
    "b": "CAS exponent: w = CAS ** b", "r": "CMO exponent: w = 1 / n_k ** r",
    "scores": "training CAS score file (fastcas score), for --weights cas / cas-cmo",
    "val_scores": "validation CAS score file (fastcas score --reference TRAIN_SCORES): CAS low/middle/high",
    "loss_weights": "per-class loss weights (inverse: 1/n_k; effective: class-balanced effective number, both "
                    "normalised to mean 1, the loss divided by the batch's weight sum as CrossEntropyLoss(weight); "
                    "upweight-low: x --loss-weight-factor for the classes within the 25th percentile of the "
                    "counts, 1 for the others, the loss a mean over samples (importance-sampling paper))",
    "loss_weight_factor": "--loss-weights upweight-low: the low-frequency classes' loss factor (paper: 1.5 to 10)",
    "loss_beta": "--loss-weights effective: beta (unset: (N-1)/N; the DRW reference code: 0.9999)",
    "drw_epoch": "deferred re-weighting: --loss-weights apply only from this epoch on (unset: from the start)",
    "epoch_length": "draws per epoch over all ranks (unset: the dataset size)",
    "many": "classes with more than MANY training images form the 'many' group",
    "few": "classes with fewer than FEW training images form the 'few' group (the rest: 'medium')",
    "checkpoint_every": "checkpoint every N steps (and at every epoch end)",
    "eval_every": "evaluate every N epochs (and after the last)",
    "max_steps": "stop after this many steps in all (dry runs); the checkpoint allows --resume",
    "device": "auto: a CUDA GPU when torch sees one, else cpu",
}


def _choices() -> dict:
    from fastcas.mix.kinds import PARAM_KINDS as KINDS
    from fastcas.sampling import weights
    from fastcas.train.models import MODELS

    return {"model": list(MODELS), "weights": list(weights.NAMES), "foreground_weights": list(weights.NAMES),
            "mix": ["none", *KINDS], "loss_weights": list(weights.LOSS_WEIGHTS), "schedule": ["cosine", "step"],
            "mix_mode": ["auto", "elem", "batch"], "warmup_per": ["step", "epoch"],
            "device": ["auto", "cpu", "cuda"]}


def add_arguments(p) -> None:
    from fastcas.train.loop import TrainConfig

    p.add_argument("train", help="training dataset (directory or manifest)")
    p.add_argument("--val", help="validation dataset")
    p.add_argument("--recipe", help=f"recipe JSON (a path, or a name in {RECIPES}: "
                   + ", ".join(sorted(x.stem for x in RECIPES.glob('*.json'))) + "); flags override it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (the configuration must "
                   "match the saved one except: epochs, max-steps, eval/checkpoint frequency, val, workers, device)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT (deletes its files)")
    p.add_argument("--crash-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: SIGKILL
    defaults = TrainConfig(train_data="")
    choices = _choices()
    for f in TrainConfig.__dataclass_fields__.values():
        if f.name in ("train", "train_data", "val"):  # TRAIN (positional) and --val above
            continue
        flag = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        if isinstance(d, bool):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        elif f.name in ("step_epochs", "step_factors"):
            p.add_argument(flag, dest=f.name, type=int if f.name == "step_epochs" else float, nargs="*",
                           default=None, help=FIELD_HELP.get(f.name))
        else:
            typ = type(d) if d is not None else (int if f.name in ("drw_epoch", "epoch_length", "max_steps") else
                                                 float if f.name in ("threshold", "loss_beta") else str)
            text = f"{FIELD_HELP[f.name]}" + (f" (default {d})" if d is not None else "") if f.name in FIELD_HELP \
                else f"default {d}"
            p.add_argument(flag, dest=f.name, type=typ, default=None, help=text, choices=choices.get(f.name))


def config_from_args(args):
    from fastcas.train.loop import TrainConfig

    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None
                 and k != "train"}
    overrides["train_data"], overrides["val"] = args.train, args.val
    for key in ("step_epochs", "step_factors"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    if args.recipe:
        path = Path(args.recipe)
        if not path.exists():
            path = RECIPES / f"{args.recipe}.json"
        if not path.exists():
            names = ", ".join(sorted(x.stem for x in RECIPES.glob("*.json")))
            raise FileNotFoundError(f"unknown recipe {args.recipe!r}: not a file, and not one of the packaged "
                                    f"recipes: {names}")
        return TrainConfig.from_file(path, **_clamp_mix_schedule(path, overrides))
    return TrainConfig(**overrides)


def _clamp_mix_schedule(recipe: Path, overrides: dict) -> dict:
    """A recipe's CMO schedule (mix_start / mix_end epochs without mixing) leaves no epoch to
    mix in when --epochs is small (a 1-epoch try-out of a 200-epoch recipe): mix in every epoch
    instead, with a warning, unless the user set --mix-start / --mix-end themselves."""
    import json

    data = {**json.loads(recipe.read_text()), **overrides}
    start, end, epochs = data.get("mix_start", 0), data.get("mix_end", 0), data.get("epochs", 10)
    user_set = "mix_start" in overrides or "mix_end" in overrides
    if data.get("mix", "none") != "none" and start + end >= epochs and not user_set:
        print(f"warning: recipe {recipe.stem} mixes only between epoch {start} and {epochs} - {end}, which leaves "
              f"no epoch in {epochs}; mixing in every epoch instead (--mix-start 0 --mix-end 0)", file=sys.stderr)
        return {**overrides, "mix_start": 0, "mix_end": 0}
    return overrides


def run(args) -> int:
    from fastcas.cli._device import require_device, require_scores
    from fastcas.train.loop import train

    cfg = config_from_args(args)
    require_device(cfg.device)
    require_scores(cfg.weights, cfg.scores, recipe=args.recipe)
    require_scores(cfg.foreground_weights, cfg.scores, flag="--foreground-weights", recipe=args.recipe)
    final = train(cfg, resume=args.resume, crash_at_step=args.crash_at_step, overwrite=args.overwrite)
    rep = final["report"]
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: one final line, from rank 0
        return 0
    if rep:
        print(f"final top-1 {rep['top1']:.4f}; report in {cfg.out}")
    elif cfg.val:  # --val given, but the run stopped before an evaluation was due
        print(f"trained {final['global_step']} steps; no evaluation ran (--max-steps {cfg.max_steps} stopped the run "
              f"before the end of an epoch; evaluation runs every --eval-every {cfg.eval_every} epochs and after the "
              f"last); model in {Path(cfg.out) / 'model.pt'}")
    else:
        print(f"trained {final['global_step']} steps (no evaluation: no --val); model in {Path(cfg.out) / 'model.pt'}")
    return 0
