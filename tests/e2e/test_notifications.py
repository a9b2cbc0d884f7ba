"""Failures reach a person: deployments/automations/notify-failures.yaml on a real Prefect server.

The session's local stack (a Prefect server, its automations services and a process worker) gets the
notifications installed the way an operator installs them (``python -m rotation notifications --block
custom-webhook/...``), their block pointing at a local webhook receiver (sandbox/webhook_receiver.py).
Each test makes a run fail, crash or leave its database paused and waits for the message it should
cause. The automations are removed when the module ends: the stack is shared with other tests.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import rotation.events
from flows.rotate_auth import rotate_mssql_auth
from rotation.errors import PermanentError
from rotation.notifications import AUTOMATIONS_FILE, parse_automations
from sandbox.cluster import Database, Sandbox
from sandbox.faultproxy import FaultProxy
from sandbox.prefect_stack import PrefectStack
from sandbox.webhook_receiver import Received, WebhookReceiver
from tests.e2e.conftest import DatabaseFactory
from tests.e2e.test_deployments import deployments, flow_run_pid, healed, wait_for_runs
from tests.support import assert_rotated, is_paused

NOTIFY_TIMEOUT_S = 120.0
NAMES = [a["name"] for a in parse_automations(AUTOMATIONS_FILE.read_text(), str(AUTOMATIONS_FILE))]


@pytest.fixture(scope="module")
def alerts(stack: PrefectStack) -> Iterator[WebhookReceiver]:
    """The notifications installed on the stack, through a custom-webhook block to a local receiver."""
    block = f"custom-webhook/e2e-alerts-{uuid.uuid4().hex[:6]}"
    with WebhookReceiver() as receiver:
        stack.save_webhook_block(block, receiver.url)
        installed = stack.install_notifications(block)
        assert installed.count("created automation") == len(NAMES), installed
        try:
            yield receiver
        finally:
            for automation in stack.api("POST", "/automations/filter", {}):
                if automation["name"] in NAMES:
                    stack.api("DELETE", f"/automations/{automation['id']}")
            slug, _, name = block.partition("/")
            found = stack.api("GET", f"/block_types/slug/{slug}/block_documents/name/{name}")
            stack.api("DELETE", f"/block_documents/{found['id']}")


def start_manual(stack: PrefectStack, parameters: dict[str, str]) -> str:
    manual = deployments(stack)["manual"]
    run = stack.api("POST", f"/deployments/{manual['id']}/create_flow_run", {"parameters": parameters})
    return str(run["id"])


def about(received: list[Received], text: str) -> list[Received]:
    return [r for r in received if r.mentions(text)]


def assert_no_password(sandbox: Sandbox, received: list[Received]) -> None:
    passwords = sandbox.known_passwords()
    assert passwords
    leaked = [r.subject for r in received for password in passwords if password in r.text]
    assert leaked == [], "a notification carried a password"  # which, never the password itself


def test_a_failed_rotation_tells_the_database_the_step_the_error_and_the_runs_link_once(
    stack: PrefectStack, alerts: WebhookReceiver, make_database: DatabaseFactory, sandbox: Sandbox
) -> None:
    db = make_database(replicas=2)
    db.instance(f"{db.name}-1").faults.reject_password_changes = True  # a stricter password policy there
    ref = f"{db.namespace}/{db.name}"

    run_id = start_manual(stack, {"namespace": db.namespace, "database": db.name})
    note = alerts.wait_for(lambda r: r.mentions(ref), f"about {ref}", timeout=NOTIFY_TIMEOUT_S)

    run = wait_for_runs(stack, [run_id])[run_id]
    assert run["state_type"] == "FAILED"
    assert note.subject == f"[mssql-auth-rotation] FAILED: rotation of {ref} at step UpdateCredential"
    lines = dict(line.split(":", 1) for line in note.body.splitlines() if line[:1].isupper() and ":" in line)
    assert lines["Database"].strip() == f"{ref} (namespace/name)"
    assert lines["Step"].strip().startswith("UpdateCredential ")
    error = lines["Error"].strip()
    assert f"{db.name}-1" in error and "refused the new password" in error
    assert error in run["state"]["message"]  # the run's own error, word for word
    assert lines["Run"].strip() == f"rotate-auth {ref}"
    assert lines["Link"].strip() == f"{stack.ui_url}/runs/flow-run/{run_id}"
    # One failure, one message so far (tests/unit/test_notifications.py proves against Prefect's own
    # trigger matching that no automation but the rotation event's covers this run's Failed state).
    assert about(alerts.received, ref) == [note]
    assert_no_password(sandbox, alerts.received)
    # The event is emitted by the flow itself, before its run ends: a negative delay is usual.
    delay = (note.at - dt.datetime.fromisoformat(run["end_time"])).total_seconds()
    print(f"notified {delay:+.1f} s from the run's end")  # the measured number, for docs/notifications.md


def test_a_rotation_whose_parameters_are_refused_before_its_first_step_is_told_too(
    stack: PrefectStack, alerts: WebhookReceiver, sandbox: Sandbox
) -> None:
    """A 5 s timeout passes the deployment's schema but not the flow's own check: the run fails before
    any step, so it emits no rotation event; its Failed state is what notifies."""
    namespace, database = f"nowhere-{uuid.uuid4().hex[:6]}", "ms-never"
    ref = f"{namespace}/{database}"

    run_id = start_manual(stack, {"namespace": namespace, "database": database, "timeout": "5s"})
    note = alerts.wait_for(lambda r: r.mentions(ref), f"about {ref}", timeout=NOTIFY_TIMEOUT_S)

    run = wait_for_runs(stack, [run_id])[run_id]
    assert run["state_type"] == "FAILED"
    assert note.subject == f"[mssql-auth-rotation] FAILED: rotation of {ref}: invalid parameters"
    assert f"Database: {ref} (namespace/name)" in note.body
    assert "Step:     parameters (before Inspect)" in note.body
    assert "timeout '5s' is too short" in note.body
    assert f"Link:     {stack.ui_url}/runs/flow-run/{run_id}" in note.body
    assert about(alerts.received, ref) == [note]


def test_a_rotation_killed_mid_set_tells_its_crash_and_its_database_left_paused(
    stack: PrefectStack, alerts: WebhookReceiver, make_database: DatabaseFactory, sandbox: Sandbox
) -> None:
    """The worker reports the killed run Crashed and runs its on_crashed hook, which leaves the pause
    (a password is staged) and emits left-paused; prefect.yaml's trigger then heals the database."""
    db = make_database(replicas=3)
    original = db.secret_data()["password"]
    for pod in db.pods:  # slow replies leave time to kill it between two replicas' ALTER LOGIN
        db.instance(pod).faults.reply_delay = 0.1
    ref = f"{db.namespace}/{db.name}"
    run_id = start_manual(stack, {"namespace": db.namespace, "database": db.name})
    first = db.instance(db.pods[0])
    db.sandbox.wait_for(
        lambda: any(b.kind == "alter-login" for b in first.batches), "the first ALTER LOGIN", timeout=120
    )
    pid = flow_run_pid(run_id)
    assert pid is not None, "the flow run's process was not found"
    os.kill(pid, signal.SIGKILL)
    for pod in db.pods:
        db.instance(pod).faults.reply_delay = 0

    crashed = alerts.wait_for(lambda r: "CRASHED" in r.subject and r.mentions(ref), "of the crash")
    paused = alerts.wait_for(lambda r: "LEFT PAUSED" in r.subject and r.mentions(ref), "of the pause")
    db.sandbox.wait_for(lambda: healed(db), "the database healed by the recover trigger", timeout=120)

    link = f"{stack.ui_url}/runs/flow-run/{run_id}"
    assert crashed.subject == f"[mssql-auth-rotation] CRASHED: rotate-mssql-auth run rotate-auth {ref}"
    assert f"Database: {ref} (namespace/name)" in crashed.body
    crash = stack.api("GET", f"/flow_runs/{run_id}")["state"]
    assert crash["type"] == "CRASHED" and "-9" in crash["message"]  # SIGKILL
    assert f"State:    {crash['message']}" in crashed.body
    assert f"Link:     {link}" in crashed.body
    assert paused.subject == f"[mssql-auth-rotation] LEFT PAUSED: {ref}"
    assert "The database stays paused: a new password is staged (password.next)" in paused.body
    assert f"finishes {ref} from the staged password" in paused.body
    assert f"Link:     {link}" in paused.body
    assert_rotated(db, original)
    # The recovery succeeded: nothing else about this database.
    assert sorted(r.subject for r in about(alerts.received, ref)) == sorted([crashed.subject, paused.subject])
    assert_no_password(sandbox, alerts.received)


