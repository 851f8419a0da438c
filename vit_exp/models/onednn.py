"""vit-exp's kernels on oneDNN's GEMMs (``onednn_kernels.cc``) as MindSpore ``aot`` Custom ops.

The library links the ``libdnnl.so.3`` inside the MindSpore wheel and is compiled once per
source/compiler/CPU (kernel_build.py). It holds dense layers (bias folded in; optionally the
residual add after them, or GELU for inference), each multiplying in fp32 or bf16, and multi-head
attention (fp32) computed straight from the fused qkv projection.
"""

from __future__ import annotations

from pathlib import Path

from vit_exp.errors import KernelBuildError
from vit_exp.models.kernel_build import KernelLibrary

SOURCE = Path(__file__).with_name("onednn_kernels.cc")


def onednn_library() -> Path:
    """The oneDNN library inside the MindSpore wheel (``mindspore/lib/libdnnl.so.3``)."""
    import mindspore

    path = Path(mindspore.__file__).parent / "lib" / "libdnnl.so.3"
    if not path.exists():
        raise KernelBuildError(f"this MindSpore has no oneDNN library ({path} is missing)")
    return path


def _link_onednn() -> tuple[str, ...]:
    onednn = onednn_library()
    return (str(onednn), f"-Wl,-rpath,{onednn.parent}")


_LIBRARY = KernelLibrary(SOURCE, _link_onednn)


def onednn_kernels() -> Path:
    """Path of the compiled library, built on first use; KernelBuildError says why it cannot be."""
    return _LIBRARY.path()


def forget_onednn_kernels() -> None:
    """Forget this process's build outcome (the next :func:`onednn_kernels` looks again)."""
    _LIBRARY.forget()


def _custom(function: str, shapes, dtypes):
    from mindspore import ops

    return ops.Custom(f"{onednn_kernels()}:{function}", out_shape=shapes, out_dtype=dtypes, func_type="aot")


def _dense_grad_shapes(x, w, _dy):
    return x, w, [w[0]]


def _dense_grad_dtypes(x, *_):
    return x, x, x


def _dense_shape(x, w, _b):
    return [*x[:-1], w[0]]


def _same_dtype(x, *_):
    return x


def _weight_dtype(_x, w, *_):
    return w  # float32, also for a bfloat16 x (from a bf16 inference kernel)


def _bfloat16(*_):
    import mindspore as ms

    return ms.bfloat16


def _variant(precision: str) -> str:
    return {"fp32": "Fp32", "bf16": "Bf16"}[precision]


def dense_cells(precision: str):
    """The (forward, backward) Custom ops of a dense layer ``x @ w.T + b``, fp32 in and out, that
    multiply in ``precision`` (fp32 | bf16)."""
    return (
        _custom(f"{_variant(precision)}DenseForward", _dense_shape, _weight_dtype),
        _custom(f"{_variant(precision)}DenseBackward", _dense_grad_shapes, _dense_grad_dtypes),
    )


def _dense_residual_shape(x, w, _b, _r):
    return [*x[:-1], w[0]]


def dense_residual_cells(precision: str):
    """The (forward, backward) Custom ops of ``r + x @ w.T + b`` (a dense layer and the residual
    add after it, in one pass). The backward is the plain dense layer's: r's gradient is dy."""
    return (
        _custom(f"{_variant(precision)}DenseResidualForward", _dense_residual_shape, _weight_dtype),
        _custom(f"{_variant(precision)}DenseBackward", _dense_grad_shapes, _dense_grad_dtypes),
    )


def dense_gelu_cell(precision: str, approximate: bool):
    """The Custom op of ``GELU(x @ w.T + b)`` (tanh form if ``approximate``, else erf), inference
    only: it has no backward kernel. In bf16 its output is bfloat16, the input the next bf16 dense
    kernel would round to anyway (the dense kernels take it as it is)."""
    form = "Tanh" if approximate else "Erf"
    dtype = _bfloat16 if precision == "bf16" else _same_dtype
    return _custom(f"{_variant(precision)}DenseGelu{form}Forward", _dense_shape, dtype)


def _attention_shape(qkv, _heads):
    return [qkv[0], qkv[1], qkv[2] // 3]


def _attention_grad_shape(qkv, _heads, _dout):
    return qkv


def attention_cells():
    """The (forward, backward) Custom ops of ``(qkv (B, n, 3d), heads marker (h,)) -> (B, n, d)``,
    fp32 (also in bf16 mode: see onednn_kernels.cc)."""
    return (
        _custom("AttentionForward", _attention_shape, _same_dtype),
        _custom("AttentionBackward", _attention_grad_shape, _same_dtype),
    )


def attention_bf16_output_cell():
    """The attention forward op with a bfloat16 output, for a bf16 out projection in inference."""
    return _custom("AttentionForwardBf16", _attention_shape, _bfloat16)
