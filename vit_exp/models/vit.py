"""Vision Transformer in MindSpore, laid out so the published ``vit_b_16_224.ckpt`` loads unchanged.

Parameter names follow the reference recipe (see ``shared/RECIPE.md``):
``cls``, ``pos_embedding``, ``patch_embedding.conv.*``, ``transformer.layers.{i}.0.cell.0.*``
(pre-attention LayerNorm), ``transformer.layers.{i}.0.cell.1.{qkv,out}.*``,
``transformer.layers.{i}.1.cell.0.*`` (pre-MLP LayerNorm),
``transformer.layers.{i}.1.cell.1.{dense1,dense2}.*``, ``norm.*`` and ``dense.*`` (the classification head).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from vit_exp.errors import ConfigError
from vit_exp.models.fused import FusedGELU, FusedLayerNorm, use_fused_kernels

PATCH_EMBED_IMPLS = ("matmul", "conv")


def validate_vit_args(
    image_size: int,
    patch_size: int,
    embed_dim: int,
    num_heads: int,
    num_layers: int,
    mlp_dim: int,
    num_classes: int,
    keep_prob: float = 1.0,
    attention_keep_prob: float = 1.0,
    patch_embed: str = "matmul",
) -> None:
    """Raise ConfigError naming the ``model.*`` key when the ViT arguments cannot form a model."""
    positive = {
        "image_size": image_size,
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "num_heads": num_heads,
        "num_layers": num_layers,
        "mlp_dim": mlp_dim,
        "num_classes": num_classes,
    }
    for key, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")
    if image_size % patch_size:
        raise ConfigError(f"model.image_size={image_size} is not divisible by model.patch_size={patch_size}")
    if embed_dim % num_heads:
        raise ConfigError(f"model.embed_dim={embed_dim} is not divisible by model.num_heads={num_heads}")
    for key, value in (("keep_prob", keep_prob), ("attention_keep_prob", attention_keep_prob)):
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"model.{key} must be in (0, 1] (1.0 = no dropout), got {value}")
    if patch_embed not in PATCH_EMBED_IMPLS:
        raise ConfigError(f"model.patch_embed must be one of {PATCH_EMBED_IMPLS}, got {patch_embed!r}")


def _dropout(keep_prob: float) -> nn.Cell:
    return nn.Dropout(p=1.0 - keep_prob) if keep_prob < 1.0 else nn.Identity()


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with ``gamma`` / ``beta`` parameters (the names checkpoints use).

    With ``fused_kernels`` both passes run as one vectorised kernel each (vit_exp/models/fused.py).
    Otherwise inference uses MindSpore's LayerNorm kernel, and training computes the same
    normalisation from reductions and element-wise ops, whose gradient MindSpore's CPU backend runs
    about 3x faster than its LayerNormGrad kernel (bench/RESULTS.md). All agree within 1e-6.
    """

    def __init__(self, dim: int, epsilon: float, fused_kernels: bool = False):
        super().__init__()
        self.epsilon = epsilon
        self.gamma = Parameter(initializer("ones", (dim,), ms.float32), name="gamma")
        self.beta = Parameter(initializer("zeros", (dim,), ms.float32), name="beta")
        self.fused = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=epsilon)
        self.use_kernels = fused_kernels
        if fused_kernels:
            self.kernels = FusedLayerNorm(epsilon)

    def construct(self, x: Tensor) -> Tensor:
        if self.use_kernels:
            return self.kernels(x, self.gamma, self.beta)
        if self.training:
            shape = x.shape
            flat = x.reshape(-1, shape[-1])  # 2-D keeps the gamma/beta gradient a single-axis reduction
            centred = flat - flat.mean(-1, keep_dims=True)
            variance = (centred * centred).mean(-1, keep_dims=True)
            return (centred * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta).reshape(shape)
        return self.fused(x, self.gamma, self.beta)[0]


