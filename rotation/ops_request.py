"""KubeDB's MSSQLServerOpsRequest of type RotateAuth, as this project carries it out: which requests
are ours, what their spec asks the flow for, what to do next with one, and the status KubeDB writes.
Pure logic; the bridge (rotation/bridge/) does the I/O.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from rotation.durations import parse_duration
from rotation.params import DNS1123_SUBDOMAIN, MIN_TIMEOUT_S, ApplyPolicy

ROTATE_AUTH: Final = "RotateAuth"
EXECUTOR_ANNOTATION: Final = "mssql-auth-rotation/executor"
EXECUTOR: Final = "prefect"
RUN_ANNOTATION: Final = "mssql-auth-rotation/flow-run"  # the flow run carrying the request out
RUN_URL_ANNOTATION: Final = "mssql-auth-rotation/flow-run-url"
ATTEMPT_ANNOTATION: Final = "mssql-auth-rotation/attempt"  # written before the attempt's run is asked for
WAITING_ANNOTATION: Final = "mssql-auth-rotation/waiting-for"  # queued behind this request of its database
FINALIZER: Final = "mssql-auth-rotation/bridge"  # a deleted request's run is cancelled first
DEFAULT_MAX_RETRIES: Final = 1  # KubeDB's default for spec.maxRetries
DEFAULT_TIMEOUT: Final = "5m"


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    SKIPPED = "Skipped"

    @property
    def final(self) -> bool:
        return self in (Phase.SUCCESSFUL, Phase.FAILED, Phase.SKIPPED)


FINAL_PHASES: Final = frozenset({"Successful", "Failed", "Skipped", "Denied"})


class OpsRequest(BaseModel):
    """What the bridge needs of one MSSQLServerOpsRequest."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    uid: str
    generation: int
    type: str
    database: str
    auth_secret: str | None
    timeout: str
    apply: str
    max_retries: int
    phase: str
    annotations: dict[str, str]
    finalizers: tuple[str, ...]
    deleting: bool
    created: str = ""  # creationTimestamp (RFC 3339 sorts as time)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def run_id(self) -> str | None:
        return self.annotations.get(RUN_ANNOTATION)

    @property
    def attempt(self) -> int:
        return int(self.annotations.get(ATTEMPT_ANNOTATION, "1") or 1)

    @property
    def finished(self) -> bool:
        return self.phase in FINAL_PHASES

    @property
    def accepted(self) -> bool:
        """An executor took it: a run was (or is being) started, or someone reports progress."""
        return (
            ATTEMPT_ANNOTATION in self.annotations or self.run_id is not None or self.phase == "Progressing"
        )


def request_of(obj: dict[str, Any]) -> OpsRequest:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    secret_ref = (spec.get("authentication") or {}).get("secretRef") or {}
    retries = spec.get("maxRetries")
    return OpsRequest(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 1),
        type=str(spec.get("type", "")),
        database=str((spec.get("databaseRef") or {}).get("name") or ""),
        auth_secret=secret_ref.get("name") or None,
        timeout=str(spec.get("timeout") or DEFAULT_TIMEOUT),
        apply=str(spec.get("apply") or ApplyPolicy.IF_READY.value),
        max_retries=int(retries) if isinstance(retries, int) and retries >= 0 else DEFAULT_MAX_RETRIES,
        phase=str(status.get("phase") or ""),
        annotations=dict(meta.get("annotations") or {}),
        finalizers=tuple(meta.get("finalizers") or ()),
        deleting=bool(meta.get("deletionTimestamp")),
        created=str(meta.get("creationTimestamp") or ""),
    )


