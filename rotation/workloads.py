"""The workloads restarted after a successful rotation, so that applications which read the password
only when they start get the new one; which ones and how (pure: no I/O).

Two ways to opt in, merged without duplicates:

- the workload's annotation ``secret.reloader.stakater.com/reload: <secret>[,<secret>...]``
  (stakater Reloader's convention: a comma-separated list, whitespace around names ignored) naming
  the auth secret in use after the rotation; always honoured;
- the flow's ``restart_workloads`` parameter: ``kind/name`` items (kind ``deployment``,
  ``statefulset`` or ``daemonset``, in any case; kubectl's plurals and short names work too).

A restart is ``kubectl rollout restart``'s: a strategic merge patch that sets the pod template's
annotation ``kubectl.kubernetes.io/restartedAt`` to a time (RFC 3339). The template changes, so the
workload's own controller replaces its pods as its update strategy says. One time per run: patching
again with the same time (a retried request) changes nothing, so a workload is restarted once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, Field

from rotation.params import DNS1123_SUBDOMAIN

RELOAD_ANNOTATION: Final = "secret.reloader.stakater.com/reload"
RESTARTED_AT_ANNOTATION: Final = "kubectl.kubernetes.io/restartedAt"
APPS_API_VERSION: Final = "apps/v1"
MAX_NAME: Final = 253
EXAMPLE: Final = "deployment/my-app"


class WorkloadKind(StrEnum):
    """The apps/v1 kinds that can be restarted like ``kubectl rollout restart`` does."""

    DEPLOYMENT = "Deployment"
    STATEFULSET = "StatefulSet"
    DAEMONSET = "DaemonSet"

    @property
    def word(self) -> str:
        """How ``restart_workloads`` and ``--restart-workload`` spell it: ``deployment``."""
        return self.value.lower()

    @property
    def plural(self) -> str:
        """The API resource (RBAC's name for it): ``deployments``."""
        return f"{self.word}s"


_SHORT: Final = {
    "deploy": WorkloadKind.DEPLOYMENT,
    "sts": WorkloadKind.STATEFULSET,
    "ds": WorkloadKind.DAEMONSET,
}
_KINDS: Final = {alias: kind for kind in WorkloadKind for alias in (kind.word, kind.plural)} | _SHORT
_NAME = re.compile(DNS1123_SUBDOMAIN)


class InvalidWorkload(ValueError):
    """A ``kind/name`` that names no Deployment, StatefulSet or DaemonSet (the message says why)."""


@dataclass(frozen=True, order=True)
class WorkloadRef:
    """One workload of the database's namespace."""

    kind: WorkloadKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind.word}/{self.name}"

    @property
    def title(self) -> str:
        return f"{self.kind.value} {self.name}"


def parse_workload(text: str, option: str) -> WorkloadRef:
    """``deployment/app`` (any case, plural or kubectl's short name) -> the workload.

    ``option`` names where the text came from, for the error: ``--restart-workload``, or ``item``
    inside the flow's parameter (pydantic prefixes the parameter's name)."""
    kind_text, slash, name = text.partition("/")
    kind = _KINDS.get(kind_text.lower())
    if not slash or kind is None:
        raise InvalidWorkload(
            f"{option} {text!r} is not KIND/NAME with KIND deployment, statefulset or daemonset: "
            f"give e.g. {EXAMPLE!r}"
        )
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise InvalidWorkload(
            f"{option} {text!r}: {name!r} is not a valid name: a DNS-1123 subdomain is 1 to 253 lowercase "
            "letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or "
            f"digit (e.g. {EXAMPLE!r})"
        )
    return WorkloadRef(kind, name)


def parse_workloads(items: Iterable[str], option: str) -> tuple[WorkloadRef, ...]:
    """Every item parsed, each workload once, in the order given."""
    return tuple(dict.fromkeys(parse_workload(item, option) for item in items))


# -- the annotation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkloadView:
    """What the selection needs of a listed workload: its name and its metadata's annotations."""

    ref: WorkloadRef
    annotations: Mapping[str, str]


def reload_secrets(annotations: Mapping[str, str] | None) -> frozenset[str]:
    """The Secrets a workload's Reloader annotation names (empty without the annotation)."""
    value = (annotations or {}).get(RELOAD_ANNOTATION) or ""
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def annotated_for(workloads: Iterable[WorkloadView], secret: str) -> list[WorkloadRef]:
    """The workloads whose Reloader annotation names ``secret``."""
    return sorted(w.ref for w in workloads if secret in reload_secrets(w.annotations))


