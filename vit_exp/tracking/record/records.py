"""The outbox's record types: one line of its journal each (``{"kind": ..., <fields>}``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, Self


class Record:
    """A journal line; fields at their default are left out, so old and new journals read the same."""

    kind: ClassVar[str]

    def to_json(self) -> str:
        kept = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != _default(f)}
        return json.dumps({"kind": self.kind} | kept)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**{k: v for k, v in data.items() if k != "kind"})


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


@dataclass(frozen=True)
class RunRecord(Record):
    """The journal's first: the run its records go to and its store (credentials masked)."""

    kind: ClassVar[str] = "run"
    run_id: str
    tracking_uri: str


@dataclass(frozen=True)
class MetricsRecord(Record):
    """Points ``[key, value, timestamp ms, step]``, at most 1000 (MLflow's batch limit)."""

    kind: ClassVar[str] = "metrics"
    metrics: list[list]


@dataclass(frozen=True)
class VersionRecord(Record):
    """A checkpoint to make a version of ``name`` (``registry.versions.version_record``).
    ``release``: files held for it (``HELD_DIR``); ``network_only``: ``checkpoint`` is one of them."""

    kind: ClassVar[str] = "version"
    checkpoint: str
    step: int
    name: str
    tags: dict[str, str]
    model_inputs: str
    top_k: int
    network_only: bool = False
    release: Sequence[str] = ()
    register: bool = True  # False: a LoggedModel of the run only, no version
    model_logged: bool = False  # its LoggedModel was queued by an earlier record: look it up
    objective: str = ""  # the metric @best follows ("": no @best/@last update, an older journal)
    description: str = ""  # the version's markdown description
    export: tuple[str, ...] = ()  # formats the version is exported to in the background (registry.export)
    dataset: dict[str, str] = field(
        default_factory=dict
    )  # data.name, data.val_digest: the val metrics' dataset


@dataclass(frozen=True)
class ArtifactRecord(Record):
    """A file to store as an artifact of the run (the command's log), read when it is sent."""

    kind: ClassVar[str] = "artifact"
    path: str
    artifact_path: str | None = None


@dataclass(frozen=True)
class StoryRecord(Record):
    """The run's markdown description as the training process knows it (``record.story``); the sender
    adds the model versions the store holds of the run and the software the run's tags name."""

    kind: ClassVar[str] = "story"
    lines: list[str]
    tags: dict[str, str] = field(default_factory=dict)  # the run's tags that tell how it ended


@dataclass(frozen=True)
class EndRecord(Record):
    """The run's end status, with a failed run's one-line error."""

    kind: ClassVar[str] = "end"
    status: str
    error: str | None = None


RECORD_TYPES: dict[str, type[Record]] = {
    t.kind: t for t in (RunRecord, MetricsRecord, VersionRecord, ArtifactRecord, StoryRecord, EndRecord)
}