def queued_by_bridge(obj: dict[str, Any]) -> bool:
    """A request the bridge holds back (one per database at a time) and has not accepted: it cannot
    start while another rotation of its database is accepted, so a running rotation ignores it."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    ours = annotations.get(EXECUTOR_ANNOTATION) == EXECUTOR or WAITING_ANNOTATION in annotations
    return ours and ATTEMPT_ANNOTATION not in annotations and (status.get("phase") or "") in ("", "Pending")


def is_ours(request: OpsRequest, take_all: bool) -> bool:
    """A RotateAuth request annotated for this executor; with ``take_all``, every RotateAuth request."""
    if request.type != ROTATE_AUTH:
        return False
    return take_all or request.annotations.get(EXECUTOR_ANNOTATION) == EXECUTOR


def waits_for(request: OpsRequest, others: list[OpsRequest], take_all: bool) -> OpsRequest | None:
    """The request this one must wait for, as KubeDB's ops-manager runs one request per database at
    a time: one of the same database that is already accepted, or one of ours created earlier."""
    for other in sorted(others, key=lambda o: (o.created, o.name)):
        if other.uid == request.uid or other.finished or other.deleting:
            continue
        if (other.namespace, other.database) != (request.namespace, request.database):
            continue
        if other.accepted or (
            is_ours(other, take_all) and (other.created, other.name) < (request.created, request.name)
        ):
            return other
    return None


def invalid(request: OpsRequest, raw_spec: dict[str, Any]) -> str | None:
    """Why the spec cannot be carried out, as KubeDB's webhook would say it; None when it can."""
    if not request.database:
        return "spec.databaseRef.name is required"
    if not re.fullmatch(DNS1123_SUBDOMAIN, request.database):
        return f"spec.databaseRef.name {request.database!r} is not a valid name"
    secret_ref = (raw_spec.get("authentication") or {}).get("secretRef") or {}
    if secret_ref.get("apiGroup") not in (None, ""):
        return f"spec.authentication.secretRef.apiGroup {secret_ref['apiGroup']!r} is not supported"
    if secret_ref.get("kind") not in (None, "", "Secret"):
        return f"spec.authentication.secretRef.kind {secret_ref['kind']!r} is not supported (Secret only)"
    if request.auth_secret is not None and not re.fullmatch(DNS1123_SUBDOMAIN, request.auth_secret):
        return f"spec.authentication.secretRef.name {request.auth_secret!r} is not a valid name"
    try:
        if parse_duration(request.timeout) < MIN_TIMEOUT_S:
            return f"spec.timeout {request.timeout!r} is too short: at least {MIN_TIMEOUT_S:.0f}s per step"
    except ValueError:
        return f"spec.timeout {request.timeout!r} is not a duration such as 5m"
    if request.apply not in {p.value for p in ApplyPolicy}:
        return f"spec.apply {request.apply!r} must be IfReady or Always"
    return None


def flow_parameters(request: OpsRequest) -> dict[str, Any]:
    """The ``rotate-mssql-auth`` parameters that carry the request out (names only, never a secret)."""
    return {
        "namespace": request.namespace,
        "database": request.database,
        "auth_secret": request.auth_secret,
        "timeout": request.timeout,
        "apply": request.apply,
        "ops_request": request.name,
    }


def idempotency_key(request: OpsRequest, attempt: int) -> str:
    """One flow run per attempt of one request, however many bridges ask, however often."""
    return f"mssqlserveropsrequest/{request.uid}" + (f"/attempt-{attempt}" if attempt > 1 else "")


class Action(StrEnum):
    NOTHING = "nothing"
    FAIL = "fail"  # invalid, or out of attempts
    START = "start"  # create (or find) the attempt's flow run
    RETRY = "retry"  # the run failed; start the next attempt
    SUCCEED = "succeed"  # the run completed but the request does not say so yet
    CANCEL = "cancel"  # the request is being deleted: cancel its run, then let it go
    RELEASE = "release"  # the request is being deleted and nothing runs: remove our finalizer


TERMINAL_FAILURES: Final = frozenset(
    {"FAILED", "CRASHED", "CANCELLED", "DELETED"}
)  # DELETED: gone from Prefect
RUNNING: Final = frozenset({"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"})


def next_action(request: OpsRequest, run_state: str | None) -> Action:
    """What to do next, given the request and its flow run's state type (None: no run yet)."""
    if request.deleting:
        if run_state == "CANCELLING":
            return Action.NOTHING  # asked already; its worker is stopping it
        return Action.CANCEL if run_state in RUNNING else Action.RELEASE
    if request.finished:
        return Action.NOTHING
    if request.run_id is None or run_state is None:
        return Action.START
    if run_state in RUNNING:
        return Action.NOTHING
    if run_state == "COMPLETED":
        return Action.SUCCEED
    if run_state in TERMINAL_FAILURES and request.attempt <= request.max_retries:
        return Action.RETRY
    return Action.FAIL


def condition(
    type_: str, status: str, message: str, generation: int, at: str, reason: str = ""
) -> dict[str, Any]:
    """A KubeDB-style ops request condition (reason = the type, as KubeDB writes RotateAuth's)."""
    return {
        "type": type_,
        "status": status,
        "reason": reason or type_,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": at,
    }
