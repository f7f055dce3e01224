"""The ReplicaSet controller: keeps spec.replicas pods matching a ReplicaSet's selector.

One reconcile of a ReplicaSet key:

* claims pods: adopts active orphans that match the selector (a controller
  ownerReference patched in) and releases pods it controls that stopped
  matching;
* when its expectations are satisfied, creates or deletes the difference, in
  slow-start batches (1, 2, 4, ... capped at the burst), deleting the least
  valuable pods first (upstream's ActivePodsWithRanks order);
* writes status: replicas, fullyLabeledReplicas, readyReplicas,
  availableReplicas, observedGeneration and the ReplicaFailure condition.

Expectations are why a burst of pod events never causes a second round of
creations: after asking for N pods the controller waits to see N pod events
(or the TTL) before acting on counts again. With minReadySeconds the key is
requeued for the moment the next ready pod becomes available, since no event
marks that moment.

A sync reads every pod of the ReplicaSet, so it costs O(replicas). Pod events
that only change status (the bulk of them while thousands of pods start) are
therefore gathered for POD_STATUS_BATCH seconds into one sync, while events
that satisfy the expectations (the next batch of creations is due) or change
ownership still sync at once. Readiness per pod is remembered by
resourceVersion, so a sync re-derives nothing for pods that did not change.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable

from ..api.errors import StatusError
from ..api.selectors import InvalidSelector, LabelSelector, from_label_selector_object
from ..client import Client
from .base import Controller, Requeue, key_of
from .common import (
    Expectations,
    Obj,
    controller_ref,
    is_pod_active,
    is_pod_available,
    is_pod_ready,
    now_rfc3339,
    owner_reference,
    parse_time,
    pod_from_template,
    selecting,
)

log = logging.getLogger("kybernetes.controllers.replicaset")

BURST_REPLICAS = 500
SLOW_START_INITIAL_BATCH = 1
POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
CONTROLLER_INDEX = "controller-uid"

_PHASE_ORDINAL = {"Pending": 0, "Unknown": 1, "Running": 2}
# Status-only pod changes within this window share one sync (see the module doc).
POD_STATUS_BATCH = 0.1


def controller_uid_index(obj: Obj) -> list[str]:
    ref = controller_ref(obj)
    return [ref["uid"]] if ref and ref.get("uid") else []


ORPHAN_INDEX = "orphans-by-namespace"


def orphan_namespace_index(obj: Obj) -> list[str]:
    """Pods nobody controls, by namespace: the only ones a ReplicaSet may adopt."""
    return [(obj.get("metadata") or {}).get("namespace") or ""] if controller_ref(obj) is None else []


async def slow_start_batch(count: int, initial: int, fn: Callable[[], Awaitable[None]]) -> tuple[int, Exception | None]:
    """Call fn count times in batches doubling from `initial`; stop after the first failing batch.

    A quota or admission error fails the first call of a small batch rather
    than hundreds of calls at once. Returns (successes, first error).
    """
    remaining = count
    successes = 0
    batch = min(remaining, initial)
    while batch > 0:
        results = await asyncio.gather(*(fn() for _ in range(batch)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        successes += batch - len(errors)
        for e in errors:
            if isinstance(e, asyncio.CancelledError):
                raise e
        if errors:
            err = errors[0]
            return successes, err if isinstance(err, Exception) else Exception(str(err))
        remaining -= batch
        batch = min(2 * batch, remaining)
    return successes, None


# ---------------------------------------------------------------------- deletion ranking


def _ready_since(pod: Obj) -> float | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return None


def _deletion_cost(pod: Obj) -> int:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(POD_DELETION_COST)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def _restarts(pod: Obj) -> int:
    return max((int(cs.get("restartCount") or 0) for cs in (pod.get("status") or {}).get("containerStatuses") or []),
               default=0)


def _log_rank(t: float, now: float) -> int:
    """Upstream's logarithmic bucket of an age in nanoseconds, so near-equal ages tie."""
    d = (now - t) * 1e9
    return int(math.log2(d)) if d > 0 else -1


