"""The ViT's parameter layout equals the reference checkpoint's, and its maths is consistent."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.models import requires_fused_kernels, tiny_vit
from vit_exp.errors import ConfigError


def recipe_table(layers: int = 12, dim: int = 768, mlp: int = 3072, classes: int = 1000) -> dict:
    """The parameter table of ``vit_b_16_224.ckpt`` as written in shared/RECIPE.md."""
    table = {
        "cls": (1, 1, dim),
        "pos_embedding": (1, 197, dim),
        "patch_embedding.conv.weight": (dim, 3, 16, 16),
        "patch_embedding.conv.bias": (dim,),
        "norm.gamma": (dim,),
        "norm.beta": (dim,),
        "dense.weight": (classes, dim),
        "dense.bias": (classes,),
    }
    for i in range(layers):
        p = f"transformer.layers.{i}"
        table |= {
            f"{p}.0.cell.0.gamma": (dim,),
            f"{p}.0.cell.0.beta": (dim,),
            f"{p}.0.cell.1.qkv.weight": (3 * dim, dim),
            f"{p}.0.cell.1.qkv.bias": (3 * dim,),
            f"{p}.0.cell.1.out.weight": (dim, dim),
            f"{p}.0.cell.1.out.bias": (dim,),
            f"{p}.1.cell.0.gamma": (dim,),
            f"{p}.1.cell.0.beta": (dim,),
            f"{p}.1.cell.1.dense1.weight": (mlp, dim),
            f"{p}.1.cell.1.dense1.bias": (mlp,),
            f"{p}.1.cell.1.dense2.weight": (dim, mlp),
            f"{p}.1.cell.1.dense2.bias": (dim,),
        }
    return table


def test_vit_b16_parameters_equal_recipe_table(compose):
    from hydra.utils import instantiate

    net = instantiate(compose(["model=vit_b16"]).model, num_classes=1000)
    got = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert got == recipe_table()


def copy_params(src, dst):
    import mindspore as ms

    ms.load_param_into_net(
        dst, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in src.get_parameters()}
    )


def reference_forward(
    params: dict, x: np.ndarray, heads: int, patch: int, eps: float = 1e-7, gelu: str = "exact"
) -> np.ndarray:
    """A plain NumPy ViT (conv patch embedding as an explicit loop over patches; exact or tanh GELU)."""
    from scipy.special import erf

    def layer_norm(v, g, b):
        mu = v.mean(-1, keepdims=True)
        var = v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + eps) * g + b

    def dense(v, name):
        return v @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    b, _, h, _ = x.shape
    g = h // patch
    w = params["patch_embedding.conv.weight"]
    tokens = np.zeros((b, g * g, w.shape[0]), dtype=np.float64)
    for i in range(g):
        for j in range(g):
            tile = x[:, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
            tokens[:, i * g + j] = np.einsum("bchw,ochw->bo", tile, w) + params["patch_embedding.conv.bias"]
    cls = np.broadcast_to(params["cls"], (b, 1, w.shape[0]))
    z = np.concatenate([cls, tokens], axis=1) + params["pos_embedding"]
    d = z.shape[-1]
    hd = d // heads
    layer = 0
    while f"transformer.layers.{layer}.0.cell.0.gamma" in params:
        p = f"transformer.layers.{layer}"
        y = layer_norm(z, params[f"{p}.0.cell.0.gamma"], params[f"{p}.0.cell.0.beta"])
        qkv = dense(y, f"{p}.0.cell.1.qkv").reshape(b, -1, 3, heads, hd).transpose(2, 0, 3, 1, 4)
        att = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) * hd**-0.5
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ qkv[2]).transpose(0, 2, 1, 3).reshape(b, -1, d)
        z = z + dense(y, f"{p}.0.cell.1.out")
        y = layer_norm(z, params[f"{p}.1.cell.0.gamma"], params[f"{p}.1.cell.0.beta"])
        y = dense(y, f"{p}.1.cell.1.dense1")
        if gelu == "exact":
            y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        else:
            y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))
        z = z + dense(y, f"{p}.1.cell.1.dense2")
        layer += 1
    return dense(layer_norm(z[:, 0], params["norm.gamma"], params["norm.beta"]), "dense")


@pytest.mark.parametrize(
    ("patch_embed", "gelu", "fused_kernels"),
    [
        pytest.param("matmul", "exact", "on", marks=requires_fused_kernels),
        pytest.param("matmul", "tanh", "on", marks=requires_fused_kernels),
        ("matmul", "exact", "off"),
        ("matmul", "tanh", "off"),
        ("conv", "exact", "auto"),
    ],
)
@pytest.mark.parametrize("train", [False, True])
def test_vit_matches_numpy_reference(patch_embed, gelu, fused_kernels, train):
    import mindspore as ms

    net = tiny_vit(patch_embed=patch_embed, gelu_approximate=gelu == "tanh", fused_kernels=fused_kernels)
    net.set_train(train)  # no dropout (keep_prob 1.0): both modes compute the same function
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    params = {p.name: p.asnumpy().astype(np.float64) for p in net.get_parameters()}
    expected = reference_forward(params, x.astype(np.float64), heads=2, patch=8, gelu=gelu)
    got = net(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_gelu_variant_changes_outputs():
    import mindspore as ms

    exact = tiny_vit(gelu_approximate=False)
    tanh = tiny_vit(gelu_approximate=True)
    copy_params(exact, tanh)
    x = ms.Tensor(np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32))
    diff = np.abs(exact(x).asnumpy() - tanh(x).asnumpy()).max()
    assert 0 < diff < 0.05


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"image_size": 30}, "model.image_size"),
        ({"embed_dim": 30, "num_heads": 4}, "model.embed_dim"),
        ({"num_layers": 0}, "model.num_layers"),
        ({"keep_prob": 0.0}, "model.keep_prob"),
        ({"patch_embed": "fft"}, "model.patch_embed"),
    ],
)
def test_invalid_model_arguments_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_vit(**overrides)


@pytest.mark.parametrize("fused_kernels", [pytest.param("on", marks=requires_fused_kernels), "off"])
def test_training_and_inference_paths_agree(fused_kernels):
    """Without the fused kernels training composes LayerNorm (faster gradient) and inference uses
    MindSpore's kernel; with them both modes share one kernel. Same outputs either way."""
    import mindspore as ms

    net = tiny_vit(gelu_approximate=False, fused_kernels=fused_kernels)
    x = ms.Tensor(np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32))
    net.set_train(False)
    inference = net(x).asnumpy()
    net.set_train(True)  # no dropout (keep_prob 1.0), so only the LayerNorm path differs
    training = net(x).asnumpy()
    np.testing.assert_allclose(training, inference, atol=1e-5, rtol=1e-5)


