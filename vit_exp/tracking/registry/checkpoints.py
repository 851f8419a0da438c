"""The callback that records each saved checkpoint as a LoggedModel of its run and makes the ones its
rule picks model versions, through the run's outbox after the metrics logged so far."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from mindspore.train import Callback

from vit_exp.tracking.record.records import VersionRecord
from vit_exp.tracking.registry import RegistrationRule, RegistrySettings, registration_rule
from vit_exp.tracking.registry.versions import version_record
from vit_exp.train.callbacks import CheckpointListener, SavedCheckpoint
from vit_exp.train.objective import HIGHER_IS_BETTER

# The data facts a version keeps as tags (the rest of its data identity is in its description).
DATA_TAGS = ("data.name", "data.digest")


class CheckpointRegistration(Callback, CheckpointListener):
    """Queues each epoch checkpoint a CheckpointSaver writes, once its files are whole, as a LoggedModel
    of the run, and as a version of ``settings.name`` when the run's rule wants it: ``every``: each;
    ``best``: each that beats the versions queued so far on the rule's objective; ``last``: the last, at the
    end; ``none``: none. Step checkpoints only with ``registry.step_checkpoints`` (never "best").
    ``hold_in``: where a queued checkpoint is hard linked until its record is stored (safe from pruning)."""

    def __init__(
        self,
        settings: RegistrySettings,
        run_id: str,
        model_inputs: Path,
        put: Callable[[VersionRecord], None],
        flush_metrics: Callable[[], None] = lambda: None,
        data_tags: Mapping[str, str] | None = None,
        hold_in: Path | None = None,
        rule: RegistrationRule | None = None,
    ):
        super().__init__()
        self.settings = settings
        self.run_id = run_id
        self.model_inputs = model_inputs
        self.put = put
        self.flush_metrics = flush_metrics
        self.data_tags = dict(data_tags or {})
        self.hold_in = hold_in
        self.rule = rule or registration_rule(settings.register, smoke_run=False, sweep_job=False)
        self.objective = self.rule.objective
        self.queued: list[SavedCheckpoint] = []  # the checkpoints queued as versions
        self._last_epoch: SavedCheckpoint | None = None  # the newest epoch checkpoint written

    def score(self, checkpoint: SavedCheckpoint) -> float:
        """``objective`` of the weights ``checkpoint`` ships (NaN when its epoch did not measure it)."""
        return checkpoint.score(self.objective)

    def improves(self, checkpoint: SavedCheckpoint) -> bool:
        """Whether ``checkpoint`` beats every version queued so far on ``objective`` (or there is none)."""
        score, sign = self.score(checkpoint), 1.0 if HIGHER_IS_BETTER[self.objective] else -1.0
        return not math.isnan(score) and all(sign * score > sign * self.score(c) for c in self.queued)

    def recorded(self, checkpoint: SavedCheckpoint) -> bool:
        """Whether ``checkpoint`` becomes a LoggedModel (epoch ones; step ones when asked)."""
        return checkpoint.kind == "epoch" or (checkpoint.kind == "step" and self.settings.step_checkpoints)

    def wanted(self, checkpoint: SavedCheckpoint) -> bool:
        """Whether the rule makes ``checkpoint`` a version when it is written."""
        if not self.recorded(checkpoint):
            return False
        policy = self.rule.policy
        return policy == "every" or (
            policy == "best" and checkpoint.kind == "epoch" and self.improves(checkpoint)
        )

    def checkpoint_state(self) -> dict:
        return {"registered": [c.state_dict() for c in self.queued]}

    def load_state_dict(self, state: dict) -> None:
        self.queued = [SavedCheckpoint.from_state(c) for c in state.get("registered", [])]

    def catch_up(self, resumed_from: SavedCheckpoint) -> None:
        """Record the checkpoint a resumed run starts from (its attempt may have been killed before
        queueing it; what was stored already is found), as a version if the rule wanted it."""
        if self.recorded(resumed_from):
            self.record(resumed_from, register=self.wanted(resumed_from))

    def checkpoint_written(self, saved: SavedCheckpoint) -> None:
        """Queue ``saved`` (a checkpoint written in the background: once whole)."""
        if saved.kind == "epoch":
            self._last_epoch = saved
        if self.recorded(saved):
            self.record(saved, register=self.wanted(saved))

    def on_train_end(self, run_context) -> None:
        last = self._last_epoch
        if self.rule.policy == "last" and last is not None and last not in self.queued:
            self.record(last, register=True, model_logged=True)

    def record(self, checkpoint: SavedCheckpoint, register: bool, model_logged: bool = False) -> None:
        """Queue ``checkpoint`` as a LoggedModel (and a version of ``settings.name`` if ``register``),
        after the metrics logged so far; ``model_logged``: its LoggedModel was queued before."""
        self.flush_metrics()
        if register:
            self.queued.append(checkpoint)
        record = version_record(
            checkpoint.path,
            checkpoint.step,
            self.settings.name,
            self.tags(checkpoint),
            self.model_inputs,
            self.settings.top_k,
            self.hold_in,
        )
        self.put(
            replace(
                record,
                register=register,
                model_logged=model_logged,
                objective=self.objective,
                export=tuple(self.settings.export) if register else (),
                description=self.description(checkpoint),
                dataset={
                    k: self.data_tags[k] for k in ("data.name", "data.val_digest") if k in self.data_tags
                },
            )
        )

    def tags(self, checkpoint: SavedCheckpoint) -> dict[str, object]:
        """At most six: the rule, the epoch, the data, and the objective with its tie-breaker (of the
        weights the checkpoint ships); with ``trainer.ema`` on a seventh, ``weights``: raw or ema."""
        tags: dict[str, object] = {
            "registered_by": self.rule.tag(),
            "epoch": checkpoint.epoch,
        }
        tags |= {k: self.data_tags[k] for k in DATA_TAGS if k in self.data_tags}
        if checkpoint.weights != "raw" or (checkpoint.record and checkpoint.record.val_ema):
            tags["weights"] = checkpoint.weights
        val = checkpoint.val
        tie_breaker = "val/top1" if self.objective == "val/loss" else "val/loss"
        for metric in (self.objective, tie_breaker):
            value = (
                self.score(checkpoint) if metric == self.objective else val.get(metric.removeprefix("val/"))
            )
            if value is not None and not math.isnan(value):
                tags[metric] = f"{value:.6g}"
        return tags

    def description(self, checkpoint: SavedCheckpoint) -> str:
        """The version's story in markdown: its checkpoint and run, val metrics, data, the rule. The
        first line is plain text: the registry's versions table shows it raw."""
        record = checkpoint.record
        val = {f"val/{k}": v for k, v in (record.val if record is not None else {}).items()}
        val |= {f"val_ema/{k}": v for k, v in (record.val_ema if record is not None else {}).items()}
        where = f"epoch {checkpoint.epoch}, step {checkpoint.step} of run {self.run_id}"
        score = self.score(checkpoint)
        lines = [
            f"{self.objective} {score:.4f} at {where}." if not math.isnan(score) else f"At {where}.",
            "",
            f"Checkpoint `{checkpoint.path.name}` ({checkpoint.kind} checkpoint).",
        ]
        if checkpoint.weights == "ema":
            lines[-1] += " It holds the EMA of the weights (`trainer.ema`); its metrics are the `val_ema/*`."
        if val:
            lines += [
                "",
                "| " + " | ".join(val) + " |",
                "|" + "---|" * len(val),
                "| " + " | ".join(f"{v:.6g}" for v in val.values()) + " |",
            ]
        if self.data_tags:
            data = ", ".join(f"{k.removeprefix('data.')} `{v}`" for k, v in self.data_tags.items())
            lines += ["", f"Data: {data}."]
        lines += [
            "",
            f"Registered by the rule {self.rule.describe()}; `@best` and `@last` follow by themselves.",
        ]
        return "\n".join(lines)
