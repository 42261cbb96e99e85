"""The consumer's place in the stream and what a checkpoint of a Loader holds
(``Loader.state_dict`` / ``Loader.load_state_dict``): exact mode, the global position (resumable
at any world size with the same global batch); streaming mode, each stream's StreamingSampler
state too. :class:`Cursor` owns that state and its two methods."""
from __future__ import annotations

from fastcas.loading import checks
from fastcas.loading.config import DEFAULT_SHUFFLE_BUFFER
from fastcas.loading.plan import StepPlan
from fastcas.sampling.geometry import check_same, digest
from fastcas.sampling.protocol import weights_digest

# what must match to continue a stream; the second group only matters mid-epoch
STREAM_KEYS = ("dataset", "seed", "weights", "foreground_weights", "weights_digest", "epoch_length",
               "global_batch", "last_batch", "train")
AUGMENT_KEYS = ("image_size", "mix", "alpha", "mix_prob", "mix_options", "transforms", "mix_epochs", "shuffle_buffer")
WHERE = "Loader.load_state_dict"


def _streaming_keys(cfg) -> dict:
    """Streaming mode's shuffle buffer orders the epoch: mid-epoch it must match."""
    if cfg.mode != "streaming":
        return {}
    return {"shuffle_buffer": DEFAULT_SHUFFLE_BUFFER if cfg.shuffle_buffer is None else cfg.shuffle_buffer}


