"""bf16 mixed precision on CPU (vit_exp/models/kernels/plan.py, device.precision): the kernels compute what
bf16-rounded inputs with fp32 accumulation give, the ViT stays close to fp32 with fp32 parameters
and checkpoints, and precision is resolved with a clear fallback or error."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.helpers.models import requires_bf16, requires_fused_kernels, tiny_vit
from vit_exp.errors import ConfigError


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), back as float64: what the kernels multiply."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def _forward_and_grads(cell, inputs, upstream):
    """``cell(*inputs)`` and the gradients of all its inputs for the upstream gradient ``upstream``."""
    import mindspore as ms
    from mindspore import nn, ops

    class Weighted(nn.Cell):
        def __init__(self):
            super().__init__()
            self.cell = cell
            self.upstream = ms.Tensor(upstream)

        def construct(self, *args):
            return (self.cell(*args) * self.upstream).sum()

    tensors = [ms.Tensor(v) for v in inputs]
    forward = cell(*tensors).asnumpy()
    grads = ops.GradOperation(get_all=True)(Weighted())(*tensors)
    return forward, [g.asnumpy() for g in grads]


def _linear_and_grads(x, w, b, dy):
    """The bf16 Linear forward, and its (dx, dw, db) for the upstream gradient ``dy``."""
    from vit_exp.models.layers import Linear

    return _forward_and_grads(Linear("bf16"), (x, w, b), dy)


@requires_bf16
def test_bf16_linear_is_bf16_inputs_with_fp32_accumulation_forward_and_backward():
    rng = np.random.default_rng(0)
    m, k, n = 300, 96, 80  # rows split over threads; not multiples of the kernels' blocks
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = rng.normal(scale=0.1, size=(n, k)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    dy = rng.normal(size=(m, n)).astype(np.float32)
    y, (dx, dw, db) = _linear_and_grads(x, w, b, dy)

    xr, wr, dyr = bf16_round(x), bf16_round(w), bf16_round(dy)
    expected = {
        "y": xr @ wr.T + b,
        "dx": dyr @ wr,
        "dw": dyr.T @ xr,
        "db": dy.astype(np.float64).sum(0),  # the bias gradient is an fp32 sum of the fp32 gradient
    }
    got = {"y": y, "dx": dx, "dw": dw, "db": db}
    for name, value in got.items():
        assert value.dtype == np.float32 and value.shape == expected[name].shape, name
        scale = np.abs(expected[name]).max()
        np.testing.assert_allclose(value, expected[name], atol=2e-6 * scale * np.sqrt(m), err_msg=name)
    # ... and that is not what fp32 inputs give: the multiply really is in bf16
    assert np.abs(y - (x.astype(np.float64) @ w.T.astype(np.float64) + b)).max() > 1e-3


@requires_bf16
def test_bf16_rounding_keeps_nan_and_inf():
    x = np.ones((4, 8), np.float32)
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    w = np.full((3, 8), 0.5, np.float32)
    y, _ = _linear_and_grads(x, w, np.zeros(3, np.float32), np.ones((4, 3), np.float32))
    assert np.isnan(y[1]).all()  # a NaN input is never rounded into a finite number
    assert np.isposinf(y[2]).all()
    np.testing.assert_array_equal(y[[0, 3]], 4.0)


def _same_weights(precision: str, reference=None, **overrides):
    import mindspore as ms

    net = tiny_vit(num_classes=7, precision=precision, **overrides)
    if reference is not None:
        ms.load_param_into_net(
            net, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in reference.get_parameters()}
        )
    return net


@requires_bf16
def test_bf16_vit_agrees_with_fp32_and_keeps_fp32_parameters_and_checkpoint_layout(tmp_path):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.train.losses import CrossEntropySmooth

    fp32 = _same_weights("fp32")
    bf16 = _same_weights("bf16", fp32)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert (bf16.plan.dense, bf16.plan.attention) == ("bf16", True)  # attention stays fp32
    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.normal(size=(16, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 7, 16).astype(np.int32))

    for net in (fp32, bf16):
        net.set_train(False)
    a, b = fp32(x).asnumpy(), bf16(x).asnumpy()
    assert np.abs(a - b).max() < 0.02 * np.abs(a).max()  # bf16 has 8 bits of mantissa: ~0.4 %
    assert not np.array_equal(a, b)  # and it is really computed differently

    grads = {}
    for net in (fp32, bf16):
        net.set_train(True)
        loss = nn.WithLossCell(net, CrossEntropySmooth(7, 0.0))
        _, g = ms.value_and_grad(loss, None, net.trainable_params())(x, y)
        grads[net.precision] = {p.name: v.asnumpy() for p, v in zip(net.trainable_params(), g, strict=True)}
    for name, g32 in grads["fp32"].items():
        g16 = grads["bf16"][name]
        assert g16.dtype == np.float32
        assert np.linalg.norm(g16 - g32) <= 0.03 * np.linalg.norm(g32) + 1e-7, name

    paths = {}
    for net in (fp32, bf16):
        paths[net.precision] = tmp_path / f"{net.precision}.ckpt"
        ms.save_checkpoint(net, str(paths[net.precision]))
    layouts = {
        k: {name: (tuple(v.shape), v.dtype) for name, v in ms.load_checkpoint(str(p)).items()}
        for k, p in paths.items()
    }
    assert layouts["bf16"] == layouts["fp32"]
    assert {dtype for _, dtype in layouts["bf16"].values()} == {ms.float32}


@requires_bf16
def test_bf16_trains_a_tiny_vit_like_fp32():
    import mindspore as ms
    from mindspore import nn

    from vit_exp.train.losses import CrossEntropySmooth

    rng = np.random.default_rng(2)
    x = ms.Tensor(rng.normal(size=(32, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 7, 32).astype(np.int32))
    ms.set_seed(2)
    fp32 = _same_weights("fp32")
    bf16 = _same_weights("bf16", fp32)
    losses = {}
    for net in (fp32, bf16):
        step = nn.TrainOneStepCell(
            nn.WithLossCell(net, CrossEntropySmooth(7, 0.0)), nn.SGD(net.trainable_params(), 0.1)
        )
        step.set_train(True)
        losses[net.precision] = [float(step(x, y).asnumpy()) for _ in range(15)]
    assert losses["bf16"][-1] < losses["bf16"][0] - 0.2  # it learns
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.01)  # on fp32's path


def test_auto_without_native_bf16_is_fp32_quietly_and_bf16_warns_once(monkeypatch, caplog):
    from vit_exp.models.config import ViTConfig
    from vit_exp.models.kernels import plan

    monkeypatch.setattr(plan, "cpu_has_bf16", lambda: False)
    plan.warn_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="vit_exp.models.kernels.plan"):
        auto = ViTConfig(precision="auto", fused_kernels="off")
        assert plan.plan_kernels(auto, "CPU") == plan.KernelPlan(precision="fp32")
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        net = tiny_vit(num_classes=3, num_layers=1, precision="bf16")
        tiny_vit(num_classes=3, num_layers=1, precision="bf16")
    assert net.precision == "fp32"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "device.precision=bf16 is not available" in warnings[0]
    assert "avx512_bf16" in warnings[0]


@requires_bf16
def test_auto_picks_bf16_on_a_bf16_cpu():
    from vit_exp.models.config import ViTConfig
    from vit_exp.models.kernels.plan import plan_kernels

    assert plan_kernels(ViTConfig(precision="auto"), "CPU").precision == "bf16"
    assert plan_kernels(ViTConfig(precision="fp32"), "CPU").precision == "fp32"


def test_precision_errors_name_the_key():
    from vit_exp.config import group_settings
    from vit_exp.models.config import ViTConfig
    from vit_exp.models.kernels.plan import plan_kernels

    with pytest.raises(ConfigError, match=r"device\.precision must be one of"):
        group_settings("device", precision="fp8")
    with pytest.raises(
        ConfigError, match=r"device\.precision=bf16 is for the CPU; on GPU use device\.amp_level"
    ):
        plan_kernels(ViTConfig(precision="bf16"), "GPU")
    assert plan_kernels(ViTConfig(precision="auto"), "Ascend").precision == "fp32"


def test_fp32_keeps_the_config_digest_runs_had_before_precision_existed():
    from omegaconf import OmegaConf

    from vit_exp.tracking.record.lifecycle import flatten
    from vit_exp.tracking.resume import comparable_config, config_differences, config_digest

    before = flatten(OmegaConf.create({"optim": {"lr": 0.1}, "device": {"target": "cpu"}}))
    default, bf16 = (
        flatten(OmegaConf.create({"optim": {"lr": 0.1}, "device": {"target": "cpu", "precision": p}}))
        for p in ("fp32", "bf16")
    )
    # a run recorded before the key existed is still found by resume=auto (same digest) ...
    assert config_digest(comparable_config(default)) == config_digest(comparable_config(before))
    # ... and bf16 is a different config
    assert config_differences(comparable_config(default), comparable_config(bf16)) == [
        "device.precision: (not set) -> bf16"
    ]


def _attention_reference(qkv: np.ndarray, heads: int, dout: np.ndarray):
    """Multi-head attention in float64 (the composed model's maths) and its gradient for ``dout``."""
    b, n, d3 = qkv.shape
    d = d3 // 3
    hd = d // heads
    split = qkv.astype(np.float64).reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)  # 3, b, h, n, hd
    q, k, v = split
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = (p @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    go = dout.astype(np.float64).reshape(b, n, heads, hd).transpose(0, 2, 1, 3)
    dv = p.transpose(0, 1, 3, 2) @ go
    dp = go @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = ds @ k / np.sqrt(hd)
    dk = ds.transpose(0, 1, 3, 2) @ q / np.sqrt(hd)
    dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(b, n, d3)
    return out, dqkv


def _fused_attention(qkv: np.ndarray, heads: int, dout: np.ndarray):
    from vit_exp.models.layers import FusedAttention

    out, (grad,) = _forward_and_grads(FusedAttention(heads), (qkv,), dout)
    return out, grad


@requires_fused_kernels
def test_one_kernel_attention_matches_the_composed_maths_forward_and_backward():
    rng = np.random.default_rng(3)
    b, n, heads, hd = 3, 17, 4, 8  # odd token count, several heads
    qkv = rng.normal(size=(b, n, 3 * heads * hd)).astype(np.float32)
    dout = rng.normal(size=(b, n, heads * hd)).astype(np.float32)
    out, dqkv = _fused_attention(qkv, heads, dout)
    expected_out, expected_dqkv = _attention_reference(qkv, heads, dout)
    np.testing.assert_allclose(out, expected_out, atol=1e-5 * np.abs(expected_out).max())
    np.testing.assert_allclose(dqkv, expected_dqkv, atol=1e-5 * np.abs(expected_dqkv).max())


@requires_fused_kernels
def test_fp32_onednn_kernels_agree_with_mindspore_ops_in_a_vit():
    """With the fused kernels on, the fp32 dense layers and attention run on the oneDNN kernels
    (kernels/plan.py), and the network computes what MindSpore's own ops compute."""
    import mindspore as ms
    from mindspore import nn

    from vit_exp.train.losses import CrossEntropySmooth

    size = dict(patch_size=4, embed_dim=128, num_heads=4, mlp_dim=256, num_layers=1)
    ms.set_seed(4)
    onednn = _same_weights("fp32", **size)
    composed = _same_weights("fp32", onednn, fused_kernels="off", **size)
    assert (onednn.plan.dense, onednn.plan.attention) == ("fp32", True)
    assert (composed.plan.dense, composed.plan.attention) == (None, False)
    rng = np.random.default_rng(5)
    x = ms.Tensor(rng.normal(size=(6, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 7, 6).astype(np.int32))
    grads = {}
    for name, net in (("onednn", onednn), ("composed", composed)):
        net.set_train(True)
        loss = nn.WithLossCell(net, CrossEntropySmooth(7, 0.0))
        value, g = ms.value_and_grad(loss, None, net.trainable_params())(x, y)
        grads[name] = (float(value.asnumpy()), [v.asnumpy() for v in g])
    assert grads["onednn"][0] == pytest.approx(grads["composed"][0], rel=1e-5)
    for ours, theirs, p in zip(
        grads["onednn"][1], grads["composed"][1], onednn.trainable_params(), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, atol=1e-5 * max(1.0, np.abs(theirs).max()), err_msg=p.name)


def _gelu(v: np.ndarray, approximate: bool) -> np.ndarray:
    from scipy.special import erf

    if approximate:
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))
    return 0.5 * v * (1 + erf(v / np.sqrt(2)))


