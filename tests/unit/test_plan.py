"""Pure tests of rotation/plan.py: stages, roles, restart order and the target's derived values."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from rotation import constants as c
from rotation.params import TlsVerify
from rotation.plan import (
    Endpoint,
    PodView,
    Replica,
    Stage,
    Target,
    active_ops_requests,
    foreign_pause,
    is_our_pause,
    next_to_restart,
    our_pause,
    pause_holder,
    pause_message,
    pause_of_another,
    pauses,
    role_of,
    roles_settled,
    secret_users,
    stage_of,
    unsupported_auth_secret,
    usable_replicas,
)
from rotation.tls import TlsProfile

TLS = TlsProfile(
    verify=TlsVerify.VERIFY_FULL, ca_pem="-----BEGIN CERTIFICATE-----", ca_source="Secret demo/x"
)


def _replica(pod: str, role: str, host: str = "10.0.0.1", port: int = 1433) -> Replica:
    return Replica(pod=pod, host=host, port=port, uid=f"uid-{pod}", role=role)


def _target(replicas: tuple[Replica, ...], *, database: str = "mssql") -> Target:
    return Target(
        namespace="demo",
        database=database,
        uid="db-uid",
        auth_secret=f"{database}-auth",
        username="sa",
        topology="AvailabilityGroup",
        replicas=replicas,
        stage=Stage.IDLE,
        timeout_seconds=300.0,
        tls=TLS,
        restart=tuple(r.pod for r in replicas),
        holder="prefect-flow-run/this",
    )


# --- stage_of ------------------------------------------------------------------------------------


def test_a_secret_with_only_username_and_password_is_idle() -> None:
    assert stage_of({c.KEY_USERNAME, c.KEY_PASSWORD}, {}) is Stage.IDLE


def test_a_secret_with_password_next_is_staged() -> None:
    keys = {c.KEY_USERNAME, c.KEY_PASSWORD, c.KEY_USERNAME_NEXT, c.KEY_PASSWORD_NEXT}
    assert stage_of(keys, {}) is Stage.STAGED


def test_a_secret_with_only_username_next_is_not_staged() -> None:
    assert stage_of({c.KEY_USERNAME, c.KEY_PASSWORD, c.KEY_USERNAME_NEXT}, {}) is Stage.IDLE


def test_a_secret_marked_restart_pending_is_committed() -> None:
    annotations = {c.ANNOTATION_RESTART_PENDING: "old-auth"}
    assert stage_of({c.KEY_USERNAME, c.KEY_PASSWORD}, annotations) is Stage.COMMITTED


def test_the_restart_pending_mark_wins_over_staged_keys() -> None:
    keys = {c.KEY_USERNAME, c.KEY_PASSWORD, c.KEY_PASSWORD_NEXT}
    assert stage_of(keys, {c.ANNOTATION_RESTART_PENDING: ""}) is Stage.COMMITTED


def test_other_annotations_do_not_change_the_stage() -> None:
    assert stage_of({c.KEY_PASSWORD}, {c.ANNOTATION_ACTIVE_FROM: "2024-01-01T00:00:00Z"}) is Stage.IDLE


# --- role_of -------------------------------------------------------------------------------------


def test_a_standalone_server_without_a_role_label_is_the_primary() -> None:
    assert role_of({}, 1) == c.ROLE_PRIMARY


def test_a_standalone_server_keeps_the_role_its_label_gives() -> None:
    assert role_of({c.LABEL_ROLE: c.ROLE_SECONDARY}, 1) == c.ROLE_SECONDARY


def test_an_availability_group_replica_without_a_role_label_has_no_role() -> None:
    assert role_of({}, 3) == ""
    assert role_of({"app.kubernetes.io/name": "mssqlservers.kubedb.com"}, 2) == ""


@pytest.mark.parametrize("role", [c.ROLE_PRIMARY, c.ROLE_SECONDARY])
def test_an_availability_group_replica_has_the_role_its_label_gives(role: str) -> None:
    assert role_of({c.LABEL_ROLE: role}, 3) == role


# --- next_to_restart -----------------------------------------------------------------------------


def test_secondaries_restart_first_by_name_and_the_primary_last_whatever_the_input_order() -> None:
    replicas = (
        _replica("mssql-1", c.ROLE_PRIMARY),
        _replica("mssql-2", c.ROLE_SECONDARY),
        _replica("mssql-0", c.ROLE_SECONDARY),
        _replica("mssql-10", c.ROLE_SECONDARY),
    )
    for permutation in itertools.permutations(replicas):
        pending = {r.pod for r in replicas}
        order = []
        while (chosen := next_to_restart(permutation, pending)) is not None:
            order.append(chosen.pod)
            pending.discard(chosen.pod)
        assert order == ["mssql-0", "mssql-10", "mssql-2", "mssql-1"]


def test_a_primary_named_first_alphabetically_still_restarts_last() -> None:
    replicas = (_replica("a-primary", c.ROLE_PRIMARY), _replica("z-secondary", c.ROLE_SECONDARY))
    assert next_to_restart(replicas, {"a-primary", "z-secondary"}) == replicas[1]


def test_when_the_primary_moves_the_new_primary_waits_for_the_secondaries_still_pending() -> None:
    # mssql-1 was restarted, then the coordinator made mssql-2 the primary.
    now = (
        _replica("mssql-0", c.ROLE_SECONDARY),
        _replica("mssql-1", c.ROLE_SECONDARY),
        _replica("mssql-2", c.ROLE_PRIMARY),
    )
    assert next_to_restart(now, {"mssql-0", "mssql-2"}) == now[0]
    assert next_to_restart(now, {"mssql-2"}) == now[2]


def test_a_pod_already_restarted_is_never_chosen_again() -> None:
    replicas = (_replica("mssql-0", c.ROLE_PRIMARY), _replica("mssql-1", c.ROLE_SECONDARY))
    assert next_to_restart(replicas, {"mssql-0"}) == replicas[0]
    assert next_to_restart(replicas, set()) is None


# --- roles_settled and usable_replicas ------------------------------------------------------------


def test_roles_are_settled_with_exactly_one_primary_and_only_secondaries_beside_it() -> None:
    primary, secondary = _replica("a", c.ROLE_PRIMARY), _replica("b", c.ROLE_SECONDARY)
    assert roles_settled((primary, secondary))
    assert not roles_settled((secondary, _replica("c", c.ROLE_SECONDARY)))  # no primary yet
    assert not roles_settled((primary, _replica("c", c.ROLE_PRIMARY)))  # two primaries
    assert not roles_settled((primary, _replica("c", "")))  # a blank role: an election under way


def _pod(name: str, *, owner: str | None = "mssql", ip: str | None = "10.0.0.9", role: str = "") -> PodView:
    return PodView(
        name=name,
        uid=f"uid-{name}",
        ip=ip,
        port=1433,
        role_label=role,
        ready=True,
        terminating=False,
        owner=owner,
    )


def test_usable_replicas_take_only_the_databases_own_petset_pods_and_skip_an_arbiter() -> None:
    pods = [
        _pod("mssql-0", role=c.ROLE_PRIMARY),
        _pod("mssql-1", role=c.ROLE_SECONDARY),
        _pod("mssql-arbiter-0", owner="mssql-arbiter"),
    ]
    replicas = usable_replicas(pods, "mssql", ["mssql-0", "mssql-1"])
    assert replicas is not None and [r.pod for r in replicas] == ["mssql-0", "mssql-1"]
    assert usable_replicas(pods, "mssql", ["mssql-0", "mssql-1", "mssql-2"]) is None


def test_a_pod_without_an_ip_or_on_its_way_down_is_not_usable_yet() -> None:
    assert usable_replicas([_pod("mssql-0", ip=None)], "mssql", ["mssql-0"]) is None
    down = PodView("mssql-0", "u", "10.0.0.1", 1433, "", ready=True, terminating=True, owner="mssql")
    assert usable_replicas([down], "mssql", ["mssql-0"]) is None


def test_a_standalone_pod_without_a_role_label_is_the_primary() -> None:
    replicas = usable_replicas([_pod("mssql-0")], "mssql", ["mssql-0"])
    assert replicas is not None and replicas[0].role == c.ROLE_PRIMARY


# --- Target --------------------------------------------------------------------------------------


def test_endpoints_pair_each_replica_ip_with_its_own_sql_port_in_replica_order() -> None:
    target = _target(
        (
            _replica("mssql-1", c.ROLE_PRIMARY, "10.0.0.11", 14330),
            _replica("mssql-0", c.ROLE_SECONDARY, "10.0.0.10", 14331),
        ),
    )
    assert target.endpoints() == [
        Endpoint("mssql-1", "10.0.0.11", 14330, "mssql-1.mssql-pods.demo.svc", TLS),
        Endpoint("mssql-0", "10.0.0.10", 14331, "mssql-0.mssql-pods.demo.svc", TLS),
    ]


def test_an_ipv6_endpoint_puts_the_host_in_brackets_as_freetds_needs() -> None:
    assert Endpoint("mssql-0", "fd00::5", 1433, "n", TLS).address == "[fd00::5]:1433"
    assert Endpoint("mssql-0", "10.0.0.5", 1433, "n", TLS).address == "10.0.0.5:1433"


def test_an_endpoint_reads_as_pod_and_address() -> None:
    assert str(Endpoint("mssql-0", "10.0.0.10", 1433, "n", TLS)) == "mssql-0 (10.0.0.10:1433)"


def test_the_lock_name_is_derived_from_the_database_name() -> None:
    assert _target((), database="mssqlserver-quickstart").lock_name == "mssqlserver-quickstart-rotate-auth"


def test_the_ref_is_namespace_slash_database() -> None:
    assert _target((), database="mssql").ref == "demo/mssql"


# --- interrupted runs ------------------------------------------------------------------------------
RUN = "prefect-flow-run/11111111-2222-3333-4444-555555555555"


def test_a_run_that_committed_but_died_before_resuming_only_needs_a_resume() -> None:
    keys = {c.KEY_USERNAME, c.KEY_PASSWORD, c.KEY_PASSWORD_PREV}
    assert stage_of(keys, {c.ANNOTATION_ROTATED_BY: RUN}, paused_by=RUN) is Stage.RESUME_ONLY


def test_a_run_that_died_before_committing_leaves_an_idle_rotation_to_start_afresh() -> None:
    keys = {c.KEY_USERNAME, c.KEY_PASSWORD}
    assert stage_of(keys, {c.ANNOTATION_ROTATED_BY: "prefect-flow-run/older"}, paused_by=RUN) is Stage.IDLE
    assert stage_of(keys, {c.ANNOTATION_ROTATED_BY: RUN}) is Stage.IDLE


def test_a_run_that_resumed_but_kept_its_lease_leaves_a_rotation_to_do_not_a_resume() -> None:
    # Its name is on the secret and its Lease lapsed, but its pause is gone: it had finished.
    keys = {c.KEY_USERNAME, c.KEY_PASSWORD, c.KEY_PASSWORD_PREV}
    assert stage_of(keys, {c.ANNOTATION_ROTATED_BY: RUN}, paused_by=None) is Stage.IDLE


def test_staged_and_committed_work_wins_over_resume_only() -> None:
    annotations = {c.ANNOTATION_ROTATED_BY: RUN}
    assert stage_of({c.KEY_PASSWORD, c.KEY_PASSWORD_NEXT}, annotations, paused_by=RUN) is Stage.STAGED
    pending = {**annotations, c.ANNOTATION_RESTART_PENDING: "db-auth"}
    assert stage_of({c.KEY_PASSWORD}, pending, paused_by=RUN) is Stage.COMMITTED


def test_our_pause_names_the_run_that_set_it() -> None:
    condition = {"type": "Paused", "status": "True", "reason": "Paused", "message": pause_message(RUN)}
    assert is_our_pause(condition)
    assert pause_holder(condition) == RUN


def test_a_pause_set_by_another_operation_is_not_ours_and_names_no_run() -> None:
    condition = {"type": "Paused", "status": "True", "message": "paused by ops request msops-1 (run x)"}
    assert not is_our_pause(condition)
    assert pause_holder(condition) is None


def test_a_pause_requested_or_in_effect_pauses_and_a_false_one_does_not() -> None:
    requested = {"type": "Paused", "status": "Unknown", "message": "m"}
    in_effect = {"type": "Paused", "status": "True", "message": "m"}
    db = {"status": {"conditions": [{"type": "Ready", "status": "True"}, requested, in_effect]}}
    assert pauses(db) == [requested, in_effect]
    assert pauses({"status": {"conditions": [{**in_effect, "status": "False"}]}}) == []
    assert pauses({}) == []


def test_a_pause_of_another_operation_is_foreign_whether_requested_or_in_effect() -> None:
    ours = {"type": "Paused", "status": "True", "message": pause_message(RUN)}
    for status in ("Unknown", "True"):
        theirs = {"type": "Paused", "status": status, "message": "MSSQLServerOpsRequest x is in process"}
        db = {"status": {"conditions": [ours, theirs]}}
        assert foreign_pause(db) == theirs
        assert our_pause(db, RUN) == ours
    assert foreign_pause({"status": {"conditions": [ours]}}) is None
    assert our_pause({"status": {"conditions": [ours]}}, "prefect-flow-run/other") is None


def test_any_pause_but_this_runs_is_another_operation_beside_it() -> None:
    ours = {"type": "Paused", "status": "True", "message": pause_message(RUN)}
    another_run = {"type": "Paused", "status": "Unknown", "message": pause_message("prefect-flow-run/other")}
    theirs = {"type": "Paused", "status": "True", "message": "MSSQLServerOpsRequest x is in process"}
    resumed = {"type": "Paused", "status": "False", "message": "MSSQLServerOpsRequest y is in process"}

    assert pause_of_another({"status": {"conditions": [ours, resumed]}}, RUN) is None
    assert pause_of_another({"status": {"conditions": [ours, theirs]}}, RUN) == theirs
    assert pause_of_another({"status": {"conditions": [ours, another_run]}}, RUN) == another_run
    assert foreign_pause({"status": {"conditions": [ours, another_run]}}) is None  # why it is stricter


# --- KubeDB ops requests and unsupported secrets -------------------------------------------------


def _ops(name: str, database: str, phase: str | None, type_: str = "Restart") -> dict[str, object]:
    request: dict[str, object] = {
        "metadata": {"name": name},
        "spec": {"type": type_, "databaseRef": {"name": database}},
    }
    if phase is not None:
        request["status"] = {"phase": phase}
    return request


def test_ops_requests_of_the_database_that_run_or_are_about_to_are_active() -> None:
    requests = [
        _ops("a", "mssql", "Progressing"),
        _ops("b", "mssql", None, "RotateAuth"),
        _ops("c", "mssql", "Successful"),
        _ops("d", "mssql", "Failed"),
        _ops("e", "other", "Progressing"),
        _ops("f", "mssql", "Approved"),
    ]
    assert active_ops_requests(requests, "mssql") == [
        "a (Restart, Progressing)",
        "b (RotateAuth, Pending)",
        "f (Restart, Approved)",
    ]


def test_the_ops_request_this_run_carries_out_is_not_counted_against_it() -> None:
    requests = [_ops("mine", "mssql", "Progressing", "RotateAuth")]
    assert active_ops_requests(requests, "mssql", own="mine") == []


def test_externally_managed_and_virtual_secrets_are_not_this_tools_to_rotate() -> None:
    assert unsupported_auth_secret({"name": "x"}) is None
    assert "externallyManaged" in (unsupported_auth_secret({"name": "x", "externallyManaged": True}) or "")
    virtual = unsupported_auth_secret(
        {"name": "x", "apiGroup": "virtual-secrets.dev", "secretStoreName": "vault"}
    )
    assert virtual is not None and "vault" in virtual


def test_a_user_secret_is_in_use_by_the_databases_that_name_it_or_default_to_it() -> None:
    databases: list[dict[str, Any]] = [
        {"metadata": {"name": "a"}, "spec": {"authSecret": {"name": "shared"}}},
        {"metadata": {"name": "b"}, "spec": {}},  # KubeDB's default: b-auth
        {"metadata": {"name": "c"}, "spec": {"authSecret": {"name": "other"}}},
    ]
    assert secret_users(databases, "shared") == ["a"]
    assert secret_users(databases, "b-auth") == ["b"]
    assert secret_users(databases, "free") == []
