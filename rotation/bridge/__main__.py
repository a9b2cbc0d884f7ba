"""``python -m rotation.bridge``: carry out MSSQLServerOpsRequests of type RotateAuth with Prefect runs.

Needs PREFECT_API_URL (the Prefect server that runs the ``rotate-mssql-auth`` deployment) and a
Kubernetes identity (in-cluster service account or KUBECONFIG) with deployments/bridge.yaml's rights.
Stops cleanly on SIGINT or SIGTERM; a run in flight goes on, and the next bridge picks it up.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from prefect.settings import PREFECT_API_URL

from rotation.bridge.cluster import OPS_MANAGER_SELECTOR, OpsRequests
from rotation.bridge.controller import BACKOFF_MAX_S, Bridge
from rotation.bridge.runs import Runs
from rotation.errors import RotationError
from rotation.ops_request import EXECUTOR, EXECUTOR_ANNOTATION

log = logging.getLogger("mssql-auth-rotation.bridge")
DEFAULT_DEPLOYMENT = "rotate-mssql-auth/manual"
ALLOW = "--allow-with-kubedb-ops-manager"  # the override: its name says what it allows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rotation.bridge",
        description=(
            "Watch MSSQLServerOpsRequests of type RotateAuth and carry each one out with a Prefect flow "
            f"run, its progress written back to the request. Takes the requests annotated "
            f"{EXECUTOR_ANNOTATION}: {EXECUTOR}, or with --all every RotateAuth request."
        ),
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="take every RotateAuth request, annotated or not (also looks for KubeDB's ops-manager's "
        "pods in every namespace: needs list on pods cluster-wide)",
    )
    parser.add_argument(
        ALLOW,
        action="store_true",
        help="start even where KubeDB's ops-manager is seen, or cannot be looked for. RISK: the "
        "ops-manager carries out every MSSQLServerOpsRequest whatever its annotations, so unless it "
        "does not handle MSSQLServer, every request this bridge takes runs twice, two executors racing "
        "for the credentials and the request's status",
    )
    parser.add_argument("--namespace", help="watch one namespace only (default: every namespace)")
    parser.add_argument(
        "--deployment",
        default=DEFAULT_DEPLOYMENT,
        help=f"the Prefect deployment that runs the rotations (default {DEFAULT_DEPLOYMENT})",
    )
    parser.add_argument(
        "--ops-manager-selector",
        default=OPS_MANAGER_SELECTOR,
        help=f"with --all, the label selector of KubeDB's ops-manager pods "
        f"(default {OPS_MANAGER_SELECTOR!r})",
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=2.0, help="how often runs in flight are looked at (default 2)"
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=300.0,
        help="how often every request is listed again (default 300)",
    )
    parser.add_argument(
        "--backoff-max-seconds",
        type=float,
        default=BACKOFF_MAX_S,
        help=f"the longest pause before trying an unreachable API server or Prefect again "
        f"(default {BACKOFF_MAX_S:.0f}; the pause starts at 1 s and doubles)",
    )
    parser.add_argument("--verbose", action="store_true", help="log each request's steps at DEBUG level")
    return parser


def _ops_manager_check(requests: OpsRequests, selector: str, take_all: bool, allow: bool) -> str | None:
    """Why the bridge must not start, or None. KubeDB's ops-manager carries out every request itself,
    annotated or not: next to it, the bridge would be a second executor of the same requests."""
    try:
        evidence = requests.ops_manager_evidence(selector if take_all else None)
    except RotationError as exc:
        if allow:
            log.warning("could not tell whether KubeDB's ops-manager is installed (%s); %s given", exc, ALLOW)
            return None
        rights = "get on the two ops APIServices" + (" and list on pods cluster-wide" if take_all else "")
        return (
            f"could not tell whether KubeDB's ops-manager is installed: {exc}. Grant the bridge {rights} "
            f"(deployments/bridge.yaml), or, if you know it does not carry out MSSQLServerOpsRequests "
            f"here, start with {ALLOW}"
        )
    if not evidence:
        return None
    seen = ", ".join(evidence)
    if allow:
        log.warning(
            "KubeDB's ops-manager is installed (%s); starting anyway (%s): every request this bridge "
            "takes is also carried out by the ops-manager unless it does not handle MSSQLServer",
            seen,
            ALLOW,
        )
        return None
    taken = (
        "every RotateAuth request"
        if take_all
        else f"the requests annotated {EXECUTOR_ANNOTATION}: {EXECUTOR}"
    )
    return (
        f"KubeDB's ops-manager is installed ({seen}): it carries out every MSSQLServerOpsRequest "
        f"whatever its annotations, so {taken} would run twice, two executors racing for the "
        "database's credentials and the request's status. On this cluster let the ops-manager run the "
        "requests (apply them without the annotation) or run rotate-mssql-auth without a request "
        f"(README, 'From kubectl'). Only if this ops-manager does not handle MSSQLServer, start with {ALLOW}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not PREFECT_API_URL.value():
        print(
            "python -m rotation.bridge: PREFECT_API_URL is not set; set it to the API of the Prefect server "
            "that runs the rotate-mssql-auth deployment (e.g. http://127.0.0.1:4200/api)",
            file=sys.stderr,
        )
        return 2
    try:
        requests = OpsRequests(args.namespace, take_all=args.all)
    except RotationError as exc:
        print(f"python -m rotation.bridge: {exc}", file=sys.stderr)
        return 2
    refusal = _ops_manager_check(
        requests, args.ops_manager_selector, args.all, args.allow_with_kubedb_ops_manager
    )
    if refusal is not None:
        print(f"python -m rotation.bridge: {refusal}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    which = (
        "every RotateAuth request"
        if args.all
        else f"RotateAuth requests annotated {EXECUTOR_ANNOTATION}: {EXECUTOR}"
    )
    log.info("carrying out %s in %s with deployment %s", which, requests.where, args.deployment)
    bridge = Bridge(
        requests,
        Runs(args.deployment),
        take_all=args.all,
        poll_s=args.poll_seconds,
        resync_s=args.resync_seconds,
        backoff_max_s=args.backoff_max_seconds,
    )
    bridge.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
