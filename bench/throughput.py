"""Train/eval throughput of our MindSpore ViT vs an equivalent PyTorch eager ViT, on this CPU.

    .venv/bin/pip install torch==2.13.0        # bench-only; never a runtime or test dependency
    GLOG_v=3 .venv/bin/python bench/throughput.py [--configs tiny32 vit_b16] [--steps 5] [--rounds 2]

For each config the two frameworks are timed in one process in the order A B A B (MindSpore,
PyTorch, MindSpore, PyTorch), after a warm-up (graph mode needs ~5 steps to reach its speed).
Printed per config and mode: median step time, images/s, achieved GFLOP/s, % of the measured
sgemm peak (the faster of a 1024^3 MatMul and the model's own MLP matmul, in MindSpore) and the
MindSpore / PyTorch throughput ratio.
Both models: fp32, pre-norm ViT, fused qkv, the same GELU variant, Adam, cross-entropy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class BenchConfig:
    name: str
    image_size: int
    patch_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    num_classes: int
    train_batch: int
    eval_batch: int


CONFIGS = {
    "tiny32": BenchConfig("tiny32", 32, 4, 192, 6, 3, 768, 10, 64, 64),
    "vit_b16": BenchConfig("vit_b16", 224, 16, 768, 12, 12, 3072, 1000, 8, 16),
}


def forward_flops(c: BenchConfig) -> float:
    """Multiply-adds x 2 of one image's forward pass (matmuls and attention; norms/softmax ignored)."""
    n = (c.image_size // c.patch_size) ** 2 + 1
    d = c.embed_dim
    patch = 2 * (n - 1) * (3 * c.patch_size**2) * d
    per_layer = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * c.mlp_dim + 2 * 2 * n * n * d
    return patch + c.num_layers * per_layer + 2 * d * c.num_classes


# ---------------------------------------------------------------------------------------------- MindSpore
def mindspore_steps(c: BenchConfig, gelu_approximate: bool, patch_embed: str, fused_kernels: str = "auto"):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.models.vit import ViT, ViTConfig
    from vit_exp.train.losses import CrossEntropySmooth

    def build():
        return ViT(
            ViTConfig(
                image_size=c.image_size,
                patch_size=c.patch_size,
                embed_dim=c.embed_dim,
                num_layers=c.num_layers,
                num_heads=c.num_heads,
                mlp_dim=c.mlp_dim,
                num_classes=c.num_classes,
                gelu_approximate=gelu_approximate,
                patch_embed=patch_embed,
                fused_kernels=fused_kernels,
                layer_norm_eps=1e-6,
            )
        )

    net = build()
    optimizer = nn.Adam(net.trainable_params(), learning_rate=1e-4)
    train = nn.TrainOneStepCell(nn.WithLossCell(net, CrossEntropySmooth(c.num_classes, 0.0)), optimizer)
    train.set_train(True)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(c.train_batch, 3, c.image_size, c.image_size)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, c.num_classes, c.train_batch).astype(np.int32))
    xe = ms.Tensor(rng.normal(size=(c.eval_batch, 3, c.image_size, c.image_size)).astype(np.float32))

    eval_net = build()
    eval_net.set_train(False)

    def train_step() -> None:
        train(x, y).asnumpy()

    def eval_step() -> None:
        eval_net(xe).asnumpy()

    return train_step, eval_step


