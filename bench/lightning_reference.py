"""vit-exp's default training run end to end vs the same training in PyTorch Lightning + MLFlowLogger.

    GLOG_v=3 .venv/bin/python bench/lightning_reference.py [--epochs 30] [--rounds 2] [--threshold 0.98]
        [--torch-workers 0] [--fresh-stores] [--vit-exp-root CHECKOUT] [--keep]

Both sides train the default run's model (model=vit_tiny) on the default run's digits image folder
with its batch size, epochs, optimizer, LR schedule, label smoothing and transforms, every setting
read from the composed ``conf/train.yaml``. Each run is a fresh subprocess of this script, recording
into its own temporary SQLite MLflow store (artifacts beside it), in the order A B A B (vit-exp,
Lightning, ...):

- vit-exp: ``python -m vit_exp.run`` with only the store, the cache folder and the Hydra run folder
  moved to the temporary folder (plus ``trainer.epochs`` when ``--epochs`` differs from the default);
- Lightning (this file, ``--lightning-worker``): a torch ViT of the same architecture and
  initialisation, a PIL + numpy Dataset/DataLoader over the same folder, ``self.log`` of the
  per-step train loss and the per-epoch val loss/top-1/top-5 (torchmetrics),
  ``ModelCheckpoint(every_n_epochs=1, save_top_k=-1)`` and ``MLFlowLogger(log_model="all")``,
  which logs every checkpoint as a run artifact when it is written; torch threads = 2.
  The DataLoader decodes in the training process (``--torch-workers 0``): with worker processes
  (``data.num_workers`` = 2) on 2 cores, torch's 2 spinning OpenMP threads and the workers
  oversubscribe the CPU and a Lightning epoch takes ~8x longer (12 s vs 1.5 s measured).

Every store's tables are created before its run starts, untimed, as a user's store already exists
(``--fresh-stores`` times that too); the digits folder is written once, before the first run.

Printed per run: wall time from process start to exit, the time from process start to the first
validation with val top-1 >= ``--threshold`` (from the MLflow metric timestamps), the best val top-1,
the process's CPU time, what the MLflow store holds afterwards, and a timeline. Then medians and
the ratios Lightning / vit-exp. Settings the two sides cannot share are printed under "differences".
``--vit-exp-root`` runs vit-exp (and reads ``conf/``) from another checkout, e.g. a ``git archive``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
TIMINGS_PREFIX = "LIGHTNING_REFERENCE_TIMINGS "
DIFFERENCES = (
    "Adam: MindSpore's nn.Adam adds eps to sqrt(v) before bias correction "
    "(lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)), torch.optim.Adam to sqrt(v_hat): "
    "in effect eps differs by the factor sqrt(1 - b2^t) <= 1, negligible at eps = 1e-8.",
    "Label smoothing: vit-exp's is on = 1 - s, off = s / (C - 1); Lightning uses "
    "CrossEntropyLoss(label_smoothing=s * C / (C - 1)), which gives exactly the same targets.",
    "Resize: vit-exp decodes, crops and resizes with MindSpore (OpenCV bilinear), Lightning with "
    "PIL bilinear (the crop box drawn as torchvision's RandomResizedCrop draws it, as MindSpore's "
    "RandomCropDecodeResize does); the val images of both differ by at most one grey level (rounding).",
    "Random streams: crops, shuffling and initial weights come from different generators (same "
    "seed 42, same distributions: N(0, 1) class token and position embedding, kaiming-uniform(a=sqrt(5)) "
    "Linear/Conv weights, uniform biases, LayerNorm 1/0), so the two learning curves are not bit-equal.",
    "Patch embedding: vit-exp runs it as reshape + matmul (model.patch_embed=matmul), Lightning as "
    "Conv2d(kernel = stride = patch): the same maths and weights. Attention: "
    "F.scaled_dot_product_attention, the same maths as vit-exp's softmax(q k^T / sqrt(d)) v.",
    "Kernels: vit-exp uses its fused GELU/LayerNorm CPU kernels and MindSpore graph mode; Lightning "
    "runs PyTorch eager (no torch.compile), fp32 on both sides.",
    "Validation: both validate after every epoch on the whole val split; Lightning also runs its "
    "default sanity check (2 val batches) before training, and its progress bar and model summary "
    "(defaults) write to the log.",
    "MLflow contents differ by design: vit-exp logs train/loss every step, train/lr, step time and "
    "throughput every 10 steps, per-epoch loss/time and val loss/top-1/top-5, the whole config as "
    "params, config and environment files, dataset inputs, and registers every epoch's checkpoint "
    "as a model version (a pyfunc LoggedModel with the checkpoint); Lightning logs train/loss every "
    "step (log_every_n_steps=1, to match), val loss/top-1/top-5 and 'epoch', the hyperparameters, "
    "and every checkpoint (full state: weights + Adam + scheduler) as a run artifact with "
    "metadata.yaml and aliases.txt, registering nothing.",
    "Data loading: vit-exp decodes and augments in MindSpore's pipeline threads "
    "(data.num_workers=2, prefetch 64); Lightning in its training process (DataLoader num_workers=0), "
    "as 2 worker processes beside torch's 2 OpenMP threads on 2 cores make its epochs ~8x slower.",
    "Checkpoints: vit-exp writes a weights checkpoint and a full-state checkpoint each epoch; "
    "Lightning one full-state checkpoint each epoch.",
)


# ------------------------------------------------------------------------------------------- the spec
def compose_default_run(root: Path, cache_dir: Path) -> Any:
    """The default run's composed config (``conf/train.yaml`` of ``root``) with ``cache_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vit_exp.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.cache_dir={cache_dir}"])
    GlobalHydra.instance().clear()
    return cfg