def test_exact_gelu_and_its_handwritten_gradient_match_mindspore():
    import mindspore as ms
    from mindspore import nn, ops

    from vit_exp.models.layers import ExactGELU

    class Summed(nn.Cell):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell

        def construct(self, x):
            return (self.cell(x) * self.cell(x)).sum()  # a non-trivial upstream gradient

    x = ms.Tensor(np.random.default_rng(3).normal(0, 2, size=(64, 48)).astype(np.float32))
    ours, reference = ExactGELU(), nn.GELU(approximate=False)
    np.testing.assert_allclose(ours(x).asnumpy(), reference(x).asnumpy(), atol=1e-6)
    grad = ops.GradOperation()
    np.testing.assert_allclose(
        grad(Summed(ours))(x).asnumpy(), grad(Summed(reference))(x).asnumpy(), rtol=1e-5, atol=1e-5
    )


def test_dense_keeps_nn_dense_names_and_maths():
    import mindspore as ms
    from mindspore import nn

    from vit_exp.models.layers import Dense

    ours = Dense(8, 5)
    assert [p.name for p in ours.get_parameters()] == ["weight", "bias"]
    reference = nn.Dense(8, 5)
    ms.load_param_into_net(reference, {"weight": ours.weight, "bias": ours.bias})
    x = ms.Tensor(np.random.default_rng(4).normal(size=(3, 8)).astype(np.float32))
    np.testing.assert_allclose(ours(x).asnumpy(), reference(x).asnumpy(), atol=1e-6)
