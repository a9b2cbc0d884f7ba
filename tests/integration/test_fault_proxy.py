"""The fault proxy in front of the sandbox's API server, through the official kubernetes client.

What the client does by itself (kubernetes 37 / urllib3 2, default configuration, measured here):
urllib3's default ``Retry(total=3)`` silently re-sends a request whose connection was dropped before
any response when the verb is idempotent in urllib3's sense (GET, PUT, DELETE, HEAD, OPTIONS), at
once and without backoff; POST and PATCH are not re-sent and raise ``ProtocolError``. An error
status is never retried by the client unless it carries ``Retry-After`` (and the proxy sends none).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from sandbox.cluster import Sandbox
from sandbox.faultproxy import FaultProxy

URLLIB3_DEFAULT_RETRIES = 3


@pytest.fixture
def proxy(sandbox: Sandbox) -> Iterator[FaultProxy]:
    running = sandbox.fault_proxy()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def core(sandbox: Sandbox, proxy: FaultProxy, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    """A CoreV1Api whose every request goes through the proxy, as the sandbox admin."""
    kubeconfig = proxy.kubeconfig(tmp_path / "kubeconfig", sandbox.control_plane.admin_token)
    with config.new_client_from_config(str(kubeconfig)) as api:
        yield client.CoreV1Api(api)


def _config_map(name: str, **data: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "data": data}


def test_requests_pass_through_unchanged_with_the_callers_token_and_body(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str, sandbox: Sandbox
) -> None:
    created = core.create_namespaced_config_map(namespace, _config_map("plain", greeting="hello"))
    read = core.read_namespaced_config_map("plain", namespace)

    assert read.data == {"greeting": "hello"}
    assert read.metadata.uid == created.metadata.uid
    # The object really is in the API server, not in some proxy state.
    assert sandbox.core.read_namespaced_config_map("plain", namespace).data == {"greeting": "hello"}
    assert proxy.hits("POST", f"/namespaces/{namespace}/configmaps$") == 1
    assert proxy.hits("GET", f"/namespaces/{namespace}/configmaps/plain$") == 1
    assert proxy.hits("*", f"/namespaces/{namespace}/") == 2


def test_a_watch_streams_events_as_they_happen(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str, sandbox: Sandbox
) -> None:
    start = core.list_namespaced_config_map(namespace).metadata.resource_version
    sandbox.core.create_namespaced_config_map(namespace, _config_map("first"))
    seen: list[tuple[str, str]] = []
    watcher = watch.Watch()
    # "second" is only created once "first" has arrived through the proxy, so it can only be seen
    # if the proxy streams the watch instead of buffering it until the server ends it.
    for event in watcher.stream(
        core.list_namespaced_config_map, namespace, resource_version=start, timeout_seconds=10
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "first":
            sandbox.core.create_namespaced_config_map(namespace, _config_map("second"))
        else:
            watcher.stop()

    assert seen == [("ADDED", "first"), ("ADDED", "second")]
    assert proxy.hits("GET", f"/namespaces/{namespace}/configmaps$") == 2  # the list, then the watch


def test_a_503_fault_answers_a_kubernetes_status_once_and_the_next_call_passes(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str
) -> None:
    core.create_namespaced_config_map(namespace, _config_map("flaky"))
    path = f"/namespaces/{namespace}/configmaps/flaky$"
    proxy.add_fault("GET", path, times=1, status=503)

    with pytest.raises(ApiException) as failed:
        core.read_namespaced_config_map("flaky", namespace)

    assert failed.value.status == 503
    status = json.loads(failed.value.body)
    assert status["kind"] == "Status" and status["apiVersion"] == "v1" and status["status"] == "Failure"
    assert status["code"] == 503 and status["reason"] == "ServiceUnavailable"
    assert proxy.hits("GET", path) == 1  # the client did not retry the 503 by itself
    assert core.read_namespaced_config_map("flaky", namespace).metadata.name == "flaky"
    assert proxy.hits("GET", path) == 2


def test_a_dropped_connection_is_resent_by_urllib3_for_get_but_surfaces_for_post(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str, sandbox: Sandbox
) -> None:
    core.create_namespaced_config_map(namespace, _config_map("dropped"))
    read_path = f"/namespaces/{namespace}/configmaps/dropped$"

    # One drop on a GET: urllib3 re-sends it at once; the caller never notices.
    proxy.add_fault("GET", read_path, times=1, drop=True)
    assert core.read_namespaced_config_map("dropped", namespace).metadata.name == "dropped"
    assert proxy.hits("GET", read_path) == 2

    # More drops than urllib3's retry budget: the caller gets MaxRetryError (a urllib3 HTTPError).
    proxy.add_fault("GET", read_path, times=URLLIB3_DEFAULT_RETRIES + 1, drop=True)
    with pytest.raises(urllib3.exceptions.MaxRetryError) as exhausted:
        core.read_namespaced_config_map("dropped", namespace)
    assert isinstance(exhausted.value.reason, urllib3.exceptions.ProtocolError)
    assert proxy.hits("GET", read_path) == 2 + URLLIB3_DEFAULT_RETRIES + 1

    # One drop on a POST: not re-sent (not idempotent); nothing reached the API server.
    create_path = f"/namespaces/{namespace}/configmaps$"
    proxy.add_fault("POST", create_path, times=1, drop=True)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        core.create_namespaced_config_map(namespace, _config_map("never"))
    assert proxy.hits("POST", create_path) == 2  # the create of "dropped" above, and this one once
    names = [cm.metadata.name for cm in sandbox.core.list_namespaced_config_map(namespace).items]
    assert "never" not in names


def test_a_lost_response_means_the_change_was_made_but_the_caller_cannot_know(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str, sandbox: Sandbox
) -> None:
    create_path = f"/namespaces/{namespace}/configmaps$"
    proxy.add_fault("POST", create_path, times=1, drop_response=True)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        core.create_namespaced_config_map(namespace, _config_map("made", k="v"))
    assert proxy.hits("POST", create_path) == 1  # not re-sent (not idempotent)
    made = sandbox.core.read_namespaced_config_map("made", namespace)  # the API server did it
    assert made.data == {"k": "v"}


def test_a_delay_fault_holds_the_request_then_forwards_it(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str
) -> None:
    core.create_namespaced_config_map(namespace, _config_map("slow", k="v"))
    path = f"/namespaces/{namespace}/configmaps/slow$"
    proxy.add_fault("GET", path, times=1, delay=0.3)

    began = time.monotonic()
    read = core.read_namespaced_config_map("slow", namespace)
    elapsed = time.monotonic() - began

    assert read.data == {"k": "v"}
    assert elapsed >= 0.3
    assert proxy.hits("GET", path) == 1


def test_stop_ends_open_watches_refuses_new_connections_and_is_idempotent(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str, sandbox: Sandbox
) -> None:
    outcome: list[BaseException | None] = []

    def watch_until_closed() -> None:
        try:
            for _ in watch.Watch().stream(
                core.list_namespaced_config_map, namespace, timeout_seconds=30, _request_timeout=(5, 35)
            ):
                pass
            outcome.append(None)
        except Exception as exc:  # what a client sees when the proxy goes away mid-watch
            outcome.append(exc)

    thread = threading.Thread(target=watch_until_closed, daemon=True)
    thread.start()
    watch_path = f"/namespaces/{namespace}/configmaps$"
    sandbox.wait_for(lambda: proxy.hits("GET", watch_path) == 1, "the watch to reach the proxy")
    port = int(proxy.url.rsplit(":", 1)[1])

    proxy.stop()
    proxy.stop()
    thread.join(timeout=10)

    assert not thread.is_alive(), "the watch through the proxy did not end when the proxy stopped"
    assert len(outcome) == 1 and isinstance(outcome[0], urllib3.exceptions.ProtocolError), outcome
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_sever_cuts_open_watches_like_an_api_server_restart_and_keeps_serving(
    core: client.CoreV1Api, proxy: FaultProxy, namespace: str, sandbox: Sandbox
) -> None:
    outcome: list[BaseException | None] = []

    def watch_until_cut() -> None:
        try:
            for _ in watch.Watch().stream(
                core.list_namespaced_config_map, namespace, timeout_seconds=30, _request_timeout=(5, 35)
            ):
                pass
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=watch_until_cut, daemon=True)
    thread.start()
    watch_path = f"/namespaces/{namespace}/configmaps$"
    sandbox.wait_for(lambda: proxy.hits("GET", watch_path) == 1, "the watch to reach the proxy")

    assert proxy.sever() >= 1
    thread.join(timeout=10)

    assert not thread.is_alive(), "the watch through the proxy was not cut"
    assert len(outcome) == 1 and isinstance(outcome[0], urllib3.exceptions.ProtocolError), outcome
    assert core.list_namespaced_config_map(namespace).items == []  # the proxy still serves
