"""The disruption controller: PodDisruptionBudget status.

For each budget it counts the pods its selector covers, how many are healthy
(Ready and not on their way out), how many should be (from minAvailable or
maxUnavailable, as numbers or percentages of the expected pods, which come
from the scale of the pods' controllers), and so how many disruptions are
allowed now. The eviction subresource spends those disruptions and records
the evicted pods in status.disruptedPods; this controller forgets entries
whose pods are gone or that are older than two minutes.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..api.errors import StatusError
from ..api.selectors import InvalidSelector, from_label_selector_object
from ..client import Client
from .base import Controller, Requeue, key_of
from .common import controller_ref, is_pod_ready, now_rfc3339, parse_time, selecting

DISRUPTED_TTL = 120.0


def scaled(value: Any, total: int, round_up: bool) -> int:
    """An IntOrString as a count out of total ("50%" of 3 is 2 rounded up, 1 down)."""
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = int(value[:-1])
        except ValueError:
            return 0
        v = pct * total / 100
        return math.ceil(v) if round_up else math.floor(v)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class DisruptionController(Controller):
    name = "disruption"

    def __init__(self, client: Client):
        super().__init__(client)
        self.pdbs = self.informer("policy/v1", "poddisruptionbudgets")
        self.pods = self.informer("v1", "pods")
        self.pdbs.add_handler(on_add=lambda o: self.enqueue(key_of(o)),
                              on_update=lambda _o, n: self.enqueue(key_of(n)))
        self.pods.add_handler(on_add=self._pod_event, on_update=lambda _o, n: self._pod_event(n),
                              on_delete=self._pod_event)

    def _pod_event(self, pod: dict[str, Any]) -> None:
        for pdb in selecting(self.pdbs, pod):
            self.enqueue(key_of(pdb))

    async def _expected(self, pods: list[dict[str, Any]]) -> int:
        """Expected pods: the replicas of the pods' controllers (each counted once); 1 per orphan pod."""
        seen: dict[str, int] = {}
        orphans = 0
        for pod in pods:
            ref = controller_ref(pod)
            if ref is None:
                orphans += 1
                continue
            if ref["uid"] in seen:
                continue
            seen[ref["uid"]] = await self._scale_of(ref, pod["metadata"]["namespace"])
        return orphans + sum(seen.values())

    async def _scale_of(self, ref: dict[str, Any], ns: str) -> int:
        plural = {"ReplicaSet": ("apps/v1", "replicasets"), "StatefulSet": ("apps/v1", "statefulsets"),
                  "ReplicationController": ("v1", "replicationcontrollers"),
                  "Deployment": ("apps/v1", "deployments")}.get(ref.get("kind", ""))
        if plural is None:
            return 1
        try:
            obj = await self.client.resource(*plural).get(ref["name"], ns)
        except StatusError as e:
            if e.code == 404:
                return 0
            raise
        owner = controller_ref(obj)
        if ref.get("kind") == "ReplicaSet" and owner is not None and owner.get("kind") == "Deployment":
            return await self._scale_of(owner, ns)
        return int((obj.get("spec") or {}).get("replicas", 1) or 0)

    async def reconcile(self, key: str) -> None:
        pdb = self.pdbs.get(key)
        if pdb is None or pdb["metadata"].get("deletionTimestamp"):
            return
        ns = pdb["metadata"]["namespace"]
        spec = pdb.get("spec") or {}
        status = dict(pdb.get("status") or {})
        try:
            sel = from_label_selector_object(spec.get("selector"))
        except InvalidSelector:
            sel = None
        pods = [p for p in self.pods.list_by_namespace(ns)
                if sel is not None and sel.matches(p["metadata"].get("labels") or {})]
        now = time.time()
        disrupted: dict[str, str] = {}
        by_name = {p["metadata"]["name"]: p for p in pods}
        for pod_name, ts in (status.get("disruptedPods") or {}).items():
            pod = by_name.get(pod_name)
            t = parse_time(ts) or 0
            if pod is not None and not pod["metadata"].get("deletionTimestamp") and now - t < DISRUPTED_TTL:
                disrupted[pod_name] = ts
        healthy = sum(1 for p in pods if is_pod_ready(p) and not p["metadata"].get("deletionTimestamp")
                      and p["metadata"]["name"] not in disrupted)
        if spec.get("maxUnavailable") is not None:
            expected = await self._expected(pods)
            desired = max(0, expected - scaled(spec["maxUnavailable"], expected, True))
        elif isinstance(spec.get("minAvailable"), str):
            expected = await self._expected(pods)
            desired = scaled(spec["minAvailable"], expected, True)
        else:
            expected = len(pods)
            desired = scaled(spec.get("minAvailable", 0), expected, True)
        allowed = max(0, healthy - desired)
        cond_status = "True" if allowed > 0 else "False"
        old_cond = next((c for c in status.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), None)
        cond = {"type": "DisruptionAllowed", "status": cond_status,
                "reason": "SufficientPods" if allowed > 0 else "InsufficientPods", "message": "",
                "observedGeneration": pdb["metadata"].get("generation"),
                "lastTransitionTime": old_cond.get("lastTransitionTime") if old_cond and
                old_cond.get("status") == cond_status else now_rfc3339()}
        new_status = {"observedGeneration": pdb["metadata"].get("generation"), "disruptionsAllowed": allowed,
                      "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected,
                      "conditions": [cond]}
        if disrupted:
            new_status["disruptedPods"] = disrupted
        if new_status != status:
            body = dict(pdb)
            body["status"] = new_status
            try:
                await self.client.resource("policy/v1", "poddisruptionbudgets").update_status(body, ns)
            except StatusError as e:
                if e.code == 409:
                    raise Requeue() from None
                if e.code != 404:
                    raise
        if disrupted:
            # Forget evictions whose pods never went away once they expire.
            raise Requeue(after=DISRUPTED_TTL)
