"""Choices that belong to whoever operates the worker, not to whoever may start a run. Pure logic.

Anyone who can reach the Prefect API can start a run and pick its parameters, so a parameter must
never be enough to weaken a defence. Such a choice is made twice: the run asks for it (a parameter)
and the operator allows it, through the environment of the process the flow runs in (the worker's
for a process pool, the Job's container in deployments/k8s-base-job-template.json for the
kubernetes pool), which no flow parameter or job variable can set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

ALLOW_TRUST_SERVER_CERTIFICATE: Final = "MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE"
_YES: Final = "true"
_NO: Final = frozenset({"", "false"})
WHERE_TO_SET: Final = (
    f"an operator sets {ALLOW_TRUST_SERVER_CERTIFICATE}=true in the environment of the worker (process "
    "work pool) or in the container env of deployments/k8s-base-job-template.json (kubernetes work pool)"
)


def trust_server_certificate_refusal(environ: Mapping[str, str]) -> str | None:
    """Why a run may not use tls_verify=TrustServerCertificate here; None when the operator allows it.

    Only ``true`` (any case) allows it; anything else refuses, an unexpected value saying so, so a
    typo never opens what it meant to keep shut."""
    raw = environ.get(ALLOW_TRUST_SERVER_CERTIFICATE)
    value = (raw or "").strip().lower()
    if value == _YES:
        return None
    why = "is not set" if raw is None else ("is false" if value in _NO else f"is {raw!r}, not 'true'")
    return (
        "tls_verify=TrustServerCertificate (encrypt without verifying any certificate) is an operator's "
        f"setting, not a run's, and {ALLOW_TRUST_SERVER_CERTIFICATE} {why} where this run executes: "
        "run with VerifyFull or VerifyCA (tls_ca_secret names the CA to trust), or, if this database "
        f"really has no certificate a CA can vouch for, {WHERE_TO_SET}"
    )
