"""Regularisation (issue 27): drop path, gradient clipping, layer-wise LR decay and the weight-decay
exclusions, each against its ground truth (NumPy, timm's rates, today's grouping rule), real MindSpore."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.models import requires_fused_kernels, tiny_vit


def drop_paths(net) -> dict[str, float]:
    """``{cell name: rate}`` of every DropPath cell of ``net``."""
    from vit_exp.models.vit import DropPath

    return {name: cell.rate for name, cell in net.cells_and_names() if isinstance(cell, DropPath)}


def drop_path_factors(rate: float, index: int, keys: list[int], samples: int) -> np.ndarray:
    """DropPath(rate, index)'s per-sample factor under each step key of ``keys`` (steps x samples)."""
    import mindspore as ms

    from vit_exp.models.vit import DropPath

    drop = DropPath(rate, index)
    drop.set_train(True)
    x = ms.Tensor(np.ones((samples, 2, 3), np.float32))
    factors = []
    for key in keys:
        out = drop(x, ms.Tensor([key], ms.int64)).asnumpy()
        assert np.all(out == out[:, :1, :1])  # one draw per sample, over all tokens and channels
        factors.append(out[:, 0, 0])
    return np.stack(factors)


@pytest.mark.parametrize(
    "execution_mode", ["pynative", pytest.param("graph", marks=pytest.mark.integration)], indirect=True
)
def test_drop_path_masks_are_a_function_of_the_step_and_keep_the_expectation(execution_mode):
    """Counter-based masks (vit_exp/models/counter_rng.py): the graph's integer hash equals its Python
    reference bit for bit; same step, same masks; other steps, branches and samples draw anew (they
    agree as independent draws do: r^2 + (1 - r)^2); the keep rate is 1 - r and the expectation 1."""
    import mindspore as ms

    from vit_exp.models import counter_rng
    from vit_exp.models.vit import DropPath

    rate, samples, steps = 0.3, 4096, 8
    run = counter_rng.run_key(seed=0, rank=0)
    keys = [counter_rng.step_key_int(t, run) for t in range(steps)]
    factors = drop_path_factors(rate, 5, keys, samples)
    threshold = np.ceil(rate * 2**31)
    reference = [np.array(counter_rng.uniform_bits_int(k, 5, samples)) >= threshold for k in keys]
    np.testing.assert_array_equal(factors, np.stack(reference) / np.float32(1 - rate))
    np.testing.assert_allclose(np.unique(factors), [0.0, 1 / (1 - rate)], rtol=1e-6)
    np.testing.assert_array_equal(drop_path_factors(rate, 5, keys[:1], samples), factors[:1])  # same step
    kept = factors > 0
    independent = rate**2 + (1 - rate) ** 2  # P(two independent draws agree)
    other_branch = drop_path_factors(rate, 6, keys[:1], samples)[0] > 0
    for other in (kept[1], other_branch, kept[0, ::-1]):  # next step, next branch, other samples
        assert abs((kept[0] == other).mean() - independent) < 0.05  # 6 standard errors
    assert abs(kept.mean() - (1 - rate)) < 0.015  # 6 standard errors of 32768 draws
    assert abs(factors.mean() - 1.0) < 0.022  # the expectation is preserved (6 standard errors)
    drop = DropPath(rate, 5)
    x = ms.Tensor(np.ones((8, 2, 3), np.float32))
    drop.set_train(True)
    np.testing.assert_array_equal(drop(x).asnumpy(), x.asnumpy())  # no step (validation's call): kept
    drop.set_train(False)
    np.testing.assert_array_equal(drop(x, ms.Tensor([keys[0]], ms.int64)).asnumpy(), x.asnumpy())


