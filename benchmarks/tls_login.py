"""What TDS 8.0 strict costs a login, against TDS 7.x with encryption required, over loopback.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/tls_login.py [--logins 50]``. One emulated SQL
Server with a certificate from a private CA; pymssql logs in through a freetds.conf section that
verifies the CA and the name, as the product's sections do (rotation/tls.py); only the section's
``encryption`` differs. It measures and prints the median and p90 per login; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pymssql

from sandbox.sqlserver.certs import issue_server_certificate, make_ca
from sandbox.sqlserver.server import TdsServer
from sandbox.sqlserver.state import InstanceState

NAME = "bench-0.bench-pods.ns.svc"
PASSWORD = "Bench-Sa-Passw0rd!"  # noqa: S105 (a throwaway emulator login)
MODES = {"TDS 8.0 strict": "strict", "TDS 7.x require": "require"}


def measure(logins: int, folder: Path) -> dict[str, list[float]]:
    ca = make_ca("bench-ca")
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    state = InstanceState("bench", PASSWORD, certificate=issue_server_certificate(ca, dns_names=[NAME]))
    server = TdsServer(state, "127.0.0.1", 0)
    server.start()
    port = server.address[1]
    sections = "".join(
        f"[{mode}]\n\thost = 127.0.0.1\n\tport = {port}\n\tencryption = {mode}\n"
        f"\tca file = {folder / 'ca.crt'}\n\tcertificate hostname = {NAME}\n"
        for mode in MODES.values()
    )
    (folder / "freetds.conf").write_text("[global]\n" + sections)
    os.environ["FREETDSCONF"] = str(folder / "freetds.conf")
    try:
        results: dict[str, list[float]] = {label: [] for label in MODES}
        for _ in range(logins):  # interleaved, so drift in the machine's load hits both alike
            for label, mode in MODES.items():
                began = time.perf_counter()
                pymssql.connect(server=mode, port=str(port), user="sa", password=PASSWORD).close()
                results[label].append(time.perf_counter() - began)
        return results
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--logins", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = measure(args.logins, Path(folder))
    print("| connection | logins | median ms | p90 ms |\n|---|---:|---:|---:|")
    for label, samples in results.items():
        ordered = sorted(samples)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        print(f"| {label} | {len(samples)} | {statistics.median(samples) * 1000:.1f} | {p90 * 1000:.1f} |")


if __name__ == "__main__":
    main()
