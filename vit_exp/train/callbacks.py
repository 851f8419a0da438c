"""MindSpore callbacks for the fit loop: progress display, step limit and per-epoch checkpoints.

``TrainHistory`` is the one place that reads loss, timings and validation results out of
MindSpore's ``cb_params``; the other callbacks (and the MLflow callback) read from it.
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


class TrainHistory(Callback):
    """Records per-step loss/LR/timing and per-epoch results; other callbacks read from it.

    ``lr_values`` is the optimizer's per-step LR array (index = global step - 1).
    """

    def __init__(self, batch_size: int, lr_values: np.ndarray):
        super().__init__()
        self.batch_size = batch_size
        self.lr_values = np.asarray(lr_values)
        self.global_step = 0
        self.last_loss = math.nan
        self.last_step_ms = math.nan
        self.epochs: list[EpochRecord] = []
        self.stopped_early = False
        self._step_start = 0.0
        self._epoch_start = 0.0
        self._epoch_losses: list[float] = []
        self._epoch_step_seconds = 0.0
        self._epoch_steps = 0
        self._train_start = 0.0
        self.train_seconds = 0.0

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

    def on_train_begin(self, run_context) -> None:
        self._train_start = time.perf_counter()

    def on_train_epoch_begin(self, run_context) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_losses = []
        self._epoch_step_seconds = 0.0
        self._epoch_steps = 0

    def on_train_step_begin(self, run_context) -> None:
        self._step_start = time.perf_counter()

    def on_train_step_end(self, run_context) -> None:
        cb = run_context.original_args()
        loss = cb.net_outputs
        if isinstance(loss, (tuple, list)):
            loss = loss[0]
        self.last_loss = float(loss.asnumpy()) if hasattr(loss, "asnumpy") else float(loss)
        elapsed = time.perf_counter() - self._step_start
        # In dataset sink mode this hook runs once per sink of several steps.
        steps = max(1, int(cb.cur_step_num) - self.global_step)
        self.last_step_ms = elapsed * 1000.0 / steps
        self._epoch_step_seconds += elapsed
        self.global_step = int(cb.cur_step_num)
        self._epoch_losses.append(self.last_loss)
        self._epoch_steps += steps

    def on_train_epoch_end(self, run_context) -> None:
        cb = run_context.original_args()
        seconds = time.perf_counter() - self._epoch_start
        steps = self._epoch_steps
        results = dict(cb.get("eval_results") or {})
        val = {}
        if results:
            val = {key: float(value) for key, value in results.items() if key != "eval_loss"}
            val["loss"] = float(results.get("eval_loss", math.nan))
        images = steps * self.batch_size
        self.epochs.append(
            EpochRecord(
                epoch=int(cb.cur_epoch_num),
                step=self.global_step,
                train_loss=float(np.mean(self._epoch_losses)) if self._epoch_losses else math.nan,
                seconds=seconds,
                images_per_s=images / self._epoch_step_seconds if self._epoch_step_seconds else math.nan,
                val=val,
            )
        )

    def on_train_end(self, run_context) -> None:
        self.train_seconds = time.perf_counter() - self._train_start

    def best(self, metric: str = "top1") -> EpochRecord | None:
        """The epoch with the highest validation ``metric`` (None when validation never ran)."""
        scored = [e for e in self.epochs if metric in e.val]
        return max(scored, key=lambda e: e.val[metric]) if scored else None


class StepLimit(Callback):
    """Stop training after ``max_steps`` optimizer steps (validation still runs for that epoch)."""

    def __init__(self, max_steps: int, history: TrainHistory):
        super().__init__()
        self.max_steps = max_steps
        self.history = history

    def on_train_step_end(self, run_context) -> None:
        if self.history.global_step >= self.max_steps:
            self.history.stopped_early = True
            run_context.request_stop()


class ProgressLogger(Callback):
    """Prints a line every ``every_n_steps`` steps and one per epoch with its validation results."""

    def __init__(self, history: TrainHistory, epochs: int, steps_per_epoch: int, every_n_steps: int):
        super().__init__()
        self.history = history
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.every = max(1, int(every_n_steps))

    def on_train_step_end(self, run_context) -> None:
        h = self.history
        step_in_epoch = (h.global_step - 1) % self.steps_per_epoch + 1
        if step_in_epoch % self.every == 0 or step_in_epoch == self.steps_per_epoch:
            epoch = run_context.original_args().cur_epoch_num
            log.info(
                "epoch %d/%d step %d/%d  loss %.4f  lr %.3e  %.0f img/s",
                epoch,
                self.epochs,
                step_in_epoch,
                self.steps_per_epoch,
                h.last_loss,
                h.lr,
                h.throughput,
            )

    def on_train_epoch_end(self, run_context) -> None:
        if not self.history.epochs:
            return
        record = self.history.epochs[-1]
        line = (
            f"epoch {record.epoch}/{self.epochs} done in {record.seconds:.1f}s  "
            f"train loss {record.train_loss:.4f}  {record.images_per_s:.0f} img/s"
        )
        if record.val:
            line += (
                f"  | val loss {record.val.get('loss', math.nan):.4f}  "
                f"top1 {record.val.get('top1', math.nan):.4f}  top5 {record.val.get('top5', math.nan):.4f}"
            )
        log.info(line)


class EpochCheckpoint(Callback):
    """Saves the network's parameters every ``every_n_epochs`` epochs (and at the end), keeping ``keep``.

    Files are ``<directory>/<prefix>-e<epoch>-s<step>.ckpt``. ``saved`` lists the ``(path, EpochRecord)``
    still on disk; ``saved_all`` every checkpoint written, in order (pruned files included).
    """

    def __init__(
        self, net, directory: str | Path, prefix: str, every_n_epochs: int, keep: int, history: TrainHistory
    ):
        super().__init__()
        self.net = net
        self.directory = Path(directory)
        self.prefix = prefix
        self.every = max(1, int(every_n_epochs))
        self.keep = max(1, int(keep))
        self.history = history
        self.saved: list[tuple[Path, EpochRecord]] = []
        self.saved_all: list[tuple[Path, EpochRecord]] = []

    def _save(self, record: EpochRecord) -> None:
        import mindspore as ms

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.prefix}-e{record.epoch:03d}-s{record.step:06d}.ckpt"
        ms.save_checkpoint(self.net, str(path))
        self.saved.append((path, record))
        self.saved_all.append((path, record))
        while len(self.saved) > self.keep:
            old, _ = self.saved.pop(0)
            old.unlink(missing_ok=True)

    def on_train_epoch_end(self, run_context) -> None:
        record = self.history.epochs[-1] if self.history.epochs else None
        if record is not None and (record.epoch % self.every == 0 or self.history.stopped_early):
            self._save(record)

    def on_train_end(self, run_context) -> None:
        record = self.history.epochs[-1] if self.history.epochs else None
        if record is not None and (not self.saved or self.saved[-1][1] is not record):
            self._save(record)
