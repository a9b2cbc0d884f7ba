"""The failure notifications without a server: the block setting, the automations' file, which
automation each failure's event reaches (Prefect's own trigger matching) and the message each renders
(Prefect's own template engine and filters, with the context the server's SendNotification builds)."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.events.actions import SendNotification as ClientSendNotification
from prefect.events.schemas.automations import AutomationCore as ClientAutomation
from prefect.server.events.actions import SendNotification
from prefect.server.events.jinja_filters import all_filters
from prefect.server.events.schemas.automations import AutomationCore as ServerAutomation
from prefect.server.events.schemas.automations import EventTrigger
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.schemas.core import Flow
from prefect.server.schemas.responses import FlowRunResponse
from prefect.server.utilities.user_templates import register_user_template_filters, render_user_template
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
from prefect.states import exception_to_failed_state

from rotation import __main__ as cli
from rotation import notifications as n
from rotation.errors import InvalidRequest, RotationError
from rotation.events import PREFIX, RotationEvent, related_run, resource
from tasks.aftermath import ended_with_its_fleet

ROOT = Path(__file__).resolve().parents[2]
UI = "http://prefect.example:4200"
BLOCK_ID = "6b0d6a54-2ad5-4d8e-9b51-0b5b7d3a1f00"
FAILED, REFUSED, FLEET, CRASHED, PAUSED = (
    "mssql-auth-rotation-failed",
    "mssql-auth-rotation-refused-its-parameters",
    "mssql-auth-rotation-fleet-failed",
    "mssql-auth-rotation-run-crashed",
    "mssql-auth-rotation-left-paused",
)


def automations() -> list[dict[str, Any]]:
    return n.parse_automations(n.AUTOMATIONS_FILE.read_text(), "notify-failures.yaml")


def on_server() -> dict[str, ServerAutomation]:
    """The file's automations as the Prefect server holds them."""
    return {a["name"]: ServerAutomation.model_validate(a) for a in n.with_block(automations(), BLOCK_ID)}


# -- the block setting ---------------------------------------------------------------------------
def test_a_block_is_named_by_its_type_slug_and_its_name() -> None:
    block = n.parse_block_setting(" slack-webhook/rotation-alerts ")
    assert (block.type_slug, block.name, str(block)) == (
        "slack-webhook",
        "rotation-alerts",
        "slack-webhook/rotation-alerts",
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "pass --block <block-type-slug>/<block-name> (or set MSSQL_AUTH_ROTATION_NOTIFICATION_BLOCK)"),
        ("  ", "no notification block is named"),
        ("rotation-alerts", "'rotation-alerts' is not <block-type-slug>/<block-name>: name both"),
        ("slack-webhook/", "is not <block-type-slug>/<block-name>"),
        ("/rotation-alerts", "is not <block-type-slug>/<block-name>"),
        ("Slack Webhook/alerts", "the block type slug 'Slack Webhook' is not one Prefect can have"),
        ("slack-webhook/Rotation_Alerts", "the block name 'Rotation_Alerts' is not one Prefect can have"),
        ("slack-webhook/a/b", "the block name 'a/b' is not one Prefect can have"),
    ],
)
def test_a_bad_block_setting_says_what_to_write(value: str | None, says: str) -> None:
    with pytest.raises(n.NotificationSetupError) as refused:
        n.parse_block_setting(value)
    assert says in str(refused.value)
    assert "slack-webhook/rotation-alerts" in str(refused.value) or "prefect block ls" in str(refused.value)


def test_a_missing_block_or_block_type_says_how_to_create_or_fix_it() -> None:
    types = ["custom-webhook", "ms-teams-webhook", "slack-webhook"]
    missing = n.missing_block(n.BlockRef("slack-webhook", "alerts"), "https://p/api", types)
    assert "has no slack-webhook block named 'alerts': create it first" in missing
    assert "then run this command again" in missing
    wrong_type = n.missing_block(n.BlockRef("microsoft-teams-webhook", "alerts"), "https://p/api", types)
    assert "no notification block type 'microsoft-teams-webhook'" in wrong_type
    assert "custom-webhook, ms-teams-webhook, slack-webhook" in wrong_type
    assert "is not a notification block" in n.not_a_notification_block(n.BlockRef("secret", "x"), [])


