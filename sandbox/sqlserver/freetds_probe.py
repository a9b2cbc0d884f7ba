"""Measure what pymssql's bundled FreeTDS does with TLS, against the emulated SQL Server.

Run: ``.venv/bin/python -m sandbox.sqlserver.freetds_probe`` (about a minute; loopback only). It
prints markdown tables; docs/freetds-tls.md holds the output it was written from.

Each client attempt runs in a fresh interpreter, because pymssql keeps the last server message of
a process and reports it again on later failures; the "one process" section measures exactly that.
The server side of each row comes from the emulator's encryption record (InstanceState.connections,
handshakes, logins, batches), reset before each attempt.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sandbox.sqlserver.certs import (
    CertificateAuthority,
    ServerCertificate,
    issue_server_certificate,
    make_ca,
)
from sandbox.sqlserver.server import TdsServer
from sandbox.sqlserver.state import InstanceState

SA_PASSWORD = "Probe-Sa-Passw0rd!"
APP_PASSWORD = "Probe-App-Passw0rd!"
POD_NAME = "mssql-0.db-pods.ns.svc"
OTHER_POD_NAME = "mssql-1.db-pods.ns.svc"

# One client attempt: connect, SELECT 1, ALTER LOGIN (autocommit), report as JSON.
_ATTEMPT = """
import json, sys, pymssql
spec = json.loads(sys.argv[1])
try:
    conn = pymssql.connect(login_timeout=5, autocommit=True, **spec["connect"])
    cursor = conn.cursor()
    cursor.execute("SELECT 1")
    cursor.fetchall()
    cursor.execute(spec["alter"])
    print(json.dumps({"ok": True, "tds_version": conn._conn.tds_version}))
    conn.close()
except pymssql.OperationalError as error:
    number, text = error.args[0]
    print(json.dumps({"ok": False, "number": number, "text": text.decode("utf-8", "replace")}))
except Exception as error:
    print(json.dumps({"ok": False, "exception": f"{type(error).__name__}{error.args}"}))
"""

# Several attempts in one process: [label, env changes, connect kwargs] in order, or in threads.
_SEQUENCE = """
import json, os, sys, threading, pymssql
spec = json.loads(sys.argv[1])
def attempt(kwargs):
    try:
        pymssql.connect(login_timeout=5, **kwargs).close()
        return {"ok": True}
    except pymssql.OperationalError as error:
        number, text = error.args[0]
        return {"ok": False, "number": number, "text": text.decode("utf-8", "replace")}
