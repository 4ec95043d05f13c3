"""Test support (never imported by bm_ray): a fault-injecting reverse proxy in front of an S3 server.

:class:`FaultProxy` listens on a loopback port and forwards every HTTP request to the upstream server
(moto in server mode). At a seeded rate it injects, instead of forwarding, one of :data:`FAULT_KINDS`:

- ``http_500``: ``500 InternalError`` (S3's XML error body),
- ``http_503``: ``503 ServiceUnavailable``,
- ``slow_down``: ``503 SlowDown``, S3's throttling answer ("reduce your request rate"),
- ``reset``: the request is read, then the connection is reset (TCP RST, no answer at all),
- ``delay``: the request is forwarded, but only after :attr:`FaultProxy.delay_s` (a slow store, the
  answer is still right).

Errors are injected *before* the request reaches the server, as a throttling front end or a failing
load balancer answers: the server's state never changes behind a failed call, so a retried upload of
a multipart part or a ``CompleteMultipartUpload`` sees the same server the first try saw.

Every injected fault is counted per kind (:attr:`FaultProxy.injected`), so a test can report and
assert that faults really happened. :meth:`FaultProxy.failing` switches the proxy to answer every
call with an error (a store down for a while), or only the calls a predicate picks (one object that
cannot be read), for retry-exhaustion tests. Only loopback traffic: the proxy binds 127.0.0.1 and
forwards to a loopback upstream.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

FAULT_KINDS = ("http_500", "http_503", "slow_down", "reset", "delay")
"""What the proxy injects, picked uniformly among the kinds a proxy is given."""
ERROR_KINDS = ("http_500", "http_503", "slow_down")
"""The kinds that answer with an S3 error document (what `fail_all` answers, in turn)."""

_ERRORS = {
    "http_500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "http_503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)
_UPSTREAM_TIMEOUT_S = 30.0
"""A bound on every upstream call (moto answers in milliseconds; a hung upstream fails the call)."""


def _error_body(code: str, message: str, resource: str) -> bytes:
    """S3's XML error document (what the AWS SDK parses into an error name and decides retries on)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource>"
        "<RequestId>fault-proxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """A threaded loopback reverse proxy in front of `upstream` that injects faults at a seeded `rate`.

    Use it as a context manager (the server thread is started on entry and stopped on exit) or call
    :meth:`start` / :meth:`stop`. :attr:`endpoint` is the ``http://127.0.0.1:PORT`` clients talk to.
    Counters: :attr:`requests` (calls received), :attr:`injected` (faults by kind).
    """

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.05,
        seed: int = 0,
        kinds: tuple[str, ...] = FAULT_KINDS,
        delay_s: float = 0.2,
    ) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds must be among {FAULT_KINDS}, got {kinds}")
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the proxy forwards to loopback only, not {upstream}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.rate = rate
        self.kinds = tuple(kinds)
        self.delay_s = delay_s
        self.fail_all = False
        """When true every call (that :attr:`fail_match` picks, when set) is answered with an error of
        :data:`ERROR_KINDS` (in turn), counted."""
        self.fail_match: Callable[[str, str], bool] | None = None
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True  # a client holding a keep-alive connection never blocks stop()
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def total_injected(self) -> int:
        """All faults injected so far (every kind)."""
        with self._lock:
            return sum(self.injected.values())

    def counts(self) -> dict[str, int]:
        """A snapshot of the faults injected per kind (every kind listed, zeros included)."""
        with self._lock:
            return {kind: self.injected.get(kind, 0) for kind in FAULT_KINDS}

    def reset_counts(self) -> None:
        """Zero the counters (between phases of a test)."""
        with self._lock:
            self.requests = 0
            self.injected.clear()

    def start(self) -> FaultProxy:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (bounded wait for the server thread)."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def failing(self, match: Callable[[str, str], bool] | None = None) -> Iterator[FaultProxy]:
        """Within the block every call fails (a store that is down), or with `match` only the calls for
        which ``match(method, path)`` is true (the others get the usual seeded faults); healthy again on
        exit."""
        self.fail_match, self.fail_all = match, True
        try:
            yield self
        finally:
            self.fail_all, self.fail_match = False, None

    def _decide(self, method: str, path: str) -> str | None:
        """The fault to inject into the call `method path`, or None (forward it untouched); counts it."""
        with self._lock:
            self.requests += 1
            if self.fail_all and (self.fail_match is None or self.fail_match(method, path)):
                kind = ERROR_KINDS[self.requests % len(ERROR_KINDS)]
            elif self._rng.random() < self.rate:
                kind = self._rng.choice(self.kinds)
            else:
                return None
            self.injected[kind] += 1
            return kind

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the AWS SDK's connection pool expects
            timeout = 60  # an idle client connection is closed (no thread waits forever)

            def log_message(self, format: str, *args: object) -> None:
                """Silent: the tests report counts, not a line per call."""

            def _body(self) -> bytes:
                """The request body (Content-Length or chunked), read fully before anything is decided."""
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    for _ in range(1_000_000):  # bounded: a chunk per iteration, ends at the 0 chunk
                        size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reset(self) -> None:
                # SO_LINGER with a zero timeout makes close() send a RST instead of a FIN: the client
                # sees "connection reset by peer", as from a crashed load balancer.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                if self.command != "HEAD" or not any(n.lower() == "content-length" for n, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                kind = proxy._decide(self.command, self.path)
                if kind == "reset":
                    self._reset()
                    return
                if kind in _ERRORS:
                    status, code, message = _ERRORS[kind]
                    headers = [("Content-Type", "application/xml"), ("x-amz-request-id", "fault-proxy")]
                    self._answer(status, headers, _error_body(code, message, self.path.split("?")[0]))
                    return
                if kind == "delay":
                    time.sleep(proxy.delay_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers.pop("Expect", None)  # the 100-continue was answered here; moto gets the body at once
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=_UPSTREAM_TIMEOUT_S
                )
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                    if self.command != "HEAD":
                        kept = [(k, v) for k, v in kept if k.lower() != "content-length"]
                    self._answer(response.status, kept, data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        return Handler
