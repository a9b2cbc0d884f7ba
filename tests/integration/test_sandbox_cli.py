"""``python -m sandbox up`` as a user runs it: it says where its kubeconfig is, kubectl works with it,
and Ctrl-C stops every process it started. The same for ``python -m sandbox stack`` on a private
PostgreSQL (which needs Debian's postgresql package, installed by scripts/setup.sh)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # no type information; Prefect's PostgreSQL driver
import pytest
import yaml

from sandbox.controlplane import free_port

PROJECT_DIR = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 150  # a wait bound, not a target: the stack starts in about 40 s on an idle machine


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = STARTUP_TIMEOUT_S) -> str:
    """Lines of the process's output up to the one holding ``marker``."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"sandbox exited early ({proc.poll()}):\n{''.join(seen)}")
        seen.append(line)
        if marker in line:
            return "".join(seen)
    pytest.fail(f"no {marker!r} within {timeout}s:\n{''.join(seen)}")


def run_sandbox(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox", *args],
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is missing (scripts/setup.sh installs it)"
)
def test_sandbox_up_serves_kubectl_and_stops_everything_on_ctrl_c() -> None:
    proc = run_sandbox("up", "--namespace", "cli", "--database", "cli-db", "--replicas", "1")
    try:
        output = read_until(proc, "press Ctrl-C")
        match = re.search(r"export KUBECONFIG=(\S+)", output)
        assert match, output
        kubeconfig = Path(match.group(1))
        port = int(
            yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1]
        )
        listing = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "get", "mssqlservers,pods", "-n", "cli"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr
        assert "cli-db" in listing.stdout and "cli-db-0" in listing.stdout
        # The real controller-manager and scheduler run with the sandbox's kubeconfig.
        running = {Path(f"/proc/{pid}/exe").resolve().name for pid in processes_mentioning(str(kubeconfig))}
        assert {"kube-controller-manager", "kube-scheduler"} <= running

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not accepts_connections(port), "kube-apiserver is still running after Ctrl-C"
    assert not processes_mentioning(str(kubeconfig)), "a controller outlived Ctrl-C"
    assert not kubeconfig.exists(), "the sandbox's temporary folder was not removed"


def stop_gracefully(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C first, so that a failed test still stops every server the command started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_sandbox(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m sandbox ARGS``, stopped with Ctrl-C at the end even after a failed assertion."""
    proc = run_sandbox(*args)
    try:
        yield proc
    finally:
        stop_gracefully(proc)
        assert proc.stdout is not None
        proc.stdout.close()


def ctrl_c(proc: subprocess.Popen[str]) -> int:
    """What a user does to stop the command: its exit status."""
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=90)


def deployment_names(ui_port: int) -> set[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{ui_port}/api/deployments/filter",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        return {deployment["name"] for deployment in json.loads(reply.read())}


async def deployment_names_in_postgres(socket_dir: str, port: int) -> set[str]:
    """Read through the cluster's unix socket, which needs no password (its owner and root only)."""
    conn = await asyncpg.connect(host=socket_dir, port=port, user="prefect", database="prefect", timeout=10)
    try:
        return {row["name"] for row in await conn.fetch("SELECT name FROM deployment")}
    finally:
        await conn.close()


def processes_with_env(variable: str, command: str) -> list[int]:
    """Processes whose command line mentions ``command`` and whose environment has ``variable``."""
    found = []
    for pid in processes_mentioning(command):
        try:
            if variable.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_sandbox_stack_serves_ui_deployments_and_bridge_from_postgres_and_stops_all_on_ctrl_c() -> None:
    """``make stack PREFECT_DB=postgres``. The default, SQLite, differs only in the server's database
    URL; the end-to-end tests' stack runs on it (one stack start per variant costs ~25 s)."""
    ui_port = free_port()
    with running_sandbox("stack", "--db", "postgres", "--port", str(ui_port), "--replicas", "1") as proc:
        output = read_until(proc, "Press Ctrl-C")
        match = re.search(
            r"Prefect DB: +PostgreSQL \S+ at postgresql\+asyncpg://prefect:\*\*\*@127\.0\.0\.1:(\d+)/prefect "
            r"\(private cluster in (\S+), socket folder (\S+)\)",
            output,
        )
        assert match, output
        pg_port, cluster, socket_dir = int(match.group(1)), match.group(2), match.group(3)
        assert processes_mentioning(f"{cluster}/data"), "no PostgreSQL server runs on the private cluster"
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/health", timeout=10) as health:
            assert health.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        prefect_yaml = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
        declared = {deployment["name"] for deployment in prefect_yaml["deployments"]}
        assert declared == {
            "scheduled",
            "recover",
            "manual",
            "in-cluster",
            "scheduled-in-cluster",
            "recover-in-cluster",
        }
        assert deployment_names(ui_port) == declared
        assert asyncio.run(deployment_names_in_postgres(socket_dir, pg_port)) == declared
        assert "kubectl apply -f deployments/examples/rotate-auth.yaml" in output
        bridge = processes_with_env(f"PREFECT_API_URL=http://127.0.0.1:{ui_port}/api", "rotation.bridge")
        assert len(bridge) == 1, "the stack runs one bridge (python -m rotation.bridge)"

        assert ctrl_c(proc) == 0
    assert not accepts_connections(ui_port), "the Prefect server is still running after Ctrl-C"
    assert not accepts_connections(pg_port), "PostgreSQL is still running after Ctrl-C"
    assert not processes_mentioning(f"{cluster}/data"), "a PostgreSQL process outlived Ctrl-C"
    assert not Path(cluster).exists(), "the private cluster's folder was not removed"
    assert not Path(f"/proc/{bridge[0]}").exists(), "the bridge is still running after Ctrl-C"


def test_sandbox_stack_in_cluster_carries_the_example_request_through_the_bridge_and_worker_pods() -> None:
    """``make stack IN_CLUSTER=1``: the bridge and the worker are pods; the README's example request,
    applied with kubectl, ends Successful through a Job; Ctrl-C stops everything."""
    ui_port = free_port()
    with running_sandbox("stack", "--in-cluster", "--port", str(ui_port), "--replicas", "1") as proc:
        output = read_until(proc, "Press Ctrl-C")
        match = re.search(r"export KUBECONFIG=(\S+)", output)
        assert match, output
        kubectl = ["kubectl", "--kubeconfig", match.group(1)]
        example = PROJECT_DIR / "deployments" / "examples" / "rotate-auth.yaml"
        subprocess.run([*kubectl, "apply", "-f", str(example)], check=True, capture_output=True, timeout=60)
        name = yaml.safe_load(example.read_text())["metadata"]["name"]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        phase = ""
        while phase not in ("Successful", "Failed") and time.monotonic() < deadline:
            time.sleep(0.5)  # kubectl from outside: no watch to hold open here
            phase = subprocess.run(
                [
                    *kubectl,
                    "get",
                    "mssqlserveropsrequest",
                    name,
                    "-n",
                    "demo",
                    "-o",
                    "jsonpath={.status.phase}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        assert phase == "Successful", phase
        jobs = subprocess.run(
            [*kubectl, "get", "jobs", "-n", "mssql-auth-rotation", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert jobs.strip(), "the request's run was not a Job of the kubernetes work pool"
        pods = processes_mentioning("pod_init.py")
        assert pods, "no pod of the project's image runs"

        assert ctrl_c(proc) == 0
    assert not accepts_connections(ui_port), "the Prefect server is still running after Ctrl-C"
    assert not any(Path(f"/proc/{pid}").exists() for pid in pods), "a pod's process outlived Ctrl-C"
