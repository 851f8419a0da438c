"""Fused CPU kernels (vit_exp/models/kernels/): same maths as the composed MindSpore ops, gradients
included, and a clear fallback or error where they cannot be built."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.special import erf

from tests.helpers.models import requires_fused_kernels, tiny_vit
from vit_exp.errors import ConfigError


def _grad_of_weighted_sum(cell, inputs, weights, wrt_params=False):
    """Gradients of ``sum(cell(*inputs) * weights)`` (a non-trivial upstream gradient)."""
    import mindspore as ms
    from mindspore import nn, ops

    class Loss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.cell = cell
            self.weights = ms.Tensor(weights)

        def construct(self, *args):
            return (self.cell(*args) * self.weights).sum()

    loss = Loss()
    if wrt_params:
        grad = ops.GradOperation(get_all=True, get_by_list=True)
        return grad(loss, ms.ParameterTuple(cell.trainable_params()))(*inputs)
    return ops.GradOperation(get_all=True)(loss)(*inputs)


@requires_fused_kernels
@pytest.mark.parametrize("approximate", [False, True])
def test_fused_gelu_matches_reference_values_and_gradient(approximate):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.models.layers import ExactGELU, FusedGELU

    rng = np.random.default_rng(0)
    # wide range: the kernel's erf/exp approximations clamp at |x| = 4 / exp(-87)
    x = (
        np.concatenate([rng.normal(0, 3, 4000), np.linspace(-12, 12, 1100)])
        .astype(np.float32)
        .reshape(-1, 17)
    )
    xd = x.astype(np.float64)
    if approximate:
        expected = 0.5 * xd * (1 + np.tanh(np.sqrt(2 / np.pi) * (xd + 0.044715 * xd**3)))
        reference = nn.GELU(approximate=True)
    else:
        expected = 0.5 * xd * (1 + erf(xd / np.sqrt(2)))
        reference = ExactGELU()
    fused = FusedGELU(approximate)
    np.testing.assert_allclose(fused(ms.Tensor(x)).asnumpy(), expected, atol=2e-6, rtol=1e-5)

    weights = rng.normal(size=x.shape).astype(np.float32)
    (got,) = _grad_of_weighted_sum(fused, [ms.Tensor(x)], weights)
    (want,) = _grad_of_weighted_sum(reference, [ms.Tensor(x)], weights)
    np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), atol=1e-5, rtol=1e-4)


@requires_fused_kernels
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 192), (1100, 64)])
def test_fused_layer_norm_matches_composed_values_and_gradients(shape):
    import mindspore as ms

    from vit_exp.models.layers import LayerNorm

    rng = np.random.default_rng(1)
    d = shape[-1]
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
    fused, composed = LayerNorm(d, 1e-6, fused=True), LayerNorm(d, 1e-6, fused=False)
    for norm in (fused, composed):
        norm.gamma.set_data(ms.Tensor(rng.normal(1, 0.2, d).astype(np.float32)))
        norm.beta.set_data(ms.Tensor(rng.normal(0, 0.2, d).astype(np.float32)))
    composed.gamma.set_data(fused.gamma.data.copy())
    composed.beta.set_data(fused.beta.data.copy())
    fused.set_train(True)
    composed.set_train(True)

    xd = x.astype(np.float64)
    gamma, beta = fused.gamma.asnumpy().astype(np.float64), fused.beta.asnumpy().astype(np.float64)
    expected = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-6) * gamma + beta
    np.testing.assert_allclose(fused(ms.Tensor(x)).asnumpy(), expected, atol=2e-5, rtol=1e-5)

    weights = rng.normal(size=shape).astype(np.float32)
    (dx_f,), (dg_f, db_f) = _grad_of_weighted_sum(fused, [ms.Tensor(x)], weights, wrt_params=True)
    (dx_c,), (dg_c, db_c) = _grad_of_weighted_sum(composed, [ms.Tensor(x)], weights, wrt_params=True)
    np.testing.assert_allclose(dx_f.asnumpy(), dx_c.asnumpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(dg_f.asnumpy(), dg_c.asnumpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(db_f.asnumpy(), db_c.asnumpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(db_f.asnumpy(), weights.reshape(-1, d).sum(0), atol=1e-4, rtol=1e-4)


@requires_fused_kernels
def test_vit_with_and_without_fused_kernels_train_identically():
    """One optimizer step from the same weights: same loss and same updated parameters."""
    import mindspore as ms
    from mindspore import nn

    rng = np.random.default_rng(2)
    x = ms.Tensor(rng.normal(size=(4, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, 5, 4).astype(np.int32))
    fused = tiny_vit(fused_kernels="on")
    plain = tiny_vit(fused_kernels="off")
    assert fused.uses_fused_kernels and not plain.uses_fused_kernels
    ms.load_param_into_net(
        plain, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in fused.get_parameters()}
    )
    losses, params = [], []
    for net in (fused, plain):
        loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        step = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn), nn.SGD(net.trainable_params(), 0.5))
        step.set_train(True)
        losses.append(float(step(x, y).asnumpy()))
        params.append({p.name: p.asnumpy() for p in net.get_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert params[0].keys() == params[1].keys()
    for name in params[0]:
        np.testing.assert_allclose(params[0][name], params[1][name], atol=1e-5, rtol=1e-4, err_msg=name)


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """An empty kernel cache and a compiler that does not exist; the real library is restored after."""
    from vit_exp.models.kernels import build, plan

    monkeypatch.setenv("VIT_EXP_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    build.CPU_KERNELS.forget()
    plan.warn_once.cache_clear()
    yield
    monkeypatch.undo()
    build.CPU_KERNELS.forget()


def test_fused_kernels_on_without_compiler_is_one_clear_error(no_compiler):
    with pytest.raises(ConfigError, match=r"model\.fused_kernels=on .*no C\+\+ compiler"):
        tiny_vit(num_layers=1, fused_kernels="on")


def test_fused_kernels_auto_without_compiler_falls_back_with_a_warning(no_compiler, caplog):
    import mindspore as ms

    with caplog.at_level(logging.WARNING, logger="vit_exp.models.kernels.plan"):
        net = tiny_vit(num_classes=3, num_layers=1)
        tiny_vit(num_classes=3, num_layers=1)
    assert not net.uses_fused_kernels
    assert caplog.text.count("fused CPU kernels unavailable") == 1
    assert net(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32))).shape == (1, 3)


def test_unknown_fused_kernels_mode_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.fused_kernels must be one of"):
        tiny_vit(fused_kernels="fast")


@requires_fused_kernels
def test_kernel_library_is_built_once_and_reused(tmp_path, monkeypatch):
    from vit_exp.models.kernels.build import CPU_KERNELS

    monkeypatch.setenv("VIT_EXP_KERNEL_CACHE", str(tmp_path))
    CPU_KERNELS.forget()
    try:
        first = CPU_KERNELS.path()
        assert first.parent == tmp_path and first.stat().st_size > 0
        stamp = first.stat().st_mtime_ns
        CPU_KERNELS.forget()
        assert CPU_KERNELS.path() == first
        assert first.stat().st_mtime_ns == stamp  # found on disk, not rebuilt
        assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left behind
    finally:
        monkeypatch.undo()
        CPU_KERNELS.forget()
