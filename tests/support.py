"""Small observations tests make of the sandbox, through the real clients only."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeGuard

import pymssql
from kubernetes import client

from sandbox.cluster import Database
from sandbox.timeline import Entry

BASIC_AUTH = "kubernetes.io/basic-auth"  # a Secret type, not a password

# What KubeDB would have to be paused for: writes to secrets and pod terminations.
MUTATIONS = ("secret-written", "pod-terminating", "pod-deleted")


def server_args(host: str, port: int) -> dict[str, Any]:
    """pymssql's arguments for a SQL Server at ``host``:``port``.

    FreeTDS cannot reach IPv6 with ``server="::1", port=N`` (measured): the port goes into the
    server string, ``[::1]:N``, and no port argument is given.
    """
    if ":" in host:
        return {"server": f"[{host}]:{port}"}
    return {"server": host, "port": str(port)}


def logs_in(db: Database, pod: str, password: str) -> bool:
    """A real pymssql login over TCP to the pod's SQL Server, where its current container listens.

    Inside TLS (``encryption="require"``), so the suite itself never puts a password on the wire in
    clear text; the certificate is not verified: tests observe, the product verifies.
    """
    try:
        target = server_args(db.ip(pod), db.port(pod))
    except KeyError:
        return False  # its container never started: nothing listens for it
    try:
        connection = pymssql.connect(
            **target, user="sa", password=password, login_timeout=5, encryption="require"
        )
        connection.close()
        return True
    except pymssql.OperationalError:
        return False


_ATTEMPT = """
import json, sys, pymssql
args = json.loads(sys.stdin.read())
try:
    connection = pymssql.connect(login_timeout=5, autocommit=True, **args["connect"])
    cursor = connection.cursor()
    for statement in args["sql"]:
        cursor.execute(statement)
        if cursor.description:
            cursor.fetchall()
    connection.close()
    print(json.dumps(None))
except pymssql.OperationalError as error:
    number, message = error.args[0]
    print(json.dumps([number, message.decode("utf-8", "replace")]))
"""


def pymssql_attempt(
    conf: Path, server: str, port: int, password: str, sql: tuple[str, ...] = (), **options: Any
) -> tuple[int, str] | None:
    """Connect as sa (and run ``sql``) with the real pymssql in a fresh interpreter whose FREETDSCONF
    is ``conf``: None if everything worked, else pymssql's (number, message). A fresh interpreter
    keeps the config private to the attempt and its error text its own (pymssql repeats a process's
    first server error later; docs/freetds-tls.md). The password travels on stdin, never in argv."""
    connect = {"server": server, "port": str(port), "user": "sa", "password": password, **options}
    probe = subprocess.run(
        [sys.executable, "-c", _ATTEMPT],
        input=json.dumps({"connect": connect, "sql": list(sql)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "FREETDSCONF": str(conf)},
    )
    result = json.loads(probe.stdout)
    return None if result is None else (int(result[0]), str(result[1]))


def closed_before_login(outcome: tuple[int, str] | None) -> TypeGuard[tuple[int, str]]:
    """Whether a pymssql_attempt failed because the connection closed before any login reply (a TLS
    refusal by either side, or the server hung up): FreeTDS's 20002 "TDS server connection failed"
    and no 20018 (the server answered nothing). The text decides, as in rotation/sqlserver.py, not the
    first number: under CPU load FreeTDS sometimes reports 20017 "Unexpected EOF" first (2 of 150
    attempts against a forcing server with four busy loops on two cores; docs/freetds-tls.md)."""
    if outcome is None:
        return False
    text = outcome[1]
    closed = "DB-Lib error message 20002" in text and "TDS server connection failed" in text
    return closed and "20018" not in text


def freetds_conf(folder: Path, sections: dict[str, dict[str, str]]) -> Path:
    """Write a freetds.conf with an empty [global] and one section per endpoint (docs/freetds-tls.md:
    ``host``, ``port``, ``ca file``, ``certificate hostname``; connect with ``server=<section>``)."""
    lines = ["[global]"]
    for name, settings in sections.items():
        lines += [f"[{name}]", *(f"\t{key} = {value}" for key, value in settings.items())]
    path = folder / f"freetds-{uuid.uuid4().hex[:8]}.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def is_paused(db: Database) -> bool:
    return any(c.get("type") == "Paused" for c in (db.get().get("status") or {}).get("conditions") or [])


def mutations(db: Database) -> list[Entry]:
    return [e for e in db.timeline() if e.kind in MUTATIONS]


def terminated_pods(db: Database) -> list[str]:
    return [e.name for e in db.timeline() if e.kind == "pod-terminating"]


def event_reasons(db: Database) -> list[str]:
    core = db.sandbox.core
    items = core.list_namespaced_event(db.namespace).items
    # Timestamps have second resolution; resourceVersions order the creations exactly.
    return [e.reason for e in sorted(items, key=lambda e: int(e.metadata.resource_version))]


def event_messages(db: Database) -> list[str]:
    return [e.message for e in db.sandbox.core.list_namespaced_event(db.namespace).items]


def create_basic_auth_secret(
    db: Database, name: str, username: str, password: str, *, secret_type: str = BASIC_AUTH
) -> None:
    """A user's credentials secret; ``secret_type="Opaque"`` for the kind KubeDB also accepts."""
    db.sandbox.core.create_namespaced_secret(
        db.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            type=secret_type,
            data={
                "username": base64.b64encode(username.encode()).decode(),
                "password": base64.b64encode(password.encode()).decode(),
            },
        ),
    )


def assert_rotated(db: Database, original: str) -> None:
    """The end state of every successful rotation (and of a finished interrupted one)."""
    secret = db.secret_data()
    assert secret["password.prev"] == original, "password.prev must hold the original password"
    assert "password.next" not in secret and "username.next" not in secret
    for pod in db.pods:
        assert logs_in(db, pod, secret["password"]), pod
        assert not logs_in(db, pod, original), pod
    assert db.sandbox.pods_ready(db.namespace, db.name)
    assert not is_paused(db)
    assert db.sandbox.coordination_leases(db.namespace) == []


def assert_untouched(db: Database, original: str) -> None:
    """The end state of a refused or rolled-back rotation: as if it had never run."""
    assert terminated_pods(db) == []
    for pod in db.pods:
        assert logs_in(db, pod, original), pod
    secret = db.secret_data()
    assert secret["password"] == original and "password.next" not in secret
    assert not is_paused(db)
    assert db.sandbox.coordination_leases(db.namespace) == []


@contextlib.contextmanager
def task_run_log(handler: logging.Handler) -> Iterator[None]:
    """``handler`` receives Prefect's task-run log (the run log's task lines) while the block runs."""
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
