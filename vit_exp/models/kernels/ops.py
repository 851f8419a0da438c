"""The kernels' C++ functions as MindSpore ``aot`` Custom ops. ``cpu_kernels.cc``: GELU and LayerNorm
in one pass each way (MindSpore's CPU backend chains element-wise kernels); ``onednn_kernels.cc``:
dense layers and attention on oneDNN's GEMMs."""

from __future__ import annotations

from collections.abc import Callable

import mindspore as ms
from mindspore import ops

from vit_exp.models.kernels.build import KernelLibrary

# cpu_kernels.cc; GELU by its form (approximate: tanh, else erf)
GELU_FORWARD = {False: "GeluErfForward", True: "GeluTanhForward"}
GELU_BACKWARD = {False: "GeluErfBackward", True: "GeluTanhBackward"}
LAYER_NORM_FORWARD = "LayerNormForward"
LAYER_NORM_FORWARD_BF16 = "LayerNormForwardBf16"
LAYER_NORM_BACKWARD = "LayerNormBackward"
# onednn_kernels.cc; dense layers by what they multiply in (and GELU's form)
DENSE_FORWARD = {"fp32": "Fp32DenseForward", "bf16": "Bf16DenseForward"}
DENSE_BACKWARD = {"fp32": "Fp32DenseBackward", "bf16": "Bf16DenseBackward"}
DENSE_RESIDUAL_FORWARD = {"fp32": "Fp32DenseResidualForward", "bf16": "Bf16DenseResidualForward"}
DENSE_GELU_FORWARD = {
    ("fp32", False): "Fp32DenseGeluErfForward",
    ("fp32", True): "Fp32DenseGeluTanhForward",
    ("bf16", False): "Bf16DenseGeluErfForward",
    ("bf16", True): "Bf16DenseGeluTanhForward",
}
ATTENTION_FORWARD = "AttentionForward"
ATTENTION_FORWARD_BF16 = "AttentionForwardBf16"
ATTENTION_BACKWARD = "AttentionBackward"


def custom_op(library: KernelLibrary, function: str, shapes: Callable, dtypes: Callable) -> ops.Custom:
    """``function`` of ``library`` (built on first use) as a Custom op; ``shapes`` / ``dtypes`` map
    the inputs' shapes / dtypes to the outputs'."""
    return ops.Custom(f"{library.path()}:{function}", out_shape=shapes, out_dtype=dtypes, func_type="aot")


# Output shapes and dtypes, from the inputs' (MindSpore passes them in input order).
def same(x, *_):
    return x


def same3(x, *_):
    return x, x, x


def bfloat16(*_):
    return ms.bfloat16


def weight_dtype(_x, w, *_):
    return w  # float32, also for a bfloat16 x (from a bf16 inference kernel)


def dense_shape(x, w, *_):
    return [*x[:-1], w[0]]


def dense_grad_shapes(x, w, _dy):
    return x, w, [w[0]]


def layer_norm_grad_shapes(x, _dy, gamma, _eps):
    return x, gamma, gamma


def attention_shape(qkv, _heads):
    return [qkv[0], qkv[1], qkv[2] // 3]
