"""TrustServerCertificate is the operator's to allow (rotation/operator_settings.py): only ``true`` does."""

from __future__ import annotations

import pytest

from rotation.operator_settings import ALLOW_TRUST_SERVER_CERTIFICATE, trust_server_certificate_refusal


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_only_true_allows_trusting_any_certificate(value: str) -> None:
    assert trust_server_certificate_refusal({ALLOW_TRUST_SERVER_CERTIFICATE: value}) is None


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({}, "is not set"),
        ({ALLOW_TRUST_SERVER_CERTIFICATE: ""}, "is false"),
        ({ALLOW_TRUST_SERVER_CERTIFICATE: "false"}, "is false"),
        ({ALLOW_TRUST_SERVER_CERTIFICATE: "yes"}, "is 'yes', not 'true'"),
        ({ALLOW_TRUST_SERVER_CERTIFICATE: "1"}, "is '1', not 'true'"),
        ({"MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATES": "true"}, "is not set"),  # a typo
    ],
)
def test_anything_else_refuses_saying_why_and_where_an_operator_allows_it(
    environ: dict[str, str], says: str
) -> None:
    refusal = trust_server_certificate_refusal(environ)

    assert refusal is not None
    assert f"{ALLOW_TRUST_SERVER_CERTIFICATE} {says}" in refusal
    assert "VerifyFull or VerifyCA" in refusal and "tls_ca_secret" in refusal
    assert "worker" in refusal and "deployments/k8s-base-job-template.json" in refusal
