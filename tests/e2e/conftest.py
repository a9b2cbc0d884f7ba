"""End-to-end fixtures: one Prefect test server per session, and databases in fresh namespaces."""

from __future__ import annotations

import contextlib
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

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from sandbox.cluster import Database, Sandbox
from sandbox.faultproxy import FaultProxy
from sandbox.prefect_stack import PrefectStack
from tasks.fleet import CONCURRENCY_LIMIT

DatabaseFactory = Callable[..., Database]


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[None]:
    # The flows these tests run in-process go without Prefect's flow heartbeat: its thread sleeps in
    # whole seconds and every flow ends by joining it, which would add up to a second to each of
    # the suite's ~200 runs (docs/performance.md). Nothing tested depends on it; the runs of the
    # real worker (tests of deployments, the fleet's trigger and the bridge) keep Prefect's default.
    with (
        prefect_test_harness(server_startup_timeout=90),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session", autouse=True)
def leak_checks(sandbox: Sandbox, prefect_api: None) -> Iterator[None]:
    """After the session's last end-to-end test (in each parallel worker: each has its own sandbox
    and Prefect server), no password anywhere and no ALTER LOGIN outside TLS (test_no_leaks.py)."""
    yield
    from tests.e2e import test_no_leaks

    test_no_leaks.check_no_alter_login_ever_reached_a_sql_instance_outside_tls(sandbox)
    test_no_leaks.check_no_password_appears_in_anything_the_session_captured(sandbox)


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


@pytest.fixture(scope="session")
def stack(sandbox: Sandbox) -> Iterator[PrefectStack]:
    """A real Prefect server (its own process and SQLite file), every deployment of prefect.yaml, and
    a process worker whose runs reach the sandbox: shared by the deployment and ops-request tests."""
    prefect = PrefectStack()
    try:
        prefect.start_server()
        prefect.deploy_all()
        # The recovery schedule would sweep every namespace of the session's sandbox, where other
        # tests' databases live; its crash trigger, which the self-healing test exercises, stays on.
        pause_schedules(prefect, "recover")
        prefect.start_worker(sandbox.kubeconfig)
        yield prefect
    finally:
        prefect.stop()


def pause_schedules(stack: PrefectStack, name: str) -> None:
    [deployment] = [d for d in stack.api("POST", "/deployments/filter", {}) if d["name"] == name]
    for schedule in deployment["schedules"]:
        stack.api("PATCH", f"/deployments/{deployment['id']}/schedules/{schedule['id']}", {"active": False})


@pytest.fixture
def fresh_concurrency_limit() -> Iterator[None]:
    """No shared concurrency limit of the fleet before or after the test (a fleet run creates it with
    its own size when it is missing)."""

    def drop() -> None:
        with get_client(sync_client=True) as prefect, contextlib.suppress(ObjectNotFound):
            prefect.delete_global_concurrency_limit_by_name(CONCURRENCY_LIMIT)

    drop()
    yield
    drop()
