"""The sandbox's Kubernetes controllers are the real ones (kube-controller-manager and kube-scheduler
1.20, built from Debian's source package): the scheduler binds pods to the kubelet emulation's one
Node, the garbage collector removes a deleted database's objects, the EndpointSlice controller
fills the Services, and Deployments, ReplicaSets and Jobs (with their finished TTL) work. Seen through
the official ``kubernetes`` client only; what each test waits for is a condition, never a delay.
"""

from __future__ import annotations

import uuid
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox import kubedb_shapes as shapes
from sandbox import podview
from sandbox.cluster import Sandbox
from sandbox.kubelet import NODE_NAME

FOREIGN_IMAGE = "registry.invalid/not-the-projects-image:1"  # the kubelet emulation never runs it


def _gone(read: Any, *args: Any) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _slice_addresses(sandbox: Sandbox, namespace: str, service: str) -> dict[str, bool]:
    """IP -> ready, over the EndpointSlices the controller made for ``service``."""
    slices = sandbox.dynamic.resources.get(api_version="discovery.k8s.io/v1beta1", kind="EndpointSlice")
    found: dict[str, bool] = {}
    listed = slices.get(namespace=namespace, label_selector=f"kubernetes.io/service-name={service}")
    for item in listed.to_dict()["items"]:
        for endpoint in item.get("endpoints") or []:
            ready = bool((endpoint.get("conditions") or {}).get("ready"))
            for address in endpoint["addresses"]:
                found[address] = ready
    return found


def test_the_kubelet_registers_one_ready_node_with_capacity(core: client.CoreV1Api) -> None:
    node = core.read_node(NODE_NAME)

    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    assert int(node.status.capacity["pods"]) >= 110
    assert int(node.status.allocatable["cpu"].removesuffix("m")) > 0
    assert [a.address for a in node.status.addresses if a.type == "InternalIP"] == ["127.0.0.1"]


def test_database_pods_are_created_unbound_and_bound_to_the_node_by_the_scheduler(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=1)

    [pod] = [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name == db.pods[0]]
    assert pod.spec.node_name == NODE_NAME
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={db.pods[0]}")
    scheduled = [e for e in events.items if e.reason == "Scheduled"]
    assert scheduled and scheduled[0].reporting_component == "default-scheduler"


def test_deleting_a_wipeout_database_lets_the_garbage_collector_remove_everything_it_owned(
    sandbox: Sandbox, core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=2, pdb={"maxUnavailable": 1})
    assert db.get()["metadata"]["finalizers"] == [shapes.FINALIZER]
    secrets = {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
    assert {"db-auth", "db-server-cert", "db-client-cert"} <= secrets

    custom.delete_namespaced_custom_object(shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, "db")

    def collected() -> bool:
        petsets = custom.list_namespaced_custom_object(
            shapes.PETSET_GROUP, shapes.PETSET_VERSION, namespace, shapes.PETSET_PLURAL
        )["items"]
        return (
            not petsets
            and not core.list_namespaced_pod(namespace).items
            and not core.list_namespaced_service(namespace).items
            and not [s for s in core.list_namespaced_secret(namespace).items if s.metadata.name in secrets]
            and sandbox.read_pdb(namespace, "db") is None
            and _gone(custom.get_namespaced_custom_object, *_db_path(namespace))
        )

    sandbox.wait_for(collected, "the garbage collector to remove the database's objects")
    sandbox.wait_for(lambda: not sandbox.fleet.running_in(namespace), "the SQL Servers to stop")


def _db_path(namespace: str) -> tuple[str, str, str, str, str]:
    return (shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, "db")


def test_a_user_secret_is_kept_when_another_database_still_uses_it(
    sandbox: Sandbox, core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str
) -> None:
    """KubeDB's WipeOut hands the auth secret to the database only when no other database uses it."""
    sandbox.create_database(namespace, "db", replicas=1, auth_secret_type=shapes.OPAQUE)
    sandbox.create_database(namespace, "other", replicas=1)
    uses_db_auth = {"spec": {"authSecret": {"name": "db-auth"}}}
    custom.patch_namespaced_custom_object(
        shapes.GROUP, shapes.VERSION, namespace, shapes.PLURAL, "other", uses_db_auth
    )

    custom.delete_namespaced_custom_object(*_db_path(namespace))
    petset = (shapes.PETSET_GROUP, shapes.PETSET_VERSION, namespace, shapes.PETSET_PLURAL, "db")
    sandbox.wait_for(
        lambda: (
            _gone(custom.get_namespaced_custom_object, *_db_path(namespace))
            and _gone(custom.get_namespaced_custom_object, *petset)
        ),
        "the database and its PetSet collected",
    )

    assert not core.read_namespaced_secret("db-auth", namespace).metadata.owner_references


def test_endpoint_slices_follow_the_pods_readiness_and_ips(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    db = sandbox.create_database(namespace, "db", replicas=3)
    ips = {db.ip(pod) for pod in db.pods}
    primary = next(
        podview.name(p)
        for p in podview.list_pods(core, namespace, f"{podview.INSTANCE_LABEL}=db")
        if podview.role(p) == "primary"
    )

    sandbox.wait_for(
        lambda: _slice_addresses(sandbox, namespace, "db-pods") == dict.fromkeys(ips, True),
        "the governing service's slices to list every replica, ready",
    )
    sandbox.wait_for(
        lambda: _slice_addresses(sandbox, namespace, "db") == {db.ip(primary): True},
        "the primary service's slices to list the primary only",
    )


def test_a_deployment_makes_a_replicaset_whose_pod_the_scheduler_binds_and_all_go_with_it(
    sandbox: Sandbox, core: client.CoreV1Api, namespace: str
) -> None:
    apps = client.AppsV1Api(sandbox.api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": FOREIGN_IMAGE}]},
                },
            },
        },
    )

    def bound_pod() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return len(pods) == 1 and pods[0].spec.node_name == NODE_NAME

    sandbox.wait_for(bound_pod, "the Deployment's pod, bound to the node")
    [replica_set] = apps.list_namespaced_replica_set(namespace).items
    assert replica_set.metadata.owner_references[0].kind == "Deployment"

    apps.delete_namespaced_deployment("web", namespace)
    sandbox.wait_for(
        lambda: (
            not apps.list_namespaced_replica_set(namespace).items
            and not core.list_namespaced_pod(namespace).items
        ),
        "the garbage collector to remove the ReplicaSet and its pod",
    )


def test_a_job_past_its_deadline_fails_and_its_finished_ttl_deletes_it(
    sandbox: Sandbox, namespace: str
) -> None:
    batch = client.BatchV1Api(sandbox.api)
    name = f"job-{uuid.uuid4().hex[:6]}"
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "ttlSecondsAfterFinished": 0,
                "activeDeadlineSeconds": 1,
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "job", "image": FOREIGN_IMAGE}],
                    }
                },
            },
        },
    )
    # The field survives only with the TTLAfterFinished gate on (alpha in 1.20).
    assert batch.read_namespaced_job(name, namespace).spec.ttl_seconds_after_finished == 0

    sandbox.wait_for(
        lambda: _gone(batch.read_namespaced_job, name, namespace),
        "the Job to fail at its deadline and be deleted by its finished TTL",
    )