def schedule_spec(sched: Any) -> dict[str, float]:
    """The ``sched`` group as cosine parameters (a constant schedule is a cosine to factor 1)."""
    target = str(sched["_target_"]).rsplit(".", 1)[-1]
    if target not in ("cosine_schedule", "constant_schedule"):
        raise SystemExit(f"sched._target_={sched['_target_']}: this bench knows cosine and constant only")
    return {
        "warmup_epochs": float(sched.get("warmup_epochs", 0.0)),
        "warmup_start_factor": float(sched.get("warmup_start_factor", 0.0)),
        "end_factor": float(sched.get("end_factor", 0.0)) if target == "cosine_schedule" else 1.0,
    }


def lightning_spec(cfg: Any, epochs: int) -> dict[str, Any]:
    """Everything the Lightning worker needs, as plain values from the composed default config."""
    from vit_exp.data.digits import ensure_digits_folder

    data = cfg.data
    if not str(data["_target_"]).endswith("digits_data"):
        raise SystemExit("the default run's data is not digits: this bench compares the default run only")
    root = ensure_digits_folder(data.root, val_fraction=data.val_fraction, seed=data.seed)
    train_dir = root / data.train_split
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and any(d.iterdir()))
    model_keys = (
        "image_size",
        "patch_size",
        "input_channels",
        "embed_dim",
        "num_layers",
        "num_heads",
        "mlp_dim",
        "keep_prob",
        "attention_keep_prob",
        "gelu_approximate",
        "layer_norm_eps",
    )
    optim_keys = ("name", "lr", "weight_decay", "beta1", "beta2", "eps", "momentum", "nesterov")
    num_classes = cfg.model.num_classes or len(classes)
    return {
        "epochs": epochs,
        "batch_size": int(cfg.trainer.batch_size),
        "seed": int(cfg.trainer.seed),
        "label_smoothing": float(cfg.trainer.label_smoothing),
        "num_classes": int(num_classes),
        "classes": classes,
        "model": {key: cfg.model[key] for key in model_keys},
        "data": {
            "root": str(root),
            "train_split": data.train_split,
            "val_split": data.val_split,
            "mean": list(data.mean),
            "std": list(data.std),
            "train_crop_scale": list(data.train_crop_scale),
            "train_crop_ratio": list(data.train_crop_ratio),
            "hflip_prob": float(data.hflip_prob),
            "val_resize_margin": int(data.val_resize_margin),
        },
        "optim": {key: cfg.optim.get(key) for key in optim_keys if key in cfg.optim},
        "sched": schedule_spec(cfg.sched),
    }


