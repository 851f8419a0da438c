"""Vision Transformer in MindSpore, laid out so the published ``vit_b_16_224.ckpt`` loads unchanged.

Parameter names follow the reference recipe (``shared/RECIPE.md``); the layers rewritten for CPU speed
(same maths and names) are in ``layers.py``."""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from vit_exp.models import counter_rng
from vit_exp.models.config import ViTConfig
from vit_exp.models.kernels.plan import KernelPlan
from vit_exp.models.layers import Dense, FusedAttention, LayerNorm, LinearGELU, PatchEmbedding, gelu


def dropout(keep_prob: float) -> nn.Cell:
    return nn.Dropout(p=1.0 - keep_prob) if keep_prob < 1.0 else nn.Identity()


class DropPath(nn.Cell):
    """Stochastic depth (timm's ``DropPath``): in training, each sample's residual branch is zeroed with
    probability ``rate`` and kept ones scaled by 1 / (1 - rate), so its expectation is unchanged;
    inference: identity. The per-sample masks are counter-based (counter_rng.py): a pure function of
    the train step's key ``step`` (optimizer step, seed, rank), this branch's ``index`` and the sample,
    so a resumed run draws what the uninterrupted one drew. Without ``step`` (any caller but the train
    step, e.g. validation) it is the identity too. No parameters, no random state."""

    def __init__(self, rate: float, index: int = 0):
        super().__init__()
        self.rate = rate
        self.index = index
        self.threshold = math.ceil(rate * 2**counter_rng.BITS)  # P(bits >= threshold) = 1 - rate
        self.scale = 1.0 / (1.0 - rate)

    def construct(self, x: Tensor, step: Tensor | None = None) -> Tensor:
        if not self.training or step is None:
            return x
        b = x.shape[0]
        keep = counter_rng.uniform_bits(step, self.index, b) >= self.threshold
        return x * (keep.astype(x.dtype) * self.scale).reshape(b, 1, 1)  # (B, 1, 1): one draw per sample


