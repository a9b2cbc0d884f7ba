"""No secret value anywhere: every password the suite used is searched for in everything it captured,
and on the wire to SQL Server, where passwords may only ever travel inside TLS.

These checks run when a test session ends, after every other test of that session: in each worker
when the suite runs in parallel (each has its own sandbox and Prefect server), from the session
fixture ``leak_checks`` of tests/e2e/conftest.py; a leak fails the run as an error at that teardown,
naming where it was found (never the password). The passwords are all the sandbox ever saw — in
any Secret, generated or user-supplied, and on any SQL instance. The
wire is what a sniffer on the pod network would have read: every SQL instance of the session's
sandbox records what reached it outside TLS (LOGIN7 user names and passwords, de-obfuscated; batch
SQL; RPC payloads) and whether an ALTER LOGIN ever arrived outside TLS.
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
    fault="every password the session generated, supplied or set (in Secrets and on SQL instances)",
    where="searched for in captured stdout/stderr/logs of every test, Prefect logs, artifacts, flow-run "
    "parameters and state messages (exception texts), Kubernetes Events, and everything that reached a "
    "SQL instance outside TLS (the clear-text wire record, LOGIN7 passwords decoded)",
    outcome="none appears anywhere (checked when each test session, or parallel worker, ends)",
)
def check_no_password_appears_in_anything_the_session_captured(sandbox: Sandbox) -> None:
    passwords = sandbox.known_passwords()
    records = [
        *(("captured test output", text) for text in CAPTURED),
        *prefect_records(),
        *kubernetes_events(sandbox),
        *(("clear text on the wire to SQL Server", text) for text in sandbox.clear_text_wire()),
    ]

    leaks = sorted({where for where, text in records for password in passwords if password in text})

    assert passwords and records, "run after the session's tests: there must be something to search"
    assert leaks == [], f"a password appeared in: {leaks}"  # where only: the texts would show them
    assert sandbox.fleet.clear_text_dropped() == 0, "the clear-text wire record overflowed: widen it"


@proves(
    fault="every ALTER LOGIN the suite's rotations sent (the statement carries the new and old password)",
    where="the encryption record of every SQL instance of the session's sandbox",
    outcome="none arrived outside TLS (checked when each test session, or parallel worker, ends)",
)
def check_no_alter_login_ever_reached_a_sql_instance_outside_tls(sandbox: Sandbox) -> None:
    # An ALTER LOGIN carries the new password: outside TLS a sniffer on the pod network reads it.
    altered = [
        key
        for key, instance in sandbox.fleet.instances()
        if any(b.kind == "alter-login" for b in instance.batches)
    ]
    assert altered, "the checks run after the session's tests: some rotation must have run"
    assert sandbox.unencrypted_alter_logins() == [], "ALTER LOGIN arrived in clear text on these instances"
