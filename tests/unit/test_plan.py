"""Pure tests of rotation/plan.py: stages, roles, restart order and the target's derived values."""

from __future__ import annotations

import itertools

import pytest

from rotation import constants as c
from rotation.plan import (
    Endpoint,
    Replica,
    Stage,
    Target,
    active_pause,
    is_our_pause,
    pause_holder,
    pause_message,
    restart_order,
    role_of,
    stage_of,
)


def _replica(pod: str, role: str, host: str = "10.0.0.1") -> Replica:
    return Replica(pod=pod, host=host, uid=f"uid-{pod}", role=role)


def _target(replicas: tuple[Replica, ...], *, database: str = "mssql", sql_port: int = 1433) -> Target:
    return Target(
        namespace="demo",
        database=database,
        uid="db-uid",
        auth_secret=f"{database}-auth",
        username="sa",
        topology="AvailabilityGroup",
        replicas=replicas,
        stage=Stage.IDLE,
        sql_port=sql_port,
        timeout_seconds=300.0,
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


# --- restart_order -------------------------------------------------------------------------------


def test_secondaries_restart_first_by_name_and_the_primary_last_whatever_the_input_order() -> None:
    replicas = (
        _replica("mssql-1", c.ROLE_PRIMARY),
        _replica("mssql-2", c.ROLE_SECONDARY),
        _replica("mssql-0", c.ROLE_SECONDARY),
        _replica("mssql-10", c.ROLE_SECONDARY),
    )
    for permutation in itertools.permutations(replicas):
        order = [r.pod for r in restart_order(permutation)]
        assert order == ["mssql-0", "mssql-10", "mssql-2", "mssql-1"]


def test_a_primary_named_first_alphabetically_still_restarts_last() -> None:
    replicas = (_replica("a-primary", c.ROLE_PRIMARY), _replica("z-secondary", c.ROLE_SECONDARY))
    assert [r.pod for r in restart_order(replicas)] == ["z-secondary", "a-primary"]


def test_a_single_primary_is_its_own_restart_order() -> None:
    only = _replica("mssql-0", c.ROLE_PRIMARY)
    assert restart_order((only,)) == [only]


def test_restart_order_keeps_every_replica_exactly_once() -> None:
    replicas = tuple(_replica(f"mssql-{i}", c.ROLE_SECONDARY if i else c.ROLE_PRIMARY) for i in range(5))
    assert sorted(restart_order(replicas), key=lambda r: r.pod) == sorted(replicas, key=lambda r: r.pod)


def test_restart_order_of_no_replicas_is_empty() -> None:
    assert restart_order(()) == []


# --- Target --------------------------------------------------------------------------------------


def test_endpoints_pair_each_replica_ip_with_the_sql_port_in_replica_order() -> None:
    target = _target(
        (
            _replica("mssql-1", c.ROLE_PRIMARY, "10.0.0.11"),
            _replica("mssql-0", c.ROLE_SECONDARY, "10.0.0.10"),
        ),
        sql_port=14330,
    )
    assert target.endpoints() == [
        Endpoint("mssql-1", "10.0.0.11", 14330),
        Endpoint("mssql-0", "10.0.0.10", 14330),
    ]


def test_an_endpoint_reads_as_pod_and_address() -> None:
    assert str(Endpoint("mssql-0", "10.0.0.10", 1433)) == "mssql-0 (10.0.0.10:1433)"


def test_the_lock_name_is_derived_from_the_database_name() -> None:
    assert _target((), database="mssqlserver-quickstart").lock_name == "mssqlserver-quickstart-rotate-auth"


def test_the_ref_is_namespace_slash_database() -> None:
    assert _target((), database="mssql").ref == "demo/mssql"


# --- interrupted runs ------------------------------------------------------------------------------
RUN = "prefect-flow-run/11111111-2222-3333-4444-555555555555"


def test_a_run_that_committed_but_died_before_resuming_only_needs_a_resume() -> None:
    keys = {c.KEY_USERNAME, c.KEY_PASSWORD, c.KEY_PASSWORD_PREV}
    assert stage_of(keys, {c.ANNOTATION_ROTATED_BY: RUN}, interrupted_run=RUN) is Stage.RESUME_ONLY


def test_a_run_that_died_before_committing_leaves_an_idle_rotation_to_start_afresh() -> None:
    keys = {c.KEY_USERNAME, c.KEY_PASSWORD}
    assert (
        stage_of(keys, {c.ANNOTATION_ROTATED_BY: "prefect-flow-run/older"}, interrupted_run=RUN) is Stage.IDLE
    )
    assert stage_of(keys, {c.ANNOTATION_ROTATED_BY: RUN}) is Stage.IDLE


def test_staged_and_committed_work_wins_over_resume_only() -> None:
    annotations = {c.ANNOTATION_ROTATED_BY: RUN}
    assert stage_of({c.KEY_PASSWORD, c.KEY_PASSWORD_NEXT}, annotations, interrupted_run=RUN) is Stage.STAGED
    pending = {**annotations, c.ANNOTATION_RESTART_PENDING: "db-auth"}
    assert stage_of({c.KEY_PASSWORD}, pending, interrupted_run=RUN) is Stage.COMMITTED


def test_our_pause_names_the_run_that_set_it() -> None:
    condition = {"type": "Paused", "status": "True", "reason": "Paused", "message": pause_message(RUN)}
    assert is_our_pause(condition)
    assert pause_holder(condition) == RUN


def test_a_pause_set_by_another_operation_is_not_ours_and_names_no_run() -> None:
    condition = {"type": "Paused", "status": "True", "message": "paused by ops request msops-1 (run x)"}
    assert not is_our_pause(condition)
    assert pause_holder(condition) is None


def test_the_active_pause_is_the_true_paused_condition() -> None:
    paused = {"type": "Paused", "status": "True", "message": "m"}
    db = {"status": {"conditions": [{"type": "Ready", "status": "True"}, paused]}}
    assert active_pause(db) == paused
    assert active_pause({"status": {"conditions": [{**paused, "status": "False"}]}}) is None
    assert active_pause({}) is None
