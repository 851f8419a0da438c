"""Layers written for speed on MindSpore's CPU backend: the textbook maths and parameter names, faster.

Each replaces a MindSpore layer whose CPU kernel (or gradient) was the slow part of a ViT step
(figures in bench/RESULTS.md); checkpoints cannot tell them apart from the originals.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from vit_exp.models.bf16 import dense_cells
from vit_exp.models.fused import FusedGELU, FusedLayerNorm


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with ``gamma`` / ``beta`` parameters (the names checkpoints use).

    ``fused``: one fused kernel per pass (fused.py). Otherwise training composes the normalisation
    from reductions, whose gradient runs ~3x faster than LayerNormGrad; inference uses ops.LayerNorm.
    """

    def __init__(self, dim: int, epsilon: float, fused: bool = False):
        super().__init__()
        self.epsilon = epsilon
        self.gamma = Parameter(initializer("ones", (dim,), ms.float32), name="gamma")
        self.beta = Parameter(initializer("zeros", (dim,), ms.float32), name="beta")
        self.inference_kernel = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=epsilon)
        self.fused = fused
        if fused:
            self.kernels = FusedLayerNorm(epsilon)

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


class Bf16Linear(nn.Cell):
    """``(x, weight, bias) -> x @ weight.T + bias`` with bf16 multiplies, fp32 in and out (bf16.py)."""

    def __init__(self):
        super().__init__()
        self.forward, self.backward = dense_cells()

    def construct(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return self.forward(x, weight, bias)

    def bprop(self, x, weight, bias, out, dout):
        return self.backward(x, weight, dout)


class Dense(nn.Cell):
    """``x @ weight.T + bias`` with nn.Dense's names and initialisation.

    A broadcast Add instead of BiasAdd: its gradient is a ReduceSum, ~6x faster than BiasAddGrad.
    ``bf16``: the multiply in bfloat16 with fp32 accumulation (:class:`Bf16Linear`).
    """

    def __init__(self, in_channels: int, out_channels: int, bf16: bool = False):
        super().__init__()
        reference = nn.Dense(in_channels, out_channels)  # borrow its default initialisation
        self.weight = Parameter(reference.weight.data.copy(), name="weight")
        self.bias = Parameter(reference.bias.data.copy(), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)
        self.bf16 = bf16
        if bf16:
            self.linear = Bf16Linear()

    def construct(self, x: Tensor) -> Tensor:
        if self.bf16:
            return self.linear(x, self.weight, self.bias)
        return self.matmul(x, self.weight) + self.bias


class ExactGELU(nn.Cell):
    """``x * Phi(x)`` (erf form, as ``nn.GELU(approximate=False)``) with a hand-written gradient.

    The gradient ``Phi(x) + x * phi(x)`` avoids the Div and Pow kernels of the automatic one.
    """

    def construct(self, x: Tensor) -> Tensor:
        return x * (0.5 + 0.5 * ops.erf(x * 0.7071067811865476))

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor):
        cdf = 0.5 + 0.5 * ops.erf(x * 0.7071067811865476)
        pdf = ops.exp(x * x * -0.5) * 0.3989422804014327
        return (dout * (cdf + x * pdf),)


def gelu(approximate: bool, fused: bool) -> nn.Cell:
    """GELU, tanh (``approximate``) or exact erf form; as one fused kernel when ``fused``."""
    if fused:
        return FusedGELU(approximate)
    return nn.GELU(approximate=True) if approximate else ExactGELU()


class PatchEmbedding(nn.Cell):
    """Cut the image into patches and project them: a Conv2d with kernel = stride = patch.

    The weight always lives in ``conv`` (shape ``(dim, C, p, p)``, as checkpoints store it).
    ``use_matmul`` computes the same maths as reshape-to-patches and one matrix multiply, which
    MindSpore's CPU backend runs far faster than its Conv2d.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        embed_dim: int,
        channels: int,
        use_matmul: bool,
        bf16: bool = False,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.embed_dim = embed_dim
        self.use_matmul = use_matmul
        self.conv = nn.Conv2d(
            channels, embed_dim, kernel_size=patch_size, stride=patch_size, has_bias=True, pad_mode="valid"
        )
        self.matmul = ops.MatMul(transpose_b=True)
        self.bf16 = bf16 and use_matmul
        if self.bf16:
            self.linear = Bf16Linear()

    def construct(self, x: Tensor) -> Tensor:
        b, c = x.shape[0], x.shape[1]
        g, p = self.grid, self.patch_size
        if self.use_matmul:
            # (B, C, g, p, g, p) -> (B, g, g, C, p, p): each row is one patch in (C, kh, kw) order.
            x = x.reshape(b, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b * g * g, c * p * p)
            w = self.conv.weight.reshape(self.embed_dim, c * p * p)
            x = self.linear(x, w, self.conv.bias) if self.bf16 else self.matmul(x, w) + self.conv.bias
            return x.reshape(b, g * g, self.embed_dim)
        x = self.conv(x)
        return x.reshape(b, self.embed_dim, g * g).transpose(0, 2, 1)
