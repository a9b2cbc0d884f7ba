"""The bridge's loop: list the MSSQLServerOpsRequests, watch them, and reconcile each one it may take,
level-triggered: whatever happened while it was away (a restart, an outage of the API server or of
Prefect), the next pass looks at each request as it is now and takes the next step.

A request goes: accepted (our finalizer, phase Pending, the attempt number in an annotation) → a flow
run started for the attempt (idempotency key: the request's UID, so two bridges, a restart or a
replayed event find the same run; its id in an annotation) → the run writes phase Progressing and
KubeDB's conditions → the bridge writes Successful, or starts the next attempt (spec.maxRetries), or
writes Failed, and removes its finalizer. A request deleted meanwhile has its run cancelled first;
the finalizer keeps it visible until that run has ended (and the flow's ``finally`` has resumed).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Final

import urllib3
from kubernetes.client.exceptions import ApiException

from rotation.bridge.cluster import OpsRequests, Stale
from rotation.bridge.runs import PrefectUnavailable, Runs, RunState
from rotation.errors import RotationError
from rotation.kube import Json, now_rfc3339
from rotation.ops_request import (
    ATTEMPT_ANNOTATION,
    FINALIZER,
    RUN_ANNOTATION,
    RUN_URL_ANNOTATION,
    WAITING_ANNOTATION,
    Action,
    OpsRequest,
    Phase,
    condition,
    flow_parameters,
    idempotency_key,
    invalid,
    is_ours,
    next_action,
    request_of,
    waits_for,
)

log = logging.getLogger("mssql-auth-rotation.bridge")
BACKOFF_MIN_S: Final = 1.0
BACKOFF_MAX_S: Final = 30.0
RUN_TAGS: Final = ["mssqlserveropsrequest"]


@dataclass
class Backoff:
    """When to try one request again after Prefect did not answer (doubling, capped)."""

    cap: float = BACKOFF_MAX_S
    delay: float = BACKOFF_MIN_S
    not_before: float = field(default_factory=time.monotonic)

    def failed(self) -> None:
        self.not_before = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.cap)

    @property
    def due(self) -> bool:
        return time.monotonic() >= self.not_before


class Bridge:
    def __init__(
        self,
        requests: OpsRequests,
        runs: Runs,
        *,
        take_all: bool,
        poll_s: float,
        resync_s: float,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.requests, self.runs = requests, runs
        self.take_all = take_all
        self.backoff_max_s = backoff_max_s  # the longest pause before trying the API or Prefect again
        self.poll_s = poll_s  # how often runs in flight are looked at (they end without touching the request)
        self.resync_s = resync_s  # how often everything is listed again
        self._held: dict[str, Json] = {}  # uid -> newest object of each request of ours not yet let go
        self._seen: dict[str, OpsRequest] = {}  # uid -> every request (any type): who waits for whom
        self._backoff: dict[str, Backoff] = {}

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        pause = BACKOFF_MIN_S
        while not stop.is_set():
            try:
                self._pass(stop)
                pause = BACKOFF_MIN_S
            except ApiException as exc:
                if exc.status == 410:  # the watch's resourceVersion expired: list again, at once
                    log.info("watch expired (410); listing again")
                    continue
                pause = self._back_off(stop, exc, pause)
            # The API server away or restarting (a watch cut: urllib3's ProtocolError).
            except (RotationError, OSError, urllib3.exceptions.HTTPError) as exc:
                pause = self._back_off(stop, exc, pause)

    def _back_off(self, stop: threading.Event, exc: BaseException, pause: float) -> float:
        log.warning("Kubernetes API: %s; listing again in %.0fs", _short(exc), pause)
        stop.wait(pause)
        return min(pause * 2, self.backoff_max_s)

    def _pass(self, stop: threading.Event) -> None:
        """List and reconcile everything, then watch in short windows until the next resync, looking
        at the requests in flight after each window."""
        items, version = self.requests.list_all()
        self._held.clear()
        self._seen = {request.uid: request for request in map(request_of, items)}
        for obj in items:
            self.reconcile(obj)
        resync_at = time.monotonic() + self.resync_s
        while not stop.is_set() and time.monotonic() < resync_at:
            for kind, obj in self.requests.watch(version, max(1, round(self.poll_s))):
                version = obj["metadata"].get("resourceVersion") or version
                if kind == "DELETED":
                    self._forget(obj["metadata"]["uid"])
                elif kind != "BOOKMARK":
                    self.reconcile(obj)
                if stop.is_set():
                    return
            for obj in list(self._held.values()):
                self.reconcile(obj)

    # -- one request -------------------------------------------------------------------------------
    def reconcile(self, obj: Json) -> None:
        request = request_of(obj)
        self._seen[request.uid] = request
        if not is_ours(request, self.take_all):
            return
        backoff = self._backoff.get(request.uid)
        if backoff is not None and not backoff.due:
            self._held[request.uid] = obj
            return
        try:
            obj = self._step(request, obj)
            self._backoff.pop(request.uid, None)
        except PrefectUnavailable as exc:
            self._backoff.setdefault(request.uid, Backoff(self.backoff_max_s)).failed()
            log.warning("%s: %s; trying again in a while", request.ref, exc)
        except Stale as exc:  # acted on an older version; the watch brings the newer one
            log.debug("%s: %s", request.ref, exc)
        except (RotationError, ApiException) as exc:
            log.warning("%s: %s; looking again", request.ref, _short(exc))
        except Exception:  # a defect must not stop the bridge from serving the other requests
            log.exception("%s: unexpected error; looking again", request.ref)
        latest = request_of(obj)
        self._seen[request.uid] = latest
        if latest.finished and FINALIZER not in latest.finalizers:
            self._held.pop(request.uid, None)
            self._backoff.pop(request.uid, None)
        else:
            self._held[request.uid] = obj

    def _forget(self, uid: str) -> None:
        self._held.pop(uid, None)
        self._seen.pop(uid, None)
        self._backoff.pop(uid, None)

    def _step(self, request: OpsRequest, obj: Json) -> Json:
        """Take the next step with the request; returns its newest object."""
        run_id = request.run_id
        if run_id is None and request.deleting and ATTEMPT_ANNOTATION in request.annotations:
            # A start may have reached Prefect without its run id reaching the request.
            run_id = self.runs.find(idempotency_key(request, request.attempt))
        state = self.runs.state(run_id) if run_id else None
        action = next_action(request, state.type if state else None)
        if action is Action.START:
            return self._start(request, obj, request.attempt)
        if action is Action.RETRY:
            assert state is not None and run_id is not None
            return self._start(request, obj, request.attempt + 1, retry_after=self._ended(run_id, state))
        if action is Action.SUCCEED:
            return self._finish(request, obj, Phase.SUCCESSFUL, "Successfully rotated the credentials")
        if action is Action.FAIL:
            assert state is not None and run_id is not None
            attempts = f"attempt {request.attempt} of {1 + request.max_retries}"
            return self._finish(request, obj, Phase.FAILED, f"{self._ended(run_id, state)} ({attempts})")
        if action is Action.CANCEL:
            assert run_id is not None and state is not None
            self.runs.cancel(run_id, state, f"MSSQLServerOpsRequest {request.ref} was deleted")
            log.info("%s: deleted; cancelling flow run %s", request.ref, run_id)
            return obj
        if action is Action.RELEASE or (request.finished and FINALIZER in request.finalizers):
            return self._release(obj)
        return obj

    def _ended(self, run_id: str, state: RunState) -> str:
        """How the run ended, for people: its state's message, and for a crash (the process died: the
        message only says so) what the run itself tells of its cause (runs.cause_of)."""
        said = state.message or state.type
        if state.type != "CRASHED":
            return said
        cause = self.runs.crash_cause(run_id)
        return f"{said.rstrip('. ')}; {cause}" if cause else said

    def _start(self, request: OpsRequest, obj: Json, attempt: int, retry_after: str = "") -> Json:
        if request.run_id is None and ATTEMPT_ANNOTATION not in request.annotations:
            # First sight: check it; then hold it (finalizer) and record the attempt BEFORE asking Prefect.
            problem = invalid(request, obj.get("spec") or {}) or self._missing_database(request)
            if problem is not None:
                return self._finish(request, obj, Phase.FAILED, problem)
            blocker = waits_for(request, list(self._seen.values()), self.take_all)
            if blocker is not None:
                return self._wait(request, obj, blocker)
            obj = self.requests.patch_metadata(
                obj,
                {
                    "finalizers": [*request.finalizers, FINALIZER],
                    "annotations": {ATTEMPT_ANNOTATION: str(attempt), WAITING_ANNOTATION: None},
                },
            )
            obj = self.requests.patch_status(
                obj, {"phase": Phase.PENDING.value, "observedGeneration": request.generation}
            )
            self.requests.event(obj, "Pending", "Accepted; a Prefect flow run will carry it out")
        elif request.attempt != attempt:  # the next attempt: forget the last run first
            obj = self.requests.patch_metadata(
                obj,
                {
                    "annotations": {
                        ATTEMPT_ANNOTATION: str(attempt),
                        RUN_ANNOTATION: None,
                        RUN_URL_ANNOTATION: None,
                    }
                },
            )
            message = f"Attempt {request.attempt} ended: {retry_after}; starting attempt {attempt}"
            self.requests.event(obj, "Retrying", message, warning=True)
        # Events queue up behind a slow call (Prefect away): look at the request as it is NOW before
        # the one step no resourceVersion protects. (Deleted in the instant after: the run finds its
        # request gone and does nothing, and the bridge cancels it.)
        now = self.requests.read(obj)
        if now is None or now["metadata"]["uid"] != request.uid or now["metadata"].get("deletionTimestamp"):
            return now or obj
        notes = now["metadata"].get("annotations") or {}
        if notes.get(ATTEMPT_ANNOTATION) == str(attempt) and RUN_ANNOTATION in notes:
            return now  # started already: this was an older version of the request
        obj = now
        run_id = self.runs.start(flow_parameters(request), idempotency_key(request, attempt), RUN_TAGS)
        url = self.runs.url(run_id)
        obj = self.requests.patch_metadata(
            obj, {"annotations": {RUN_ANNOTATION: run_id, **({RUN_URL_ANNOTATION: url} if url else {})}}
        )
        self.requests.event(
            obj, "Started", f"Attempt {attempt}: Prefect flow run {run_id}{f' {url}' if url else ''}"
        )
        log.info("%s: attempt %d is flow run %s", request.ref, attempt, run_id)
        return obj

    def _wait(self, request: OpsRequest, obj: Json, blocker: OpsRequest) -> Json:
        """Pending until the database's earlier request has ended (KubeDB: one per database at a time)."""
        if (
            request.phase == Phase.PENDING.value
            and request.annotations.get(WAITING_ANNOTATION) == blocker.name
        ):
            return obj
        obj = self.requests.patch_metadata(obj, {"annotations": {WAITING_ANNOTATION: blocker.name}})
        obj = self.requests.patch_status(
            obj, {"phase": Phase.PENDING.value, "observedGeneration": request.generation}
        )
        message = f"Waiting for MSSQLServerOpsRequest {blocker.name} of the same database to end"
        self.requests.event(obj, "Waiting", message)
        log.info("%s: %s", request.ref, message)
        return obj

    def _missing_database(self, request: OpsRequest) -> str | None:
        if self.requests.database_exists(request.namespace, request.database):
            return None
        return f"MSSQLServer {request.namespace}/{request.database} does not exist"

    def _finish(self, request: OpsRequest, obj: Json, phase: Phase, message: str) -> Json:
        """The final phase, KubeDB's last condition (a run's own Successful condition is kept; a
        failure is told by the bridge, which knows the attempts), an Event; then let it go."""
        conditions = list((obj.get("status") or {}).get("conditions") or [])
        if phase is Phase.FAILED:
            conditions = [c for c in conditions if c.get("type") != "Failed"]
        type_ = "Successful" if phase is Phase.SUCCESSFUL else "Failed"
        if not any(c.get("type") == type_ for c in conditions):
            conditions.append(condition(type_, "True", message, request.generation, now_rfc3339()))
        obj = self.requests.patch_status(
            obj, {"phase": phase.value, "observedGeneration": request.generation, "conditions": conditions}
        )
        self.requests.event(obj, phase.value, message, warning=phase is Phase.FAILED)
        log.info("%s: %s: %s", request.ref, phase.value, message)
        return self._release(obj)

    def _release(self, obj: Json) -> Json:
        held = obj["metadata"].get("finalizers") or []
        if FINALIZER not in held:
            return obj
        return self.requests.patch_metadata(obj, {"finalizers": [f for f in held if f != FINALIZER]})


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
