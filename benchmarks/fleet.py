"""Benchmark: the rotate-mssql-fleet flow over N databases at concurrency C, against a real Prefect
server (SQLite or PostgreSQL) and the sandbox. Prints measured numbers; asserts nothing.

    .venv/bin/python benchmarks/fleet.py [--databases 30] [--concurrency 10] [--db sqlite|postgres|both]

Three processes, so that each is measured on its own: the sandbox (cluster, emulated KubeDB and SQL
Servers; this script started with --serve-sandbox), Prefect's server, and this process, which runs the
flows (the fleet flow and its child rotations, in threads). Each database has 3 replicas whose pods
take 0.5 s to stop and 1.0 s to start, so one rotation cannot take less than 4.5 s and N databases at
concurrency C not less than ceil(N / C) x 4.5 s (the ideal).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
STOP_S, START_S, REPLICAS = 0.5, 1.0, 3
FLOOR_S = REPLICAS * (STOP_S + START_S)
NAMESPACE = "fleet-bench"
LONG_AGO = "2024-01-01T00:00:00Z"


def serve_sandbox(databases: int) -> None:
    """Child mode: a sandbox of ``databases`` due databases; prints its kubeconfig, runs until stdin ends."""
    from sandbox.cluster import Sandbox, Settings

    with Sandbox(Settings(pod_stop_delay=STOP_S, pod_start_delay=START_S)) as sandbox:
        for i in range(databases):
            sandbox.create_database(NAMESPACE, f"db-{i:02d}", replicas=REPLICAS)
            sandbox.core.patch_namespaced_secret(
                f"db-{i:02d}-auth",
                NAMESPACE,
                {"metadata": {"annotations": {"kubedb.com/auth-active-from": LONG_AGO}}},
            )
        print(json.dumps({"kubeconfig": str(sandbox.kubeconfig), "pid": os.getpid()}), flush=True)
        sys.stdin.read()  # until the parent closes it


ROLES = (  # how a process's command line says what it is
    ("flows", "--run-flows"),
    ("sandbox (python)", "--serve-sandbox"),
    ("kube-apiserver", "kube-apiserver"),
    ("etcd", "etcd"),
    ("prefect server", "prefect server"),
    ("postgres", "postgres"),
)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds_by_role() -> dict[str, float]:
    """Cumulative CPU time (user + system) of every process, summed by role."""
    totals = dict.fromkeys((role for role, _ in ROLES), 0.0)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for role, marker in ROLES:
            if marker in command:
                totals[role] += (int(fields[11]) + int(fields[12])) / TICKS
                break
    return totals


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set size the kernel recorded for the process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_fleet(database: str, databases: int, concurrency: int) -> dict[str, Any]:
    from sandbox.prefect_stack import PrefectStack

    sandbox = subprocess.Popen(
        [sys.executable, __file__, "--serve-sandbox", "--databases", str(databases)],
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack = PrefectStack()
    postgres = None
    try:
        assert sandbox.stdout is not None
        ready = json.loads(sandbox.stdout.readline())
        if database == "postgres":
            from sandbox.postgres import PrivatePostgres

            postgres = PrivatePostgres()
            postgres.start()
            stack.database_url = postgres.url
        started = time.monotonic()
        stack.start_server()
        server_start = time.monotonic() - started
        result = _measure(stack, ready["kubeconfig"], databases, concurrency)
        result |= {
            "database": database,
            "server_start_s": server_start,
            "server_peak_rss_mb": peak_rss_mb(stack.server_pid),
            "sandbox_peak_rss_mb": peak_rss_mb(int(ready["pid"])),
        }
        return result
    finally:
        stack.stop()
        if postgres is not None:
            postgres.stop()
        if sandbox.stdin is not None:
            sandbox.stdin.close()
        sandbox.wait(timeout=60)


def run_flows(concurrency: int) -> None:
    """Child mode: a warm-up dry run, then the measured fleet run; prints the numbers as JSON."""
    from flows.rotate_fleet import rotate_mssql_fleet

    rotate_mssql_fleet(namespaces=[NAMESPACE], dry_run=True)  # imports, the client, the first flow run
    start = time.monotonic()
    report = rotate_mssql_fleet(namespaces=[NAMESPACE], max_age="30d", concurrency=concurrency)
    wall = time.monotonic() - start
    result = {
        "wall_s": wall,
        "flows_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": [o.seconds for o in report.outcomes],
        "outcomes": [o.outcome for o in report.outcomes],
    }
    print(json.dumps(result), flush=True)


def _measure(stack: Any, kubeconfig: str, databases: int, concurrency: int) -> dict[str, Any]:
    """Run the fleet in a fresh interpreter pointed at the server, so its RSS is the flows' alone."""
    env = {
        **os.environ,
        **stack.env(),
        "KUBECONFIG": kubeconfig,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_API_URL": stack.api_url,
    }
    argv = [sys.executable, __file__, "--run-flows", "--concurrency", str(concurrency)]
    if os.environ.get("FLEET_BENCH_PROFILE"):  # a py-spy profile of the flows' process (the method)
        spy = str(Path(sys.executable).with_name("py-spy"))
        argv = [spy, "record", "-r", "100", "-f", "raw", "-o", os.environ["FLEET_BENCH_PROFILE"], "--", *argv]
    flows = subprocess.Popen(
        argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    before = cpu_seconds_by_role()
    cpu_during: dict[str, float] = {}
    while flows.poll() is None:  # the flows' own CPU is read while the process still exists
        now = cpu_seconds_by_role()
        cpu_during = {role: now[role] - before[role] for role in now}
        time.sleep(0.5)
    out, err = flows.communicate()
    if flows.returncode != 0:
        raise RuntimeError(err[-4000:])
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["cpu_s"] = cpu_during
    return result


def report(result: dict[str, Any], databases: int, concurrency: int) -> None:
    ideal = math.ceil(databases / concurrency) * FLOOR_S
    seconds = result["seconds"]
    wall = result["wall_s"]
    print(
        f"\n{result['database']}: {databases} databases at concurrency {concurrency}: wall {wall:.1f} s, "
        f"ideal {ideal:.1f} s, ratio {wall / ideal:.2f}\n"
        f"  per database: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s "
        f"(overhead beyond the pods' {FLOOR_S:.1f} s: median {statistics.median(seconds) - FLOOR_S:.2f} s)\n"
        f"  outcomes: {sorted(set(result['outcomes']))}\n"
        f"  peak RSS: flows process {result['flows_peak_rss_mb']:.0f} MB, Prefect server "
        f"{result['server_peak_rss_mb']:.0f} MB, sandbox {result['sandbox_peak_rss_mb']:.0f} MB; "
        f"server start {result['server_start_s']:.1f} s\n"
        "  CPU seconds while the flows ran: "
        + ", ".join(f"{role} {seconds:.1f}" for role, seconds in result["cpu_s"].items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--databases", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--serve-sandbox", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-flows", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sandbox:
        serve_sandbox(args.databases)
        return
    if args.run_flows:
        run_flows(args.concurrency)
        return
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="fleet-bench-"))
    for database in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        report(run_fleet(database, args.databases, args.concurrency), args.databases, args.concurrency)


if __name__ == "__main__":
    main()
