"""Early stopping (``trainer.early_stopping``): end training after an epoch once ``optimized_metric`` has
not improved by more than ``min_delta`` for ``patience`` validated epochs.

It reads only the run's history (the value of the weights each epoch's checkpoint ships), so a resumed
run decides as the uninterrupted one did, and one resumed after its stop does not train on."""

from __future__ import annotations

import logging
import math

from mindspore.train import Callback

from vit_exp.train.callbacks import TrainHistory
from vit_exp.train.objective import epoch_score, is_better, shipped_weights

log = logging.getLogger("vit_exp.train")

WEIGHTS_NOTE = {"ema": " (of the EMA weights)", "better": " (of the better of raw and EMA weights)"}


class EarlyStopping(Callback):
    """Requests the loop's stop after the epoch where ``objective`` (of the weights checkpoints ship,
    ``trainer.ema.weights`` = ``ema_weights``; None: EMA off) last improved ``patience`` validated
    epochs ago; ``reason`` then says why and when (None while training goes on)."""

    def __init__(
        self,
        history: TrainHistory,
        objective: str,
        patience: int,
        min_delta: float = 0.0,
        ema_weights: str | None = None,
        total_steps: int | None = None,
    ):
        super().__init__()
        self.history = history
        self.objective = objective
        self.patience = patience
        self.min_delta = min_delta
        self.ema_weights = ema_weights
        self.total_steps = total_steps  # the plan's: a stop there is no early stop
        self.reason: str | None = None

    def _score(self, record) -> float:
        weights = shipped_weights(self.ema_weights, self.objective, record)
        return epoch_score(self.objective, record, weights)

    def verdict(self) -> str | None:
        """Why training stops after the history's last epoch, or None when it goes on."""
        best, best_epoch, since = math.nan, 0, 0
        for record in self.history.epochs:
            if not record.val and self.objective != "train/epoch_loss":
                continue  # not validated: not counted
            score = self._score(record)
            if best_epoch == 0 or is_better(self.objective, score, best, self.min_delta):
                best, best_epoch, since = score, record.epoch, 0
            else:
                since += 1
        last = self.history.last_epoch
        if last is None or since < self.patience:
            return None
        if self.total_steps is not None and self.history.global_step >= self.total_steps:
            return None  # the planned end anyway
        note = WEIGHTS_NOTE.get(self.ema_weights or "", "")
        return (
            f"epoch {last.epoch}: {self.objective}{note} did not improve by more than {self.min_delta:g} "
            f"for {since} validated epoch(s) (best {best:.4f} at epoch {best_epoch})"
        )

    def _stop_if_due(self, run_context) -> None:
        if self.reason is None and (reason := self.verdict()) is not None:
            self.reason = reason
            log.info("early stopping: %s", reason)
            run_context.request_stop()

    def on_train_begin(self, run_context) -> None:
        self._stop_if_due(run_context)  # a run resumed after its stop: nothing more to train

    def on_train_epoch_end(self, run_context) -> None:
        self._stop_if_due(run_context)
