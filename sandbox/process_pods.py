"""The kubelet's generic pods: a pod of the project's image runs as local processes of this checkout.

Which pods: those bound to the sandbox's node (``spec.nodeName``) that are not KubeDB's (those are
``sandbox.kubelet``'s emulated SQL Servers). If every container's image is ``Settings.project_image``
(the image of deployments/Dockerfile) the pod runs here; otherwise it stays Pending, its containers
waiting with reason ``ImageNotEmulated``, and a Warning Event of that reason says which image runs.

A container is what deployments/Dockerfile makes of it, run as one process (``sandbox/pod_init.py``)
that is PID 1 of a PID namespace of its own, in a private mount namespace and a UTS namespace (its
hostname is the pod's name):

- command and args as Kubernetes combines them with the image (no ENTRYPOINT; CMD ``prefect
  version``), ``$(VAR)`` references expanded; ``prefect``, ``python`` and the rest resolve to this
  checkout's ``.venv/bin`` first on PATH;
- environment: the image's ENV (HOME=/home/rotation, PYTHONUNBUFFERED, ...), HOSTNAME,
  ``KUBERNETES_SERVICE_HOST``/``PORT`` (127.0.0.1 and the API server's port), then ``envFrom``
  (ConfigMaps, Secrets, prefixes) and ``env`` (values, ``secretKeyRef``, ``configMapKeyRef``,
  ``fieldRef`` of metadata.name/namespace/uid/labels/annotations, spec.nodeName/serviceAccountName,
  status.hostIP/podIP/podIPs), read when the container starts; a missing Secret, ConfigMap or key
  (not optional) leaves it waiting with ``CreateContainerConfigError`` and a Warning Event, retried;
- files: this checkout bind-mounted read-only at the image's WORKDIR /opt/mssql-auth-rotation (the
  default working directory; ``workingDir`` is honoured), the service account's token (TokenRequest
  API, default audience, bound to the pod, refreshed at 80 % of its life), ``ca.crt`` (the API
  server's CA) and ``namespace`` at /var/run/secrets/kubernetes.io/serviceaccount (unless
  ``automountServiceAccountToken`` is false on the pod or its ServiceAccount), where
  ``kubernetes.config.load_incluster_config()`` reads them; the pod's volumes at their mountPaths
  (``emptyDir``, ``configMap``, ``secret``; files written once at start); a writable HOME
  (/home/rotation) and /tmp of the pod's own unless a volume covers them. Nothing is written to the
  host's filesystem: missing mount points are made in tmpfs mirrors inside the mount namespace.

Differences from a container, on purpose: the process runs as root (``runAsUser``/``runAsGroup``,
``readOnlyRootFilesystem`` and capabilities are ignored) with the host's filesystem outside the mounts
above, and shares the host's network, so ``status.podIP`` is 127.0.0.1 and two pods cannot listen on
one port. Probes are ignored (a running container is Ready), as are resource limits. Pods with init
containers, other volume types or ``subPath`` mounts stay Pending with a Warning Event saying so.

Lifecycle as a kubelet's: phase Pending → Running (Ready) → Succeeded/Failed when every container has
exited for good (``restartPolicy`` Never; OnFailure restarts a failed container; Always restarts any,
after ``Settings.restart_backoff`` doubled per restart up to 300 s, state CrashLoopBackOff meanwhile),
``state.terminated.exitCode`` (128+n for a signal n). A pod with a ``deletionTimestamp`` (deleted or
evicted) gets SIGTERM to each container's PID 1 only (as a container runtime sends it: a process
that has no SIGTERM handler ignores it, being PID 1), SIGKILL to its whole PID namespace after the
grace period (``metadata.deletionGracePeriodSeconds``, at most ``Settings.termination_grace_cap``),
then its final status is written and the pod removed (deleted with grace 0, uid precondition).

Logs: each container's stdout and stderr, interleaved as written, go to a file per start
(``ProcessPods.read_log``: what ``kubectl logs [--previous]`` shows). ``ProcessPods.log_port`` serves
them over HTTPS as a kubelet does (``/containerLogs/<ns>/<pod>/<container>?follow=&tailLines=&
previous=&limitBytes=``), so the API server's ``pods/log`` works once the Node object advertises that
port (``status.daemonEndpoints.kubeletEndpoint.Port``) and address 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.settings import Settings
from sandbox.sqlserver.certs import self_signed_certificate
from sandbox.timers import Timers

log = logging.getLogger("sandbox.process_pods")

CHECKOUT = Path(__file__).resolve().parent.parent
POD_INIT = Path(__file__).with_name("pod_init.py")
IMAGE_WORKDIR = "/opt/mssql-auth-rotation"  # deployments/Dockerfile's WORKDIR
IMAGE_HOME = "/home/rotation"
IMAGE_CMD = ("prefect", "version")
IMAGE_ENV = {  # deployments/Dockerfile's ENV, and PATH with this checkout's virtualenv first
    "PATH": f"{CHECKOUT / '.venv' / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "HOME": IMAGE_HOME,
}
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_LIFETIME_S = 3607  # what a kubelet asks for
TOKEN_CHECK_S = 30.0
POD_IP = "127.0.0.1"
MAX_BACKOFF_S = 300.0
SETUP_RETRY_S = (0.5, 1.0, 2.0, 5.0)  # a missing Secret/ConfigMap/ServiceAccount: retried, then every 5 s
UNSHARE = ["unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child"]
SUPPORTED_VOLUMES = ("emptyDir", "configMap", "secret")
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class SetupError(Exception):
    """A container cannot start yet (a kubelet's waiting reason), e.g. a Secret is missing."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, variables: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables replaced, others kept, ``$$`` → ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return _VAR_REF.sub(one, text)


def _decode(data: dict[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class ContainerRun:
    name: str
    spec: dict[str, Any]
    log_dir: Path
    restarts: int = 0
    proc: subprocess.Popen[bytes] | None = None
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    done: bool = False  # exited and will not be started again
    started_at: str = ""

    @property
    def running(self) -> bool:
        return "running" in self.state

    def log_path(self, restart: int) -> Path:
        return self.log_dir / f"{self.name}.{restart}.log"


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    pod: dict[str, Any]
    folder: Path
    containers: list[ContainerRun]
    start_time: str = field(default_factory=_now)
    terminating: bool = False
    gone: bool = False
    setup_attempts: int = 0
    unsupported: str = ""  # why it stays Pending for good, if it does
    token_folder: Path | None = None  # the service account's folder, once its token is written
    token_minted: float = 0.0  # time.monotonic() of the token's TokenRequest
    status_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    def phase(self) -> str:
        if self.unsupported or any(not c.started_at and not c.done for c in self.containers):
            return "Pending"
        if all(c.done for c in self.containers):
            codes = [c.state.get("terminated", {}).get("exitCode", 1) for c in self.containers]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        return "Running"


class ProcessPods:
    """The generic-pod half of the sandbox's kubelet (see the module docstring)."""

    def __init__(
        self, api: client.ApiClient, settings: Settings, node_name: str, root: Path | None = None
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.settings = settings
        self.node_name = node_name
        self.root = root or Path(tempfile.mkdtemp(prefix="mssql-sandbox-pods-"))
        self._owns_root = root is None
        self.api_host, self.api_port = self._api_address(api)
        self.ca_cert = Path(api.configuration.ssl_ca_cert)
        self._lock = threading.Lock()
        self._runs: dict[str, PodRun] = {}  # by pod uid
        self._timers = Timers("process-pods")
        self._stopping = threading.Event()
        self._token_renewer = threading.Thread(target=self._token_loop, name="kubelet-tokens", daemon=True)
        self._log_server = _LogServer(self)

    @staticmethod
    def _api_address(api: client.ApiClient) -> tuple[str, int]:
        parsed = urllib.parse.urlsplit(api.configuration.host)
        return parsed.hostname or "127.0.0.1", parsed.port or 443

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def log_port(self) -> int:
        """The kubelet's HTTPS port serving /containerLogs (for the Node's daemonEndpoints)."""
        return self._log_server.port

    def start(self) -> None:
        self._log_server.start()
        self._token_renewer.start()

    def stop(self) -> None:
        self._stopping.set()
        self._timers.cancel_all()
        with self._lock:
            runs = list(self._runs.values())
            self._runs.clear()
            for run in runs:
                run.gone = True
        for run in runs:
            for container in run.containers:
                self._kill(container)
        self._log_server.stop()
        if self._token_renewer.is_alive():
            self._token_renewer.join(timeout=5)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- the watch ---------------------------------------------------------------------------
    def on_pod(self, event: str, pod: dict[str, Any]) -> None:
        """Every event of a pod that is not KubeDB's."""
        if (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return
        uid = pod["metadata"]["uid"]
        if event == "DELETED":
            self._on_deleted(uid)
            return
        with self._lock:
            run = self._runs.get(uid)
        if run is None and event != "DELETED" and not pod["metadata"].get("deletionTimestamp"):
            self._admit(pod)
        elif run is not None and pod["metadata"].get("deletionTimestamp"):
            self._on_terminating(run, pod)
        elif run is None and pod["metadata"].get("deletionTimestamp"):
            self._remove(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)

    def _admit(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return  # ran to its end already (e.g. before this kubelet restarted)
        folder = self.root / "pods" / uid
        log_dir = self.root / "logs" / namespace / name
        shutil.rmtree(log_dir, ignore_errors=True)  # a former pod of that name
        log_dir.mkdir(parents=True, exist_ok=True)
        containers = [ContainerRun(c["name"], c, log_dir) for c in spec.get("containers") or []]
        run = PodRun(uid, namespace, name, pod, folder, containers)
        run.unsupported = self._unsupported(pod)
        with self._lock:
            if uid in self._runs:
                return
            self._runs[uid] = run
        if run.unsupported:
            reason = "ImageNotEmulated" if run.unsupported.startswith("image") else "NotEmulated"
            for container in containers:
                container.state = {"waiting": {"reason": reason, "message": run.unsupported}}
            self._write_status(run)
            self._event(run, reason, run.unsupported)
            return
        folder.mkdir(parents=True)
        self._write_status(run)
        self._timers.later(0, lambda: self._set_up_and_start(run))

    def _unsupported(self, pod: dict[str, Any]) -> str:
        spec = pod["spec"]
        image = self.settings.project_image
        others = sorted({c.get("image", "") for c in spec.get("containers") or []} - {image})
        if others:
            return (
                f"image {', '.join(others)} is not run by this sandbox: its kubelet runs pods of "
                f"{image} (as local processes of this checkout) and KubeDB's MSSQLServer pods (emulated)"
            )
        if spec.get("initContainers"):
            return "init containers are not emulated by this sandbox's kubelet"
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for volume in volumes.values():
            kind = next((k for k in volume if k != "name"), "")
            if kind not in SUPPORTED_VOLUMES:
                supported = ", ".join(SUPPORTED_VOLUMES)
                return f"volume {volume['name']} of type {kind} is not emulated (only {supported})"
        for container in spec.get("containers") or []:
            for mount in container.get("volumeMounts") or []:
                if mount.get("subPath") or mount.get("subPathExpr"):
                    return f"volumeMount {mount['name']} of {container['name']}: subPath is not emulated"
                if mount["name"] not in volumes:
                    return f"volumeMount {mount['name']} of {container['name']} names no volume of the pod"
        return ""

    # -- start -------------------------------------------------------------------------------
    def _set_up_and_start(self, run: PodRun) -> None:
        if run.terminating or run.gone:
            return
        try:
            mounts = self._pod_mounts(run)
            specs = {c.name: self._container_spec(run, c, mounts) for c in run.containers}
        except SetupError as exc:
            for container in run.containers:
                container.state = {"waiting": {"reason": exc.reason, "message": str(exc)}}
            self._write_status(run)
            self._event(run, "FailedMount" if exc.reason == "ContainerCreating" else "Failed", str(exc))
            self._retry_set_up(run)
            return
        except Exception:  # the API server failed to answer: a kubelet keeps trying
            log.exception("setting up %s/%s failed; retrying", run.namespace, run.name)
            self._retry_set_up(run)
            return
        for container in run.containers:
            self._spawn(run, container, specs[container.name])
        self._write_status(run)

    def _retry_set_up(self, run: PodRun) -> None:
        delay = SETUP_RETRY_S[min(run.setup_attempts, len(SETUP_RETRY_S) - 1)]
        run.setup_attempts += 1
        self._timers.later(delay, lambda: self._set_up_and_start(run))

    def _pod_mounts(self, run: PodRun) -> dict[str, Path]:
        """Each volume's folder (files written now) and the service account's, by volume name."""
        spec = run.pod["spec"]
        folders: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            folder = run.folder / "volumes" / volume["name"]
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            if "configMap" in volume:
                self._write_items(folder, volume["configMap"], "ConfigMap", run.namespace)
            elif "secret" in volume:
                self._write_items(folder, volume["secret"], "Secret", run.namespace)
            folders[volume["name"]] = folder
        if self._automount(run):
            folders["\0service-account"] = self._write_service_account(run)
        return folders

    def _automount(self, run: PodRun) -> bool:
        spec = run.pod["spec"]
        if spec.get("automountServiceAccountToken") is not None:
            return bool(spec["automountServiceAccountToken"])
        account = self._service_account(run)
        return account.automount_service_account_token is not False

    def _service_account(self, run: PodRun) -> client.V1ServiceAccount:
        name = run.pod["spec"].get("serviceAccountName") or "default"
        try:
            return self.core.read_namespaced_service_account(name, run.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise _missing_account(name) from None
            raise

    def _write_service_account(self, run: PodRun) -> Path:
        folder = run.folder / "serviceaccount"
        folder.mkdir(exist_ok=True)
        self._refresh_token(run, folder)
        shutil.copyfile(self.ca_cert, folder / "ca.crt")
        (folder / "namespace").write_text(run.namespace)
        return folder

    def _refresh_token(self, run: PodRun, folder: Path) -> None:
        if run.gone:
            return
        named = run.pod["spec"].get("serviceAccountName")
        name = named or "default"
        # Bound to the pod, as a kubelet's. The API server binds only to a pod that names the account:
        # without its ServiceAccount admission plugin (off in this sandbox) nothing writes "default"
        # into a pod that names none, whose token is then not bound.
        bound = client.V1BoundObjectReference(api_version="v1", kind="Pod", name=run.name, uid=run.uid)
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[], expiration_seconds=TOKEN_LIFETIME_S, bound_object_ref=bound if named else None
            )
        )
        try:
            minted = self.core.create_namespaced_service_account_token(name, run.namespace, request)
        except ApiException as exc:
            if exc.status == 404:
                raise _missing_account(name) from None
            raise
        fresh = folder / ".token.new"
        fresh.touch(mode=0o600)
        fresh.write_text(minted.status.token)
        fresh.replace(folder / "token")  # atomic: a reader sees the old token or the new one
        run.token_folder, run.token_minted = folder, time.monotonic()

    def _token_loop(self) -> None:
        """A kubelet renews a projected token at 80 % of its life."""
        while not self._stopping.wait(TOKEN_CHECK_S):
            with self._lock:
                runs = list(self._runs.values())
            for run in runs:
                folder = run.token_folder
                if folder is None or time.monotonic() - run.token_minted < 0.8 * TOKEN_LIFETIME_S:
                    continue
                try:
                    self._refresh_token(run, folder)
                except Exception:
                    log.exception("token of %s/%s not renewed", run.namespace, run.name)

    def _write_items(self, folder: Path, source: dict[str, Any], kind: str, namespace: str) -> None:
        name = source.get("name") if kind == "ConfigMap" else source.get("secretName")
        data = self._read_source(kind, str(name), namespace, bool(source.get("optional")), volume=True)
        mode = int(source.get("defaultMode", 0o644))
        items = source.get("items")
        chosen = (
            [(i["key"], i["path"], int(i.get("mode", mode))) for i in items]
            if items
            else [(key, key, mode) for key in data]
        )
        for key, path, file_mode in chosen:
            if key not in data:
                if source.get("optional"):
                    continue
                raise SetupError("ContainerCreating", f"{kind.lower()} {name!r} has no key {key!r}")
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(mode=0o600)
            target.write_text(data[key])
            target.chmod(file_mode)

    def _read_source(
        self, kind: str, name: str, namespace: str, optional: bool, *, volume: bool = False
    ) -> dict[str, str]:
        try:
            if kind == "Secret":
                secret = self.core.read_namespaced_secret(name, namespace)
                return _decode(secret.data)
            config_map = self.core.read_namespaced_config_map(name, namespace)
            return dict(config_map.data or {})
        except ApiException as exc:
            if exc.status != 404:
                raise
            if optional:
                return {}
            reason = "ContainerCreating" if volume else "CreateContainerConfigError"
            what = f'{kind.lower()} "{name}" not found'
            raise SetupError(reason, f"MountVolume.SetUp failed: {what}" if volume else what) from None

    def _container_spec(
        self, run: PodRun, container: ContainerRun, folders: dict[str, Path]
    ) -> dict[str, Any]:
        spec = container.spec
        env = dict(IMAGE_ENV)
        env["HOSTNAME"] = run.name
        env.update(
            {
                "KUBERNETES_SERVICE_HOST": self.api_host,
                "KUBERNETES_SERVICE_PORT": str(self.api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
                "KUBERNETES_PORT": f"tcp://{self.api_host}:{self.api_port}",
            }
        )
        env.update(self._container_env(run, spec, env))
        if spec.get("command"):
            argv = [*spec["command"], *(spec.get("args") or [])]
        else:
            argv = list(spec.get("args") or IMAGE_CMD)
        argv = [expand(arg, env) for arg in argv]
        mounts = [{"source": str(CHECKOUT), "target": IMAGE_WORKDIR, "read_only": True}]
        covered = set()
        for mount in spec.get("volumeMounts") or []:
            read_only = bool(mount.get("readOnly")) or mount["name"] in self._projected(run)
            mounts.append(
                {"source": str(folders[mount["name"]]), "target": mount["mountPath"], "read_only": read_only}
            )
            covered.add(os.path.normpath(mount["mountPath"]))
        for private in (IMAGE_HOME, "/tmp"):  # the image's writable layer, the pod's own
            if private not in covered:
                own = run.folder / "layer" / container.name / private.strip("/").replace("/", "_")
                own.mkdir(parents=True, exist_ok=True)
                mounts.append({"source": str(own), "target": private, "read_only": False})
        # The checkout at its own path too, mounted last among its parents: the venv's scripts name
        # their interpreter by absolute path, which a volume mounted above it (the pod's /tmp, when
        # the checkout lies in /tmp) would hide.
        mounts.append({"source": str(CHECKOUT), "target": str(CHECKOUT), "read_only": True})
        account = folders.get("\0service-account")
        if account is not None:
            mounts.append({"source": str(account), "target": SERVICE_ACCOUNT_DIR, "read_only": True})
        scratch = run.folder / "scratch" / container.name
        scratch.mkdir(parents=True, exist_ok=True)
        return {
            "argv": argv,
            "env": env,
            "mounts": mounts,
            "workdir": spec.get("workingDir") or IMAGE_WORKDIR,
            "hostname": run.name,
            "scratch": str(scratch),
        }

    @staticmethod
    def _projected(run: PodRun) -> set[str]:
        """Volumes a kubelet always mounts read-only (its atomic writer's)."""
        return {v["name"] for v in run.pod["spec"].get("volumes") or [] if "configMap" in v or "secret" in v}

    def _container_env(self, run: PodRun, spec: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    ref = source[key]
                    data = self._read_source(kind, ref["name"], run.namespace, bool(ref.get("optional")))
                    env.update({f"{prefix}{k}": v for k, v in data.items()})
        for entry in spec.get("env") or []:
            if "valueFrom" not in entry:
                env[entry["name"]] = expand(entry.get("value", ""), {**base, **env})
                continue
            value = self._value_from(run, entry["name"], entry["valueFrom"])
            if value is not None:
                env[entry["name"]] = value
        return env

    def _value_from(self, run: PodRun, name: str, value_from: dict[str, Any]) -> str | None:
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if key in value_from:
                ref = value_from[key]
                optional = bool(ref.get("optional"))
                data = self._read_source(kind, ref["name"], run.namespace, optional)
                if ref["key"] not in data and not optional:
                    raise SetupError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {kind} {run.namespace}/{ref['name']}",
                    )
                return data.get(ref["key"])
        if "fieldRef" in value_from:
            return self._field(run, value_from["fieldRef"]["fieldPath"])
        raise SetupError(
            "CreateContainerConfigError",
            f"env {name}: {', '.join(value_from)} is not emulated by this sandbox",
        )

    def _field(self, run: PodRun, path: str) -> str:
        meta, spec = run.pod["metadata"], run.pod["spec"]
        simple = {
            "metadata.name": run.name,
            "metadata.namespace": run.namespace,
            "metadata.uid": run.uid,
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
            "status.hostIP": POD_IP,
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        raise SetupError("CreateContainerConfigError", f"fieldRef {path} is not emulated by this sandbox")

    def _spawn(self, run: PodRun, container: ContainerRun, spec: dict[str, Any]) -> None:
        # Under the lock that deletion and stop() take to mark the pod: a process started here is
        # always one they see (and stop).
        with self._lock:
            if run.terminating or run.gone:
                return
            with container.log_path(container.restarts).open("ab") as log_file:
                proc = subprocess.Popen(
                    [*UNSHARE, sys.executable, "-I", "-S", str(POD_INIT)],
                    stdin=subprocess.PIPE,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=run.folder,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    start_new_session=True,
                )
            container.proc = proc
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(spec).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it ended already; its exit is reported by the waiter
        container.started_at = _now()
        container.state = {"running": {"startedAt": container.started_at}}
        threading.Thread(
            target=self._wait_exit, args=(run, container, proc, spec), name=f"pod-{run.name}", daemon=True
        ).start()
        self._event(run, "Started", f"Started container {container.name}", "Normal")

    # -- exit, restart -----------------------------------------------------------------------
    def _wait_exit(
        self, run: PodRun, container: ContainerRun, proc: subprocess.Popen[bytes], spec: dict[str, Any]
    ) -> None:
        code = _exit_code(proc.wait())
        if run.gone:
            return
        container.state = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": container.started_at,
                "finishedAt": _now(),
            }
        }
        policy = run.restart_policy
        restart = not run.terminating and (policy == "Always" or (policy == "OnFailure" and code != 0))
        if not restart:
            container.done = True
            self._write_status(run)
            return
        container.last_state = container.state
        container.restarts += 1
        delay = min(self.settings.restart_backoff * 2 ** (container.restarts - 1), MAX_BACKOFF_S)
        container.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:g}s restarting failed container={container.name} pod={run.name}",
            }
        }
        self._write_status(run)
        self._event(run, "BackOff", f"Back-off restarting failed container {container.name}")

        def again() -> None:
            if not run.terminating and not run.gone:
                self._spawn(run, container, spec)
                self._write_status(run)

        self._timers.later(delay, again)

    # -- deletion ----------------------------------------------------------------------------
    def _on_terminating(self, run: PodRun, pod: dict[str, Any]) -> None:
        with self._lock:
            if run.terminating:
                return
            run.terminating = True
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        cap = self.settings.termination_grace_cap
        seconds = float(grace) if cap is None else min(float(grace), cap)
        threading.Thread(
            target=self._terminate, args=(run, seconds), name=f"stop-{run.name}", daemon=True
        ).start()

    def _terminate(self, run: PodRun, grace: float) -> None:
        running = [c for c in run.containers if c.proc is not None and c.proc.poll() is None]
        for container in running:
            self._event(run, "Killing", f"Stopping container {container.name}", "Normal")
            self._sigterm(container)
        deadline = time.monotonic() + grace
        for container in run.containers:
            if container.proc is None:
                continue
            try:
                container.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(container)
        for container in run.containers:
            if not container.done and "terminated" not in container.state:
                container.state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}
            container.done = True
        self._write_status(run)
        self._remove(run.namespace, run.name, run.uid)

    def _remove(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _on_deleted(self, uid: str) -> None:
        with self._lock:
            run = self._runs.pop(uid, None)
            if run is None:
                return
            run.gone = True
        for container in run.containers:
            self._kill(container)
        shutil.rmtree(run.folder, ignore_errors=True)  # its logs stay until a pod of that name starts

    @staticmethod
    def _ns_init(proc: subprocess.Popen[bytes]) -> int | None:
        """The host PID of the container's PID 1 (unshare's child)."""
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def _sigterm(self, container: ContainerRun) -> None:
        proc = container.proc
        if proc is None:
            return
        deadline = time.monotonic() + 2
        while proc.poll() is None:
            init = self._ns_init(proc)
            if init is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGTERM)
                return
            if time.monotonic() > deadline:  # unshare never forked: stop it
                self._kill(container)
                return
            time.sleep(0.01)  # unshare forks its child within milliseconds of starting

    @staticmethod
    def _kill(container: ContainerRun) -> None:
        """SIGKILL to unshare's group: its child (the namespace's init) dies with it (--kill-child),
        and with the init every process of the namespace."""
        proc = container.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    # -- status, events ----------------------------------------------------------------------
    def _write_status(self, run: PodRun) -> None:
        with run.status_lock:
            if run.gone:
                return
            phase = run.phase()
            ready = phase == "Running" and all(c.running for c in run.containers)
            flag = "True" if ready else "False"
            now = _now()
            done = phase in ("Succeeded", "Failed")
            ready_condition: dict[str, Any] = {"status": flag, "lastTransitionTime": now}
            if done:
                ready_condition["reason"] = "PodCompleted"
            status: dict[str, Any] = {
                "phase": phase,
                "hostIP": POD_IP,
                "podIP": POD_IP,
                "podIPs": [{"ip": POD_IP}],
                "startTime": run.start_time,
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", **ready_condition},
                    {"type": "ContainersReady", **ready_condition},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                ],
                "containerStatuses": [
                    {
                        "name": c.name,
                        "ready": c.running and ready,
                        "restartCount": c.restarts,
                        "started": c.running,
                        "state": c.state,
                        "lastState": c.last_state,
                        "image": c.spec.get("image", ""),
                        "imageID": "",
                    }
                    for c in run.containers
                ],
            }
            if run.unsupported:
                status["reason"], status["message"] = "NotEmulated", run.unsupported
            try:
                self.core.patch_namespaced_pod_status(
                    run.name, run.namespace, {"metadata": {"uid": run.uid}, "status": status}
                )
            except ApiException as exc:
                if exc.status not in (404, 409, 422):
                    raise

    def _event(self, run: PodRun, reason: str, message: str, type_: str = "Warning") -> None:
        now = _now()
        body = {
            "metadata": {"generateName": f"{run.name}.", "namespace": run.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": run.namespace,
                "name": run.name,
                "uid": run.uid,
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(run.namespace, body)
        except ApiException as exc:
            if exc.status not in (403, 404):  # the namespace is going away
                log.warning("event %s on %s/%s not recorded: %s", reason, run.namespace, run.name, exc.reason)

    # -- logs --------------------------------------------------------------------------------
    def log_file(
        self, namespace: str, pod: str, container: str | None = None, previous: bool = False
    ) -> Path:
        """The file of a container's current (or previous) start, as ``kubectl logs`` reads it."""
        folder = self.root / "logs" / namespace / pod
        starts = sorted(folder.glob("*.log")) if folder.is_dir() else []
        if not starts:
            raise FileNotFoundError(f"no logs of pod {namespace}/{pod} on this node")
        names = sorted({p.name.split(".")[0] for p in starts})
        if container is None:
            if len(names) != 1:
                raise ValueError(f"pod {namespace}/{pod} has containers {names}: name one")
            container = names[0]
        restarts = sorted(int(p.name.split(".")[1]) for p in starts if p.name.split(".")[0] == container)
        if not restarts:
            raise FileNotFoundError(f"container {container} of pod {namespace}/{pod} has no logs")
        if previous:
            if len(restarts) < 2:
                raise FileNotFoundError(f"previous terminated container {container} in pod {pod} not found")
            return folder / f"{container}.{restarts[-2]}.log"
        return folder / f"{container}.{restarts[-1]}.log"

    def read_log(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        """What ``kubectl logs [-c container] [--previous]`` shows for a generic pod (also after the pod
        was deleted, until a pod of the same name starts)."""
        return self.log_file(namespace, pod, container, previous).read_text(errors="replace")

    def still_writing(self, log: Path) -> bool:
        """Whether a container's process writing to this log file still runs."""
        with self._lock:
            containers = [c for r in self._runs.values() for c in r.containers]
        return any(
            c.log_path(c.restarts) == log and c.proc is not None and c.proc.poll() is None for c in containers
        )


class _LogServer:
    """The kubelet's HTTPS endpoint for ``/containerLogs`` (the API server's pods/log proxies to it)."""

    def __init__(self, pods: ProcessPods) -> None:
        self.pods = pods
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the log server is not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        pods = self.pods

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("log server: " + format, *args)

            def do_GET(self) -> None:
                _serve_log(self, pods)

        certs = pods.root / "kubelet-serving"
        certs.mkdir(parents=True, exist_ok=True)
        self_signed_certificate("sandbox-node").write(certs / "tls.crt", certs / "tls.key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "tls.crt", certs / "tls.key")
        server = http.server.ThreadingHTTPServer((POD_IP, 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="kubelet-logs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _serve_log(handler: http.server.BaseHTTPRequestHandler, pods: ProcessPods) -> None:
    url = urllib.parse.urlsplit(handler.path)
    parts = url.path.strip("/").split("/")
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
    if len(parts) != 4 or parts[0] != "containerLogs":
        handler.send_error(404, "not found")
        return
    _, namespace, pod, container = parts
    try:
        path = pods.log_file(namespace, pod, container, previous=query.get("previous") == "true")
    except (FileNotFoundError, ValueError) as exc:
        handler.send_error(404, str(exc))
        return
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain")
    handler.end_headers()
    raw = path.read_bytes()
    data = raw
    if "tailLines" in query:
        wanted = int(query["tailLines"])
        data = b"".join(raw.splitlines(keepends=True)[-wanted:]) if wanted > 0 else b""
    limit = int(query["limitBytes"]) if "limitBytes" in query else None
    sent = 0

    def send(chunk: bytes) -> bool:
        nonlocal sent
        if limit is not None:
            chunk = chunk[: max(0, limit - sent)]
        handler.wfile.write(chunk)
        handler.wfile.flush()
        sent += len(chunk)
        return limit is None or sent < limit

    try:
        if not send(data) or query.get("follow") != "true":
            return
        with path.open("rb") as stream:
            stream.seek(len(raw))
            while True:
                writing = pods.still_writing(path)  # asked before reading: nothing written is missed
                chunk = stream.read()
                if chunk and not send(chunk):
                    return
                if not chunk and not writing:
                    return
                if not chunk:
                    time.sleep(0.1)  # a file has nothing to wait on: poll it, as a kubelet does
    except (BrokenPipeError, ConnectionResetError):
        return


def _missing_account(name: str) -> SetupError:
    """What a kubelet reports when a pod's ServiceAccount does not exist."""
    return SetupError("ContainerCreating", f'failed to fetch token: serviceaccounts "{name}" not found')
