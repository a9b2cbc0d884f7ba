"""A local webhook receiver: where the sandbox's notifications arrive instead of Slack or PagerDuty.

An HTTP server on 127.0.0.1 (a free port the OS picks) that records every request it gets and answers
200. Prefect's ``custom-webhook`` notification block, pointed at :attr:`WebhookReceiver.url` with
:data:`BLOCK_JSON` as its JSON body, posts ``{"subject": ..., "body": ...}`` for every notification,
so a caller can wait for the one it expects (:meth:`WebhookReceiver.wait_for`) and ``make stack``
prints each as it comes (``on_request``).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

# What the custom-webhook block sends: its {{subject}} and {{body}} placeholders, filled by Prefect.
BLOCK_JSON: Final = {"subject": "{{subject}}", "body": "{{body}}"}
MAX_BODY: Final = 1 << 20


@dataclass(frozen=True)
class Received:
    """One request: its method, path and body (text), when it came, and the notification it carries."""

    method: str
    path: str
    text: str
    at: dt.datetime

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    @property
    def subject(self) -> str:
        data = self.json
        return str(data.get("subject", "")) if isinstance(data, dict) else ""

    @property
    def body(self) -> str:
        data = self.json
        return str(data.get("body", "")) if isinstance(data, dict) else self.text

    def mentions(self, text: str) -> bool:
        return text in self.subject or text in self.body


class WebhookReceiver:
    """Start with ``with WebhookReceiver() as receiver:`` (or ``start``/``stop``)."""

    def __init__(self, on_request: Callable[[Received], None] | None = None) -> None:
        self._on_request = on_request
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the webhook receiver is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/notify"

    @property
    def received(self) -> list[Received]:
        with self._changed:
            return list(self._received)

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
                text = self.rfile.read(length).decode("utf-8", errors="replace")
                receiver._add(Received(self.command, self.path, text, dt.datetime.now(dt.UTC)))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _record

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the caller decides what to print."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _add(self, request: Received) -> None:
        with self._changed:
            self._received.append(request)
            self._changed.notify_all()
        if self._on_request is not None:
            self._on_request(request)

    def wait_for(self, predicate: Callable[[Received], bool], what: str, timeout: float = 60.0) -> Received:
        """The first request (received so far or later) for which ``predicate`` holds; TimeoutError
        naming ``what`` and how many requests came otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((r for r in self._received if predicate(r)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no notification {what} within {timeout:.0f}s ({len(self._received)} other(s) came)"
                    )
                self._changed.wait(left)
