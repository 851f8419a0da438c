"""A fault-injecting HTTP reverse proxy in front of a real ``mlflow server`` (issue 24's flaky network).

Per request, drawn from a seeded ``random.Random`` at rates that can be changed at any time:

- ``refuse``: answer 503 (``proxy: refused``) without forwarding; the server never sees it;
- ``lose_answer`` (writes: POST/PUT/PATCH/DELETE): forward, let the server apply it, read its whole
  answer, then drop it: close the connection without answering, or answer 503 (``lose_mode``);
- ``stall``: forward, let the server apply it, then wait ``stall_s`` before answering (longer than
  the client's timeout: the client gives up although the request was applied).

``refuse_next = N`` refuses the next N requests whatever the rates (a start-up that meets 503s in a
row). ``GET /health`` (the servers' readiness check) is never faulted unless ``fault_health``. Bodies are
read whole both ways (Content-Length or chunked), forwarded with a Content-Length, and every answer
says ``Connection: close``. It listens on 127.0.0.1 and forwards to 127.0.0.1 only.

    proxy = FlakyProxy("http://127.0.0.1:5000", refuse=0.2, lose_answer=0.5, seed=1).start()
    ... proxy.url ... proxy.counts() ... proxy.stop()
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",  # set again from the body actually sent
        "host",
    }
)
LOSE_MODES = ("alternate", "random", "close", "503")
ARTIFACTS_PREFIX = "/api/2.0/mlflow-artifacts/artifacts/"
LOCAL_HOSTS = ("127.0.0.1", "localhost")


class FlakyProxy:
    """The proxy: ``start()`` it, point clients at ``url``, read ``counts()``, ``stop()`` it.

    ``refuse``, ``lose_answer``, ``stall`` (rates in [0, 1]), ``stall_s``, ``lose_mode``,
    ``refuse_next`` and ``fault_health`` are plain attributes: set them while it runs to change what
    comes next.
    """

    def __init__(  # noqa: PLR0913 (one knob per fault)
        self,
        upstream: str,
        *,
        refuse: float = 0.0,
        lose_answer: float = 0.0,
        stall: float = 0.0,
        stall_s: float = 6.0,
        lose_mode: str = "alternate",
        seed: int = 0,
        fault_health: bool = False,
        upstream_timeout_s: float = 300.0,
    ):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS or parts.port is None:
            raise ValueError(f"upstream must be http://127.0.0.1:<port>, got {upstream!r}")
        if lose_mode not in LOSE_MODES:
            raise ValueError(f"lose_mode must be one of {LOSE_MODES}, got {lose_mode!r}")
        self.upstream_host, self.upstream_port = "127.0.0.1", parts.port
        self.refuse, self.lose_answer, self.stall = refuse, lose_answer, stall
        self.stall_s, self.lose_mode, self.fault_health = stall_s, lose_mode, fault_health
        self.refuse_next = 0
        self.upstream_timeout_s = upstream_timeout_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._faults: Counter[tuple[str, str, str]] = Counter()  # (fault, method, endpoint)
        self._lost = 0  # answers lost so far (``alternate`` switches on it)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FlakyProxy:
        """Listen on a free 127.0.0.1 port and serve in a background thread."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        server.block_on_close = False  # a stalled answer must not hold stop()
        self._stopping.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="flaky-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled answers are cut short."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def set_rates(self, refuse: float = 0.0, lose_answer: float = 0.0, stall: float = 0.0) -> None:
        """Change the fault rates for the requests that come next (all 0: a clean network)."""
        with self._lock:
            self.refuse, self.lose_answer, self.stall = refuse, lose_answer, stall

    # --- counters ---------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Requests seen, and how many were refused, lost (closed or 503) and stalled, forwarded."""
        keys = ("requests", "forwarded", "refused", "lost", "lost_closed", "lost_503", "stalled")
        with self._lock:
            return {key: self._counts[key] for key in keys} | {"upstream_errors": self._counts["upstream"]}

    def faults(self) -> dict[tuple[str, str, str], int]:
        """How often each fault hit each ``(method, endpoint)``: ``{(fault, method, endpoint): n}``."""
        with self._lock:
            return dict(self._faults)

    def summary(self) -> str:
        """The counters and the faulted endpoints, a line each, for a test's log."""
        lines = [" ".join(f"{k}={v}" for k, v in self.counts().items())]
        for (fault, method, endpoint), n in sorted(self.faults().items()):
            lines.append(f"  {fault:<8} {n:4d}  {method} {endpoint}")
        return "\n".join(lines)

    def _count(self, what: str, method: str = "", endpoint: str = "") -> None:
        with self._lock:
            self._counts[what] += 1
            if endpoint:
                self._faults[(what, method, endpoint)] += 1

    # --- decisions --------------------------------------------------------------------------------

    def decide(self, method: str, path: str) -> str:
        """``refuse``, ``lose``, ``stall`` or ``pass`` for one request (thread-safe, seeded)."""
        with self._lock:
            self._counts["requests"] += 1
            if path.split("?", 1)[0] == "/health" and not self.fault_health:
                return "pass"
            if self.refuse_next > 0:
                self.refuse_next -= 1
                return "refuse"
            if self._random.random() < self.refuse:
                return "refuse"
            if method in WRITES and self._random.random() < self.lose_answer:
                return "lose"
            if self._random.random() < self.stall:
                return "stall"
            return "pass"

    def lose_by_closing(self) -> bool:
        """For a lost answer: close the connection (True) or answer 503 (False), by ``lose_mode``."""
        with self._lock:
            self._lost += 1
            if self.lose_mode == "alternate":
                return self._lost % 2 == 1
            if self.lose_mode == "random":
                return self._random.random() < 0.5
            return self.lose_mode == "close"

    def forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None):
        """Send the request to the server; return its status, reason, headers and whole body."""
        connection = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=self.upstream_timeout_s
        )
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", f"{self.upstream_host}:{self.upstream_port}")
            for name, value in headers:
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            data = response.read()  # Content-Length, chunked or until close: http.client handles all
            return response.status, response.reason, response.getheaders(), data
        finally:
            connection.close()


