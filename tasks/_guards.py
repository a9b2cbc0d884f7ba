"""Checks a step makes before it changes something KubeDB also acts on: the run's pause still stands
and no KubeDB ops request has started on the database meanwhile.

KubeDB's ops webhook removes EVERY Paused condition of a database when any of its ops requests ends,
and KubeDB's ops-manager may start a request of its own (``spec.authSecret.rotateAfter``, a
recommendation). Either way the run must stop before its next change; the secret records how far it
got, so a re-run finishes the job.
"""

from __future__ import annotations

from typing import Any

from rotation import constants as c
from rotation.errors import DatabaseBusy, PauseLost
from rotation.kube import Kube
from rotation.plan import Target, active_ops_requests, describe_pause, foreign_pause, our_pause

RERUN = "run the rotation again to finish the job (the auth secret records how far it got)"


def confirm_paused(kube: Kube, target: Target) -> dict[str, Any]:
    """The MSSQLServer, if this run's pause is still in effect; ``PauseLost`` otherwise."""
    db = kube.get_database(target.database)
    mine = our_pause(db, target.holder)
    if mine is not None and mine.get("status") == c.PAUSE_ACKNOWLEDGED:
        return db
    other = foreign_pause(db)
    now = f"; it is now paused by another operation: {describe_pause(other)}" if other else ""
    raise PauseLost(
        f"{target.ref}: this run's pause was removed while it was rotating (KubeDB removes every pause "
        f"when an MSSQLServerOpsRequest of the database ends){now}. It stopped before its next change; "
        + RERUN
    )


def confirm_no_ops_request(kube: Kube, target: Target) -> None:
    active = active_ops_requests(kube.list_ops_requests(), target.database, own=target.ops_request)
    if active:
        raise DatabaseBusy(
            f"{target.ref}: KubeDB MSSQLServerOpsRequest(s) started during the rotation: "
            f"{', '.join(active)}. It stopped before its next change; once they have finished, {RERUN}"
        )
