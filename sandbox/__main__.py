"""``python -m sandbox up``: run the sandbox until Ctrl-C, with a demo database to look at.
``python -m sandbox stack``: the same plus a Prefect server with its UI, the deployments and a worker;
``--db postgres`` runs that server on a private PostgreSQL instead of SQLite."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

from sandbox import in_cluster
from sandbox.cluster import Database, Sandbox, Settings
from sandbox.controlplane import free_port
from sandbox.postgres import PrivatePostgres
from sandbox.prefect_stack import K8S_POOL, LOCAL_POOL, NOTIFICATION_BLOCK, PrefectStack
from sandbox.webhook_receiver import Received, WebhookReceiver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the sandbox and keep it running until Ctrl-C")
    up.add_argument("--namespace", default="demo")
    up.add_argument("--database", default="mssql-demo", help="a database to create ('' for none)")
    up.add_argument("--replicas", type=int, default=3)
    up.add_argument("--pod-start-delay", type=float, default=Settings.pod_start_delay)
    up.add_argument("--pod-stop-delay", type=float, default=Settings.pod_stop_delay)
    stack = sub.add_parser("stack", help="sandbox + Prefect server, UI, deployments and a worker")
    stack.add_argument("--namespace", default="demo")
    stack.add_argument("--database", default="mssql-demo")
    stack.add_argument("--replicas", type=int, default=3)
    stack.add_argument("--port", type=int, default=4200, help="the Prefect server's port")
    stack.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the Prefect server's database: SQLite (default) or a private PostgreSQL started and "
        "stopped with the stack (Debian's postgresql, installed by scripts/setup.sh)",
    )
    stack.add_argument(
        "--in-cluster",
        action="store_true",
        help="run the worker and the bridge as the pods of deployments/worker.yaml and bridge.yaml "
        "(the production path: rotations run as Jobs under the ServiceAccount of rbac.yaml) instead "
        "of a process worker and a local bridge",
    )
    args = parser.parse_args(argv)
    if args.command == "stack":
        return run_stack(args)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        "[sandbox] starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the "
        "emulated KubeDB ...",
        flush=True,
    )
    with Sandbox(
        Settings(pod_stop_delay=args.pod_stop_delay, pod_start_delay=args.pod_start_delay)
    ) as sandbox:
        if args.database:
            db = sandbox.create_database(args.namespace, args.database, replicas=args.replicas)
            print(f"[sandbox] database {db.namespace}/{db.name} is Ready with {db.replicas} replica(s)")
        print(
            f"[sandbox] kubeconfig: {sandbox.kubeconfig}\n"
            f"  export KUBECONFIG={sandbox.kubeconfig}\n"
            f"  kubectl get mssqlservers,petsets,pods,secrets -n {args.namespace}\n"
            "[sandbox] running; press Ctrl-C to stop (every process it started is stopped)",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        _ignore_further_interrupts()
        print("\n[sandbox] stopping ...", flush=True)
    return 0


def _ignore_further_interrupts() -> None:
    """A second Ctrl-C must not cut the clean-up short and leave servers behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_stack(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("[stack] starting the sandbox ...", flush=True)
    with Sandbox() as sandbox, WebhookReceiver(on_request=print_notification) as receiver:
        db = sandbox.create_database(args.namespace, args.database, replicas=args.replicas)
        postgres = PrivatePostgres() if args.db == "postgres" else None
        prefect = PrefectStack(port=args.port)
        try:
            if postgres is not None:
                print("[stack] starting a private PostgreSQL for the Prefect server ...", flush=True)
                postgres.start()
                prefect.database_url = postgres.url
                database = postgres.describe()
            else:
                database = f"SQLite at {prefect.sqlite_path}"
            print(f"[stack] starting the Prefect server on {database} ...", flush=True)
            prefect.start_server()
            print("[stack] creating work pools and deploying prefect.yaml ...", flush=True)
            prefect.deploy_all()
            print(
                f"[stack] notifications: block {NOTIFICATION_BLOCK} -> {receiver.url}; "
                f"python -m rotation notifications --block {NOTIFICATION_BLOCK} ...",
                flush=True,
            )
            prefect.save_webhook_block(NOTIFICATION_BLOCK, receiver.url)
            installed = prefect.install_notifications(NOTIFICATION_BLOCK)
            if args.in_cluster:
                print("[stack] applying deployments/rbac.yaml, worker.yaml and bridge.yaml ...", flush=True)
                run_in_cluster(sandbox, prefect, db)
                bridge_log = f"kubectl logs -n {in_cluster.NAMESPACE} -l {in_cluster.BRIDGE_LABEL}"
            else:
                prefect.start_worker(sandbox.kubeconfig)
                prefect.start_bridge(sandbox.kubeconfig)
                bridge_log = f"{prefect.home}/bridge.log"
            one = "in-cluster" if args.in_cluster else "manual"  # the deployment this stack's worker runs
            workers = (
                f"The worker pod polls {K8S_POOL} and runs each rotation as a Job in {in_cluster.NAMESPACE} "
                "(use rotate-mssql-auth/in-cluster)"
                if args.in_cluster
                else f"A worker on pool {LOCAL_POOL} runs the flows"
            )
            print(
                f"""
[stack] ready. Database {db.namespace}/{db.name} ({db.replicas} replicas) is Ready.
  Prefect UI:   {prefect.ui_url}
                Deployments -> rotate-mssql-auth/{one} -> Run -> Custom run: fill the form
                Deployments -> rotate-mssql-fleet/scheduled (daily) and /recover (every 10 minutes,
                and when a rotation crashes): Run -> Quick run, or a Custom run with dry_run
  Prefect DB:   {database}
  From a shell: export PREFECT_API_URL={prefect.api_url}
                .venv/bin/prefect deployment run rotate-mssql-auth/{one} \\
                    --param namespace={db.namespace} --param database={db.name}
  kubectl:      export KUBECONFIG={sandbox.kubeconfig}
                kubectl get mssqlservers,pods,secrets -n {db.namespace}
  From kubectl: kubectl apply -f deployments/examples/rotate-auth.yaml
                kubectl get mssqlserveropsrequests -n {db.namespace} -w
                (python -m rotation.bridge starts a run per request; log: {bridge_log})
  Notify:       a rotation that fails, crashes or leaves its database paused is told through the
                block {NOTIFICATION_BLOCK} (a webhook to {receiver.url}); each message
                is printed here as [notification] (docs/notifications.md). Installed:
{_indented(installed.strip(), 16)}
  {workers}. Press Ctrl-C to stop everything.""",
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
            _ignore_further_interrupts()
            print(
                "\n[stack] stopping the bridge, the worker, the Prefect server"
                + (", PostgreSQL" if postgres else "")
                + " and the sandbox ...",
                flush=True,
            )
        finally:
            try:
                prefect.stop()
            finally:
                if postgres is not None:
                    postgres.stop()  # after the server, which would otherwise log lost connections
    return 0


def print_notification(request: Received) -> None:
    """What the stack's webhook receiver got: a notification, printed where the stack's user looks."""
    print(f"\n[notification] {request.subject}\n{_indented(request.body, 4)}", flush=True)


def _indented(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def run_in_cluster(sandbox: Sandbox, prefect: PrefectStack, db: Database) -> None:
    """The production path (sandbox/in_cluster.py): rbac.yaml, the database's Role, the worker and
    the bridge as pods; returns once both pods run."""
    in_cluster.prepare_identity(sandbox)
    in_cluster.grant_database(sandbox, db.namespace, db.name, db.replicas, "--ops-requests")
    in_cluster.apply(sandbox, in_cluster.worker_manifests(sandbox, prefect.api_url, free_port()))
    in_cluster.apply(sandbox, in_cluster.bridge_manifests(sandbox, prefect.api_url, prefect.ui_url))
    for label in (in_cluster.WORKER_LABEL, in_cluster.BRIDGE_LABEL):
        sandbox.wait_for(
            lambda selector=label: bool(in_cluster.running_pods(sandbox, selector)), f"pods {label} to run"
        )


if __name__ == "__main__":
    sys.exit(main())
