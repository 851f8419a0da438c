"""How far bf16 moves ViT-B/16 logits from fp32: ours (device.precision=bf16) vs PyTorch's autocast.

    .venv/bin/pip install -e ".[bench]"        # bench-only torch
    GLOG_v=3 .venv/bin/python bench/bf16_accuracy.py [--batch 8] [--seed 0] [--checkpoint CKPT]

One set of weights (a seeded initialisation, or ``--checkpoint``, e.g. the published vit_b_16_224)
goes into our MindSpore ViT-B/16 and into the PyTorch reference of bench/throughput.py; both run one
fixed batch in fp32 and in bf16 (ours: bf16 matmuls through oneDNN; PyTorch: torch.autocast on the
CPU). Printed: our fp32 vs PyTorch fp32 (the two models agree), then for each framework its bf16
logits against its own fp32: max and mean absolute difference, the max relative to the largest
logit, and top-1 agreement. The issue's bar: ours must not differ more than PyTorch's autocast.
"""

from __future__ import annotations

import argparse

import numpy as np
from throughput import CONFIGS, our_vit, torch_model


def torch_state(ours: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """Our parameter names -> the PyTorch reference's (the same tensors; Linear stores (out, in))."""
    state = {
        "conv.weight": ours["patch_embedding.conv.weight"],
        "conv.bias": ours["patch_embedding.conv.bias"],
        "cls": ours["cls"],
        "pos": ours["pos_embedding"],
        "norm.weight": ours["norm.gamma"],
        "norm.bias": ours["norm.beta"],
        "head.weight": ours["dense.weight"],
        "head.bias": ours["dense.bias"],
    }
    for i in range(num_layers):
        ours_prefix, theirs = f"transformer.layers.{i}", f"blocks.{i}"
        pairs = {
            "norm1.weight": "0.cell.0.gamma",
            "norm1.bias": "0.cell.0.beta",
            "qkv.weight": "0.cell.1.qkv.weight",
            "qkv.bias": "0.cell.1.qkv.bias",
            "out.weight": "0.cell.1.out.weight",
            "out.bias": "0.cell.1.out.bias",
            "norm2.weight": "1.cell.0.gamma",
            "norm2.bias": "1.cell.0.beta",
            "fc1.weight": "1.cell.1.dense1.weight",
            "fc1.bias": "1.cell.1.dense1.bias",
            "fc2.weight": "1.cell.1.dense2.weight",
            "fc2.bias": "1.cell.1.dense2.bias",
        }
        state |= {f"{theirs}.{t}": ours[f"{ours_prefix}.{o}"] for t, o in pairs.items()}
    return state


def compare(name: str, reference: np.ndarray, other: np.ndarray) -> None:
    diff = np.abs(other.astype(np.float64) - reference)
    agree = float((other.argmax(1) == reference.argmax(1)).mean())
    print(
        f"  {name:<34} max |d| {diff.max():.2e}  mean |d| {diff.mean():.2e}  "
        f"max |d| / max |logit| {diff.max() / np.abs(reference).max():.2e}  top-1 agreement {agree:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="a MindSpore ViT-B/16 checkpoint (default: seeded init)")
    args = parser.parse_args()

    import mindspore as ms
    import torch

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(args.seed)
    torch.set_num_threads(2)
    c = CONFIGS["vit_b16"]
    fp32, bf16 = our_vit(c, False, precision="fp32"), our_vit(c, False, precision="bf16")
    if args.checkpoint:
        ms.load_param_into_net(fp32, ms.load_checkpoint(args.checkpoint), strict_load=True)
    weights = {p.name: p.asnumpy() for p in fp32.get_parameters()}
    ms.load_param_into_net(bf16, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in weights.items()})
    reference = torch_model(c, gelu_approximate=False, sdpa=True).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in torch_state(weights, c.num_layers).items()})

    rng = np.random.default_rng(args.seed)
    batch = rng.normal(size=(args.batch, 3, c.image_size, c.image_size)).astype(np.float32)
    logits = {}
    for net in (fp32, bf16):
        net.set_train(False)
        logits[f"ours {net.precision}"] = net(ms.Tensor(batch)).asnumpy()
    with torch.inference_mode():
        logits["torch fp32"] = reference(torch.from_numpy(batch)).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits["torch bf16"] = reference(torch.from_numpy(batch)).float().numpy()
    weights_from = f"checkpoint {args.checkpoint}" if args.checkpoint else f"seeded init {args.seed}"
    print(
        f"ViT-B/16, batch {args.batch}, {weights_from}; "
        f"largest |logit| {np.abs(logits['ours fp32']).max():.3f}"
    )
    compare("ours fp32 vs torch fp32", logits["torch fp32"], logits["ours fp32"])
    compare("ours bf16 vs ours fp32", logits["ours fp32"], logits["ours bf16"])
    compare("torch bf16 autocast vs torch fp32", logits["torch fp32"], logits["torch bf16"])


if __name__ == "__main__":
    main()
