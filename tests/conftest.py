"""Fixtures shared by the integration and end-to-end suites: one sandbox per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from sandbox.cluster import Sandbox, Settings


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """A real kube-apiserver with the emulated KubeDB; KUBECONFIG points at it for the session."""
    previous = os.environ.get("KUBECONFIG")
    with Sandbox(Settings()) as running:
        os.environ["KUBECONFIG"] = str(running.kubeconfig)
        try:
            yield running
        finally:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous


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
