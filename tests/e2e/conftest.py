"""End-to-end fixtures: one Prefect test server per session, and databases in fresh namespaces."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Before Prefect is imported: these server services contend for SQLite under the test harness and
# stall flow-run creation by seconds (see shared/reference/platform-notes.md); the tests read
# logs and artifacts, which do not depend on them.
os.environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED"] = "false"
os.environ["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED"] = "false"
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.testing.utilities import prefect_test_harness

from sandbox.cluster import Database, Sandbox
from sandbox.faultproxy import FaultProxy

DatabaseFactory = Callable[..., Database]


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def make_database(sandbox: Sandbox) -> DatabaseFactory:
    """Create a Ready database in a namespace of its own."""

    def make(replicas: int = 3, password: str | None = None, **options: Any) -> Database:
        namespace = f"e2e-{uuid.uuid4().hex[:8]}"
        return sandbox.create_database(
            namespace, f"ms-{uuid.uuid4().hex[:6]}", replicas=replicas, password=password, **options
        )

    return make


@pytest.fixture
def proxy(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The flow reaches the API server through a fault proxy (a new KUBECONFIG: a fresh client)."""
    running = sandbox.fault_proxy()
    kubeconfig = running.kubeconfig(tmp_path / "kubeconfig", sandbox.control_plane.admin_token)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    try:
        yield running
    finally:
        running.stop()