def endpoint(path: str) -> str:
    """The endpoint of a request path for the counters (no query; an artifact path shortened)."""
    path = path.split("?", 1)[0]
    return ARTIFACTS_PREFIX + "..." if path.startswith(ARTIFACTS_PREFIX) else path


def _handler_class(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    """One request: read it whole, decide its fate, forward it (or not), answer (or not)."""

    proxy: FlakyProxy
    protocol_version = "HTTP/1.1"  # chunked bodies from clients; every answer closes the connection

    def log_message(self, format: str, *args) -> None:  # quiet: the counters say what happened
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _handle(self) -> None:
        self.close_connection = True
        method, proxy = self.command, self.proxy
        body = self._read_body()
        fate = proxy.decide(method, self.path)
        where = endpoint(self.path)
        if fate == "refuse":
            proxy._count("refused", method, where)
            self._answer(503, "Service Unavailable", [("Content-Type", "text/plain")], b"proxy: refused")
            return
        try:
            status, reason, headers, data = proxy.forward(method, self.path, self._headers_out(), body)
        except OSError as exc:  # the server is down or broke the connection
            proxy._count("upstream", method, where)
            self._answer(502, "Bad Gateway", [("Content-Type", "text/plain")], f"proxy: {exc}".encode())
            return
        proxy._count("forwarded")
        if fate == "lose":
            closing = proxy.lose_by_closing()
            proxy._count("lost", method, where)
            proxy._count("lost_closed" if closing else "lost_503")
            if not closing:
                self._answer(503, "Service Unavailable", [("Content-Type", "text/plain")], b"proxy: lost")
            return  # closing: the handler ends without a byte; the server closes the socket
        if fate == "stall":
            proxy._count("stalled", method, where)
            if proxy._stopping.wait(proxy.stall_s):
                return
        kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        if method == "HEAD":  # no body; the length is the one the server announced
            length = next((v for k, v in headers if k.lower() == "content-length"), "0")
            self._answer(status, reason, kept, b"", length)
        else:
            self._answer(status, reason, kept, data)

    def _read_body(self) -> bytes | None:
        """The request's whole body (Content-Length or chunked), or None when it has none."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _headers_out(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]

    def _answer(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, length: str = ""
    ) -> None:
        """Send a whole answer with a Content-Length; a client that went away is fine."""
        try:
            self.send_response_only(status, reason)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", length or str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            pass
