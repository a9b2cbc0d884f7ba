"""A local Prefect server with its UI, the project's work pools and deployments, and a process worker
whose flow runs reach the sandbox. Used by ``python -m sandbox stack`` and the deployment tests; it
drives Prefect through its CLI and HTTP API, and the project's own commands, as a user would (a
notification block is saved with Prefect's Python API, as a user saves one without the UI).

The server keeps its data in SQLite (a file in its ``home``) unless ``database_url`` names another
database, such as the ``url`` of a ``sandbox.postgres.PrivatePostgres``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.controlplane import free_port
from sandbox.processes import ProcessGroup

PROJECT_DIR = Path(__file__).resolve().parent.parent
LOCAL_POOL = "mssql-auth-rotation-local"
K8S_POOL = "mssql-auth-rotation-k8s"
# The kubernetes pool's base job template: image, command and service account fixed, not variables.
K8S_BASE_JOB_TEMPLATE = PROJECT_DIR / "deployments" / "k8s-base-job-template.json"
# The in-cluster fleet's pool: the same Job under the fleet's own ServiceAccount (rbac-fleet.yaml).
K8S_FLEET_POOL = "mssql-auth-rotation-k8s-fleet"
K8S_FLEET_JOB_TEMPLATE = PROJECT_DIR / "deployments" / "k8s-fleet-job-template.json"
HEALTH_TIMEOUT_S = 90.0
# The operator's permission for tls_verify=TrustServerCertificate (rotation/operator_settings.py): the
# stack's worker and bridge get it only when asked, never from whatever the caller's shell exported.
ALLOW_TRUST_SERVER_CERTIFICATE = "MSSQL_AUTH_ROTATION_ALLOW_TRUST_SERVER_CERTIFICATE"
BUSY_RETRIES = 5
# The stack's notification block: a custom webhook posting to its local receiver (webhook_receiver.py).
NOTIFICATION_BLOCK = "custom-webhook/rotation-alerts"
PREFECT = str(Path(sys.executable).with_name("prefect"))


class StackError(RuntimeError):
    """A Prefect command or process of the local stack failed."""


@dataclass
class PrefectStack:
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mssql-rotation-prefect-")))
    port: int = 0
    database_url: str | None = None
    """For ``PREFECT_API_DATABASE_CONNECTION_URL`` (``postgresql+asyncpg://...``); None: SQLite."""
    allow_trust_server_certificate: bool = False
    """The operator's setting in the worker's environment (its flow runs inherit it)."""

    def __post_init__(self) -> None:
        self._processes = ProcessGroup(self.home)
        self._server: subprocess.Popen[bytes] | None = None
        self._worker: subprocess.Popen[bytes] | None = None
        self._worker_args: tuple[Path, str] = (Path(), LOCAL_POOL)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_pid(self) -> int:
        """The ``prefect server start`` process (for memory measurements); StackError before start."""
        if self._server is None:
            raise StackError("the Prefect server was not started")
        return self._server.pid

    @property
    def sqlite_path(self) -> Path | None:
        """The server's SQLite file (Prefect's default, ``PREFECT_HOME/prefect.db``), when it uses one."""
        return None if self.database_url else self.home / "prefect.db"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for Prefect commands against this server (not the ephemeral API)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_API_URL=self.api_url,
        )
        env[ALLOW_TRUST_SERVER_CERTIFICATE] = "true" if self.allow_trust_server_certificate else "false"
        env.update(extra)
        return env

    # -- processes ---------------------------------------------------------------------------
    def start_server(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        env = self.env()
        env.pop("PREFECT_API_URL")  # the server itself has no API to talk to
        env["PREFECT_UI_URL"] = self.ui_url  # the links the server's notifications carry
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        argv = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self._server = self._processes.spawn("server", argv, env=env, cwd=PROJECT_DIR)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise StackError(
                    f"the Prefect server exited with {self._server.returncode}; see {self.home}/server.log"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as reply,  # noqa: S310
            ):
                if reply.status == 200:
                    return
            time.sleep(0.2)  # an HTTP health endpoint: nothing to watch
        raise StackError(
            f"Prefect server not healthy after {HEALTH_TIMEOUT_S:.0f}s; see {self.home}/server.log"
        )

    def stop_server(self) -> None:
        """Stop only the server (an outage); ``start_server`` brings it back on the same port and data."""
        if self._server is not None:
            self._processes.stop_one(self._server)
            self._server = None

    def stop_process(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Stop one process this stack started (a bridge, say) with ``sig``."""
        self._processes.stop_one(proc, sig)

    def start_worker(self, kubeconfig: Path, pool: str = LOCAL_POOL) -> None:
        """A process worker; its flow runs use the sandbox's kubeconfig."""
        env = self.env(KUBECONFIG=str(kubeconfig), PREFECT_WORKER_QUERY_SECONDS="1")
        self._worker = self._processes.spawn(
            "worker", [PREFECT, "worker", "start", "--pool", pool, "--limit", "4"], env=env, cwd=PROJECT_DIR
        )
        self._worker_args = (kubeconfig, pool)

    def revive_worker(self) -> bool:
        """Start the worker again if it has exited (a Prefect worker gives up when its server stays
        away, as a Deployment's pod would be restarted); whether it had to."""
        if self._worker is None or self._worker.poll() is None:
            return False
        self._processes.stop_one(self._worker)
        self.start_worker(*self._worker_args)
        return True

    def start_bridge(self, kubeconfig: Path, *args: str, name: str = "bridge") -> subprocess.Popen[bytes]:
        """``python -m rotation.bridge`` against this server (its log: ``<home>/<name>.log``)."""
        env = self.env(KUBECONFIG=str(kubeconfig), PREFECT_UI_URL=self.ui_url)
        argv = [sys.executable, "-m", "rotation.bridge", *args]
        return self._processes.spawn(name, argv, env=env, cwd=PROJECT_DIR)

    def stop(self, *, keep_home: bool = False) -> None:
        self._processes.stop()
        self._server = None
        if not keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    # -- CLI ---------------------------------------------------------------------------------
    def prefect(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [PREFECT, *args], cwd=PROJECT_DIR, env=self.env(), capture_output=True, text=True, timeout=180
        )
        if check and result.returncode != 0:
            raise StackError(
                f"prefect {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result

    def deploy_all(self) -> None:
        """Create the work pools (idempotent) and register every deployment of prefect.yaml."""
        self.prefect("work-pool", "create", LOCAL_POOL, "--type", "process", "--overwrite")
        for pool, template in ((K8S_POOL, K8S_BASE_JOB_TEMPLATE), (K8S_FLEET_POOL, K8S_FLEET_JOB_TEMPLATE)):
            self.prefect(
                "work-pool",
                "create",
                pool,
                "--type",
                "kubernetes",
                "--base-job-template",
                str(template),
                "--overwrite",
            )
        self.prefect("--no-prompt", "deploy", "--all")

    def save_webhook_block(self, block: str, url: str) -> None:
        """A ``custom-webhook`` notification block (``custom-webhook/<name>``) that posts each
        notification's subject and body as JSON to ``url`` (sandbox/webhook_receiver.py)."""
        from prefect.blocks.notifications import CustomWebhookNotificationBlock
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from sandbox.webhook_receiver import BLOCK_JSON

        slug, _, name = block.partition("/")
        if slug != "custom-webhook" or not name:
            raise StackError(f"{block!r} is not custom-webhook/<name>")
        webhook = CustomWebhookNotificationBlock(
            name=name, url=url, json_data=dict(BLOCK_JSON), headers=None, cookies=None
        )
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            webhook.save(name, overwrite=True)

    def install_notifications(self, block: str) -> str:
        """``python -m rotation notifications --block <block>`` against this server, as an operator runs
        it (the same entry point, called in this process: a second Python start-up that imports Prefect
        cost the stack's start-up 5 to 15 s); its output."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from rotation.__main__ import main as rotation_command

        out, err = io.StringIO(), io.StringIO()
        with (
            temporary_settings({PREFECT_API_URL: self.api_url}),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            status = rotation_command(["notifications", "--block", block])
        if status != 0:
            raise StackError(f"installing the notifications failed ({status}):\n{err.getvalue()}")
        return out.getvalue()

    # -- REST --------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any | None = None) -> Any:
        """A plain HTTP call to the Prefect REST API; raises HTTPError on 4xx/5xx.

        A 503 (the SQLite-backed server is busy) is retried a few times, as Prefect's own client does.
        """
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(BUSY_RETRIES + 1):
            request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 URL)
                f"{self.api_url}{path}",
                data=data,
                method=method,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
                    return json.loads(reply.read() or b"null")
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or attempt == BUSY_RETRIES:
                    raise
                time.sleep(0.5 * (attempt + 1))  # back off while the server works through its queue
        raise AssertionError("unreachable")
