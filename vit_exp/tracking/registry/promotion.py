"""Alias promotion in the MLflow registry: pick a candidate by a metric tag, compare, move the alias.

Only versions trained on the same data (``data.digest`` tag) compete.
"""

from __future__ import annotations

import getpass
import math
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vit_exp.data.digest import data_label
from vit_exp.errors import ConfigError, RegistryError
from vit_exp.tracking.registry.resolve import require_registered_model


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
    data_digest: str | None = None
    tie_breaker: str | None = "val/loss"
    tie_breaker_higher_is_better: bool = False


UNKNOWN_DATA = "unknown"  # versions registered before data identity tags existed


@dataclass(frozen=True)
class VersionScore:
    """A version of the registered model with its score on the metric tag (NaN without one)."""

    version: str
    score: float
    aliases: list[str]
    run_id: str | None
    data_name: str = UNKNOWN_DATA
    data_digest: str = UNKNOWN_DATA
    tie_score: float = math.nan
    epoch: int = -1

    @property
    def data(self) -> str:
        """``digits:289287cc`` (name and the start of the digest), as the training console shows it."""
        return data_label(self.data_name, self.data_digest)


@dataclass
class Decision:
    """The outcome: candidate and current holder (versions), their scores, and whether to promote."""

    versions: list[VersionScore] = field(default_factory=list)  # sorted by version
    data_digest: str | None = None  # the data compared (None: no version has a score)
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
    versions = sorted(client.search_model_versions(f"name='{request.name}'"), key=lambda v: int(v.version))
    rows = [_version_score(v, request, registered.aliases) for v in versions]
    decision = Decision(versions=rows, metric=request.metric, alias=request.alias)
    holder = registered.aliases.get(request.alias)
    holder_row = next((r for r in rows if holder is not None and r.version == str(holder)), None)
    decision.data_digest = _data_compared(request, rows, holder_row)
    best = _candidate(request, rows, decision.data_digest)
    decision.candidate, decision.candidate_score = best.version, best.score
    if holder is not None:
        decision.current = str(holder)
        decision.current_score = holder_row.score if holder_row else math.nan
    _judge(decision, request, best, holder_row)
    return decision


def _candidate(request: PromotionRequest, rows: list[VersionScore], data_digest: str | None) -> VersionScore:
    """The best-scoring version on the compared data (``request.version`` when it names one)."""
    sign = 1.0 if request.higher_is_better else -1.0
    tie_sign = 1.0 if request.tie_breaker_higher_is_better else -1.0
    scored = [r for r in rows if not math.isnan(r.score) and r.data_digest == data_digest]
    if request.version is not None:
        scored = [r for r in scored if r.version == request.version]
        if not scored:
            raise RegistryError(
                f"version {request.version} of '{request.name}' has no numeric '{request.metric}' tag "
                f"or was trained on other data than data.digest={data_digest}"
            )
    if not scored:
        raise RegistryError(f"no version of '{request.name}' has a numeric '{request.metric}' tag to compare")

    def rank(r: VersionScore) -> tuple:
        tie = -math.inf if math.isnan(r.tie_score) else tie_sign * r.tie_score
        return (sign * r.score, tie, r.epoch, int(r.version))

    return max(scored, key=rank)


def _judge(decision: Decision, request: PromotionRequest, best: VersionScore, holder_row) -> None:
    """Whether the candidate takes the alias from its holder, and the line that says why."""
    other_data = holder_row is not None and holder_row.data_digest != decision.data_digest
    if decision.current is None:
        decision.promote = True
        decision.summary = f"version {decision.candidate} becomes @{request.alias} (no current holder)"
    elif other_data and decision.current != decision.candidate:
        decision.promote = True
        decision.summary = (
            f"version {decision.candidate} ({best.data}) becomes @{request.alias}, as asked by data_digest=; "
            f"the holder, version {decision.current}, was trained on other data ({holder_row.data})"
        )
    elif decision.current == decision.candidate:
        decision.summary = f"version {decision.candidate} already holds @{request.alias}"
    else:
        gain = (1.0 if request.higher_is_better else -1.0) * (
            decision.candidate_score - decision.current_score
        )
        decision.promote = math.isnan(decision.current_score) or gain > request.min_delta
        if decision.promote:
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