def mindspore_sgemm_gflops(m: int = 1024, k: int = 1024, n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of MindSpore's fp32 MatMul on an (m, k) x (k, n) product, best of ``repeats``."""
    import mindspore as ms
    from mindspore import ops

    rng = np.random.default_rng(0)
    a = ms.Tensor(rng.normal(size=(m, k)).astype(np.float32))
    b = ms.Tensor(rng.normal(size=(k, n)).astype(np.float32))
    matmul = ops.MatMul()
    matmul(a, b).asnumpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).asnumpy()
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def sgemm_peak(c: BenchConfig) -> float:
    """The sgemm reference for a config: the best of a 1024^3 MatMul and the model's own MLP matmul
    (tokens of a training batch x embed_dim x mlp_dim), whichever MindSpore runs faster."""
    tokens = c.train_batch * ((c.image_size // c.patch_size) ** 2 + 1)
    return max(mindspore_sgemm_gflops(), mindspore_sgemm_gflops(tokens, c.embed_dim, c.mlp_dim))


# ------------------------------------------------------------------------------------------------ PyTorch
def torch_steps(c: BenchConfig, gelu_approximate: bool):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(c.embed_dim, eps=1e-6)
            self.qkv = nn.Linear(c.embed_dim, 3 * c.embed_dim)
            self.out = nn.Linear(c.embed_dim, c.embed_dim)
            self.norm2 = nn.LayerNorm(c.embed_dim, eps=1e-6)
            self.fc1 = nn.Linear(c.embed_dim, c.mlp_dim)
            self.act = nn.GELU(approximate="tanh" if gelu_approximate else "none")
            self.fc2 = nn.Linear(c.mlp_dim, c.embed_dim)
            self.heads = c.num_heads

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = (
                self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            )
            attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
            x = x + self.out((attn @ v).transpose(1, 2).reshape(b, n, d))
            return x + self.fc2(self.act(self.fc1(self.norm2(x))))

    class TorchViT(nn.Module):
        def __init__(self):
            super().__init__()
            n = (c.image_size // c.patch_size) ** 2
            self.conv = nn.Conv2d(3, c.embed_dim, c.patch_size, c.patch_size)
            self.cls = nn.Parameter(torch.randn(1, 1, c.embed_dim))
            self.pos = nn.Parameter(torch.randn(1, n + 1, c.embed_dim))
            self.blocks = nn.Sequential(*[Block() for _ in range(c.num_layers)])
            self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
            self.head = nn.Linear(c.embed_dim, c.num_classes)

        def forward(self, x):
            x = self.conv(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.head(self.norm(self.blocks(x)[:, 0]))

    torch.manual_seed(0)
    net = TorchViT()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(c.train_batch, 3, c.image_size, c.image_size)
    y = torch.randint(0, c.num_classes, (c.train_batch,))
    xe = torch.randn(c.eval_batch, 3, c.image_size, c.image_size)
    eval_net = TorchViT().eval()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        loss.item()

    def eval_step() -> None:
        with torch.inference_mode():
            eval_net(xe).sum().item()

    return train_step, eval_step


# ---------------------------------------------------------------------------------------------- harness
def timed(step, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per framework per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gelu", choices=["exact", "tanh"], default="exact")
    parser.add_argument("--patch-embed", choices=["matmul", "conv"], default="matmul")
    parser.add_argument("--fused-kernels", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    args = parser.parse_args()

    import mindspore as ms
    import torch

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    torch.set_num_threads(2)
    print(f"mindspore {ms.__version__}, torch {torch.__version__}")
    print(
        f"gelu={args.gelu} patch_embed={args.patch_embed} fused_kernels={args.fused_kernels} "
        f"steps={args.steps} warmup={args.warmup} rounds={args.rounds}"
    )
    approximate = args.gelu == "tanh"
    for name in args.configs:
        c = CONFIGS[name]
        peak = sgemm_peak(c)
        print(f"{name}: sgemm peak {peak:.0f} GFLOP/s (best of 1024^3 and the model's MLP matmul)")
        ms_train, ms_eval = mindspore_steps(c, approximate, args.patch_embed, args.fused_kernels)
        pt_train, pt_eval = torch_steps(c, approximate)
        for mode in args.modes:
            batch = c.train_batch if mode == "train" else c.eval_batch
            flops = forward_flops(c) * batch * (3 if mode == "train" else 1)
            steps = {
                "mindspore": ms_train if mode == "train" else ms_eval,
                "torch": pt_train if mode == "train" else pt_eval,
            }
            for step in steps.values():
                timed(step, args.warmup)
            results = {k: [] for k in steps}
            for _ in range(args.rounds):
                for key, step in steps.items():
                    results[key] += timed(step, args.steps)
            line = [f"{name:>8} {mode:<5} batch {batch:>3}"]
            median = {k: statistics.median(v) for k, v in results.items()}
            for key in steps:
                gflops = flops / median[key] / 1e9
                line.append(
                    f"{key} {median[key] * 1000:8.1f} ms {batch / median[key]:7.2f} img/s "
                    f"{gflops:6.1f} GFLOP/s ({100 * gflops / peak:4.1f}% of sgemm)"
                )
            line.append(f"ratio ms/torch {median['torch'] / median['mindspore']:.2f}x")
            print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
