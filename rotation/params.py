"""The flow's parameters, mirroring ``MSSQLServerOpsRequest.spec``, as annotated types.

Prefect builds the deployment's parameter schema (the UI form and the server-side validation) from
these annotations: every field has a title, a description and constraints.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rotation.durations import PATTERN as DURATION_PATTERN
from rotation.durations import parse_duration

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ApplyPolicy(StrEnum):
    """KubeDB's ``spec.apply``."""

    IF_READY = "IfReady"
    ALWAYS = "Always"


Namespace = Annotated[
    str,
    Field(
        title="Namespace",
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
        title="Database",
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
        title="New auth secret (optional)",
        description=(
            "Name of a kubernetes.io/basic-auth Secret in the same namespace holding the new password "
            "(spec.authentication.secretRef.name). Leave empty to generate a strong random password. "
            "Its username must be the database's current username. Never type a password here."
        ),
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
    ),
]
Timeout = Annotated[
    str,
    Field(
        title="Timeout per step",
        description="How long each step may take, as a duration such as 90s, 5m or 1h30m (spec.timeout).",
        pattern=DURATION_PATTERN,
        examples=["5m"],
    ),
]
Apply = Annotated[
    ApplyPolicy,
    Field(
        title="Apply",
        description=(
            "IfReady: refuse unless the database is Ready. Always: rotate whatever its phase (spec.apply)."
        ),
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

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: str) -> str:
        parse_duration(value)
        return value
