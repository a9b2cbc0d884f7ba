"""A fault-injecting TLS reverse proxy between a Kubernetes client and the sandbox's kube-apiserver.

A client whose kubeconfig points at the proxy (``FaultProxy.kubeconfig``) talks to the real API server
through it. Rules added with ``add_fault`` make matching requests fail: an error answer with a
Kubernetes ``Status`` body (503, 409, 403, ...), a connection closed without any response, an empty
200 (a watch that ends at once), or a delay before the request is forwarded. Everything else passes
through unchanged (method, path and query, headers including Authorization, body) and each response
is streamed back as it arrives, so watches work through the proxy.

One thread per client connection (``ThreadingHTTPServer``) and one upstream TLS connection per
request. Plain HTTP/1.1 requests only: no connection upgrades (exec, attach, port-forward) and no
chunked request bodies, neither of which the rotation uses.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from sandbox.controlplane import write_kubeconfig
from sandbox.pki import issue_serving_cert

log = logging.getLogger(__name__)

# Headers that describe one connection, not the message: never passed on (RFC 9110 §7.6.1).
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
# metav1.StatusReason for the codes tests inject (k8s.io/apimachinery/pkg/apis/meta/v1/types.go).
STATUS_REASONS: Final = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
HANDSHAKE_TIMEOUT_S: Final = 5.0
UPSTREAM_CONNECT_TIMEOUT_S: Final = 5.0
STOP_TIMEOUT_S: Final = 5.0
COPY_SIZE: Final = 64 * 1024


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    remaining: int
    status: int | None
    drop: bool
    delay: float
    body_reason: str
    empty: bool = False
    query: re.Pattern[str] | None = None
    drop_response: bool = False

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method)
            and self.path.search(path) is not None
            and (self.query is None or self.query.search(query) is not None)
        )


class FaultProxy:
    """``start()`` it, point a kubeconfig at ``url``, add faults; ``stop()`` closes everything.

    ``ca_cert`` verifies the upstream API server, and its key (``ca.key`` next to it, as
    ``sandbox.pki`` writes it) signs the proxy's own serving certificate for 127.0.0.1, so clients
    verify the proxy with the same CA file. The proxy's certificate and key are written to
    ``pki_dir``, which should be a folder of its own.
    """

    def __init__(self, upstream: str, ca_cert: Path, pki_dir: Path) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "https" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be https://host:port, not {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.ca_cert = ca_cert
        self.pki_dir = pki_dir
        self._upstream_tls = ssl.create_default_context(cafile=str(ca_cert))
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._seen: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._sockets: set[socket.socket] = set()  # open client and upstream connections
        self._idle = threading.Condition(self._lock)  # notified when a socket is untracked
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        cert, key = self.pki_dir / "faultproxy.crt", self.pki_dir / "faultproxy.key"
        issue_serving_cert(self.ca_cert, self.ca_cert.with_name("ca.key"), cert, key, "sandbox-faultproxy")
        serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        serving.load_cert_chain(cert, key)
        self._server = _Server(self, serving)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection (watches included); idempotent."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            for sock in self._sockets:
                _shut(sock)
            # Handler threads close their own sockets once their blocking calls fail.
            self._idle.wait_for(lambda: not self._sockets, timeout=STOP_TIMEOUT_S)
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(
        self, path: Path, token: str, *, user: str = "faultproxy", namespace: str = "default"
    ) -> Path:
        """Write a kubeconfig that reaches the API server through the proxy, authenticating with ``token``."""
        return write_kubeconfig(
            path, server=self.url, ca_cert=self.ca_cert, user=user, token=token, namespace=namespace
        )

    # -- faults ------------------------------------------------------------------------------
    def add_fault(
        self,
        method: str,
        path_regex: str,
        *,
        times: int,
        status: int | None = None,
        drop: bool = False,
        empty: bool = False,
        drop_response: bool = False,
        delay: float = 0.0,
        body_reason: str = "",
        query_regex: str | None = None,
    ) -> None:
        """The next ``times`` requests with this method ("*": any) whose path (without the query)
        contains a match of ``path_regex`` (and whose query matches ``query_regex``, if given) are
        answered ``status`` with a ``Status`` body, or dropped without a response, or answered an
        empty 200 (``empty``: a watch that ends at once, with no event), or forwarded and then
        dropped before the response reaches the client (``drop_response``: the change is made but
        the client cannot know), or forwarded after ``delay``
        seconds (a delay may precede any fault). Rules are consulted in the order they were added;
        each request consumes at most one.
        """
        if sum((status is not None, drop, empty, drop_response)) > 1:
            raise ValueError("a fault answers a status, drops the connection or answers empty: one of them")
        if status is None and not (drop or empty or drop_response) and delay <= 0:
            raise ValueError("a fault needs a status, drop, empty, drop_response or a delay")
        if times < 1:
            raise ValueError("times must be at least 1")
        query = re.compile(query_regex) if query_regex is not None else None
        rule = _Fault(
            method.upper(),
            re.compile(path_regex),
            times,
            status,
            drop,
            delay,
            body_reason,
            empty,
            query,
            drop_response=drop_response,  # once forgotten here, and the fault silently forwarded
        )
        with self._lock:
            self._faults.append(rule)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def sever(self) -> int:
        """Cut every open connection, watches included, as an API server restart does; the
        listener stays. Returns how many sockets were cut."""
        with self._lock:
            for sock in self._sockets:
                _shut(sock)
            return len(self._sockets)

    def hits(self, method: str, path_regex: str) -> int:
        """How many requests matching (as in ``add_fault``) the proxy has seen, forwarded or faulted."""
        pattern, wanted = re.compile(path_regex), method.upper()
        with self._lock:
            return sum(1 for m, p in self._seen if wanted in ("*", m) and pattern.search(p))

    def _take(self, method: str, path: str, query: str) -> _Fault | None:
        """Record one request and consume one use of the first fault it matches."""
        with self._lock:
            self._seen.append((method, path))
            for rule in self._faults:
                if rule.matches(method, path, query):
                    rule.remaining -= 1
                    return rule
        return None

    # -- connection bookkeeping (used by the handler threads) -----------------------------------
    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            stopping = self._stopping.is_set()
        if stopping:  # stop() may already have shut the others down
            _shut(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.close()
        with self._lock:
            self._sockets.discard(sock)
            self._idle.notify_all()


def _shut(sock: socket.socket) -> None:
    """Wake any thread blocked on the socket. The plain-socket shutdown leaves a TLS object alone."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # stop() waits for the connections instead, with a bound

    def __init__(self, proxy: FaultProxy, tls: ssl.SSLContext) -> None:
        self.proxy = proxy
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, not in the accept loop.
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # the raw socket is closed by shutdown_request
        conn.settimeout(None)
        self.proxy._track(conn)
        try:
            super().finish_request(conn, client_address)
        finally:
            self.proxy._untrack(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("faultproxy: connection from %s failed", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with the client, as the kubernetes client expects
    server: _Server

    def _proxy(self) -> None:
        proxy = self.server.proxy
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(501, "chunked request bodies are not supported by the fault proxy")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = urlsplit(self.path)
        fault = proxy._take(self.command, target.path, target.query)
        if fault is not None and fault.delay > 0 and proxy._stopping.wait(fault.delay):
            self._drop()
            return
        if fault is not None and fault.drop:
            self._drop()
        elif fault is not None and fault.status is not None:
            self._answer_status(fault.status, fault.body_reason)
        elif fault is not None and fault.empty:
            self._answer_empty()
        else:
            self._forward(body, relay=fault is None or not fault.drop_response)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _proxy

    def _drop(self) -> None:
        """Close the connection without a byte of response (no TLS close_notify either)."""
        self.close_connection = True
        _shut(self.connection)

    def _answer_status(self, status: int, body_reason: str) -> None:
        reason = body_reason or STATUS_REASONS.get(status, "InternalError")
        body = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"{reason}: injected by the sandbox fault proxy",
                "reason": reason,
                "code": status,
            }
        ).encode()
        # No Retry-After header: urllib3 would then retry a 429/503 of an idempotent verb by itself.
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer_empty(self) -> None:
        self.send_response_only(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _forward(self, body: bytes, *, relay: bool = True) -> None:
        proxy = self.server.proxy
        upstream = http.client.HTTPSConnection(
            proxy.upstream_host,
            proxy.upstream_port,
            context=proxy._upstream_tls,
            timeout=UPSTREAM_CONNECT_TIMEOUT_S,
        )
        try:
            upstream.connect()
        except OSError as exc:
            log.warning("faultproxy: cannot reach %s: %s", proxy.upstream_host, exc)
            self._answer_status(502, "InternalError")
            return
        assert upstream.sock is not None
        upstream.sock.settimeout(None)  # a watch may stay quiet for as long as the client allows
        proxy._track(upstream.sock)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            if relay:
                self._relay(response)
            else:
                response.read()  # the upstream change is complete; the client never hears of it
                self._drop()
        except OSError:  # either side went away (or stop()): the client sees a closed connection
            self.close_connection = True
        finally:
            proxy._untrack(upstream.sock)
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Stream the upstream response to the client: same length framing, or re-chunked."""
        no_body = self.command == "HEAD" or response.status in (204, 304)
        sized = no_body or (response.length is not None and not response.chunked)
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        if not sized:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            return
        while data := response.read1(COPY_SIZE):
            self.wfile.write(data if sized else b"%x\r\n%s\r\n" % (len(data), data))
        if not sized:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("faultproxy: " + format, *args)
