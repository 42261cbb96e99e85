"""``Loader.state_dict`` / ``Loader.load_state_dict``: what a checkpoint of a loader holds and
how a state is checked and continued (exact mode: the global position, at any world size with
the same global batch; streaming mode: each stream's StreamingSampler state). Functions of the
loader (``self``), so :mod:`fastcas.loading.loader` keeps only construction and iteration."""
from __future__ import annotations

from fastcas.loading import checks
from fastcas.loading.config import DEFAULT_SHUFFLE_BUFFER
from fastcas.sampling.geometry import check_same, digest
from fastcas.sampling.protocol import weights_digest

STREAM_KEYS = ("dataset", "seed", "weights", "foreground_weights", "weights_digest", "epoch_length",
           "global_batch", "last_batch", "train")
AUGMENT_KEYS = ("image_size", "mix", "alpha", "mix_prob", "mix_options", "transforms", "mix_epochs", "shuffle_buffer")

def config_digest(self) -> dict:
    """What must match to resume (``state['config']``); the dataset and weights digests are O(1) and kept."""
    cfg = self.config
    if "dataset" not in self._digests:
        self._digests["dataset"] = self.reader.digest  # O(1) for a columnar manifest
        self._digests["weights"] = weights_digest(self.streams, cfg.cas_power, cfg.cmo_power)
    return {
        "dataset": self._digests["dataset"],
        "seed": cfg.seed,
        "weights": cfg.weights,
        "foreground_weights": cfg.foreground_weights,
        "weights_digest": self._digests["weights"],
        "epoch_length": self.geometry.num_samples if self.geometry else cfg.epoch_length or len(self.reader),
        "last_batch": cfg.last_batch,
        "global_batch": self.geometry.global_batch if self.geometry else cfg.batch_size * self.world_size,
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


def _streaming_keys(cfg) -> dict:
    """Streaming mode's shuffle buffer orders the epoch: mid-epoch it must match."""
    if cfg.mode != "streaming":
        return {}

    return {"shuffle_buffer": DEFAULT_SHUFFLE_BUFFER if cfg.shuffle_buffer is None else cfg.shuffle_buffer}

def legacy_weights_digest(self) -> str:
    """The weights digest fastcas wrote before O(1) digests (a hash of every CDF value):
    computed only to accept an older checkpoint."""
    return digest([s.legacy_digest() for s in self.streams], self.config.cas_power, self.config.cmo_power)

def state_dict(self) -> dict:
    """Where the next batch comes from: ``epoch``, ``position`` (the global position consumed
    in the epoch, a multiple of the global batch), this rank's ``step``, the geometry it was
    saved at, and ``config`` (what must match to resume: dataset, seed, weights and their
    digest, epoch length, global batch, mixing and image size). Everything else is a
    function of the config."""
    position = self.geometry.consumed(self.step) if self.geometry else self.step * self.config.batch_size
    extra = {}
    if self.config.mode == "streaming":  # each stream's StreamingSampler state (fastcas.loading.streams)
        extra["streaming"] = [s.state(self.epoch, self.step * self.config.batch_size) for s in self.streams]
    return {
        "mode": self.config.mode,
        **extra,
        "epoch": self.epoch,
        "step": self.step,
        "position": position,
        "seed": self.config.seed,
        "rank": self.rank,
        "world_size": self.world_size,
        "batch_size": self.config.batch_size,
        "global_batch": self.world_size * self.config.batch_size,
        "config": config_digest(self),
        "skipped": dict(self.skipped),
        "quarantine": sorted(self.reader.keys[i] for i in self._quarantine),
    }

def load_state_dict(self, state: dict) -> None:
    """Continue from ``state``, saved by this loader or by one at another world size and
    per-rank batch with the same global batch (training). Raises ValueError naming what
    differs for a state of another dataset, seed, weights, epoch length or global batch
    (and, mid-epoch, of other mixing settings or image size). A state at the end of its
    epoch starts the next epoch. Evaluation loaders and states without ``position``
    (older fastcas) continue at ``step`` with the same world size only."""
    cfg = self.config
    self._check_not_iterating("load_state_dict")
    checks.check_state_numbers(state)
    saved_mode = state.get("mode", "exact")
    if saved_mode != cfg.mode or (cfg.mode == "streaming" and "streaming" not in state):
        raise ValueError(f"Loader.load_state_dict: the state was saved by a mode={saved_mode!r} loader, this "
                         f"loader has mode={cfg.mode!r}; the two modes read different streams, so a state of "
                         "one cannot continue the other (start the next epoch with set_epoch instead)")
    if state.get("seed", cfg.seed) != cfg.seed:
        raise ValueError(f"state was saved with seed {state['seed']}, this loader has seed {cfg.seed}")
    if self.geometry is None or "position" not in state:
        checks.check_state_config(self, state, config_digest(self), STREAM_KEYS, AUGMENT_KEYS, legacy_weights_digest)
        if state.get("world_size", self.world_size) != self.world_size and int(state["step"]) > 0:
            raise ValueError(f"state was saved at world size {state['world_size']} mid-epoch without a global "
                             f"position; this loader has world size {self.world_size}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
    else:
        saved, now = state.get("config", {}), config_digest(self)
        if "global_batch" not in saved and "global_batch" in state:
            saved = {**saved, "global_batch": state["global_batch"]}
        where = "Loader.load_state_dict"
        if saved.get("global_batch", now["global_batch"]) != now["global_batch"]:
            raise ValueError(f"{where}: the state was saved with another global batch: global_batch "
                             f"(saved {saved['global_batch']}, now {now['global_batch']} = batch_size "
                             f"{cfg.batch_size} x world size {self.world_size}); to resume mid-epoch at world "
                             f"size {self.world_size} use a per-rank batch of "
                             f"{saved['global_batch']} / {self.world_size}, or start the next epoch")
        if saved.get("weights_digest") not in (None, now["weights_digest"]) and \
                saved["weights_digest"] == legacy_weights_digest(self):
            now = {**now, "weights_digest": saved["weights_digest"]}  # a state of fastcas before O(1) digests
        check_same(saved, now, STREAM_KEYS, where)
        step = self.geometry.step_at(int(state["position"]), where)
        checks.check_step_in_epoch(self, step, f"position {state['position']}")
        if 0 < step < self.steps:
            check_same(saved, now, AUGMENT_KEYS, where + " (resuming mid-epoch)")
        self.epoch, self.step = int(state["epoch"]), step
        if cfg.mode == "streaming":
            for stream, saved_stream in zip(self.streams, state["streaming"]):
                stream.restore(saved_stream, self.epoch, step * cfg.batch_size, int(state["world_size"]))
            self.close()  # the pipeline's source carries the streams: rebuild
    self.skipped = dict(state.get("skipped", {}))
    quarantine = set()
    if state.get("quarantine"):
        at = self.reader.indices_of(state["quarantine"])
        quarantine = {int(i) for i in at if i >= 0}
    if quarantine != self._quarantine:
        self._quarantine = quarantine
        self.close()  # the pipeline's source carries the quarantine: rebuild
