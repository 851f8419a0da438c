"""The run tells its story: a short markdown description on its MLflow page (the UI's Description,
tag ``mlflow.note.content``), written through the outbox when training starts and again when it ends.

The training process knows the model, data, progress, best epoch, time and how it ended
(``RunStory``); the sender adds what the store holds: the model versions registered from the run
(all versions queued before are stored by then) and the software its tags name."""

from __future__ import annotations

import logging
import math
import re
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from vit_exp.tracking.record.records import StoryRecord
from vit_exp.tracking.retries import is_transient

if TYPE_CHECKING:
    from vit_exp.data.digest import DataIdentity
    from vit_exp.train.callbacks import TrainHistory
    from vit_exp.train.plan import TrainPlan

log = logging.getLogger("vit_exp.tracking")

NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's Description
MAX_ERROR = 300  # characters of a failed run's one-line error in the description
MAX_VERSIONS = 6  # versions listed by link; more are counted
STOPPED_EARLY_TAG = "vit_exp.stopped_early"  # why and when trainer.early_stopping ended the run


@dataclass
class RunStory:
    """What a training run's description tells; the session fills it (``begin``) once the model, data
    and plan are known: a run that fails before that tells only how it ended."""

    model: str = ""  # "vit_tiny, 5,386 parameters, 3 classes"
    data: str = ""  # "digits:289287cc (36 train / 36 val images)"
    epochs: int = 0  # planned
    total_steps: int = 0  # planned
    objective: str = "val/top1"  # picks the best epoch (optimized_metric)
    attempt: int = 1
    from_step: int = 0  # where a resumed attempt began
    history: TrainHistory | None = None
    started: float = field(default_factory=time.monotonic)  # this attempt's start (run opened)
    stopped_by: str | None = None  # an interrupted run's "SIGTERM at step 12, checkpoint saved"
    stopped_early: str | None = None  # "epoch 12: val/top1 did not improve ..." (trainer.early_stopping)

    def begin(
        self,
        model: str,
        identity: DataIdentity,
        plan: TrainPlan,
        history: TrainHistory,
        objective: str,
        attempt: int = 1,
        from_step: int = 0,
    ) -> None:
        """The facts known when training starts (``history``: read again at the end)."""
        train, val = identity.train.num_images, identity.val.num_images
        self.model, self.data = model, f"{identity.label} ({train:,} train / {val:,} val images)"
        self.epochs, self.total_steps = plan.epochs, plan.total_steps
        self.history, self.objective = history, objective
        self.attempt, self.from_step = attempt, from_step

    def interrupted(self, exc: KeyboardInterrupt, signum: int | None) -> None:
        """Note what stopped training: ``signum`` (the first signal the loop got) or ``exc``'s own."""
        from vit_exp.train.preemption import Preempted

        name = signal_name(signum) if signum else signal_name_in(str(exc))
        if isinstance(exc, Preempted):
            self.stopped_by = f"{name} at step {exc.step}; checkpoint saved, a resume continues from it"
        else:
            self.stopped_by = name

    def record(self, status: str | None = None, error: str | None = None) -> StoryRecord:
        """The description now: ``status`` None while running, else how the run ended."""
        lines = [self._ending(status, error)]
        if self.model:
            lines += [f"- model: {self.model}", f"- data: {self.data}", f"- progress: {self._progress()}"]
        if best := self._best():
            lines.append(f"- best: {best}")
        lines.append(f"- time: {_duration(time.monotonic() - self.started)}{self._attempt_note()}")
        ended_early = status == "FINISHED" and self.stopped_early
        return StoryRecord(lines, {STOPPED_EARLY_TAG: self.stopped_early} if ended_early else {})

    def _ending(self, status: str | None, error: str | None) -> str:
        attempt = ""
        if self.attempt > 1:
            attempt = f" (attempt {self.attempt}, resumed from step {self.from_step:,})"
        elif self.from_step:
            attempt = f" (started from a checkpoint at step {self.from_step:,})"
        if status is None:
            return f"**running**{attempt}"
        if status == "FAILED" and error:
            return f"**FAILED**{attempt}: {_code(error[:MAX_ERROR])}"
        if status == "KILLED":
            return f"**KILLED**{attempt} by {self.stopped_by or 'a signal'}"
        if status == "FINISHED" and self.stopped_early:
            return f"**FINISHED**{attempt}, stopped early by trainer.early_stopping: {self.stopped_early}"
        return f"**{status}**{attempt}"

    def _attempt_note(self) -> str:
        return " (this attempt)" if self.attempt > 1 else ""

    def _progress(self) -> str:
        history = self.history
        epochs = history.last_epoch.epoch if history and history.last_epoch else 0
        step = history.global_step if history else 0
        return f"epoch {epochs} of {self.epochs} done, step {step:,} of {self.total_steps:,}"

    def _best(self) -> str | None:
        """``epoch 2 by val/top1: top1 0.8333, top5 1.0000, loss 0.4512`` (None before any validation)."""
        from vit_exp.train.objective import best_value, epoch_values

        epochs = self.history.epochs if self.history else []
        scored = [(e, v[0]) for e in epochs if (v := epoch_values(self.objective, [e]))]
        best = best_value(self.objective, [value for _, value in scored])
        record = next((e for e, value in scored if value == best), None)
        if record is None or not record.val:
            return None
        values = ", ".join(f"{key} {value:.4f}" for key, value in record.val.items() if not math.isnan(value))
        return f"epoch {record.epoch} by {self.objective}: {values}"


