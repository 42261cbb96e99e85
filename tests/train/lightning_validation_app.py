"""A Lightning run that records which samples each validation saw, for
tests/train/test_lightning_validation.py (run as a script so that ``strategy="ddp"`` can launch
its second process the way it does for users).

    python tests/train/lightning_validation_app.py TRAIN VAL OUT.json DEVICES LIMIT_VAL_BATCHES

Writes (rank 0) JSON: ``validations``, one entry per validation: ``sanity`` (Lightning's sanity
check) and ``counts``: int [K], how often each label was seen in the rows marked ``valid`` over
all ranks (the validation set has one sample per class, so a label names its sample); and
``train``: the training Loader's (epoch, step) after each training batch.
"""
import json
import sys

import lightning as L
import torch

import fastcas

CPU = dict(image_size=8, device="cpu", py_workers=0, num_threads=1)


class Data(L.LightningDataModule):
    def __init__(self, train, val, batch_size):
        super().__init__()
        self.train_path, self.val_path, self.batch_size = train, val, batch_size

    def setup(self, stage=None):
        # rank and world size from torch.distributed, set up by Lightning before setup()
        self.train = fastcas.Loader(self.train_path, self.batch_size, **CPU)
        self.val = fastcas.Loader(self.val_path, self.batch_size, train=False, last_batch="pad", valid_mask=True,
                                  **CPU)

    def train_dataloader(self):
        return self.train

    def val_dataloader(self):
        return self.val


class Recorder(L.LightningModule):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, num_classes))
        self.seen, self.runs, self.train_steps = [], [], []

    def training_step(self, batch, _):
        images, targets = batch  # soft targets [B, K]: cross_entropy takes class probabilities
        loader = self.trainer.datamodule.train
        self.train_steps.append((loader.epoch, loader.step))
        return torch.nn.functional.cross_entropy(self.net(images), targets)

    def on_validation_epoch_start(self):
        self.seen = []

    def validation_step(self, batch, _):
        images, labels, valid = batch
        self.net(images)
        self.seen.append(labels[valid])

    def on_validation_epoch_end(self):
        mine = torch.cat(self.seen) if self.seen else torch.zeros(0, dtype=torch.int64)
        counts = torch.bincount(mine, minlength=self.num_classes).double()
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")  # over ranks
        self.runs.append({"sanity": self.trainer.sanity_checking, "counts": counts.long().tolist()})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TrainOnly(L.LightningDataModule):
    def __init__(self, train):
        super().__init__()
        self.train_path = train

    def setup(self, stage=None):
        self.train = fastcas.Loader(self.train_path, 4, **CPU)

    def train_dataloader(self):
        return self.train


class Labels(L.LightningModule):
    """Records each training batch's labels (argmax of the soft targets)."""

    def __init__(self, num_classes):
        super().__init__()
        self.net = torch.nn.Linear(3 * 8 * 8, num_classes)
        self.seen = []

    def training_step(self, batch, _):
        images, targets = batch
        self.seen.append(targets.argmax(1).tolist())
        return torch.nn.functional.cross_entropy(self.net(images.flatten(1)), targets)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def train_batches(train, max_steps, ckpt=None, save=None) -> list:
    """Labels of every training batch of a 1-device run to ``max_steps``, from checkpoint
    ``ckpt`` (the Loader's state comes back through Lightning's loader states), saving ``save``."""
    model = Labels(fastcas.ShardReader(train).num_classes)
    trainer = L.Trainer(max_steps=max_steps, max_epochs=10, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=TrainOnly(train), ckpt_path=ckpt)
    if save:
        trainer.save_checkpoint(save)
    return model.seen


def main(train, val, out, devices, limit):
    devices, limit = int(devices), float(limit) if "." in limit else int(limit)  # 1.0: all; 2: two batches
    data = Data(train, val, batch_size=2 if devices > 1 else 4)
    model = Recorder(fastcas.ShardReader(val).num_classes)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=limit,
                        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    if trainer.global_rank == 0:
        with open(out, "w") as f:
            json.dump({"validations": model.runs, "train": model.train_steps}, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