@pytest.mark.parametrize(
    "execution_mode", ["pynative", pytest.param("graph", marks=pytest.mark.integration)], indirect=True
)
def test_the_train_step_draws_from_the_optimizer_step_so_a_restored_step_repeats_them(
    execution_mode, tmp_path
):
    """The train step's masks are keyed by the optimizer's ``global_step`` (read before the update
    increments it), ``seed`` and ``rank``: a train step restored from a full-state checkpoint after step
    1 repeats steps 2 and 3 exactly; the step's parameters and names are those without drop path
    (``global_step`` once)."""
    import mindspore as ms

    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.state import load_training_network, read_checkpoint, save_training_checkpoint
    from vit_exp.train.step import build_train_step

    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(8, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 5, 8).astype(np.int32))

    def train_step(init: int, drop_path_rate: float = 0.5):
        ms.set_seed(init)
        net = tiny_vit(drop_path_rate=drop_path_rate, fused_kernels="off")
        optimizer = ms.nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9)
        step = build_train_step(net, optimizer, CrossEntropySmooth(5, 0.0), "O0", 1.0, seed=3, rank=1)
        step.set_train(True)
        return step

    step = train_step(init=7)
    losses = [float(step(x, y).asnumpy())]
    path = save_training_checkpoint(step, tmp_path / "t-e001-s000001.ckpt", {"position": {}})
    losses += [float(step(x, y).asnumpy()) for _ in range(2)]
    restored = train_step(init=8)  # other weights, until the checkpoint's are loaded
    load_training_network(restored, read_checkpoint(path), path)
    assert [float(restored(x, y).asnumpy()) for _ in range(2)] == losses[1:]
    names = [p.name for p in step.get_parameters()]
    assert names == [p.name for p in train_step(init=7, drop_path_rate=0.0).get_parameters()]
    assert names.count("global_step") == 1


def test_drop_path_rates_grow_linearly_over_the_blocks_as_timm():
    net = tiny_vit(num_layers=4, drop_path_rate=0.3, fused_kernels="off")
    rates = np.linspace(0, 0.3, 4)  # timm: torch.linspace(0, drop_path_rate, depth)
    expected = {f"transformer.layers.{i}.{r}.drop_path": rates[i] for i in range(1, 4) for r in (0, 1)}
    assert drop_paths(net) == pytest.approx(expected)  # block 0 (rate 0) has none
    assert drop_paths(tiny_vit(num_layers=4, fused_kernels="off")) == {}  # rate 0: no op inserted
    assert {p.name for p in net.get_parameters()} == {p.name for p in tiny_vit(num_layers=4).get_parameters()}


@pytest.mark.parametrize(
    "fused_kernels",
    [
        pytest.param(
            "auto", marks=pytest.mark.integration
        ),  # make test stays under ~6 min; CI's integration tier runs it
        pytest.param("on", marks=[requires_fused_kernels, pytest.mark.integration]),
        pytest.param("off", marks=pytest.mark.integration),
    ],
)
def test_drop_path_zero_is_todays_maths_and_on_it_only_changes_training(fused_kernels):
    """Same seed, same init: rate 0 trains exactly as a ViT without the key; a rate > 0 changes training
    losses, repeats them under the same seed, and leaves inference as it was (auto: the fused kernels
    where they build, as a default run)."""
    import mindspore as ms

    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.step import build_train_step

    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(4, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 5, 4).astype(np.int32))

    def train(**overrides) -> tuple[list[float], np.ndarray]:
        ms.set_seed(7)
        net = tiny_vit(fused_kernels=fused_kernels, **overrides)
        optimizer = ms.nn.SGD(net.trainable_params(), learning_rate=0.1)
        step = build_train_step(net, optimizer, CrossEntropySmooth(5, 0.0), "O0")
        losses = [float(step(x, y).asnumpy()) for _ in range(2)]
        net.set_train(False)
        return losses, net(x).asnumpy()

    before, before_out = train()
    zero, zero_out = train(drop_path_rate=0.0)
    assert zero == before
    np.testing.assert_array_equal(zero_out, before_out)
    dropped, _ = train(drop_path_rate=0.5)
    assert dropped != before and train(drop_path_rate=0.5)[0] == dropped  # the seed repeats the draws
    ms.set_seed(7)
    off, on = tiny_vit(fused_kernels=fused_kernels), tiny_vit(fused_kernels=fused_kernels, drop_path_rate=0.5)
    ms.load_param_into_net(
        on, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in off.get_parameters()}
    )
    off.set_train(False)
    on.set_train(False)
    np.testing.assert_array_equal(on(x).asnumpy(), off(x).asnumpy())