def write_description(client, run_id: str, record: StoryRecord) -> None:
    """Set the run's description: ``record``'s lines, the versions registered from the run, the software."""
    run = client.get_run(run_id)
    ending, *facts = record.lines
    facts += [*_versions_line(client, run_id), *_software_line(run.data.tags)]
    for key, value in record.tags.items():
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, NOTE_TAG, "\n".join([ending, "", *facts]))  # a paragraph, then a list


def _versions_line(client, run_id: str) -> list[str]:
    """``- model versions: [models:/tiny-vit/1](#/models/tiny-vit/versions/1), ...`` (none: no line)."""
    try:
        found = client.search_model_versions(f"run_id='{run_id}'")
    except Exception as exc:  # a store without a registry: the description goes without the line
        if is_transient(exc):
            raise
        log.info("mlflow: the run's model versions are not listed in its description (%s)", exc)
        return []
    if not found:
        return []
    versions = sorted(found, key=lambda v: (v.name, int(v.version)))
    links = [
        f"[models:/{v.name}/{v.version}](#/models/{quote(v.name, safe='')}/versions/{v.version})"
        for v in versions[-MAX_VERSIONS:]
    ]
    more = f"{len(versions)} versions, the last {MAX_VERSIONS}: " if len(versions) > MAX_VERSIONS else ""
    return [f"- model versions: {more}{', '.join(links)}"]


def _software_line(tags: dict[str, str]) -> list[str]:
    """``- software: mindspore 2.10.0, mlflow 3.1.0, python 3.11.9, git 1a2b3c4d (dirty)``."""
    parts = [
        f"{name} {tags[f'{name}.version']}"
        for name in ("mindspore", "mlflow", "python")
        if f"{name}.version" in tags
    ]
    if commit := tags.get("git.commit"):
        parts.append(f"git {commit[:8]}" + (" (dirty)" if tags.get("git.dirty") == "true" else ""))
    return [f"- software: {', '.join(parts)}"] if parts else []


def signal_name(signum: int) -> str:
    """``SIGTERM``, ``SIGINT (Ctrl-C)``; a number no signal has as is."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def signal_name_in(message: str) -> str:
    """The signal a stop's message names (``signal 15``: ``vit_exp.stop``), else Ctrl-C."""
    found = re.search(r"\bsignal (\d+)\b", message)
    return signal_name(int(found.group(1))) if found else signal_name(signal.SIGINT)


def _code(text: str) -> str:
    """``text`` as inline code (its backticks made quotes, so the markdown stays whole)."""
    quoted = text.replace("`", "'")
    return f"`{quoted}`"


def _duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
