"""Benchmark: what the rotate-mssql-auth flow adds beyond the pods' own stop/start time.

For a 3-replica database the unavoidable time is the sandbox's configured pod stop and start
delays, once per pod. Everything above that is the flow's overhead: Prefect's engine, API calls,
SQL logins, watches. It is reported in two parts: the steps' own span (from the first KubeDB
condition's start to the last one's end), and the rest of the wall time, which is Prefect's engine
around the flow (its heartbeat thread sleeps in whole seconds, and the engine joins it at the end:
up to 1 s). Prints measured numbers; asserts nothing (speed targets live here, not in tests).

    .venv/bin/python benchmarks/rotation_overhead.py [--runs 5] [--stop-delay 0.5] [--start-delay 1.0]
        [--no-handshake]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / "mssql-auth-rotation-bench-prefect"))
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Quiet console: the numbers are what this prints.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from flows.rotate_auth import rotate_mssql_auth
from sandbox.cluster import Sandbox, Settings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument(
        "--stop-delay", type=float, default=0.5, help="seconds from eviction to container stop"
    )
    parser.add_argument("--start-delay", type=float, default=1.0, help="seconds from removal to recreation")
    parser.add_argument(
        "--no-handshake",
        action="store_true",
        help="the provisioner never acknowledges a pause (the sandbox's pause_handshake off): the warm-up "
        "run waits the whole 30 s once and the cluster remembers it",
    )
    args = parser.parse_args()

    floor = args.replicas * (args.stop_delay + args.start_delay)
    settings = Settings(
        pod_stop_delay=args.stop_delay,
        pod_start_delay=args.start_delay,
        pause_handshake=not args.no_handshake,
    )
    with Sandbox(settings) as sandbox:
        os.environ["KUBECONFIG"] = str(sandbox.kubeconfig)
        warm = sandbox.create_database("bench", "warm-up", replicas=args.replicas)
        t0 = time.perf_counter()
        rotate_mssql_auth(namespace=warm.namespace, database=warm.name)
        print(f"warm-up run (starts Prefect's embedded API): {time.perf_counter() - t0:.2f} s")
        pauses = []

        walls, spans = [], []
        for run in range(args.runs):
            db = sandbox.create_database("bench", f"db-{run}", replicas=args.replicas)
            start = time.perf_counter()
            report = rotate_mssql_auth(namespace=db.namespace, database=db.name)
            walls.append(time.perf_counter() - start)
            assert report.outcome == "Successful"
            first, last = report.conditions[0], report.conditions[-1]
            spans.append((last.started_at - first.started_at).total_seconds() + last.seconds)
            pauses.append(next(c.seconds for c in report.conditions if c.type == "DatabasePauseSucceeded"))
            engine = walls[-1] - spans[-1]
            print(
                f"run {run + 1}: wall {walls[-1]:.2f} s, overhead {walls[-1] - floor:.2f} s "
                f"(steps {spans[-1] - floor:.2f} s, Prefect's engine around them {engine:.2f} s)"
            )

    engines = [wall - span for wall, span in zip(walls, spans, strict=True)]
    print(
        f"\n{args.replicas} replicas, pod stop {args.stop_delay:.2f} s + start "
        f"{args.start_delay:.2f} s each: floor {floor:.2f} s\n"
        f"wall     min {min(walls):.2f}  median {statistics.median(walls):.2f}  max {max(walls):.2f} s\n"
        f"overhead min {min(walls) - floor:.2f}  median {statistics.median(walls) - floor:.2f}  "
        f"max {max(walls) - floor:.2f} s per database (target: at most 1.5 s)\n"
        f"  of which the steps' own overhead: median {statistics.median(spans) - floor:.2f} s, "
        f"Prefect's engine around them: median {statistics.median(engines):.2f} s"
        f"\npause (DatabasePauseSucceeded), handshake {'off' if args.no_handshake else 'on'}: median "
        f"{statistics.median(pauses):.2f} s"
    )


if __name__ == "__main__":
    main()
