"""Training and evaluation with fastcas loaders: CE / CMO / CAS recipes, DDP, exact resume.

One :class:`TrainConfig` (frozen, validated) describes a run; :func:`train` runs it and
writes ``OUT/metrics.jsonl`` (one line per evaluation), ``OUT/eval-epochNNN.json`` and
``.png`` reports, ``OUT/checkpoint.pt`` (atomic, every ``checkpoint_every`` steps and at
each epoch end) and ``OUT/final.json``. Under ``torchrun`` the process group is set up from
the environment (NCCL on GPU, gloo on CPU) and every rank takes its own block of each step of
the epoch's one global sample stream (:mod:`fastcas.sampling.geometry`).

``--resume`` continues from the checkpoint at any ``torchrun --nproc_per_node`` as long as the
global batch (``--batch-size`` x processes) is the same: the data stream (samples, crops, flips,
mixing parameters, step count and learning-rate schedule) continues exactly. The model weights
then cannot be bitwise identical to an uninterrupted run at the old world size: gradients are
reduced in another order, and BatchNorm statistics are per rank (computed over ``--batch-size``
samples). At the same world size the resume is bitwise exact.
"""
from __future__ import annotations

import io
import json
import math
import os
import signal
import time
from dataclasses import InitVar, asdict, dataclass, fields
from pathlib import Path

import numpy as np

from fastcas.core.io import atomic_write_bytes, atomic_write_json
from fastcas.sampling import weights as sample_weights
from fastcas.train.metrics import accuracy_report
from fastcas.train.models import MODELS


