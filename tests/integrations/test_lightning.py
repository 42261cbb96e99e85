"""fastcas.integrations.lightning: the DataModule's loaders go into Lightning checkpoints and a
resumed fit continues mid-epoch with exactly the batches an uninterrupted fit would have seen."""
import pytest

from tests.helpers import make_dataset

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")


class _Tiny(L.LightningModule):
    def __init__(self, num_classes):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, num_classes)
        )
        self.seen, self.val_seen = [], 0

    def training_step(self, batch, _):
        images, targets = batch
        self.seen.append(targets.clone())
        return torch.nn.functional.cross_entropy(self.net(images), targets)

    def validation_step(self, batch, _):
        self.val_seen += len(batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(autouse=True)
def _no_gpu(monkeypatch):
    """Lightning itself asks torch whether a GPU exists (its rank-zero banner, RNG capture); the
    loaders here get device="cpu" explicitly, so answer it as a machine without one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _fit(dm, steps, ckpt=None):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    model = _Tiny(3)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return trainer, model


def test_loader_state_goes_into_the_checkpoint_and_resume_continues_exactly(tmp_path):
    from fastcas.integrations.lightning import FastcasDataModule

    make_dataset(tmp_path / "train", counts=(6, 4, 2), shard_size=5)
    opts = dict(batch_size=2, image_size=16, device="cpu", py_workers=0, seed=5, weights="cmo")
    _, straight = _fit(FastcasDataModule(tmp_path / "train", **opts), 5)
    trainer, _ = _fit(dm := FastcasDataModule(tmp_path / "train", **opts), 3)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    saved = torch.load(tmp_path / "mid.ckpt", weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert saved == [dm.train_loader.state_dict()] and saved[0]["step"] == 3
    _, resumed = _fit(FastcasDataModule(tmp_path / "train", **opts), 5, ckpt=str(tmp_path / "mid.ckpt"))
    assert len(straight.seen) == 5 and len(resumed.seen) == 2
    assert all(torch.equal(a, b) for a, b in zip(straight.seen[3:], resumed.seen))


def test_val_loader_is_checked_against_the_training_classes(tmp_path):
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards
    from fastcas.integrations.lightning import FastcasDataModule
    from tests.helpers import jpeg_bytes

    make_dataset(tmp_path / "train", counts=(2, 2, 2))
    write_shards([RawSample(f"v{i}", jpeg_bytes(i), i % 2) for i in range(4)], tmp_path / "val",
                 ShardWriterConfig(class_names=("c0", "c2")))
    dm = FastcasDataModule(tmp_path / "train", tmp_path / "val", batch_size=2, image_size=16, device="cpu",
                           py_workers=0)
    with pytest.raises(ValueError, match="class 1 is 'c2' here but 'c1' in the training set"):
        dm.setup("fit")
