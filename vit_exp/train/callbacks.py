"""MindSpore callbacks of the training loop: the history of a run, console progress, checkpoint files.

``TrainHistory`` is the one place that reads loss, timings and validation results out of
MindSpore's ``cb_params``; the other callbacks (the MLflow ones too) read from it, so it runs first.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mindspore.train import Callback

log = logging.getLogger("vit_exp.train")


@dataclass
class EpochRecord:
    """Results of one epoch: mean train loss, wall time, and validation metrics when it ran."""

    epoch: int
    step: int
    train_loss: float
    seconds: float
    images_per_s: float
    val: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint file and the epoch it holds the weights of."""

    path: Path
    record: EpochRecord


class TrainHistory(Callback):
    """Records per-step loss and timing and per-epoch results.

    ``lr_values`` is the per-step learning rate (index = global step - 1).
    """

    def __init__(self, batch_size: int, lr_values: np.ndarray):
        super().__init__()
        self.batch_size = batch_size
        self.lr_values = np.asarray(lr_values)
        self.global_step = 0
        self.last_loss = math.nan
        self.last_step_ms = math.nan
        self.epochs: list[EpochRecord] = []
        self.train_seconds = 0.0
        self._step_start = 0.0
        self._epoch_start = 0.0
        self._epoch_losses: list[float] = []
        self._epoch_step_seconds = 0.0
        self._train_start = 0.0

    @property
    def lr(self) -> float:
        """LR used by the last optimizer step."""
        if self.global_step == 0 or not len(self.lr_values):
            return math.nan
        return float(self.lr_values[min(self.global_step, len(self.lr_values)) - 1])

    @property
    def throughput(self) -> float:
        """Images per second of the last step."""
        return self.batch_size * 1000.0 / self.last_step_ms if self.last_step_ms > 0 else math.nan

    @property
    def last_epoch(self) -> EpochRecord | None:
        return self.epochs[-1] if self.epochs else None

    def best(self, metric: str = "top1") -> EpochRecord | None:
        """The epoch with the highest validation ``metric`` (None when validation never ran)."""
        scored = [e for e in self.epochs if metric in e.val]
        return max(scored, key=lambda e: e.val[metric]) if scored else None

    def on_train_begin(self, run_context) -> None:
        self._train_start = time.perf_counter()

    def on_train_epoch_begin(self, run_context) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_losses = []
        self._epoch_step_seconds = 0.0

    def on_train_step_begin(self, run_context) -> None:
        self._step_start = time.perf_counter()

    def on_train_step_end(self, run_context) -> None:
        cb = run_context.original_args()
        elapsed = time.perf_counter() - self._step_start
        loss = cb.net_outputs
        loss = loss[0] if isinstance(loss, (tuple, list)) else loss
        self.last_loss = float(loss.asnumpy()) if hasattr(loss, "asnumpy") else float(loss)
        self.last_step_ms = elapsed * 1000.0
        self.global_step = int(cb.cur_step_num)
        self._epoch_step_seconds += elapsed
        self._epoch_losses.append(self.last_loss)

    def on_train_epoch_end(self, run_context) -> None:
        cb = run_context.original_args()
        results = dict(cb.get("eval_results") or {})
        val = {key: float(value) for key, value in results.items() if key != "eval_loss"}
        if results:
            val["loss"] = float(results.get("eval_loss", math.nan))
        images = len(self._epoch_losses) * self.batch_size
        self.epochs.append(
            EpochRecord(
                epoch=int(cb.cur_epoch_num),
                step=self.global_step,
                train_loss=float(np.mean(self._epoch_losses)) if self._epoch_losses else math.nan,
                seconds=time.perf_counter() - self._epoch_start,
                images_per_s=images / self._epoch_step_seconds if self._epoch_step_seconds else math.nan,
                val=val,
            )
        )

    def on_train_end(self, run_context) -> None:
        self.train_seconds = time.perf_counter() - self._train_start


class ConsoleProgress(Callback):
    """Logs the plan, a line every ``every_n_steps`` steps, and one per epoch with its validation."""

    def __init__(self, history: TrainHistory, plan, every_n_steps: int):
        super().__init__()
        self.history = history
        self.plan = plan
        self.every = every_n_steps

    def on_train_begin(self, run_context) -> None:
        plan = self.plan
        log.info(
            "training %d epoch(s) x %d steps (batch %d) = %d steps",
            plan.epochs,
            plan.steps_per_epoch,
            self.history.batch_size,
            plan.total_steps,
        )

    def on_train_step_end(self, run_context) -> None:
        h, steps = self.history, self.plan.steps_per_epoch
        step_in_epoch = (h.global_step - 1) % steps + 1
        if step_in_epoch % self.every == 0 or step_in_epoch == steps:
            log.info(
                "epoch %d/%d step %d/%d  loss %.4f  lr %.3e  %.0f img/s",
                run_context.original_args().cur_epoch_num,
                self.plan.epochs,
                step_in_epoch,
                steps,
                h.last_loss,
                h.lr,
                h.throughput,
            )

    def on_train_epoch_end(self, run_context) -> None:
        record = self.history.last_epoch
        line = (
            f"epoch {record.epoch}/{self.plan.epochs} done in {record.seconds:.1f}s  "
            f"train loss {record.train_loss:.4f}  {record.images_per_s:.0f} img/s"
        )
        if record.val:
            line += (
                f"  | val loss {record.val.get('loss', math.nan):.4f}  "
                f"top1 {record.val.get('top1', math.nan):.4f}  top5 {record.val.get('top5', math.nan):.4f}"
            )
        log.info(line)


class CheckpointSaver(Callback):
    """Saves the network's parameters every ``every_n_epochs`` epochs and after the last, keeping ``keep``.

    Files are ``<directory>/<prefix>-e<epoch>-s<step>.ckpt``. ``written`` lists every checkpoint in
    order; ``on_disk`` those not yet pruned.
    """

    def __init__(self, net, directory: str | Path, prefix: str, every_n_epochs: int, keep: int, history):
        super().__init__()
        self.net = net
        self.directory = Path(directory)
        self.prefix = prefix
        self.every = every_n_epochs
        self.keep = keep
        self.history = history
        self.written: list[SavedCheckpoint] = []
        self.on_disk: list[SavedCheckpoint] = []

    def _save(self, record: EpochRecord) -> None:
        import mindspore as ms

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.prefix}-e{record.epoch:03d}-s{record.step:06d}.ckpt"
        ms.save_checkpoint(self.net, str(path))
        saved = SavedCheckpoint(path, record)
        self.written.append(saved)
        self.on_disk.append(saved)
        while len(self.on_disk) > self.keep:
            self.on_disk.pop(0).path.unlink(missing_ok=True)

    def on_train_epoch_end(self, run_context) -> None:
        record = self.history.last_epoch
        if record.epoch % self.every == 0:
            self._save(record)

    def on_train_end(self, run_context) -> None:
        record = self.history.last_epoch
        if record is not None and not (self.written and self.written[-1].record is record):
            self._save(record)
