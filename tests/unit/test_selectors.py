"""Which PodDisruptionBudgets select a pod (rotation/selectors.py): the API server's rules, cautious
where API versions differ or the selector is unknown."""

from __future__ import annotations

from typing import Any

import pytest

from rotation.selectors import budgets_selecting, selects

POD = {"app.kubernetes.io/instance": "db", "kubedb.com/role": "primary"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"matchLabels": {"app.kubernetes.io/instance": "db"}}, True),
        ({"matchLabels": {"app.kubernetes.io/instance": "other"}}, False),
        ({"matchLabels": {"app.kubernetes.io/instance": "db", "missing": "x"}}, False),
        ({"matchExpressions": [{"key": "kubedb.com/role", "operator": "In", "values": ["primary"]}]}, True),
        (
            {"matchExpressions": [{"key": "kubedb.com/role", "operator": "In", "values": ["secondary"]}]},
            False,
        ),
        (
            {"matchExpressions": [{"key": "kubedb.com/role", "operator": "NotIn", "values": ["primary"]}]},
            False,
        ),
        ({"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "kubedb.com/role", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "kubedb.com/role", "operator": "DoesNotExist"}]}, False),
        ({"matchExpressions": [{"key": "absent", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "absent", "operator": "Gt", "values": ["1"]}]}, True),  # unknown
        ({}, True),  # policy/v1: an empty selector selects every pod of the namespace
        (None, True),  # no selector read: count it
    ],
)
def test_a_selector_selects_as_the_api_server_does_or_cautiously(
    selector: dict[str, Any] | None, expected: bool
) -> None:
    assert selects(selector, POD) is expected


def test_the_budgets_that_select_a_pod_are_named() -> None:
    budgets = [
        {
            "metadata": {"name": "b-db"},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": "db"}}},
        },
        {"metadata": {"name": "a-other"}, "spec": {"selector": {"matchLabels": {"app": "web"}}}},
        {"metadata": {"name": "a-all"}, "spec": {"selector": {}}},
    ]
    assert budgets_selecting(budgets, POD) == ["a-all", "b-db"]
    assert budgets_selecting([], POD) == []
