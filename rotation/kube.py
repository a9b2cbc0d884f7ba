"""The only module that talks to the Kubernetes API (official ``kubernetes`` client).

Thin verbs over the API, each turning ``ApiException`` and connection errors into the project's
errors: 409/429/5xx and dropped connections are transient; 401/403 name the missing permission;
other 4xx are permanent. Callers get plain dicts or client models; no secret value is ever logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from rotation import constants as c
from rotation.errors import InvalidRequest, PermanentError, TransientError
from rotation.plan import PodView
from rotation.selectors import budgets_selecting
from rotation.workloads import APPS_API_VERSION, WorkloadKind, WorkloadRef, WorkloadView

REQUEST_TIMEOUT: Final = (5, 30)  # (connect, read) seconds for every call but the Lease's
LEASE_TIMEOUT_S: Final = 5.0  # total seconds of one Lease call, unless the lock asks for less
TRANSIENT_STATUS: Final = {409, 429, 500, 502, 503, 504}
WATCH_RETRY_MIN_S: Final = 0.1
WATCH_RETRY_MAX_S: Final = 2.0
WATCH_WINDOW_MAX_S: Final = 10  # a wait's guard (e.g. the lock check) runs at least this often
Json = dict[str, Any]
T = TypeVar("T")
Guard = Callable[[], None] | None
_FORBIDDEN: Final = object()  # a 403 that the caller explains itself
# The API server's cause when an eviction would break a PodDisruptionBudget (a 429).
DISRUPTION_BUDGET_CAUSE: Final = "DisruptionBudget"
_BUDGET_NAME = re.compile(r"disruption budget (\S+)")


def _api_error(exc: ApiException, action: str) -> Exception:
    reason = exc.reason or "error"
    if exc.status in (401, 403):
        return PermanentError(
            f"the Kubernetes API refused to {action} ({exc.status} {reason}); the identity running the "
            "rotation needs the permissions in deployments/rbac.yaml"
        )
    if exc.status in TRANSIENT_STATUS:
        return TransientError(f"the Kubernetes API could not {action} just now ({exc.status} {reason})")
    return PermanentError(f"the Kubernetes API refused to {action} ({exc.status} {reason})")


def call(
    action: str,
    fn: Callable[..., Any],
    *args: Any,
    answers: dict[int, Any] | None = None,
    not_found: Callable[[], Exception] | None = None,
    timeout: float | tuple[float, float] = REQUEST_TIMEOUT,
    **kwargs: Any,
) -> Any:
    """Call one API verb with a timeout and translate its errors.

    ``answers`` maps HTTP statuses that are an answer, not an error, to the value to return
    (a 404 on a read: None); ``not_found`` builds the error to raise for a 404. ``timeout`` is
    (connect, read) seconds, or one number for the whole request.
    """
    try:
        return fn(*args, _request_timeout=timeout, **kwargs)
    except ApiException as exc:
        if answers and exc.status in answers:
            return answers[exc.status]
        if exc.status == 404 and not_found is not None:
            raise not_found() from None
        raise _api_error(exc, action) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(
            f"the Kubernetes API could not be reached to {action}: {type(exc).__name__}"
        ) from None


@functools.lru_cache(maxsize=8)
def _api_client(kubeconfig: str | None) -> client.ApiClient:
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and kubeconfig is None:
            config.load_incluster_config()
            return client.ApiClient()
        return config.new_client_from_config(config_file=kubeconfig)
    except (ConfigException, OSError) as exc:
        raise PermanentError(
            "no Kubernetes cluster configured: run in a pod with a service account, or set KUBECONFIG "
            f"(or ~/.kube/config) ({exc})"
        ) from None


def api_client() -> client.ApiClient:
    """The standard discovery: in-cluster config, else ``KUBECONFIG``, else ``~/.kube/config``."""
    return _api_client(os.environ.get("KUBECONFIG"))


@functools.lru_cache(maxsize=8)
def _lease_api_client(kubeconfig: str | None) -> client.ApiClient:
    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and kubeconfig is None:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        raise PermanentError(
            "no Kubernetes cluster configured: run in a pod with a service account, or set KUBECONFIG "
            f"(or ~/.kube/config) ({exc})"
        ) from None
    # urllib3 otherwise re-sends a request 3 times after a connection error or read timeout: a
    # holder cut off from the API server would learn that its renewal failed only after 4 timeouts.
    configuration.retries = False
    return client.ApiClient(configuration)


def lease_api_client() -> client.ApiClient:
    """Like ``api_client``, for the rotation lock's calls only: no hidden retries (every failure
    reaches the lock at once, which decides for itself whether there is time for another try)."""
    return _lease_api_client(os.environ.get("KUBECONFIG"))


def pod_is_ready(pod: client.V1Pod) -> bool:
    """The kubelet's Ready condition (for a KubeDB pod: its SQL Server and coordinator are healthy)."""
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(cond.type == "Ready" and cond.status == "True" for cond in conditions)