def test_a_run_whose_finally_cannot_resume_emits_left_paused(
    make_database: DatabaseFactory, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (the session's test server has no notifications installed): the event, whose
    notification the crash test above proves, is emitted by the flow's own finally."""
    db: Database = make_database(replicas=1)
    status = f"/namespaces/{db.namespace}/mssqlservers/{db.name}/status$"
    proxy.add_fault("PATCH", status, times=1, delay=0.01)  # the pause goes through
    proxy.add_fault("PATCH", status, times=1, status=403)  # the resume is refused
    emitted: list[dict[str, Any]] = []
    real_emit = vars(rotation.events)["emit"]

    def record(what: Any, namespace: str, database: str, **kwargs: Any) -> None:
        emitted.append({"what": str(what), "ref": f"{namespace}/{database}", **kwargs})
        real_emit(what, namespace, database, **kwargs)

    monkeypatch.setattr(rotation.events, "emit", record)  # every event of ours goes through it

    with pytest.raises(PermanentError, match="403"):
        rotate_mssql_auth(namespace=db.namespace, database=db.name)

    assert is_paused(db)
    [event] = [e for e in emitted if e["what"] == "left-paused"]
    assert event["ref"] == f"{db.namespace}/{db.name}"
    assert event["run_name"] == f"rotate-auth {db.namespace}/{db.name}" and event["run_id"]
    assert "could not resume" in event["reason"] and "403" in event["error"]
    passwords = db.sandbox.known_passwords()
    assert not [p for p in passwords if p in event["reason"] + event["error"]]