class Cursor:
    """Where the consumer is, and the checkpoint of it.

    Owned by the consumer thread (the one iterating the Loader and calling ``set_epoch``,
    ``state_dict``, ``load_state_dict``): ``epoch``, ``step`` (the next batch handed over) and
    ``skipped`` (unreadable samples substituted in the batches handed over, by key: counted when
    a batch is received, not when it is produced). Reads the immutable
    :class:`~fastcas.loading.plan.StepPlan` and the runner's ``quarantine`` (a frozenset the
    runner replaces and never mutates); :meth:`load_state_dict` runs between iterations only,
    so it may hand the runner a new quarantine and close its pipeline."""

    def __init__(self, plan: StepPlan, reader, runner):
        self.plan, self.reader, self.runner = plan, reader, runner
        self.epoch, self.step = 0, 0
        self.skipped: dict[str, int] = {}
        self._digests: dict = {}

    @property
    def steps(self) -> int:
        return self.plan.steps

    def config_digest(self) -> dict:
        """What must match to resume (``state['config']``); the dataset and weights digests are O(1) and kept."""
        p = self.plan
        cfg, geo = p.config, p.geometry
        if "dataset" not in self._digests:
            self._digests["dataset"] = self.reader.digest  # O(1) for a columnar manifest
            self._digests["weights"] = weights_digest(p.streams, cfg.cas_power, cfg.cmo_power)
        return {
            "dataset": self._digests["dataset"],
            "seed": cfg.seed,
            "weights": cfg.weights,
            "foreground_weights": cfg.foreground_weights,
            "weights_digest": self._digests["weights"],
            "epoch_length": geo.num_samples if geo else cfg.epoch_length or len(self.reader),
            "last_batch": cfg.last_batch,
            "global_batch": geo.global_batch if geo else cfg.batch_size * p.world_size,
            "train": cfg.train,
            "image_size": cfg.image_size,
            "mix": cfg.mix_kind,
            "alpha": cfg.alpha,
            "mix_prob": cfg.mix_prob,
            "mix_options": dict(cfg.mix_options),
            "transforms": repr(cfg.transforms),
            "mix_epochs": f"{cfg.mix_start_epoch}:{cfg.mix_stop_epoch}",
            **_streaming_keys(cfg),
        }

    def legacy_weights_digest(self) -> str:
        """The weights digest fastcas wrote before O(1) digests (a hash of every CDF value):
        computed only to accept an older checkpoint."""
        cfg = self.plan.config
        return digest([s.legacy_digest() for s in self.plan.streams], cfg.cas_power, cfg.cmo_power)

    def state_dict(self) -> dict:
        """See :meth:`fastcas.loading.loader.Loader.state_dict` (the format is fixed: old
        checkpoints load, new ones load in older fastcas)."""
        p, cfg = self.plan, self.plan.config
        position = p.geometry.consumed(self.step) if p.geometry else self.step * cfg.batch_size
        extra = {}
        if cfg.mode == "streaming":  # each stream's StreamingSampler state (fastcas.loading.streams)
            extra["streaming"] = [s.state(self.epoch, self.step * cfg.batch_size) for s in p.streams]
        return {
            "mode": cfg.mode,
            **extra,
            "epoch": self.epoch,
            "step": self.step,
            "position": position,
            "seed": cfg.seed,
            "rank": p.rank,
            "world_size": p.world_size,
            "batch_size": cfg.batch_size,
            "global_batch": p.world_size * cfg.batch_size,
            "config": self.config_digest(),
            "skipped": dict(self.skipped),
            "quarantine": sorted(self.reader.keys[i] for i in self.runner.quarantine),
        }

    def load_state_dict(self, state: dict) -> None:
        """See :meth:`fastcas.loading.loader.Loader.load_state_dict` (the caller has checked that
        no other thread iterates and stopped this thread's producer)."""
        cfg = self.plan.config
        checks.check_state_numbers(state)
        saved_mode = state.get("mode", "exact")
        if saved_mode != cfg.mode or (cfg.mode == "streaming" and "streaming" not in state):
            raise ValueError(f"Loader.load_state_dict: the state was saved by a mode={saved_mode!r} loader, this "
                             f"loader has mode={cfg.mode!r}; the two modes read different streams, so a state of "
                             "one cannot continue the other (start the next epoch with set_epoch instead)")
        if state.get("seed", cfg.seed) != cfg.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this loader has seed {cfg.seed}")
        if self.plan.geometry is None or "position" not in state:
            self._load_step(state)
        else:
            self._load_position(state)
        self.skipped = dict(state.get("skipped", {}))
        quarantine = set()
        if state.get("quarantine"):
            at = self.reader.indices_of(state["quarantine"])
            quarantine = {int(i) for i in at if i >= 0}
        self.runner.set_quarantine(frozenset(quarantine))  # the pipeline's source carries it: rebuilt if changed

    def _load_step(self, state: dict) -> None:
        """Evaluation loaders and states without ``position`` (older fastcas): at ``step``, with
        the same world size only (mid-epoch)."""
        world_size = self.plan.world_size
        checks.check_state_config(self, state, self.config_digest(), STREAM_KEYS, AUGMENT_KEYS,
                                  Cursor.legacy_weights_digest)
        if state.get("world_size", world_size) != world_size and int(state["step"]) > 0:
            raise ValueError(f"state was saved at world size {state['world_size']} mid-epoch without a global "
                             f"position; this loader has world size {world_size}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def _load_position(self, state: dict) -> None:
        """A training state with a global ``position``: at any world size with the same global batch."""
        p, cfg = self.plan, self.plan.config
        saved, now = state.get("config", {}), self.config_digest()
        if "global_batch" not in saved and "global_batch" in state:
            saved = {**saved, "global_batch": state["global_batch"]}
        if saved.get("global_batch", now["global_batch"]) != now["global_batch"]:
            raise ValueError(f"{WHERE}: the state was saved with another global batch: global_batch "
                             f"(saved {saved['global_batch']}, now {now['global_batch']} = batch_size "
                             f"{cfg.batch_size} x world size {p.world_size}); to resume mid-epoch at world "
                             f"size {p.world_size} use a per-rank batch of "
                             f"{saved['global_batch']} / {p.world_size}, or start the next epoch")
        if saved.get("weights_digest") not in (None, now["weights_digest"]) and \
                saved["weights_digest"] == self.legacy_weights_digest():
            now = {**now, "weights_digest": saved["weights_digest"]}  # a state of fastcas before O(1) digests
        check_same(saved, now, STREAM_KEYS, WHERE)
        step = p.geometry.step_at(int(state["position"]), WHERE)
        checks.check_step_in_epoch(self, step, f"position {state['position']}")
        if 0 < step < p.steps:
            check_same(saved, now, AUGMENT_KEYS, WHERE + " (resuming mid-epoch)")
        self.epoch, self.step = int(state["epoch"]), step
        if cfg.mode == "streaming":
            for stream, saved_stream in zip(p.streams, state["streaming"]):
                stream.restore(saved_stream, self.epoch, step * cfg.batch_size, int(state["world_size"]))
            self.runner.close()  # the pipeline's source carries the streams: rebuild
