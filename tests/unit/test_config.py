"""Every option of every config group composes with real Hydra and instantiates into a real object."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.helpers.data import write_image_folder, write_meta_mat
from vit_exp.config import CONFIG_DIR


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_required_options_exist():
    required = {
        "model": {"vit_tiny", "vit_small", "vit_b16", "vit_b32", "vit_l16", "vit_l32"},
        "data": {"digits", "imagenet", "image_folder"},
        "optim": {"adam", "adamw", "sgd"},
        "sched": {"cosine", "warmup_cosine", "constant"},
        "device": {"cpu", "gpu", "ascend"},
    }
    for group, names in required.items():
        assert names <= set(options(group)), group


def test_default_config_composes(compose):
    cfg = compose()
    assert cfg.model.name == "vit_tiny"
    assert cfg.data.name == "digits"
    assert cfg.device.target == "cpu"
    assert cfg.device.amp_level == "O0"


@pytest.mark.parametrize("device", ["cpu", "gpu", "ascend"])
def test_each_msrun_worker_takes_the_device_of_its_local_rank(compose, monkeypatch, device):
    from hydra.utils import instantiate

    assert instantiate(compose([f"device={device}"]).device).device_id == 0  # no msrun
    monkeypatch.setenv("DEVICE_ID", "3")  # msrun's local rank of the worker
    assert instantiate(compose([f"device={device}"]).device).device_id == 3


def test_issue_example_command_composes(compose):
    cfg = compose(["model=vit_b16", "optim.lr=5e-5"])
    assert cfg.model.embed_dim == 768 and cfg.model.patch_size == 16
    assert cfg.optim.lr == pytest.approx(5e-5)


# Published parameter counts of the standard sizes with a 1000-class head.
STANDARD_PARAMS = {
    "vit_b16": 86_567_656,
    "vit_b32": 88_224_232,
    "vit_l16": 304_326_632,
    "vit_l32": 306_535_400,
}


@pytest.mark.parametrize(
    "option",
    [
        pytest.param(o, marks=pytest.mark.integration) if o.startswith("vit_l") else o
        for o in options("model")
    ],
)  # the ViT-L ones take ~9 s each: CI's integration tier
def test_model_options_instantiate(compose, option):
    from vit_exp.models.vit import ViT, count_parameters

    cfg = compose([f"model={option}"])
    net = instantiate(cfg.model, num_classes=1000)
    assert isinstance(net, ViT)
    if option in STANDARD_PARAMS:
        assert count_parameters(net) == STANDARD_PARAMS[option]
    grid = cfg.model.image_size // cfg.model.patch_size
    assert tuple(net.pos_embedding.shape) == (1, grid * grid + 1, cfg.model.embed_dim)


def test_data_options_instantiate(compose, tmp_path):
    from vit_exp.data.folder import ImageFolderData

    folder = write_image_folder(tmp_path / "folder", ["b_cat", "a_dog"], per_class=2)
    imagenet = write_image_folder(tmp_path / "imnet", ["n02", "n01"], per_class=2)
    write_meta_mat(
        imagenet / "ILSVRC2012_devkit_t12/data/meta.mat", [("n01", "one"), ("n02", "two"), ("n03", "three")]
    )
    made = {
        "digits": instantiate(compose(["data=digits"]).data),
        "imagenet": instantiate(compose(["data=imagenet", f"data.root={imagenet}"]).data),
        "image_folder": instantiate(compose(["data=image_folder", f"data.root={folder}"]).data),
    }
    assert set(made) == set(options("data"))
    for data in made.values():
        assert isinstance(data, ImageFolderData)
    assert made["digits"].num_classes == 10
    assert made["imagenet"].class_names == ["one", "two", "three"]
    assert made["image_folder"].class_names == ["a_dog", "b_cat"]


@pytest.mark.parametrize("option", options("optim"))
def test_optim_options_instantiate(compose, option):
    from mindspore import nn

    expected = {"adam": nn.Adam, "adamw": nn.AdamWeightDecay, "sgd": nn.Momentum}
    cfg = compose([f"optim={option}"])
    settings = instantiate(cfg.optim)
    factors = np.linspace(1.0, 0.5, 6, dtype=np.float32)
    lr_values = settings.learning_rates(factors)
    np.testing.assert_allclose(lr_values, factors * cfg.optim.lr, rtol=1e-6)
    assert lr_values.dtype == np.float32
    optimizer = settings.build(nn.Dense(4, 3).trainable_params(), lr_values)
    assert isinstance(optimizer, expected[option])


@pytest.mark.parametrize("option", options("sched"))
def test_sched_options_instantiate(compose, option):
    cfg = compose([f"sched={option}"])
    factors = instantiate(cfg.sched)(total_steps=50, steps_per_epoch=10)
    assert factors.shape == (50,) and factors.dtype == np.float32
    assert factors.max() == pytest.approx(1.0)
    if option == "constant":
        assert np.all(factors == 1.0)
    if option == "cosine":
        assert factors[0] == pytest.approx(1.0) and np.all(np.diff(factors) < 0) and factors[-1] < 0.01
    if option == "warmup_cosine":
        warm = int(cfg.sched.warmup_epochs * 10)
        assert np.all(np.diff(factors[:warm]) > 0) and np.all(np.diff(factors[warm:]) < 0)


@pytest.mark.parametrize("option", options("device"))
def test_device_options_instantiate(compose, option):
    from vit_exp.device import DeviceSettings

    device = instantiate(compose([f"device={option}"]).device)
    assert isinstance(device, DeviceSettings)
    assert device.amp_level == ("O2" if option == "ascend" else "O0")
    assert device.mindspore_target == {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}[option]
    if option == "cpu":
        device.apply(seed=1)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_instantiate(compose, option):
    from vit_exp.train.trainer import TrainSettings

    settings = instantiate(compose([f"trainer={option}", "trainer.max_steps=5"]).trainer)
    assert isinstance(settings, TrainSettings)
    assert settings.max_steps == 5


def test_recipe_experiment_composes(compose):
    cfg = compose(["experiment=recipe_vit_b16", "data.root=/data/imagenet"])
    assert cfg.model.name == "vit_b16"
    assert cfg.data.class_map == "imagenet"
    assert cfg.optim.name == "adam" and cfg.optim.lr == pytest.approx(5e-5)
    assert cfg.trainer.epochs == 10 and cfg.trainer.batch_size == 16
    assert cfg.model.pretrained.endswith("vit_b_16_224.ckpt")
    assert cfg.augment.name == "basic" and cfg.model.drop_path_rate == 0.0  # RECIPE.md's plain run


def test_finetune_experiment_is_the_published_fine_tuning_recipe(compose):
    from hydra.utils import instantiate

    from vit_exp.job import settings_groups

    cfg = compose(["experiment=finetune_vit_b16", "data.root=/data/imagenet"])
    assert cfg.model.pretrained.endswith("vit_b_16_224.ckpt") and cfg.model.drop_path_rate == 0.1
    assert (cfg.optim.name, cfg.optim.weight_decay, cfg.optim.layer_decay) == ("adamw", 0.05, 0.65)
    augment = instantiate(cfg.augment)
    assert augment.name == "deit" and augment.mixes
    assert cfg.augment.randaug.num_ops == 2 and cfg.augment.random_erasing.prob == 0.25
    settings_groups(cfg)  # every group builds (so is checked)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("mlflow.flush_interval_s=-1", "mlflow.flush_interval_s"),
        ("mlflow.log_every_n_steps=0", "mlflow.log_every_n_steps"),
        ("mlflow.log_details_every_n_steps=0", "mlflow.log_details_every_n_steps"),
        ("mlflow.log_details_every_n_steps=2.5", "mlflow.log_details_every_n_steps"),
        ("trainer.print_every_n_steps=0", "trainer.print_every_n_steps"),
        ("trainer.progress_bar=sometimes", "trainer.progress_bar"),
        ("trainer.max_steps=-3", "trainer.max_steps"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.name=lamb", "optim.name"),
        ("registry.top_k=0", "registry.top_k"),
    ],
)
def test_settings_reject_bad_values_naming_the_key(compose, override, key):
    from hydra.errors import InstantiationException

    from vit_exp.errors import ConfigError

    group = key.split(".")[0]
    with pytest.raises((ConfigError, InstantiationException), match=key.replace(".", r"\.")):
        instantiate(compose([override])[group])


def test_mlflow_flush_interval_is_configurable(compose):
    from vit_exp.tracking.record import MlflowSettings

    settings = instantiate(compose(["mlflow.flush_interval_s=2.5"]).mlflow)
    assert isinstance(settings, MlflowSettings) and settings.flush_interval_s == 2.5