def _version_score(version, request: PromotionRequest, aliases: dict) -> VersionScore:
    tags = version.tags
    epoch = _score(tags, "epoch")
    return VersionScore(
        str(version.version),
        _score(tags, request.metric),
        [alias for alias, held in aliases.items() if str(held) == str(version.version)],
        version.run_id,
        data_name=tags.get("data.name", UNKNOWN_DATA),
        data_digest=tags.get("data.digest", UNKNOWN_DATA),
        tie_score=_score(tags, request.tie_breaker) if request.tie_breaker else math.nan,
        epoch=-1 if math.isnan(epoch) else int(epoch),
    )


def _data_compared(request: PromotionRequest, rows: list[VersionScore], holder: VersionScore | None) -> str:
    """The data digest whose versions compete: the request's, else the holder's, else the only one."""
    datasets: dict[str, list[VersionScore]] = {}
    for row in rows:
        datasets.setdefault(row.data_digest, []).append(row)
    listing = "; ".join(
        f"{group[0].data_name} data_digest={digest} ({len(group)} version(s))"
        for digest, group in sorted(datasets.items(), key=lambda item: item[1][0].data_name)
    )
    if request.data_digest:
        matches = [d for d in datasets if d.startswith(str(request.data_digest))]
        if len(matches) != 1:
            found = "matches several" if matches else "matches none"
            raise RegistryError(
                f"data_digest={request.data_digest} {found} of the versions of '{request.name}': {listing}"
            )
        return matches[0]
    if holder is not None:
        return holder.data_digest
    if len(datasets) > 1:
        raise RegistryError(
            f"versions of '{request.name}' were trained on {len(datasets)} datasets and no version holds "
            f"@{request.alias}; choose one with data_digest=...: {listing}"
        )
    return next(iter(datasets), UNKNOWN_DATA)


def apply_decision(client, request: PromotionRequest, decision: Decision) -> None:
    """Move the alias, keep the replaced version reachable, record who/what/why on the version."""
    if decision.current is not None and request.previous_alias:
        client.set_registered_model_alias(request.name, request.previous_alias, decision.current)
    client.set_registered_model_alias(request.name, request.alias, decision.candidate)
    tags = {
        "promotion.alias": request.alias,
        "promotion.by": f"{getpass.getuser()}@{socket.gethostname()}",
        "promotion.at": datetime.now(UTC).isoformat(timespec="seconds"),
        "promotion.metric": f"{request.metric}={decision.candidate_score:.6g}",
        "promotion.data_digest": decision.data_digest or UNKNOWN_DATA,
        "promotion.replaced_version": decision.current or "none",
        "promotion.reason": request.reason or decision.summary,
    }
    for key, value in tags.items():
        client.set_model_version_tag(request.name, decision.candidate, key, value)


def comparison_table(decision: Decision) -> str:
    """The compared versions with metric, epoch and aliases, candidate and holder marked; others counted."""
    header = (
        f"{'version':>7}  {'data':<20} {decision.metric:>12}  {'epoch':>6}  {'aliases':<20} "
        f"{'run_id':<32}  note"
    )
    lines = [header, "-" * len(header)]
    compared = [r for r in decision.versions if r.data_digest == decision.data_digest]
    for row in compared:
        note = []
        if row.version == decision.candidate:
            note.append("candidate")
        if row.version == decision.current:
            note.append(f"current @{decision.alias}")
        shown = "-" if math.isnan(row.score) else f"{row.score:.6g}"
        aliases, run_id = ",".join(row.aliases) or "-", row.run_id or "-"
        epoch = "-" if row.epoch < 0 else str(row.epoch)
        lines.append(
            f"{row.version:>7}  {row.data:<20} {shown:>12}  {epoch:>6}  {aliases:<20} {run_id:<32}  "
            f"{' '.join(note)}".rstrip()
        )
    others = len(decision.versions) - len(compared)
    if others:
        lines.append(f"({others} version(s) trained on other data not compared; see data_digest=)")
    return "\n".join(lines)
