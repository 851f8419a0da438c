"""Our ViT as an ONNX graph (opset 17), written from its config and parameters, not traced.

MindSpore 2.10's ONNX exporter cannot take this ViT: it has no converter for Erf (exact GELU, which
``vit_tiny`` uses) and exports no dynamic batch size. The maths is small and fixed, so it is written
here op for op as the reference layers compute it (``vit.py``, ``layers.py`` without kernels): exact
GELU as ``x * (0.5 + 0.5 * Erf(x / sqrt 2))``, the tanh form as ``nn.GELU(approximate=True)``,
LayerNormalization, q scaled before ``q k^T``. Input ``images`` (batch, 3, S, S) float32; output
``logits`` (batch, classes). Parameter names are the checkpoint's, as initializer names."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from vit_exp.models.config import ViTConfig

OPSET = 17  # LayerNormalization
INPUT = "images"
OUTPUT = "logits"


class _Graph:
    """Nodes and initializers added in order; each op's output named after the op and a counter."""

    def __init__(self):
        self.nodes, self.initializers, self._count, self._names = [], [], 0, set()

    def constant(self, name: str, value: np.ndarray) -> str:
        """An initializer ``name`` (added once: a name asked for again keeps its first value)."""
        from onnx import numpy_helper

        if name not in self._names:
            self._names.add(name)
            self.initializers.append(
                numpy_helper.from_array(np.array(value, order="C"), name)
            )  # 0-d stays 0-d
        return name

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        from onnx import helper

        self._count += 1
        output = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output


