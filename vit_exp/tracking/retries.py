"""Talking to a tracking server over a flaky network: idempotent calls are simply sent again; a create
with no key of its own is sent once and looked up before it is sent again (``create_once``).
Transient failures are told by exception type and error code, never by message."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from vit_exp.errors import error_chain

T = TypeVar("T")
log = logging.getLogger("vit_exp.tracking")

RETRY_BUDGET_S = 120.0  # how long one call keeps retrying a flaky server before giving up
FIRST_BACKOFF_S = 0.02  # a lost answer is usually followed by one that arrives: try again soon
MAX_BACKOFF_S = 4.0
# MLflow error codes that mean "later": HTTP 429, 503, 504 (SQLite's "database is locked" too).
TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
)
# Client methods that create something with no key of its own: never resent blindly (``create_once``).
CREATES = frozenset({"create_run", "create_logged_model", "create_model_version", "log_outputs"})


def is_transient(exc: BaseException) -> bool:
    """Whether the store may take the same request later (network, 429/5xx, a busy database)."""
    network: tuple[type, ...] = (ConnectionError, TimeoutError)
    if "requests" in sys.modules:
        from requests import exceptions as http

        network += (http.ConnectionError, http.Timeout, http.RetryError, http.ChunkedEncodingError)
    return any(  # by type, or by an MlflowException's code name
        isinstance(inner, network) or getattr(inner, "error_code", None) in TRANSIENT_CODES
        for inner in error_chain(exc)
    )


@dataclass(frozen=True)
class Patience:
    """How long a call keeps trying: ``budget_s`` seconds, or until ``stop`` is set (the outbox of a
    command that is ending); waits double from ``FIRST_BACKOFF_S`` up to ``MAX_BACKOFF_S``."""

    budget_s: float = RETRY_BUDGET_S
    stop: threading.Event | None = None

    def waits(self) -> Iterator[float]:
        deadline = time.monotonic() + self.budget_s
        wait = FIRST_BACKOFF_S
        while (left := deadline - time.monotonic()) > 0 and not (self.stop and self.stop.is_set()):
            yield min(wait, left)
            wait = min(wait * 2, MAX_BACKOFF_S)

    def sleep(self, seconds: float) -> None:
        if self.stop is None:
            time.sleep(seconds)
        else:
            self.stop.wait(seconds)


NONE = Patience(0.0)  # a local store's plain client: it loses no answers


def retrying(call: Callable[[], T], what: str, patience: Patience = Patience()) -> T:
    """``call()``, tried again with backoff while it fails transiently (as long as ``patience`` lasts)."""
    waits = patience.waits()
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or (wait := next(waits, None)) is None:
                raise
            log.debug("mlflow: %s failed transiently (%s); again in %.2fs", what, type(exc).__name__, wait)
            patience.sleep(wait)


def create_once(client, create: Callable[[], T], find: Callable[[], T | None], what: str) -> T:
    """``create()`` exactly once over a flaky network: a failed try may have been applied, its answer
    lost, so each later try first looks with ``find()``; tries as long as ``client``'s patience lasts."""
    sent = False

    def attempt() -> T:
        nonlocal sent
        if sent and (found := find()) is not None:
            return found
        sent = True
        return create()

    patience = client.patience if isinstance(client, RetryingClient) else NONE
    return retrying(attempt, what, patience)


class RetryingClient:
    """An ``MlflowClient`` retrying calls that fail transiently; ``CREATES`` pass through once."""

    def __init__(self, client, patience: Patience = Patience()):
        self._client = client
        self.patience = patience

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute) or name in CREATES or name.startswith("_"):
            return attribute

        def call(*args, **kwargs):
            return retrying(lambda: attribute(*args, **kwargs), name, self.patience)

        return call


def with_patience(client, patience: Patience):
    """``client`` trying as long as ``patience`` says (a local store's plain client as it is)."""
    return RetryingClient(client._client, patience) if isinstance(client, RetryingClient) else client


def turn_off_mlflow_retries() -> None:
    """Turn off MLflow's HTTP retries (they would resend a lost create; this module retries instead) and
    set a 15 s answer timeout unless the environment sets one."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    # Ending a run would also print "View run ..." links (our summary prints them) and ask the server again.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
