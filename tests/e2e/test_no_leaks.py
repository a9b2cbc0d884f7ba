"""No secret value anywhere: every password the suite used is searched for in everything it captured.

Runs after every other test of the session (tests/conftest.py orders it last). The passwords are
all the sandbox ever saw — in any Secret, generated or user-supplied, and on any SQL instance.
"""

from __future__ import annotations

from collections.abc import Iterable

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter

from sandbox.cluster import Sandbox
from tests.conftest import CAPTURED
from tests.fault_matrix import proves

PAGE = 200


def prefect_records() -> Iterable[tuple[str, str]]:
    """(where, text) for every log line, artifact, flow-run parameter set and state message."""
    with get_client(sync_client=True) as prefect:
        offset = 0
        while logs := prefect.read_logs(log_filter=LogFilter(), limit=PAGE, offset=offset):
            yield from (("Prefect log", log.message) for log in logs)
            offset += PAGE
        offset = 0
        while artifacts := prefect.read_artifacts(limit=PAGE, offset=offset):
            yield from (("Prefect artifact", f"{a.data} {a.description}") for a in artifacts)
            offset += PAGE
        offset = 0
        while runs := prefect.read_flow_runs(limit=PAGE, offset=offset):
            for run in runs:
                yield "flow-run parameters", repr(run.parameters)
                yield "flow-run state message", (run.state.message or "") if run.state else ""
            offset += PAGE


def kubernetes_events(sandbox: Sandbox) -> Iterable[tuple[str, str]]:
    for event in sandbox.core.list_event_for_all_namespaces().items:
        yield "Kubernetes Event", f"{event.reason} {event.message}"


@proves(
    fault="every password the suite generated, supplied or set (in Secrets and on SQL instances)",
    where="searched for in captured stdout/stderr/logs of every test, Prefect logs, artifacts, flow-run "
    "parameters and state messages (exception texts), and Kubernetes Events",
    outcome="none appears anywhere",
)
def test_no_password_appears_in_anything_the_suite_captured(sandbox: Sandbox) -> None:
    passwords = sandbox.known_passwords()
    records = [
        *(("captured test output", text) for text in CAPTURED),
        *prefect_records(),
        *kubernetes_events(sandbox),
    ]

    leaks = sorted({where for where, text in records for password in passwords if password in text})

    assert len(passwords) > 10, "the suite should have used many passwords by now"
    assert len(records) > 100, "the suite should have captured plenty by now"
    assert leaks == [], f"a password appeared in: {leaks}"
