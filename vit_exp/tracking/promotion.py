"""Alias promotion in the MLflow registry: pick a candidate by a metric tag, compare, move the alias."""

from __future__ import annotations

import getpass
import math
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vit_exp.errors import ConfigError, RegistryError
from vit_exp.tracking.resolve import require_registered_model


@dataclass
class PromotionRequest:
    """What to promote: model, metric tag, direction, alias names, threshold, optional fixed version."""

    name: str
    metric: str = "val/top1"
    higher_is_better: bool = True
    alias: str = "champion"
    previous_alias: str | None = "previous"
    min_delta: float = 0.0
    version: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class VersionScore:
    """A version of the registered model with its score on the metric tag (NaN without one)."""

    version: str
    score: float
    aliases: list[str]
    run_id: str | None


@dataclass
class Decision:
    """The outcome: candidate and current holder (versions), their scores, and whether to promote."""

    versions: list[VersionScore] = field(default_factory=list)  # sorted by version
    metric: str = ""
    alias: str = ""
    candidate: str | None = None
    candidate_score: float = math.nan
    current: str | None = None
    current_score: float = math.nan
    promote: bool = False
    summary: str = ""


def _score(tags: dict, metric: str) -> float:
    try:
        return float(tags[metric])
    except (KeyError, TypeError, ValueError):
        return math.nan


def decide(client, request: PromotionRequest) -> Decision:
    """Find the candidate and the alias holder and decide (no changes are made)."""
    if request.min_delta < 0:
        raise ConfigError(f"min_delta must be >= 0, got {request.min_delta}")
    require_registered_model(client, request.name)
    registered = client.get_registered_model(request.name)
    aliases_by_version: dict[str, list[str]] = {}
    for alias, version in registered.aliases.items():
        aliases_by_version.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name='{request.name}'"), key=lambda v: int(v.version))
    rows = [
        VersionScore(
            str(v.version), _score(v.tags, request.metric), aliases_by_version.get(v.version, []), v.run_id
        )
        for v in versions
    ]
    decision = Decision(versions=rows, metric=request.metric, alias=request.alias)
    sign = 1.0 if request.higher_is_better else -1.0
    scored = [r for r in rows if not math.isnan(r.score)]
    if request.version is not None:
        scored = [r for r in scored if r.version == request.version]
        if not scored:
            raise RegistryError(
                f"version {request.version} of '{request.name}' has no numeric '{request.metric}' tag"
            )
    if not scored:
        raise RegistryError(f"no version of '{request.name}' has a numeric '{request.metric}' tag to compare")
    best = max(scored, key=lambda r: (sign * r.score, -int(r.version)))
    decision.candidate, decision.candidate_score = best.version, best.score
    holder = registered.aliases.get(request.alias)
    if holder is not None:
        decision.current = str(holder)
        decision.current_score = next((r.score for r in rows if r.version == decision.current), math.nan)
    if decision.current is None:
        decision.promote = True
        decision.summary = f"version {decision.candidate} becomes @{request.alias} (no current holder)"
    elif decision.current == decision.candidate:
        decision.summary = f"version {decision.candidate} already holds @{request.alias}"
    else:
        gain = sign * (decision.candidate_score - decision.current_score)
        if math.isnan(decision.current_score) or gain > request.min_delta:
            decision.promote = True
            decision.summary = (
                f"version {decision.candidate} becomes @{request.alias}: {request.metric} "
                f"{decision.candidate_score:.6g} vs {decision.current_score:.6g} "
                f"(version {decision.current}), gain {gain:+.6g} > min_delta {request.min_delta:g}"
            )
        else:
            decision.summary = (
                f"@{request.alias} stays on version {decision.current}: candidate {decision.candidate} "
                f"{request.metric} {decision.candidate_score:.6g} vs {decision.current_score:.6g}, "
                f"gain {gain:+.6g} <= min_delta {request.min_delta:g}"
            )
    return decision


def apply_decision(client, request: PromotionRequest, decision: Decision) -> None:
    """Move the alias, keep the replaced version reachable, record who/what/why on the version."""
    if decision.current is not None and request.previous_alias:
        client.set_registered_model_alias(request.name, request.previous_alias, decision.current)
    client.set_registered_model_alias(request.name, request.alias, decision.candidate)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    tags = {
        "promotion.alias": request.alias,
        "promotion.by": f"{getpass.getuser()}@{socket.gethostname()}",
        "promotion.at": when,
        "promotion.metric": f"{request.metric}={decision.candidate_score:.6g}",
        "promotion.replaced_version": decision.current or "none",
        "promotion.reason": request.reason or decision.summary,
    }
    for key, value in tags.items():
        client.set_model_version_tag(request.name, decision.candidate, key, value)


def comparison_table(decision: Decision) -> str:
    """Versions with their metric and aliases; the candidate and current holder marked."""
    header = f"{'version':>7}  {decision.metric:>12}  {'aliases':<24} {'run_id':<32}  note"
    lines = [header, "-" * len(header)]
    for row in decision.versions:
        note = []
        if row.version == decision.candidate:
            note.append("candidate")
        if row.version == decision.current:
            note.append(f"current @{decision.alias}")
        shown = "-" if math.isnan(row.score) else f"{row.score:.6g}"
        aliases, run_id = ",".join(row.aliases) or "-", row.run_id or "-"
        lines.append(f"{row.version:>7}  {shown:>12}  {aliases:<24} {run_id:<32}  {' '.join(note)}")
    return "\n".join(lines)
