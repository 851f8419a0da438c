"""The aliases vit-exp keeps current itself: ``@last`` (the newest version of a registered model) and
``@best`` (the best by the objective among the versions on the newest version's data)."""

from __future__ import annotations

import logging

from vit_exp.errors import RegistryError
from vit_exp.tracking.registry.promotion import PromotionRequest, decide
from vit_exp.train.objective import HIGHER_IS_BETTER

log = logging.getLogger("vit_exp.tracking")

BEST, LAST = "best", "last"
ATTEMPTS = 3  # decide-and-move rounds, so a sweep job that moved @best meanwhile is seen


def follow_new_version(client, name: str, version: str, metric: str, data_digest: str | None) -> None:
    """Move ``@last`` to the newest version of ``name`` and ``@best`` to the best by ``metric`` among
    the versions on ``data_digest`` (version ``version``'s data; a holder on other data gives way).
    Idempotent: a resend changes nothing."""
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    if int(version) >= newest:
        client.set_registered_model_alias(name, LAST, str(newest))
    if metric not in HIGHER_IS_BETTER:
        return
    request = PromotionRequest(
        name,
        metric=metric,
        higher_is_better=HIGHER_IS_BETTER[metric],
        alias=BEST,
        previous_alias=None,
        data_digest=data_digest,
        tie_breaker="val/top1" if metric == "val/loss" else "val/loss",
        tie_breaker_higher_is_better=metric == "val/loss",
    )
    for _ in range(ATTEMPTS):
        try:
            decision = decide(client, request)
        except RegistryError as exc:  # no version measured the metric, or the data is not told apart
            log.info("mlflow: @%s of %s not moved: %s", BEST, name, exc)
            return
        if not decision.promote:
            return
        client.set_registered_model_alias(name, BEST, decision.candidate)
        log.info("mlflow: %s", decision.summary)
