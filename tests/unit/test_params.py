"""Pure tests of rotation/params.py: the flow's validated parameters and their JSON schema."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rotation.params import ApplyPolicy, RotationRequest


def _request(**overrides: Any) -> RotationRequest:
    return RotationRequest(**{"namespace": "demo", "database": "mssqlserver-quickstart", **overrides})


def _rejected_field(**overrides: Any) -> tuple[str | int, ...]:
    with pytest.raises(ValidationError) as caught:
        _request(**overrides)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"]


def test_a_minimal_request_gets_the_default_timeout_and_apply_policy() -> None:
    request = _request()
    assert request.timeout == "5m"
    assert request.timeout_seconds == 300.0
    assert request.apply is ApplyPolicy.IF_READY
    assert request.auth_secret is None


def test_a_full_request_keeps_its_values() -> None:
    request = _request(auth_secret="new-auth.v2", timeout="1h30m", apply="Always")
    assert request.auth_secret == "new-auth.v2"
    assert request.apply is ApplyPolicy.ALWAYS
    assert request.timeout_seconds == 5400.0


@pytest.mark.parametrize("namespace", ["", "Demo", "my_ns", "-demo", "demo-", "a.b", "n" * 64])
def test_a_namespace_that_is_not_a_dns_label_is_rejected(namespace: str) -> None:
    assert _rejected_field(namespace=namespace) == ("namespace",)


def test_a_namespace_of_63_characters_is_accepted() -> None:
    assert _request(namespace="n" * 63).namespace == "n" * 63


@pytest.mark.parametrize("database", ["", "MsSql", "ms_sql", "ms..sql", ".mssql", "mssql-"])
def test_a_database_name_that_is_not_a_dns_subdomain_is_rejected(database: str) -> None:
    assert _rejected_field(database=database) == ("database",)


@pytest.mark.parametrize("auth_secret", ["", "New_Auth", "NewAuth", "new auth"])
def test_an_auth_secret_name_that_is_not_a_dns_subdomain_is_rejected(auth_secret: str) -> None:
    assert _rejected_field(auth_secret=auth_secret) == ("auth_secret",)


@pytest.mark.parametrize("apply", ["ifready", "Never", "", "always"])
def test_an_unknown_apply_value_is_rejected(apply: str) -> None:
    assert _rejected_field(apply=apply) == ("apply",)


@pytest.mark.parametrize("timeout", ["", "5", "5x", "-5m", " 5m", "five minutes"])
def test_a_malformed_timeout_is_rejected(timeout: str) -> None:
    assert _rejected_field(timeout=timeout) == ("timeout",)


def test_a_zero_timeout_is_rejected_although_it_matches_the_pattern() -> None:
    with pytest.raises(ValidationError) as caught:
        _request(timeout="0s")
    (error,) = caught.value.errors()
    assert error["loc"] == ("timeout",)
    assert "longer than zero" in error["msg"]


@pytest.mark.parametrize(("timeout", "seconds"), [("90s", 90.0), ("1.5h", 5400.0), ("250ms", 0.25)])
def test_timeout_seconds_is_the_parsed_timeout(timeout: str, seconds: float) -> None:
    assert _request(timeout=timeout).timeout_seconds == pytest.approx(seconds)


def test_a_request_is_immutable() -> None:
    request = _request()
    with pytest.raises(ValidationError):
        request.timeout = "1s"


def test_every_schema_property_has_a_title_and_a_description() -> None:
    properties = RotationRequest.model_json_schema()["properties"]
    assert set(properties) == {"namespace", "database", "auth_secret", "timeout", "apply"}
    for name, prop in properties.items():
        assert prop.get("title"), name
        assert prop.get("description"), name


def test_the_schema_marks_only_namespace_and_database_as_required() -> None:
    assert set(RotationRequest.model_json_schema()["required"]) == {"namespace", "database"}
