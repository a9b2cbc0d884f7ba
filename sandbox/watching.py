"""A list-then-watch loop over one resource in all namespaces, on its own thread.

The emulated controllers are driven only by what the API server says, like real ones: every event
(with its raw JSON object) goes to a handler. The loop resumes from the last resourceVersion and
relists on 410 Gone.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("sandbox")

Handler = Callable[[str, dict[str, Any]], None]
# A watch request ends after this many seconds so the thread notices a stop request promptly.
WATCH_WINDOW_S = 1


class ResourceWatcher(threading.Thread):
    def __init__(self, name: str, list_fn: Callable[..., Any], handler: Handler, **list_kwargs: Any) -> None:
        super().__init__(name=f"watch-{name}", daemon=True)
        self._list_fn = list_fn
        self._handler = handler
        self._kwargs = list_kwargs
        self._stopping = threading.Event()
        self.synced = threading.Event()
        self._handled = threading.Condition()
        self._handled_version = 0  # resourceVersion of the last event the handler finished

    def wait_handled(self, resource_version: int, timeout: float) -> bool:
        """Block until every event up to ``resource_version`` has gone through the handler."""
        with self._handled:
            return self._handled.wait_for(lambda: self._handled_version >= resource_version, timeout)

    def _mark_handled(self, resource_version: str) -> None:
        with self._handled:
            self._handled_version = max(self._handled_version, int(resource_version))
            self._handled.notify_all()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        resource_version = ""
        while not self._stopping.is_set():
            try:
                if not resource_version:
                    resource_version = self._relist()
                resource_version = self._watch_once(resource_version)
            except ApiException as exc:
                if exc.status == 410:
                    resource_version = ""
                    continue
                if not self._stopping.is_set():
                    log.warning("watch %s failed: %s", self.name, exc.reason)
                    self._stopping.wait(0.2)
            except Exception as exc:  # the API server went away (shutdown) or a handler bug
                if not self._stopping.is_set():
                    log.exception("watch %s failed: %s", self.name, exc)
                    self._stopping.wait(0.2)

    def _relist(self) -> str:
        listing = self._list_fn(_preload_content=False, **self._kwargs)
        body = json.loads(listing.data)
        for item in body.get("items", []):
            self._handler("ADDED", item)
        version = str(body["metadata"]["resourceVersion"])
        self._mark_handled(version)
        self.synced.set()
        return version

    def _watch_once(self, resource_version: str) -> str:
        stream = watch.Watch().stream(
            self._list_fn,
            resource_version=resource_version,
            timeout_seconds=WATCH_WINDOW_S,
            allow_watch_bookmarks=True,
            **self._kwargs,
        )
        for event in stream:
            raw = event["raw_object"]
            resource_version = str(raw.get("metadata", {}).get("resourceVersion", resource_version))
            if event["type"] == "ERROR":
                if raw.get("code") == 410:
                    return ""
                continue
            if event["type"] == "BOOKMARK":
                continue
            self._handler(event["type"], raw)
            self._mark_handled(resource_version)
            if self._stopping.is_set():
                break
        return resource_version