class _Rank:
    """What the deletion order looks at in one pod, read once per sort (parsing times is costly)."""

    __slots__ = ("unassigned", "phase", "ready", "cost", "crowd", "ready_since", "restarts", "created", "uid")

    def __init__(self, pod: Obj, crowd: int):
        spec, status, meta = pod.get("spec") or {}, pod.get("status") or {}, pod.get("metadata") or {}
        self.unassigned = not spec.get("nodeName")
        self.phase = _PHASE_ORDINAL.get(status.get("phase") or "Pending", 0)
        self.ready_since = _ready_since(pod)
        self.ready = self.ready_since is not None or is_pod_ready(pod)
        self.cost = _deletion_cost(pod)
        self.crowd = crowd
        self.restarts = _restarts(pod)
        self.created = parse_time(meta.get("creationTimestamp"))
        self.uid = meta.get("uid") or ""


def _less(a: _Rank, b: _Rank, now: float) -> bool:
    """True when pod a should be deleted before pod b (upstream's ActivePodsWithRanks.Less)."""
    if a.unassigned != b.unassigned:
        return a.unassigned
    if a.phase != b.phase:
        return a.phase < b.phase
    if a.ready != b.ready:
        return not a.ready
    if a.cost != b.cost:
        return a.cost < b.cost
    if a.crowd != b.crowd:
        # More siblings on the same node: spread what remains.
        return a.crowd > b.crowd
    if a.ready and b.ready and a.ready_since != b.ready_since:
        less = _newer_first(a, b, a.ready_since, b.ready_since, now)
        if less is not None:
            return less
    if a.restarts != b.restarts:
        return a.restarts > b.restarts
    if a.created != b.created:
        less = _newer_first(a, b, a.created, b.created, now)
        if less is not None:
            return less
    return False


def _newer_first(a: _Rank, b: _Rank, ta: float | None, tb: float | None, now: float) -> bool | None:
    if ta is None or tb is None:
        return ta is None
    diff = _log_rank(ta, now) - _log_rank(tb, now)
    if diff == 0:
        return a.uid < b.uid if a.uid != b.uid else None
    return diff < 0


def pods_to_delete(pods: list[Obj], related: list[Obj], n: int, now: float | None = None) -> list[Obj]:
    """The n least valuable of `pods`; `related` (pods of sibling ReplicaSets) ranks node crowding."""
    if n >= len(pods):
        return list(pods)
    now = time.time() if now is None else now
    on_node: dict[str, int] = {}
    for p in related:
        if is_pod_active(p):
            node = (p.get("spec") or {}).get("nodeName") or ""
            on_node[node] = on_node.get(node, 0) + 1
    ranked = [(_Rank(p, on_node.get((p.get("spec") or {}).get("nodeName") or "", 0)), p) for p in pods]

    # A comparison sort: the rule is pairwise (it buckets ages relative to now
    # and breaks bucket ties by uid), not a key function.
    def cmp(x: tuple[_Rank, Obj], y: tuple[_Rank, Obj]) -> int:
        if _less(x[0], y[0], now):
            return -1
        if _less(y[0], x[0], now):
            return 1
        return 0
    ranked.sort(key=functools.cmp_to_key(cmp))
    return [p for _, p in ranked[:n]]


# ---------------------------------------------------------------------- claiming