class Dense(nn.Cell):
    """``x @ weight.T + bias`` with nn.Dense's parameter names and initialisation.

    The bias is added with a broadcast Add rather than BiasAdd: on MindSpore's CPU backend the bias
    gradient then comes from a ReduceSum, about 6x faster than BiasAddGrad (bench/RESULTS.md).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        reference = nn.Dense(in_channels, out_channels)  # borrow its default initialisation
        self.weight = Parameter(reference.weight.data.copy(), name="weight")
        self.bias = Parameter(reference.bias.data.copy(), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x: Tensor) -> Tensor:
        return self.matmul(x, self.weight) + self.bias


class ExactGELU(nn.Cell):
    """``x * Phi(x)`` with the erf-based normal CDF, and a hand-written gradient.

    Same values as ``nn.GELU(approximate=False)``; the gradient ``Phi(x) + x * phi(x)`` avoids the
    Div and Pow kernels MindSpore's automatic gradient of the erf form runs on CPU.
    """

    def construct(self, x: Tensor) -> Tensor:
        return x * (0.5 + 0.5 * ops.erf(x * 0.7071067811865476))

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor):
        cdf = 0.5 + 0.5 * ops.erf(x * 0.7071067811865476)
        pdf = ops.exp(x * x * -0.5) * 0.3989422804014327
        return (dout * (cdf + x * pdf),)


class PatchEmbedding(nn.Cell):
    """Split the image into patches and project them: a Conv2d with kernel = stride = patch.

    The weight always lives in ``conv`` with the Conv2d shape ``(dim, C, p, p)`` so checkpoints keep
    their layout. ``impl="matmul"`` computes the same maths as a reshape-to-patches and one matrix
    multiply, which MindSpore runs far faster on CPU than its Conv2d kernel.
    """

    def __init__(self, image_size: int, patch_size: int, embed_dim: int, input_channels: int, impl: str):
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.embed_dim = embed_dim
        self.use_matmul = impl == "matmul"
        self.conv = nn.Conv2d(
            input_channels,
            embed_dim,
            kernel_size=patch_size,
            stride=patch_size,
            has_bias=True,
            pad_mode="valid",
        )
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x: Tensor) -> Tensor:
        b, c = x.shape[0], x.shape[1]
        g, p = self.grid, self.patch_size
        if self.use_matmul:
            # (B, C, g, p, g, p) -> (B, g, g, C, p, p): each row is one patch in (C, kh, kw) order.
            x = x.reshape(b, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b * g * g, c * p * p)
            w = self.conv.weight.reshape(self.embed_dim, c * p * p)
            x = self.matmul(x, w) + self.conv.bias
            return x.reshape(b, g * g, self.embed_dim)
        x = self.conv(x)
        return x.reshape(b, self.embed_dim, g * g).transpose(0, 2, 1)


class Attention(nn.Cell):
    """Multi-head self-attention with one fused ``qkv`` projection and an ``out`` projection."""

    def __init__(self, dim: int, num_heads: int, keep_prob: float, attention_keep_prob: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Dense(dim, dim * 3)
        self.out = Dense(dim, dim)
        self.attn_drop = _dropout(attention_keep_prob)
        self.out_drop = _dropout(keep_prob)
        self.q_matmul_k = ops.BatchMatMul(transpose_b=True)
        self.attn_matmul_v = ops.BatchMatMul()
        self.softmax = nn.Softmax(axis=-1)

    def construct(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        # Split the fused projection on its 2-D form: indexing a 5-D (3, B, H, N, hd) view runs
        # through MindSpore's CPU StridedSlice, which cost 6x the whole attention (bench/RESULTS.md).
        q, k, v = ops.split(self.qkv(x.reshape(b * n, d)), d, axis=-1)
        q = (q * self.scale).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        k = k.reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        v = v.reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        attn = self.softmax(self.q_matmul_k(q, k))
        attn = self.attn_drop(attn)
        x = self.attn_matmul_v(attn, v).transpose(0, 2, 1, 3).reshape(b * n, d)
        x = self.out_drop(self.out(x))
        return x.reshape(b, n, d)


class FeedForward(nn.Cell):
    """The MLP block: ``dense1`` -> GELU -> ``dense2``, dropout after each."""

    def __init__(
        self, dim: int, mlp_dim: int, keep_prob: float, gelu_approximate: bool, fused_kernels: bool = False
    ):
        super().__init__()
        self.dense1 = Dense(dim, mlp_dim)
        if fused_kernels:
            self.activation = FusedGELU(gelu_approximate)
        else:
            self.activation = nn.GELU(approximate=True) if gelu_approximate else ExactGELU()
        self.dense2 = Dense(mlp_dim, dim)
        self.dropout = _dropout(keep_prob)

    def construct(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        x = self.dropout(self.activation(self.dense1(x.reshape(b * n, d))))
        x = self.dropout(self.dense2(x))
        return x.reshape(b, n, d)


class ResidualCell(nn.Cell):
    """``x + cell(x)``; the wrapped cell is stored as ``cell`` (checkpoint names depend on it)."""

    def __init__(self, cell: nn.Cell):
        super().__init__()
        self.cell = cell

    def construct(self, x: Tensor) -> Tensor:
        return x + self.cell(x)


class TransformerEncoder(nn.Cell):
    """``num_layers`` pre-norm blocks stored as ``layers.{i}.0`` (attention) and ``layers.{i}.1`` (MLP)."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        keep_prob: float,
        attention_keep_prob: float,
        gelu_approximate: bool,
        layer_norm_eps: float,
        fused_kernels: bool = False,
    ):
        super().__init__()
        blocks = []
        for _ in range(num_layers):
            attention = nn.SequentialCell(
                [
                    LayerNorm(dim, layer_norm_eps, fused_kernels),
                    Attention(dim, num_heads, keep_prob, attention_keep_prob),
                ]
            )
            mlp = nn.SequentialCell(
                [
                    LayerNorm(dim, layer_norm_eps, fused_kernels),
                    FeedForward(dim, mlp_dim, keep_prob, gelu_approximate, fused_kernels),
                ]
            )
            blocks.append(nn.SequentialCell([ResidualCell(attention), ResidualCell(mlp)]))
        self.layers = nn.SequentialCell(blocks)

    def construct(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ViT(nn.Cell):
    """Vision Transformer classifier (pre-norm encoder, class token, learned 1-D position embedding).

    Args mirror the reference recipe's ViT arguments. Dropout is given as keep-probabilities
    (1.0 = off). ``gelu_approximate`` picks the tanh GELU (the reference's) or the exact erf GELU.
    ``patch_embed`` picks how the patch projection is computed ("matmul" or "conv"); both give the
    same result from the same ``patch_embedding.conv`` parameters. ``fused_kernels`` (auto | on |
    off) runs GELU and LayerNorm as fused CPU kernels (vit_exp/models/fused.py); same parameters,
    results equal to the composed ops within 1e-5.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        num_classes: int = 1000,
        input_channels: int = 3,
        keep_prob: float = 1.0,
        attention_keep_prob: float = 1.0,
        gelu_approximate: bool = True,
        layer_norm_eps: float = 1e-7,
        patch_embed: str = "matmul",
        fused_kernels: str = "auto",
    ):
        super().__init__()
        validate_vit_args(
            image_size,
            patch_size,
            embed_dim,
            num_heads,
            num_layers,
            mlp_dim,
            num_classes,
            keep_prob,
            attention_keep_prob,
            patch_embed,
        )
        self.image_size = image_size
        self.num_classes = num_classes
        self.uses_fused_kernels = use_fused_kernels(fused_kernels)
        num_patches = (image_size // patch_size) ** 2
        self.patch_embedding = PatchEmbedding(image_size, patch_size, embed_dim, input_channels, patch_embed)
        self.cls = Parameter(initializer(Normal(sigma=1.0), (1, 1, embed_dim), ms.float32), name="cls")
        self.pos_embedding = Parameter(
            initializer(Normal(sigma=1.0), (1, num_patches + 1, embed_dim), ms.float32),
            name="pos_embedding",
        )
        self.dropout = _dropout(keep_prob)
        self.transformer = TransformerEncoder(
            embed_dim,
            num_layers,
            num_heads,
            mlp_dim,
            keep_prob,
            attention_keep_prob,
            gelu_approximate,
            layer_norm_eps,
            self.uses_fused_kernels,
        )
        self.norm = LayerNorm(embed_dim, layer_norm_eps, self.uses_fused_kernels)
        self.dense = nn.Dense(embed_dim, num_classes)
        self.concat = ops.Concat(axis=1)
        self.tile = ops.Tile()

    def construct(self, x: Tensor) -> Tensor:
        x = self.patch_embedding(x)
        cls = self.tile(self.cls, (x.shape[0], 1, 1))
        x = self.concat((cls, x)) + self.pos_embedding
        x = self.dropout(x)
        x = self.transformer(x)
        x = self.norm(x[:, 0])
        return self.dense(x)


def count_parameters(net: nn.Cell) -> int:
    """Number of scalar parameters the network owns."""
    return int(sum(p.size for p in net.get_parameters()))
