"""Benchmark: what applications of a 3-replica database see during a rotation, and what each of the
flow's disruption measures changes.

Two applications write to the primary every 100 ms through the primary Service
(sandbox/load_client.py), one that mounts the auth secret as a volume (it sees the new password after
``--propagation`` seconds, as a kubelet's sync) and one that reads it at start (env; a pod of the
Deployment ``<db>-app-env``). The variants are cumulative:

1. ``before``: the flow as it was (no wait before the primary's restart, no workload restart);
2. ``+sync``: the primary restarts only once every secondary is synchronized;
3. ``+propagation``: and only ``--propagation`` seconds after the commit, since a pod mounts the secret;
4. ``+workloads``: and ``<db>-app-env`` (annotated ``secret.reloader.stakater.com/reload``) is restarted
   after the rotation.

The window of each run is the rotation plus ``--propagation`` + 2 s after it (the mounted client may
still be failing then). Also shown per run: the primary's handover, from its eviction to a new primary's
role label, and from there to the first write through the new primary. Prints measured numbers;
asserts nothing.

docs/performance.md has it as is (3 replicas, the sandbox's quick pods: the mounted secret lags the
primary's restart) and with ``--replicas 2 --stop-delay 1 --start-delay 3`` (the only secondary is
still catching up when the primary's turn comes).

    .venv/bin/python benchmarks/availability.py [--runs 2] [--propagation 10] [--catch-up 3]
        [--replicas 3] [--stop-delay 0.2] [--start-delay 0.3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / "mssql-auth-rotation-bench-prefect"))
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from kubernetes import client, watch

import flows.rotate_auth as rotate_auth
from sandbox.cluster import Database, Sandbox, Settings
from sandbox.load_client import TABLE_HEADER, Availability, LoadClient, Outcome, PasswordSource, summarize
from tasks.primary_restart import PROPAGATION_ENV

VARIANTS = ("before", "+sync", "+propagation", "+workloads")
APP_IMAGE = "registry.example/app:1.0"  # not the project's image: its pods stay Pending in the sandbox
RELOAD = "secret.reloader.stakater.com/reload"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2, help="rotations per variant")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--propagation", type=float, default=10.0, help="the kubelet's secret sync delay, s")
    parser.add_argument(
        "--stop-delay", type=float, default=0.2, help="seconds from eviction to container stop"
    )
    parser.add_argument("--start-delay", type=float, default=0.3, help="seconds from removal to recreation")
    parser.add_argument(
        "--catch-up",
        type=float,
        default=3.0,
        help="seconds a restarted secondary takes to catch up",
    )
    args = parser.parse_args()

    rows: dict[tuple[str, str], list[Availability]] = {}
    handovers: dict[str, list[tuple[float, float]]] = {}
    durations: dict[str, list[float]] = {}
    settings = Settings(
        pod_stop_delay=args.stop_delay,
        pod_start_delay=args.start_delay,
        secret_propagation_delay=args.propagation,
        secondary_catch_up=args.catch_up,
    )
    with Sandbox(settings) as sandbox:
        os.environ["KUBECONFIG"] = str(sandbox.kubeconfig)
        warm = sandbox.create_database("bench-avail", "warm-up", replicas=args.replicas)
        rotate_auth.rotate_mssql_auth(namespace=warm.namespace, database=warm.name)  # starts Prefect's API
        for variant in VARIANTS:
            for run in range(args.runs):
                db = sandbox.create_database(
                    "bench-avail", f"{variant.strip('+')}-{run}", replicas=args.replicas
                )
                _application_pods(sandbox, db, reload=variant == "+workloads")
                with _flow_as(variant, args.propagation), _clients(sandbox, db, args.propagation) as clients:
                    watcher = _HandoverWatch(sandbox.api, db)
                    start = time.monotonic()
                    report = rotate_auth.rotate_mssql_auth(namespace=db.namespace, database=db.name)
                    finished = time.monotonic()
                    assert report.outcome == "Successful", report.outcome
                    time.sleep(args.propagation + 2.0)  # the window's tail: a measurement, not a wait
                    end = time.monotonic()
                    watcher.stop()
                for label, load in clients.items():
                    seen = summarize(load.samples, start, end)
                    rows.setdefault((variant, label), []).append(seen)
                    print(seen.row(f"{variant} run {run + 1}, {label}"), flush=True)
                first_write = _first_write_after(clients["mounted"], watcher.elected_at)
                handovers.setdefault(variant, []).append(watcher.handover(first_write))
                durations.setdefault(variant, []).append(finished - start)

    print(
        f"\n{args.replicas} replicas; pod stop {args.stop_delay:.1f} s, start {args.start_delay:.1f} s; "
        f"secret propagation {args.propagation:.0f} s; a restarted secondary "
        f"synchronized {args.catch_up:.1f} s after its start; "
        f"medians of {args.runs} runs\n"
    )
    print(TABLE_HEADER.replace("| client |", "| variant, client |"))
    for (variant, label), measured in rows.items():
        print(_median(measured).row(f"{variant}, {label}"))
    print("\n| variant | rotation s | primary evicted → new primary labelled s | → first write s |")
    print("|---|---:|---:|---:|")
    for variant in VARIANTS:
        elect = statistics.median(h[0] for h in handovers[variant])
        write = statistics.median(h[1] for h in handovers[variant])
        print(f"| {variant} | {statistics.median(durations[variant]):.1f} | {elect:.2f} | {write:.2f} |")


@contextmanager
def _flow_as(variant: str, propagation: float) -> Iterator[None]:
    """The flow with the measures of ``variant`` (earlier ones replaced by doing nothing)."""
    names = vars(rotate_auth)  # the flow's own reference to the task, replaced for "before" only
    saved = names["wait_for_synchronized_secondaries"]
    os.environ[PROPAGATION_ENV] = str(propagation if VARIANTS.index(variant) >= 2 else 0)
    if variant == "before":
        names["wait_for_synchronized_secondaries"] = _no_wait
    try:
        yield
    finally:
        names["wait_for_synchronized_secondaries"] = saved


def _no_wait(*_: Any) -> None:
    return None


@contextmanager
def _clients(sandbox: Sandbox, db: Database, propagation: float) -> Iterator[dict[str, LoadClient]]:
    mounted = LoadClient(sandbox.api, db.namespace, db.name, propagation_delay=propagation)
    env = LoadClient(
        sandbox.api, db.namespace, db.name, source=PasswordSource.AT_START, deployment=f"{db.name}-app-env"
    )
    with mounted, env:
        mounted.wait_for_writes(5)
        env.wait_for_writes(5)
        yield {"mounted": mounted, "env": env}


def _application_pods(sandbox: Sandbox, db: Database, *, reload: bool) -> None:
    """A pod that mounts the auth secret (the flow sees it and waits for the kubelet's sync), and the
    Deployment whose pods read it from env (annotated for restarts in the last variant). The load
    clients play their containers."""
    secret = f"{db.name}-auth"
    container = {"name": "app", "image": APP_IMAGE}
    sandbox.core.create_namespaced_pod(
        db.namespace,
        {
            "metadata": {"name": f"{db.name}-app-mounted"},
            "spec": {
                "containers": [{**container, "volumeMounts": [{"name": "db", "mountPath": "/etc/db"}]}],
                "volumes": [{"name": "db", "secret": {"secretName": secret}}],
            },
        },
    )
    env = [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}]
    labels = {"app": f"{db.name}-app-env"}
    client.AppsV1Api(sandbox.api).create_namespaced_deployment(
        db.namespace,
        {
            "metadata": {"name": f"{db.name}-app-env", "annotations": {RELOAD: secret} if reload else {}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{**container, "env": env}]},
                },
            },
        },
    )


class _HandoverWatch:
    """When the primary pod was evicted and when another pod was labelled primary (monotonic)."""

    def __init__(self, api: client.ApiClient, db: Database) -> None:
        self.evicted_at: float | None = None
        self.elected_at: float | None = None
        self._watch = watch.Watch()
        self._core = client.CoreV1Api(api)
        self._db = db
        self._primary: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = f"app.kubernetes.io/instance={self._db.name}"
        for event in self._watch.stream(
            self._core.list_namespaced_pod, self._db.namespace, label_selector=selector
        ):
            pod = event["object"]
            role = (pod.metadata.labels or {}).get("kubedb.com/role")
            name = pod.metadata.name
            if self._primary is None and role == "primary":
                self._primary = name
            if name == self._primary and pod.metadata.deletion_timestamp and self.evicted_at is None:
                self.evicted_at = time.monotonic()
            back = name != self._primary or not pod.metadata.deletion_timestamp  # not the evicted pod
            if self.evicted_at is not None and self.elected_at is None and role == "primary" and back:
                self.elected_at = time.monotonic()

    def stop(self) -> None:
        self._watch.stop()

    def handover(self, first_write: float | None) -> tuple[float, float]:
        if self.evicted_at is None or self.elected_at is None or first_write is None:
            return (float("nan"), float("nan"))
        return (self.elected_at - self.evicted_at, first_write - self.elected_at)


def _first_write_after(load: LoadClient, moment: float | None) -> float | None:
    if moment is None:
        return None
    return next((s.at for s in load.samples if s.at >= moment and s.outcome is Outcome.WROTE), None)


def _median(seen: list[Availability]) -> Availability:
    def mid(values: list[float]) -> float:
        return float(statistics.median(values))

    return Availability(
        seconds=mid([s.seconds for s in seen]),
        writes=int(mid([s.writes for s in seen])),
        no_primary_s=mid([s.no_primary_s for s in seen]),
        failed_logins=int(mid([s.failed_logins for s in seen])),
        failed_writes=int(mid([s.failed_writes for s in seen])),
        longest_gap_s=mid([s.longest_gap_s for s in seen]),
    )


if __name__ == "__main__":
    main()
