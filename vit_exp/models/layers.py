"""Faster stand-ins for the MindSpore layers that were slow on CPU in a ViT step: the same maths and
parameter names, so checkpoints cannot tell them apart."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from vit_exp.models.config import ViTConfig
from vit_exp.models.kernels import ops as aot
from vit_exp.models.kernels.build import CPU_KERNELS, ONEDNN_KERNELS
from vit_exp.models.kernels.ops import custom_op


class FusedLayerNorm(nn.Cell):
    """``(x, gamma, beta) -> LayerNorm(x) * gamma + beta`` over the last axis, one kernel each way.
    ``bf16_output``: inference returns bfloat16 (rounded as the bf16 dense kernel reading it would)."""

    def __init__(self, epsilon: float, bf16_output: bool = False):
        super().__init__()
        self.epsilon = Tensor([epsilon], ms.float32)
        self.forward = custom_op(CPU_KERNELS, aot.LAYER_NORM_FORWARD, aot.same, aot.same)
        self.backward = custom_op(CPU_KERNELS, aot.LAYER_NORM_BACKWARD, aot.layer_norm_grad_shapes, aot.same3)
        self.bf16_output = bf16_output
        if bf16_output:
            self.forward_bf16 = custom_op(CPU_KERNELS, aot.LAYER_NORM_FORWARD_BF16, aot.same, aot.bfloat16)

    def construct(self, x: Tensor, gamma: Parameter, beta: Parameter) -> Tensor:
        if self.bf16_output and not self.training:
            return self.forward_bf16(x, gamma, beta, self.epsilon)
        return self.forward(x, gamma, beta, self.epsilon)

    def bprop(self, x, gamma, beta, out, dout):
        dx, dgamma, dbeta = self.backward(x, dout, gamma, self.epsilon)
        return dx, dgamma, dbeta


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with ``gamma`` / ``beta`` parameters (the names checkpoints use).
    ``fused``: :class:`FusedLayerNorm`. Otherwise training composes it from reductions (whose gradient
    runs ~3x faster than LayerNormGrad) and inference uses ops.LayerNorm."""

    def __init__(self, dim: int, epsilon: float, fused: bool = False, bf16_output: bool = False):
        super().__init__()
        self.epsilon = epsilon
        self.gamma = Parameter(initializer("ones", (dim,), ms.float32), name="gamma")
        self.beta = Parameter(initializer("zeros", (dim,), ms.float32), name="beta")
        self.inference_kernel = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=epsilon)
        self.fused = fused
        if fused:
            self.kernels = FusedLayerNorm(epsilon, bf16_output)

    def construct(self, x: Tensor) -> Tensor:
        if self.fused:
            return self.kernels(x, self.gamma, self.beta)
        if self.training:
            shape = x.shape
            flat = x.reshape(-1, shape[-1])  # 2-D keeps the gamma/beta gradient a single-axis reduction
            centred = flat - flat.mean(-1, keep_dims=True)
            variance = (centred * centred).mean(-1, keep_dims=True)
            return (centred * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta).reshape(shape)
        return self.inference_kernel(x, self.gamma, self.beta)[0]