@requires_fused_kernels
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=requires_bf16)])
def test_dense_with_residual_adds_it_in_the_kernel_and_passes_its_gradient_through(precision):
    from vit_exp.models.layers import LinearResidual

    rng = np.random.default_rng(6)
    m, k, n = 1100, 48, 40  # rows in several blocks per thread
    x, r, dy = (rng.normal(size=s).astype(np.float32) for s in ((m, k), (m, n), (m, n)))
    w = rng.normal(scale=0.1, size=(n, k)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    y, (dx, dw, db, dr) = _forward_and_grads(LinearResidual(precision), (x, w, b, r), dy)
    rounded = bf16_round if precision == "bf16" else (lambda v: v.astype(np.float64))
    expected = rounded(x) @ rounded(w).T + b + r
    np.testing.assert_allclose(y, expected, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(dx, rounded(dy) @ rounded(w), atol=1e-5 * np.abs(dx).max())
    np.testing.assert_allclose(dw, rounded(dy).T @ rounded(x), atol=1e-5 * np.abs(dw).max())
    np.testing.assert_allclose(db, dy.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(dr, dy)  # the residual's gradient is the output's


@requires_fused_kernels
@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=requires_bf16)])
def test_dense_with_gelu_in_its_output_pass_matches_gelu_of_the_dense_layer(precision, approximate):
    import mindspore as ms

    from vit_exp.models.layers import LinearGELU

    rng = np.random.default_rng(7)
    m, k, n = 1100, 40, 96
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = rng.normal(scale=0.3, size=(n, k)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    y = LinearGELU(precision, approximate)(ms.Tensor(x), ms.Tensor(w), ms.Tensor(b))
    rounded = bf16_round if precision == "bf16" else (lambda v: v.astype(np.float64))
    expected = _gelu(rounded(x) @ rounded(w).T + b, approximate)
    if precision == "bf16":  # handed on in bf16: the values the next bf16 kernel would round to
        assert y.dtype == ms.bfloat16
        y = y.astype(ms.float32).asnumpy()
        np.testing.assert_array_equal(y, bf16_round(y))
        np.testing.assert_allclose(y, expected, rtol=2**-8, atol=2e-5 * np.abs(expected).max())
    else:
        np.testing.assert_allclose(y.asnumpy(), expected, atol=2e-5 * np.abs(expected).max())


@requires_fused_kernels
def test_inference_fuses_gelu_and_residuals_and_computes_what_the_composed_ops_do(execution_mode):
    """With the oneDNN kernels each block adds its residual in the last dense layer's output pass
    (training too, dropout being off) and inference runs GELU in dense1's: same logits as
    MindSpore's own ops."""
    import mindspore as ms

    size = dict(patch_size=4, embed_dim=64, num_heads=4, mlp_dim=128, num_layers=2)
    ms.set_seed(8)
    onednn = _same_weights("fp32", **size)
    composed = _same_weights("fp32", onednn, fused_kernels="off", **size)
    block = onednn.transformer.layers[0]
    assert block[0].fuse and block[1].fuse and block[1].cell[1].fuse_gelu
    assert not composed.transformer.layers[0][0].fuse
    x = ms.Tensor(np.random.default_rng(9).normal(size=(5, 3, 32, 32)).astype(np.float32))
    for net in (onednn, composed):
        net.set_train(False)
    expected = composed(x).asnumpy()
    np.testing.assert_allclose(onednn(x).asnumpy(), expected, atol=1e-5 * np.abs(expected).max())


@requires_bf16
@pytest.mark.parametrize("attention_keep_prob", [1.0, 0.9])  # the fused attention kernel, the composed one
def test_bf16_inference_hands_activations_on_in_bf16_and_gives_the_training_path_logits(
    execution_mode, attention_keep_prob
):
    """bf16 inference hands LayerNorm's, attention's and the fused GELU's outputs to the next dense
    kernel as bfloat16; training mode (float32 in between, separate GELU kernel) computes the same
    logits, and so does inference with dropout configured (no residual fusion)."""
    import mindspore as ms

    size = dict(patch_size=4, embed_dim=64, num_heads=4, mlp_dim=128, num_layers=2)
    net = _same_weights("bf16", attention_keep_prob=attention_keep_prob, **size)
    norm, attention = net.transformer.layers[0][0].cell
    assert norm.kernels.bf16_output
    assert attention.fused == (attention_keep_prob == 1.0)
    x = ms.Tensor(np.random.default_rng(10).normal(size=(5, 3, 32, 32)).astype(np.float32))
    net.set_train(False)
    inference = net(x).asnumpy()
    if attention_keep_prob == 1.0:  # attention dropout is random in training: compare there only
        net.set_train(True)
        training = net(x).asnumpy()
        np.testing.assert_allclose(inference, training, atol=1e-5 * np.abs(training).max())
    assert inference.dtype == np.float32
    with_dropout = _same_weights("bf16", net, keep_prob=0.9, attention_keep_prob=attention_keep_prob, **size)
    assert not with_dropout.transformer.layers[0][0].fuse
    with_dropout.set_train(False)
    np.testing.assert_allclose(with_dropout(x).asnumpy(), inference, atol=1e-5 * np.abs(inference).max())
