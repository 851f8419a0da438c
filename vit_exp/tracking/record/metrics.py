"""A MindSpore ``Callback`` that logs a run's training metrics to MLflow (step = global optimizer step).

``train/loss`` every ``every_n_steps``; ``train/lr``, ``train/step_time_ms``, ``train/throughput_img_s``
every ``details_every_n_steps`` and at epoch ends; ``train/epoch_*``, ``epoch``, ``val/*`` and (EMA on)
``val_ema/*`` per epoch."""

from __future__ import annotations

import time
from collections.abc import Callable

from mindspore.train import Callback

from vit_exp.tracking.record.records import MetricsRecord
from vit_exp.train.callbacks import CheckpointListener


class MlflowMetricLogger(Callback, CheckpointListener):
    """Logs ``history`` (a TrainHistory) via ``put`` (the run's outbox), flushed every ``flush_interval_s``
    seconds or ``max_buffered`` points, at the end, and before each checkpoint (so a resume loses none)."""

    def __init__(
        self,
        put: Callable[[MetricsRecord], None],
        history,
        every_n_steps: int = 1,
        details_every_n_steps: int = 10,
        flush_interval_s: float = 10.0,
        max_buffered: int = 1000,
        logged_steps: dict[str, int] | None = None,
        objective: str = "val/top1",
    ):
        super().__init__()
        self.put = put
        self.history = history
        self.every_n_steps = every_n_steps
        self.details_every_n_steps = details_every_n_steps
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self._window_ms = 0.0  # step time since the last train/step_time_ms point
        self._window_steps = 0
        self._buffer: list[list] = []
        self._last_flush = time.monotonic()
        self.objective = objective  # the optimized_metric that picks the best epoch (best/*)
        self.logged_steps = logged_steps or {}  # a resumed run's: points up to these steps are in the run

    def checkpoint_state(self) -> dict:
        """The open details window, for a resumed attempt to close (even if only the epoch end is left)."""
        return {"metric_window": {"window_ms": self._window_ms, "window_steps": self._window_steps}}

    def load_state_dict(self, state: dict) -> None:
        self._window_ms, self._window_steps = float(state["window_ms"]), int(state["window_steps"])

    def _add(self, key: str, value: float, step: int) -> None:
        if step <= self.logged_steps.get(key, -1):  # logged by the attempt before a resume: one point a step
            return
        self._buffer.append([key, float(value), int(time.time() * 1000), int(step)])

    def before_checkpoint(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Hand every buffered point over now (in records of at most 1000, MLflow's batch limit)."""
        self._last_flush = time.monotonic()
        while self._buffer:
            # Points leave the buffer only once the record holding them is in the outbox.
            chunk = self._buffer[:1000]
            self.put(MetricsRecord(chunk))
            del self._buffer[: len(chunk)]

    def _flush_if_due(self) -> None:
        overdue = time.monotonic() - self._last_flush >= self.flush_interval_s
        if overdue or len(self._buffer) >= self.max_buffered:
            self.flush()

    def on_train_step_end(self, run_context) -> None:
        h = self.history
        step = h.global_step
        self._window_ms += h.last_step_ms
        self._window_steps += 1
        if step % self.every_n_steps == 0:
            self._add("train/loss", h.last_loss, step)
        if step % self.details_every_n_steps == 0:
            self._add_details(step)
        self._flush_if_due()

    def _add_details(self, step: int) -> None:
        """LR at ``step``; step time and throughput over the steps since the previous point."""
        if not self._window_steps:
            return
        mean_ms = self._window_ms / self._window_steps
        self._add("train/lr", self.history.lr, step)
        self._add("train/step_time_ms", mean_ms, step)
        throughput = self.history.batch_size * 1000.0 / mean_ms if mean_ms > 0 else float("nan")
        self._add("train/throughput_img_s", throughput, step)
        self._window_ms, self._window_steps = 0.0, 0

    def on_train_epoch_end(self, run_context) -> None:
        record = self.history.last_epoch
        self._add_details(record.step)  # the epoch's last steps, when not just logged
        self._add("train/epoch_time_s", record.seconds, record.step)
        self._add("train/epoch_loss", record.train_loss, record.step)
        self._add("epoch", record.epoch, record.step)
        for key, value in record.val.items():
            self._add(f"val/{key}", value, record.step)
        for key, value in record.val_ema.items():  # trainer.ema on
            self._add(f"val_ema/{key}", value, record.step)
        self._flush_if_due()

    def on_train_end(self, run_context) -> None:
        self._add_best()
        self.flush()

    def _add_best(self) -> None:
        """``best/val_top1``, ``best/val_top5``, ``best/val_loss`` and ``best/epoch`` of the epoch best by
        ``objective`` (a run page shows each metric's last value: the best epoch gets keys of its own)."""
        from vit_exp.train.objective import best_value, epoch_values

        scored = [(e, epoch_values(self.objective, [e])) for e in self.history.epochs]
        best = best_value(self.objective, [values[0] for _, values in scored if values])
        record = next((e for e, values in scored if values and values[0] == best), None)
        if record is None:
            return
        step = self.history.global_step
        for key, value in record.val.items():
            self._add(f"best/val_{key}", value, step)
        self._add("best/epoch", record.epoch, step)
