"""``python -m sandbox up``: run the sandbox until Ctrl-C, with a demo database to look at."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

from sandbox.cluster import Sandbox, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the sandbox and keep it running until Ctrl-C")
    up.add_argument("--namespace", default="demo")
    up.add_argument("--database", default="mssql-demo", help="a database to create ('' for none)")
    up.add_argument("--replicas", type=int, default=3)
    up.add_argument("--pod-start-delay", type=float, default=Settings.pod_start_delay)
    up.add_argument("--pod-stop-delay", type=float, default=Settings.pod_stop_delay)
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("[sandbox] starting etcd, kube-apiserver and the emulated KubeDB ...", flush=True)
    with Sandbox(
        Settings(pod_stop_delay=args.pod_stop_delay, pod_start_delay=args.pod_start_delay)
    ) as sandbox:
        if args.database:
            db = sandbox.create_database(args.namespace, args.database, replicas=args.replicas)
            print(f"[sandbox] database {db.namespace}/{db.name} is Ready with {db.replicas} replica(s)")
        print(
            f"[sandbox] kubeconfig: {sandbox.kubeconfig}\n"
            f"  export KUBECONFIG={sandbox.kubeconfig}\n"
            f"  kubectl get mssqlservers,petsets,pods,secrets -n {args.namespace}\n"
            "[sandbox] running; press Ctrl-C to stop (every process it started is stopped)",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        print("\n[sandbox] stopping ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
