"""The flaky-network tests' fault-injecting proxy, against a tiny upstream that counts what it applied."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers.flaky_proxy import FlakyProxy


class Upstream:
    """An HTTP server on 127.0.0.1 that counts the requests it applied and keeps the last PUT body."""

    def __init__(self):
        self.applied: Counter[str] = Counter()
        self.blob = b""
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(b"OK")
                elif self.path.startswith("/blob"):
                    self._send(upstream.blob, chunked="chunked" in self.path)
                else:
                    self._send(json.dumps({"applied": dict(upstream.applied)}).encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with upstream.lock:
                    upstream.applied["POST"] += 1
                self._send(json.dumps({"applied": upstream.applied["POST"], "echo": body.decode()}).encode())

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with upstream.lock:
                    upstream.applied["PUT"] += 1
                    upstream.blob = body
                self._send(
                    json.dumps({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}).encode()
                )

            def _send(self, body: bytes, chunked: bool = False) -> None:
                self.send_response(200)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(body), 65_537):
                        piece = body[start : start + 65_537]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        return Handler


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture
def proxy(upstream) -> Iterator[FlakyProxy]:
    with FlakyProxy(upstream.url, seed=3) as flaky:
        yield flaky


def request(proxy: FlakyProxy, method: str, path: str, body=None, timeout: float = 10, **headers):
    """One request through the proxy with no retries: (status, body), or the exception it raised."""
    connection = http.client.HTTPConnection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]), timeout=timeout)
    try:
        connection.request(
            method, path, body=body, headers=headers, encode_chunked=not isinstance(body, bytes)
        )
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return exc
    finally:
        connection.close()


def test_a_lost_answer_was_applied_once_and_the_client_gets_none_or_503(proxy, upstream):
    proxy.lose_answer = 1.0  # lose_mode "alternate": closed, 503, closed, 503
    outcomes = [request(proxy, "POST", "/api/2.0/mlflow/runs/create", b'{"n": 1}') for _ in range(4)]
    assert upstream.applied["POST"] == 4  # each applied, once
    closed = [o for o in outcomes if isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, tuple)]
    assert len(closed) == 2 and all(
        isinstance(e, ConnectionError | http.client.HTTPException) for e in closed
    )
    assert [status for status, _ in refused] == [503, 503]
    assert request(proxy, "GET", "/api/2.0/mlflow/runs/get")[0] == 200  # reads are never lost
    counts = proxy.counts()
    assert counts["lost"] == 4 and counts["lost_closed"] == 2 and counts["lost_503"] == 2
    assert counts["requests"] == 5 and counts["forwarded"] == 5 and counts["refused"] == 0
    assert proxy.faults() == {("lost", "POST", "/api/2.0/mlflow/runs/create"): 4}


def test_a_refused_request_never_reaches_the_server(proxy, upstream):
    proxy.set_rates(refuse=1.0)
    for method, body in (("POST", b"{}"), ("PUT", b"x" * 1000), ("GET", None)):
        status, text = request(proxy, method, "/api/2.0/mlflow/x", body)
        assert (status, text) == (503, b"proxy: refused")
    assert not upstream.applied
    assert request(proxy, "GET", "/health") == (200, b"OK")  # the readiness check is not faulted
    proxy.fault_health = True
    assert request(proxy, "GET", "/health")[0] == 503
    assert proxy.counts()["refused"] == 4 and proxy.counts()["forwarded"] == 1


def test_refuse_next_refuses_that_many_requests_in_a_row(proxy, upstream):
    proxy.refuse_next = 2
    statuses = [request(proxy, "POST", "/api/x", b"{}")[0] for _ in range(3)]
    assert statuses == [503, 503, 200] and upstream.applied["POST"] == 1


def test_a_stalled_answer_times_the_client_out_after_the_server_applied_it(upstream):
    with FlakyProxy(upstream.url, stall=1.0, stall_s=30) as proxy:
        outcome = request(proxy, "POST", "/api/2.0/mlflow/runs/update", b"{}", timeout=0.5)
        assert isinstance(outcome, TimeoutError | socket.timeout), outcome
        assert upstream.applied["POST"] == 1 and proxy.counts()["stalled"] == 1
        started = time.monotonic()
    assert time.monotonic() - started < 5  # stop() cuts the stall short


def test_a_clean_proxy_passes_large_bodies_byte_exact_both_ways(proxy, upstream):
    blob = os.urandom(2 * 1024 * 1024 + 7)
    status, answer = request(proxy, "PUT", "/api/2.0/mlflow-artifacts/artifacts/1/a/model.ckpt", blob)
    assert status == 200 and json.loads(answer) == {
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }
    assert upstream.blob == blob
    assert request(proxy, "GET", "/blob") == (200, blob)
    assert request(proxy, "GET", "/blob?chunked=1") == (200, blob)  # a chunked answer, passed whole
    pieces = (blob[i : i + 100_000] for i in range(0, len(blob), 100_000))
    status, answer = request(proxy, "PUT", "/blob", pieces)  # a chunked request body
    assert status == 200 and json.loads(answer)["sha256"] == hashlib.sha256(blob).hexdigest()
    assert proxy.counts() == {
        "requests": 4,
        "forwarded": 4,
        "refused": 0,
        "lost": 0,
        "lost_closed": 0,
        "lost_503": 0,
        "stalled": 0,
        "upstream_errors": 0,
    }


def test_a_keep_alive_client_gets_every_answer(proxy, upstream):
    import requests

    with requests.Session() as session:
        answers = [session.post(f"{proxy.url}/api/x", json={"i": i}, timeout=10).json() for i in range(5)]
    assert [a["applied"] for a in answers] == [1, 2, 3, 4, 5]
    assert json.loads(answers[-1]["echo"]) == {"i": 4}


def test_a_server_that_is_down_is_a_502(upstream):
    with FlakyProxy(upstream.url) as proxy:
        upstream.stop()
        status, text = request(proxy, "GET", "/api/2.0/mlflow/experiments/search")
    assert status == 502 and text.startswith(b"proxy: ") and proxy.counts()["upstream_errors"] == 1


def test_only_local_upstreams_are_accepted():
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        FlakyProxy("http://example.com:80")
