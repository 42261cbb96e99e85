"""fastcas in PyTorch Lightning through ``fastcas.integrations.lightning.FastcasDataModule``.

The DataModule builds the loaders at ``setup`` with the trainer's rank, world size and device,
and checks the validation set's class names against the training set's. Lightning saves each
loader's ``state_dict`` in its checkpoints itself (a fastcas ``Loader`` is a stateful
iterable), so ``trainer.fit(..., ckpt_path=...)`` resumes mid-epoch exactly. fastcas shards the
stream by rank itself: Lightning leaves non-DataLoader iterables alone.
Every ``iter()`` of the evaluation Loader starts at its first batch (the sanity check and
``limit_val_batches`` do not shift later validations); its ranks yield as many batches, the
padding repeats marked ``valid`` False, so ``top1_counts`` counts every sample once; the
training Loader starts the next epoch at each ``iter()``.

    python examples/lightning_datamodule.py TRAIN VAL [--steps N]
"""
import argparse

import lightning as L
import torch
import torchvision

from fastcas.integrations.lightning import FastcasDataModule
from fastcas.train.metrics import top1_counts


def make_data(train, val, batch_size=32, image_size=64, device="auto"):
    return FastcasDataModule(train, val, batch_size, weights="uniform", foreground_weights="cmo", mix="cutmix",
                             mix_prob=0.5, image_size=image_size, device=device)


class Classifier(L.LightningModule):
    def __init__(self, num_classes):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=num_classes)

    def training_step(self, batch, _):
        images, targets = batch  # soft targets float32 [B, K] (the training default, whatever the mixing)
        return torch.nn.functional.cross_entropy(self.net(images), targets)

    def on_validation_epoch_start(self):
        self.counts = torch.zeros(2, dtype=torch.float64, device=self.device)  # (correct, counted)

    def validation_step(self, batch, _):
        images, labels, valid = batch
        self.counts += top1_counts(self.net(images), labels, valid)  # padding repeats not counted

    def on_validation_epoch_end(self):
        correct, counted = self.trainer.strategy.reduce(self.counts, reduce_op="sum")  # over ranks
        self.log("val_acc", correct / counted.clamp(min=1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("train")
    p.add_argument("val")
    p.add_argument("--steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (a GPU when torch sees one)")
    a = p.parse_args()
    data = make_data(a.train, a.val, a.batch_size, a.image_size, a.device)
    data.setup()
    trainer = L.Trainer(max_epochs=1, max_steps=a.steps, limit_val_batches=2,
                        accelerator="cpu" if data.train_loader.device == "cpu" else "gpu",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(Classifier(data.train_loader.num_classes), datamodule=data)
    print(f"trained {trainer.global_step} steps")
