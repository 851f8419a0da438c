"""A MindSpore ``Callback`` that sends a run's training metrics to MLflow (step = global optimizer step).

``train/loss`` every ``every_n_steps`` steps; ``train/lr``, ``train/step_time_ms`` and
``train/throughput_img_s`` every ``details_every_n_steps`` steps and at each epoch's end (the last
two as means since their previous point); per epoch ``train/epoch_time_s``, ``train/epoch_loss``,
``epoch`` and, when validation ran, ``val/loss``, ``val/top1``, ``val/top5``.
Points are buffered and sent in large batches between steps, the cheapest per point (bench/RESULTS.md):
synchronously to a local store (a writer thread slows the step as much), asynchronously to a server.
A failure to log is warned about once and never stops training.
"""

from __future__ import annotations

import logging
import time

from mindspore.train import Callback

log = logging.getLogger("vit_exp.tracking")


class MlflowMetricLogger(Callback):
    """Logs ``history`` (a TrainHistory) to the run ``run_id``.

    Buffered points are sent every ``flush_interval_s`` seconds or ``max_buffered`` points
    (whichever comes first), at the end of training, and by ``close()``.
    """

    def __init__(
        self,
        run_id: str,
        history,
        every_n_steps: int = 1,
        details_every_n_steps: int = 10,
        flush_interval_s: float = 10.0,
        max_buffered: int = 1000,
    ):
        super().__init__()
        from urllib.parse import urlparse

        import mlflow

        self.client = mlflow.MlflowClient()
        self.asynchronous = urlparse(mlflow.get_tracking_uri()).scheme in ("http", "https", "databricks")
        self.run_id = run_id
        self.history = history
        self.every_n_steps = every_n_steps
        self.details_every_n_steps = details_every_n_steps
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self._window_ms = 0.0  # step time since the last train/step_time_ms point
        self._window_steps = 0
        self._buffer: list = []
        self._pending: list = []
        self._last_flush = time.monotonic()
        self._warned = False

    def _add(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self._buffer.append(Metric(key, float(value), int(time.time() * 1000), step))

    def flush(self) -> None:
        """Send every buffered point now (in batches of at most 1000, MLflow's limit)."""
        self._last_flush = time.monotonic()
        while self._buffer:
            # A batch leaves the buffer only once sent (or warned about): when Ctrl-C interrupts a
            # send, close() sends it again (MLflow skips points it already stored).
            chunk = self._buffer[:1000]
            try:
                sent = self.client.log_batch(self.run_id, metrics=chunk, synchronous=not self.asynchronous)
                if sent is not None:
                    self._pending.append(sent)
            except Exception as exc:
                self._warn(exc)
            del self._buffer[: len(chunk)]

    def close(self) -> None:
        """Send what is buffered and wait until every send is stored."""
        self.flush()
        pending, self._pending = self._pending, []
        for sent in pending:
            try:
                sent.wait()
            except Exception as exc:
                self._warn(exc)

    def _flush_if_due(self) -> None:
        overdue = time.monotonic() - self._last_flush >= self.flush_interval_s
        if overdue or len(self._buffer) >= self.max_buffered:
            self.flush()

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "mlflow: metrics could not be logged (%s: %s); training continues", type(exc).__name__, exc
            )

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
        self._flush_if_due()

    def on_train_end(self, run_context) -> None:
        self.close()