@dataclass(frozen=True)
class TrainConfig:
    # the training dataset (a path). Named train_data, not train: LoaderConfig.train is a bool (training
    # or evaluation order); ``train=`` (the recipe key, the CLI's TRAIN, run.json of earlier runs) sets it too
    train_data: str | None = None
    val: str | None = None
    out: str = "runs/fastcas"
    model: str = "resnet32"
    epochs: int = 10
    batch_size: int = 128
    image_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    schedule: str = "cosine"          # cosine | step (fastcas.train.schedule)
    step_epochs: tuple = ()           # for the step schedule: epochs from which lr = lr * step_factors[i]
    step_factors: tuple = ()          # multipliers of lr (relative to lr) from each step epoch; () = 0.1, 0.01, ...
    warmup_epochs: int = 0
    warmup_per: str = "step"          # step: linear ramp per step; epoch: lr * (e + 1) / warmup (reference code)
    weights: str = "uniform"
    foreground_weights: str | None = None  # "cmo" for the CMO recipe
    threshold: float | None = None    # over/undersampling threshold (samples per class; None: the defaults)
    policy: str | None = None         # augmentation policy of the Loader ("cifar", "imagenet"; None: its default)
    mix: str = "none"
    alpha: float = 1.0
    mix_prob: float = 1.0
    mix_mode: str = "auto"            # elem: per sample; batch: one decision/lambda/box per batch; auto: batch for CMO
    mix_start: int = 0                # mix only while mix_start <= epoch < epochs - mix_end (CMO schedule)
    mix_end: int = 0
    b: float = 1.2
    r: float = 1.0
    scores: str | None = None
    val_scores: str | None = None
    loss_weights: str = "none"
    loss_weight_factor: float = 2.0   # upweight-low: the low-frequency classes' loss factor (others 1)
    loss_beta: float | None = None    # effective: beta (None: (N-1)/N; the DRW reference code: 0.9999)
    drw_epoch: int | None = None      # deferred re-weighting: loss weights only from this epoch
    label_smoothing: float = 0.0
    epoch_length: int | None = None
    many: int = 100
    few: int = 20
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = 1
    py_workers: int = 1
    num_threads: int = 2
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    max_steps: int | None = None      # stop after this many steps in all (dry runs)
    progress: bool = True             # a tqdm bar per epoch on rank 0 (steps, img/s, loss)
    connect_timeout: float = 10.0     # remote shards: seconds to connect (fastcas.dataset.fetch.RemoteOptions)
    read_timeout: float = 30.0        # remote shards: seconds without a byte (no limit on a whole download)
    retries: int = 3                  # remote shards: further attempts after a transient failure
    train: InitVar[str | None] = None  # the same as train_data (its recipe / CLI / run.json name)

    def __post_init__(self, train=None):
        if train is not None:
            if self.train_data is not None and self.train_data != train:
                raise ValueError(f"train={train!r} and train_data={self.train_data!r} both given: they name the "
                                 "same field (the training dataset); give one")
            object.__setattr__(self, "train_data", train)  # frozen: set once, during construction
        if self.train_data is None:
            raise ValueError("train_data (the training dataset, `fastcas train TRAIN`) is required")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        from fastcas.train import schedule

        schedule.check(self)
        if self.mix_mode not in ("auto", "elem", "batch"):
            raise ValueError(f"mix_mode must be 'auto', 'elem' or 'batch', got {self.mix_mode!r}")
        if not (math.isfinite(self.loss_weight_factor) and self.loss_weight_factor > 0):
            raise ValueError(f"loss_weight_factor must be a finite number > 0, got {self.loss_weight_factor!r}")
        if self.loss_beta is not None and not 0 <= self.loss_beta < 1:
            raise ValueError(f"loss_beta must be in [0, 1), got {self.loss_beta!r}")
        if self.loss_weights not in sample_weights.LOSS_WEIGHTS:
            raise ValueError(
                f"unknown loss weights {self.loss_weights!r}; expected one of {', '.join(sample_weights.LOSS_WEIGHTS)}"
            )
        for name in ("epochs", "batch_size", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.mix_start + self.mix_end > self.epochs:
            raise ValueError("mix_start + mix_end leave no epoch to mix in")
        from fastcas.loading.config import _check_int

        _check_int("batch_size", self.batch_size, 1)
        _check_int("image_size", self.image_size, 8)
        _check_int("num_threads", self.num_threads, 1)
        _check_int("py_workers", self.py_workers, 0)
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        self.remote()  # validates the three remote fields

    @classmethod
    def from_file(cls, path, **overrides) -> "TrainConfig":
        """A recipe (JSON) with ``overrides`` (e.g. data paths) applied, validated."""
        data = json.loads(Path(path).read_text())
        data.pop("description", None)
        data.pop("sources", None)  # per value: the reference file and line it follows (docs/recipes.md)
        known = {f.name for f in fields(cls)} | {"train"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("step_epochs", "step_factors"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def remote(self):
        """The remote-shard policy of this run (``ValueError`` naming a bad field)."""
        from fastcas.dataset.fetch import RemoteOptions

        return RemoteOptions(connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                             retries=self.retries)

    def mixing_at(self, epoch: int) -> bool:
        from fastcas.train.schedule import mixing_at

        return mixing_at(self, epoch)

    @property
    def mixing_mode(self) -> str:
        """"elem" or "batch": ``mix_mode`` with "auto" resolved (batch for a two-stream CMO
        recipe, as naver-ai/cmo decides, draws lambda and cuts one box once per batch)."""
        if self.mix_mode != "auto":
            return self.mix_mode
        return "batch" if self.foreground_weights else "elem"


class _Dist:
    """rank / world size / device from torchrun's environment, or a single process."""

    def __init__(self, device: str):
        import torch

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        from fastcas.loading.config import resolve_device

        device = resolve_device(device)
        self.device = device
        if device == "cuda":
            torch.cuda.set_device(local)
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")

    def all_sum(self, array: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return array
        import torch

        t = torch.from_numpy(np.ascontiguousarray(array, np.float64)).to(self.device)
        torch.distributed.all_reduce(t)
        return t.cpu().numpy()


def _loaders(cfg: TrainConfig, dist: _Dist):
    from fastcas.loading.loader import Loader

    common = dict(image_size=cfg.image_size, device=dist.device, seed=cfg.seed, rank=dist.rank, remote=cfg.remote(),
                  world_size=dist.world_size, py_workers=cfg.py_workers, num_threads=cfg.num_threads,
                  channels_last=cfg.channels_last and dist.device == "cuda")
    common.update(policy_options(cfg))
    powers = dict(cas_power=cfg.b, cmo_power=cfg.r)  # the recipe's b and r: the training streams' weights
    scores = cfg.scores
    plain = Loader(cfg.train_data, cfg.batch_size, weights=cfg.weights, scores=scores, epoch_length=cfg.epoch_length,
                   label_smoothing=cfg.label_smoothing, threshold=cfg.threshold, **powers, **common)
    mixed = None
    if cfg.mix != "none":
        mixed = Loader(cfg.train_data, cfg.batch_size, weights=cfg.weights, scores=scores,
                       foreground_weights=cfg.foreground_weights, mix=cfg.mix, alpha=cfg.alpha,
                       mix_prob=cfg.mix_prob, epoch_length=cfg.epoch_length, threshold=cfg.threshold,
                       mix_options=_mix_options(cfg), label_smoothing=cfg.label_smoothing, **powers, **common)
    val = None
    if cfg.val:  # refused unless its class ids mean the training set's classes (fastcas.dataset.classes)
        val = Loader(cfg.val, cfg.batch_size, train=False, last_batch="partial", class_names=plain.reader, **common)
    if dist.rank == 0:
        for note in plain.notes:  # e.g. CAS weights moving class mass (also a ClassMassShiftWarning)
            print(f"warning: {note}", flush=True)
    return plain, mixed, val


def _mix_options(cfg: TrainConfig) -> dict:
    """The mixing loader's ``mix_options``: ``{"mode": "batch"}`` for batch-level mixing; {} for
    per-sample mixing (the Loader's default: a checkpoint of an earlier run, saved with {}, resumes)."""
    return {"mode": "batch"} if cfg.mixing_mode == "batch" else {}


def policy_options(cfg: TrainConfig) -> dict:
    """Loader options for the recipe's augmentation policy (fastcas.loading.transforms): {} keeps
    the Loader's default ("imagenet"); "cifar" also takes the CIFAR mean/std, as the reference's
    ``transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))`` (naver-ai/cmo
    cifar_train.py)."""
    if cfg.policy is None:
        return {}
    if cfg.policy == "cifar":
        from fastcas.loading.transforms import CIFAR_MEAN, CIFAR_STD

        return {"augment": "cifar", "mean": CIFAR_MEAN, "std": CIFAR_STD}
    return {"augment": cfg.policy}


def _lr_at(cfg: TrainConfig, progress: float) -> float:
    """Learning rate at ``progress`` (epochs, fractional): :func:`fastcas.train.schedule.lr_at`."""
    from fastcas.train.schedule import lr_at

    return lr_at(cfg, progress)


def evaluate(model, loader, train_counts, cfg: TrainConfig, dist: _Dist, val_cas=None) -> dict:
    import torch

    model.eval()
    n = len(loader.reader)
    pred = np.zeros(n)  # per global sample, filled by the rank that owns it, summed over ranks
    seen = np.zeros(n)
    order = loader.streams[0]  # the rank's samples (fastcas.loading.source.SequentialIndex)
    with torch.no_grad():
        for batch in loader:  # (images, labels) or, with valid_mask, (images, labels, valid)
            step = loader.step - 1  # the batch just yielded
            # every rank yields as many batches; padding repeats (valid False) are not counted
            keep = loader.valid(step)
            idx = order.index_at(loader.epoch, loader.positions(step))[keep]
            pred[idx] = model(batch[0]).argmax(1).cpu().numpy()[keep]
            seen[idx] = 1
    pred, seen = dist.all_sum(pred), dist.all_sum(seen)
    model.train()
    if not np.array_equal(seen, np.ones(n)):  # else a sample no rank evaluated would count as class 0
        raise RuntimeError(f"evaluation covered {int((seen == 1).sum())} of {n} samples once "
                           f"({int((seen == 0).sum())} never, {int((seen > 1).sum())} more than once)")
    labels = loader.reader.labels
    report = accuracy_report(labels, pred.astype(np.int64), train_counts, cas=val_cas, many=cfg.many, few=cfg.few)
    report["samples"] = int(seen.sum())
    return report


def _r4(v) -> str:
    """An accuracy for the console: 4 decimals, '-' for a group with no samples."""
    return "-" if v is None else f"{v:.4f}"


def _save_report(out: Path, epoch: int, report: dict, class_names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_json(out / f"eval-epoch{epoch:03d}.json", report)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    pc = [a if a is not None else 0 for a in report["per_class"]]
    ax[0].bar(range(len(pc)), pc)
    ax[0].set_title(f"per-class top-1 (epoch {epoch})")
    ax[0].set_xlabel("class (training order)")
    groups = [
        g for g in ("top1", "many", "medium", "few", "cas_low", "cas_middle", "cas_high") if report.get(g) is not None
    ]
    ax[1].bar(groups, [report[g] for g in groups])
    ax[1].set_ylim(0, 1)
    ax[1].set_title("accuracy by group")
    ax[1].tick_params(axis="x", rotation=30)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(out / f"eval-epoch{epoch:03d}.png", buf.getvalue())


def write_metrics_line(path: Path, line: dict) -> None:
    """Append one evaluation ``line`` (with ``epoch``) to ``metrics.jsonl``, atomically, after
    dropping earlier lines of that epoch or later ones: a run killed after writing an epoch's line
    but before its checkpoint evaluates that epoch again on ``--resume``, and the file keeps
    one line per epoch (a torn last line of an older, non-atomic writer is dropped too)."""
    kept = []
    if path.exists():
        for text in path.read_text().splitlines():
            try:
                if json.loads(text).get("epoch", -1) < line["epoch"]:
                    kept.append(text)
            except (ValueError, AttributeError):
                continue
    atomic_write_bytes(path, "".join(t + "\n" for t in kept + [json.dumps(line)]).encode())


def _amp_dtype(cfg: TrainConfig, device: str):
    """Autocast dtype, or None for full precision: bfloat16 where the GPU supports it (no loss
    scaler, hence no host synchronisation per step), float16 with a GradScaler otherwise."""
    import torch

    if not (cfg.amp and device == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _load_checkpoint(path) -> dict:
    """A checkpoint's contents on the host, whatever device wrote it, loaded safely
    (:func:`fastcas.train.rundir.load_checkpoint`: ``weights_only=True``). The model and
    optimizer states are copied to their parameters' device by ``load_state_dict``; the torch
    RNG state must stay a CPU ByteTensor (``map_location=<cuda>`` moved it to the GPU and
    ``torch.set_rng_state`` raised "RNG state must be a torch.ByteTensor")."""
    from fastcas.train.rundir import load_checkpoint

    return load_checkpoint(path)


def _restore_rng(saved) -> None:
    """Restore torch's CPU generator from a saved ``torch.get_rng_state()``."""
    import torch

    torch.set_rng_state(saved.to("cpu", torch.uint8))


def train(cfg: TrainConfig, *, resume: bool = False, crash_at_step: int | None = None,
          overwrite: bool = False) -> dict:
    """Run ``cfg``; returns the final report (top-1 etc. of the last evaluation).
    ``cfg.out`` is locked for the run and must be empty unless ``resume`` (a compatible
    configuration, see :mod:`fastcas.train.rundir`) or ``overwrite`` (clears the earlier run)."""
    import torch
    import torch.nn.functional as F

    from fastcas.train.models import build_model

    torch.manual_seed(cfg.seed)  # model initialisation only; data randomness is fastcas's own
    dist = _Dist(cfg.device)
    out = Path(cfg.out)
    from fastcas.train.rundir import claim_run_dir  # lock, non-empty OUT and resume checks (hygiene)

    if cfg.val:  # refused before OUT is claimed: a fixed --val re-runs into the same OUT
        from fastcas.dataset.classes import check_same_classes, class_names_of

        check_same_classes(cfg.train_data, class_names_of(cfg.val), what=str(cfg.val))
    run_dir = claim_run_dir(cfg, resume=resume, overwrite=overwrite, rank=dist.rank, world_size=dist.world_size)
    out.mkdir(parents=True, exist_ok=True)
    plain, mixed, val = _loaders(cfg, dist)
    reader = plain.reader
    counts = reader.class_counts
    val_cas = None
    if cfg.val_scores and val is not None:
        from fastcas.dataset.scorefile import read_scores

        val_cas = read_scores(cfg.val_scores, keys=val.reader.keys, labels=val.reader.labels).cas
    model = build_model(cfg.model, reader.num_classes).to(dist.device)
    if cfg.channels_last and dist.device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = model
    if dist.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if dist.device == "cuda" else None
        )
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp_dtype = _amp_dtype(cfg, dist.device)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # bf16 needs no scaler
    if dist.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune once
    class_w = torch.as_tensor(sample_weights.loss_weights(counts, cfg.loss_weights, beta=cfg.loss_beta,
                                                          factor=cfg.loss_weight_factor),
                              dtype=torch.float32, device=dist.device)
    from fastcas.train.losses import NORMALISER, weighted_cross_entropy
    ones = torch.ones_like(class_w)
    epoch, global_step = 0, 0
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        state = run_dir.state if run_dir.state is not None else _load_checkpoint(ckpt_path)
        run_dir.state = None  # not kept for the whole run
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        epoch, global_step = state["epoch"], state["global_step"]
        _restore_rng(state["torch_rng"])
        active = mixed if (mixed is not None and cfg.mixing_at(epoch)) else plain
        active.load_state_dict(state["loader"])
    steps_per_epoch = len(plain)

    def save(loader):
        if dist.rank != 0:
            return
        buf = io.BytesIO()
        from fastcas.train.rundir import plain_state

        # tensors and plain Python types only: the checkpoint loads with weights_only=True
        torch.save(plain_state({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scaler": scaler.state_dict(), "epoch": loader.epoch, "global_step": global_step,
                                "loader": loader.state_dict(), "torch_rng": torch.get_rng_state(),
                                "config": asdict(cfg)}), buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())

    report: dict = {}
    t0 = time.time()
    while epoch < cfg.epochs:
        loader = mixed if (mixed is not None and cfg.mixing_at(epoch)) else plain
        for idle in (plain, mixed):
            if idle is not None and idle is not loader:
                idle.close()  # its pipeline and workers (GPU memory on cuda) are not needed now
        if loader.epoch != epoch:
            loader.set_epoch(epoch)
        use_w = cfg.drw_epoch is None or epoch >= cfg.drw_epoch
        from fastcas.train.monitor import EpochProgress
        bar = EpochProgress(epoch, len(loader), loader.step, cfg.batch_size, dist.rank, cfg.progress)
        for images, targets in loader:
            progress = epoch + (loader.step - 1) / steps_per_epoch  # this batch's start (step counts it)
            for g in opt.param_groups:
                g["lr"] = float(_lr_at(cfg, progress))  # a Python float: checkpoints hold no NumPy objects
            if targets.dtype == torch.int64:
                targets = F.one_hot(targets, reader.num_classes).float()
            with torch.autocast(dist.device, enabled=use_amp, dtype=amp_dtype or torch.bfloat16):
                logits = net(images.float() if not use_amp else images)
            logp = torch.log_softmax(logits.float(), dim=1)
            # normalised as the weighting's reference code does (fastcas.train.losses)
            loss = weighted_cross_entropy(logp, targets, class_w if use_w else ones,
                                          NORMALISER[cfg.loss_weights])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            global_step += 1
            bar.update(loss.detach())
            if global_step % cfg.checkpoint_every == 0 and loader.step < len(loader):
                save(loader)  # (after an epoch's last step, the end-of-epoch checkpoint follows)
            if crash_at_step is not None and global_step == crash_at_step:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: a real crash, no clean-up
            if cfg.max_steps is not None and global_step >= cfg.max_steps:
                break
        bar.close()
        epoch_done = loader.step >= len(loader)
        reached = cfg.max_steps is not None and global_step >= cfg.max_steps
        if reached and not epoch_done:
            save(loader)
            if dist.rank == 0:
                print(f"stopped by max_steps={cfg.max_steps} at step {loader.step} of {len(loader)} in epoch {epoch}; "
                      f"checkpoint saved", flush=True)
            break
        if val is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            report = evaluate(net, val, counts, cfg, dist, val_cas)
            val.close()  # rebuilt at the next evaluation; training does not pay for its workers
            report.update(epoch=epoch, loss=loss.item(), seconds=time.time() - t0)
            if dist.rank == 0:
                _save_report(out, epoch, report, reader.class_names)
                write_metrics_line(out / "metrics.jsonl", {k: v for k, v in report.items() if k != "per_class"})
                print(
                    f"epoch {epoch}: "
                    + " ".join(f"{g} {_r4(report.get(g))}" for g in ("top1", "many", "medium", "few"))
                    + f" loss {loss.item():.3f}",
                    flush=True,
                )
        elif val is None and dist.rank == 0 and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            print(f"epoch {epoch}: loss {loss.item():.3f} (no --val: no evaluation)", flush=True)
        if dist.rank == 0:  # drawn vs target per class / attribute value (fastcas.train.monitor)
            from fastcas.train.monitor import log_epoch
            log_epoch(out, epoch, loader, cfg.scores)
        epoch += 1
        # the checkpoint holds the state of the loader the next epoch uses (CMO switches between a
        # plain and a mixing loader, whose configurations differ: a resume checks that they match)
        loader = mixed if (mixed is not None and cfg.mixing_at(epoch)) else plain
        loader.set_epoch(epoch)
        save(loader)
        if reached:
            break
    final = {"config": asdict(cfg), "report": report, "global_step": global_step,
             "skipped": {**plain.skipped, **(mixed.skipped if mixed else {})}}
    if dist.rank == 0:
        atomic_write_json(out / "final.json", final)
        sd = io.BytesIO()
        torch.save(model.state_dict(), sd)
        atomic_write_bytes(out / "model.pt", sd.getvalue())
    for l_ in (plain, mixed, val):
        if l_ is not None:
            l_.close()
    run_dir.release()
    return final
