"""fastcas.integrations.timm: timm's create_dataset / create_loader argument names, one mapping
table, a loader timm's train.py can drive (`_set_loader_epoch`, len, mixup_enabled, soft targets)."""
import pytest

from fastcas.integrations import timm as ft
from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
from tests.helpers import make_dataset

torch = pytest.importorskip("torch")


def _set_loader_epoch(loader, epoch: int) -> None:
    """timm train.py's own helper (pytorch-image-models, train.py), verbatim."""
    if hasattr(loader.dataset, 'set_epoch'):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.batch_sampler, 'set_epoch'):
        loader.batch_sampler.set_epoch(epoch)
    elif hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)


# what timm's train.py passes with its default flags (and --color-jitter 0 --interpolation bilinear
# --crop-pct 0.875: the options this fastcas build has no Loader option for)
TRAIN_KW = dict(is_training=True, no_aug=False, re_prob=0.0, re_mode="pixel", re_count=1, re_split=False,
                train_crop_mode=None, scale=None, ratio=None, hflip=0.5, vflip=0.0, color_jitter=0.0,
                color_jitter_prob=None, grayscale_prob=0.0, gaussian_blur_prob=0.0, auto_augment=None,
                num_aug_repeats=0, num_aug_splits=0, interpolation="bilinear", num_workers=0,
                worker_seeding="all", mean=IMAGENET_MEAN, std=IMAGENET_STD, pin_memory=False,
                distributed=False, use_prefetcher=True, input_size_choices=None, batch_size_choices=None,
                batch_choice_weights=None, batch_choice_seed=0, batch_choice_schedule="constant",
                batch_schedule_epochs=None, batch_schedule_spread=0.65, batch_schedule_random_mix=0.1,
                num_batches=None, use_multi_epochs_loader=False)
EVAL_KW = dict(is_training=False, interpolation="bilinear", num_workers=0, crop_pct=0.875, mean=IMAGENET_MEAN,
               std=IMAGENET_STD, pin_memory=False, distributed=False, use_prefetcher=True)


@pytest.fixture
def root(tmp_path):
    make_dataset(tmp_path / "train", counts=(6, 4, 2), shard_size=5)
    make_dataset(tmp_path / "val", counts=(2, 2, 1), shard_size=5, seed=1)
    return tmp_path


def test_timm_loop_drives_the_loader(root):
    ds = ft.create_dataset("", root=str(root), split="train", is_training=True, seed=3)
    loader = ft.create_loader(ds, input_size=(3, 16, 16), batch_size=4, device=torch.device("cpu"), **TRAIN_KW)
    assert len(loader) == 3 and loader.batch_sampler is None and loader.loader.config.seed == 3
    for epoch in range(2):
        _set_loader_epoch(loader, epoch)
        batches = list(loader)
        assert loader.loader.epoch == epoch and len(batches) == 3
    images, targets = batches[0]
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert targets.dtype == torch.int64 and targets.shape == (4,)  # timm's losses without mixing take ids
    val = ft.create_loader(ft.create_dataset("", root=str(root), split="validation"), input_size=(3, 16, 16),
                           batch_size=2, device=torch.device("cpu"), **EVAL_KW)
    labels = torch.cat([t for _, t in val])
    assert len(val) == 3 and labels.dtype == torch.int64
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2]  # every validation sample once


def test_fast_collate_mixup_maps_to_soft_targets_also_after_mixup_off(root):
    timm_mixup = pytest.importorskip("timm.data").FastCollateMixup
    ds = ft.create_dataset("fastcas:weights=cmo", root=str(root), split="train", is_training=True)
    mix = timm_mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=3)
    loader = ft.create_loader(ds, input_size=16, batch_size=4, device=torch.device("cpu"), collate_fn=mix, **TRAIN_KW)
    cfg = loader.loader.config
    assert (cfg.mix, cfg.alpha, cfg.weights, cfg.mix_options) == ("cutmix", 1.0, "cmo", {"mode": "batch"})
    _, targets = next(iter(loader))
    assert targets.shape == (4, 3) and torch.allclose(targets.sum(1), torch.ones(4))
    loader.mixup_enabled = False  # what timm's train_one_epoch does at --mixup-off-epoch
    _set_loader_epoch(loader, 1)
    _, targets = next(iter(loader))
    assert loader.loader.config.mix_kind is None and targets.shape == (4, 3)
    assert set(targets.flatten().tolist()) == {0.0, 1.0} and targets.sum(1).tolist() == [1.0] * 4  # one-hot
    with pytest.raises(ValueError, match="--num-classes 1000 but the dataset has 3 classes"):
        ft.create_loader(ds, input_size=16, batch_size=4, device=torch.device("cpu"),
                         collate_fn=timm_mixup(cutmix_alpha=1.0, num_classes=1000), **TRAIN_KW)