if spec["threads"]:
    results = [None] * len(spec["steps"])
    def run(index, kwargs):
        results[index] = attempt(kwargs)
    threads = [threading.Thread(target=run, args=(i, step[2])) for i, step in enumerate(spec["steps"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for step, result in zip(spec["steps"], results):
        print(json.dumps([step[0], result]))
else:
    for label, env, kwargs in spec["steps"]:
        for name, value in env.items():
            if name.startswith("write:"):
                open(name[6:], "w").write(value)
            else:
                os.environ[name] = value
        print(json.dumps([label, attempt(kwargs)]))
"""


def summarize(result: dict[str, Any]) -> str:
    """One line for a client outcome: ok, or the error number and the messages in its text."""
    if result.get("ok"):
        version = result.get("tds_version")
        return "connected" + (f" (tds_version {version})" if version else "")
    if "exception" in result:
        return str(result["exception"])
    text = str(result["text"])
    parts: list[str] = []
    if "Login failed for user" in text:
        parts.append("'Login failed for user ...'")
    for number, message in re.findall(r"DB-Lib error message (\d+), severity \d+:\n([^\n]*)", text):
        part = f"{number} {message}"
        if part not in parts:
            parts.append(part)
    if "Connection refused" in text:
        parts.append("Net-Lib: Connection refused")
    return f"error {result['number']}: " + "; ".join(parts)


@dataclass
class Instance:
    state: InstanceState
    server: TdsServer

    @property
    def port(self) -> str:
        return str(self.server.address[1])

    def record(self) -> str:
        """What the server saw since the last reset, in one line."""
        self.server.wait_idle(5)
        if not self.state.connections and not self.state.logins:
            return "nothing (no PRELOGIN)"
        parts = []
        for c in self.state.connections:
            asked = "none" if c.client is None else c.client.name
            parts.append(f"PRELOGIN {asked}->{c.reply.name} ({c.mode.value})")
        for h in self.state.handshakes:
            parts.append("TLS handshake " + ("completed" if h.completed else "not completed"))
        for login in self.state.logins:
            parts.append(f"LOGIN7 {'in TLS' if login.encrypted else 'CLEAR'}")
        batches = self.state.batches
        if batches:
            kinds = sorted({f"{b.kind} {'in TLS' if b.encrypted else 'CLEAR'}" for b in batches})
            parts.append("batches: " + ", ".join(kinds))
        if not self.state.logins:
            parts.append("no LOGIN7")
        self.state.clear_records()
        return "; ".join(parts) if parts else "nothing"


class Lab:
    """CAs, certificates, servers on loopback and freetds.conf files in a temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = make_ca("probe-ca")
        self.other_ca = make_ca("probe-other-ca")
        self.ca_file = self.write("ca.crt", self.ca.cert_pem)
        self.other_ca_file = self.write("other-ca.crt", self.other_ca.cert_pem)
        self._instances: list[Instance] = []

    def write(self, name: str, data: bytes | str) -> str:
        path = self.folder / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def cert(
        self,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        cn: str | None = None,
        ca: CertificateAuthority | None = None,
    ) -> ServerCertificate:
        return issue_server_certificate(ca or self.ca, dns_names=dns, ip_addresses=ips, common_name=cn)

    def instance(
        self, certificate: ServerCertificate | None, *, force: bool = False, host: str = "127.0.0.1"
    ) -> Instance:
        state = InstanceState("probe", SA_PASSWORD, certificate=certificate, force_encryption=force)
        state.set_login("app", APP_PASSWORD)
        server = TdsServer(state, host, 0)
        server.start()
        instance = Instance(state, server)
        self._instances.append(instance)
        return instance

    def stop(self) -> None:
        for instance in self._instances:
            instance.server.stop()

    def attempt(self, conf: str, **connect: Any) -> dict[str, Any]:
        env = {**os.environ, "FREETDSCONF": conf}
        env.pop("TDSDUMP", None)
        connect.setdefault("user", "sa")
        connect.setdefault("password", SA_PASSWORD)
        spec = {"connect": connect, "alter": f"ALTER LOGIN [app] WITH PASSWORD = N'{APP_PASSWORD}'"}
        result: dict[str, Any] = _run(_ATTEMPT, spec, env)[0]
        return result

    def sequence(
        self, steps: list[tuple[str, dict[str, str], dict[str, Any]]], *, threads: bool = False
    ) -> list[Any]:
        env = {k: v for k, v in os.environ.items() if k not in ("FREETDSCONF", "TDSDUMP")}
        return _run(_SEQUENCE, {"steps": steps, "threads": threads}, env)


def _run(code: str, spec: dict[str, Any], env: dict[str, str]) -> list[Any]:
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _table(title: str, header: tuple[str, ...], rows: Sequence[Sequence[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")


@contextmanager
def _closing_listener() -> Iterator[str]:
    """A TCP port that accepts and closes at once (a server that hangs up before PRELOGIN)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield str(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()


def measure_encryption_values(lab: Lab) -> None:
    empty = lab.write("empty.conf", "[global]\n")
    cert = lab.cert(ips=("127.0.0.1",))
    servers = [
        ("no certificate", lab.instance(None)),
        ("certificate", lab.instance(cert)),
        ("certificate, forced", lab.instance(cert, force=True)),
    ]
    rows = []
    for server_name, instance in servers:
        for encryption in (None, "request", "off", "require"):
            options = {} if encryption is None else {"encryption": encryption}
            result = lab.attempt(empty, server="127.0.0.1", port=instance.port, **options)
            shown = "(not given)" if encryption is None else f'"{encryption}"'
            rows.append((server_name, shown, summarize(result), instance.record()))
    _table(
        "A. encryption= against servers without / with a certificate / forcing encryption (no CA file)",
        ("server", "pymssql encryption", "client outcome", "what the server saw"),
        rows,
    )


def measure_verification(lab: Lab) -> None:
    ip_cert = lab.instance(lab.cert(ips=("127.0.0.1",)))
    dns_cert = lab.instance(lab.cert(dns=("localhost",)))
    foreign = lab.instance(lab.cert(dns=("localhost",), ips=("127.0.0.1",), ca=lab.other_ca))
    mismatch = lab.instance(lab.cert(dns=("elsewhere.example",)))
    cn_only = lab.instance(lab.cert(dns=("elsewhere.example",), cn="127.0.0.1"))
    no_cert = lab.instance(None)
    verify = lab.write(
        "verify.conf", f"[global]\n\tca file = {lab.ca_file}\n\tcheck certificate hostname = yes\n"
    )
    default_check = lab.write("ca-only.conf", f"[global]\n\tca file = {lab.ca_file}\n")
    no_check = lab.write(
        "no-check.conf", f"[global]\n\tca file = {lab.ca_file}\n\tcheck certificate hostname = no\n"
    )
    missing = lab.write("missing.conf", f"[global]\n\tca file = {lab.folder}/no-such-ca.crt\n")
    empty = lab.write("empty.conf", "[global]\n")
    req = {"encryption": "require"}
    cases: list[tuple[str, str, Instance | None, dict[str, Any]]] = [
        ("IP SAN 127.0.0.1; server='127.0.0.1'", verify, ip_cert, {"server": "127.0.0.1", **req}),
        ("DNS SAN localhost only; server='127.0.0.1'", verify, dns_cert, {"server": "127.0.0.1", **req}),
        ("DNS SAN localhost; server='localhost'", verify, dns_cert, {"server": "localhost", **req}),
        ("IP SAN 127.0.0.1 only; server='localhost'", verify, ip_cert, {"server": "localhost", **req}),
        (
            "SAN elsewhere.example, CN 127.0.0.1; server='127.0.0.1'",
            verify,
            cn_only,
            {"server": "127.0.0.1", **req},
        ),
        ("certificate from another CA", verify, foreign, {"server": "127.0.0.1", **req}),
        (
            "right CA, wrong password",
            verify,
            ip_cert,
            {"server": "127.0.0.1", "password": "Wrong-Passw0rd", **req},
        ),
        ("nothing listens on the port", verify, None, {"server": "127.0.0.1", "port": "1", **req}),
        ("'ca file' names a missing file", missing, ip_cert, {"server": "127.0.0.1", **req}),
        (
            "name mismatch, no 'check certificate hostname' line",
            default_check,
            mismatch,
            {"server": "127.0.0.1", **req},
        ),
        (
            "name mismatch, check certificate hostname = no",
            no_check,
            mismatch,
            {"server": "127.0.0.1", **req},
        ),
        ("no 'ca file' at all, certificate from another CA", empty, foreign, {"server": "127.0.0.1", **req}),
        ("encryption request (login-only), another CA", verify, foreign, {"server": "127.0.0.1"}),
        ("encryption off, another CA", verify, foreign, {"server": "127.0.0.1", "encryption": "off"}),
        ("encryption request, server without certificate", verify, no_cert, {"server": "127.0.0.1"}),
        ("encryption require, server without certificate", verify, no_cert, {"server": "127.0.0.1", **req}),
    ]
    rows = []
    for name, conf, instance, connect in cases:
        if instance is not None:
            connect = {"port": instance.port, **connect}
        result = lab.attempt(conf, **connect)
        rows.append((name, Path(conf).name, summarize(result), instance.record() if instance else "-"))
    with _closing_listener() as port:
        result = lab.attempt(verify, server="127.0.0.1", port=port, encryption="require")
        rows.append(("server closes the connection at once", "verify.conf", summarize(result), "-"))
    _table(
        "B. Certificate checks through FREETDSCONF "
        "(verify.conf: [global] ca file + check certificate hostname = yes)",
        ("case", "conf", "client outcome", "what the server saw"),
        rows,
    )


def measure_sections(lab: Lab) -> None:
    pod = lab.instance(lab.cert(dns=(POD_NAME,), ips=("127.0.0.2",)), host="127.0.0.2")
    wildcard = lab.instance(lab.cert(dns=("*.db-pods.ns.svc",)), host="127.0.0.2")
    foreign = lab.instance(lab.cert(ips=("127.0.0.1",), ca=lab.other_ca))
    plain = lab.instance(lab.cert(ips=("127.0.0.1",)))
    no_tls = lab.instance(None)
    conf = lab.write(
        "sections.conf",
        f"""[global]
[pod-a]
\thost = 127.0.0.2
\tport = {pod.port}
\tca file = {lab.ca_file}
[pod-a-by-name]
\thost = 127.0.0.2
\tca file = {lab.ca_file}
\tcertificate hostname = {POD_NAME}
[pod-a-wrong-name]
\thost = 127.0.0.2
\tca file = {lab.ca_file}
\tcertificate hostname = {OTHER_POD_NAME}
[{POD_NAME}]
\thost = 127.0.0.2
\tca file = {lab.ca_file}
[wildcard]
\thost = 127.0.0.2
\tca file = {lab.ca_file}
\tcertificate hostname = {POD_NAME}
[forced-by-conf]
\thost = 127.0.0.1
\tencryption = require
""",
    )
    req = {"encryption": "require"}
    cases: list[tuple[str, Instance, dict[str, Any]]] = [
        (
            "server='pod-a', port=<real port> (host = 127.0.0.2, IP SAN)",
            pod,
            {"server": "pod-a", "port": pod.port, **req},
        ),
        ("server='pod-a' without port (section has the port)", pod, {"server": "pod-a", **req}),
        ("server='POD-A', port=<real port>", pod, {"server": "POD-A", "port": pod.port, **req}),
        (
            "server='pod-a-by-name' (certificate hostname = pod DNS name)",
            pod,
            {"server": "pod-a-by-name", "port": pod.port, **req},
        ),
        (
            "server='pod-a-wrong-name' (certificate hostname = other pod)",
            pod,
            {"server": "pod-a-wrong-name", "port": pod.port, **req},
        ),
        (f"server='{POD_NAME}' (dotted section name)", pod, {"server": POD_NAME, "port": pod.port, **req}),
        (
            "wildcard SAN *.db-pods.ns.svc, certificate hostname = pod name",
            wildcard,
            {"server": "wildcard", "port": wildcard.port, **req},
        ),
        (
            "server='127.0.0.1' (no such section: [global] applies, no CA)",
            foreign,
            {"server": "127.0.0.1", "port": foreign.port, **req},
        ),
        (
            "section encryption = require, pymssql encryption not given",
            plain,
            {"server": "forced-by-conf", "port": plain.port},
        ),
        (
            "section encryption = require, pymssql encryption='request'",
            plain,
            {"server": "forced-by-conf", "port": plain.port, "encryption": "request"},
        ),
        (
            "section encryption = require, pymssql encryption not given, server without TLS",
            no_tls,
            {"server": "forced-by-conf", "port": no_tls.port},
        ),
        (
            "section encryption = require, pymssql encryption='off'",
            plain,
            {"server": "forced-by-conf", "port": plain.port, "encryption": "off"},
        ),
    ]
    rows = []
    for name, instance, connect in cases:
        result = lab.attempt(conf, **connect)
        rows.append((name, summarize(result), instance.record()))
    _table(
        "C. One freetds.conf, one section per server (sections.conf)",
        ("case", "client outcome", "what the server saw"),
        rows,
    )


def measure_one_process(lab: Lab) -> None:
    good = lab.instance(lab.cert(ips=("127.0.0.1",)))
    foreign = lab.instance(lab.cert(ips=("127.0.0.1",), ca=lab.other_ca))
    trust_ca = lab.write("trust-ca.conf", f"[global]\n\tca file = {lab.ca_file}\n")
    trust_other = lab.write("trust-other.conf", f"[global]\n\tca file = {lab.other_ca_file}\n")
    rewritten = lab.write("rewritten.conf", f"[global]\n\tca file = {lab.ca_file}\n")

    def to(
        instance: Instance | None, password: str = SA_PASSWORD, server: str = "127.0.0.1"
    ) -> dict[str, Any]:
        port = instance.port if instance else "1"
        return {"server": server, "port": port, "user": "sa", "password": password, "encryption": "require"}

    steps: list[tuple[str, dict[str, str], dict[str, Any]]] = [
        ("FREETDSCONF=trust-ca.conf, right CA", {"FREETDSCONF": trust_ca}, to(good)),
        ("same process, FREETDSCONF=trust-other.conf, right CA", {"FREETDSCONF": trust_other}, to(good)),
        ("same process, FREETDSCONF=trust-other.conf, other CA", {}, to(foreign)),
        ("FREETDSCONF=rewritten.conf (trusts CA), right CA", {"FREETDSCONF": rewritten}, to(good)),
        (
            "rewritten.conf rewritten in place to trust other CA",
            {f"write:{rewritten}": f"[global]\n\tca file = {lab.other_ca_file}\n"},
            to(good),
        ),
    ]
    rows = [(label, summarize(result)) for label, result in lab.sequence(steps)]
    _table(
        "D1. Is freetds.conf read at every connect? (one process, in order)", ("step", "client outcome"), rows
    )

    env = {"FREETDSCONF": trust_ca}
    steps = [
        ("certificate from another CA", env, to(foreign)),
        ("wrong password", {}, to(good, "Wrong-Passw0rd")),
        ("wrong password again", {}, to(good, "Wrong-Passw0rd")),
        ("certificate from another CA", {}, to(foreign)),
        ("nothing listens", {}, to(None)),
        ("right CA, right password", {}, to(good)),
        ("wrong password", {}, to(good, "Wrong-Passw0rd")),
    ]
    rows = [(label, summarize(result)) for label, result in lab.sequence(steps)]
    _table("D2. Error numbers and texts in one process, in order", ("step", "client outcome"), rows)
    for instance in (good, foreign):
        instance.record()

    cas = [make_ca(f"probe-ca-{i}") for i in range(4)]
    instances = [lab.instance(issue_server_certificate(ca, ip_addresses=["127.0.0.1"])) for ca in cas]
    sections = ["[global]"]
    for index, ca in enumerate(cas):
        ca_file = lab.write(f"ca-{index}.crt", ca.cert_pem)
        sections += [f"[db-{index}]", "\thost = 127.0.0.1", f"\tca file = {ca_file}"]
    sections += [
        "[db-0-wrong-ca]",
        "\thost = 127.0.0.1",
        f"\tca file = {lab.write('ca-1-again.crt', cas[1].cert_pem)}",
    ]
    concurrent = lab.write("concurrent.conf", "\n".join(sections) + "\n")
    threaded: list[tuple[str, dict[str, str], dict[str, Any]]] = []
    for _round in range(4):
        for index, instance in enumerate(instances):
            threaded.append((f"db-{index}", {}, to(instance, server=f"db-{index}")))
        threaded.append(("db-0-wrong-ca", {}, to(instances[0], server="db-0-wrong-ca")))
    environment = {k: v for k, v in os.environ.items() if k != "TDSDUMP"}
    environment["FREETDSCONF"] = concurrent
    outcomes = _run(_SEQUENCE, {"steps": threaded, "threads": True}, environment)
    counts: dict[tuple[str, str], int] = {}
    for label, result in outcomes:
        key = (label, "connected" if result["ok"] else f"error (text: {summarize(result).split(': ', 1)[1]})")
        counts[key] = counts.get(key, 0) + 1
    table = [(label, outcome, str(count)) for (label, outcome), count in sorted(counts.items())]
    _table(
        f"D3. {len(threaded)} threads of one process connecting at once; "
        "one freetds.conf, a section and a CA per server",
        ("section", "client outcome", "threads"),
        table,
    )


def measure_tdsdump(lab: Lab) -> None:
    instance = lab.instance(lab.cert(dns=("elsewhere.example",)))
    foreign = lab.instance(lab.cert(ips=("127.0.0.1",), ca=lab.other_ca))
    good = lab.instance(lab.cert(ips=("127.0.0.1",)))
    conf = lab.write("dump.conf", f"[global]\n\tca file = {lab.ca_file}\n")
    rows = []
    for name, target in (
        ("hostname mismatch", instance),
        ("another CA", foreign),
        ("success + ALTER LOGIN", good),
    ):
        dump = lab.folder / f"dump-{target.port}.log"
        env = {**os.environ, "FREETDSCONF": conf, "TDSDUMP": str(dump)}
        spec = {
            "connect": {
                "server": "127.0.0.1",
                "port": target.port,
                "user": "sa",
                "password": SA_PASSWORD,
                "encryption": "require",
            },
            "alter": f"ALTER LOGIN [app] WITH PASSWORD = N'{APP_PASSWORD}'",
        }
        _run(_ATTEMPT, spec, env)
        text = dump.read_text(errors="replace") if dump.exists() else ""
        lines = [
            line.split(":", 2)[-1].strip()
            for line in text.splitlines()
            if re.search(r"handshake|hostname", line)
        ]
        rows.append(
            (
                name,
                "; ".join(dict.fromkeys(lines)) or "-",
                f"login password in dump: {SA_PASSWORD in text}; "
                f"ALTER LOGIN password in dump: {APP_PASSWORD in text}",
            )
        )
        target.record()
    _table(
        "E. TDSDUMP (FreeTDS debug log) lines about TLS",
        ("case", "dump lines with handshake/hostname", "secrets"),
        rows,
    )


def measure_other(lab: Lab) -> None:
    good = lab.instance(lab.cert(ips=("127.0.0.1",)))
    empty = lab.write("empty.conf", "[global]\n")
    strict = lab.write("strict.conf", "[global]\n\tencryption = strict\n")
    rows = []
    for name, conf, connect in (
        ("encryption='default'", empty, {"encryption": "default"}),
        ("freetds.conf encryption = strict (TDS 8)", strict, {}),
    ):
        result = lab.attempt(conf, server="127.0.0.1", port=good.port, **connect)
        rows.append((name, summarize(result), good.record()))
    _table("F. Other knobs", ("case", "client outcome", "what the server saw"), rows)


def main() -> None:
    import pymssql  # only the probe's report needs it in this process; the attempts run in children

    print(f"pymssql {version('pymssql')}, {pymssql.get_dbversion()}, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="freetds-probe-") as folder:
        lab = Lab(Path(folder))
        try:
            measure_encryption_values(lab)
            measure_verification(lab)
            measure_sections(lab)
            measure_one_process(lab)
            measure_tdsdump(lab)
            measure_other(lab)
        finally:
            lab.stop()


if __name__ == "__main__":
    main()
