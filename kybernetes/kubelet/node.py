"""The kubelet's Node: registration, capacity, conditions, and the Lease heartbeat.

Two loops, as upstream splits them since NodeLease: the Lease in kube-node-lease is
renewed often and cheaply (it is the liveness signal the node lifecycle controller
watches), while the Node's status (conditions, capacity) is computed every
node-status period but only written when something changed or when the report
frequency (5 minutes) has passed, which keeps a large fleet of idle nodes from
rewriting big Node objects every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import socket
import time
from dataclasses import dataclass
from typing import Any

from kybernetes.api.errors import StatusError
from kybernetes.client import Client

log = logging.getLogger(__name__)

Obj = dict[str, Any]

KUBELET_VERSION = "v1.32.0-kyb"
RUNTIME_VERSION = "kybernetes-process://0.1.0"
LEASE_NAMESPACE = "kube-node-lease"

# Reservations subtracted from capacity for allocatable: what system daemons and the
# hard eviction threshold (memory.available<100Mi) keep away from pods.
RESERVED_CPU_MILLIS = 100
RESERVED_MEMORY = 256 * 1024 * 1024
EVICTION_MEMORY = 100 * 1024 * 1024
EVICTION_NODEFS_FRACTION = 0.10
MAX_PODS = 110


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def now_micro() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return out


def os_image() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def go_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)


def detect_host_ip() -> str:
    """The address other machines reach this one at: the source of the default route."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # connect() on UDP sends nothing; it only picks the outgoing interface.
        s.connect(("10.255.255.255", 1))
        ip = s.getsockname()[0]
        if ip and not ip.startswith("0."):
            return ip
    return "127.0.0.1"


def _pods_quantity(n: int) -> str:
    return str(n)


def capacity(root_dir: str, max_pods: int = MAX_PODS) -> tuple[dict[str, str], dict[str, str]]:
    """(capacity, allocatable) of this machine as Node resource quantities."""
    cpus = os.cpu_count() or 1
    mem = meminfo().get("MemTotal", 0)
    try:
        st = os.statvfs(root_dir)
        disk = st.f_blocks * st.f_frsize
    except OSError:
        disk = 0
    cap = {"cpu": str(cpus), "memory": f"{mem // 1024}Ki", "pods": _pods_quantity(max_pods),
           "ephemeral-storage": f"{disk // 1024}Ki"}
    alloc_cpu = max(cpus * 1000 - RESERVED_CPU_MILLIS, 0)
    alloc_mem = max(mem - RESERVED_MEMORY - EVICTION_MEMORY, 0)
    alloc_disk = int(disk * (1 - EVICTION_NODEFS_FRACTION))
    alloc = {"cpu": f"{alloc_cpu}m", "memory": f"{alloc_mem // 1024}Ki", "pods": _pods_quantity(max_pods),
             "ephemeral-storage": str(alloc_disk)}
    return cap, alloc


def pressure(root_dir: str) -> dict[str, tuple[bool, str, str]]:
    """Condition type -> (under pressure, reason, message), from the hard eviction thresholds."""
    mi = meminfo()
    avail = mi.get("MemAvailable", mi.get("MemFree", 0))
    mem_low = bool(mi) and avail < EVICTION_MEMORY
    try:
        st = os.statvfs(root_dir)
        disk_low = st.f_blocks > 0 and st.f_bavail / st.f_blocks < EVICTION_NODEFS_FRACTION
    except OSError:
        disk_low = False
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            pid_max = int(f.read().strip())
        procs = sum(1 for d in os.listdir("/proc") if d.isdigit())
        pid_low = procs > pid_max * 0.9
    except (OSError, ValueError):
        pid_low = False
    return {
        "MemoryPressure": (mem_low, "KubeletHasInsufficientMemory" if mem_low else "KubeletHasSufficientMemory",
                           "kubelet has insufficient memory available" if mem_low
                           else "kubelet has sufficient memory available"),
        "DiskPressure": (disk_low, "KubeletHasDiskPressure" if disk_low else "KubeletHasNoDiskPressure",
                         "kubelet has disk pressure" if disk_low else "kubelet has no disk pressure"),
        "PIDPressure": (pid_low, "KubeletHasInsufficientPID" if pid_low else "KubeletHasSufficientPID",
                        "kubelet has insufficient PID available" if pid_low
                        else "kubelet has sufficient PID available"),
    }


@dataclass
class NodeConfig:
    name: str
    root_dir: str
    host_ip: str
    host_ips: list[str] | None = None  # every InternalIP, host_ip first; None: host_ip alone
    port: int = 10250
    lease_duration: int = 40
    lease_renew_interval: float = 10.0
    status_update_frequency: float = 10.0
    status_report_frequency: float = 300.0
    max_pods: int = MAX_PODS
    labels: dict[str, str] | None = None
    runtime_version: str = RUNTIME_VERSION


