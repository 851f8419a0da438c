"""A MindSpore ``Callback`` that sends training metrics to MLflow and registers checkpoints.

MLflow step = global optimizer step. ``train/loss`` every ``every_n_steps`` steps (default 1);
``train/lr``, ``train/step_time_ms`` and ``train/throughput_img_s`` every ``details_every_n_steps``
steps (default 10) and at the last step of each epoch, the last two as means over the steps since
the previous point. Per epoch: ``train/epoch_time_s``, ``train/epoch_loss`` and, when validation
ran, ``val/loss``, ``val/top1``, ``val/top5``.
Storing a point costs ~70 us of SQLAlchemy work in MLflow's SQL store, wherever it runs (a writer
thread or process at idle priority slowed MindSpore's step as much, see bench/RESULTS.md): four
points every step were 1.1-1.5 % of a 20-28 ms vit_tiny step, the default 1.3 points per step ~0.6 %.
Metrics are buffered (a step costs an append) and sent with ``log_batch`` between two steps, at
most every ``flush_interval_s`` seconds or ``max_buffered`` points, and at the end; large batches
cost a third as much per point as small ones (SQLite store: ~70 us against ~190 us per point).
To a local store (SQLite, files) the sends are synchronous: the work is Python (SQLAlchemy) in this
process either way, and on MLflow's asynchronous queue it runs in a thread that competes with
MindSpore's step for the GIL and the cores (a busy Python thread made a 25 ms vit_tiny step 4x
slower; for these bursts the two modes measured the same within noise), so it is kept on the main
thread where its cost is bounded and measured. To a tracking server the sends are asynchronous:
that thread mostly waits on the network.
A failure to log is warned about once and never stops training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mindspore.train import Callback

from vit_exp.errors import first_line

log = logging.getLogger("vit_exp.tracking")


class MlflowLogger(Callback):
    """Logs ``history`` (a TrainHistory) to the run ``run_id``; calls ``on_checkpoint`` for new checkpoints.

    Loss is logged every ``every_n_steps`` steps, LR and speed every ``details_every_n_steps``
    steps and at each epoch's end (see the module docstring); buffered points are sent every
    ``flush_interval_s`` seconds or ``max_buffered`` points (whichever comes first) and by
    ``close()``, which the training end calls.
    """

    def __init__(
        self,
        run_id: str,
        history,
        checkpoints=None,
        on_checkpoint: Callable | None = None,
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
        self.checkpoints = checkpoints
        self.on_checkpoint = on_checkpoint
        self.every_n_steps = max(1, every_n_steps)
        self.details_every_n_steps = max(1, details_every_n_steps)
        self._window_ms = 0.0  # step time since the last train/step_time_ms point
        self._window_steps = 0
        self._window_end = 0  # global step of the last on_train_step_end
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max(1, max_buffered)
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._warned = False
        self._handled_checkpoints = 0
        self._pending: list = []

    # -- metric plumbing ---------------------------------------------------------------------
    def _add(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self._buffer.append(Metric(key, float(value), int(time.time() * 1000), step))

    def flush(self) -> None:
        """Send every buffered metric now (in batches of at most 1000, MLflow's limit)."""
        self._last_flush = time.monotonic()
        while self._buffer:
            # A batch leaves the buffer only once sent (or failed and warned about): when Ctrl-C
            # interrupts a send, the run's clean-up sends it again (MLflow skips stored points).
            chunk = self._buffer[:1000]
            try:
                sent = self.client.log_batch(self.run_id, metrics=chunk, synchronous=not self.asynchronous)
                if sent is not None:
                    self._pending.append(sent)
            except Exception as exc:
                self._warn(exc)
            del self._buffer[: len(chunk)]

    def close(self) -> None:
        """Send what is buffered and wait until every send is stored (warns once on failure)."""
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

    # -- MindSpore hooks -------------------------------------------------------------------------
    def on_train_begin(self, run_context) -> None:
        if run_context.original_args().get("dataset_sink_mode", False):
            log.info("mlflow: dataset sink mode is on, so train/* step metrics are logged once per sink")

    def on_train_step_end(self, run_context) -> None:
        h = self.history
        step = h.global_step
        done = max(1, step - self._window_end)  # > 1 once per sink in dataset sink mode
        self._window_ms += h.last_step_ms * done
        self._window_steps += done
        self._window_end = step
        if step // self.every_n_steps != (step - done) // self.every_n_steps:
            self._add("train/loss", h.last_loss, step)
        if step // self.details_every_n_steps != (step - done) // self.details_every_n_steps:
            self._add_details(step)
        self._flush_if_due()

    def _add_details(self, step: int) -> None:
        """LR at ``step``; step time and throughput over the steps since the previous point."""
        h = self.history
        if not self._window_steps:
            return
        mean_ms = self._window_ms / self._window_steps
        self._add("train/lr", h.lr, step)
        self._add("train/step_time_ms", mean_ms, step)
        self._add(
            "train/throughput_img_s", h.batch_size * 1000.0 / mean_ms if mean_ms > 0 else float("nan"), step
        )
        self._window_ms, self._window_steps = 0.0, 0

    def on_train_epoch_end(self, run_context) -> None:
        record = self.history.epochs[-1] if self.history.epochs else None
        if record is None:
            return
        self._add_details(record.step)  # the epoch's last steps, when not just logged
        self._add("train/epoch_time_s", record.seconds, record.step)
        self._add("train/epoch_loss", record.train_loss, record.step)
        self._add("epoch", record.epoch, record.step)
        for key, value in record.val.items():
            self._add(f"val/{key}", value, record.step)
        self._flush_if_due()
        self._handle_new_checkpoints(final=False)

    def on_train_end(self, run_context) -> None:
        self.close()
        self._handle_new_checkpoints(final=True)

    def _handle_new_checkpoints(self, final: bool) -> None:
        if self.checkpoints is None or self.on_checkpoint is None:
            return
        saved = self.checkpoints.saved_all
        todo = [(path, record, False) for path, record in saved[self._handled_checkpoints :]]
        self._handled_checkpoints = len(saved)
        if final and saved:
            todo.append((saved[-1][0], saved[-1][1], True))
        for path, record, is_final in todo:
            try:
                self.on_checkpoint(path, record, final=is_final)
            except Exception as exc:  # the checkpoint stays on disk; training goes on
                log.warning(
                    "mlflow: could not register %s (%s: %s); the checkpoint file is kept",
                    path,
                    type(exc).__name__,
                    first_line(str(exc)),
                )
