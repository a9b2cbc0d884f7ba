"""``make stack`` tells a person about a failed run: its webhook receiver gets the notification and the
stack prints it, as ``python -m sandbox stack`` runs for a user (docs/notifications.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sandbox.controlplane import free_port
from tests.integration.test_sandbox_cli import ctrl_c, read_until, running_sandbox

PROJECT_DIR = Path(__file__).resolve().parents[2]
NOTIFY_TIMEOUT_S = 120


def test_make_stack_installs_the_notifications_and_prints_the_one_a_failed_rotation_sends() -> None:
    ui_port = free_port()
    with running_sandbox("stack", "--port", str(ui_port), "--replicas", "1") as proc:
        ready = read_until(proc, "Press Ctrl-C", 180)
        assert "Notify:" in ready and "custom-webhook/rotation-alerts" in ready, ready
        assert len(re.findall(r"created automation '", ready)) == 5, ready
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{ui_port}/api"
        # A database that does not exist: the rotation fails in its first step (Inspect).
        started = subprocess.run(
            [
                str(Path(sys.executable).with_name("prefect")),
                "deployment",
                "run",
                "rotate-mssql-auth/manual",
                "--param",
                "namespace=demo",
                "--param",
                "database=no-such-db",
            ],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = started.stdout.split("UUID:")[1].split()[0]

        printed = read_until(proc, "Link:", NOTIFY_TIMEOUT_S)

        note = printed[printed.index("[notification]") :]
        print(note)  # what the stack's user sees
        assert (
            "[notification] [mssql-auth-rotation] FAILED: rotation of demo/no-such-db at step RotateAuth"
            in note
        )
        assert "Database: demo/no-such-db (namespace/name)" in note
        assert "no-such-db" in note.split("Error:", 1)[1]
        assert f"Link:     http://127.0.0.1:{ui_port}/runs/flow-run/{run_id}" in note
        assert ctrl_c(proc) == 0