class RefManager:
    """Adopts and releases dependents for one controller object (upstream's ControllerRefManager).

    The live owner is re-read once, lazily, before the first adoption, so a
    controller being deleted never adopts from a stale cache.
    """

    def __init__(self, client: Client, owner: Obj, owner_api: tuple[str, str], dependent_api: tuple[str, str],
                 selector: LabelSelector):
        self.client = client
        self.owner = owner
        self.owner_api = owner_api
        self.dependents = client.resource(*dependent_api)
        self.selector = selector
        self._can_adopt: bool | None = None

    async def can_adopt(self) -> bool:
        if self._can_adopt is None:
            m = self.owner["metadata"]
            try:
                fresh = await self.client.resource(*self.owner_api).get(m["name"], m.get("namespace"))
            except StatusError as e:
                if e.code != 404:
                    raise
                fresh = None
            fm = (fresh or {}).get("metadata") or {}
            self._can_adopt = bool(fresh) and fm.get("uid") == m.get("uid") and not fm.get("deletionTimestamp")
        return self._can_adopt

    async def claim(self, objs: list[Obj]) -> list[Obj]:
        """The objects this owner controls after adopting matching orphans and releasing non-matching ones."""
        m = self.owner["metadata"]
        uid = m["uid"]
        deleting = bool(m.get("deletionTimestamp"))
        claimed: list[Obj] = []
        errors: list[Exception] = []
        for obj in objs:
            om = obj.get("metadata") or {}
            ref = controller_ref(obj)
            matches = self.selector.matches(om.get("labels") or {})
            try:
                if ref is not None:
                    if ref.get("uid") != uid:
                        continue
                    if matches:
                        claimed.append(obj)
                    elif not deleting:
                        await self._release(obj)
                    continue
                if deleting or not matches or om.get("deletionTimestamp") or om.get("namespace") != m.get("namespace"):
                    continue
                if not await self.can_adopt():
                    continue
                adopted = await self._adopt(obj)
                if adopted is not None:
                    claimed.append(adopted)
            except StatusError as e:
                if e.code != 404:
                    errors.append(e)
        if errors:
            raise errors[0]
        return claimed

    async def _adopt(self, obj: Obj) -> Obj | None:
        om = obj["metadata"]
        patch = {"metadata": {"ownerReferences": [owner_reference(self.owner)], "uid": om.get("uid")}}
        try:
            return await self.dependents.patch(om["name"], patch, namespace=om.get("namespace"),
                                               patch_type="strategic")
        except StatusError as e:
            if e.code == 404:
                return None
            raise

    async def _release(self, obj: Obj) -> None:
        om = obj["metadata"]
        patch = {"metadata": {"ownerReferences": [{"$patch": "delete", "uid": self.owner["metadata"]["uid"]}],
                              "uid": om.get("uid")}}
        try:
            await self.dependents.patch(om["name"], patch, namespace=om.get("namespace"), patch_type="strategic")
        except StatusError as e:
            # Already gone, or another writer already changed its references.
            if e.code not in (404, 422):
                raise


# ---------------------------------------------------------------------- the controller


def _condition(status: Obj, typ: str) -> Obj | None:
    for c in status.get("conditions") or []:
        if c.get("type") == typ:
            return c
    return None


