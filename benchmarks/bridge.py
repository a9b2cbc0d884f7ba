"""Benchmark: how long a RotateAuth MSSQLServerOpsRequest takes from ``kubectl apply`` to
``Successful`` through the bridge, and where that time goes. Prints measured numbers; asserts nothing.

    .venv/bin/python benchmarks/bridge.py [--requests 5] [--replicas 3]

One sandbox (pods take 0.5 s to stop and 1.0 s to start, so a rotation of R replicas cannot take
less than R x 1.5 s), a Prefect server on SQLite, ``prefect deploy --all``, a process worker that asks
for work every second (PREFECT_WORKER_QUERY_SECONDS=1, as ``make stack`` runs it) and one bridge
(``--poll-seconds 2``, its default). The requests are applied one after the other, each once the last
one has ended. For each: apply → accepted by the bridge (its attempt annotation), → flow run created,
→ run started by the worker, → run ended, → request Successful.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import uuid
from typing import Any

from rotation import constants as c
from rotation.ops_request import ATTEMPT_ANNOTATION, EXECUTOR, EXECUTOR_ANNOTATION
from sandbox.cluster import Database, Sandbox, Settings
from sandbox.prefect_stack import PrefectStack

STOP_S, START_S = 0.5, 1.0
NAMESPACE = "bridge-bench"


def _parse(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _request(db: Database, name: str) -> dict[str, Any]:
    return db.sandbox.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
        c.OPS_GROUP, c.OPS_VERSION, db.namespace, c.OPS_PLURAL, name
    )


def one_request(db: Database, stack: PrefectStack) -> dict[str, float]:
    """Apply one request; poll it every 20 ms; return each stage's time since the apply."""
    name = f"rotate-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": f"{c.OPS_GROUP}/{c.OPS_VERSION}",
        "kind": "MSSQLServerOpsRequest",
        "metadata": {"name": name, "annotations": {EXECUTOR_ANNOTATION: EXECUTOR}},
        "spec": {"type": "RotateAuth", "databaseRef": {"name": db.name}, "timeout": "5m"},
    }
    applied = time.time()
    created = db.sandbox.custom.create_namespaced_custom_object(
        c.OPS_GROUP, c.OPS_VERSION, db.namespace, c.OPS_PLURAL, body
    )
    stages: dict[str, float] = {}
    deadline = applied + 180
    while time.time() < deadline:
        obj = _request(db, name)
        now = time.time() - applied
        if ATTEMPT_ANNOTATION in (obj["metadata"].get("annotations") or {}):
            stages.setdefault("accepted", now)
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Successful", "Failed"):
            if phase == "Failed":
                raise SystemExit(f"request {name} failed: {obj['status']}")
            stages["successful"] = now
            break
        time.sleep(0.02)
    else:
        raise SystemExit(f"request {name} did not end within 180 s")
    uid = created["metadata"]["uid"]
    [run] = stack.api(
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"idempotency_key": {"any_": [f"mssqlserveropsrequest/{uid}"]}}},
    )
    stages["run created"] = _parse(run["created"]) - applied
    stages["run started"] = _parse(run["start_time"]) - applied
    stages["run ended"] = _parse(run["end_time"]) - applied
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()

    with Sandbox(Settings(pod_stop_delay=STOP_S, pod_start_delay=START_S)) as sandbox:
        db = sandbox.create_database(NAMESPACE, "bench", replicas=args.replicas)
        stack = PrefectStack()
        try:
            stack.start_server()
            stack.deploy_all()
            stack.start_worker(sandbox.kubeconfig)
            stack.start_bridge(sandbox.kubeconfig)
            one_request(db, stack)  # warm-up: the worker's first run imports everything
            results = [one_request(db, stack) for _ in range(args.requests)]
        finally:
            stack.stop()

    order = ["accepted", "run created", "run started", "run ended", "successful"]
    print(
        f"{args.requests} requests, one {args.replicas}-replica database, floor {args.replicas * 1.5:.1f} s"
    )
    print(f"{'stage (seconds since kubectl apply)':40s} {'median':>7s} {'min':>7s} {'max':>7s}")
    for stage in order:
        values = [r[stage] for r in results]
        print(f"{stage:40s} {statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}")
    spans = {
        "bridge: apply -> run created": [r["run created"] for r in results],
        "worker: run created -> started": [r["run started"] - r["run created"] for r in results],
        "the run itself": [r["run ended"] - r["run started"] for r in results],
        "bridge: run ended -> Successful": [r["successful"] - r["run ended"] for r in results],
    }
    print()
    for what, values in spans.items():
        print(f"{what:40s} {statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}")


if __name__ == "__main__":
    main()
