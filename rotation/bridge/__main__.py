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
        help="take every RotateAuth request, annotated or not (only for clusters without KubeDB's "
        "ops-manager; refused when it is installed)",
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
        help=f"label selector of KubeDB's ops-manager pods (default {OPS_MANAGER_SELECTOR!r})",
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


def _ops_manager_check(requests: OpsRequests, selector: str, take_all: bool) -> str | None:
    """Why the bridge must not start, or None. With --all, KubeDB's ops-manager would run the same
    requests as the bridge; without it, the bridge only warns (annotated requests are seen by both)."""
    try:
        evidence = requests.ops_manager_evidence(selector)
    except RotationError as exc:
        if take_all:
            return (
                f"--all needs to know that KubeDB's ops-manager is not installed, and could not tell: "
                f"{exc}. Grant list on pods cluster-wide and get on apiservices (deployments/bridge.yaml), "
                "or drop --all"
            )
        log.warning("could not tell whether KubeDB's ops-manager is installed: %s", exc)
        return None
    if evidence and take_all:
        return (
            f"KubeDB's ops-manager is installed ({', '.join(evidence)}): it carries out every RotateAuth "
            f"request itself, so --all would run each one twice. Annotate the requests this bridge should "
            f"take with {EXECUTOR_ANNOTATION}: {EXECUTOR} and start it without --all"
        )
    if evidence:
        log.warning(
            "KubeDB's ops-manager is installed (%s): it also acts on the requests annotated for this bridge",
            ", ".join(evidence),
        )
    return None


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
        requests = OpsRequests(args.namespace)
    except RotationError as exc:
        print(f"python -m rotation.bridge: {exc}", file=sys.stderr)
        return 2
    refusal = _ops_manager_check(requests, args.ops_manager_selector, args.all)
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
