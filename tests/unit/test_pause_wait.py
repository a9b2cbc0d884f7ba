"""How long a pause waits for the provisioner's acknowledgement, and the name of what a cluster
taught the project about it (tasks/pause.py, rotation/provisioner_memory.py). No sandbox."""

from __future__ import annotations

import re

import pytest

from rotation.provisioner_memory import variable_name
from tasks.pause import ACK_SECONDS_ENV, PROBE_SECONDS_ENV, _ack_seconds
from tests.unit.test_plan import _replica, _target

CLUSTER = ("https://10.96.0.1:443", "a" * 64)


@pytest.mark.parametrize(
    ("acknowledged_before", "env", "seconds"),
    [
        (None, {}, 30.0),  # nothing learnt: the whole wait
        (True, {}, 30.0),  # it acknowledges: always waited for
        (False, {}, 5.0),  # it did not last time: the probe
        (False, {PROBE_SECONDS_ENV: "2"}, 2.0),
        (False, {ACK_SECONDS_ENV: "3"}, 3.0),  # never longer than the whole wait
        (None, {ACK_SECONDS_ENV: "900"}, 300.0),  # never longer than the step's timeout
    ],
)
def test_the_wait_for_an_acknowledgement_follows_what_the_cluster_taught(
    monkeypatch: pytest.MonkeyPatch, acknowledged_before: bool | None, env: dict[str, str], seconds: float
) -> None:
    for name in (ACK_SECONDS_ENV, PROBE_SECONDS_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    target = _target((_replica("mssql-0", "primary"),))
    assert _ack_seconds(target, acknowledged_before) == seconds


def test_each_cluster_has_its_own_valid_variable_even_at_the_same_in_cluster_address() -> None:
    name = variable_name(CLUSTER)
    assert re.fullmatch(r"[a-z0-9_]+", name) and name == variable_name(CLUSTER)
    assert variable_name((CLUSTER[0], "b" * 64)) != name  # another CA: another cluster
    assert variable_name(("https://other:6443", CLUSTER[1])) != name
