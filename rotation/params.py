"""The flow's parameters, mirroring ``MSSQLServerOpsRequest.spec``, as annotated types.

Prefect builds the deployment's parameter schema (the UI form and the server-side validation) from
the flow's signature: each field's title is the parameter's name and its description the flow
docstring's ``Args`` entry (Prefect overrides an annotation's own title and description). These
annotations give the constraints the server enforces; their descriptions document the request model.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rotation.durations import AGE_PATTERN, parse_duration
from rotation.durations import PATTERN as DURATION_PATTERN

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# An optional secret name: empty (a form's blank field) means "none".
OPTIONAL_DNS1123_SUBDOMAIN = r"^$|" + DNS1123_SUBDOMAIN
MIN_TIMEOUT_S = 10.0  # a pod restart, an election or a TLS login needs more than a few seconds


class ApplyPolicy(StrEnum):
    """KubeDB's ``spec.apply``."""

    IF_READY = "IfReady"
    ALWAYS = "Always"


class TlsVerify(StrEnum):
    """How each replica's TLS certificate is checked (every connection is encrypted regardless)."""

    VERIFY_FULL = "VerifyFull"  # issued by the trusted CA and naming the pod's DNS name
    VERIFY_CA = "VerifyCA"  # issued by the trusted CA, whatever name it carries
    TRUST_SERVER_CERTIFICATE = "TrustServerCertificate"  # encrypted, NOT verified: an explicit choice


Namespace = Annotated[
    str,
    Field(
        description="Kubernetes namespace of the MSSQLServer (the ops request's namespace).",
        min_length=1,
        max_length=63,
        pattern=DNS1123_LABEL,
        examples=["demo"],
    ),
]
DatabaseName = Annotated[
    str,
    Field(
        description="Name of the MSSQLServer object whose credentials are rotated (spec.databaseRef.name).",
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        examples=["mssqlserver-quickstart"],
    ),
]
AuthSecretName = Annotated[
    str | None,
    Field(
        description=(
            "Name of a kubernetes.io/basic-auth Secret in the same namespace holding the new password "
            "(spec.authentication.secretRef.name). Leave empty to generate a strong random password. "
            "Its username must be the database's current username. Never type a password here."
        ),
        max_length=253,
        pattern=OPTIONAL_DNS1123_SUBDOMAIN,
    ),
]
TlsVerifyMode = Annotated[
    TlsVerify,
    Field(
        description=(
            "Every connection to SQL Server is encrypted. VerifyFull: each replica's certificate must be "
            "issued by the trusted CA and name the pod (<pod>.<db>-pods.<ns>.svc). VerifyCA: issued by the "
            "trusted CA, any name. TrustServerCertificate: encrypt without checking the certificate "
            "(not recommended; the report says so). It is refused unless the operator allows it where "
            "the run executes (MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE=true in the worker's "
            "or the job template's environment): no parameter can allow it."
        ),
    ),
]
TlsCaSecretName = Annotated[
    str | None,
    Field(
        description=(
            "Name of a Secret in the same namespace whose ca.crt is the CA to trust. Leave empty to use "
            "the CA of the database's own TLS certificate (spec.tls: Secret <db>-server-cert)."
        ),
        max_length=253,
        pattern=OPTIONAL_DNS1123_SUBDOMAIN,
    ),
]
Timeout = Annotated[
    str,
    Field(
        description="How long each step may take, as a duration such as 90s, 5m or 1h30m (spec.timeout).",
        pattern=DURATION_PATTERN,
        examples=["5m"],
    ),
]
Apply = Annotated[
    ApplyPolicy,
    Field(
        description=(
            "IfReady: refuse unless the database is Ready. Always: rotate whatever its phase (spec.apply)."
        ),
    ),
]


MaxAge = Annotated[
    str | None,
    Field(
        description=(
            "Rotate only when the credentials are at least this old (kubedb.com/auth-active-from), as "
            "a duration such as 30d or 720h; the database's own spec.authSecret.rotateAfter wins. "
            "Empty: rotate now. An interrupted rotation is always finished."
        ),
        pattern=r"^$|" + AGE_PATTERN,
        examples=["30d"],
    ),
]
FinishOnly = Annotated[
    bool,
    Field(
        description="Do nothing unless an earlier rotation of this database was interrupted; then finish it.",
    ),
]


OpsRequestName = Annotated[
    str | None,
    Field(
        description=(
            "Name of the MSSQLServerOpsRequest (same namespace) this run carries out; its status follows "
            "the run. Set by the bridge (python -m rotation.bridge); leave empty otherwise."
        ),
        max_length=253,
        pattern=OPTIONAL_DNS1123_SUBDOMAIN,
    ),
]


RestartWorkloads = Annotated[
    Sequence[str],
    Field(
        description=(
            "Workloads of the same namespace to restart once the rotation has succeeded, as kubectl "
            "rollout restart does, so that applications that read the password at start get the new "
            "one: items deployment/NAME, statefulset/NAME or daemonset/NAME. Workloads annotated "
            "secret.reloader.stakater.com/reload: <auth secret> are restarted too. Each needs the "
            "rotation's grant: python -m rotation rbac ... --restart-workload KIND/NAME. Empty: only "
            "the annotated ones."
        ),
        max_length=100,
        examples=[["deployment/my-app"]],
    ),
]


class RotationRequest(BaseModel):
    """A validated request; built from the flow's parameters."""

    model_config = ConfigDict(frozen=True)

    namespace: Namespace
    database: DatabaseName
    auth_secret: AuthSecretName = None
    timeout: Timeout = "5m"
    apply: Apply = ApplyPolicy.IF_READY
    tls_verify: TlsVerifyMode = TlsVerify.VERIFY_FULL
    tls_ca_secret: TlsCaSecretName = None
    max_age: MaxAge = None
    finish_only: FinishOnly = False
    ops_request: OpsRequestName = None
    restart_workloads: RestartWorkloads = ()

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)

    @property
    def conditional(self) -> bool:
        """Whether the run may find nothing to do (not due, nothing to finish)."""
        return self.finish_only or self.max_age is not None

    @property
    def max_age_seconds(self) -> float | None:
        return parse_duration(self.max_age, what="max_age", days=True) if self.max_age else None

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, value: str | None) -> str | None:
        if value:
            parse_duration(value, what="max_age", days=True)
        return value or None

    @field_validator("auth_secret", "tls_ca_secret", "ops_request")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("restart_workloads")
    @classmethod
    def _workloads(cls, value: Sequence[str]) -> tuple[str, ...]:
        # Here, not at the top: rotation.workloads reads this module's name patterns.
        from rotation.workloads import parse_workloads

        return tuple(str(ref) for ref in parse_workloads(value, "item"))

    @field_validator("timeout")
    @classmethod
    def _sane_timeout(cls, value: str) -> str:
        if parse_duration(value) < MIN_TIMEOUT_S:
            raise ValueError(
                f"timeout {value!r} is too short: a step (a pod restart, an election) needs at least "
                f"{MIN_TIMEOUT_S:.0f}s; give 10s or more, e.g. '5m'"
            )
        return value
