"""``python -m rotation rbac ...``: print the RBAC and the lock one database's rotations need;
``python -m rotation rbac-fleet ...``: the in-cluster fleet's identity and its discovery
(deployments/README.md); ``python -m rotation notifications --block ...``: install the automations that
tell a person when a rotation fails, crashes or leaves a database paused (docs/notifications.md).

``rbac`` and ``rbac-fleet`` are offline: they read nothing from a cluster; pipe their output to
``kubectl apply -f -``. ``notifications`` talks to the Prefect API of ``PREFECT_API_URL``. A bad argument
is reported on stderr with exit status 2 and nothing on stdout, so a pipe applies nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rotation import notifications, rbac


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rotation", description="Tools for the MSSQLServer auth rotation."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    grant = commands.add_parser(
        "rbac",
        help="print the Role, RoleBinding and Lease (the lock) that one database's rotations need (YAML)",
        description=(
            "Print, as YAML for kubectl apply, the Role and RoleBinding that let the rotation's "
            "ServiceAccount rotate ONE MSSQLServer: every rule that can name its objects does "
            "(resourceNames). It also creates the database's rotation lock, a Lease with no holder, "
            "so the ServiceAccount needs no right to create Leases. Generate and apply it again after "
            "scaling the database or adding a user secret (a running rotation keeps its lock)."
        ),
    )
    grant.add_argument("--namespace", required=True, help="the database's namespace")
    grant.add_argument("--database", required=True, help="the MSSQLServer's name")
    grant.add_argument(
        "--replicas",
        required=True,
        type=int,
        help=(
            "the database's spec.replicas: the pods <db>-0 ... <db>-(N-1) the rotation may evict. No "
            "default: a count too small is only found out when the rotation restarts a pod it names not"
        ),
    )
    grant.add_argument(
        "--user-secret",
        action="append",
        default=[],
        metavar="NAME",
        help=(
            "a user-supplied auth Secret a rotation may be given (the flow's auth_secret), read and "
            "written like <db>-auth; repeat for several"
        ),
    )
    grant.add_argument(
        "--tls-secret",
        action="append",
        default=None,
        metavar="NAME",
        help=(
            "a Secret whose ca.crt the rotation trusts (read only); default <db>-server-cert, KubeDB's "
            "server certificate; repeat for several (e.g. the flow's tls_ca_secret), replacing the default"
        ),
    )
    grant.add_argument(
        "--ops-requests",
        action="store_true",
        help=(
            "also let runs write the status of the namespace's MSSQLServerOpsRequests: needed when the "
            "bridge (python -m rotation.bridge) starts the rotations"
        ),
    )
    grant.add_argument(
        "--fleet",
        action="store_true",
        help=(
            f"also bind the Role to the in-cluster fleet's ServiceAccount ({rbac.FLEET_IDENTITY}, in "
            "--service-account-namespace; python -m rotation rbac-fleet), so that scheduled-in-cluster and "
            "recover-in-cluster rotate this database too"
        ),
    )
    grant.add_argument(
        rbac.RESTART_OPTION,
        action="append",
        default=[],
        metavar="KIND/NAME",
        help=(
            "a Deployment, StatefulSet or DaemonSet of the namespace (deployment/NAME, statefulset/NAME, "
            "daemonset/NAME) that rotations may restart once they succeed, as kubectl rollout restart "
            "does (patch of its pod template): one the runs list (restart_workloads) or one annotated "
            "secret.reloader.stakater.com/reload with the auth secret; repeat for several. Without it "
            "the grant may only list them"
        ),
    )
    grant.add_argument(
        "--service-account",
        default=rbac.IDENTITY,
        help=f"the flow runs' ServiceAccount (default {rbac.IDENTITY})",
    )
    grant.add_argument(
        "--service-account-namespace",
        default=rbac.IDENTITY,
        help=f"its namespace (default {rbac.IDENTITY})",
    )
    fleet = commands.add_parser(
        "rbac-fleet",
        help="print the in-cluster fleet's ServiceAccount and what lets it list MSSQLServers (YAML)",
        description=(
            "Print, as YAML for kubectl apply, the in-cluster fleet's ServiceAccount and a role that "
            "may list MSSQLServers (nothing else): a ClusterRole with --all-namespaces (what "
            "scheduled-in-cluster and recover-in-cluster, which name no namespaces, need), or a Role in "
            "each --namespace. The fleet rotates only the databases whose grant is bound to it too "
            "(python -m rotation rbac ... --fleet)."
        ),
    )
    scope = fleet.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--all-namespaces",
        action="store_true",
        help="let the fleet list MSSQLServers in every namespace (a ClusterRole; list only)",
    )
    scope.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="a namespace the fleet may list MSSQLServers in (a Role there); repeat for several",
    )
    fleet.add_argument(
        "--service-account",
        default=rbac.FLEET_IDENTITY,
        help=f"the fleet runs' ServiceAccount (default {rbac.FLEET_IDENTITY})",
    )
    fleet.add_argument(
        "--service-account-namespace",
        default=rbac.IDENTITY,
        help=f"its namespace (default {rbac.IDENTITY})",
    )
    notify = commands.add_parser(
        "notifications",
        help="install the automations that notify a person when a rotation fails, crashes or leaves a "
        "database paused (Prefect API)",
        description=(
            "Create or update, on the Prefect server of PREFECT_API_URL, the automations of "
            "deployments/automations/notify-failures.yaml (each found again by its name, so running it "
            "again is harmless), each sending its message through one Prefect notification block: a "
            "Slack, Microsoft Teams, PagerDuty, e-mail or custom webhook block created beforehand "
            "(docs/notifications.md)."
        ),
    )
    notify.add_argument(
        "--block",
        default=os.environ.get(notifications.BLOCK_ENV),
        metavar="TYPE/NAME",
        help=(
            "the notification block, as <block-type-slug>/<block-name> (as `prefect block ls` shows it), "
            f"e.g. {notifications.EXAMPLE}; default: ${notifications.BLOCK_ENV}"
        ),
    )
    notify.add_argument(
        "--file",
        type=Path,
        default=notifications.AUTOMATIONS_FILE,
        help="the automations (default: deployments/automations/notify-failures.yaml of this checkout)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "notifications":
        return _install_notifications(parser, args)
    if args.command == "rbac-fleet":
        try:
            fleet = rbac.fleet_grant(
                args.namespace,
                all_namespaces=args.all_namespaces,
                service_account=args.service_account,
                service_account_namespace=args.service_account_namespace,
            )
        except rbac.InvalidName as exc:
            parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")
        sys.stdout.write(rbac.render_fleet(fleet))
        return 0
    try:
        grant = rbac.grant(
            args.namespace,
            args.database,
            args.replicas,
            user_secrets=args.user_secret,
            tls_secrets=args.tls_secret,
            service_account=args.service_account,
            service_account_namespace=args.service_account_namespace,
            ops_requests=args.ops_requests,
            fleet=args.fleet,
            restart_workloads=args.restart_workload,
        )
    except rbac.InvalidName as exc:
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")
    sys.stdout.write(rbac.render(grant))
    return 0


def _install_notifications(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Only this command needs Prefect, so it is imported here (rbac stays offline and quick)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from rotation import notifications_installer as installer

    def fail(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog} {args.command}: error: {message}\n")

    try:
        block = notifications.parse_block_setting(args.block)
        source = str(args.file)
        try:
            text = args.file.read_text()
        except OSError as exc:
            raise notifications.NotificationSetupError(
                f"cannot read the automations file {source} ({exc.strerror}): run from the checkout or pass "
                "--file"
            ) from None
        automations = notifications.parse_automations(text, source)
    except notifications.NotificationSetupError as exc:
        fail(str(exc))
    if not PREFECT_API_URL.value():
        fail(
            "PREFECT_API_URL is not set: set it to the API of the Prefect server whose runs should notify "
            "(e.g. https://prefect.example.com/api), else the automations would go to a throwaway local API"
        )
    with get_client(sync_client=True) as client:
        try:
            block_id = installer.resolve_block(client, block)
            done = installer.install(client, installer.validated(automations, block_id, source))
        except notifications.NotificationSetupError as exc:
            fail(str(exc))
        except httpx.HTTPError as exc:  # unreachable, refused credentials, a server error
            parser.exit(
                1,
                f"{parser.prog} {args.command}: error: the Prefect API at {installer.server_address(client)} "
                f"failed ({type(exc).__name__}: {exc}); check PREFECT_API_URL (and PREFECT_API_AUTH_STRING "
                "or PREFECT_API_KEY) and that the server is up, then run this again\n",
            )
    for installed in done:
        print(installed)
    print(f"{len(done)} automation(s) notify through block {block} ({block_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
