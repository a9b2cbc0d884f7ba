"""Kubernetes label selectors, evaluated here (pure): which PodDisruptionBudgets cover a pod.

Used before the eviction fallback deletes a pod (tasks/restart.py): a pod that any budget selects
is never deleted, whatever the eviction API answered. The rules are the API server's
(``metav1.LabelSelectorAsSelector``): every ``matchLabels`` pair and every ``matchExpressions``
requirement must hold. Where the API versions differ the answer is the cautious one: an empty
selector selects every pod (policy/v1; policy/v1beta1 selected none), and a requirement this module
does not know, or a missing selector, counts as selecting (a budget is never overlooked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether ``selector`` (a LabelSelector as JSON) selects a pod with ``labels``."""
    if selector is None:
        return True  # unknown: count it (cautious)
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_holds(requirement, labels) for requirement in selector.get("matchExpressions") or [])


def _holds(requirement: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = str(requirement.get("key")), requirement.get("operator")
    values = set(requirement.get("values") or [])
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return True  # an operator this code does not know: count the budget (cautious)


def budgets_selecting(budgets: Iterable[Mapping[str, Any]], labels: Mapping[str, str]) -> list[str]:
    """Names of the PodDisruptionBudgets (as JSON) whose selector selects a pod with ``labels``."""
    return sorted(
        str((budget.get("metadata") or {}).get("name"))
        for budget in budgets
        if selects((budget.get("spec") or {}).get("selector"), labels)
    )