def vit_onnx(config: ViTConfig, params: Mapping[str, np.ndarray]):
    """The ``onnx.ModelProto`` of a ViT of ``config`` with weights ``params`` (checkpoint name ->
    float32 array, every parameter of the network)."""
    from onnx import TensorProto, checker, helper

    g = _Graph()
    p = {name: np.asarray(value, np.float32) for name, value in params.items()}
    d, heads = config.embed_dim, config.num_heads
    g.constant("shape.tokens", np.array([0, d, -1], np.int64))
    g.constant("shape.heads", np.array([0, 0, heads, d // heads], np.int64))
    g.constant("shape.merged", np.array([0, 0, d], np.int64))
    g.constant("scale", np.array((d // heads) ** -0.5, np.float32))
    g.constant("index.0", np.array(0, np.int64))
    g.constant("half", np.array(0.5, np.float32))

    # patches: Conv2d(kernel = stride = patch) -> (B, d, n) -> (B, n, d); then [cls; patches] + pos
    p_size = config.patch_size
    g.constant("patch_embedding.conv.weight", p["patch_embedding.conv.weight"])
    g.constant("patch_embedding.conv.bias", p["patch_embedding.conv.bias"])
    x = g.op(
        "Conv",
        INPUT,
        "patch_embedding.conv.weight",
        "patch_embedding.conv.bias",
        kernel_shape=[p_size, p_size],
        strides=[p_size, p_size],
    )
    x = g.op("Transpose", g.op("Reshape", x, "shape.tokens"), perm=[0, 2, 1])
    first = (g.constant("slice.0", np.array([0], np.int64)), g.constant("slice.1", np.array([1], np.int64)))
    batch = g.op("Slice", g.op("Shape", INPUT), *first)
    g.constant("rest", np.array([1, d], np.int64))
    cls = g.op("Expand", g.constant("cls", p["cls"]), g.op("Concat", batch, "rest", axis=0))
    x = g.op("Add", g.op("Concat", cls, x, axis=1), g.constant("pos_embedding", p["pos_embedding"]))

    for i in range(config.num_layers):
        prefix = f"transformer.layers.{i}"
        x = g.op("Add", x, _attention(g, p, f"{prefix}.0.cell", _norm(g, p, f"{prefix}.0.cell.0", x, config)))
        x = g.op(
            "Add", x, _mlp(g, p, f"{prefix}.1.cell.1", _norm(g, p, f"{prefix}.1.cell.0", x, config), config)
        )

    x = _norm(g, p, "norm", g.op("Gather", x, "index.0", axis=1), config)
    logits = _dense(g, p, "dense", x)
    graph = helper.make_graph(
        [*g.nodes, helper.make_node("Identity", [logits], [OUTPUT])],
        "vit",
        [
            helper.make_tensor_value_info(
                INPUT, TensorProto.FLOAT, ["batch", 3, config.image_size, config.image_size]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", config.num_classes])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vit-exp")
    model.ir_version = 8  # ONNX Runtime releases of the last years read IR 8
    checker.check_model(model, full_check=False)
    return model


def _norm(g: _Graph, p: Mapping[str, np.ndarray], name: str, x: str, config: ViTConfig) -> str:
    gamma, beta = (
        g.constant(f"{name}.gamma", p[f"{name}.gamma"]),
        g.constant(f"{name}.beta", p[f"{name}.beta"]),
    )
    return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=float(config.layer_norm_eps))


def _dense(g: _Graph, p: Mapping[str, np.ndarray], name: str, x: str) -> str:
    """``x @ weight.T + bias`` (the weight stored transposed, as MatMul takes it)."""
    weight = g.constant(f"{name}.weight", p[f"{name}.weight"].T)
    return g.op("Add", g.op("MatMul", x, weight), g.constant(f"{name}.bias", p[f"{name}.bias"]))


def _attention(g: _Graph, p: Mapping[str, np.ndarray], name: str, x: str) -> str:
    """softmax((q * scale) k^T) v per head, then ``out``; ``x`` (B, n, d)."""
    qkv = _dense(g, p, f"{name}.1.qkv", x)
    d = p[f"{name}.1.out.weight"].shape[0]
    q, k, v = (g.op("Slice", qkv, *_slice(g, i * d, (i + 1) * d)) for i in range(3))
    q = g.op("Transpose", g.op("Reshape", g.op("Mul", q, "scale"), "shape.heads"), perm=[0, 2, 1, 3])
    k = g.op("Transpose", g.op("Reshape", k, "shape.heads"), perm=[0, 2, 3, 1])
    v = g.op("Transpose", g.op("Reshape", v, "shape.heads"), perm=[0, 2, 1, 3])
    attention = g.op("Softmax", g.op("MatMul", q, k), axis=-1)
    merged = g.op(
        "Reshape", g.op("Transpose", g.op("MatMul", attention, v), perm=[0, 2, 1, 3]), "shape.merged"
    )
    return _dense(g, p, f"{name}.1.out", merged)


def _slice(g: _Graph, start: int, end: int) -> tuple[str, str, str]:
    """Slice inputs for [start, end) of the last axis."""
    return (
        g.constant(f"slice.{start}", np.array([start], np.int64)),
        g.constant(f"slice.{end}", np.array([end], np.int64)),
        g.constant("axis.last", np.array([-1], np.int64)),
    )


def _mlp(g: _Graph, p: Mapping[str, np.ndarray], name: str, x: str, config: ViTConfig) -> str:
    hidden = _dense(g, p, f"{name}.dense1", x)
    return _dense(g, p, f"{name}.dense2", _gelu(g, hidden, config.gelu_approximate))


def _gelu(g: _Graph, x: str, approximate: bool) -> str:
    if not approximate:  # exact: x * (0.5 + 0.5 * erf(x / sqrt 2)), as ExactGELU
        g.constant("sqrt_half", np.array(0.7071067811865476, np.float32))
        cdf = g.op("Add", "half", g.op("Mul", "half", g.op("Erf", g.op("Mul", x, "sqrt_half"))))
        return g.op("Mul", x, cdf)
    # tanh form: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    g.constant("gelu.c", np.array(math.sqrt(2.0 / math.pi), np.float32))
    g.constant("gelu.a", np.array(0.044715, np.float32))
    g.constant("one", np.array(1.0, np.float32))
    cubic = g.op("Mul", "gelu.a", g.op("Mul", x, g.op("Mul", x, x)))
    inner = g.op("Tanh", g.op("Mul", "gelu.c", g.op("Add", x, cubic)))
    return g.op("Mul", g.op("Mul", "half", x), g.op("Add", "one", inner))
