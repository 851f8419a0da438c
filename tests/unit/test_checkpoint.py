"""Checkpoint save/load: round trip, optimizer entries ignored, head re-init, clear mismatch errors."""

from __future__ import annotations

import functools
import http.server
import logging
import threading

import numpy as np
import pytest

from tests.helpers.models import tiny_vit
from vit_exp.errors import CheckpointError
from vit_exp.models.checkpoint import load_pretrained, rename_timm, save_checkpoint


def logits(net, seed=0):
    import mindspore as ms

    net.set_train(False)
    x = np.random.default_rng(seed).normal(size=(2, 3, 32, 32)).astype(np.float32)
    return net(ms.Tensor(x)).asnumpy()


def save_dict(path, params: dict):
    import mindspore as ms

    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], str(path))
    return path


def test_round_trip_gives_identical_outputs(tmp_path):
    source = tiny_vit()
    path = save_checkpoint(source, tmp_path / "a.ckpt")
    target = tiny_vit()
    assert not np.allclose(logits(source), logits(target))
    report = load_pretrained(target, path, tmp_path / "cache")
    np.testing.assert_array_equal(logits(source), logits(target))
    assert len(report.loaded) == len(list(source.get_parameters()))
    assert report.reinitialised == []


def test_optimizer_entries_are_ignored(tmp_path):
    source = tiny_vit()
    params = {p.name: p.asnumpy() for p in source.get_parameters()}
    params |= {"moments.cls": np.zeros((1, 1, 32), np.float32), "global_step": np.array([7], np.int32)}
    params["learning_rate"] = np.array([0.1], np.float32)
    path = save_dict(tmp_path / "with_optimizer.ckpt", params)
    target = tiny_vit()
    report = load_pretrained(target, path, tmp_path / "cache")
    assert set(report.ignored) == {"moments.cls", "global_step", "learning_rate"}
    np.testing.assert_array_equal(logits(source), logits(target))


def test_head_with_other_class_count_is_reinitialised_with_warning(tmp_path, caplog):
    source = tiny_vit(num_classes=5)
    path = save_checkpoint(source, tmp_path / "five.ckpt")
    target = tiny_vit(num_classes=3)
    head_before = target.dense.weight.asnumpy().copy()
    with caplog.at_level(logging.WARNING):
        report = load_pretrained(target, path, tmp_path / "cache")
    assert sorted(report.reinitialised) == ["dense.bias", "dense.weight"]
    assert "re-initialised" in caplog.text
    np.testing.assert_array_equal(target.dense.weight.asnumpy(), head_before)
    np.testing.assert_array_equal(target.cls.asnumpy(), source.cls.asnumpy())
    np.testing.assert_array_equal(
        target.transformer.layers[1][0].cell[1].qkv.weight.asnumpy(),
        source.transformer.layers[1][0].cell[1].qkv.weight.asnumpy(),
    )


def test_shape_mismatch_lists_names_and_shapes(tmp_path):
    path = save_checkpoint(tiny_vit(embed_dim=64, num_heads=2), tmp_path / "wide.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tiny_vit(), path, tmp_path / "cache")
    message = str(err.value)
    assert "cls checkpoint (1, 1, 64) vs model (1, 1, 32)" in message
    assert "\n" not in message


def test_missing_parameters_are_listed(tmp_path):
    path = save_checkpoint(tiny_vit(num_layers=1), tmp_path / "shallow.ckpt")
    with pytest.raises(
        CheckpointError, match=r"missing from checkpoint: transformer\.layers\.1\.0\.cell\.0\.gamma \(32,\)"
    ):
        load_pretrained(tiny_vit(num_layers=2), path, tmp_path / "cache")


def test_missing_file_and_garbage_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_pretrained(tiny_vit(), tmp_path / "nope.ckpt", tmp_path / "cache")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_pretrained(tiny_vit(), garbage, tmp_path / "cache")


def test_timm_style_names_are_mapped(tmp_path):
    source = tiny_vit()
    ours_to_timm = {}
    for p in source.get_parameters():
        name = p.name
        name = name.replace("patch_embedding.conv.", "patch_embed.proj.")
        for i in range(2):
            t = f"transformer.layers.{i}"
            name = name.replace(f"{t}.0.cell.0.gamma", f"blocks.{i}.norm1.weight")
            name = name.replace(f"{t}.0.cell.0.beta", f"blocks.{i}.norm1.bias")
            name = name.replace(f"{t}.0.cell.1.qkv.", f"blocks.{i}.attn.qkv.")
            name = name.replace(f"{t}.0.cell.1.out.", f"blocks.{i}.attn.proj.")
            name = name.replace(f"{t}.1.cell.0.", f"blocks.{i}.norm2.")
            name = name.replace(f"{t}.1.cell.1.dense1.", f"blocks.{i}.mlp.fc1.")
            name = name.replace(f"{t}.1.cell.1.dense2.", f"blocks.{i}.mlp.fc2.")
        name = {"cls": "cls_token", "pos_embedding": "pos_embed"}.get(name, name)
        name = name.replace("dense.", "head.")
        ours_to_timm[p.name] = name
    assert rename_timm("blocks.3.norm1.weight") == "transformer.layers.3.0.cell.0.gamma"
    path = save_dict(
        tmp_path / "timm.ckpt", {ours_to_timm[p.name]: p.asnumpy() for p in source.get_parameters()}
    )
    target = tiny_vit()
    load_pretrained(target, path, tmp_path / "cache", name_map="auto")
    np.testing.assert_array_equal(logits(source), logits(target))


def test_url_is_downloaded_once_into_the_cache(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    source = tiny_vit()
    save_checkpoint(source, served / "tiny.ckpt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/tiny.ckpt"
        target = tiny_vit()
        report = load_pretrained(target, url, tmp_path / "cache")
        assert report.path == tmp_path / "cache" / "tiny.ckpt"
        np.testing.assert_array_equal(logits(source), logits(target))
        (served / "tiny.ckpt").unlink()  # a second load must use the cached copy
        load_pretrained(tiny_vit(), url, tmp_path / "cache")
    finally:
        server.shutdown()
