"""Hollow nodes: many simulated nodes in one process, for scheduler and control-plane scale tests.

Like kwok, a hollow node is only its API objects: a Node with capacity and a
Ready condition, a Lease in kube-node-lease renewed on time, and pods bound
to it reported Running and Ready without running anything. Deleted pods are
finished at once. One pod informer and one renewal loop serve all the nodes,
so thousands of them cost little more than their writes.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from ..api.errors import StatusError
from ..api.times import format_time
from ..client import Client, Informer
from ..client.informer import strip_managed_fields

log = logging.getLogger("kybernetes.hollow")


def _now() -> str:
    return format_time()


_REASONS = {"MemoryPressure": "KubeletHasSufficientMemory", "DiskPressure": "KubeletHasNoDiskPressure",
            "PIDPressure": "KubeletHasSufficientPID", "Ready": "KubeletReady"}


def _address(index: int) -> str:
    """A loopback address per hollow node: if anything ever connects (kubectl logs on a
    hollow pod), it reaches this machine and is refused, never the network."""
    return f"127.1.{index // 250 % 250}.{index % 250 + 1}"


def _micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HollowNodes:
    def __init__(self, client: Client, count: int, *, prefix: str = "hollow-node-", cpu: str = "4",
                 memory: str = "16Gi", pods: int = 110, labels: dict[str, str] | None = None,
                 taints: list[dict[str, Any]] | None = None, renew_interval: float = 10.0,
                 concurrency: int = 32):
        self.client = client
        self.names = [f"{prefix}{i}" for i in range(count)]
        self._names = set(self.names)
        self._index = {n: i for i, n in enumerate(self.names)}
        self.cpu, self.memory, self.max_pods = cpu, memory, pods
        self.labels = labels or {}
        self.taints = taints or []
        self.renew_interval = renew_interval
        self.sem = asyncio.Semaphore(concurrency)
        self.pods = Informer(client.resource("v1", "pods"), field_selector="spec.nodeName!=",
                             transform=strip_managed_fields)
        self.pods.add_handler(on_add=self._pod_event, on_update=lambda _o, n: self._pod_event(n))
        self._tasks: set[asyncio.Task] = set()
        self._renewer: asyncio.Task | None = None
        self._inflight: set[str] = set()

    def _node(self, name: str, index: int) -> dict[str, Any]:
        ts = _now()
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "hollow", **self.labels}
        cap = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.max_pods), "ephemeral-storage": "100Gi"}
        spec: dict[str, Any] = {}
        if self.taints:
            spec["taints"] = list(self.taints)
        ip = _address(index)
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec,
                "status": {"capacity": cap, "allocatable": cap, "addresses": [
                    {"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                    "conditions": [
                        {"type": t, "status": "False" if t != "Ready" else "True",
                         "reason": _REASONS[t],
                         "message": "hollow node", "lastHeartbeatTime": ts, "lastTransitionTime": ts}
                        for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")],
                    "nodeInfo": {"kubeletVersion": "v1.32.0-kyb-hollow", "containerRuntimeVersion": "fake://0.1.0",
                                 "osImage": "hollow", "kernelVersion": "hollow", "operatingSystem": "linux",
                                 "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": "",
                                 "kubeProxyVersion": ""}}}

    async def _limited(self, coro) -> Any:
        async with self.sem:
            return await coro

    async def register(self) -> None:
        nodes = self.client.resource("v1", "nodes", False)
        leases = self.client.resource("coordination.k8s.io/v1", "leases")

        async def one(i: int, name: str) -> None:
            obj = self._node(name, i)
            try:
                await nodes.create(obj)
            except StatusError as e:
                if e.code != 409:
                    raise
                await nodes.patch(name, {"status": obj["status"]}, patch_type="merge", subresource="status")
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": name, "namespace": "kube-node-lease"},
                     "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": _micro_now()}}
            try:
                await leases.create(lease, "kube-node-lease")
            except StatusError as e:
                if e.code != 409:
                    raise
        await asyncio.gather(*(self._limited(one(i, n)) for i, n in enumerate(self.names)))

    async def renew_all(self) -> None:
        leases = self.client.resource("coordination.k8s.io/v1", "leases")

        async def one(name: str) -> None:
            try:
                await leases.patch(name, {"spec": {"renewTime": _micro_now()}}, namespace="kube-node-lease")
            except StatusError as e:
                log.warning("hollow node %s: lease renewal failed: %s", name, e.message)
        await asyncio.gather(*(self._limited(one(n)) for n in self.names))

    async def _renew_loop(self) -> None:
        while True:
            # The interval is the heartbeat itself, not a wait for a condition.
            await asyncio.sleep(self.renew_interval)
            await self.renew_all()

    def _pod_event(self, pod: dict[str, Any]) -> None:
        spec = pod.get("spec") or {}
        if spec.get("nodeName") not in self._names:
            return
        m = pod["metadata"]
        key = f"{m.get('namespace')}/{m.get('name')}"
        if key in self._inflight:
            return
        status = pod.get("status") or {}
        if m.get("deletionTimestamp"):
            work = self._finish_deletion(pod)
        elif status.get("phase") in (None, "Pending"):
            work = self._run(pod)
        else:
            return
        self._inflight.add(key)
        t = asyncio.create_task(self._limited(work))
        self._tasks.add(t)

        def done(task: asyncio.Task, _key: str = key) -> None:
            self._tasks.discard(task)
            self._inflight.discard(_key)
            if not task.cancelled() and task.exception() is not None:
                log.warning("hollow pod %s: %s", _key, task.exception())
        t.add_done_callback(done)

    async def _run(self, pod: dict[str, Any]) -> None:
        m = pod["metadata"]
        spec = pod.get("spec") or {}
        ts = _now()
        ip = _address(self._index[spec["nodeName"]])
        statuses = [{"name": c["name"], "ready": True, "started": True, "restartCount": 0,
                     "image": c.get("image", ""), "imageID": "", "containerID": f"fake://{m['uid']}-{c['name']}",
                     "state": {"running": {"startedAt": ts}}} for c in spec.get("containers") or []]
        conds = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": ts}
                 for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")]
        body = {"status": {"phase": "Running", "conditions": conds, "containerStatuses": statuses,
                           "hostIP": ip, "hostIPs": [{"ip": ip}], "podIP": ip, "podIPs": [{"ip": ip}],
                           "startTime": ts}}
        try:
            await self.client.resource("v1", "pods").patch(m["name"], body, namespace=m["namespace"],
                                                           patch_type="merge", subresource="status")
        except StatusError as e:
            if e.code != 404:
                raise

    async def _finish_deletion(self, pod: dict[str, Any]) -> None:
        m = pod["metadata"]
        try:
            await self.client.resource("v1", "pods").delete(m["name"], m["namespace"], grace_period_seconds=0,
                                                            preconditions={"uid": m["uid"]})
        except StatusError as e:
            if e.code not in (404, 409):
                raise

    async def start(self) -> None:
        await self.register()
        await self.pods.start()
        await self.pods.wait_for_sync(60)
        self._renewer = asyncio.create_task(self._renew_loop(), name="hollow-lease-renewal")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        await self.pods.stop()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._renewer is not None:
            await asyncio.gather(self._renewer, return_exceptions=True)
