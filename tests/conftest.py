"""Fixtures shared by the integration and end-to-end suites: one sandbox per test session.

Also the suite's guard against leaked secrets: everything tests capture (stdout, stderr, logs) is
kept for the leak checks of tests/e2e/test_no_leaks.py, which run when the session ends; and any
password the sandbox knows is blanked out of failure reports before pytest prints them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator

import pytest
from kubernetes import client

from sandbox.cluster import Sandbox, Settings

CAPTURED: list[str] = []  # what every test printed or logged, for the leak check
_RUNNING: list[Sandbox] = []  # the session's sandbox once it exists


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    CAPTURED.extend(text for _, text in report.sections)
    if report.failed and _RUNNING:
        # Assertion rewriting prints compared values; never let that print a password.
        text = str(report.longrepr)
        for password in _RUNNING[0].known_passwords():
            text = text.replace(password, "<redacted>")
        report.longrepr = text
    return report


def _worker_octet() -> int | None:
    """Under pytest-xdist (make test runs the suite in parallel workers gw0, gw1, ...), an IPv4 octet
    of the worker's own for its sandbox's pods; None (random) in a single process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return 100 + int(worker.removeprefix("gw")) if worker.startswith("gw") else None


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """A real kube-apiserver with the emulated KubeDB; KUBECONFIG points at it for the session."""
    previous = os.environ.get("KUBECONFIG")
    # Pods stop and start in 0.1 s rather than the sandbox's 0.2 / 0.3 s: what the tests check does
    # not depend on how long a restart takes (they wait for conditions), and the suite restarts
    # pods hundreds of times.
    # A restarted secondary catches up in 0.3 s rather than 1 s, for the same reason: a rotation of an
    # availability group waits for that before the primary's restart (tests that need longer set it).
    settings = Settings(
        pod_stop_delay=0.1, pod_start_delay=0.1, secondary_catch_up=0.3, ipv4_octet=_worker_octet()
    )
    with Sandbox(settings) as running:
        os.environ["KUBECONFIG"] = str(running.kubeconfig)
        _RUNNING.append(running)
        try:
            yield running
        finally:
            _RUNNING.clear()
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous


@pytest.fixture(autouse=True)
def _remove_the_tests_databases(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, delete the databases it created (not those of module or session fixtures,
    which exist before it starts): their SQL Servers would otherwise keep their threads and sockets
    until the session ends, hundreds of them."""
    if "sandbox" not in request.fixturenames:
        yield
        return
    sandbox: Sandbox = request.getfixturevalue("sandbox")
    before = sandbox.database_namespaces()
    yield
    for namespace in sorted(sandbox.database_namespaces() - before):
        sandbox.remove_databases(namespace)


@pytest.fixture
def namespace(sandbox: Sandbox) -> str:
    """A fresh namespace per test, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    sandbox.ensure_namespace(name)
    return name


@pytest.fixture(scope="session")
def core(sandbox: Sandbox) -> client.CoreV1Api:
    return sandbox.core


@pytest.fixture(scope="session")
def custom(sandbox: Sandbox) -> client.CustomObjectsApi:
    return sandbox.custom
