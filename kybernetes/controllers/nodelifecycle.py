"""Node lifecycle (self-healing): notice dead nodes, taint them, evict their pods.

A node is healthy while its kubelet renews its Lease in kube-node-lease. When
no renewal has been seen for the grace period (40 s, as upstream's
node-monitor-grace-period) the node's conditions turn Unknown ("Kubelet
stopped posting node status.") and it gets the node.kubernetes.io/unreachable
taints; a node whose kubelet reports Ready=False gets the not-ready taints.
As upstream's probeTimestamp, the grace counts from when this controller saw
the heartbeat change, on its own clock, never from the renewTime the kubelet
wrote: a node's clock may be skewed, and after a control-plane restart or
outage every node gets a full grace period to renew instead of being found
stale at once and having its pods evicted.
Pods on a node with a NoExecute taint are evicted once their toleration (or
tolerationSeconds, 300 s by the default admission) runs out, so their
controllers recreate them elsewhere; pods bound to a node that no longer
exists are deleted. Taints come off when the node is healthy again.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from collections.abc import Callable

from ..api.errors import StatusError
from ..api.pods import find_toleration as tolerates
from ..client import Client
from .base import Controller, Requeue
from .common import now_rfc3339, parse_time

log = logging.getLogger("kybernetes.controllers.nodelifecycle")

UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
_OURS = (UNREACHABLE, NOT_READY)


def _ready_condition(node: dict[str, Any]) -> dict[str, Any] | None:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c
    return None


class NodeLifecycleController(Controller):
    name = "node-lifecycle"

    def __init__(self, client: Client, *, grace_period: float = 40.0,
                 clock: Callable[[], float] = time.time):
        super().__init__(client)
        self.grace_period = grace_period
        self.clock = clock
        self._missing_since: dict[str, float] = {}
        # node -> (the heartbeat last seen: lease renewTime, Ready lastHeartbeatTime; when it was seen)
        self._probes: dict[str, tuple[tuple[Any, Any], float]] = {}
        self.nodes = self.informer("v1", "nodes", namespaced=False, resync_period=max(5.0, grace_period / 4))
        self.leases = self.informer("coordination.k8s.io/v1", "leases")
        self.pods = self.informer("v1", "pods")
        self.pods.add_index("node", lambda p: [(p.get("spec") or {}).get("nodeName") or ""])
        self.nodes.add_handler(on_add=self._node_event, on_update=lambda _o, n: self._node_event(n),
                               on_delete=self._node_event)
        self.leases.add_handler(on_add=self._lease_event, on_update=lambda _o, n: self._lease_event(n))
        self.pods.add_handler(on_add=self._pod_event, on_update=lambda _o, n: self._pod_event(n))

    def _node_event(self, node: dict[str, Any]) -> None:
        self.enqueue("node/" + node["metadata"]["name"])

    def _lease_event(self, lease: dict[str, Any]) -> None:
        if lease["metadata"].get("namespace") == "kube-node-lease":
            self.enqueue("node/" + lease["metadata"]["name"])

    def _pod_event(self, pod: dict[str, Any]) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            self.enqueue("node/" + node)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        name = key.split("/", 1)[1]
        node = self.nodes.get(name)
        now = self.clock()
        if node is None:
            self._probes.pop(name, None)
            if not self.pods.by_index("node", name):
                self._missing_since.pop(name, None)
                return
            # A node may register just after its pods were bound (or the cache
            # may lag): only a node missing for the whole quarantine is gone.
            since = self._missing_since.setdefault(name, now)
            if now - since < self.grace_period:
                raise Requeue(after=self.grace_period - (now - since) + 0.05)
            await self._delete_orphan_pods(name)
            self._missing_since.pop(name, None)
            return
        self._missing_since.pop(name, None)
        lease = self.leases.get(f"kube-node-lease/{name}")
        ready = _ready_condition(node)
        renewed = self._probe(name, lease, ready, now)
        stale = now - renewed > self.grace_period
        if stale and (ready is None or ready.get("status") != "Unknown"):
            await self._mark_unknown(node)
            return  # the node update brings us back with the new state
        status = (ready or {}).get("status")
        want = {UNREACHABLE} if status == "Unknown" else ({NOT_READY} if status == "False" else set())
        await self._sync_taints(node, want)
        next_check = self.grace_period - (now - renewed) if not stale else None
        evict_after = await self._evict(node, now)
        delays = [d for d in (next_check, evict_after) if d is not None and d > 0]
        if delays:
            raise Requeue(after=min(delays) + 0.05)

    def _probe(self, name: str, lease: dict[str, Any] | None, ready: dict[str, Any] | None, now: float) -> float:
        """When this controller last saw the node's heartbeat (lease renewal or status post) change."""
        beat = (((lease or {}).get("spec") or {}).get("renewTime"), (ready or {}).get("lastHeartbeatTime"))
        seen = self._probes.get(name)
        if seen is None or seen[0] != beat:
            # First sight counts as a heartbeat, as upstream ("assuming now as a timestamp").
            self._probes[name] = (beat, now)
            return now
        return seen[1]

    async def _mark_unknown(self, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        ts = now_rfc3339()
        conds = []
        for c in (node.get("status") or {}).get("conditions") or []:
            c = dict(c)
            if c.get("type") in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure") and \
                    c.get("status") != "Unknown":
                c.update(status="Unknown", reason="NodeStatusUnknown",
                         message="Kubelet stopped posting node status.", lastTransitionTime=ts)
            conds.append(c)
        if not any(c.get("type") == "Ready" for c in conds):
            conds.append({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                          "message": "Kubelet never posted node status.", "lastHeartbeatTime": ts,
                          "lastTransitionTime": ts})
        log.info("node %s stopped renewing its lease: Ready=Unknown", name)
        await self.client.resource("v1", "nodes", False).patch(
            name, {"status": {"conditions": conds}}, patch_type="strategic", subresource="status")
        await self._mark_pods_not_ready(name)

    async def _mark_pods_not_ready(self, node_name: str) -> None:
        pods = self.client.resource("v1", "pods")
        for pod in self.pods.by_index("node", node_name):
            conds = (pod.get("status") or {}).get("conditions") or []
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                continue
            new = [dict(c, status="False", lastTransitionTime=now_rfc3339()) if c.get("type") == "Ready" else c
                   for c in conds]
            try:
                await pods.patch(pod["metadata"]["name"], {"status": {"conditions": new}},
                                 namespace=pod["metadata"]["namespace"], patch_type="strategic",
                                 subresource="status")
            except StatusError as e:
                if e.code != 404:
                    raise

    async def _sync_taints(self, node: dict[str, Any], want: set[str]) -> None:
        taints = list((node.get("spec") or {}).get("taints") or [])
        have = {t.get("key") for t in taints if t.get("key") in _OURS}
        if have == want:
            return
        keep = [t for t in taints if t.get("key") not in _OURS or t.get("key") in want]
        ts = now_rfc3339()
        for key in sorted(want - have):
            keep.append({"key": key, "effect": "NoSchedule"})
            keep.append({"key": key, "effect": "NoExecute", "timeAdded": ts})
        log.info("node %s taints: %s", node["metadata"]["name"], sorted(want) or "none of ours")
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": node["metadata"]["resourceVersion"]},
                 {"op": "add", "path": "/spec/taints", "value": keep} if "spec" in node else
                 {"op": "add", "path": "/spec", "value": {"taints": keep}}]
        try:
            await self.client.resource("v1", "nodes", False).patch(node["metadata"]["name"], patch,
                                                                    patch_type="json")
        except StatusError as e:
            if e.code in (409, 422):
                raise Requeue() from None
            raise

    async def _evict(self, node: dict[str, Any], now: float) -> float | None:
        """Delete pods whose tolerations of the node's NoExecute taints ran out; seconds to the next one."""
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == "NoExecute"]
        if not taints:
            return None
        soonest: float | None = None
        for pod in self.pods.by_index("node", node["metadata"]["name"]):
            m = pod["metadata"]
            if m.get("deletionTimestamp"):
                continue
            tols = (pod.get("spec") or {}).get("tolerations") or []
            deadline: float | None = None
            evict_now = False
            for taint in taints:
                t = tolerates(tols, taint)
                if t is None:
                    evict_now = True
                    break
                if t.get("tolerationSeconds") is not None:
                    added = parse_time(taint.get("timeAdded")) or now
                    d = added + max(0, int(t["tolerationSeconds"]))
                    deadline = d if deadline is None else min(deadline, d)
            if not evict_now and deadline is not None and deadline <= now:
                evict_now = True
            if evict_now:
                log.info("evicting pod %s/%s from node %s (NoExecute taint)", m["namespace"], m["name"],
                         node["metadata"]["name"])
                await self._delete_pod(pod)
            elif deadline is not None:
                left = deadline - now
                soonest = left if soonest is None else min(soonest, left)
        return soonest

    async def _delete_pod(self, pod: dict[str, Any], grace: int | None = None) -> None:
        m = pod["metadata"]
        try:
            await self.client.resource("v1", "pods").delete(m["name"], m["namespace"], grace_period_seconds=grace,
                                                            preconditions={"uid": m["uid"]})
        except StatusError as e:
            if e.code not in (404, 409):
                raise

    async def _delete_orphan_pods(self, node_name: str) -> None:
        """Pods bound to a node that is gone can never run: delete them at once (as upstream's pod GC)."""
        for pod in self.pods.by_index("node", node_name):
            await self._delete_pod(pod, grace=0)
