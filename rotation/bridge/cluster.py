"""The bridge's Kubernetes side (official client): MSSQLServerOpsRequests of every namespace or of
one, their annotations, finalizer and status, the databases they name, Events, and whether KubeDB's own
ops-manager is installed. API errors become the project's (rotation/kube.py's ``call``).

It writes only requests the bridge owns (type RotateAuth, annotated for it or taken with --all): RBAC
cannot say that (a request's name is chosen by whoever applies it), so every write checks it here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from rotation import constants as c
from rotation.errors import PermanentError
from rotation.kube import REQUEST_TIMEOUT, Json, Kube, api_client, call
from rotation.ops_request import EXECUTOR, EXECUTOR_ANNOTATION, is_ours, request_of

# How to tell that KubeDB's ops-manager is installed (kubedb/installer): the webhook server installed
# with it registers the ops webhooks as APIServices of these names (charts/kubedb-webhook-server,
# apiregistration.yaml), read by name in every mode; its pods carry the chart's selector label
# (charts/kubedb-ops-manager), looked for cluster-wide only with --all. Either one is enough to refuse.
OPS_MANAGER_SELECTOR: Final = "app.kubernetes.io/name=kubedb-ops-manager"
OPS_MANAGER_APISERVICES: Final = ("v1alpha1.validators.ops.kubedb.com", "v1alpha1.mutators.ops.kubedb.com")
OPS_KIND: Final = "MSSQLServerOpsRequest"


class Stale(Exception):
    """The request changed (or went) since the version acted on: act on its newer version instead."""


class NotOurs(PermanentError):
    """A write to a request this bridge does not own was refused before it was sent."""


class OpsRequests:
    def __init__(self, namespace: str | None, *, take_all: bool = False) -> None:
        self.namespace = namespace  # None: every namespace
        self.take_all = take_all  # which requests the bridge owns (rotation/ops_request.py's is_ours)
        self.api = api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    @property
    def where(self) -> str:
        return f"namespace {self.namespace}" if self.namespace else "every namespace"

    def _list_args(self) -> tuple[object, ...]:
        if self.namespace is None:
            return (self.custom.list_cluster_custom_object, c.OPS_GROUP, c.OPS_VERSION, c.OPS_PLURAL)
        return (
            self.custom.list_namespaced_custom_object,
            c.OPS_GROUP,
            c.OPS_VERSION,
            self.namespace,
            c.OPS_PLURAL,
        )

    def list_all(self) -> tuple[list[Json], str]:
        """Every request and the resourceVersion to watch from."""
        fn, *args = self._list_args()
        listing = call(f"list MSSQLServerOpsRequests in {self.where}", fn, *args)  # type: ignore[arg-type]
        return list(listing.get("items") or []), str(listing["metadata"]["resourceVersion"])

    def watch(self, resource_version: str, seconds: int) -> Iterator[tuple[str, Json]]:
        """Events after ``resource_version`` for ``seconds``, bookmarks included (they carry a newer
        resourceVersion only). An expired version (410 Gone) raises ApiException: list again."""
        fn, *args = self._list_args()
        stream = watch.Watch().stream(
            fn,
            *args,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
            _request_timeout=(REQUEST_TIMEOUT[0], seconds + 5),
        )
        for event in stream:
            if event["type"] == "ERROR":
                raw = event.get("raw_object") or {}
                raise ApiException(status=int(raw.get("code") or 500), reason=str(raw.get("message")))
            yield event["type"], event["object"]

    def read(self, request: Json) -> Json | None:
        """The request as it is now (None: gone)."""
        meta = request["metadata"]
        return call(  # type: ignore[no-any-return]
            f"read {OPS_KIND} {meta['namespace']}/{meta['name']}",
            self.custom.get_namespaced_custom_object,
            c.OPS_GROUP,
            c.OPS_VERSION,
            meta["namespace"],
            c.OPS_PLURAL,
            meta["name"],
            answers={404: None},
        )

    def patch_metadata(self, request: Json, metadata: Json) -> Json:
        """Merge-patch annotations/finalizers, only if the request is still as read; ``Stale``
        otherwise (the watch brings the newer version)."""
        meta = request["metadata"]
        return self._patch(
            request,
            "update",
            self.custom.patch_namespaced_custom_object,
            {"metadata": {"resourceVersion": meta["resourceVersion"], **metadata}},
        )

    def patch_status(self, request: Json, status: Json) -> Json:
        """Merge-patch the status, only if the request is still as read (``Stale`` otherwise)."""
        meta = request["metadata"]
        return self._patch(
            request,
            "update the status of",
            self.custom.patch_namespaced_custom_object_status,
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status},
        )

    def _patch(self, request: Json, verb: str, fn: Callable[..., Any], body: Json) -> Json:
        meta = request["metadata"]
        owned = request_of(request)
        if not is_ours(owned, self.take_all):
            which = "RotateAuth requests" + (
                "" if self.take_all else f" annotated {EXECUTOR_ANNOTATION}: {EXECUTOR}"
            )
            raise NotOurs(
                f"refused to {verb} {OPS_KIND} {owned.ref}: this bridge writes only {which}, and this "
                f"one (type {owned.type!r}) is not one; nothing was written"
            )
        patched = call(
            f"{verb} {OPS_KIND} {meta['namespace']}/{meta['name']}",
            fn,
            c.OPS_GROUP,
            c.OPS_VERSION,
            meta["namespace"],
            c.OPS_PLURAL,
            meta["name"],
            body,
            answers={409: None, 404: None},
        )
        if patched is None:
            raise Stale(f"{OPS_KIND} {meta['namespace']}/{meta['name']} changed since it was read")
        return patched  # type: ignore[no-any-return]

    def database_exists(self, namespace: str, name: str) -> bool:
        found = call(
            f"read MSSQLServer {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            c.DB_GROUP,
            c.DB_VERSION,
            namespace,
            c.DB_PLURAL,
            name,
            answers={404: None},
        )
        return found is not None

    def event(self, request: Json, reason: str, message: str, *, warning: bool = False) -> None:
        Kube(request["metadata"]["namespace"], self.api).record_event_on_ops_request(
            request, reason, message, warning=warning
        )

    def ops_manager_evidence(self, pod_selector: str | None) -> list[str]:
        """What shows that KubeDB's ops-manager is installed: its webhook APIServices and, given a
        selector, its pods in any namespace (a cluster-wide list: only --all asks for it)."""
        found: list[str] = []
        if pod_selector is not None:
            pods = call(
                "list pods in every namespace (to find KubeDB's ops-manager)",
                self.core.list_pod_for_all_namespaces,
                label_selector=pod_selector,
            ).items
            found += [f"pod {p.metadata.namespace}/{p.metadata.name}" for p in pods]
        registration = client.ApiregistrationV1Api(self.api)
        for name in OPS_MANAGER_APISERVICES:
            service = call(
                f"read APIService {name} (to find KubeDB's ops-manager)",
                registration.read_api_service,
                name,
                answers={404: None},
            )
            if service is not None:
                found.append(f"APIService {name}")
        return found