def test_one_table_maps_or_refuses_naming_the_option():
    assert ft.map_option("mean", IMAGENET_MEAN, accepted=set()) == {}  # what fastcas does anyway
    assert ft.map_option("mean", (0.5, 0.5, 0.5), accepted={"mean"}) == {"mean": (0.5, 0.5, 0.5)}
    assert ft.map_option("color_jitter", 0.4, accepted={"color_jitter"}) == {"color_jitter": 0.4}
    with pytest.raises(ValueError, match=r"timm argument color_jitter=0.4 needs the Loader option 'color_jitter', "
                                         r"which this fastcas does not have \(it always uses 0.0\)"):
        ft.map_option("color_jitter", 0.4, accepted=set())
    with pytest.raises(ValueError, match=r"crop_pct=0.95 needs the Loader option 'crop_pct'"):
        ft.map_option("crop_pct", 0.95, accepted=set())
    assert set(ft.TIMM_OPTIONS) == {"mean", "std", "scale", "ratio", "interpolation", "crop_pct", "auto_augment",
                                    "color_jitter", "re_prob", "re_mode", "hflip"}
    loader_options = ft._loader_options()
    assert {option for option, _ in ft.TIMM_OPTIONS.values()} <= loader_options  # every one maps to a real option


def test_builtin_values_in_the_table_are_fastcas_own():
    pytest.importorskip("nvidia.dali")
    from fastcas.loading.pipeline import EVAL_CROP_FRACTION

    assert ft.TIMM_OPTIONS["crop_pct"][1] == EVAL_CROP_FRACTION


def test_refusals_name_the_argument(root, tmp_path):
    ds = ft.create_dataset("", root=str(root), split="train", is_training=True)
    with pytest.raises(ValueError, match=r"timm argument vflip=0.5: fastcas has no such option \(it uses 0.0\)"):
        ft.create_loader(ds, input_size=16, batch_size=4, device=torch.device("cpu"), **{**TRAIN_KW, "vflip": 0.5})
    with pytest.raises(ValueError, match="argument sharpness=1 is not understood"):
        ft.create_loader(ds, input_size=16, batch_size=4, **{**TRAIN_KW, "sharpness": 1})
    with pytest.raises(ValueError, match=r"--dataset 'torch/cifar10': fastcas.integrations.timm reads fastcas "
                                         r"datasets only"):
        ft.create_dataset("torch/cifar10", root=str(root), split="train")
    with pytest.raises(FileNotFoundError, match=r"no fastcas dataset at .*/validation or .*/val"):
        ft.create_dataset("", root=str(tmp_path / "nowhere"), split="validation")
    with pytest.raises(ValueError, match="fastcas makes square images"):
        ft.create_loader(ds, input_size=(3, 16, 24), batch_size=4, **TRAIN_KW)


def test_eval_split_with_other_class_names_is_refused(tmp_path):
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards
    from tests.helpers import jpeg_bytes

    make_dataset(tmp_path / "train", counts=(2, 2, 2))
    write_shards([RawSample(f"v{i}", jpeg_bytes(i), i % 2) for i in range(4)], tmp_path / "validation",
                 ShardWriterConfig(class_names=("c0", "c2")))
    ft.create_dataset("", root=str(tmp_path), split="train", is_training=True)
    ds = ft.create_dataset("", root=str(tmp_path), split="validation")
    with pytest.raises(ValueError, match="class 1 is 'c2' here but 'c1' in the training set"):
        ft.create_loader(ds, input_size=16, batch_size=2, device=torch.device("cpu"), **EVAL_KW)


def test_mixup_and_cutmix_together_map_to_the_per_batch_switch(root):
    timm_mixup = pytest.importorskip("timm.data").FastCollateMixup
    ds = ft.create_dataset("", root=str(root), split="train", is_training=True)
    mix = timm_mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.9, switch_prob=0.25, label_smoothing=0.1,
                     num_classes=3)
    kw = {**TRAIN_KW, "re_prob": 0.25, "color_jitter": 0.4}
    loader = ft.create_loader(ds, input_size=16, batch_size=4, device=torch.device("cpu"), collate_fn=mix, **kw)
    cfg = loader.loader.config
    assert cfg.mix == "mixup_cutmix" and cfg.mix_prob == 0.9 and cfg.label_smoothing == 0.1
    assert cfg.mix_options == {"mode": "batch", "switch_prob": 0.25, "mixup_alpha": 0.8, "cutmix_alpha": 1.0}
    assert cfg.transforms.reprob == 0.25 and cfg.transforms.remode == "pixel"
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and targets.shape == (4, 3)
    assert torch.allclose(targets.sum(1), torch.ones(4))