class Attention(nn.Cell):
    """Multi-head self-attention: one fused ``qkv`` projection, softmax(q k^T / sqrt(d)) v, ``out``."""

    def __init__(self, config: ViTConfig, plan: KernelPlan):
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Dense(dim, dim * 3, plan.dense)
        self.out = Dense(dim, dim, plan.dense)
        self.fused = plan.attention
        self.dense_kernels = plan.dense is not None
        if self.fused:
            self.attention = FusedAttention(config.num_heads, plan.dense == "bf16")
        self.attn_drop = dropout(config.attention_keep_prob)
        self.out_drop = dropout(config.keep_prob)
        self.q_matmul_k = ops.BatchMatMul(transpose_b=True)
        self.attn_matmul_v = ops.BatchMatMul()
        self.softmax = nn.Softmax(axis=-1)

    def construct(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Attention of ``x`` (B, n, d); ``residual`` (only with no ``out`` dropout) is added in ``out``'s
        pass. Tensors that may be bfloat16 are never reshaped: MindSpore's CPU Reshape has no bf16 kernel."""
        b, n, d = x.shape
        if self.fused:
            x = self.attention(self.qkv(x))
        else:
            h, hd = self.num_heads, self.head_dim
            qkv = self.qkv(x) if self.dense_kernels else self.qkv(x.reshape(b * n, d))
            # Split q, k, v on the 2-D projection: slicing a 5-D view costs 6x the attention on CPU.
            q, k, v = ops.split(qkv.reshape(b * n, 3 * d), d, axis=-1)
            q = (q * self.scale).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
            k = k.reshape(b, n, h, hd).transpose(0, 2, 1, 3)
            v = v.reshape(b, n, h, hd).transpose(0, 2, 1, 3)
            attn = self.attn_drop(self.softmax(self.q_matmul_k(q, k)))
            x = self.attn_matmul_v(attn, v).transpose(0, 2, 1, 3).reshape(b * n, d)
        if residual is None:
            return self.out_drop(self.out(x)).reshape(b, n, d)
        return self.out(x, residual).reshape(b, n, d)


class FeedForward(nn.Cell):
    """The MLP block: ``dense1`` -> GELU -> ``dense2``, dropout after each; with the oneDNN and
    fused kernels, inference computes GELU in ``dense1``'s output pass."""

    def __init__(self, config: ViTConfig, plan: KernelPlan):
        super().__init__()
        self.dense1 = Dense(config.embed_dim, config.mlp_dim, plan.dense)
        self.activation = gelu(config.gelu_approximate, plan.fused)
        self.dense2 = Dense(config.mlp_dim, config.embed_dim, plan.dense)
        self.dropout = dropout(config.keep_prob)
        self.dense_kernels = plan.dense is not None
        self.fuse_gelu = plan.fused and self.dense_kernels
        if self.fuse_gelu:
            self.dense1_gelu = LinearGELU(plan.dense, config.gelu_approximate)

    def construct(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """The MLP of ``x`` (B, n, d); ``residual`` (only with no dropout) is added in ``dense2``'s pass."""
        b, n, d = x.shape
        if not self.dense_kernels:
            x = x.reshape(b * n, d)
        if self.fuse_gelu and not self.training:
            x = self.dense1_gelu(x, self.dense1.weight, self.dense1.bias)
        else:
            x = self.dropout(self.activation(self.dense1(x)))
        if residual is None:
            return self.dropout(self.dense2(x)).reshape(b, n, d)
        return self.dense2(x, residual).reshape(b, n, d)


class Residual(nn.Cell):
    """``x + cell(x)``, the cell stored as ``cell`` (checkpoint names depend on it). ``fuse``: ``cell``
    is [LayerNorm, Attention | FeedForward], its last dense layer adds ``x`` (a pass and a kernel fewer).
    ``drop_path`` > 0: ``x + DropPath(cell(x), step)`` (never fused), ``index`` the branch's number for
    its draws; 0 adds no op."""

    def __init__(self, cell: nn.SequentialCell, fuse: bool = False, drop_path: float = 0.0, index: int = 0):
        super().__init__()
        self.cell = cell
        self.fuse = fuse and drop_path == 0.0
        self.use_drop_path = drop_path > 0.0
        if self.use_drop_path:
            self.drop_path = DropPath(drop_path, index)

    def construct(self, x: Tensor, step: Tensor | None = None) -> Tensor:
        if self.fuse:
            return self.cell[1](self.cell[0](x), x)
        if self.use_drop_path:
            return x + self.drop_path(self.cell(x), step)
        return x + self.cell(x)


def encoder_block(
    config: ViTConfig, plan: KernelPlan, drop_path: float = 0.0, block: int = 0
) -> nn.SequentialCell:
    """One pre-norm block (number ``block``): ``0`` = x + Attention(LayerNorm(x)), ``1`` = x +
    FeedForward(LayerNorm(x)), each branch dropped per sample at rate ``drop_path`` in training."""
    eps, fused = config.layer_norm_eps, plan.fused
    bf16 = plan.dense == "bf16"  # inference hands LayerNorm's output to qkv / dense1 in bf16
    attention = nn.SequentialCell([LayerNorm(config.embed_dim, eps, fused, bf16), Attention(config, plan)])
    mlp = nn.SequentialCell([LayerNorm(config.embed_dim, eps, fused, bf16), FeedForward(config, plan)])
    fuse = plan.dense is not None and config.keep_prob == 1.0
    return nn.SequentialCell(
        [Residual(attention, fuse, drop_path, 2 * block), Residual(mlp, fuse, drop_path, 2 * block + 1)]
    )


class Encoder(nn.Cell):
    """``num_layers`` encoder blocks, stored as ``layers.{i}``; block i drops paths at
    ``config.drop_path_rates()[i]``, its branches drawing from the train step's key ``step``."""

    def __init__(self, config: ViTConfig, plan: KernelPlan):
        super().__init__()
        rates = config.drop_path_rates()
        self.layers = nn.SequentialCell(
            [encoder_block(config, plan, rate, i) for i, rate in enumerate(rates)]
        )
        self.use_drop_path = any(rate > 0.0 for rate in rates)

    def construct(self, x: Tensor, step: Tensor | None = None) -> Tensor:
        if step is None or not self.use_drop_path:
            return self.layers(x)
        for block in self.layers:  # unrolled when compiled: each branch gets the step
            x = block[1](block[0](x, step), step)
        return x


class ViT(nn.Cell):
    """Vision Transformer classifier (pre-norm encoder, class token, learned 1-D position embedding).
    ``plan`` (kernels/plan.py) says which kernels the layers run on; building the ViT compiles nothing."""

    def __init__(self, config: ViTConfig, plan: KernelPlan):
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.num_classes = config.num_classes
        self.plan = plan
        self.uses_fused_kernels = plan.fused
        self.precision = plan.precision  # what the dense layers compute in (run logs record it)
        dim = config.embed_dim
        self.patch_embedding = PatchEmbedding(config, plan.dense)
        self.cls = Parameter(initializer(Normal(sigma=1.0), (1, 1, dim), ms.float32), name="cls")
        self.pos_embedding = Parameter(
            initializer(Normal(sigma=1.0), (1, config.num_patches + 1, dim), ms.float32), name="pos_embedding"
        )
        self.dropout = dropout(config.keep_prob)
        self.transformer = Encoder(config, plan)
        self.norm = LayerNorm(dim, config.layer_norm_eps, plan.fused)
        self.dense = nn.Dense(dim, config.num_classes)
        self.uses_drop_path = self.transformer.use_drop_path  # train steps pass their ``step`` key

    def construct(self, x: Tensor, step: Tensor | None = None) -> Tensor:
        """Logits of the images ``x``; ``step``: the train step's drop-path key (counter_rng.step_key;
        None: no drop path, as in inference)."""
        x = self.patch_embedding(x)
        cls = ops.tile(self.cls, (x.shape[0], 1, 1))
        x = self.dropout(ops.concat((cls, x), axis=1) + self.pos_embedding)
        x = self.transformer(x) if step is None else self.transformer(x, step)
        return self.dense(self.norm(x[:, 0]))


def count_parameters(net: nn.Cell) -> int:
    return int(sum(p.size for p in net.get_parameters()))


def model_summary(net: nn.Cell) -> str:
    """Parameter names, shapes and counts, one per line, then the total."""
    lines = [f"{p.name:<60} {tuple(p.shape)!s:<22} {p.size:>12,}" for p in net.get_parameters()]
    return "\n".join([type(net).__name__, *lines, f"total parameters: {count_parameters(net):,}"]) + "\n"
