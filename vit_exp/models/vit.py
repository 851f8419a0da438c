"""Vision Transformer in MindSpore, laid out so the published ``vit_b_16_224.ckpt`` loads unchanged.

image -> patches -> [class token; patch tokens] + position embedding
      -> num_layers x (x + Attention(LayerNorm(x)); x + FeedForward(LayerNorm(x)))
      -> LayerNorm(class token) -> Dense head

Parameter names follow the reference recipe (``shared/RECIPE.md``): ``cls``, ``pos_embedding``,
``patch_embedding.conv.*``, ``transformer.layers.{i}.0.cell.{0 = LayerNorm, 1 = Attention}.*``,
``transformer.layers.{i}.1.cell.{0 = LayerNorm, 1 = FeedForward}.*``, ``norm.*``, ``dense.*``.
The layers rewritten for CPU speed (same maths and names) are in ``layers.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from vit_exp.errors import ConfigError, check_field_types, positive_int
from vit_exp.models.fused import use_fused_kernels
from vit_exp.models.layers import Dense, LayerNorm, PatchEmbedding, gelu

PATCH_EMBED_IMPLS = ("matmul", "conv")


@dataclass(frozen=True)
class ViTConfig:
    """The architecture: the ``model.*`` keys that shape the network (defaults: ViT-B/16 at 224).

    Dropout is given as keep-probabilities (1.0 = off), as in the reference. ``gelu_approximate``
    picks tanh GELU (the reference's) or exact erf GELU; ``patch_embed`` (matmul | conv) and
    ``fused_kernels`` (auto | on | off) choose how the same maths is computed.
    """

    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    input_channels: int = 3
    keep_prob: float = 1.0
    attention_keep_prob: float = 1.0
    gelu_approximate: bool = True
    layer_norm_eps: float = 1e-7
    patch_embed: str = "matmul"
    fused_kernels: str = "auto"

    def __post_init__(self) -> None:
        check_field_types(self, "model")
        for key in ("image_size", "patch_size", "embed_dim", "num_heads", "num_layers", "mlp_dim"):
            positive_int(f"model.{key}", getattr(self, key))
        positive_int("model.num_classes", self.num_classes)
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"model.image_size={self.image_size} is not divisible by model.patch_size={self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}"
            )
        for key in ("keep_prob", "attention_keep_prob"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ConfigError(
                    f"model.{key} must be in (0, 1] (1.0 = no dropout), got {getattr(self, key)}"
                )
        if self.patch_embed not in PATCH_EMBED_IMPLS:
            raise ConfigError(
                f"model.patch_embed must be one of {PATCH_EMBED_IMPLS}, got {self.patch_embed!r}"
            )

    @classmethod
    def from_mapping(cls, model_config: Mapping, **overrides) -> ViTConfig:
        """The ViTConfig of a ``model`` config section (keys that are not architecture are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in model_config.items() if k in names} | overrides)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def dropout(keep_prob: float) -> nn.Cell:
    return nn.Dropout(p=1.0 - keep_prob) if keep_prob < 1.0 else nn.Identity()