# -- the file ----------------------------------------------------------------------------------------
def test_the_file_holds_five_named_described_notifying_automations_that_prefect_accepts() -> None:
    found = automations()

    assert [a["name"] for a in found] == [FAILED, REFUSED, FLEET, CRASHED, PAUSED]
    filled = n.with_block(found, BLOCK_ID)
    assert all("block_document_id" not in action for a in found for action in a["actions"])  # untouched
    for automation in filled:
        client = ClientAutomation.model_validate(automation)  # what the installer sends
        assert client.description and client.enabled
        [action] = client.actions
        assert isinstance(action, ClientSendNotification) and str(action.block_document_id) == BLOCK_ID
        ServerAutomation.model_validate(automation)  # and what the server keeps


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("automations: [", "is not valid YAML"),
        ("name: x", "has no `automations:` list"),
        ("automations: [{description: d, actions: [{type: send-notification}]}]", "automation 1 has no name"),
        ("automations: [{name: a, actions: [{type: send-notification}]}]", "'a' has no description"),
        ("automations: [{name: a, description: d, actions: []}]", "'a' has no actions"),
        (
            "automations: [{name: a, description: d, actions: [{type: run-deployment}]}]",
            "has an action that is not 'send-notification'",
        ),
        (
            "automations: [{name: a, description: d,"
            " actions: [{type: send-notification, block_document_id: x}]}]",
            "leave it out, the installer fills in the block given with --block",
        ),
        (
            "automations: [{name: a, description: d, actions: [{type: send-notification}]},"
            " {name: a, description: d, actions: [{type: send-notification}]}]",
            "two automations are named 'a'",
        ),
    ],
)
def test_a_bad_automations_file_is_refused_naming_the_problem(text: str, says: str) -> None:
    with pytest.raises(n.NotificationSetupError, match=r"f\.yaml") as refused:
        n.parse_automations(text, "f.yaml")
    assert says in str(refused.value)


