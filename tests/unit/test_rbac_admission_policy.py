"""deployments/validating-admission-policy.yaml as data: the sandbox's API server (1.20) has no
ValidatingAdmissionPolicy, so its CEL is not evaluated here (docs/security.md says so). What is checked:
it parses as the v1 policy and its binding, it matches only UPDATEs of MSSQLServers and PetSets by the
rotation's ServiceAccount, and its validations name the fields the rotation may change."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotation import constants as c
from rotation import rbac

POLICY = Path(__file__).resolve().parents[2] / "deployments" / "validating-admission-policy.yaml"
API = "admissionregistration.k8s.io/v1"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    loaded = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    by_kind = {d["kind"]: d for d in loaded}
    assert len(loaded) == len(by_kind) == 2
    return by_kind


def test_a_v1_policy_and_a_binding_that_denies(docs: dict[str, dict[str, Any]]) -> None:
    policy, binding = docs["ValidatingAdmissionPolicy"], docs["ValidatingAdmissionPolicyBinding"]

    assert policy["apiVersion"] == binding["apiVersion"] == API
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"


def test_it_matches_updates_of_the_database_and_its_petset_not_the_pause(
    docs: dict[str, dict[str, Any]],
) -> None:
    rules = docs["ValidatingAdmissionPolicy"]["spec"]["matchConstraints"]["resourceRules"]

    matched = {
        (g, r, op)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for op in rule["operations"]
    }
    assert matched == {(c.DB_GROUP, c.DB_PLURAL, "UPDATE"), (c.PETSET_GROUP, c.PETSET_PLURAL, "UPDATE")}


def test_it_applies_to_the_rotation_identity_only(docs: dict[str, dict[str, Any]]) -> None:
    [condition] = docs["ValidatingAdmissionPolicy"]["spec"]["matchConditions"]
    username = f"system:serviceaccount:{rbac.IDENTITY}:{rbac.IDENTITY}"

    assert condition["expression"] == f"request.userInfo.username == '{username}'"


def test_the_validations_allow_only_the_secret_references_to_change(docs: dict[str, dict[str, Any]]) -> None:
    validations = docs["ValidatingAdmissionPolicy"]["spec"]["validations"]
    expressions = [v["expression"] for v in validations]
    database, petset = expressions[1], expressions[2] + expressions[3]

    for v in validations:
        assert v["message"].startswith("the rotation's identity may")
    # The MSSQLServer: every spec key but authSecret compared, and in it only name and activeFrom free.
    assert "k == 'authSecret' || (k in oldObject.spec && object.spec[k] == oldObject.spec[k])" in database
    assert "k in ['name', 'activeFrom']" in database
    # The PetSet: everything but the containers compared; in them only secretKeyRef's name is free.
    assert "k == 'template' ||" in petset and "k == 'containers' ||" in petset
    assert "k == 'env' ||" in petset and "k == 'secretKeyRef' ||" in petset
    assert "e.valueFrom.secretKeyRef.all(k, k == 'name'" in petset
    # Every walk over the new object's keys has its reverse over the old one's: no key added or dropped.
    text = " ".join(expressions)
    for new_side, old_side in (("object", "oldObject"), ("c", "o"), ("e", "p")):
        walked = set(re.findall(rf"(?<![\w.]){new_side}((?:\.\w+)*)\.all\(k,", text))
        assert walked, new_side
        assert walked == set(re.findall(rf"(?<![\w.]){old_side}((?:\.\w+)*)\.all\(k,", text)), new_side


def test_the_generated_grants_point_at_it_only_where_they_allow_the_writes() -> None:
    with_user_secret = rbac.render(rbac.grant("demo", "mssql-demo", 3, user_secrets=["s"]))
    generated = rbac.render(rbac.grant("demo", "mssql-demo", 3))

    assert "deployments/validating-admission-policy.yaml limits" in with_user_secret
    assert "deployments/validating-admission-policy.yaml limits" not in generated
