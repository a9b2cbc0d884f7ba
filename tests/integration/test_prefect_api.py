"""Prefect's API as a trust boundary (deployments/prefect-server.yaml), on this machine and on the
sandbox's API server.

The server runs the manifest's own container command (uvicorn serving Prefect's app over TLS, with
PREFECT_SERVER_API_AUTH_STRING), only its paths and address swapped for local ones, with Prefect 3.9.1
as installed: a client without the auth string, or with another one, is refused (401); Prefect's own
client with it, trusting the CA, works; nothing is served in clear text. The manifests are validated
by the API server (server-side dry run).
"""

from __future__ import annotations

import base64
import os
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_URL,
    temporary_settings,
)

from sandbox.cluster import Sandbox
from sandbox.controlplane import free_port
from sandbox.processes import ProcessGroup
from sandbox.sqlserver.certs import issue_server_certificate, make_ca

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"
SERVER_YAML = DEPLOYMENTS / "prefect-server.yaml"
STARTUP_S = 90.0  # measured about 9 s on 2 cores (platform notes); generous for a shared machine


def manifests() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(SERVER_YAML.read_text()) if doc]


def container() -> dict[str, Any]:
    [deployment] = [d for d in manifests() if d["kind"] == "Deployment"]
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    return server  # type: ignore[no-any-return]


@dataclass
class Server:
    url: str
    ca_file: Path
    auth: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("prefect-api")
    ca = make_ca("prefect-api-test-ca")
    ca.write(home / "ca.crt", home / "ca.key")
    issue_server_certificate(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"]).write(
        home / "tls.crt", home / "tls.key"
    )
    port = free_port()
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--ssl-certfile": str(home / "tls.crt"),
        "--ssl-keyfile": str(home / "tls.key"),
    }
    spec = container()
    argv = [*spec["command"], *spec.get("args", [])]
    assert argv[0] == "python"
    argv = [sys.executable] + [local.get(argv[i - 1], arg) for i, arg in enumerate(argv) if i > 0]
    assert all(value in argv for value in local.values()), argv  # the manifest still has those flags
    auth = f"rotation:{secrets.token_urlsafe(24)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    processes = ProcessGroup(home)
    proc = processes.spawn("prefect-server", argv, env=env)
    running = Server(f"https://127.0.0.1:{port}/api", home / "ca.crt", auth)
    try:
        deadline = time.monotonic() + STARTUP_S
        while status(running, "/health") != 200:
            assert proc.poll() is None, (home / "prefect-server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the Prefect server did not become healthy"
            time.sleep(0.2)  # an HTTP health endpoint: nothing to watch
        yield running
    finally:
        processes.stop()


def status(server: Server, path: str, auth: str | None = None, scheme: str = "https") -> int:
    """The HTTP status of GET ``path`` (0: no HTTP answer at all)."""
    url = server.url.replace("https://", f"{scheme}://") + path
    request = urllib.request.Request(url)  # noqa: S310 (a local test server)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    context = ssl.create_default_context(cafile=str(server.ca_file))
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as reply:  # noqa: S310
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


@pytest.mark.parametrize("path", ["/admin/version", "/work_pools/mssql-auth-rotation-k8s"])
def test_the_api_refuses_every_request_without_the_auth_string(server: Server, path: str) -> None:
    assert status(server, path) == 401
    assert status(server, path, auth="rotation:wrong") == 401
    assert status(server, path, auth=server.auth) in (200, 404)  # past the check: answered
    assert status(server, "/health") == 200  # probes go without it


def test_prefects_client_needs_the_auth_string_and_trusts_only_the_named_ca(server: Server) -> None:
    def pools(settings: dict[Any, Any]) -> int:
        with (
            temporary_settings({PREFECT_API_URL: server.url, **settings}),
            get_client(sync_client=True) as prefect,
        ):
            return len(prefect.read_work_pools())

    ca, auth = {PREFECT_API_SSL_CERT_FILE: str(server.ca_file)}, {PREFECT_API_AUTH_STRING: server.auth}
    assert pools(ca | auth) == 0
    with pytest.raises(PrefectHTTPStatusError, match="401"):
        pools(ca)
    with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        pools(auth)  # the system's CAs do not vouch for it


def test_nothing_is_served_in_clear_text(server: Server) -> None:
    assert status(server, "/health", scheme="http") == 0
    assert status(server, "/admin/version", auth=server.auth, scheme="http") == 0


def test_the_server_manifests_are_accepted_by_the_api_server(sandbox: Sandbox) -> None:
    docs = manifests()
    [namespace] = [d for d in docs if d["kind"] == "Namespace"]
    try:
        client.CoreV1Api(sandbox.api).create_namespace(namespace)
    except ApiException as exc:
        if exc.status != 409:
            raise
    for doc in docs:
        if doc["kind"] != "Namespace":
            utils.create_from_dict(sandbox.api, doc, dry_run="All")  # validated, nothing stored
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "mssql-auth-rotation"}
    [components] = peer["podSelector"]["matchExpressions"]
    assert components["values"] == ["worker", "bridge", "flow-run"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 4200}]
    env = {e["name"]: e for e in container()["env"]}
    assert env["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["name"] == "prefect-api-auth"
