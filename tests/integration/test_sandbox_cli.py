"""``python -m sandbox up`` as a user runs it: it says where its kubeconfig is, kubectl works with it,
and Ctrl-C stops every process it started."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

PROJECT_DIR = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90


def read_until(proc: subprocess.Popen[str], marker: str) -> str:
    """Lines of the process's output up to the one holding ``marker``."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"sandbox exited early ({proc.poll()}):\n{''.join(seen)}")
        seen.append(line)
        if marker in line:
            return "".join(seen)
    pytest.fail(f"no {marker!r} within {STARTUP_TIMEOUT_S}s:\n{''.join(seen)}")


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

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not accepts_connections(port), "kube-apiserver is still running after Ctrl-C"
    assert not kubeconfig.exists(), "the sandbox's temporary folder was not removed"


def test_sandbox_stack_serves_the_prefect_ui_with_the_deployments_and_stops_everything_on_ctrl_c() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        ui_port = int(sock.getsockname()[1])
    proc = run_sandbox("stack", "--port", str(ui_port), "--replicas", "1")
    try:
        output = read_until(proc, "Press Ctrl-C")
        assert f"Prefect UI:   http://127.0.0.1:{ui_port}" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        request = urllib.request.Request(
            f"http://127.0.0.1:{ui_port}/api/deployments/filter",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
            names = {deployment["name"] for deployment in json.loads(reply.read())}
        assert names == {"scheduled", "manual", "in-cluster"}

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not accepts_connections(ui_port), "the Prefect server is still running after Ctrl-C"
