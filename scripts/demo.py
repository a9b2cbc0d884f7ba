"""The README's main job: rotate the credentials of a 3-replica sandbox database.

Starts the sandbox (real kube-apiserver, emulated KubeDB, one SQL Server per pod), runs the
``rotate-mssql-auth`` flow with Prefect's embedded local API (SQLite), prints KubeDB's condition
list, then logs in to every replica with pymssql to show the new password works and the old one
does not. Passwords are never printed.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

# Prefect reads its settings at import: keep this run's state apart from any other Prefect use.
os.environ.setdefault("PREFECT_HOME", str(Path(tempfile.gettempdir()) / "mssql-auth-rotation-demo-prefect"))
os.environ.pop("PREFECT_API_URL", None)
# The embedded server's first start can take longer than Prefect's 20 s on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from flows.rotate_auth import rotate_mssql_auth
from rotation.params import TlsVerify
from rotation.passwords import Password
from rotation.plan import Endpoint
from rotation.sqlserver import accepts
from rotation.tls import TlsProfile, pod_dns_name
from sandbox.cluster import Database, Sandbox

NAMESPACE, DATABASE, REPLICAS = "demo", "mssql-demo", 3


def login_works(db: Database, pod: str, password: str) -> bool:
    """A login as the rotation makes it: TDS 8.0 strict, the certificate checked against the database's CA."""
    ca = db.sandbox.core.read_namespaced_secret(f"{db.name}-server-cert", db.namespace).data["ca.crt"]
    tls = TlsProfile(verify=TlsVerify.VERIFY_FULL, ca_pem=base64.b64decode(ca).decode(), ca_source="demo")
    endpoint = Endpoint(pod, db.ip(pod), db.port(pod), pod_dns_name(pod, db.name, db.namespace), tls)
    return accepts(endpoint, "sa", Password(password))


def main() -> int:
    print("[demo] starting the sandbox (etcd, kube-apiserver, emulated KubeDB) ...", flush=True)
    with Sandbox() as sandbox:
        os.environ["KUBECONFIG"] = str(sandbox.kubeconfig)
        db = sandbox.create_database(NAMESPACE, DATABASE, replicas=REPLICAS)
        old = db.secret_data()["password"]
        print(
            f"[demo] MSSQLServer {NAMESPACE}/{DATABASE} is Ready with {REPLICAS} replicas; rotating ...",
            flush=True,
        )

        report = rotate_mssql_auth(namespace=NAMESPACE, database=DATABASE)

        print("\n" + report.markdown())
        secret = db.secret_data()
        new = secret["password"]
        print(f"Secret {NAMESPACE}/{report.auth_secret} keys now: {', '.join(sorted(secret))}")
        ok = True
        for pod in db.pods:
            new_ok, old_ok = login_works(db, pod, new), login_works(db, pod, old)
            ok &= new_ok and not old_ok
            print(
                f"  {pod} ({db.ip(pod)}:1433): new password "
                f"{'accepted' if new_ok else 'REJECTED'}, old password {'ACCEPTED' if old_ok else 'rejected'}"
            )
        paused = any(c.get("type") == "Paused" for c in db.get().get("status", {}).get("conditions", []))
        print(f"  database paused afterwards: {paused}")
        in_clear = sandbox.unencrypted_alter_logins()
        print(f"  replicas that saw ALTER LOGIN outside TLS: {', '.join(in_clear) or 'none'}")
        ok &= not paused and not in_clear and report.outcome == "Successful"
    print(f"\n[demo] {'rotation verified' if ok else 'ROTATION NOT VERIFIED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