def test_the_setting_and_file_module_is_pure() -> None:
    tree = ast.parse((ROOT / "rotation" / "notifications.py").read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {name.split(".")[0] for name in imported} & {"prefect", "kubernetes", "httpx", "socket"}


# -- which failure reaches which automation ---------------------------------------------------------
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rotation_event(what: RotationEvent, run_id: uuid.UUID, **payload: str) -> ReceivedEvent:
    """As rotation/events.py emits it (the server adds the flow run's flow among the related)."""
    return ReceivedEvent.model_validate(
        {
            "occurred": _now(),
            "event": PREFIX + what.value,
            "resource": resource("ns1", "db1"),
            "related": [
                *related_run(str(run_id), "rotate-auth ns1/db1"),
                {
                    "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": "rotate-mssql-auth",
                },
            ],
            "payload": payload,
            "id": uuid.uuid4(),
        }
    )


def state_event(state: str, flow: str, message: str, run_id: uuid.UUID, name: str) -> ReceivedEvent:
    """As the server emits a flow run's state change (prefect.server.models.events)."""
    return ReceivedEvent.model_validate(
        {
            "occurred": _now(),
            "event": f"prefect.flow-run.{state}",
            "resource": {
                "prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.name": name,
                "prefect.run-count": "1",
                "prefect.state-message": message,
                "prefect.state-name": state,
                "prefect.state-timestamp": _now().isoformat(),
                "prefect.state-type": state.upper(),
            },
            "related": [
                {
                    "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow,
                },
            ],
            "id": uuid.uuid4(),
        }
    )


def failed_message(exc: BaseException) -> str:
    """The message Prefect's engine gives a run that raised ``exc``."""
    state = asyncio.run(exception_to_failed_state(exc, message="Flow run encountered an exception:"))
    return str(state.message)


def covering(event: ReceivedEvent) -> list[str]:
    found = []
    for name, automation in on_server().items():
        assert isinstance(automation.trigger, EventTrigger)
        if automation.trigger.covers(event):
            found.append(name)
    return found


RUN = uuid.uuid4()


@pytest.mark.parametrize(
    ("event", "told_by"),
    [
        # A rotation that fails: its own event (step, error), never also its Failed state.
        (rotation_event(RotationEvent.FAILED, RUN, error="db1-1 refused", step="UpdateCredential"), [FAILED]),
        (
            state_event(
                "Failed", "rotate-mssql-auth", failed_message(RotationError("db1-1 refused")), RUN, "r"
            ),
            [],
        ),
        # ... except when it failed before its first step, which emits no event.
        (
            state_event(
                "Failed",
                "rotate-mssql-auth",
                failed_message(InvalidRequest("invalid parameters: timeout: Value error, too short")),
                RUN,
                "rotate-auth ns1/db1",
            ),
            [REFUSED],
        ),
        (
            state_event(
                "Failed", "rotate-mssql-auth", "Validation of flow parameters failed with error: x", RUN, "r"
            ),
            [REFUSED],
        ),
        # A fleet run: its own failures, not the sum of its databases' (each told on its own).
        (
            state_event(
                "Failed",
                "rotate-mssql-fleet",
                failed_message(RotationError("2 of 3 database(s) failed: ns1/db1: x; ns1/db2: y")),
                RUN,
                "fleet rotate: ns1",
            ),
            [],
        ),
        (
            state_event(
                "Failed", "rotate-mssql-fleet", failed_message(RotationError("403 listing")), RUN, "f"
            ),
            [FLEET],
        ),
        (state_event("Failed", "rotate-mssql-fleet", "", RUN, "f"), [FLEET]),
        # A crash of either; not the rotations a stopped fleet's hook marks Crashed.
        (
            state_event("Crashed", "rotate-mssql-auth", "Process exited with status code: -9.", RUN, "r"),
            [CRASHED],
        ),
        (state_event("Crashed", "rotate-mssql-fleet", "", RUN, "f"), [CRASHED]),
        (
            state_event("Crashed", "rotate-mssql-auth", ended_with_its_fleet("fleet x", "Crashed"), RUN, "r"),
            [],
        ),
        # A database left paused.
        (rotation_event(RotationEvent.LEFT_PAUSED, RUN, reason="staged"), [PAUSED]),
        # Nothing else: success, a cancellation (somebody's decision), another flow's failure.
        (rotation_event(RotationEvent.SUCCEEDED, RUN), []),
        (rotation_event(RotationEvent.ROLLED_BACK, RUN, reason="x"), []),
        (state_event("Cancelled", "rotate-mssql-auth", "cancelled", RUN, "r"), []),
        (state_event("Completed", "rotate-mssql-fleet", "", RUN, "f"), []),
        (state_event("Failed", "someone-elses-flow", "Validation of flow parameters failed", RUN, "o"), []),
        (state_event("Crashed", "someone-elses-flow", "", RUN, "o"), []),
    ],
)
def test_each_failure_reaches_exactly_the_automation_that_tells_it(
    event: ReceivedEvent, told_by: list[str]
) -> None:
    assert covering(event) == told_by


def test_the_wording_the_filters_key_on_is_still_what_the_flows_raise() -> None:
    """The filters match these texts; a flow that words them otherwise fails this, not a 03:00 page."""
    assert 'f"invalid parameters: {problems}"' in (ROOT / "flows" / "rotate_auth.py").read_text()
    assert "database(s) failed: " in (ROOT / "flows" / "rotate_fleet.py").read_text()


# -- the messages ------------------------------------------------------------------------------------
def render(
    name: str, event: ReceivedEvent, flow_run: FlowRunResponse | None, flow: Flow | None
) -> tuple[str, str]:
    """subject and body, as SendNotification renders them (prefect.server.events.actions)."""
    register_user_template_filters(all_filters)
    [action] = on_server()[name].actions
    assert isinstance(action, SendNotification)
    context = {"event": event, "flow_run": flow_run, "flow": flow, "automation": None}

    async def both() -> tuple[str, str]:
        subject = await render_user_template(action.subject, context)
        body = await render_user_template(action.body, context)
        return subject, body

    return asyncio.run(both())


def run(parameters: dict[str, str], name: str = "rotate-auth ns1/db1") -> FlowRunResponse:
    return FlowRunResponse.model_validate(
        {"id": RUN, "name": name, "flow_id": uuid.uuid4(), "parameters": parameters}
    )


def fields(body: str) -> dict[str, str]:
    return {
        k.strip(): v.strip()
        for k, _, v in (line.partition(":") for line in body.splitlines())
        if k[:1].isupper() and k.strip() in ("Database", "Step", "Error", "Run", "Link", "State", "Why")
    }


def test_a_failed_rotation_names_the_database_step_error_and_link_and_nothing_else() -> None:
    event = rotation_event(
        RotationEvent.FAILED,
        RUN,
        error="ms-1 refused the new password: not complex enough",
        step="UpdateCredential",
    )
    event.payload["something-else"] = "never shown"
    with temporary_settings({PREFECT_UI_URL: UI}):
        subject, body = render(FAILED, event, run({"namespace": "ns1", "database": "db1"}), None)

    assert subject == "[mssql-auth-rotation] FAILED: rotation of ns1/db1 at step UpdateCredential"
    assert fields(body) == {
        "Database": "ns1/db1 (namespace/name)",
        "Step": "UpdateCredential (Stage, Set, Verify or Commit), the last step the run reached",
        "Error": "ms-1 refused the new password: not complex enough",
        "Run": "rotate-auth ns1/db1",
        "Link": f"{UI}/runs/flow-run/{RUN}",
    }
    assert "never shown" not in body


@pytest.mark.parametrize(
    ("step", "shown"),
    [
        ("RotateAuth", "RotateAuth (Inspect)"),
        ("EvictPod--db1-2", "EvictPod--db1-2 (Restart)"),
        ("RestartNodes", "RestartNodes (Final check)"),
        ("UpdatePetSets", "UpdatePetSets"),
        (None, "(none reached)"),
    ],
)
def test_the_step_is_named_as_kubedb_does_with_the_rotations_own_name_for_it(
    step: str | None, shown: str
) -> None:
    payload = {"error": "e"} if step is None else {"error": "e", "step": step}
    with temporary_settings({PREFECT_UI_URL: UI}):
        _, body = render(FAILED, rotation_event(RotationEvent.FAILED, RUN, **payload), run({}), None)
    assert fields(body)["Step"] == f"{shown}, the last step the run reached"


def test_without_a_ui_url_or_a_run_the_message_says_why_there_is_no_link() -> None:
    event = rotation_event(RotationEvent.FAILED, RUN, error="e", step="RotateAuth")
    with temporary_settings(restore_defaults={PREFECT_UI_URL, PREFECT_API_URL}):
        assert (
            fields(render(FAILED, event, run({}), None)[1])["Link"]
            == "(none: set PREFECT_UI_URL on the Prefect server)"
        )
        assert fields(render(FAILED, event, None, None)[1])["Link"] == "(the run is unknown)"


def test_a_refused_crashed_fleet_or_left_paused_run_is_told_with_what_identifies_it() -> None:
    rotation = run({"namespace": "ns1", "database": "db1"})
    refused_message = failed_message(InvalidRequest("invalid parameters: timeout: too short"))
    with temporary_settings({PREFECT_UI_URL: UI}):
        refused = render(
            REFUSED,
            state_event("Failed", "rotate-mssql-auth", refused_message, RUN, "rotate-auth ns1/db1"),
            rotation,
            None,
        )
        crashed = render(
            CRASHED,
            state_event(
                "Crashed",
                "rotate-mssql-auth",
                "Process exited with status code: -9.",
                RUN,
                "rotate-auth ns1/db1",
            ),
            rotation,
            Flow(name="rotate-mssql-auth"),
        )
        fleet = render(
            FLEET,
            state_event("Failed", "rotate-mssql-fleet", "RotationError: 403", RUN, "fleet rotate: ns1"),
            run({}, "fleet rotate: ns1"),
            Flow(name="rotate-mssql-fleet"),
        )
        paused = render(
            PAUSED,
            rotation_event(RotationEvent.LEFT_PAUSED, RUN, reason="a password is staged", error="403"),
            rotation,
            None,
        )
    link = f"{UI}/runs/flow-run/{RUN}"
    assert refused[0] == "[mssql-auth-rotation] FAILED: rotation of ns1/db1: invalid parameters"
    assert fields(refused[1]) == {
        "Database": "ns1/db1 (namespace/name)",
        "Step": "parameters (before Inspect)",
        "Error": refused_message,
        "Run": "rotate-auth ns1/db1",
        "Link": link,
    }
    assert crashed[0] == "[mssql-auth-rotation] CRASHED: rotate-mssql-auth run rotate-auth ns1/db1"
    assert fields(crashed[1]) == {
        "Database": "ns1/db1 (namespace/name)",
        "Run": "rotate-auth ns1/db1",
        "State": "Process exited with status code: -9.",
        "Link": link,
    }
    assert fleet[0] == "[mssql-auth-rotation] FAILED: fleet run fleet rotate: ns1"
    assert fields(fleet[1]) == {"Error": "RotationError: 403", "Run": "fleet rotate: ns1", "Link": link}
    assert paused[0] == "[mssql-auth-rotation] LEFT PAUSED: ns1/db1"
    assert fields(paused[1]) == {
        "Database": "ns1/db1 (namespace/name)",
        "Why": "a password is staged",
        "Error": "403",
        "Run": "rotate-auth ns1/db1",
        "Link": link,
    }


# -- the command's own errors -----------------------------------------------------------------------
def test_the_command_refuses_without_a_block_or_an_api_naming_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(n.BLOCK_ENV, raising=False)
    with pytest.raises(SystemExit) as no_block:
        cli.main(["notifications"])
    assert no_block.value.code == 2
    assert "error: no notification block is named: pass --block" in capsys.readouterr().err

    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(SystemExit) as no_api:
        cli.main(["notifications", "--block", "slack-webhook/rotation-alerts"])
    assert no_api.value.code == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL is not set: set it to the API of the Prefect server" in err

    with pytest.raises(SystemExit) as no_file:
        cli.main(["notifications", "--block", "slack-webhook/a", "--file", "/nonexistent/notify.yaml"])
    assert no_file.value.code == 2
    assert "cannot read the automations file /nonexistent/notify.yaml" in capsys.readouterr().err


def test_the_block_setting_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(n.BLOCK_ENV, "ms-teams-webhook/oncall")
    args = cli._parser().parse_args(["notifications"])
    assert n.parse_block_setting(args.block) == n.BlockRef("ms-teams-webhook", "oncall")