# -- the selection -----------------------------------------------------------------------------------
class Why(StrEnum):
    """Why a workload is restarted."""

    ANNOTATION = "annotation"  # it names the auth secret in secret.reloader.stakater.com/reload
    PARAMETER = "parameter"  # restart_workloads lists it


@dataclass(frozen=True)
class Chosen:
    ref: WorkloadRef
    why: tuple[Why, ...]


def choose(annotated: Iterable[WorkloadRef], listed: Iterable[WorkloadRef]) -> list[Chosen]:
    """Every workload once, with every reason it was chosen; sorted by kind and name."""
    reasons: dict[WorkloadRef, list[Why]] = {}
    for why, refs in ((Why.ANNOTATION, annotated), (Why.PARAMETER, listed)):
        for ref in refs:
            found = reasons.setdefault(ref, [])
            if why not in found:
                found.append(why)
    return [Chosen(ref, tuple(why)) for ref, why in sorted(reasons.items())]


# -- the restart -------------------------------------------------------------------------------------
def restart_patch(restarted_at: str) -> dict[str, Any]:
    """``kubectl rollout restart``'s patch (strategic merge: only this annotation of the template)."""
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: restarted_at}}}}}


def restart_caveat(kind: WorkloadKind, patched: Mapping[str, Any]) -> str:
    """What keeps the new template from reaching the pods now, read from the patched object (or "")."""
    spec = patched.get("spec") or {}
    if kind is WorkloadKind.DEPLOYMENT and spec.get("paused"):
        return "its rollout is paused (spec.paused): its pods are replaced once it is resumed"
    strategy = (spec.get("updateStrategy") or {}).get("type")
    if kind is not WorkloadKind.DEPLOYMENT and strategy == "OnDelete":
        return "its updateStrategy is OnDelete: each pod gets the new password only when it is deleted"
    return ""


class Outcome(StrEnum):
    RESTARTED = "restarted"
    NOT_PERMITTED = "not-permitted"  # 403: the rotation's identity may not patch it
    NOT_FOUND = "not-found"  # 404
    FAILED = "failed"  # any other error, or transient ones that outlasted the retries


class WorkloadRestart(BaseModel):
    """One workload's line in the report."""

    kind: WorkloadKind
    name: str
    why: list[Why]
    outcome: Outcome
    message: str = ""

    @property
    def title(self) -> str:
        return f"{self.kind.value} {self.name}"


class WorkloadRestarts(BaseModel):
    """What the restart of the workloads did: one line per workload, and what stopped the search for
    annotated workloads (a refused list), if anything."""

    restarts: list[WorkloadRestart] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def not_restarted(self) -> list[WorkloadRestart]:
        return [r for r in self.restarts if r.outcome is not Outcome.RESTARTED]

    @property
    def empty(self) -> bool:
        return not self.restarts and not self.notes

    @property
    def complete(self) -> bool:
        """Every chosen workload restarted and every kind searched."""
        return not self.not_restarted and not self.notes

    def event_message(self, secret: str) -> str:
        """The Event on the MSSQLServer: what was restarted and what was not, and why."""
        restarted = [r.title for r in self.restarts if r.outcome is Outcome.RESTARTED]
        parts = [
            f"Restarted the workloads that use Secret {secret}: {', '.join(restarted)}"
            if restarted
            else f"Restarted no workload that uses Secret {secret}"
        ]
        parts += [f"not restarted: {r.title} ({r.outcome.value}: {r.message})" for r in self.not_restarted]
        parts += self.notes
        return "; ".join(parts)


OTHER_OPTIONS: Final = (
    "keep the other options its grant was generated with, e.g. --service-account or --fleet"
)


def not_permitted_message(ref: WorkloadRef, grant_command: str) -> str:
    return (
        f"this identity may not patch {ref.title} (403 Forbidden): to let rotations restart it, apply "
        f"`{grant_command} | kubectl apply -f -` ({OTHER_OPTIONS})"
    )


def forbidden_list_note(kinds: Sequence[WorkloadKind], namespace: str, grant_command: str) -> str:
    plurals = ", ".join(kind.plural for kind in kinds)
    return (
        f"this identity may not list the {plurals} of namespace {namespace} (403 Forbidden), so the ones "
        f"annotated {RELOAD_ANNOTATION} were not looked for: apply `{grant_command} | kubectl apply -f -`, "
        f"whose Role allows that list ({OTHER_OPTIONS})"
    )