def _sql_port(pod: client.V1Pod) -> int:
    """The port the mssql container declares as ``db`` (KubeDB: 1433)."""
    for container in pod.spec.containers if pod.spec else []:
        if container.name == c.MSSQL_CONTAINER:
            for port in container.ports or []:
                if port.name == c.SQL_PORT_NAME and port.container_port:
                    return int(port.container_port)
    return c.DEFAULT_SQL_PORT


def pod_view(pod: client.V1Pod) -> PodView:
    meta = pod.metadata
    owner = next(
        (o.name for o in meta.owner_references or [] if o.kind == c.PETSET_KIND and o.controller), None
    )
    return PodView(
        name=meta.name,
        uid=meta.uid,
        ip=(pod.status.pod_ip if pod.status else None) or None,
        port=_sql_port(pod),
        role_label=(meta.labels or {}).get(c.LABEL_ROLE, ""),
        ready=pod_is_ready(pod),
        terminating=meta.deletion_timestamp is not None,
        owner=owner,
    )


def mounts_secret(pod: client.V1Pod, secret: str) -> bool:
    """Whether a volume of the pod is the Secret or projects it. (A pod that mounts it with a subPath
    counts too, although the kubelet never updates such a mount: waiting for it does no harm.)"""
    for volume in (pod.spec.volumes if pod.spec else None) or []:
        if volume.secret is not None and volume.secret.secret_name == secret:
            return True
        sources = volume.projected.sources if volume.projected is not None else None
        if any(source.secret is not None and source.secret.name == secret for source in sources or []):
            return True
    return False


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_text(data: dict[str, str] | None, key: str, *, where: str) -> str | None:
    """One key of a Secret's data as UTF-8 text, or None when absent.

    Only the keys the rotation uses are ever decoded. A value that is not UTF-8 is an error naming
    the secret and the key; its bytes appear nowhere (not even in the exception's context).
    """
    raw = (data or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError both are
        pass
    raise InvalidRequest(f"{where}: the value of key {key!r} is not UTF-8 text; store it as UTF-8")


def encode_text(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def list_databases_in_every_namespace(label_selector: str = "") -> list[Json]:
    """Every MSSQLServer the identity may list cluster-wide (a ClusterRole's list on mssqlservers)."""
    custom = client.CustomObjectsApi(api_client())
    listing = call(
        "list MSSQLServers in every namespace",
        custom.list_cluster_custom_object,
        c.DB_GROUP,
        c.DB_VERSION,
        c.DB_PLURAL,
        label_selector=label_selector,
    )
    return list(listing.get("items") or [])


class Eviction(Enum):
    """How the API server answered an eviction that it did not refuse."""

    EVICTED = "evicted"
    GONE = "gone"  # 404: the pod is already away
    CONFLICT = "conflict"  # 409: e.g. the UID precondition failed because the pod was replaced


@dataclass(frozen=True)
class EvictionRefused:
    """A 429: a PodDisruptionBudget (``budget`` names it) or the API server's own throttling."""

    budget: str | None
    message: str


def _eviction_refusal(exc: ApiException) -> EvictionRefused:
    try:
        status = json.loads(exc.body or "{}")
    except ValueError:
        status = {}
    causes = (status.get("details") or {}).get("causes") or []
    for cause in causes:
        # A StatusCause's type travels as "reason" in JSON.
        if DISRUPTION_BUDGET_CAUSE in (cause.get("reason"), cause.get("type")):
            message = str(cause.get("message", ""))
            match = _BUDGET_NAME.search(message)
            return EvictionRefused(match.group(1) if match else "(unnamed)", message)
    message = str(status.get("message") or exc.reason or "Too Many Requests")
    if "disruption budget" in message:  # a budget without a cause naming it: still never override it
        return EvictionRefused("(unnamed)", message)
    return EvictionRefused(None, message)


class Refusal(Enum):
    """How the API server refused a write that the caller reports rather than raises."""

    FORBIDDEN = "forbidden"  # 403: this identity may not
    NOT_FOUND = "not-found"  # 404: no such object


class Kube:
    """Verbs on the objects a rotation touches, in one namespace."""

    def __init__(
        self, namespace: str, api: client.ApiClient | None = None, *, lease_timeout: float = LEASE_TIMEOUT_S
    ) -> None:
        self.namespace = namespace
        self.lease_timeout = lease_timeout
        self.coordination = client.CoordinationV1Api(api or lease_api_client())
        api = api or api_client()
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self._configuration = api.configuration

    @property
    def cluster(self) -> tuple[str, str]:
        """Which cluster this is: its API server's address and a digest of the CA that vouches for it
        (two clusters may share an in-cluster address such as 10.96.0.1, never a CA)."""
        ca_file = self._configuration.ssl_ca_cert
        try:
            ca = Path(ca_file).read_bytes() if ca_file else b""
        except OSError:
            ca = b""
        return str(self._configuration.host), hashlib.sha256(ca).hexdigest()

    def _where(self, kind: str, name: str) -> str:
        return f"{kind} {self.namespace}/{name}"

    # -- MSSQLServer -------------------------------------------------------------------------
    def get_database(self, name: str) -> Json:
        return call(  # type: ignore[no-any-return]
            f"read {self._where('MSSQLServer', name)}",
            self.custom.get_namespaced_custom_object,
            c.DB_GROUP,
            c.DB_VERSION,
            self.namespace,
            c.DB_PLURAL,
            name,
            not_found=lambda: InvalidRequest(
                f"{self._where('MSSQLServer', name)} does not exist: check the namespace and database names"
            ),
        )

    def patch_database_status(self, name: str, status: Json, resource_version: str) -> Json:
        """Merge-patch the status subresource; a stale ``resource_version`` is a transient 409."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        return call(  # type: ignore[no-any-return]
            f"update the status of {self._where('MSSQLServer', name)}",
            self.custom.patch_namespaced_custom_object_status,
            c.DB_GROUP,
            c.DB_VERSION,
            self.namespace,
            c.DB_PLURAL,
            name,
            body,
        )

    def patch_database_auth_secret(self, name: str, auth_secret: Json) -> Json:
        return call(  # type: ignore[no-any-return]
            f"update spec.authSecret of {self._where('MSSQLServer', name)}",
            self.custom.patch_namespaced_custom_object,
            c.DB_GROUP,
            c.DB_VERSION,
            self.namespace,
            c.DB_PLURAL,
            name,
            {"spec": {"authSecret": auth_secret}},
        )

    def wait_for_database(
        self, name: str, done: Callable[[Json], bool], deadline: float, guard: Guard = None
    ) -> Json:
        """Watch the MSSQLServer until ``done(db)`` holds; TimeoutError at ``deadline`` (monotonic)."""
        where = self._where("MSSQLServer", name)
        found: dict[str, Json] = self._watch_until(
            where,
            self.custom.list_namespaced_custom_object,
            (c.DB_GROUP, c.DB_VERSION, self.namespace, c.DB_PLURAL),
            lambda db: (str(db["metadata"]["name"]), dict(db)),
            lambda items: name in items and done(items[name]),
            deadline,
            guard,
            field_selector=f"metadata.name={name}",
        )
        return found[name]

    def list_databases(self, label_selector: str = "") -> list[Json]:
        listing = call(
            f"list the MSSQLServers of namespace {self.namespace}",
            self.custom.list_namespaced_custom_object,
            c.DB_GROUP,
            c.DB_VERSION,
            self.namespace,
            c.DB_PLURAL,
            label_selector=label_selector,
        )
        return list(listing.get("items") or [])

    # -- MSSQLServerOpsRequest ---------------------------------------------------------------
    def list_ops_requests(self) -> list[Json]:
        listing = call(
            f"list the MSSQLServerOpsRequests of namespace {self.namespace}",
            self.custom.list_namespaced_custom_object,
            c.OPS_GROUP,
            c.OPS_VERSION,
            self.namespace,
            c.OPS_PLURAL,
        )
        return list(listing.get("items") or [])

    def patch_ops_request_status(self, name: str, status: Json) -> Json:
        """Merge-patch an MSSQLServerOpsRequest's status (phase, observedGeneration, conditions)."""
        return call(  # type: ignore[no-any-return]
            f"update the status of {self._where('MSSQLServerOpsRequest', name)}",
            self.custom.patch_namespaced_custom_object_status,
            c.OPS_GROUP,
            c.OPS_VERSION,
            self.namespace,
            c.OPS_PLURAL,
            name,
            {"status": status},
        )

    def get_ops_request(self, name: str) -> Json | None:
        return call(  # type: ignore[no-any-return]
            f"read {self._where('MSSQLServerOpsRequest', name)}",
            self.custom.get_namespaced_custom_object,
            c.OPS_GROUP,
            c.OPS_VERSION,
            self.namespace,
            c.OPS_PLURAL,
            name,
            answers={404: None},
        )

    def record_event_on_ops_request(
        self, request: Json, reason: str, message: str, *, warning: bool = False
    ) -> None:
        """An Event on an MSSQLServerOpsRequest as read from the API (custom objects are read without
        their apiVersion and kind being guaranteed, so they are set here)."""
        kind = {"apiVersion": f"{c.OPS_GROUP}/{c.OPS_VERSION}", "kind": "MSSQLServerOpsRequest"}
        self.record_event_on({**request, **kind}, reason, message, warning=warning)

    def record_event_on(self, involved: Json, reason: str, message: str, *, warning: bool = False) -> None:
        """A core/v1 Event on any object of this namespace (``involved``: apiVersion, kind, metadata)."""
        now = now_rfc3339()
        meta = involved["metadata"]
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": self.namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": c.EVENT_SOURCE},
            "reportingComponent": c.EVENT_SOURCE,
            "reportingInstance": os.environ.get("HOSTNAME", "local"),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        call(
            f"record an Event on {self._where(str(involved.get('kind')), meta['name'])}",
            self.core.create_namespaced_event,
            self.namespace,
            event,
        )

    # -- PetSet ------------------------------------------------------------------------------
    def get_petset(self, name: str) -> Json:
        return call(  # type: ignore[no-any-return]
            f"read {self._where('PetSet', name)}",
            self.custom.get_namespaced_custom_object,
            c.PETSET_GROUP,
            c.PETSET_VERSION,
            self.namespace,
            c.PETSET_PLURAL,
            name,
            not_found=lambda: InvalidRequest(f"{self._where('PetSet', name)} of the database does not exist"),
        )

    def replace_petset(self, petset: Json) -> Json:
        name = petset["metadata"]["name"]
        return call(  # type: ignore[no-any-return]
            f"update {self._where('PetSet', name)}",
            self.custom.replace_namespaced_custom_object,
            c.PETSET_GROUP,
            c.PETSET_VERSION,
            self.namespace,
            c.PETSET_PLURAL,
            name,
            petset,
        )

    # -- Secrets -----------------------------------------------------------------------------
    def read_secret(self, name: str) -> client.V1Secret | None:
        return call(
            f"read {self._where('Secret', name)}",
            self.core.read_namespaced_secret,
            name,
            self.namespace,
            answers={404: None},
        )

    def replace_secret(self, secret: client.V1Secret) -> client.V1Secret:
        """Replace with the read resourceVersion: a concurrent writer makes this a transient 409."""
        name = secret.metadata.name
        return call(
            f"update {self._where('Secret', name)}",
            self.core.replace_namespaced_secret,
            name,
            self.namespace,
            secret,
        )

    # -- Pods --------------------------------------------------------------------------------
    def _database_selector(self, database: str) -> str:
        return f"{c.LABEL_NAME}={c.MSSQL_RESOURCE_NAME},{c.LABEL_INSTANCE}={database}"

    def pods_mounting_secret(self, secret: str, *, besides: str) -> list[str]:
        """The namespace's pods (not finished, not of the database ``besides``) that mount ``secret``
        as a volume: they see a change of it only at their kubelet's next sync."""
        pods = call(
            f"list the pods of namespace {self.namespace}", self.core.list_namespaced_pod, self.namespace
        ).items
        return sorted(
            pod.metadata.name
            for pod in pods
            if (pod.metadata.labels or {}).get(c.LABEL_INSTANCE) != besides
            and (pod.status is None or pod.status.phase not in ("Succeeded", "Failed"))
            and mounts_secret(pod, secret)
        )

    def list_database_pods(self, database: str) -> list[PodView]:
        """Every pod with the database's labels (its replicas, and an arbiter if it has one)."""
        pods = call(
            f"list the pods of {self._where('MSSQLServer', database)}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=self._database_selector(database),
        ).items
        return sorted((pod_view(pod) for pod in pods), key=lambda pod: pod.name)

    def read_pod(self, name: str) -> PodView | None:
        pod = self._read_pod(name)
        return None if pod is None else pod_view(pod)

    def _read_pod(self, name: str) -> client.V1Pod | None:
        return call(
            f"read {self._where('Pod', name)}",
            self.core.read_namespaced_pod,
            name,
            self.namespace,
            answers={404: None},
        )

    def evict_pod(self, name: str, uid: str) -> Eviction | EvictionRefused:
        """Ask for an eviction of exactly this pod (its UID is a precondition)."""
        # No apiVersion in the body: a 1.20 API server refuses policy/v1 with 400.
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=name, namespace=self.namespace),
            delete_options=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)),
        )

        def evict(**options: Any) -> Eviction | EvictionRefused:
            try:
                self.core.create_namespaced_pod_eviction(name, self.namespace, body, **options)
            except ApiException as exc:
                if exc.status == 429:
                    return _eviction_refusal(exc)
                if exc.status in (404, 409):
                    return Eviction.GONE if exc.status == 404 else Eviction.CONFLICT
                raise
            return Eviction.EVICTED

        return call(f"evict {self._where('Pod', name)}", evict)  # type: ignore[no-any-return]

    def budgets_selecting_pod(self, name: str) -> list[str]:
        """Names of the namespace's PodDisruptionBudgets whose selector selects this pod.

        Through policy/v1, else policy/v1beta1 (the only one an API server before 1.21 serves, 404
        on v1). A pod that is gone is selected by none."""
        pod = self._read_pod(name)
        if pod is None:
            return []
        return budgets_selecting(self._list_budgets(), pod.metadata.labels or {})

    def _list_budgets(self) -> list[Json]:
        for version in ("v1", "v1beta1"):
            listing = call(
                f"list the PodDisruptionBudgets of namespace {self.namespace}",
                self._get_json,
                f"/apis/policy/{version}/namespaces/{self.namespace}/poddisruptionbudgets",
                answers={404: None},
            )
            if listing is not None:
                return list(listing.get("items") or [])
        return []

    def _get_json(self, path: str, *, _request_timeout: Any = None) -> Json:
        """GET a path the client has no class for (policy/v1beta1, all a 1.20 API server serves)."""
        api = self.core.api_client
        request = api.param_serialize(
            method="GET",
            resource_path=path,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = api.call_api(*request, _request_timeout=_request_timeout)
        body = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return json.loads(body)  # type: ignore[no-any-return]

    def delete_pod(self, name: str, uid: str) -> None:
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        call(
            f"delete {self._where('Pod', name)}",
            self.core.delete_namespaced_pod,
            name,
            self.namespace,
            body=body,
            answers={404: None, 409: None},
        )  # gone, or already replaced by a new pod

    def wait_for_pod(
        self, name: str, done: Callable[[PodView | None], bool], deadline: float, guard: Guard = None
    ) -> PodView:
        """Watch one pod until ``done(pod)`` holds; raises TimeoutError at ``deadline`` (monotonic)."""
        found = self._watch_until(
            self._where("Pod", name),
            self.core.list_namespaced_pod,
            (self.namespace,),
            lambda pod: (pod.metadata.name, pod_view(pod)),
            lambda pods: done(pods.get(name)),
            deadline,
            guard,
            field_selector=f"metadata.name={name}",
        )
        return found[name]

    def wait_for_database_pods(
        self, database: str, done: Callable[[list[PodView]], bool], deadline: float, guard: Guard = None
    ) -> list[PodView]:
        """Watch the database's pods until ``done(pods)`` holds (e.g. a primary is elected)."""
        found = self._watch_until(
            f"the pods of {self._where('MSSQLServer', database)}",
            self.core.list_namespaced_pod,
            (self.namespace,),
            lambda pod: (pod.metadata.name, pod_view(pod)),
            lambda pods: done(sorted(pods.values(), key=lambda pod: pod.name)),
            deadline,
            guard,
            label_selector=self._database_selector(database),
        )
        return sorted(found.values(), key=lambda pod: pod.name)

    def _watch_until(
        self,
        what: str,
        list_fn: Callable[..., Any],
        args: tuple[Any, ...],
        identify: Callable[[Any], tuple[str, T]],
        done: Callable[[dict[str, T]], bool],
        deadline: float,
        guard: Guard,
        **selectors: str,
    ) -> dict[str, T]:
        """List, then watch from the listed version, until ``done(objects by name)`` holds.

        ``guard`` runs at every event and at least every WATCH_WINDOW_MAX_S, and may raise to end the
        wait (a run that lost its lock). A watch that breaks, or ends much sooner than asked, is
        resumed after a growing pause (a refused permission is raised at once), so a persistent fault
        cannot become a request flood. Raises TimeoutError at ``deadline`` (monotonic).
        """
        pause = WATCH_RETRY_MIN_S
        check = guard or (lambda: None)
        while True:
            check()
            listing = call(f"list {what}", functools.partial(list_fn, **selectors), *args)
            items = dict(identify(item) for item in _items_of(listing))
            if done(items):
                return items
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(what)
            window = max(1, int(min(remaining, WATCH_WINDOW_MAX_S)))
            started = time.monotonic()
            stream = watch.Watch().stream(
                list_fn,
                *args,
                resource_version=_version_of(listing),
                timeout_seconds=window,
                _request_timeout=(REQUEST_TIMEOUT[0], window + 5),
                **selectors,
            )
            try:
                for event in stream:
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: list and watch again
                    if event["type"] == "BOOKMARK":
                        continue
                    check()
                    name, view = identify(event["object"])
                    if event["type"] == "DELETED":
                        items.pop(name, None)
                    else:
                        items[name] = view
                    if done(items):
                        return items
                    if time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                if exc.status in (401, 403):
                    raise _api_error(exc, f"watch {what}") from None
            except (urllib3.exceptions.HTTPError, OSError):
                pass
            else:
                if time.monotonic() - started >= window / 2:
                    pause = WATCH_RETRY_MIN_S  # the watch ran its window: resume at once
                    continue
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))  # back off, then list again
            pause = min(pause * 2, WATCH_RETRY_MAX_S)

    # -- Workloads that use the credentials (apps/v1), restarted after a rotation ------------
    def list_workloads(self, kind: WorkloadKind) -> list[WorkloadView] | None:
        """The namespace's workloads of one kind with their annotations; None when this identity may
        not list them (403: the caller reports it, with the grant that allows it)."""
        lists = {
            WorkloadKind.DEPLOYMENT: self.apps.list_namespaced_deployment,
            WorkloadKind.STATEFULSET: self.apps.list_namespaced_stateful_set,
            WorkloadKind.DAEMONSET: self.apps.list_namespaced_daemon_set,
        }
        listing = call(
            f"list the {kind.plural} of namespace {self.namespace}",
            lists[kind],
            self.namespace,
            answers={403: None},
        )
        if listing is None:
            return None
        return [
            WorkloadView(WorkloadRef(kind, item.metadata.name), dict(item.metadata.annotations or {}))
            for item in listing.items or []
        ]

    def patch_workload(self, ref: WorkloadRef, body: Json) -> Json | Refusal:
        """Strategic-merge-patch one Deployment, StatefulSet or DaemonSet (``kubectl rollout restart``
        sends the same); the patched object, or why not: 403 and 404 are answers, not errors."""
        patches = {
            WorkloadKind.DEPLOYMENT: self.apps.patch_namespaced_deployment,
            WorkloadKind.STATEFULSET: self.apps.patch_namespaced_stateful_set,
            WorkloadKind.DAEMONSET: self.apps.patch_namespaced_daemon_set,
        }
        patched = call(
            f"patch {self._where(ref.kind.value, ref.name)}",
            patches[ref.kind],
            ref.name,
            self.namespace,
            body,
            answers={403: Refusal.FORBIDDEN, 404: Refusal.NOT_FOUND},
            field_manager=c.FIELD_MANAGER,
            _content_type="application/strategic-merge-patch+json",
        )
        if isinstance(patched, Refusal):
            return patched
        return self.apps.api_client.sanitize_for_serialization(patched)  # type: ignore[no-any-return]

    def record_event_on_workload(self, ref: WorkloadRef, uid: str | None, reason: str, message: str) -> None:
        involved = {
            "apiVersion": APPS_API_VERSION,
            "kind": ref.kind.value,
            "metadata": {"name": ref.name, "uid": uid},
        }
        self.record_event_on(involved, reason, message)

    # -- Events ------------------------------------------------------------------------------
    def record_event(self, database: Json, reason: str, message: str, *, warning: bool = False) -> None:
        """A core/v1 Event on the MSSQLServer, as KubeDB's ops-manager records them."""
        involved = {
            "apiVersion": f"{c.DB_GROUP}/{c.DB_VERSION}",
            "kind": c.DB_KIND,
            "metadata": database["metadata"],
        }
        self.record_event_on(involved, reason, message, warning=warning)

    # -- Lease (the rotation lock) -----------------------------------------------------------
    # Through lease_api_client() (no urllib3 retries), each call within ``lease_timeout`` seconds in
    # all: a lock holder must learn within one renew interval that a renewal did not go through.
    def read_lease(self, name: str) -> client.V1Lease | None:
        return call(
            f"read {self._where('Lease', name)}",
            self.coordination.read_namespaced_lease,
            name,
            self.namespace,
            answers={404: None},
            timeout=self.lease_timeout,
        )

    def create_lease(
        self, lease: client.V1Lease, forbidden: Callable[[], Exception] | None = None
    ) -> client.V1Lease | None:
        """None when somebody else created it first (409). ``forbidden`` builds the error for a 403:
        the rotation's own identity may not create Leases (its grant creates its Lease)."""
        created = call(
            f"create {self._where('Lease', lease.metadata.name)}",
            self.coordination.create_namespaced_lease,
            self.namespace,
            lease,
            answers={409: None, 403: _FORBIDDEN} if forbidden is not None else {409: None},
            timeout=self.lease_timeout,
        )
        if created is _FORBIDDEN and forbidden is not None:
            raise forbidden()
        return created

    def replace_lease(self, lease: client.V1Lease) -> client.V1Lease | None:
        """None when the lease changed or vanished since it was read: somebody else won."""
        return call(
            f"update {self._where('Lease', lease.metadata.name)}",
            self.coordination.replace_namespaced_lease,
            lease.metadata.name,
            self.namespace,
            lease,
            answers={404: None, 409: None},
            timeout=self.lease_timeout,
        )


def _items_of(listing: Any) -> Iterable[Any]:
    return listing.get("items") or [] if isinstance(listing, dict) else listing.items or []


def _version_of(listing: Any) -> str:
    if isinstance(listing, dict):
        return str(listing["metadata"]["resourceVersion"])
    return str(listing.metadata.resource_version)
