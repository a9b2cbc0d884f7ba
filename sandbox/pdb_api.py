"""PodDisruptionBudgets through policy/v1beta1: the only PDB API a 1.20 API server serves.

The ``kubernetes`` client 37 has no v1beta1 API class, so these calls go through its ApiClient
(its authentication, TLS and error types) with the paths written out. Objects are plain dicts, as
the API server sends them. ``list_for_all_namespaces`` also serves ``kubernetes.watch.Watch``.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

BASE = "/apis/policy/v1beta1"
# keyword arguments of the generated list functions -> query parameters, for Watch.stream
_QUERY_NAMES = {
    "watch": "watch",
    "resource_version": "resourceVersion",
    "timeout_seconds": "timeoutSeconds",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
}


class PolicyV1beta1:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def list_for_all_namespaces(self, **kwargs: Any) -> Any:
        """Every PDB (a list, or with ``watch=True`` a stream of events); raw response with
        ``_preload_content=False``."""
        preload = kwargs.pop("_preload_content", True)
        timeout = kwargs.pop("_request_timeout", None)
        query = [(_QUERY_NAMES[k], v) for k, v in kwargs.items() if v is not None]
        return self._call(
            "GET", f"{BASE}/poddisruptionbudgets", query=query, preload=preload, timeout=timeout
        )

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", self._path(namespace), body=body)  # type: ignore[no-any-return]

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call("GET", self._path(namespace, name))  # type: ignore[no-any-return]

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of the object (spec, metadata)."""
        path = self._path(namespace, name)
        return self._call("PATCH", path, body=body, content_type="application/merge-patch+json")  # type: ignore[no-any-return]

    def replace_status(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT of the status subresource; 409 when ``body``'s resourceVersion is stale."""
        return self._call("PUT", f"{self._path(namespace, name)}/status", body=body)  # type: ignore[no-any-return]

    def delete(self, namespace: str, name: str) -> None:
        self._call("DELETE", self._path(namespace, name))

    @staticmethod
    def _path(namespace: str, name: str = "") -> str:
        path = f"{BASE}/namespaces/{namespace}/poddisruptionbudgets"
        return f"{path}/{name}" if name else path

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        preload: bool = True,
        timeout: Any = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        if not preload:
            return response.response
        return json.loads(response.read())
