"""The bridge writes only the MSSQLServerOpsRequests it owns (rotation/bridge/cluster.py): RBAC cannot
limit its patches to them, so any other write is refused before a byte is sent.

The client points at a port nobody listens on: a write that were sent fails with TransientError
("could not be reached"), so a NotOurs proves nothing was sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rotation.bridge.cluster import NotOurs, OpsRequests
from rotation.errors import TransientError
from rotation.ops_request import EXECUTOR, EXECUTOR_ANNOTATION

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: nobody, user: {token: not-a-token}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody}}]
current-context: nowhere
"""


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def request(type_: str, *, annotated: bool) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "sales",
            "name": "req",
            "uid": "u-1",
            "resourceVersion": "7",
            "annotations": {EXECUTOR_ANNOTATION: EXECUTOR} if annotated else {},
        },
        "spec": {"type": type_, "databaseRef": {"name": "orders"}},
    }


@pytest.mark.usefixtures("nowhere")
@pytest.mark.parametrize(
    ("obj", "take_all"),
    [
        (request("Restart", annotated=True), False),
        (request("Restart", annotated=True), True),
        (request("RotateAuth", annotated=False), False),
    ],
    ids=["other-type-annotated", "other-type-with-all", "rotate-auth-not-annotated"],
)
def test_a_request_the_bridge_does_not_own_is_never_written(obj: dict[str, Any], take_all: bool) -> None:
    requests = OpsRequests("sales", take_all=take_all)

    with pytest.raises(NotOurs, match=r"refused to update the status of MSSQLServerOpsRequest sales/req"):
        requests.patch_status(obj, {"phase": "Failed"})
    with pytest.raises(NotOurs, match=r"nothing was written"):
        requests.patch_metadata(obj, {"finalizers": []})


@pytest.mark.usefixtures("nowhere")
@pytest.mark.parametrize(
    ("obj", "take_all"),
    [(request("RotateAuth", annotated=True), False), (request("RotateAuth", annotated=False), True)],
    ids=["annotated", "with-all"],
)
def test_a_request_the_bridge_owns_is_written(obj: dict[str, Any], take_all: bool) -> None:
    with pytest.raises(TransientError, match="could not be reached"):  # sent: nobody answers
        OpsRequests("sales", take_all=take_all).patch_status(obj, {"phase": "Pending"})