# ------------------------------------------------------------------------------ the Lightning worker
def lr_factor(step: int, total_steps: int, steps_per_epoch: int, sched: dict[str, float]) -> float:
    """vit-exp's per-step LR factor (``vit_exp.train.lr.cosine_schedule``) for optimizer step ``step``."""
    warm = min(total_steps, round(sched["warmup_epochs"] * steps_per_epoch))
    start, end = sched["warmup_start_factor"], sched["end_factor"]
    if step < warm:
        return start + (1.0 - start) * step / warm + (1.0 - start) / warm
    decay_steps = max(total_steps - warm, 1)
    t = min(step - warm, decay_steps - 1) / decay_steps
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_torch_vit(m: dict[str, Any], num_classes: int):
    """The ViT of ``m`` (the ``model`` keys) in PyTorch: pre-norm blocks, class token, learned positions."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    dim, heads, eps = m["embed_dim"], m["num_heads"], float(m["layer_norm_eps"])
    drop, attn_drop = 1.0 - m["keep_prob"], 1.0 - m["attention_keep_prob"]

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)
            self.out_drop = nn.Dropout(drop)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, d = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            p = attn_drop if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            return self.out_drop(self.out(x.transpose(1, 2).reshape(b, n, d)))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=eps)
            self.attn = Attention()
            self.norm2 = nn.LayerNorm(dim, eps=eps)
            self.mlp = nn.Sequential(
                nn.Linear(dim, m["mlp_dim"]),
                nn.GELU(approximate="tanh" if m["gelu_approximate"] else "none"),
                nn.Dropout(drop),
                nn.Linear(m["mlp_dim"], dim),
                nn.Dropout(drop),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            p = m["patch_size"]
            patches = (m["image_size"] // p) ** 2
            self.patch_embedding = nn.Conv2d(m["input_channels"], dim, kernel_size=p, stride=p)
            self.cls = nn.Parameter(torch.randn(1, 1, dim))  # N(0, 1), as vit-exp initialises them
            self.pos_embedding = nn.Parameter(torch.randn(1, patches + 1, dim))
            self.dropout = nn.Dropout(drop)
            self.blocks = nn.Sequential(*[Block() for _ in range(m["num_layers"])])
            self.norm = nn.LayerNorm(dim, eps=eps)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embedding(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
            x = self.blocks(self.dropout(x))
            return self.head(self.norm(x[:, 0]))

    return ViT()


def image_folder_dataset(spec: dict[str, Any], split: str, train: bool):
    """A torch Dataset over ``<root>/<split>/<class>/*.png``: PIL decode, crop/resize, normalise, CHW."""
    import numpy as np
    import torch
    from PIL import Image

    d, size = spec["data"], spec["model"]["image_size"]
    mean = np.array(d["mean"], dtype=np.float32)
    std = np.array(d["std"], dtype=np.float32)
    folder = Path(d["root"]) / split
    samples = [
        (path, label)
        for label, name in enumerate(spec["classes"])
        for path in sorted((folder / name).iterdir())
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")
    ]

    def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params: area in ``scale``, log-uniform ``ratio``."""
        area = width * height
        scale, ratio = d["train_crop_scale"], d["train_crop_ratio"]
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)).item())
                left = int(torch.randint(0, width - w + 1, (1,)).item())
                return left, top, left + w, top + h
        w, h = width, height  # fallback: the whole image clamped to the ratio range, centred
        if width / height < ratio[0]:
            h = round(width / ratio[0])
        elif width / height > ratio[1]:
            w = round(height * ratio[1])
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    class ImageFolder(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            path, label = samples[index]
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            if train:
                image = image.resize((size, size), Image.BILINEAR, box=crop_box(*image.size))
                if d["hflip_prob"] > 0 and torch.rand(1).item() < d["hflip_prob"]:
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
            else:  # Resize(shorter side -> size + margin), CenterCrop(size)
                short = size + d["val_resize_margin"]
                w, h = image.size
                scale = short / min(w, h)
                image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
                left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
                image = image.crop((left, top, left + size, top + size))
            pixels = (np.asarray(image, dtype=np.float32) - mean) / std
            return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), label

    return ImageFolder()


def lightning_worker(spec_path: Path) -> None:  # noqa: C901 (the reference loop, written in one function as its users do)
    """Train the spec's ViT with Lightning, logging to MLflow; print timings as one JSON line."""
    imports_start = time.time()
    import lightning as L
    import torch
    import torchmetrics
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    timings: dict[str, Any] = {"imports_start": imports_start, "imports_done": time.time()}
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    L.seed_everything(spec["seed"], workers=True)
    d, o = spec["data"], spec["optim"]

    class TimedMLFlowLogger(MLFlowLogger):
        """MLFlowLogger, timing (only) its metric sends and its checkpoint logging."""

        def log_metrics(self, metrics, step=None) -> None:
            start = time.perf_counter()
            super().log_metrics(metrics, step)
            timings["log_metrics_s"] = timings.get("log_metrics_s", 0.0) + time.perf_counter() - start
            timings["log_metrics_calls"] = timings.get("log_metrics_calls", 0) + 1

        def after_save_checkpoint(self, checkpoint_callback) -> None:
            start = time.perf_counter()
            super().after_save_checkpoint(checkpoint_callback)
            timings.setdefault("checkpoint_log_s", []).append(time.perf_counter() - start)

    class TimedCheckpoint(ModelCheckpoint):
        """ModelCheckpoint, timing (only) each save (torch.save + the logger's after_save_checkpoint)."""

        def _save_checkpoint(self, trainer, filepath) -> None:
            start = time.perf_counter()
            super()._save_checkpoint(trainer, filepath)
            timings.setdefault("checkpoint_save_s", []).append(time.perf_counter() - start)

    class Timeline(Callback):
        """Wall-clock marks of the fit: start, each train epoch, each validation."""

        def on_fit_start(self, trainer, pl_module) -> None:
            timings["fit_start"] = time.time()

        def on_train_start(self, trainer, pl_module) -> None:
            timings["train_start"] = time.time()

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._epoch = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._val = time.perf_counter()
            if not trainer.sanity_checking:
                timings.setdefault("train_epoch_s", []).append(self._val - self._epoch)

        def on_validation_end(self, trainer, pl_module) -> None:
            key = "sanity_check_s" if trainer.sanity_checking else "val_s"
            timings.setdefault(key, []).append(time.perf_counter() - self._val)

        def on_fit_end(self, trainer, pl_module) -> None:
            timings["fit_end"] = time.time()

    class LitViT(L.LightningModule):
        def __init__(self, spec: dict[str, Any], steps_per_epoch: int) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = build_torch_vit(spec["model"], spec["num_classes"])
            c, s = spec["num_classes"], spec["label_smoothing"]
            # torch's targets: on = 1 - e + e/C, off = e/C; e = s*C/(C-1) gives vit-exp's 1 - s, s/(C-1).
            self.loss = torch.nn.CrossEntropyLoss(label_smoothing=s * c / (c - 1) if c > 1 else 0.0)
            kw = {"task": "multiclass", "num_classes": c, "average": "micro"}
            self.top1 = torchmetrics.Accuracy(top_k=1, **kw)
            self.top5 = torchmetrics.Accuracy(top_k=min(5, c), **kw)
            self.steps_per_epoch = steps_per_epoch

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx: int) -> torch.Tensor:
            images, labels = batch
            loss = self.loss(self(images), labels)
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx: int) -> None:
            images, labels = batch
            logits = self(images)
            self.top1(logits, labels)
            self.top5(logits, labels)
            self.log("val/loss", self.loss(logits, labels), on_epoch=True, batch_size=len(labels))
            self.log("val/top1", self.top1, on_epoch=True, prog_bar=True)
            self.log("val/top5", self.top5, on_epoch=True)

        def configure_optimizers(self):
            params = self.param_groups(o["weight_decay"])
            betas = (o.get("beta1", 0.9), o.get("beta2", 0.999))
            if o["name"] == "adam":  # L2 added to the gradient, as MindSpore's nn.Adam
                opt = torch.optim.Adam(params, lr=o["lr"], betas=betas, eps=o["eps"])
            elif o["name"] == "adamw":
                opt = torch.optim.AdamW(params, lr=o["lr"], betas=betas, eps=o["eps"])
            else:
                opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
            total = spec["epochs"] * self.steps_per_epoch
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: lr_factor(step, total, self.steps_per_epoch, spec["sched"])
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        def param_groups(self, weight_decay: float) -> list:
            """Decay on weight matrices only (biases, norms, class token, positions exempt), as vit-exp."""
            decay, keep = [], []
            for name, p in self.named_parameters():
                exempt = p.ndim <= 1 or name.endswith(("cls", "pos_embedding"))
                (keep if exempt else decay).append(p)
            if not weight_decay:
                return [{"params": decay + keep, "weight_decay": 0.0}]
            return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]

    workers = spec["loader_workers"]
    loader = {"batch_size": spec["batch_size"], "num_workers": workers, "persistent_workers": workers > 0}
    train = torch.utils.data.DataLoader(
        image_folder_dataset(spec, d["train_split"], train=True), shuffle=True, drop_last=True, **loader
    )
    val = torch.utils.data.DataLoader(image_folder_dataset(spec, d["val_split"], train=False), **loader)
    logger = TimedMLFlowLogger(
        experiment_name="lightning-reference",
        tracking_uri=spec["tracking_uri"],
        artifact_location=spec["artifact_location"],
        log_model="all",
    )
    checkpoints = TimedCheckpoint(
        dirpath=Path(spec["run_dir"]) / "checkpoints", every_n_epochs=1, save_top_k=-1
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=spec["epochs"],
        logger=logger,
        callbacks=[checkpoints, Timeline()],
        log_every_n_steps=1,  # vit-exp's mlflow.log_every_n_steps (Lightning's default is 50)
        default_root_dir=spec["run_dir"],
    )
    trainer.fit(LitViT(spec, len(train)), train, val)
    timings["run_id"] = logger.run_id
    timings["fit_returned"] = time.time()
    print(TIMINGS_PREFIX + json.dumps(timings), flush=True)


# ------------------------------------------------------------------------------------------ the harness
@dataclass
class RunResult:
    """One timed run: its times (seconds from process start), accuracy and what MLflow recorded."""

    side: str
    round: int
    process: dict[str, Any]  # start, wall, cpu, other_cpu (run_process)
    to_threshold_s: float | None
    threshold_epoch: int | None
    best_top1: float
    best_epoch: int
    record: dict[str, Any]
    timeline: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def store_record(store_dir: Path, tracking_uri: str) -> dict[str, Any]:
    """What the store holds: runs, metric keys and points, params, tags, artifacts, models, versions."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    run = runs[0] if runs else None
    artifacts = store_dir / "artifacts"
    files = [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.exists() else []
    run_files = [p for p in files if run is not None and run.info.run_id in p.parts]

    def logged_models() -> int:
        try:
            return len(client.search_logged_models(experiments))
        except Exception:  # an MLflow without LoggedModels
            return 0

    history = {}
    if run is not None:
        history = {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics}
    return {
        "runs": len(runs),
        "run": run,
        "history": history,
        "metric_keys": len(history),
        "metric_points": sum(len(points) for points in history.values()),
        "params": len(run.data.params) if run else 0,
        "tags": len(run.data.tags) if run else 0,
        "run_artifact_files": len(run_files),
        "logged_models": logged_models(),
        "checkpoint_files": sum(p.suffix == ".ckpt" for p in files),
        "artifact_files": len(files),
        "artifact_mb": sum(p.stat().st_size for p in files) / 1e6,
        "model_versions": len(client.search_model_versions()),
    }


def val_summary(record: dict[str, Any], start: float, threshold: float) -> tuple:
    """(seconds to the first val/top1 >= threshold or None, its epoch, best top-1, best epoch)."""
    points = sorted(record["history"].get("val/top1", []), key=lambda m: (m.step, m.timestamp))
    if not points:
        return None, None, float("nan"), 0
    hit = next(((i, m) for i, m in enumerate(points, 1) if m.value >= threshold), None)
    best_epoch, best = max(enumerate(points, 1), key=lambda item: (item[1].value, -item[0]))
    to_hit = (hit[1].timestamp / 1000.0 - start) if hit else None
    return to_hit, hit[0] if hit else None, best.value, best_epoch


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all CPUs, from /proc/stat); None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_process(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``command`` to its end, output to ``log``: its start (epoch s), wall and CPU seconds,
    and the CPU seconds other processes used meanwhile (a busy machine skews the comparison)."""
    before, busy = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_s()
    with log.open("w") as out:
        start, started = time.time(), time.perf_counter()
        proc = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
    after, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_s()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"{' '.join(command[1:3])} exited with {proc.returncode} (log {log}):\n{tail}")
    other = None if busy is None or busy_after is None else max(0.0, busy_after - busy - cpu)
    return {"start": start, "wall": wall, "cpu": cpu, "other_cpu": other}


def child_environment(pythonpath: Path | None = None) -> dict[str, str]:
    """This environment without MLflow store variables (each run gets its own store), unbuffered."""
    drop = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {"PYTHONUNBUFFERED": "1", "GLOG_v": env.get("GLOG_v", "3")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return env


def prepare_store(store: Path, fresh: bool) -> str:
    """The SQLite URI of a store in ``store``; its tables made now (untimed) unless ``fresh``.

    A user's store exists already: creating the schema (~2 s here) would otherwise count in the run.
    """
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    if not fresh:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return uri


def mlflow_timeline(record: dict[str, Any], start: float) -> dict[str, float]:
    """Seconds from process start to the run's creation, first train/loss, last val/top1 and end."""
    run, history = record["run"], record["history"]
    if run is None:
        return {}
    timeline = {"run created": run.info.start_time / 1000.0 - start}
    if history.get("train/loss"):
        timeline["first train/loss"] = min(m.timestamp for m in history["train/loss"]) / 1000.0 - start
    if history.get("val/top1"):
        timeline["last val/top1"] = max(m.timestamp for m in history["val/top1"]) / 1000.0 - start
    if run.info.end_time:
        timeline["run ended"] = run.info.end_time / 1000.0 - start
    return timeline


def run_vit_exp(
    root: Path,
    folder: Path,
    cache: Path,
    epochs: int,
    default_epochs: int,
    fresh: bool,
    threshold: float,
    round_: int,
) -> RunResult:
    """One default ``python -m vit_exp.run`` in its own store; times from the MLflow record."""
    store = folder / "store"
    uri = prepare_store(store, fresh)
    overrides = [f"paths.cache_dir={cache}", f"hydra.run.dir={folder / 'run'}", f"mlflow.tracking_uri={uri}"]
    if epochs != default_epochs:
        overrides.append(f"trainer.epochs={epochs}")
    command = [sys.executable, "-m", "vit_exp.run", *overrides]
    proc = run_process(command, root, child_environment(root), folder / "vit_exp.log")
    start = proc["start"]
    record = store_record(store, uri)
    to_hit, hit_epoch, best, best_epoch = val_summary(record, start, threshold)
    timeline = mlflow_timeline(record, start)
    epoch_times = [m.value for m in record["history"].get("train/epoch_time_s", [])]
    extra = {"train/epoch_time_s sum": sum(epoch_times)} if epoch_times else {}
    return RunResult("vit-exp", round_, proc, to_hit, hit_epoch, best, best_epoch, record, timeline, extra)


def run_lightning(
    spec: dict[str, Any], folder: Path, fresh: bool, threshold: float, round_: int
) -> RunResult:
    """One Lightning run (this file as ``--lightning-worker``) in its own store."""
    store, run_dir = folder / "store", folder / "run"
    run_dir.mkdir(parents=True)
    uri = prepare_store(store, fresh)
    run_spec = spec | {
        "tracking_uri": uri,
        "artifact_location": (store / "artifacts").as_uri(),
        "run_dir": str(run_dir),
        "threads": 2,
    }
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(run_spec, indent=2))
    command = [sys.executable, str(Path(__file__).resolve()), "--lightning-worker", str(spec_path)]
    log = folder / "lightning.log"
    proc = run_process(command, run_dir, child_environment(), log)
    start = proc["start"]
    record = store_record(store, uri)
    to_hit, hit_epoch, best, best_epoch = val_summary(record, start, threshold)
    line = next(x for x in log.read_text().splitlines() if x.startswith(TIMINGS_PREFIX))
    t = json.loads(line[len(TIMINGS_PREFIX) :])
    timeline = {
        "imports start": t["imports_start"] - start,
        "lightning+torch imported": t["imports_done"] - start,
        "fit start": t["fit_start"] - start,
        "train start (after sanity check)": t["train_start"] - start,
        "fit end": t["fit_end"] - start,
    } | mlflow_timeline(record, start)
    saves, logs = t.get("checkpoint_save_s", []), t.get("checkpoint_log_s", [])
    extra = {
        "train epochs sum": sum(t.get("train_epoch_s", [])),
        "validations sum": sum(t.get("val_s", [])),
        "sanity check": sum(t.get("sanity_check_s", [])),
        "checkpoint saves sum (torch.save + MLflow)": sum(saves),
        "of which MLflow checkpoint logging": sum(logs),
        "MLflow log_metrics sum": t.get("log_metrics_s", 0.0),
        "MLflow log_metrics calls": t.get("log_metrics_calls", 0),
    }
    return RunResult("Lightning", round_, proc, to_hit, hit_epoch, best, best_epoch, record, timeline, extra)


def seconds(value: float | None) -> str:
    """``12.3 s``, or ``never``."""
    return "never" if value is None else f"{value:.1f} s"


def number(value: float | None) -> str:
    """A summary cell: ``never``, a whole number, a fraction to 4 places or a value to 1 place."""
    if value is None:
        return "never"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.1f}"


def print_run(r: RunResult, threshold: float) -> None:
    """The run's figures, its MLflow record and its timeline."""
    rec = r.record
    hit = f"{seconds(r.to_threshold_s)}" + (f" (epoch {r.threshold_epoch})" if r.threshold_epoch else "")
    print(
        f"[round {r.round}] {r.side:<9} wall {r.process['wall']:6.1f} s | "
        f"val top-1 >= {threshold:g} at {hit} | "
        f"best top-1 {r.best_top1:.4f} (epoch {r.best_epoch}) | CPU {r.process['cpu']:.0f} s | "
        f"other processes' CPU meanwhile {seconds(r.process['other_cpu']).replace('never', 'unknown')}",
        flush=True,
    )
    print(
        f"    mlflow: {rec['runs']} run(s), {rec['metric_keys']} metric keys "
        f"({rec['metric_points']} points), "
        f"{rec['params']} params, {rec['tags']} tags, {rec['run_artifact_files']} run artifact files, "
        f"{rec['logged_models']} logged models, {rec['checkpoint_files']} checkpoint files in the store "
        f"({rec['artifact_files']} artifact files, {rec['artifact_mb']:.1f} MB), "
        f"{rec['model_versions']} registered model versions"
    )
    marks = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.timeline.items(), key=lambda kv: kv[1]))
    print(f"    timeline (s from process start): {marks}")
    if r.extra:
        print("    " + extras_text(r.extra))


def extras_text(extra: dict[str, float]) -> str:
    """``key value`` pairs: seconds to 2 places, counts as whole numbers."""
    return ", ".join(f"{k} {v:.0f}" if k.endswith("calls") else f"{k} {v:.2f}" for k, v in extra.items())


def median_or_none(values: list[float | None]) -> float | None:
    """The median, or None when any run never got there."""
    return None if not values or any(v is None for v in values) else statistics.median(values)


def print_summary(results: list[RunResult], threshold: float) -> None:
    """Medians per side and the ratios Lightning / vit-exp."""
    sides = ("vit-exp", "Lightning")
    by = {s: [r for r in results if r.side == s] for s in sides}
    rows = [
        ("wall time, process start to end (s)", lambda r: r.process["wall"], True),
        (f"time to val top-1 >= {threshold:g} (s)", lambda r: r.to_threshold_s, True),
        (f"epoch reaching val top-1 >= {threshold:g}", lambda r: r.threshold_epoch, False),
        ("best val top-1", lambda r: r.best_top1, False),
        ("CPU time, all threads (s)", lambda r: r.process["cpu"], True),
        ("other processes' CPU during the run (s)", lambda r: r.process["other_cpu"], False),
        ("first train/loss point (s)", lambda r: r.timeline.get("first train/loss"), True),
        ("runs", lambda r: r.record["runs"], False),
        ("metric keys", lambda r: r.record["metric_keys"], False),
        ("metric points", lambda r: r.record["metric_points"], False),
        ("params", lambda r: r.record["params"], False),
        ("run tags", lambda r: r.record["tags"], False),
        ("run artifact files", lambda r: r.record["run_artifact_files"], False),
        ("logged models", lambda r: r.record["logged_models"], False),
        ("checkpoint files in the store", lambda r: r.record["checkpoint_files"], False),
        ("artifact MB in the store", lambda r: r.record["artifact_mb"], False),
        ("registered model versions", lambda r: r.record["model_versions"], False),
    ]
    print(f"\nsummary: medians of {len(by['vit-exp'])} run(s) per side")
    print(f"  {'':<40} {'vit-exp':>10} {'Lightning':>10} {'Lightning / vit-exp':>20}")
    for label, get, ratio in rows:
        med = {s: median_or_none([get(r) for r in by[s]]) for s in sides}
        cells = [number(med[s]) for s in sides]
        quotient = ""
        if ratio and None not in med.values() and med["vit-exp"]:
            quotient = f"{med['Lightning'] / med['vit-exp']:.2f}x"
        print(f"  {label:<40} {cells[0]:>10} {cells[1]:>10} {quotient:>20}")
    for side in sides:
        keys = list(dict.fromkeys(k for r in by[side] for k in r.extra))
        if keys:
            medians = {k: statistics.median(r.extra.get(k, 0) for r in by[side]) for k in keys}
            print(f"  {side} (medians, s): " + extras_text(medians))
        marks = list(dict.fromkeys(k for r in by[side] for k in r.timeline))
        medians = {k: statistics.median(r.timeline[k] for r in by[side] if k in r.timeline) for k in marks}
        timeline = ", ".join(f"{k} {v:.1f}" for k, v in sorted(medians.items(), key=lambda kv: kv[1]))
        print(f"  {side} timeline (median s from process start): {timeline}")


def git_commit(root: Path) -> str:
    """The short commit of ``root``'s checkout, if it is one."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True)
        return out.stdout.decode().strip() or "unknown (not a git checkout)"
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: the default run's trainer.epochs")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds (vit-exp, then Lightning)")
    parser.add_argument("--threshold", type=float, default=0.98, help="the val top-1 to time")
    parser.add_argument("--vit-exp-root", type=Path, default=BENCH_DIR.parent, help="checkout to run")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new folder under /tmp")
    parser.add_argument("--keep", action="store_true", help="keep the stores, logs and checkpoints")
    parser.add_argument(
        "--torch-workers",
        type=int,
        default=0,
        help="Lightning's DataLoader workers (0: decode in the training process; see the docstring)",
    )
    parser.add_argument(
        "--fresh-stores", action="store_true", help="time the MLflow schema creation too (new stores)"
    )
    parser.add_argument("--lightning-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lightning_worker is not None:
        lightning_worker(args.lightning_worker)
        return

    root = args.vit_exp_root.resolve()
    sys.path.insert(0, str(root))  # vit_exp and conf/ of the checkout that runs
    work = Path(tempfile.mkdtemp(prefix="lightning_reference-", dir=args.workdir))
    cache = work / "cache"  # shared by all runs: the digits folder is written once, before timing
    cfg = compose_default_run(root, cache)
    default_epochs = int(cfg.trainer.epochs)
    epochs = args.epochs or default_epochs
    spec = lightning_spec(cfg, epochs) | {"loader_workers": args.torch_workers}

    import lightning
    import mindspore
    import mlflow
    import torch

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines when it makes a store

    print(
        f"vit-exp {root} (commit {git_commit(root)}) | mindspore {mindspore.__version__}, "
        f"torch {torch.__version__}, lightning {lightning.__version__}, mlflow {mlflow.__version__} | "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"default run: model={cfg.model.name} data={cfg.data.name} epochs {epochs} (default "
        f"{default_epochs}), batch {spec['batch_size']}, optim {json.dumps(spec['optim'])}, "
        f"sched {json.dumps(spec['sched'])}, label smoothing {spec['label_smoothing']}, "
        f"{spec['num_classes']} classes | Lightning: torch threads 2, DataLoader workers "
        f"{args.torch_workers} | rounds {args.rounds} (A B A B) | work folder {work}",
        flush=True,
    )
    results = []
    try:
        for round_ in range(1, args.rounds + 1):
            folder = work / f"round{round_}-vit-exp"
            folder.mkdir()
            results.append(
                run_vit_exp(
                    root, folder, cache, epochs, default_epochs, args.fresh_stores, args.threshold, round_
                )
            )
            print_run(results[-1], args.threshold)
            lightning_folder = work / f"round{round_}-lightning"
            results.append(run_lightning(spec, lightning_folder, args.fresh_stores, args.threshold, round_))
            print_run(results[-1], args.threshold)
        print_summary(results, args.threshold)
        print("\ndifferences in setup that could not (or need not) be matched:")
        for line in DIFFERENCES:
            print(f"  - {line}")
    finally:
        if args.keep:
            print(f"\nkept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