class ReplicaSetController(Controller):
    name = "replicaset"
    workers = 4
    # The kind of owner this controller keeps; ReplicationManager below keeps ReplicationControllers.
    owner_api = ("apps/v1", "replicasets")
    owner_kind = "ReplicaSet"

    @staticmethod
    def selector_of(owner: Obj) -> LabelSelector:
        """The owner's compiled selector (InvalidSelector if it is invalid)."""
        return from_label_selector_object((owner.get("spec") or {}).get("selector"))

    def __init__(self, client: Client, *, burst_replicas: int = BURST_REPLICAS):
        super().__init__(client)
        self.burst_replicas = burst_replicas
        self.expectations = Expectations()
        self.rs_client = client.resource(*self.owner_api)
        self.pod_client = client.resource("v1", "pods")
        self.replicasets = self.informer(*self.owner_api)
        self.pods = self.informer("v1", "pods")
        self.pods.add_index(CONTROLLER_INDEX, controller_uid_index)
        self.pods.add_index(ORPHAN_INDEX, orphan_namespace_index)
        self.replicasets.add_index(CONTROLLER_INDEX, controller_uid_index)
        self.replicasets.add_handler(on_add=self._rs_changed, on_update=self._rs_updated,
                                     on_delete=self._rs_changed)
        self.pods.add_handler(on_add=self._pod_added, on_update=self._pod_updated, on_delete=self._pod_deleted)
        self._known: dict[str, tuple[str, bool, bool, float | None]] = {}

    # ------------------------------------------------------------ event handlers

    def _rs_changed(self, rs: Obj) -> None:
        self.enqueue(key_of(rs))

    def _rs_updated(self, old: Obj, new: Obj) -> None:
        om, nm = old["metadata"], new["metadata"]
        if om.get("resourceVersion") != nm.get("resourceVersion") and old.get("spec") == new.get("spec") and \
                all(om.get(k) == nm.get(k) for k in ("labels", "ownerReferences", "deletionTimestamp", "finalizers")):
            # Only its status moved (mostly our own writes): no hurry, and no
            # sync-write-sync loop while thousands of pods change.
            self.queue.add_after(key_of(new), POD_STATUS_BATCH)
        else:
            self.enqueue(key_of(new))

    def _owner_key(self, pod: Obj, ref: Obj | None) -> str | None:
        """The key of the ReplicaSet `ref` names, if it is the one in the cache (same uid)."""
        if ref is None or ref.get("kind") != self.owner_kind or \
                (ref.get("apiVersion") or "").rpartition("/")[0] != self.owner_api[0].rpartition("/")[0]:
            return None
        ns = (pod.get("metadata") or {}).get("namespace")
        rs = self.replicasets.get_by_name(ref.get("name", ""), ns)
        if rs is None or rs["metadata"].get("uid") != ref.get("uid"):
            return None
        return key_of(rs)

    def _enqueue_matching(self, pod: Obj) -> None:
        """An orphan concerns every ReplicaSet whose selector matches it: one of them may adopt it."""
        for rs in selecting(self.replicasets, pod, self.selector_of):
            self.enqueue(key_of(rs))

    def _pod_added(self, pod: Obj) -> None:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            # Seen already terminating (e.g. after a relist): that is its deletion.
            self._pod_deleted(pod)
            return
        ref = controller_ref(pod)
        if ref is not None:
            key = self._owner_key(pod, ref)
            if key:
                self.expectations.creation_observed(key)
                self._enqueue_observed(key)
            return
        self._enqueue_matching(pod)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        om, nm = old.get("metadata") or {}, new.get("metadata") or {}
        if nm.get("deletionTimestamp") and not om.get("deletionTimestamp"):
            # Graceful deletion: the pod leaves the active set now, not when it is gone.
            self._pod_deleted(new)
            return
        old_ref, new_ref = controller_ref(old), controller_ref(new)
        if old_ref is not None and (new_ref is None or old_ref.get("uid") != new_ref.get("uid")):
            key = self._owner_key(old, old_ref)
            if key:
                self.enqueue(key)
        if new_ref is not None:
            key = self._owner_key(new, new_ref)
            if key:
                if old_ref is not None and om.get("labels") == nm.get("labels"):
                    # Same owner, same labels: only its status moved.
                    self.queue.add_after(key, POD_STATUS_BATCH)
                else:
                    self.enqueue(key)
            return
        if om.get("labels") != nm.get("labels") or old_ref is not None or om.get("resourceVersion") == nm.get(
                "resourceVersion"):
            self._enqueue_matching(new)

    def _pod_deleted(self, pod: Obj) -> None:
        ref = controller_ref(pod)
        key = self._owner_key(pod, ref)
        if key:
            self.expectations.deletion_observed(key, key_of(pod))
            self._enqueue_observed(key)
        self._known.pop((pod.get("metadata") or {}).get("uid"), None)

    def _enqueue_observed(self, key: str) -> None:
        """After a creation or deletion was observed: sync now once the last expected one is in."""
        if self.expectations.satisfied(key):
            self.enqueue(key)
        else:
            self.queue.add_after(key, POD_STATUS_BATCH)

    def _facts(self, pod: Obj) -> tuple[bool, bool, float | None]:
        """(active, Ready, Ready since) of a pod, derived once per resourceVersion."""
        m = pod["metadata"]
        uid, rv = m.get("uid"), m.get("resourceVersion")
        hit = self._known.get(uid)
        if hit is not None and hit[0] == rv:
            return hit[1], hit[2], hit[3]
        since = _ready_since(pod)
        facts = (is_pod_active(pod), since is not None or is_pod_ready(pod), since)
        self._known[uid] = (rv, *facts)
        return facts

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        rs = self.replicasets.get(key)
        if rs is None:
            self.expectations.forget(key)
            return
        spec = rs.get("spec") or {}
        try:
            selector = self.selector_of(rs)
        except InvalidSelector as e:
            log.warning("%s %s has an invalid selector: %s", self.owner_kind, key, e)
            return
        needs_sync = self.expectations.satisfied(key) and not rs["metadata"].get("deletionTimestamp")
        ns = rs["metadata"].get("namespace") or ""
        # Its own pods and the orphans it could adopt: pods other controllers own are
        # never ours to claim, so a big namespace is not scanned on every sync.
        deleting = bool(rs["metadata"].get("deletionTimestamp"))
        owned: list[Obj] = []
        to_claim: list[Obj] = []
        for p in self.pods.by_index(CONTROLLER_INDEX, rs["metadata"]["uid"]):
            if not self._facts(p)[0]:
                continue
            if selector.matches(p["metadata"].get("labels")):
                owned.append(p)
            elif not deleting:
                to_claim.append(p)  # ours but no longer matching: the claim releases it
        to_claim.extend(p for p in self.pods.by_index(ORPHAN_INDEX, ns) if is_pod_active(p))
        if to_claim:
            owned += await RefManager(self.client, rs, self.owner_api, ("v1", "pods"),
                                      selector).claim(to_claim)
        manage_err: Exception | None = None
        diff = 0
        if needs_sync:
            diff = len(owned) - int(spec.get("replicas", 1) or 0)
            manage_err = await self._manage_replicas(key, rs, owned, diff)
        now = time.time()
        status = self._calculate_status(rs, owned, manage_err, diff, now)
        await self._update_status(rs, status)
        if manage_err is not None:
            raise manage_err
        after = self._next_availability(rs, owned, now)
        if after is not None:
            raise Requeue(after=after)

    async def _manage_replicas(self, key: str, rs: Obj, owned: list[Obj], diff: int) -> Exception | None:
        if diff < 0:
            n = min(-diff, self.burst_replicas)
            # Acting on a fresh, satisfied view: whatever was left of old
            # (timed-out) expectations no longer counts.
            self.expectations.forget(key)
            self.expectations.expect_creations(key, n)
            template = (rs.get("spec") or {}).get("template") or {}
            ns = rs["metadata"].get("namespace")

            async def create() -> None:
                pod = pod_from_template(template, rs, generate_name=rs["metadata"]["name"] + "-")
                await self.pod_client.create(pod, ns)

            successes, err = await slow_start_batch(n, SLOW_START_INITIAL_BATCH, create)
            # Pods never created will never be observed: stop waiting for them.
            for _ in range(n - successes):
                self.expectations.creation_failed(key)
            return err
        if diff > 0:
            n = min(diff, self.burst_replicas)
            victims = pods_to_delete(owned, self._related_pods(rs), n)
            pod_keys = [key_of(p) for p in victims]
            self.expectations.forget(key)
            self.expectations.expect_deletions(key, pod_keys)

            async def delete(pod: Obj) -> Exception | None:
                m = pod["metadata"]
                try:
                    await self.pod_client.delete(m["name"], m.get("namespace"),
                                                 preconditions={"uid": m.get("uid")})
                except StatusError as e:
                    self.expectations.deletion_observed(key, key_of(pod))
                    if e.code not in (404, 409):
                        return e
                return None

            results = await asyncio.gather(*(delete(p) for p in victims))
            errs = [e for e in results if e is not None]
            return errs[0] if errs else None
        return None

    def _related_pods(self, rs: Obj) -> list[Obj]:
        """Pods of every ReplicaSet with the same controller (a Deployment's other revisions)."""
        owner = controller_ref(rs)
        siblings = self.replicasets.by_index(CONTROLLER_INDEX, owner["uid"]) if owner and owner.get("uid") else [rs]
        pods: list[Obj] = []
        for s in siblings:
            pods.extend(self.pods.by_index(CONTROLLER_INDEX, s["metadata"].get("uid", "")))
        return pods

    def _calculate_status(self, rs: Obj, owned: list[Obj], err: Exception | None, diff: int, now: float) -> Obj:
        spec = rs.get("spec") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        old = rs.get("status") or {}
        labeled = ready = available = 0
        items = tuple(template_labels.items())
        for p in owned:
            labels = p["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in items):
                labeled += 1
            _active, is_ready, since = self._facts(p)
            if is_ready:
                ready += 1
                if min_ready <= 0 or (since is not None and now - since >= min_ready):
                    available += 1
        status: Obj = {
            "replicas": len(owned),
            "fullyLabeledReplicas": labeled,
            "readyReplicas": ready,
            "availableReplicas": available,
            "observedGeneration": rs["metadata"].get("generation", 0),
        }
        conditions = [dict(c) for c in old.get("conditions") or []]
        failure = _condition({"conditions": conditions}, "ReplicaFailure")
        if err is not None and failure is None:
            reason = "FailedCreate" if diff < 0 else "FailedDelete"
            message = getattr(err, "message", None) or str(err)
            conditions.append({"type": "ReplicaFailure", "status": "True", "lastTransitionTime": now_rfc3339(),
                               "reason": reason, "message": message})
        elif err is None and failure is not None:
            conditions = [c for c in conditions if c.get("type") != "ReplicaFailure"]
        if conditions:
            status["conditions"] = conditions
        return status

    async def _update_status(self, rs: Obj, status: Obj) -> None:
        old = rs.get("status") or {}
        if all(old.get(k, 0) == status[k] for k in ("replicas", "fullyLabeledReplicas", "readyReplicas",
                                                    "availableReplicas", "observedGeneration")) and \
                (old.get("conditions") or []) == (status.get("conditions") or []):
            return
        obj = dict(rs)
        obj["status"] = status
        try:
            await self.rs_client.update_status(obj)
        except StatusError as e:
            if e.code != 409:
                raise
            # Someone (the deployment controller) wrote meanwhile: the status
            # we computed is still what we saw, so write it onto the fresh object.
            fresh = await self.rs_client.get(rs["metadata"]["name"], rs["metadata"].get("namespace"))
            if fresh["metadata"].get("uid") != rs["metadata"].get("uid"):
                return
            fresh["status"] = status
            await self.rs_client.update_status(fresh)

    @staticmethod
    def _next_availability(rs: Obj, owned: list[Obj], now: float) -> float | None:
        """Seconds until the next ready pod passes minReadySeconds, if any is waiting."""
        min_ready = int((rs.get("spec") or {}).get("minReadySeconds") or 0)
        if min_ready <= 0:
            return None
        waits = []
        for p in owned:
            if is_pod_ready(p) and not is_pod_available(p, min_ready, now):
                since = _ready_since(p)
                if since is not None:
                    waits.append(since + min_ready - now)
        if not waits:
            return None
        # A hair past the boundary, so the availability check is already true.
        return max(min(waits), 0.0) + 0.05


class ReplicationManager(ReplicaSetController):
    """ReplicationControllers: the ReplicaSet controller over the older kind, as upstream runs it.

    A ReplicationController differs only in its selector, a map of labels that
    must all match (the API defaults it to the template's labels); an empty one
    selects nothing here.
    """

    name = "replicationcontroller"
    owner_api = ("v1", "replicationcontrollers")
    owner_kind = "ReplicationController"

    @staticmethod
    def selector_of(owner: Obj) -> LabelSelector:
        sel = (owner.get("spec") or {}).get("selector")
        if not isinstance(sel, dict) or not sel:
            return from_label_selector_object(None)
        return from_label_selector_object({"matchLabels": sel})
