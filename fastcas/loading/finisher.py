"""The finisher of a :class:`~fastcas.loading.loader.Loader`: one step's pipeline outputs ->
the batch the consumer receives (issue 33).

Torch finishing, on the images' device with no host synchronisation: the mixing the DALI graph
did not apply (:mod:`fastcas.mix`), the targets (soft [B, K] or hard [B]), the copies of host
outputs (labels, ``lam``, the valid mask) to the device, and the indices of unreadable samples the
source substituted (counted by the consumer when it receives the batch). It runs on the thread
that runs the :class:`~fastcas.loading.runner.Runner` (the producer thread, or the consumer
with ``prefetch=0``).
"""
from __future__ import annotations

from fastcas import mix
from fastcas.loading import pipeline
from fastcas.loading.layout import BatchLayout
from fastcas.loading.mixsched import mix_at
from fastcas.loading.plan import StepPlan
from fastcas.mix.kinds import KINDS as MIX_KINDS


class Finisher:
    """``finisher(outputs, epoch, step)`` -> ``(batch, skipped)``.

    ``batch``: ``(images, targets)``, or ``(images, targets, valid)`` with ``valid_mask``
    (bool [n] on the images' device); ``skipped``: list of int, the dataset indices of the unreadable samples
    the source substituted in this batch. Holds only immutable inputs (the
    :class:`~fastcas.loading.plan.StepPlan`, the pipeline's :class:`~fastcas.loading.layout.BatchLayout`,
    ``num_classes``), so any one thread may call it; the Loader calls it on the
    thread that runs its runner."""

    def __init__(self, plan: StepPlan, layout: BatchLayout, num_classes: int):
        self.plan, self.layout, self.num_classes = plan, layout, int(num_classes)

    def __call__(self, out, epoch: int, step: int) -> tuple[tuple, list[int]]:
        n = self.plan.size(step)
        named = self.layout.named(out, "pipeline")
        skipped = named["skipped"][:n].reshape(-1).numpy()  # a host output: no device round trip
        bad = [int(i) for i in skipped[skipped >= 0]]
        images, targets = self.images_targets(named, epoch, step, n)
        if not self.plan.config.valid_mask:
            return (images, targets), bad
        import torch

        valid = pipeline.to_device(torch.from_numpy(self.plan.valid(step)), images.device)
        return (images, targets, valid), bad

    def images_targets(self, out: dict, epoch: int, step: int, n: int):
        """Named pipeline outputs of ``step`` -> ``(images, targets)`` on the images' device.
        Host outputs (labels) and the host-drawn mixing parameters cross to the device once
        each, pinned and non-blocking (:func:`fastcas.loading.pipeline.to_device`); pixel-dependent
        parameters (SaliencyMix boxes) are computed there (:mod:`fastcas.mix.device`); labels
        were range-checked at construction."""
        import torch

        cfg = self.plan.config
        images = out["images0"][:n]
        dev = images.device

        def to_dev(t):
            return pipeline.to_device(t, dev)

        # labels are a host output even of a GPU pipeline: they follow the images' device
        labels = to_dev(out["labels0"][:n].reshape(-1))
        if cfg.channels_last:
            images = images.permute(0, 3, 1, 2)
        if cfg.mix_kind is None:  # one target shape per `targets` setting, whatever the mixing
            return images, (labels if cfg.target_kind == "hard" else self.smooth(labels))

        # every parameter is keyed by the samples' global positions (fastcas.sampling.geometry)
        positions = self.plan.positions(step)[:n]
        two = len(self.plan.streams) == 2
        if self.layout.mix is not None:  # mixed by DALI: targets from the lam it applied
            lam = to_dev(out["lam"][:n].reshape(-1))
            if two:
                y_fg = to_dev(out["labels1"][:n].reshape(-1))
            else:
                y_fg = labels[to_dev(torch.from_numpy(mix.pair_partner(positions)))]
            return images, mix.targets_from_lam(lam, labels, y_fg, self.num_classes, cfg.label_smoothing)
        if two:
            fg, y_fg = out["images1"][:n], to_dev(out["labels1"][:n].reshape(-1))
            if cfg.channels_last:
                fg = fg.permute(0, 3, 1, 2)
        else:
            perm = to_dev(torch.from_numpy(mix.pair_partner(positions)))
            fg, y_fg = images[perm], labels[perm]
        kind, alpha, prob, opts = mix_at(cfg, epoch, step)
        policy = cfg.transforms
        params = MIX_KINDS[kind].device_params(cfg.seed, epoch, positions, images.shape[-1], fg, alpha=alpha,
                                               prob=prob, options=opts, to_device=to_dev, mean=policy.mean,
                                               std=policy.std)
        mixed = mix.apply(params, images, fg)
        return mixed, mix.soft_targets(params, labels, y_fg, self.num_classes, cfg.label_smoothing)

    def smooth(self, labels):
        """float32 [n, K]: one-hot rows, smoothed by ``label_smoothing`` (0: exactly one-hot)."""
        import torch

        s = self.plan.config.label_smoothing
        t = torch.full((len(labels), self.num_classes), s / self.num_classes, device=labels.device)
        return t.scatter_(1, labels[:, None], 1 - s + s / self.num_classes)

