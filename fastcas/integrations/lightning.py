"""fastcas in PyTorch Lightning: :class:`FastcasDataModule`.

Lightning's fit loop already saves the state of every dataloader that has ``state_dict`` /
``load_state_dict`` into its checkpoints (``checkpoint["loops"]["fit_loop"]["state_dict"]
["combined_loader"]``) and restores it on ``trainer.fit(..., ckpt_path=...)``; a plain
:class:`fastcas.Loader` has both, so it resumes mid-epoch exactly with no code (docs/integrations.md).
This module adds what a user would otherwise write by hand: loaders built at ``setup`` with the
trainer's rank, world size and device, and a validation set checked against the training set's
class names.

    dm = FastcasDataModule("data/train", "data/val", batch_size=256, weights="cas",
                           scores="data/train-scores.parquet", mix="cutmix", alpha=0.2)
    trainer.fit(model, datamodule=dm)
"""
from __future__ import annotations

try:
    import lightning as L
except ImportError as exc:  # pragma: no cover - exercised without lightning installed
    raise ImportError("fastcas.integrations.lightning needs PyTorch Lightning: pip install lightning") from exc


class FastcasDataModule(L.LightningDataModule):
    """A ``LightningDataModule`` of fastcas loaders.

    ``train``, ``val``: dataset directories (``val`` optional). ``options``: :class:`fastcas.Loader`
    options for the training loader (``weights``, ``scores``, ``mix``, ...); ``val_options``
    those of the validation loader (defaults: ``train=False``, ``last_batch="pad"`` with
    ``valid_mask=True``: every rank yields as many batches of ``(images, labels, valid)``, the
    padding repeats marked ``valid`` False, see :func:`fastcas.train.metrics.top1_counts`; the
    training ``image_size`` / ``dtype`` / ``seed``). ``device``: "auto" takes the trainer's
    root device. Loaders are built once, at the first ``setup``, and closed at ``teardown``.
    """

    def __init__(self, train, val=None, batch_size: int = 32, *, val_batch_size: int | None = None,
                 val_options: dict | None = None, **options):
        super().__init__()
        self.train_path, self.val_path = train, val
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.options, self.val_options = dict(options), dict(val_options or {})
        self.train_loader = self.val_loader = None

    def _placement(self) -> dict:
        """rank, world size and device from the attached trainer (none: torch.distributed / auto)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return {}
        out = {"rank": trainer.global_rank, "world_size": trainer.world_size}
        if self.options.get("device", "auto") == "auto":
            out["device"] = "cuda" if trainer.strategy.root_device.type == "cuda" else "cpu"
        return out

    def setup(self, stage: str | None = None) -> None:
        from fastcas.loading.loader import Loader

        place = self._placement()
        if self.train_loader is None:
            self.train_loader = Loader(self.train_path, self.batch_size, **{**self.options, **place})
        if self.val_path is not None and self.val_loader is None:
            keep = {k: self.options[k] for k in ("image_size", "dtype", "seed", "channels_last", "device",
                                                  "py_workers", "num_threads") if k in self.options}
            opts = {**keep, "train": False, "last_batch": "pad", "valid_mask": True, **self.val_options, **place}
            self.val_loader = Loader(self.val_path, self.val_batch_size, class_names=self.train_loader.reader, **opts)

    def train_dataloader(self):
        return self.train_loader

    def val_dataloader(self):
        if self.val_loader is None:
            return []
        return self.val_loader

    def teardown(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            for loader in (self.train_loader, self.val_loader):
                if loader is not None:
                    loader.close()