def one_step_update(clip_grad_norm: float | None) -> tuple[np.ndarray, list[str]]:
    """The gradient one SGD step (lr 1, no momentum) applied to a 2-parameter linear loss whose gradient
    is known (``x``), and the train step's parameter names."""
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn

    from vit_exp.train.step import build_train_step

    class Linear(nn.Cell):
        def __init__(self):
            super().__init__()
            self.a = Parameter(Tensor(np.zeros((3, 2), np.float32)), name="a")
            self.b = Parameter(Tensor(np.zeros(2, np.float32)), name="b")

        def construct(self, x):
            return (self.a * x[:3]).sum() + (self.b * x[3]).sum()

    class Identity(nn.Cell):
        def construct(self, loss, label):
            return loss

    net = Linear()
    step = build_train_step(
        net, nn.Momentum(net.trainable_params(), 1.0, 0.0), Identity(), "O0", clip_grad_norm
    )
    step(Tensor(GRADIENT), Tensor(0.0, ms.float32))
    update = -np.concatenate([net.a.asnumpy().ravel(), net.b.asnumpy()])
    return update, sorted(p.name for p in step.get_parameters())


GRADIENT = np.arange(8, dtype=np.float32).reshape(4, 2) - 2.5  # global L2 norm 6.48


@pytest.mark.parametrize("max_norm", [1.5, 100.0])
def test_clipping_gives_the_clipped_global_norm(max_norm):
    g = GRADIENT.ravel()
    expected = g * max_norm / max(np.linalg.norm(g), max_norm)  # NumPy: one scale for all parameters
    update, names = one_step_update(max_norm)
    np.testing.assert_allclose(update, expected, rtol=1e-6)
    assert np.linalg.norm(update) == pytest.approx(min(max_norm, np.linalg.norm(g)), rel=1e-6)
    unclipped, names_off = one_step_update(None)
    np.testing.assert_allclose(unclipped, g, rtol=1e-6)
    assert names == names_off  # the train step's checkpoint names do not change


def layer_of(name: str, num_layers: int) -> int:
    """The BEiT/MAE layer id, written out by name for the test."""
    if name in ("cls", "pos_embedding") or name.startswith("patch_embedding."):
        return 0
    if name.startswith("transformer.layers."):
        return int(name.split(".")[2]) + 1
    assert name.split(".", maxsplit=1)[0] in ("norm", "dense"), name
    return num_layers + 1


@pytest.mark.parametrize("option", ["adam", "adamw", "sgd"])
def test_layer_decay_sets_each_parameters_learning_rate(option):
    from vit_exp.config import group_settings

    decay, layers = 0.65, 4
    settings = group_settings("optim", option, layer_decay=decay)
    base = settings.learning_rates(np.linspace(1.0, 0.1, 5))
    net = tiny_vit(num_layers=layers, fused_kernels="off")
    optimizer = settings.build(net.trainable_params(), base)
    for p in net.trainable_params():
        scale = decay ** (layers + 1 - layer_of(p.name, layers))
        np.testing.assert_allclose(optimizer.get_lr_parameter(p).asnumpy(), base * scale, rtol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("option", ["adam", "adamw", "sgd"])
def test_every_optimizer_trains_with_all_three_on(option):
    """Layer-decay groups, clipping and drop path in one train step of each optimizer (PyNative;
    tests/integration/test_train.py trains them in graph mode)."""
    import mindspore as ms

    from vit_exp.config import group_settings
    from vit_exp.train.losses import CrossEntropySmooth
    from vit_exp.train.step import build_train_step

    settings = group_settings("optim", option, layer_decay=0.65, clip_grad_norm=1.0)
    net = tiny_vit(num_layers=4, drop_path_rate=0.2)
    optimizer = settings.build(net.trainable_params(), settings.learning_rates(np.ones(5)))
    x = ms.Tensor(np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32))
    step = build_train_step(net, optimizer, CrossEntropySmooth(5, 0.0), "O0", settings.clip_grad_norm)
    assert np.isfinite(step(x, ms.Tensor(np.arange(4, dtype=np.int32))).asnumpy())


