"""Train/eval throughput of our MindSpore ViT (fp32, bf16) vs what a PyTorch user runs, on this CPU.

    .venv/bin/pip install -e ".[bench]"        # bench-only torch; never a runtime or test dependency
    GLOG_v=3 .venv/bin/python bench/throughput.py [--configs tiny32 vit_b16] [--steps 5] [--rounds 2]

Variants, all timed in one process, in rotation A B C ... A B C ... (``--rounds``), after a warm-up:
  ms-fp32      our ViT, fp32 (device.precision=fp32)
  ms-bf16      our ViT, bf16 matmuls with fp32 weights/optimizer/reductions (device.precision=bf16)
  pt-eager     PyTorch eager fp32, attention written out (softmax(q k^T) v)
  pt-sdpa      PyTorch eager fp32 with F.scaled_dot_product_attention
  pt-compile   torch.compile of the SDPA model, fp32
  pt-bf16      the SDPA model under torch.autocast("cpu", dtype=torch.bfloat16)
Printed per config and mode: median step time, images/s, achieved GFLOP/s, % of the sgemm peak (the
median of a measurement in every round, as the VM's speed drifts) and
every variant's throughput relative to ms-fp32, plus the two targets (ms-fp32 / pt-compile,
ms-bf16 / pt-bf16). The sgemm peak is measured on the model's own matmul shapes and combined by
FLOPs: the time a step would take if its matmuls alone ran at sgemm speed. Every dense layer's
forward and both backward products, each at the best of MindSpore's MatMul, torch.mm and oneDNN's
sgemm split over 2 threads as our kernels run it; and attention's batched products (q k^T, P v and
their gradients, counted as the step's FLOPs count them), each at the best of torch.bmm,
MindSpore's BatchMatMul and oneDNN's sgemm per image and head over 2 threads. Two figures: the
peak of all those products (the step's FLOPs are all of them) and, stricter, of the dense layers'
alone (attention's small products run slower at sgemm too).
All models: pre-norm ViT, fused qkv, the same GELU variant, Adam, cross-entropy.
"""

from __future__ import annotations

import argparse
import functools
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

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


CONFIGS = {
    "tiny32": BenchConfig("tiny32", 32, 4, 192, 6, 3, 768, 10, 64, 64),
    "vit_b16": BenchConfig("vit_b16", 224, 16, 768, 12, 12, 3072, 1000, 8, 16),
}
MS_VARIANTS = ("ms-fp32", "ms-bf16")
PT_VARIANTS = ("pt-eager", "pt-sdpa", "pt-compile", "pt-bf16")


def forward_flops(c: BenchConfig) -> float:
    """Multiply-adds x 2 of one image's forward pass (matmuls and attention; norms/softmax ignored)."""
    n, d = c.tokens, c.embed_dim
    patch = 2 * (n - 1) * (3 * c.patch_size**2) * d
    per_layer = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * c.mlp_dim + 2 * 2 * n * n * d
    return patch + c.num_layers * per_layer + 2 * d * c.num_classes


