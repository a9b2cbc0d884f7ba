"""Where each pod's SQL Server listens: hands out loopback addresses as a CNI plugin hands out pod IPs.

IPv4: every container start gets a fresh ``127.<octet>.x.y`` (port 1433, as in KubeDB); the random
second octet keeps two sandboxes on one machine (a developer's and CI's) apart.
IPv6: every pod shares ``::1``, so a pod is told apart by its port instead; the PetSet controller
asks for one when it creates the pod and declares it in the pod's spec (a new pod, a new port).
With ``fresh=False`` a pod name keeps the first address it was given.

Boundaries: no sockets are kept open; an IPv6 port is checked to be free when it is handed out.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading

from sandbox.podview import PodKey

IPV6_HOST = "::1"
# IPv6 ports come from below Linux's ephemeral range (32768+), so outgoing connections never take one.
IPV6_PORT_FLOOR, IPV6_PORT_SPAN = 20000, 10000
IPV4_HOSTS_PER_BLOCK = 250  # 127.o.b.2 .. 127.o.b.251


class AddressPlan:
    def __init__(self, family: str, ipv4_port: int, octet: int | None = None) -> None:
        self.family = family
        self.ipv4_port = ipv4_port
        self._lock = threading.Lock()
        self._octet = octet if octet is not None else 16 + secrets.randbelow(224)
        self._next_ipv4 = 0
        self._next_port = IPV6_PORT_FLOOR + secrets.randbelow(IPV6_PORT_SPAN)
        self._hosts: dict[PodKey, str] = {}  # pod -> last host handed out
        self._ports: dict[PodKey, int] = {}  # pod -> last IPv6 port handed out

    def port_for_new_pod(self, pod: PodKey, *, fresh: bool) -> int:
        """The SQL port to declare in a new pod's spec."""
        if self.family != "ipv6":
            return self.ipv4_port
        with self._lock:
            if fresh or pod not in self._ports:
                self._ports[pod] = self._free_ipv6_port()
            return self._ports[pod]

    def host_for_start(self, pod: PodKey, *, fresh: bool) -> str:
        """The address a starting container gets (status.podIP)."""
        if self.family == "ipv6":
            return IPV6_HOST
        with self._lock:
            if fresh or pod not in self._hosts:
                n = self._next_ipv4
                self._next_ipv4 += 1
                self._hosts[pod] = (
                    f"127.{self._octet}.{n // IPV4_HOSTS_PER_BLOCK}.{n % IPV4_HOSTS_PER_BLOCK + 2}"
                )
            return self._hosts[pod]

    def _free_ipv6_port(self) -> int:
        for _ in range(IPV6_PORT_SPAN):
            port = self._next_port
            self._next_port = IPV6_PORT_FLOOR + (port + 1 - IPV6_PORT_FLOOR) % IPV6_PORT_SPAN
            if _bindable(port):
                return port
        raise RuntimeError(
            f"no free port on [{IPV6_HOST}] in {IPV6_PORT_FLOOR}..{IPV6_PORT_FLOOR + IPV6_PORT_SPAN}"
        )


def _bindable(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET6, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind((IPV6_HOST, port))
        except OSError:
            return False
        return True
