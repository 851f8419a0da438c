"""A MindSpore ``Callback`` that sends training metrics to MLflow and registers checkpoints.

Per step (MLflow step = global optimizer step): ``train/loss``, ``train/lr``,
``train/step_time_ms``, ``train/throughput_img_s``. Per epoch: ``train/epoch_time_s``,
``train/epoch_loss`` and, when validation ran, ``val/loss``, ``val/top1``, ``val/top5``.
Metrics are buffered and sent with MLflow's asynchronous ``log_batch``, so a step costs an append.
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

    Step metrics are logged every ``every_n_steps`` steps and sent in asynchronous batches of
    about ``flush_every`` steps.
    """

    def __init__(
        self,
        run_id: str,
        history,
        checkpoints=None,
        on_checkpoint: Callable | None = None,
        flush_every: int = 50,
        every_n_steps: int = 1,
    ):
        super().__init__()
        from mlflow import MlflowClient

        self.client = MlflowClient()
        self.run_id = run_id
        self.history = history
        self.checkpoints = checkpoints
        self.on_checkpoint = on_checkpoint
        self.flush_every = max(1, flush_every)
        self.every_n_steps = max(1, every_n_steps)
        self._buffer: list = []
        self._warned = False
        self._handled_checkpoints = 0
        self._pending: list = []

    # -- metric plumbing ---------------------------------------------------------------------
    def _add(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self._buffer.append(Metric(key, float(value), int(time.time() * 1000), step))

    def flush(self, synchronous: bool = False) -> None:
        """Send buffered metrics (asynchronously unless ``synchronous``)."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            for start in range(0, len(batch), 1000):
                op = self.client.log_batch(
                    self.run_id, metrics=batch[start : start + 1000], synchronous=synchronous
                )
                if op is not None:
                    self._pending.append(op)
        except Exception as exc:
            self._warn(exc)

    def wait(self) -> None:
        """Block until every asynchronous batch is stored (warns once on failure)."""
        self.flush(synchronous=False)
        pending, self._pending = self._pending, []
        for op in pending:
            try:
                op.wait()
            except Exception as exc:
                self._warn(exc)

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
        if step % self.every_n_steps:
            return
        self._add("train/loss", h.last_loss, step)
        self._add("train/lr", h.lr, step)
        self._add("train/step_time_ms", h.last_step_ms, step)
        self._add("train/throughput_img_s", h.throughput, step)
        if len(self._buffer) >= 4 * self.flush_every:
            self.flush()

    def on_train_epoch_end(self, run_context) -> None:
        record = self.history.epochs[-1] if self.history.epochs else None
        if record is None:
            return
        self._add("train/epoch_time_s", record.seconds, record.step)
        self._add("train/epoch_loss", record.train_loss, record.step)
        self._add("epoch", record.epoch, record.step)
        for key, value in record.val.items():
            self._add(f"val/{key}", value, record.step)
        self.flush()
        self._handle_new_checkpoints(final=False)

    def on_train_end(self, run_context) -> None:
        self._handle_new_checkpoints(final=True)
        self.wait()

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
