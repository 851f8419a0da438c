"""The callback that turns saved checkpoints into model versions, by the ``registry.register`` policy,
through the run's outbox after the metrics logged so far (which the version is tagged with)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mindspore.train import Callback

from vit_exp.tracking.record.records import VersionRecord
from vit_exp.tracking.registry import RegistrySettings
from vit_exp.tracking.registry.versions import version_record
from vit_exp.train.callbacks import CheckpointListener, SavedCheckpoint


class CheckpointRegistration(Callback, CheckpointListener):
    """Queues the checkpoints a CheckpointSaver writes as model versions, each once its files are whole.
    ``every``: each; ``best``: each whose val/top1 beats all queued so far; ``last``: the last, at the
    end. Epoch checkpoints only, unless ``registry.step_checkpoints`` (these are never "best").
    ``hold_in``: where a queued checkpoint is hard linked until its version is stored (safe from pruning)."""

    def __init__(
        self,
        settings: RegistrySettings,
        run_id: str,
        model_inputs: Path,
        put: Callable[[VersionRecord], None],
        flush_metrics: Callable[[], None] = lambda: None,
        data_tags: dict[str, str] | None = None,
        hold_in: Path | None = None,
    ):
        super().__init__()
        self.settings = settings
        self.run_id = run_id
        self.model_inputs = model_inputs
        self.put = put
        self.flush_metrics = flush_metrics
        self.data_tags = dict(data_tags or {})
        self.hold_in = hold_in
        self.queued: list[SavedCheckpoint] = []
        self._last_epoch: SavedCheckpoint | None = None  # the newest epoch checkpoint written

    def improves(self, checkpoint: SavedCheckpoint) -> bool:
        """Whether ``checkpoint``'s val/top1 beats every checkpoint queued so far (or there is none)."""
        score = _top1(checkpoint)
        return score > float("-inf") and all(score > _top1(c) for c in self.queued)

    def wanted(self, checkpoint: SavedCheckpoint) -> bool:
        """Whether the policy makes ``checkpoint`` a version when it is written."""
        if checkpoint.kind != "epoch" and not self.settings.step_checkpoints:
            return False
        policy = self.settings.register
        return policy == "every" or (policy == "best" and self.improves(checkpoint))

    def checkpoint_state(self) -> dict:
        return {"registered": [c.state_dict() for c in self.queued]}

    def load_state_dict(self, state: dict) -> None:
        self.queued = [SavedCheckpoint.from_state(c) for c in state.get("registered", [])]

    def catch_up(self, resumed_from: SavedCheckpoint) -> None:
        """Register the checkpoint a resumed run starts from if the policy wanted it (its attempt may
        have been killed before queueing it; a version made already is found)."""
        if self.wanted(resumed_from):
            self.register(resumed_from)

    def checkpoint_written(self, saved: SavedCheckpoint) -> None:
        """Queue ``saved`` if the policy wants it (a checkpoint written in the background: once whole)."""
        if saved.kind == "epoch":
            self._last_epoch = saved
        if self.wanted(saved):
            self.register(saved)

    def on_train_end(self, run_context) -> None:
        last = self._last_epoch
        if self.settings.register == "last" and last is not None and last not in self.queued:
            self.register(last)

    def register(self, checkpoint: SavedCheckpoint) -> None:
        """Queue ``checkpoint`` as a version of ``settings.name``, after the metrics logged so far."""
        tags = {"epoch": checkpoint.epoch, "global_step": checkpoint.step, "source_run_id": self.run_id}
        tags |= {"checkpoint_kind": checkpoint.kind, **self.data_tags}
        if checkpoint.record is not None:
            val = checkpoint.record.val
            tags |= {f"val/{k}": f"{v:.6g}" for k, v in val.items() if k in ("top1", "top5", "loss")}
        self.flush_metrics()
        self.queued.append(checkpoint)
        self.put(
            version_record(
                checkpoint.path,
                checkpoint.step,
                self.settings.name,
                tags,
                self.model_inputs,
                self.settings.top_k,
                self.hold_in,
            )
        )


def _top1(checkpoint: SavedCheckpoint) -> float:
    return checkpoint.record.val.get("top1", float("-inf")) if checkpoint.record else float("-inf")
