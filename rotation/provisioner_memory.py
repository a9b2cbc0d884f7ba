"""What this project has learnt about a cluster's KubeDB provisioner: whether it acknowledges a pause.

KubeDB's public code shows the handshake for some databases (the ops-manager writes ``Paused`` as
``Unknown``, the provisioner turns it ``True`` once it stopped reconciling); whether the MSSQLServer
provisioner does is not public (docs/kubedb-fidelity.md, "Pausing"). A provisioner without it never
answers, so every rotation would wait the whole acknowledgement period for nothing. The answer is a
property of the cluster, so it is remembered per cluster, in a Prefect Variable that every run (any
worker, any pod) reads: ``mssql_auth_rotation_pause_ack_<digest of the API server and its CA>``.

Best effort: a Prefect API that cannot be read or written means "nothing learnt", and the run waits the
whole period, as it did before it could remember.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Final

from prefect.logging import get_logger
from prefect.variables import Variable

PREFIX: Final = "mssql_auth_rotation_pause_ack_"
log = get_logger("mssql_auth_rotation.provisioner_memory")


def variable_name(cluster: tuple[str, str]) -> str:
    host, ca_digest = cluster
    return PREFIX + hashlib.sha256(f"{host}\n{ca_digest}".encode()).hexdigest()[:16]


def acknowledges(cluster: tuple[str, str]) -> bool | None:
    """True or False as last seen on this cluster; None when nothing was learnt (or cannot be read)."""
    try:
        value = Variable.get(variable_name(cluster), default=None)
    except Exception as exc:  # best effort: see the module's docstring
        log.warning("could not read what was learnt about the provisioner's pause handshake: %s", exc)
        return None
    if isinstance(value, dict) and isinstance(value.get("acknowledges"), bool):
        return bool(value["acknowledges"])
    return None


def remember(cluster: tuple[str, str], *, acknowledged: bool, seen_on: str) -> None:
    """Record what a rotation just saw (``seen_on``: the database, for people reading the Variable)."""
    value = {
        "acknowledges": acknowledged,
        "seen_on": seen_on,
        "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "api_server": cluster[0],
    }
    try:
        Variable.set(variable_name(cluster), value, tags=["mssql-auth-rotation"], overwrite=True)
    except Exception as exc:  # best effort
        log.warning("could not record what was learnt about the provisioner's pause handshake: %s", exc)