def dense_shapes(c: BenchConfig, batch: int, train: bool) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of every dense-layer product in one step: forward, and in training dx and dw."""
    t, d, f = batch * c.tokens, c.embed_dim, c.mlp_dim
    layers = [(t, d, 3 * d), (t, d, d), (t, d, f), (t, f, d)]
    shapes = [(m, k, n, c.num_layers) for m, k, n in layers]
    patches = batch * (c.tokens - 1)
    shapes.append((patches, 3 * c.patch_size**2, d, 1))
    if train:
        shapes += [(m, n, k, count) for m, k, n, count in shapes]  # dx = dy . w
        shapes += [(n, m, k, count) for m, k, n, count in shapes[: len(shapes) // 2]]  # dw = dy^T . x
    return shapes


def attention_shapes(c: BenchConfig, batch: int, train: bool) -> list[tuple[int, int, int, int, int]]:
    """(items, m, k, n, count) of attention's batched products in one step, one item per image and
    head, counted as forward_flops counts them (x3 in training): q k^T and P v forward; dP = dO v^T
    and dV, dQ, dK (each (n, n) x (n, hd)) backward."""
    n, hd, items = c.tokens, c.embed_dim // c.num_heads, batch * c.num_heads
    scores, values = (items, n, hd, n), (items, n, n, hd)
    return [(*scores, c.num_layers * (2 if train else 1)), (*values, c.num_layers * (4 if train else 1))]


# ---------------------------------------------------------------------------------------------- MindSpore
def our_vit(
    c: BenchConfig,
    gelu_approximate: bool,
    patch_embed: str = "matmul",
    fused_kernels: str = "auto",
    precision: str = "fp32",
):
    """Our MindSpore ViT of config ``c`` (layer_norm_eps 1e-6, as the PyTorch reference)."""
    from vit_exp.models.kernels.plan import plan_kernels
    from vit_exp.models.vit import ViT, ViTConfig

    config = ViTConfig(
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
        precision=precision,
    )
    return ViT(config, plan_kernels(config, "CPU"))


def mindspore_steps(
    c: BenchConfig, gelu_approximate: bool, patch_embed: str, fused_kernels: str, precision: str
):
    import mindspore as ms
    from mindspore import nn

    from vit_exp.train.losses import CrossEntropySmooth

    def build():
        return our_vit(c, gelu_approximate, patch_embed, fused_kernels, precision)

    net = build()
    if net.precision != precision:
        raise SystemExit(f"precision {precision} is not available here (resolved to {net.precision})")
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


def best_seconds(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def _onednn_sgemm():
    """``dnnl_sgemm`` of the oneDNN inside the MindSpore wheel (what our fp32 kernels call), and 2 threads."""
    import ctypes
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import mindspore

    library = ctypes.CDLL(str(Path(mindspore.__file__).parent / "lib" / "libdnnl.so.3"))
    i64, pointer = ctypes.c_int64, ctypes.c_void_p
    library.dnnl_sgemm.argtypes = [ctypes.c_char, ctypes.c_char, i64, i64, i64, ctypes.c_float, pointer]
    library.dnnl_sgemm.argtypes += [i64, pointer, i64, ctypes.c_float, pointer, i64]
    return library.dnnl_sgemm, ThreadPoolExecutor(2)


def onednn_sgemm_seconds(a: np.ndarray, b: np.ndarray, repeats: int) -> float:
    """Best seconds of oneDNN's sgemm on a @ b, the rows split over 2 threads as our kernels do."""
    sgemm, pool = _onednn_sgemm()
    (m, k), n = a.shape, b.shape[1]
    c = np.empty((m, n), np.float32)
    halves = [(0, m // 2), (m // 2, m)]

    def rows(r: tuple[int, int]) -> None:
        begin, end = r
        sgemm(
            b"N",
            b"N",
            end - begin,
            n,
            k,
            1.0,
            a.ctypes.data + begin * k * 4,
            k,
            b.ctypes.data,
            n,
            0.0,
            c.ctypes.data + begin * n * 4,
            n,
        )

    return best_seconds(lambda: list(pool.map(rows, halves)), repeats)


def sgemm_seconds(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Seconds of the fastest fp32 (m, k) x (k, n) product here: MindSpore's MatMul, torch.mm or
    oneDNN's sgemm (which our fp32 kernels use)."""
    import mindspore as ms
    import torch
    from mindspore import ops

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
    ma, mb, matmul = ms.Tensor(a), ms.Tensor(b), ops.MatMul()
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return min(
        best_seconds(lambda: matmul(ma, mb).asnumpy(), repeats),
        best_seconds(lambda: torch.mm(ta, tb), repeats),
        onednn_sgemm_seconds(a, b, repeats),
    )


def batched_sgemm_seconds(items: int, m: int, k: int, n: int, repeats: int = 5) -> float:
    """Seconds of the fastest fp32 batched (items, m, k) x (items, k, n) product here: torch.bmm,
    MindSpore's BatchMatMul, or oneDNN's sgemm per item with the items split over 2 threads (as
    our attention kernel runs them)."""
    import mindspore as ms
    import torch
    from mindspore import ops

    rng = np.random.default_rng(0)
    a = rng.normal(size=(items, m, k)).astype(np.float32)
    b = rng.normal(size=(items, k, n)).astype(np.float32)
    ma, mb, matmul = ms.Tensor(a), ms.Tensor(b), ops.BatchMatMul()
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    sgemm, pool = _onednn_sgemm()
    c = np.empty((items, m, n), np.float32)

    def products(span: tuple[int, int]) -> None:
        for i in range(*span):
            sgemm(
                b"N", b"N", m, n, k, 1.0, a[i].ctypes.data, k, b[i].ctypes.data, n, 0.0, c[i].ctypes.data, n
            )

    halves = [(0, items // 2), (items // 2, items)]
    return min(
        best_seconds(lambda: matmul(ma, mb).asnumpy(), repeats),
        best_seconds(lambda: torch.bmm(ta, tb), repeats),
        best_seconds(lambda: list(pool.map(products, halves)), repeats),
    )


def sgemm_peaks(c: BenchConfig, batch: int, train: bool) -> tuple[float, float]:
    """GFLOP/s a step's matmuls reach at sgemm speed (their FLOPs / the sum of their sgemm times):
    the dense layers' alone, and all of them, attention's batched products included."""
    flops = seconds = 0.0
    cache: dict[tuple[int, int, int, int], float] = {}
    for m, k, n, count in dense_shapes(c, batch, train):
        if (1, m, k, n) not in cache:
            cache[(1, m, k, n)] = sgemm_seconds(m, k, n)
        flops += 2 * m * k * n * count
        seconds += cache[(1, m, k, n)] * count
    dense = flops / seconds / 1e9
    for items, m, k, n, count in attention_shapes(c, batch, train):
        if (items, m, k, n) not in cache:
            cache[(items, m, k, n)] = batched_sgemm_seconds(items, m, k, n)
        flops += 2 * items * m * k * n * count
        seconds += cache[(items, m, k, n)] * count
    return dense, flops / seconds / 1e9


# ------------------------------------------------------------------------------------------------ PyTorch
def torch_model(c: BenchConfig, gelu_approximate: bool, sdpa: bool):
    import torch
    from torch import nn
    from torch.nn import functional as F

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
            if sdpa:
                attended = F.scaled_dot_product_attention(q, k, v)
            else:
                attended = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1) @ v
            x = x + self.out(attended.transpose(1, 2).reshape(b, n, d))
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

    return TorchViT()


def torch_steps(c: BenchConfig, gelu_approximate: bool, variant: str):
    """Train and eval steps of one PyTorch variant (pt-eager, pt-sdpa, pt-compile, pt-bf16)."""
    import contextlib

    import torch
    from torch import nn

    torch.manual_seed(0)
    sdpa = variant != "pt-eager"
    net, eval_net = torch_model(c, gelu_approximate, sdpa), torch_model(c, gelu_approximate, sdpa).eval()
    train_forward, eval_forward = net, eval_net
    if variant == "pt-compile":
        train_forward, eval_forward = torch.compile(net), torch.compile(eval_net)

    def precision():
        if variant == "pt-bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(c.train_batch, 3, c.image_size, c.image_size)
    y = torch.randint(0, c.num_classes, (c.train_batch,))
    xe = torch.randn(c.eval_batch, 3, c.image_size, c.image_size)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision():
            loss = loss_fn(train_forward(x), y)
        loss.backward()
        optimizer.step()
        loss.item()

    def eval_step() -> None:
        with torch.inference_mode(), precision():
            eval_forward(xe).float().sum().item()

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
    parser.add_argument("--variants", nargs="+", default=[*MS_VARIANTS, *PT_VARIANTS])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gelu", choices=["exact", "tanh"], default="exact")
    parser.add_argument("--patch-embed", choices=["matmul", "conv"], default="matmul")
    parser.add_argument("--fused-kernels", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    args = parser.parse_args()
    unknown = set(args.variants) - {*MS_VARIANTS, *PT_VARIANTS}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {[*MS_VARIANTS, *PT_VARIANTS]}")

    import mindspore as ms
    import torch

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    torch.set_num_threads(2)
    print(f"mindspore {ms.__version__}, torch {torch.__version__}")
    print(
        f"gelu={args.gelu} patch_embed={args.patch_embed} fused_kernels={args.fused_kernels} "
        f"steps={args.steps} warmup={args.warmup} rounds={args.rounds} variants={' '.join(args.variants)}"
    )
    approximate = args.gelu == "tanh"
    for name in args.configs:
        c = CONFIGS[name]
        steps = {}
        for variant in args.variants:
            if variant in MS_VARIANTS:
                precision = variant.removeprefix("ms-")
                steps[variant] = mindspore_steps(
                    c, approximate, args.patch_embed, args.fused_kernels, precision
                )
            else:
                steps[variant] = torch_steps(c, approximate, variant)
        for mode in args.modes:
            train = mode == "train"
            batch = c.train_batch if train else c.eval_batch
            flops = forward_flops(c) * batch * (3 if train else 1)
            runs = {variant: pair[0 if train else 1] for variant, pair in steps.items()}
            for run in runs.values():
                timed(run, args.warmup)
            results: dict[str, list[float]] = {variant: [] for variant in runs}
            peaks = []  # measured in every round, beside the steps: this VM's speed drifts
            for _ in range(args.rounds):
                peaks.append(sgemm_peaks(c, batch, train))
                for variant, run in runs.items():
                    results[variant] += timed(run, args.steps)
            median = {variant: statistics.median(times) for variant, times in results.items()}
            dense_peak = statistics.median(p[0] for p in peaks)
            peak = statistics.median(p[1] for p in peaks)
            print(
                f"{name} {mode} batch {batch}: sgemm peak on its own matmul shapes {peak:.0f} GFLOP/s, "
                f"on its dense layers' shapes alone {dense_peak:.0f} (rounds: "
                f"{' '.join(f'{p[1]:.0f}/{p[0]:.0f}' for p in peaks)}); % of sgemm: of both peaks"
            )
            base = median.get("ms-fp32")
            for variant, seconds in median.items():
                gflops = flops / seconds / 1e9
                relative = f" {base / seconds:5.2f}x ms-fp32" if base else ""
                print(
                    f"  {variant:<11} {seconds * 1000:9.1f} ms {batch / seconds:8.2f} img/s "
                    f"{gflops:6.1f} GFLOP/s {100 * gflops / peak:5.1f}% / {100 * gflops / dense_peak:5.1f}% "
                    f"of sgemm{relative}"
                )
            for ours, theirs in (("ms-fp32", "pt-compile"), ("ms-bf16", "pt-bf16"), ("ms-fp32", "pt-eager")):
                if ours in median and theirs in median:
                    print(f"  target {ours} / {theirs}: {median[theirs] / median[ours]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
