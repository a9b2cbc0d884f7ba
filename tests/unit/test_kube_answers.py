"""How the Kubernetes adapter reads the API server's answers: eviction refusals. Pure, no server."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from rotation.kube import EvictionRefused, _eviction_refusal


def _too_many_requests(body: dict[str, object]) -> ApiException:
    exc = ApiException(status=429, reason="Too Many Requests")
    exc.body = json.dumps(body)
    return exc


# The body a 1.20 API server sends (captured from the sandbox's real kube-apiserver).
PDB_REFUSAL = {
    "kind": "Status",
    "status": "Failure",
    "message": "Cannot evict pod as it would violate the pod's disruption budget.",
    "reason": "TooManyRequests",
    "details": {
        "causes": [
            {
                "reason": "DisruptionBudget",
                "message": "The disruption budget m needs 3 healthy pods and has 3 currently",
            }
        ]
    },
    "code": 429,
}


def test_a_refusal_by_a_disruption_budget_names_the_budget() -> None:
    assert _eviction_refusal(_too_many_requests(PDB_REFUSAL)) == EvictionRefused(
        "m", "The disruption budget m needs 3 healthy pods and has 3 currently"
    )


def test_a_budget_refusal_without_a_cause_is_still_a_budget_refusal() -> None:
    body = {**PDB_REFUSAL, "details": {}}
    refusal = _eviction_refusal(_too_many_requests(body))
    assert refusal.budget == "(unnamed)"


def test_a_429_without_a_budget_is_throttling() -> None:
    throttled = {"kind": "Status", "message": "Too many requests, please try again later.", "code": 429}
    assert _eviction_refusal(_too_many_requests(throttled)).budget is None
    bare = ApiException(status=429, reason="Too Many Requests")
    assert _eviction_refusal(bare) == EvictionRefused(None, "Too Many Requests")
