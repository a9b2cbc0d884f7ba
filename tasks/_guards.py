"""Checks a step makes before it changes something KubeDB also acts on: this run's pause still stands
and is the only one, and no KubeDB ops request has started on the database meanwhile.

KubeDB's ops webhook removes EVERY Paused condition of a database when any of its ops requests ends,
another operation may pause the database next to us (its ``Paused`` beside ours), and KubeDB's
ops-manager may start a request of its own (``spec.authSecret.rotateAfter``, a recommendation). Any
of these means the run must stop before its next write. What the stop leaves depends on the step, so
each caller says what happens next (``then``): before the commit the flow puts the old password back
(:data:`ROLL_BACK`); after it the secret records how far the run got and a re-run finishes the job.
"""

from __future__ import annotations

from typing import Any, Final

from rotation import constants as c
from rotation.errors import DatabaseBusy, PauseLost
from rotation.kube import Kube
from rotation.plan import Target, active_ops_requests, describe_pause, our_pause, pause_of_another

WAIT = "once no other operation holds the database (its ops request has ended and its pause is gone)"
RERUN = f"{WAIT}, run the rotation again to finish the job (the auth secret records how far it got)"
ROLL_BACK: Final = (
    "nothing was committed or restarted: the run puts the old password back on every replica; "
    f"{WAIT}, run the rotation again"
)
ROLL_FORWARD: Final = f"the new password is committed and works on every replica; {RERUN}"
STOPPED = "This run stopped before its next change and resumes only its own pause"


def confirm_held(kube: Kube, target: Target, then: str = RERUN) -> dict[str, Any]:
    """Both checks, before a write step: the MSSQLServer, or ``DatabaseBusy``/``PauseLost``."""
    db = confirm_paused(kube, target, then)
    confirm_no_ops_request(kube, target, then)
    return db


def confirm_paused(kube: Kube, target: Target, then: str = RERUN) -> dict[str, Any]:
    """The MSSQLServer, if this run's pause is in effect and no other pause stands next to it.

    A second pause (``True`` or ``Unknown``, from anyone but this run) means another operation has
    started on the database; its pause is left as it is.
    """
    db = kube.get_database(target.database)
    other = pause_of_another(db, target.holder)
    if other is not None:
        raise DatabaseBusy(
            f"{target.ref}: another operation paused the database while this run was rotating it: "
            f"{describe_pause(other)}. {STOPPED}; {then}"
        )
    mine = our_pause(db, target.holder)
    if mine is not None and mine.get("status") == c.PAUSE_ACKNOWLEDGED:
        return db
    raise PauseLost(
        f"{target.ref}: this run's pause was removed while it was rotating (KubeDB removes every pause "
        f"when an MSSQLServerOpsRequest of the database ends). It stopped before its next change; {then}"
    )


def confirm_no_ops_request(kube: Kube, target: Target, then: str = RERUN) -> None:
    active = active_ops_requests(kube.list_ops_requests(), target.database, own=target.ops_request)
    if active:
        raise DatabaseBusy(
            f"{target.ref}: KubeDB MSSQLServerOpsRequest(s) started during the rotation: "
            f"{', '.join(active)}. {STOPPED}; {then}"
        )
