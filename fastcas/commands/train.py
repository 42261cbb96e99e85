"""``fastcas train TRAIN --val VAL ...``: train and evaluate with a fastcas recipe."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train and evaluate a classifier with a fastcas recipe"
RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def add_arguments(p) -> None:
    from fastcas.train import TrainConfig

    p.add_argument("train", help="training dataset (directory or manifest)")
    p.add_argument("--val", help="validation dataset")
    p.add_argument("--recipe", help=f"recipe JSON (a path, or a name in {RECIPES}: "
                   + ", ".join(sorted(x.stem for x in RECIPES.glob('*.json'))) + "); flags override it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--crash-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: SIGKILL
    defaults = TrainConfig(train="")
    for f in TrainConfig.__dataclass_fields__.values():
        if f.name in ("train", "val"):
            continue
        flag = "--" + f.name.replace("_", "-")
        d = getattr(defaults, f.name)
        if isinstance(d, bool):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        elif f.name == "step_epochs":
            p.add_argument(flag, dest=f.name, type=int, nargs="*", default=None)
        else:
            typ = type(d) if d is not None else (int if f.name in ("drw_epoch", "epoch_length", "max_steps") else str)
            p.add_argument(flag, dest=f.name, type=typ, default=None, help=f"default {d}")


def config_from_args(args):
    from fastcas.train import TrainConfig

    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    overrides["train"], overrides["val"] = args.train, args.val
    if "step_epochs" in overrides:
        overrides["step_epochs"] = tuple(overrides["step_epochs"])
    if args.recipe:
        path = Path(args.recipe)
        if not path.exists():
            path = RECIPES / f"{args.recipe}.json"
        if not path.exists():
            raise FileNotFoundError(f"no recipe {args.recipe!r} (not a file, not in {RECIPES})")
        return TrainConfig.from_file(path, **overrides)
    return TrainConfig(**overrides)


def run(args) -> int:
    from fastcas.train import train

    cfg = config_from_args(args)
    final = train(cfg, resume=args.resume, crash_at_step=args.crash_at_step)
    rep = final["report"]
    if rep:
        print(f"final top-1 {rep['top1']:.4f}; report in {cfg.out}")
    return 0