class Linear(nn.Cell):
    """``(x, weight, bias) -> x @ weight.T + bias`` on oneDNN's GEMM, bias and its gradient folded
    in; fp32 in and out, multiplying in ``precision`` (fp32 | bf16, see kernels/plan.py)."""

    def __init__(self, precision: str):
        super().__init__()
        forward, backward = aot.DENSE_FORWARD[precision], aot.DENSE_BACKWARD[precision]
        self.forward = custom_op(ONEDNN_KERNELS, forward, aot.dense_shape, aot.weight_dtype)
        self.backward = custom_op(ONEDNN_KERNELS, backward, aot.dense_grad_shapes, aot.same3)

    def construct(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return self.forward(x, weight, bias)

    def bprop(self, x, weight, bias, out, dout):
        return self.backward(x, weight, dout)


class LinearResidual(nn.Cell):
    """``(x, weight, bias, residual) -> residual + x @ weight.T + bias``: :class:`Linear` with the
    residual add in its output pass (one kernel fewer); the residual's gradient is the output's."""

    def __init__(self, precision: str):
        super().__init__()
        forward, backward = aot.DENSE_RESIDUAL_FORWARD[precision], aot.DENSE_BACKWARD[precision]
        self.forward = custom_op(ONEDNN_KERNELS, forward, aot.dense_shape, aot.weight_dtype)
        self.backward = custom_op(ONEDNN_KERNELS, backward, aot.dense_grad_shapes, aot.same3)

    def construct(self, x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor) -> Tensor:
        return self.forward(x, weight, bias, residual)

    def bprop(self, x, weight, bias, residual, out, dout):
        dx, dweight, dbias = self.backward(x, weight, dout)
        return dx, dweight, dbias, dout


class LinearGELU(nn.Cell):
    """``(x, weight, bias) -> GELU(x @ weight.T + bias)`` in one kernel, inference only (GELU's backward
    needs its input). In bf16 the output is bfloat16, as the next dense kernel would round it."""

    def __init__(self, precision: str, approximate: bool):
        super().__init__()
        function = aot.DENSE_GELU_FORWARD[precision, approximate]
        dtype = aot.bfloat16 if precision == "bf16" else aot.same
        self.forward = custom_op(ONEDNN_KERNELS, function, aot.dense_shape, dtype)

    def construct(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return self.forward(x, weight, bias)


class FusedAttention(nn.Cell):
    """``qkv (B, n, 3d) -> (B, n, d)``: per head softmax(q k^T / sqrt(hd)) v, one fp32 kernel each way
    (no split or transposes). ``bf16_output``: inference returns bfloat16 for the bf16 out projection."""

    def __init__(self, num_heads: int, bf16_output: bool = False):
        super().__init__()
        self.heads = Tensor(np.zeros(num_heads, np.float32))  # the kernels read the head count off its shape
        self.forward = custom_op(ONEDNN_KERNELS, aot.ATTENTION_FORWARD, aot.attention_shape, aot.same)
        self.backward = custom_op(ONEDNN_KERNELS, aot.ATTENTION_BACKWARD, aot.same, aot.same)
        self.bf16_output = bf16_output
        if bf16_output:
            self.forward_bf16 = custom_op(
                ONEDNN_KERNELS, aot.ATTENTION_FORWARD_BF16, aot.attention_shape, aot.bfloat16
            )

    def construct(self, qkv: Tensor) -> Tensor:
        if self.bf16_output and not self.training:
            return self.forward_bf16(qkv, self.heads)
        return self.forward(qkv, self.heads)

    def bprop(self, qkv, out, dout):
        return (self.backward(qkv, self.heads, dout),)


class Dense(nn.Cell):
    """``x @ weight.T + bias`` with nn.Dense's names and initialisation; a broadcast Add, not BiasAdd
    (its gradient runs ~6x faster than BiasAddGrad). ``kernel`` "fp32" / "bf16": oneDNN kernels
    instead (:class:`Linear`, or :class:`LinearResidual` with a ``residual``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: str | None = None):
        super().__init__()
        reference = nn.Dense(in_channels, out_channels)  # borrow its default initialisation
        self.weight = Parameter(reference.weight.data.copy(), name="weight")
        self.bias = Parameter(reference.bias.data.copy(), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)
        self.use_kernel = kernel is not None
        if self.use_kernel:
            self.linear = Linear(kernel)
            self.linear_residual = LinearResidual(kernel)

    def construct(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if self.use_kernel:
            if residual is None:
                return self.linear(x, self.weight, self.bias)
            return self.linear_residual(x, self.weight, self.bias, residual)
        y = self.matmul(x, self.weight) + self.bias
        return y if residual is None else y + residual


class ExactGELU(nn.Cell):
    """Exact (erf) GELU with a hand-written gradient (autodiff's would add Div and Pow kernels)."""

    def construct(self, x: Tensor) -> Tensor:
        return x * (0.5 + 0.5 * ops.erf(x * 0.7071067811865476))

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor):
        cdf = 0.5 + 0.5 * ops.erf(x * 0.7071067811865476)
        pdf = ops.exp(x * x * -0.5) * 0.3989422804014327
        return (dout * (cdf + x * pdf),)


class FusedGELU(nn.Cell):
    """GELU (tanh form if ``approximate``, else exact erf) forward and gradient, one kernel each."""

    def __init__(self, approximate: bool):
        super().__init__()
        self.forward = custom_op(CPU_KERNELS, aot.GELU_FORWARD[approximate], aot.same, aot.same)
        self.backward = custom_op(CPU_KERNELS, aot.GELU_BACKWARD[approximate], aot.same, aot.same)

    def construct(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor):
        return (self.backward(x, dout),)


def gelu(approximate: bool, fused: bool) -> nn.Cell:
    """GELU, tanh (``approximate``) or exact erf form; as one fused kernel when ``fused``."""
    if fused:
        return FusedGELU(approximate)
    return nn.GELU(approximate=True) if approximate else ExactGELU()


class PatchEmbedding(nn.Cell):
    """Patches projected by a Conv2d with kernel = stride = patch, its weight in ``conv`` as checkpoints
    store it. ``patch_embed`` "matmul": the same as a reshape and one matrix multiply, far faster on CPU."""

    def __init__(self, config: ViTConfig, kernel: str | None = None):
        super().__init__()
        patch, dim = config.patch_size, config.embed_dim
        self.patch_size = patch
        self.grid = config.image_size // patch
        self.embed_dim = dim
        self.use_matmul = config.patch_embed == "matmul"
        self.conv = nn.Conv2d(
            config.input_channels, dim, kernel_size=patch, stride=patch, has_bias=True, pad_mode="valid"
        )
        self.matmul = ops.MatMul(transpose_b=True)
        self.use_kernel = kernel is not None and self.use_matmul
        if self.use_kernel:
            self.linear = Linear(kernel)

    def construct(self, x: Tensor) -> Tensor:
        b, c = x.shape[0], x.shape[1]
        g, p = self.grid, self.patch_size
        if self.use_matmul:
            # (B, C, g, p, g, p) -> (B, g, g, C, p, p): each row is one patch in (C, kh, kw) order.
            x = x.reshape(b, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b * g * g, c * p * p)
            w = self.conv.weight.reshape(self.embed_dim, c * p * p)
            x = self.linear(x, w, self.conv.bias) if self.use_kernel else self.matmul(x, w) + self.conv.bias
            return x.reshape(b, g * g, self.embed_dim)
        x = self.conv(x)
        return x.reshape(b, self.embed_dim, g * g).transpose(0, 2, 1)
