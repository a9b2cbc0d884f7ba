"""Pure tests of rotation/params.py: the flow's validated parameters and their JSON schema."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rotation.params import ApplyPolicy, RotationRequest, TlsVerify


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


@pytest.mark.parametrize("auth_secret", ["New_Auth", "NewAuth", "new auth", "-auth"])
def test_an_auth_secret_name_that_is_not_a_dns_subdomain_is_rejected(auth_secret: str) -> None:
    assert _rejected_field(auth_secret=auth_secret) == ("auth_secret",)


@pytest.mark.parametrize("field", ["auth_secret", "tls_ca_secret"])
def test_a_blank_optional_secret_name_means_none_as_the_readme_says(field: str) -> None:
    assert getattr(_request(**{field: ""}), field) is None


@pytest.mark.parametrize("timeout", ["1ms", "250ms", "9s", "9.9s"])
def test_a_timeout_under_ten_seconds_is_refused_saying_the_minimum(timeout: str) -> None:
    with pytest.raises(ValidationError, match=r"too short.*at least 10s"):
        _request(timeout=timeout)


def test_tls_is_verified_fully_unless_asked_otherwise() -> None:
    assert _request().tls_verify is TlsVerify.VERIFY_FULL
    assert _request(tls_verify="TrustServerCertificate").tls_verify is TlsVerify.TRUST_SERVER_CERTIFICATE
    assert _rejected_field(tls_verify="None") == ("tls_verify",)


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


@pytest.mark.parametrize(("timeout", "seconds"), [("90s", 90.0), ("1.5h", 5400.0), ("10000ms", 10.0)])
def test_timeout_seconds_is_the_parsed_timeout(timeout: str, seconds: float) -> None:
    assert _request(timeout=timeout).timeout_seconds == pytest.approx(seconds)


def test_a_request_is_immutable() -> None:
    request = _request()
    with pytest.raises(ValidationError):
        request.timeout = "1s"


def test_every_schema_property_has_a_description() -> None:
    # Titles come from Prefect (each parameter's name: test_deployments.py checks the deployment's form).
    properties = RotationRequest.model_json_schema()["properties"]
    assert set(properties) == {
        "namespace",
        "database",
        "auth_secret",
        "timeout",
        "apply",
        "tls_verify",
        "tls_ca_secret",
        "max_age",
        "finish_only",
        "ops_request",
        "restart_workloads",
    }
    for name, prop in properties.items():
        assert prop.get("description"), name


def test_the_schema_marks_only_namespace_and_database_as_required() -> None:
    assert set(RotationRequest.model_json_schema()["required"]) == {"namespace", "database"}
