"""How long the sandbox takes to start, to create a database and to stop, over several runs.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/sandbox_start.py [--runs 3] [--replicas 3]``.
It measures and prints; it asserts nothing about speed. "control plane" is etcd + kube-apiserver up
and ready; "controllers" is kube-controller-manager and kube-scheduler started until the
controller-manager's first effect; "start" is all of ``Sandbox.start()`` (those two, plus the CRDs,
the emulated controllers and the scheduler's first binding).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from sandbox.cluster import Sandbox

PHASES = ("control plane", "controllers", "start", "create db", "stop")


def _timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def measure_once(replicas: int) -> dict[str, float]:
    sandbox = Sandbox()
    start_api, start_controllers = sandbox.control_plane.start_api, sandbox.control_plane.start_controllers
    seconds: dict[str, float] = {}

    def timed_start_api() -> None:
        seconds["control plane"] = _timed(start_api)

    def timed_start_controllers() -> None:
        seconds["controllers"] = _timed(start_controllers)

    sandbox.control_plane.start_api = timed_start_api  # type: ignore[method-assign]
    sandbox.control_plane.start_controllers = timed_start_controllers  # type: ignore[method-assign]
    try:
        seconds["start"] = _timed(sandbox.start)
        seconds["create db"] = _timed(
            lambda: sandbox.create_database("bench", "mssql-bench", replicas=replicas)
        )
    finally:
        seconds["stop"] = _timed(sandbox.stop)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args(argv)

    header = f"{'run':>6}" + "".join(f"{phase:>15}" for phase in PHASES)
    print(f"sandbox start/stop, {args.runs} run(s), a {args.replicas}-replica database each; seconds")
    print(header)
    runs = []
    for index in range(1, args.runs + 1):
        seconds = measure_once(args.replicas)
        runs.append(seconds)
        print(f"{index:>6}" + "".join(f"{seconds[phase]:>15.2f}" for phase in PHASES), flush=True)
    for label, summary in (("min", min), ("median", statistics.median)):
        print(f"{label:>6}" + "".join(f"{summary(r[phase] for r in runs):>15.2f}" for phase in PHASES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