class NodeStatusManager:
    """Registers the Node, keeps its status and renews its Lease."""

    def __init__(self, client: Client, config: NodeConfig) -> None:
        self.client = client
        self.config = config
        self.nodes = client.resource("v1", "nodes", namespaced=False)
        self.leases = client.resource("coordination.k8s.io/v1", "leases")
        self.node_uid: str | None = None
        self._last_conditions: dict[str, tuple[str, str]] = {}
        self._transitions: dict[str, str] = {}
        self._last_report = 0.0
        self._last_status: Obj | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.registered = asyncio.Event()
        # status.images, kept current by the kubelet's image manager (None: not reported).
        self.images: list[Obj] | None = None

    # ------------------------------------------------------------------ the object

    def labels(self) -> dict[str, str]:
        return {"kubernetes.io/hostname": self.config.name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": go_arch(), "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": go_arch(), **(self.config.labels or {})}

    def status(self) -> Obj:
        cap, alloc = capacity(self.config.root_dir, self.config.max_pods)
        now = now_rfc3339()
        conditions = []
        for ctype, (bad, reason, message) in pressure(self.config.root_dir).items():
            conditions.append(self._condition(ctype, "True" if bad else "False", reason, message, now))
        conditions.append(self._condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", now))
        uname = os.uname()
        out: Obj = {
            "capacity": cap,
            "allocatable": alloc,
            "conditions": conditions,
            "addresses": [*({"type": "InternalIP", "address": ip}
                            for ip in self.config.host_ips or [self.config.host_ip]),
                          {"type": "Hostname", "address": self.config.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.config.port}},
            "nodeInfo": {
                "machineID": _read_first("/etc/machine-id"),
                "systemUUID": _read_first("/sys/class/dmi/id/product_uuid"),
                "bootID": _read_first("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": uname.release,
                "osImage": os_image(),
                "containerRuntimeVersion": self.config.runtime_version,
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": go_arch(),
            },
        }
        if self.images is not None:
            out["images"] = self.images
        return out

    def _condition(self, ctype: str, status: str, reason: str, message: str, now: str) -> Obj:
        prev = self._last_conditions.get(ctype)
        if prev is None or prev[0] != status:
            self._transitions[ctype] = now
        self._last_conditions[ctype] = (status, reason)
        return {"type": ctype, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": self._transitions[ctype]}

    # ------------------------------------------------------------------ registration

    async def register(self) -> Obj:
        """Create the Node (or adopt an existing one of that name) and post its first status."""
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.config.name, "labels": self.labels(),
                             "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                             "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
                "spec": {}}
        try:
            node = await self.nodes.create(body)
        except StatusError as e:
            if e.code != 409:
                raise
            node = await self.nodes.patch(self.config.name, {"metadata": {"labels": self.labels()}})
        self.node_uid = node["metadata"]["uid"]
        # Conditions from a previous run are re-derived, not trusted.
        for c in (node.get("status") or {}).get("conditions") or []:
            self._last_conditions[c["type"]] = (c.get("status", ""), c.get("reason", ""))
            self._transitions[c["type"]] = c.get("lastTransitionTime") or now_rfc3339()
        node = await self._post_status(force=True) or node
        await self.renew_lease()
        self.registered.set()
        return node

    async def _post_status(self, force: bool = False) -> Obj | None:
        status = self.status()
        changed = self._last_status is None or _without_heartbeats(status) != _without_heartbeats(self._last_status)
        due = time.monotonic() - self._last_report >= self.config.status_report_frequency
        if not (force or changed or due):
            return None
        node = await self.nodes.patch(self.config.name, {"status": status}, subresource="status")
        self._last_status = status
        self._last_report = time.monotonic()
        return node

    async def renew_lease(self) -> Obj:
        name = self.config.name
        spec = {"holderIdentity": name, "leaseDurationSeconds": self.config.lease_duration,
                "renewTime": now_micro()}
        try:
            return await self.leases.patch(name, {"spec": spec}, namespace=LEASE_NAMESPACE)
        except StatusError as e:
            if e.code != 404:
                raise
        owner = [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": self.node_uid}] if self.node_uid else []
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "ownerReferences": owner},
                "spec": {**spec, "acquireTime": spec["renewTime"]}}
        try:
            return await self.leases.create(body, LEASE_NAMESPACE)
        except StatusError as e:
            if e.code != 409:
                raise
            return await self.leases.patch(name, {"spec": spec}, namespace=LEASE_NAMESPACE)

    # ------------------------------------------------------------------ loops

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop(self.renew_lease, self.config.lease_renew_interval, "lease")),
                       loop.create_task(self._loop(self._status_tick, self.config.status_update_frequency,
                                                   "node status"))]

    async def _status_tick(self) -> None:
        try:
            await self._post_status()
        except StatusError as e:
            if e.code != 404:
                raise
            # Someone deleted our Node: register again, as upstream's kubelet does on restart.
            self._last_status = None
            await self.register()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []

    @staticmethod
    async def _loop(fn: Any, period: float, what: str) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the API being away must not end the heartbeat
                log.warning("%s update failed: %s", what, e)


def _without_heartbeats(status: Obj) -> Obj:
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastHeartbeatTime"} for c in status["conditions"]]
    # Free memory and disk move all the time; only the quantities the scheduler uses
    # (capacity/allocatable) and the condition statuses decide whether to write.
    return out


def _read_first(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
