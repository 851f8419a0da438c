"""Exports against the MindSpore model they come from: the ONNX graph under ONNX Runtime and the MindIR
loaded back into MindSpore give the fp32 model's logits (random weights, the same batch), and the
NumPy preprocessing the exports ship equals MindSpore's bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.models import tiny_vit


def _logits(net, images: np.ndarray) -> np.ndarray:
    import mindspore as ms

    net.set_train(False)
    return net(ms.Tensor(images)).asnumpy()


def _images(size: int, batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("gelu_approximate", [False, True], ids=["erf", "tanh"])
def test_onnx_graph_gives_the_models_logits_at_any_batch(tmp_path, gelu_approximate):
    from vit_exp.models.export import compare, exported_logits, write_export

    net = tiny_vit(num_classes=7, gelu_approximate=gelu_approximate)
    path = write_export(net, "onnx", tmp_path)
    for batch in (1, 5):  # one file, any batch size
        images = _images(32, batch, seed=batch)
        check = compare(_logits(net, images), exported_logits(path, "onnx", images))
        assert check.passed, check.describe()
        assert check.max_abs_diff < 1e-5


def test_mindir_loaded_back_gives_the_models_logits_at_any_batch(tmp_path):
    from vit_exp.models.export import compare, exported_logits, write_export

    net = tiny_vit(num_classes=4)
    path = write_export(net, "mindir", tmp_path)
    for batch in (1, 3):
        images = _images(32, batch, seed=batch)
        check = compare(_logits(net, images), exported_logits(path, "mindir", images))
        assert check.passed, check.describe()


def test_the_check_fails_on_different_logits_or_order():
    from vit_exp.models.export import compare

    logits = _images(4, 2).reshape(2, -1)[:, :6]
    assert compare(logits, logits.copy()).passed
    shifted = compare(logits, logits + 2e-4)
    assert (
        not shifted.passed and shifted.top_k_equal and shifted.max_abs_diff == pytest.approx(2e-4, rel=1e-3)
    )
    swapped = logits.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]  # same values, other classes: top-k differs
    assert not compare(logits, swapped).top_k_equal


def test_an_unknown_format_is_one_line():
    from vit_exp.errors import ExportError
    from vit_exp.models.export import check_format

    with pytest.raises(
        ExportError, match=r"^format=tflite: no such export format; choose one of: onnx, mindir$"
    ):
        check_format("tflite")


@pytest.mark.parametrize("shape", [(8, 8), (37, 53), (300, 200), (13, 7), (32, 32), (1, 1), (2, 900)])
def test_numpy_preprocessing_equals_mindspores_bit_for_bit(shape):
    from vit_exp.data.images import preprocess as mindspore_preprocess
    from vit_exp.serving import preprocess

    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    for size in (32, 224):
        ours = preprocess([image], size, mean, std)
        assert ours.dtype == np.float32 and ours.shape == (1, 3, size, size)
        np.testing.assert_array_equal(ours, mindspore_preprocess([image], size, mean, std))