class Attention(nn.Cell):
    """Multi-head self-attention: one fused ``qkv`` projection, softmax(q k^T / sqrt(d)) v, ``out``."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Dense(dim, dim * 3)
        self.out = Dense(dim, dim)
        self.attn_drop = dropout(config.attention_keep_prob)
        self.out_drop = dropout(config.keep_prob)
        self.q_matmul_k = ops.BatchMatMul(transpose_b=True)
        self.attn_matmul_v = ops.BatchMatMul()
        self.softmax = nn.Softmax(axis=-1)

    def construct(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h, hd = self.num_heads, self.head_dim
        # Split q, k, v on the 2-D projection: slicing a 5-D view costs 6x the attention on CPU.
        q, k, v = ops.split(self.qkv(x.reshape(b * n, d)), d, axis=-1)
        q = (q * self.scale).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        k = k.reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        v = v.reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        attn = self.attn_drop(self.softmax(self.q_matmul_k(q, k)))
        x = self.attn_matmul_v(attn, v).transpose(0, 2, 1, 3).reshape(b * n, d)
        return self.out_drop(self.out(x)).reshape(b, n, d)


class FeedForward(nn.Cell):
    """The MLP block: ``dense1`` -> GELU -> ``dense2``, dropout after each."""

    def __init__(self, config: ViTConfig, fused: bool):
        super().__init__()
        self.dense1 = Dense(config.embed_dim, config.mlp_dim)
        self.activation = gelu(config.gelu_approximate, fused)
        self.dense2 = Dense(config.mlp_dim, config.embed_dim)
        self.dropout = dropout(config.keep_prob)

    def construct(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        x = self.dropout(self.activation(self.dense1(x.reshape(b * n, d))))
        return self.dropout(self.dense2(x)).reshape(b, n, d)


class Residual(nn.Cell):
    """``x + cell(x)``; the wrapped cell is stored as ``cell`` (checkpoint names depend on it)."""

    def __init__(self, cell: nn.Cell):
        super().__init__()
        self.cell = cell

    def construct(self, x: Tensor) -> Tensor:
        return x + self.cell(x)


def encoder_block(config: ViTConfig, fused: bool) -> nn.SequentialCell:
    """One pre-norm block: ``0`` = x + Attention(LayerNorm(x)), ``1`` = x + FeedForward(LayerNorm(x))."""
    eps = config.layer_norm_eps
    attention = nn.SequentialCell([LayerNorm(config.embed_dim, eps, fused), Attention(config)])
    mlp = nn.SequentialCell([LayerNorm(config.embed_dim, eps, fused), FeedForward(config, fused)])
    return nn.SequentialCell([Residual(attention), Residual(mlp)])


class Encoder(nn.Cell):
    """``num_layers`` encoder blocks, stored as ``layers.{i}``."""

    def __init__(self, config: ViTConfig, fused: bool):
        super().__init__()
        self.layers = nn.SequentialCell([encoder_block(config, fused) for _ in range(config.num_layers)])

    def construct(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ViT(nn.Cell):
    """Vision Transformer classifier (pre-norm encoder, class token, learned 1-D position embedding)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.num_classes = config.num_classes
        self.uses_fused_kernels = use_fused_kernels(config.fused_kernels)
        dim = config.embed_dim
        self.patch_embedding = PatchEmbedding(
            config.image_size, config.patch_size, dim, config.input_channels, config.patch_embed == "matmul"
        )
        self.cls = Parameter(initializer(Normal(sigma=1.0), (1, 1, dim), ms.float32), name="cls")
        self.pos_embedding = Parameter(
            initializer(Normal(sigma=1.0), (1, config.num_patches + 1, dim), ms.float32), name="pos_embedding"
        )
        self.dropout = dropout(config.keep_prob)
        self.transformer = Encoder(config, self.uses_fused_kernels)
        self.norm = LayerNorm(dim, config.layer_norm_eps, self.uses_fused_kernels)
        self.dense = nn.Dense(dim, config.num_classes)

    def construct(self, x: Tensor) -> Tensor:
        x = self.patch_embedding(x)
        cls = ops.tile(self.cls, (x.shape[0], 1, 1))
        x = self.dropout(ops.concat((cls, x), axis=1) + self.pos_embedding)
        x = self.transformer(x)
        return self.dense(self.norm(x[:, 0]))


def count_parameters(net: nn.Cell) -> int:
    """Number of scalar parameters the network owns."""
    return int(sum(p.size for p in net.get_parameters()))


def model_summary(net: nn.Cell) -> str:
    """Parameter names, shapes and counts, one per line, then the total."""
    lines = [f"{p.name:<60} {tuple(p.shape)!s:<22} {p.size:>12,}" for p in net.get_parameters()]
    return "\n".join([type(net).__name__, *lines, f"total parameters: {count_parameters(net):,}"]) + "\n"
