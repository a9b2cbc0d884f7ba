"""The sandbox's switches: how strictly it plays KubeDB, and how fast its pods come and go.

Every switch defaults to the strictest behaviour the sandbox knows (docs/kubedb-fidelity.md says which
of them real KubeDB is known to have). One Settings object belongs to one Sandbox; its controllers
read it whenever they act, so the switches marked "runtime" below may be flipped on a running sandbox
(``sandbox.settings.readiness_follows_password = False``); the others are read once at start.
"""

from __future__ import annotations

from dataclasses import dataclass

IP_FAMILIES = ("ipv4", "ipv6")
PROJECT_IMAGE = "ghcr.io/example/mssql-auth-rotation:0.1.0"  # deployments/worker.yaml's


@dataclass
class Settings:
    pod_stop_delay: float = 0.2
    """runtime: seconds between a pod's deletion and its container stopping."""
    pod_start_delay: float = 0.3
    """runtime: seconds between a pod's removal and its recreation."""
    sql_port: int = 1433
    """start: the port every pod's SQL Server listens on in IPv4 mode (KubeDB's 1433)."""
    new_ip_per_restart: bool = True
    """runtime: each start of a pod's container gets a fresh address (IPv4: a new loopback IP;
    IPv6: a new port, declared in the new pod's spec). False: a pod name keeps its first address."""
    ipv4_octet: int | None = None
    """start: the second octet of every IPv4 pod address (127.<octet>.x.y), 16..239; None: random.
    Parallel test workers each get their own, so their sandboxes never share an address."""
    ip_family: str = "ipv4"
    """start: "ipv4" (a loopback IP per pod, port 1433) or "ipv6" (every pod on ::1, a port each)."""
    role_election_delay: float = 0.3
    """runtime: seconds an Availability Group goes without role labels after its primary left."""
    secondary_catch_up: float = 1.0
    """runtime: seconds a replica that starts again takes to replay the log it missed (its AG state is
    SYNCHRONIZING, then SYNCHRONIZED); the coordinator fails over only to a synchronized replica. A
    primary that comes back while no other replica took over has nothing to catch up."""
    secret_propagation_delay: float = 10.0
    """runtime: seconds before a pod that mounts a Secret as a volume sees a change of it (the
    kubelet's sync period and cache; up to about a minute on a real node). The load client
    (sandbox/load_client.py) reads the auth secret this way."""
    pause_handshake: bool = True
    """runtime: the provisioner acknowledges a ``Paused`` condition of status Unknown by turning it
    True. False: it ignores Unknown and honours only True."""
    readiness_follows_password: bool = True
    """runtime: a running pod is Ready only while the sa password its container started with logs in
    to its own instance. False: Ready whenever its SQL Server runs."""
    project_image: str = PROJECT_IMAGE
    """runtime: the image whose pods run as local processes of this checkout (sandbox/process_pods.py);
    pods of any other image (but KubeDB's, which are emulated) stay Pending. The default is the image
    deployments/worker.yaml and deployments/k8s-base-job-template.json name."""
    termination_grace_cap: float | None = None
    """runtime: the longest a deleted generic pod's processes get between SIGTERM and SIGKILL (their
    pod's grace period when shorter); None: the pod's grace period, as a kubelet does."""
    restart_backoff: float = 10.0
    """runtime: seconds before a generic pod's exited container is started again (restartPolicy Always,
    or OnFailure after a failure), doubled at each restart up to 300 s, as a kubelet's back-off."""

    def __post_init__(self) -> None:
        if self.ipv4_octet is not None and not 16 <= self.ipv4_octet <= 239:
            raise ValueError(f"ipv4_octet must be from 16 to 239, not {self.ipv4_octet!r}")
        if self.ip_family not in IP_FAMILIES:
            raise ValueError(f"ip_family must be one of {IP_FAMILIES}, not {self.ip_family!r}")
