"""Transient failures told by type and status; a create whose answer is lost is made once."""

from __future__ import annotations

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_ALREADY_EXISTS,
    TEMPORARILY_UNAVAILABLE,
)

from vit_exp.tracking import retries
from vit_exp.tracking.retries import Patience, RetryingClient, create_once, is_transient, retrying


def wrapped(inner: BaseException) -> MlflowException:
    """As MLflow's HTTP client raises it: its own exception, raised while handling ``inner``."""
    outer = MlflowException(f"API request failed with exception {inner}")
    outer.__context__ = inner
    return outer


@pytest.mark.parametrize(
    "exc",
    [
        wrapped(requests.exceptions.ConnectionError("Connection refused")),
        wrapped(requests.exceptions.ReadTimeout("read timed out")),
        wrapped(requests.exceptions.RetryError("too many 503 error responses")),
        wrapped(requests.exceptions.ChunkedEncodingError("connection reset")),
        MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
        MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED),
        ConnectionResetError(104, "reset by peer"),
    ],
)
def test_network_failures_and_busy_answers_are_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE),
        MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS),
        MlflowException("Connection refused, said the message of a permanent error"),
        ValueError("timed out"),
    ],
)
def test_refusals_are_not_transient_whatever_their_message_says(exc):
    assert not is_transient(exc)


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(retries, "FIRST_BACKOFF_S", 0.001)
    monkeypatch.setattr(retries, "MAX_BACKOFF_S", 0.002)


class LossyStore:
    """Applies every create, and loses the answer of the first ``lose`` of them."""

    def __init__(self, lose: int):
        self.made: list[str] = []
        self.lose = lose

    def create(self) -> str:
        self.made.append(f"thing-{len(self.made)}")
        if self.lose:
            self.lose -= 1
            raise wrapped(requests.exceptions.ConnectionError("RemoteDisconnected"))
        return self.made[-1]

    def find(self) -> str | None:
        return self.made[0] if self.made else None


def test_create_once_finds_what_a_lost_answer_created(fast_backoff):
    store = LossyStore(lose=3)
    client = RetryingClient(object(), Patience(5))
    assert create_once(client, store.create, store.find, "a thing") == "thing-0"
    assert store.made == ["thing-0"]  # applied once, never sent again


def test_create_once_tries_again_when_nothing_was_made(fast_backoff):
    calls = []

    def create():
        calls.append(1)
        if len(calls) < 3:  # refused before the server saw it
            raise MlflowException("unavailable", error_code=TEMPORARILY_UNAVAILABLE)
        return "made"

    assert create_once(RetryingClient(object(), Patience(5)), create, lambda: None, "a thing") == "made"
    assert len(calls) == 3


def test_a_local_store_is_not_retried():
    store = LossyStore(lose=1)
    with pytest.raises(MlflowException):
        create_once(object(), store.create, store.find, "a thing")  # a plain client: no budget


def test_retrying_gives_up_after_its_budget_and_never_retries_a_refusal(fast_backoff):
    attempts = []

    def refused():
        attempts.append(1)
        raise MlflowException("bad", error_code=INVALID_PARAMETER_VALUE)

    with pytest.raises(MlflowException):
        retrying(refused, "refused", Patience(5))
    assert len(attempts) == 1

    def down():
        attempts.append(1)
        raise wrapped(requests.exceptions.ConnectionError("Connection refused"))

    with pytest.raises(MlflowException):
        retrying(down, "down", Patience(0.05))
    assert len(attempts) > 2


def test_the_retrying_client_sends_creates_once(fast_backoff):
    class Client:
        def __init__(self):
            self.calls = {"set_tag": 0, "create_run": 0}

        def set_tag(self):
            self.calls["set_tag"] += 1
            if self.calls["set_tag"] < 3:
                raise wrapped(requests.exceptions.ReadTimeout("timed out"))

        def create_run(self):
            self.calls["create_run"] += 1
            raise wrapped(requests.exceptions.ReadTimeout("timed out"))

    inner = Client()
    client = RetryingClient(inner, Patience(5))
    client.set_tag()
    with pytest.raises(MlflowException):
        client.create_run()
    assert inner.calls == {"set_tag": 3, "create_run": 1}