def decayed_names(optimizer) -> set[str]:
    """The names of the parameters ``optimizer`` applies weight decay to, read back from its groups."""
    return {
        p.name for p, wd in zip(optimizer.parameters, optimizer.group_weight_decay, strict=True) if wd > 0
    }


@pytest.mark.parametrize("model", ["vit_tiny", pytest.param("vit_b16", marks=pytest.mark.integration)])
def test_weight_decay_exclusions_by_name_are_todays_groups(compose, model):
    """The default ``optim.no_weight_decay`` groups exactly as the rule before it (1-D parameters, cls
    and pos_embedding exempt); with layer decay too."""
    from hydra.utils import instantiate

    net = instantiate(compose([f"model={model}"]).model, num_classes=10)
    params = net.trainable_params()
    today = {p.name for p in params if p.ndim > 1 and p.name not in ("cls", "pos_embedding")}
    settings = instantiate(compose(["optim=adamw"]).optim)
    assert decayed_names(settings.build(params, np.full(3, 1e-3, np.float32))) == today
    assert "transformer.layers.0.0.cell.1.qkv.weight" in today and "dense.bias" not in today
    layered = instantiate(compose(["optim=adamw", "optim.layer_decay=0.75"]).optim)
    assert decayed_names(layered.build(params, np.full(3, 1e-3, np.float32))) == today
    only_bias = instantiate(compose(["optim=adamw", "optim.no_weight_decay=[bias,'*.gamma']"]).optim)
    assert decayed_names(only_bias.build(params, np.full(3, 1e-3, np.float32))) == {
        p.name for p in params if not p.name.endswith((".bias", ".gamma"))
    }


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.drop_path_rate=1.0", "model.drop_path_rate"),
        ("model.drop_path_rate=-0.1", "model.drop_path_rate"),
        ("optim.clip_grad_norm=0", "optim.clip_grad_norm"),
        ("optim.clip_grad_norm=-1.0", "optim.clip_grad_norm"),
        ("optim.layer_decay=0", "optim.layer_decay"),
        ("optim.layer_decay=1.5", "optim.layer_decay"),
        ("optim.no_weight_decay=bias", "optim.no_weight_decay"),
        ("optim.no_weight_decay=[bias,1]", "optim.no_weight_decay"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(compose, override, key):
    """What the CLI prints (errors.user_message) when ``run`` checks its settings, before anything runs."""
    from vit_exp.errors import user_message
    from vit_exp.job import settings_groups

    with pytest.raises(Exception) as caught:  # Hydra's instantiate may wrap our ConfigError
        settings_groups(compose([override]))
    line = user_message(caught.value)
    assert line is not None and line.startswith(key) and "\n" not in line, line


NEW_KEYS = {"model.drop_path_rate", "optim.clip_grad_norm", "optim.layer_decay", "optim.no_weight_decay"}


@pytest.mark.parametrize("optim", ["adam", "adamw"])
def test_left_off_the_keys_change_neither_params_nor_digest(compose, optim):
    """The default run (adam: no weight decay) has none of the keys as params; adamw shows its
    exclusions; neither compares them, so runs recorded before the keys keep their digest."""
    from vit_exp.job import ConfigSnapshot
    from vit_exp.tracking.resume import comparable_config, config_digest, hyperparameters

    flat = ConfigSnapshot.of(compose([f"optim={optim}"])).flat
    before = {k: v for k, v in flat.items() if k not in NEW_KEYS}  # a run recorded before the keys
    assert config_digest(comparable_config(flat)) == config_digest(comparable_config(before))
    shown = {"optim.no_weight_decay"} if optim == "adamw" else set()
    assert NEW_KEYS & set(hyperparameters(flat)) == shown and not NEW_KEYS & set(comparable_config(flat))
    on = ["model.drop_path_rate=0.1", "optim.clip_grad_norm=1.0", "optim.layer_decay=0.75"]
    on_flat = ConfigSnapshot.of(compose([f"optim={optim}", *on, "optim.no_weight_decay=[bias]"])).flat
    switched_on = {"model.drop_path_rate", "optim.clip_grad_norm", "optim.layer_decay"} | shown
    assert switched_on <= set(hyperparameters(on_flat)) & set(comparable_config(on_flat))
