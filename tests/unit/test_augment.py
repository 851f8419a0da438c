"""Augmentation as config (issue 27): the presets, their checks, mixup/CutMix against ground truth,
``augment=basic`` = the reference transforms, seeded batches, the little-data subset."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.helpers.data import write_image_folder
from tests.helpers.inprocess import run_main
from vit_exp.data.augment import Augmentation, AugmentSettings, MixSettings
from vit_exp.errors import ConfigError, user_message

CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("aug") / "ds", CLASSES, per_class=8, size=16)


def _data(root, **kwargs):
    from vit_exp.data.folder import ImageFolderData

    return ImageFolderData(root=root, num_workers=2, **kwargs)


def _batches(data, augment=None, image_size=32, batch_size=8, seed=3):
    from vit_exp.data.pipeline import TrainBatches

    return TrainBatches(data, image_size, batch_size, seed, exact_skip=True, augment=augment)


def _arrays(iterator):
    return [(image.asnumpy(), label.asnumpy()) for image, label in iterator]


@pytest.mark.parametrize("option", ["none", "basic", "deit"])
def test_presets_compose_and_build(compose, option):
    settings = instantiate(compose([f"augment={option}"]).augment)
    assert isinstance(settings, AugmentSettings) and settings.name == option
    assert settings.random_crop == settings.hflip == (option != "none")
    on = option == "deit"
    assert (settings.randaug.num_ops, settings.randaug.magnitude, settings.randaug.magnitude_std) == (
        (2, 9, 0.5) if on else (0, 9, 0.5)
    )
    assert (settings.random_erasing.prob, settings.mix.prob) == ((0.25, 1.0) if on else (0.0, 0.0))
    assert (settings.mix.mixup_alpha, settings.mix.cutmix_alpha, settings.mix.switch_prob) == (0.8, 1.0, 0.5)
    assert settings.mixes == on


def test_each_knob_is_overridable(compose):
    cfg = compose(["augment=deit", "augment.randaug.magnitude=7", "augment.mix.switch_prob=1.0"])
    settings = instantiate(cfg.augment)
    assert settings.randaug.magnitude == 7 and settings.mix.cutmix_share() == 20
    # magnitude 7 +- 0.5 on timm's 0..10 scale: MindSpore indices 0..100, centred on 70
    assert np.mean(settings.randaug.magnitudes()) == pytest.approx(70, abs=0.5)
    assert min(settings.randaug.magnitudes()) >= 60 and max(settings.randaug.magnitudes()) <= 80


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("augment.mix.mixup_alpha=-0.5", "augment.mix.mixup_alpha must be >= 0"),
        ("augment.mix.prob=1.5", "augment.mix.prob must be a probability"),
        ("augment.randaug.num_ops=-1", "augment.randaug.num_ops must be >= 0"),
        ("augment.randaug.magnitude=11", "augment.randaug.magnitude must be in [0, 10]"),
        ("augment.randaug.num_ops=two", "augment.randaug.num_ops must be an integer"),
        ("augment.random_erasing.scale=[0.5,0.1]", "augment.random_erasing.scale"),
        ("+augment.mix.mode=pair", "augment.mix.mode is not a setting"),
        ("augment.hflip=maybe", "augment.hflip must be true or false"),
    ],
)
def test_bad_values_are_one_line_config_errors(compose, override, key):
    with pytest.raises(Exception) as caught:
        instantiate(compose([override]).augment)
    message = user_message(caught.value)
    assert message is not None and key in message and "\n" not in message


def test_mix_with_no_alpha_is_a_config_error():
    with pytest.raises(ConfigError, match=r"augment\.mix\.prob > 0 needs"):
        AugmentSettings(mix={"prob": 1.0, "mixup_alpha": 0, "cutmix_alpha": 0})


def test_an_unknown_augmentation_is_a_one_line_error(tmp_path):
    proc = run_main("vit_exp.run", "augment=autoaug", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "augment=autoaug" in proc.stderr and "deit" in proc.stderr


def test_basic_gives_exactly_the_reference_transforms(folder):
    """augment=basic's batches equal those of the reference recipe's pipeline, written out here."""
    import mindspore.dataset as ds
    from mindspore.dataset import vision

    data = _data(folder)
    ours = _arrays(_batches(data, Augmentation(AugmentSettings())).epoch(2))
    ds.config.set_seed(3 + 2 - 1)
    reference = ds.ImageFolderDataset(
        str(folder / "train"),
        shuffle=True,
        class_indexing=data.class_indexing,
        num_parallel_workers=2,
        num_shards=1,
        shard_id=0,
    )
    ops = [
        vision.RandomCropDecodeResize(32, scale=(0.08, 1.0), ratio=(0.75, 1.333)),
        vision.RandomHorizontalFlip(prob=0.5),
        vision.Normalize(mean=list(data.mean), std=list(data.std)),
        vision.HWC2CHW(),
    ]
    reference = reference.map(operations=ops, input_columns="image", num_parallel_workers=2).batch(8, True)
    expected = _arrays(reference.create_tuple_iterator(num_epochs=1))
    assert len(ours) == len(expected) == 4
    for (image, label), (want_image, want_label) in zip(ours, expected, strict=True):
        assert label.dtype == np.int32 and np.array_equal(label, want_label)
        assert np.array_equal(image, want_image)


def _mixed(settings: MixSettings, seed: int, batch: int = 8):
    """A batch of images each one constant (its index) with one-hot labels, through the mix op."""
    import mindspore.dataset as ds

    images = np.stack([np.full((3, 16, 16), i, np.float32) for i in range(batch)])
    labels = np.eye(batch, dtype=np.float32)
    ds.config.set_seed(seed)
    dataset = ds.NumpySlicesDataset({"image": images, "label": labels}, shuffle=False).batch(batch)
    dataset = dataset.map([Augmentation(AugmentSettings(mix=settings)).batch_op()], ["image", "label"])
    return next(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_targets_are_the_blend_of_the_images(seed):
    images, targets = _mixed(MixSettings(prob=1.0, mixup_alpha=0.8, cutmix_alpha=0), seed)
    assert np.allclose(targets.sum(1), 1, atol=1e-6)
    for image, target in zip(images, targets, strict=True):
        # every pixel is sum_i target_i * i: the same blend of the constant images as of the labels
        assert np.allclose(image, target @ np.arange(len(target)), atol=1e-4)
        assert np.count_nonzero(target > 1e-6) <= 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cutmix_targets_match_the_pasted_area(seed):
    images, targets = _mixed(MixSettings(prob=1.0, mixup_alpha=0, cutmix_alpha=1.0), seed)
    assert np.allclose(targets.sum(1), 1, atol=1e-6)
    pasted = 0
    for image, target in zip(images, targets, strict=True):
        values, counts = np.unique(image, return_counts=True)
        area = np.zeros(len(target))
        area[values.astype(int)] = counts / image.size  # the share of the pixels of each source image
        assert np.allclose(target, area, atol=1e-6)
        pasted += len(values) > 1
    assert pasted > 0


def test_soft_targets_are_smoothed_before_mixing_and_sum_to_one(folder):
    settings = AugmentSettings(mix={"prob": 1.0})
    batches = _batches(_data(folder), Augmentation(settings, num_classes=4, label_smoothing=0.1))
    for image, target in _arrays(batches.epoch(1)):
        assert image.shape == (8, 3, 32, 32) and target.shape == (8, 4) and target.dtype == np.float32
        assert np.allclose(target.sum(1), 1, atol=1e-5) and target.min() >= 0.1 / 4 - 1e-6


def test_deit_batches_come_from_the_epoch_seed(folder):
    """Two passes over an epoch give the same mixed, erased, RandAugmented batches; another epoch not."""
    settings = AugmentSettings(
        randaug={"num_ops": 2}, random_erasing={"prob": 0.5}, mix={"prob": 1.0}, name="deit"
    )
    batches = _batches(_data(folder), Augmentation(settings, num_classes=4, label_smoothing=0.1))
    first, again, other = (_arrays(batches.epoch(e)) for e in (1, 1, 2))
    assert all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True)
    )
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    skipped = _arrays(batches.epoch(1, skip=2))  # an exact resume mid-epoch
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first[2:], skipped, strict=True))


@pytest.mark.parametrize("image_size", [32, 224])
def test_deit_is_sized_by_the_model(folder, image_size):
    settings = AugmentSettings(randaug={"num_ops": 2}, random_erasing={"prob": 1.0}, mix={"prob": 1.0})
    batches = _batches(_data(folder), Augmentation(settings, 4, 0.1), image_size, batch_size=4)
    image, target = next(batches.epoch(1))
    assert image.shape == (4, 3, image_size, image_size) and target.shape == (4, 4)


def test_none_trains_on_the_val_view(folder):
    from vit_exp.data.pipeline import val_dataset

    data = _data(folder, hflip_prob=0.5)
    settings = AugmentSettings(name="none", random_crop=False, hflip=False)
    train = sorted(_arrays(_batches(data, Augmentation(settings), batch_size=32).epoch(1))[0][0].tolist())
    val_images = _arrays(val_dataset(_data(folder, train_split="train", val_split="train"), 32, 32))
    assert np.array_equal(np.array(train), np.array(sorted(val_images[0][0].tolist())))


def test_a_little_data_subset_is_per_class_stable_and_other_data(folder, tmp_path):
    from vit_exp.data.digest import data_identity

    full, tenth = _data(folder), _data(folder, train_fraction=0.3)
    limited = _data(folder, per_class_limit=1)
    assert full.train_subset is None
    assert {k: len(v) for k, v in tenth.train_subset.items()} == dict.fromkeys(CLASSES, 2)
    assert all(limited.train_subset[c] <= tenth.train_subset[c] for c in CLASSES)  # nested
    labels = np.concatenate([label for _, label in _arrays(_batches(tenth, batch_size=2).epoch(1))])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    ids = [data_identity(d, tmp_path) for d in (full, tenth, limited)]
    assert len({i.digest for i in ids}) == 3 and len({i.val.digest for i in ids}) == 1
    assert [i.train.num_images for i in ids] == [32, 8, 4]
    assert data_identity(full, None).digest == ids[0].digest  # the full split's digest as before
    with pytest.raises(ConfigError, match=r"data\.train_fraction must be in"):
        _data(folder, train_fraction=0.0)


def test_soft_target_loss_is_cross_entropy_against_the_targets():
    import mindspore as ms

    from vit_exp.train.losses import SoftTargetCrossEntropy

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    target = rng.dirichlet(np.ones(4), size=5).astype(np.float32)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -(target * log_softmax).sum(1).mean()
    loss = SoftTargetCrossEntropy()(ms.Tensor(logits), ms.Tensor(target))
    assert float(loss.asnumpy()) == pytest.approx(expected, rel=1e-5)


def test_the_default_run_records_no_augment_keys_and_deit_does(compose):
    from vit_exp.job import ConfigSnapshot
    from vit_exp.tracking.resume import comparable_config, hyperparameters

    default = ConfigSnapshot.of(compose()).flat
    for keys in (comparable_config(default), hyperparameters(default)):
        assert not [k for k in keys if k.startswith("augment.") or k.startswith("data.train_fraction")]
        assert "data.per_class_limit" not in keys
    spelled = ConfigSnapshot.of(compose(["augment.mix.prob=0", "data.train_fraction=1"])).flat
    assert comparable_config(spelled) == comparable_config(default)  # 0 is 0.0: off all the same
    deit = ConfigSnapshot.of(compose(["augment=deit", "data.train_fraction=0.1"])).flat
    params = hyperparameters(deit)
    assert {"augment.name", "augment.mix.prob", "augment.randaug.magnitude_std"} <= set(params)
    assert {"augment.random_erasing.prob", "data.train_fraction"} <= set(params)
    assert "augment.random_crop" not in params and "augment._target_" not in comparable_config(deit)
