"""The DaemonSet controller: one pod per eligible node, rolled out through ControllerRevisions.

For each DaemonSet it decides, node by node, whether a daemon pod should run
there (nodeSelector, required node affinity, taints against the pod's
tolerations, including those every daemon pod gets) and whether an existing one
may keep running (an untolerated NoSchedule taint stops new pods but keeps
running ones; NoExecute evicts). It creates the missing pods, deletes the
excess and misscheduled ones, and follows nodes as they join, leave or change.

Pods are not bound here: each carries a required node affinity on
``metadata.name`` for its node, so the default scheduler places it there
(upstream's way since 1.12) while still checking resources and ports.

Updates follow ``spec.updateStrategy``: RollingUpdate replaces old pods under
``maxUnavailable`` (delete old, then create new) or ``maxSurge`` (create new
next to old, delete old once the new one is available); OnDelete only uses the
new template for pods the user deleted. The template history lives in
ControllerRevisions (see history.py); pods carry the current revision's hash in
the ``controller-revision-hash`` label, which is what "updated" means.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from ..api.errors import StatusError
from ..api.selectors import InvalidSelector, LabelSelector, from_label_selector_object
from ..client import Client
from .base import Controller, Requeue, key_of
from .common import (
    Expectations,
    controller_ref,
    is_pod_available,
    is_pod_ready,
    owner_reference,
    pod_from_template,
    selecting,
)
from ..api.pods import toleration_matches as toleration_tolerates
from .history import (
    CONTROLLER_REVISION_HASH_LABEL,
    create_revision,
    equal_revision,
    owned_revisions,
    revision_hash,
    revisions_to_prune,
    sort_revisions,
    template_patch,
)

log = logging.getLogger("kybernetes.controllers.daemonset")

Obj = dict[str, Any]

# Deprecated upstream but still set on daemon pods, for tools that read it.
TEMPLATE_GENERATION_LABEL = "pod-template-generation"

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
DISK_PRESSURE_TAINT = "node.kubernetes.io/disk-pressure"
MEMORY_PRESSURE_TAINT = "node.kubernetes.io/memory-pressure"
PID_PRESSURE_TAINT = "node.kubernetes.io/pid-pressure"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
NETWORK_UNAVAILABLE_TAINT = "node.kubernetes.io/network-unavailable"

# A daemon pod is part of its node: it must survive the node going not-ready or
# unreachable (no tolerationSeconds, so never evicted for it) and the pressure
# and cordon taints that keep ordinary pods away.
DAEMON_TOLERATIONS: list[Obj] = [
    {"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute"},
    {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"},
    {"key": DISK_PRESSURE_TAINT, "operator": "Exists", "effect": "NoSchedule"},
    {"key": MEMORY_PRESSURE_TAINT, "operator": "Exists", "effect": "NoSchedule"},
    {"key": PID_PRESSURE_TAINT, "operator": "Exists", "effect": "NoSchedule"},
    {"key": UNSCHEDULABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"},
]
# Host-network pods do not need the pod network, so they may start before it is up.
HOST_NETWORK_TOLERATIONS: list[Obj] = [
    {"key": NETWORK_UNAVAILABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"},
]

# Slow start: creations go out in batches of 1, 2, 4 … so a template the server
# rejects costs one failed request, not one per node.
SLOW_START_INITIAL_BATCH = 1


# ---------------------------------------------------------------- node eligibility


def _same_toleration(a: Obj, b: Obj) -> bool:
    return (a.get("key") == b.get("key") and (a.get("effect") or "") == (b.get("effect") or "")
            and (a.get("operator") or "Equal") == (b.get("operator") or "Equal")
            and (a.get("value") or "") == (b.get("value") or ""))


def add_daemon_tolerations(pod_spec: Obj) -> None:
    """Add (or replace same-shaped) daemon tolerations in a pod spec, in place."""
    wanted = list(DAEMON_TOLERATIONS)
    if pod_spec.get("hostNetwork"):
        wanted += HOST_NETWORK_TOLERATIONS
    tolerations = [t for t in pod_spec.get("tolerations") or [] if isinstance(t, dict)]
    for w in wanted:
        # A user's matching toleration with tolerationSeconds would let the pod be
        # evicted from its own node: ours replaces it, as upstream does.
        tolerations = [t for t in tolerations if not _same_toleration(t, w)]
        tolerations.append(dict(w))
    pod_spec["tolerations"] = tolerations


def _match_expression(expr: Obj, value: str | None) -> bool:
    op = expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def _term_matches(term: Obj, node: Obj) -> bool:
    exprs = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not exprs and not fields:
        # An empty term selects no node.
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    for e in exprs:
        if not _match_expression(e, labels.get(e.get("key"))):
            return False
    for f in fields:
        value = node["metadata"].get("name") if f.get("key") == "metadata.name" else None
        if f.get("key") != "metadata.name" or not _match_expression(f, value):
            return False
    return True


def node_matches_pod(pod_spec: Obj, node: Obj) -> bool:
    """nodeName, nodeSelector and required node affinity (what a taint cannot change)."""
    name = node["metadata"]["name"]
    if pod_spec.get("nodeName") and pod_spec["nodeName"] != name:
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    for k, v in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    required = (((pod_spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required is not None:
        terms = required.get("nodeSelectorTerms") or []
        if not any(_term_matches(t, node) for t in terms):
            return False
    return True


def daemon_pod_spec(ds: Obj) -> Obj:
    """The spec eligibility is judged against: the template's, with the daemon tolerations."""
    spec = dict(((ds.get("spec") or {}).get("template") or {}).get("spec") or {})
    add_daemon_tolerations(spec)
    return spec


def node_should_run(pod_spec: Obj, node: Obj) -> tuple[bool, bool]:
    """(should a new daemon pod run here, may an existing one keep running)."""
    if not node_matches_pod(pod_spec, node):
        return False, False
    tolerations = pod_spec.get("tolerations") or []
    should_run = True
    for taint in (node.get("spec") or {}).get("taints") or []:
        effect = taint.get("effect")
        if effect not in ("NoSchedule", "NoExecute"):
            continue
        if any(toleration_tolerates(t, taint) for t in tolerations):
            continue
        if effect == "NoExecute":
            return False, False
        # NoSchedule keeps new pods away but does not evict the one already there.
        should_run = False
    return should_run, True


def with_node_affinity(pod_spec: Obj, node_name: str) -> None:
    """Pin a pod spec to one node through required node affinity, in place.

    Eligibility was already decided against the template's own terms, so the
    required selector is replaced by the single node-name term; preferred
    terms are kept.
    """
    affinity = dict(pod_spec.get("affinity") or {})
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]}]}
    affinity["nodeAffinity"] = node_affinity
    pod_spec["affinity"] = affinity


def target_node(pod: Obj) -> str | None:
    """The node a daemon pod is for: where it is bound, else what its affinity names."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for f in term.get("matchFields") or []:
            if f.get("key") == "metadata.name" and f.get("operator") == "In" and len(f.get("values") or []) == 1:
                return f["values"][0]
    return None


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """An int-or-percent (`1`, `"25%"`) as a count of `total`."""
    if value is None:
        return 0
    if isinstance(value, str):
        if value.endswith("%"):
            try:
                pct = int(value[:-1])
            except ValueError:
                return 0
            exact = pct * total / 100
            return math.ceil(exact) if round_up else math.floor(exact)
        try:
            return int(value)
        except ValueError:
            return 0
    return int(value)


def _creation_order(pod: Obj) -> tuple[str, str]:
    m = pod.get("metadata") or {}
    return m.get("creationTimestamp") or "", m.get("name") or ""


def _deleting(pod: Obj) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _phase(pod: Obj) -> str | None:
    return (pod.get("status") or {}).get("phase")


def _ds_key_for_pod(pod: Obj) -> str | None:
    ref = controller_ref(pod)
    if ref is None or ref.get("kind") != "DaemonSet":
        return None
    return f"{pod['metadata'].get('namespace')}/{ref.get('name')}"


# ---------------------------------------------------------------- the controller


class DaemonSetController(Controller):
    name = "daemonset-controller"

    def __init__(self, client: Client):
        super().__init__(client)
        self.expectations = Expectations()
        self.daemonsets = self.informer("apps/v1", "daemonsets", resync_period=300)
        self.pods = self.informer("v1", "pods")
        self.nodes = self.informer("v1", "nodes", namespaced=False)
        self.revisions = self.informer("apps/v1", "controllerrevisions")
        self.daemonsets.add_handler(on_add=self._enqueue_ds, on_update=lambda _o, n: self._enqueue_ds(n),
                                    on_delete=self._enqueue_ds)
        self.pods.add_handler(on_add=self._pod_added, on_update=self._pod_updated, on_delete=self._pod_deleted)
        self.nodes.add_handler(on_add=lambda _n: self._enqueue_all(), on_update=self._node_updated,
                               on_delete=lambda _n: self._enqueue_all())
        self.revisions.add_handler(on_add=self._revision_event,
                                   on_update=lambda _o, n: self._revision_event(n),
                                   on_delete=self._revision_event)
        self.pods_rc = client.resource("v1", "pods")
        self.ds_rc = client.resource("apps/v1", "daemonsets")
        self.revisions_rc = client.resource("apps/v1", "controllerrevisions")

    # ------------------------------------------------------------ event handlers

    def _enqueue_ds(self, ds: Obj) -> None:
        self.enqueue(key_of(ds))

    def _enqueue_all(self) -> None:
        for key in self.daemonsets.keys():
            self.enqueue(key)

    def _enqueue_matching(self, pod: Obj) -> None:
        """An orphan pod: the DaemonSets in its namespace that might adopt it."""
        for ds in selecting(self.daemonsets, pod):
            self._enqueue_ds(ds)

    def _pod_added(self, pod: Obj) -> None:
        key = _ds_key_for_pod(pod)
        if key is None:
            if controller_ref(pod) is None and not _deleting(pod):
                self._enqueue_matching(pod)
            return
        self.expectations.creation_observed(key)
        self.enqueue(key)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        old_key, new_key = _ds_key_for_pod(old), _ds_key_for_pod(new)
        if old_key and old_key != new_key:
            self.enqueue(old_key)
        if new_key:
            self.enqueue(new_key)
        elif controller_ref(new) is None and not _deleting(new):
            self._enqueue_matching(new)

    def _pod_deleted(self, pod: Obj) -> None:
        key = _ds_key_for_pod(pod)
        if key is None:
            return
        self.expectations.deletion_observed(key, key_of(pod))
        self.enqueue(key)

    def _node_updated(self, old: Obj, new: Obj) -> None:
        # Only what eligibility reads matters; heartbeats alone change nothing.
        def view(n: Obj) -> tuple[Any, ...]:
            spec = n.get("spec") or {}
            return ((n.get("metadata") or {}).get("labels"), spec.get("taints"), spec.get("unschedulable"))
        if view(old) != view(new):
            self._enqueue_all()

    def _revision_event(self, rev: Obj) -> None:
        ref = controller_ref(rev)
        if ref and ref.get("kind") == "DaemonSet":
            self.enqueue(f"{rev['metadata'].get('namespace')}/{ref.get('name')}")

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        ds = self.daemonsets.get(key)
        if ds is None:
            self.expectations.forget(key)
            return
        if ds["metadata"].get("deletionTimestamp"):
            # The garbage collector removes the pods and revisions it owns.
            return
        try:
            selector = from_label_selector_object((ds.get("spec") or {}).get("selector"))
        except InvalidSelector:
            return
        if selector.empty:
            # An empty selector would claim every pod in the namespace.
            return
        current, old = await self._construct_history(ds)
        hash_ = revision_hash(current)
        node_pods = await self._claim_pods(ds, selector)
        nodes = self.nodes.list()
        pod_spec = daemon_pod_spec(ds)
        eligibility = {n["metadata"]["name"]: node_should_run(pod_spec, n) for n in nodes}

        if self.expectations.satisfied(key):
            acted = await self._manage(ds, key, eligibility, node_pods, hash_)
            strategy = ((ds.get("spec") or {}).get("updateStrategy") or {})
            if not acted and strategy.get("type", "RollingUpdate") == "RollingUpdate":
                await self._rolling_update(ds, key, eligibility, node_pods, hash_)
            await self._cleanup_history(ds, old, node_pods, hash_)
        await self._update_status(ds, eligibility, node_pods, hash_)

    # ------------------------------------------------------------ history

    async def _construct_history(self, ds: Obj) -> tuple[Obj, list[Obj]]:
        """(the revision of the current template, every other owned revision)."""
        revisions = owned_revisions(self.revisions.list_by_namespace(ds["metadata"]["namespace"]), ds)
        data = template_patch(ds)
        probe = {"data": data}
        matching = sort_revisions(r for r in revisions if equal_revision(r, probe))
        old = [r for r in revisions if not equal_revision(r, probe)]
        max_old = max((int(r.get("revision") or 0) for r in old), default=0)
        if not matching:
            collisions = int((ds.get("status") or {}).get("collisionCount") or 0)
            current, seen = await create_revision(self.revisions_rc, ds, data, max_old + 1, collisions)
            if seen != collisions:
                await self._patch_status(ds, {"collisionCount": seen})
            return current, old
        current = matching[-1]
        for dup in matching[:-1]:
            # Two revisions of one template (a race between controllers): keep the newest.
            await self._delete_revision(dup)
        if int(current.get("revision") or 0) <= max_old:
            # A rollback to an old template makes its revision the newest again.
            current = await self.revisions_rc.patch(current["metadata"]["name"], {"revision": max_old + 1},
                                                    namespace=ds["metadata"]["namespace"])
        return current, old

    async def _delete_revision(self, rev: Obj) -> None:
        try:
            await self.revisions_rc.delete(rev["metadata"]["name"], rev["metadata"]["namespace"])
        except StatusError as e:
            if e.code != 404:
                raise

    async def _cleanup_history(self, ds: Obj, old: list[Obj], node_pods: dict[str, list[Obj]],
                               hash_: str) -> None:
        limit = int((ds.get("spec") or {}).get("revisionHistoryLimit", 10))
        live = {hash_}
        for pods in node_pods.values():
            for p in pods:
                live.add(((p.get("metadata") or {}).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL, ""))
        for rev in revisions_to_prune(old, live, limit):
            await self._delete_revision(rev)

    # ------------------------------------------------------------ pods

    async def _claim_pods(self, ds: Obj, selector: LabelSelector) -> dict[str, list[Obj]]:
        """The DaemonSet's pods by target node, adopting matching orphans and releasing strays."""
        uid = ds["metadata"]["uid"]
        out: dict[str, list[Obj]] = {}
        for pod in self.pods.list_by_namespace(ds["metadata"]["namespace"]):
            ref = controller_ref(pod)
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if ref is not None and ref.get("uid") != uid:
                continue
            if ref is None:
                if _deleting(pod) or not selector.matches(labels) or _phase(pod) in ("Succeeded", "Failed"):
                    continue
                pod = await self._set_owner(pod, [*(pod["metadata"].get("ownerReferences") or []),
                                                  owner_reference(ds)])
                if pod is None:
                    continue
            elif not selector.matches(labels):
                if not _deleting(pod):
                    refs = [r for r in pod["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                    await self._set_owner(pod, refs)
                continue
            node = target_node(pod)
            if node:
                out.setdefault(node, []).append(pod)
        for pods in out.values():
            pods.sort(key=_creation_order)
        return out

    async def _set_owner(self, pod: Obj, refs: list[Obj]) -> Obj | None:
        m = pod["metadata"]
        patch = [{"op": "test", "path": "/metadata/uid", "value": m["uid"]},
                 {"op": "replace" if "ownerReferences" in m else "add", "path": "/metadata/ownerReferences",
                  "value": refs}]
        try:
            return await self.pods_rc.patch(m["name"], patch, namespace=m["namespace"], patch_type="json")
        except StatusError as e:
            if e.code in (404, 409, 422):
                return None
            raise

    def _new_pod(self, ds: Obj, node_name: str, hash_: str) -> Obj:
        template = (ds.get("spec") or {}).get("template") or {}
        pod = pod_from_template(template, ds, generate_name=ds["metadata"]["name"] + "-")
        labels = pod["metadata"]["labels"]
        labels[CONTROLLER_REVISION_HASH_LABEL] = hash_
        labels[TEMPLATE_GENERATION_LABEL] = str(ds["metadata"].get("generation") or 1)
        add_daemon_tolerations(pod["spec"])
        with_node_affinity(pod["spec"], node_name)
        return pod

    async def _manage(self, ds: Obj, key: str, eligibility: dict[str, tuple[bool, bool]],
                      node_pods: dict[str, list[Obj]], hash_: str) -> bool:
        """Create missing daemon pods and delete excess ones; True if anything was asked for."""
        surge = self._surging(ds)
        min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
        now = time.time()
        to_create: list[str] = []
        to_delete: list[Obj] = []
        for node_name, (should_run, should_continue) in eligibility.items():
            pods = node_pods.get(node_name, [])
            if should_run and not pods:
                to_create.append(node_name)
                continue
            if not should_continue:
                to_delete.extend(p for p in pods if not _deleting(p))
                continue
            running = []
            for p in pods:
                if _deleting(p):
                    continue
                if _phase(p) in ("Failed", "Succeeded"):
                    # A daemon pod that ended is replaced once it is gone.
                    to_delete.append(p)
                    continue
                running.append(p)
            if len(running) <= 1:
                continue
            if not surge:
                to_delete.extend(running[1:])
                continue
            # Surging allows one old and one new pod side by side, no more.
            oldest_new = oldest_old = None
            for p in running:
                is_new = (p["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL) == hash_
                if is_new and oldest_new is None:
                    oldest_new = p
                elif not is_new and oldest_old is None:
                    oldest_old = p
                else:
                    to_delete.append(p)
            if oldest_new is not None and oldest_old is not None and (
                    not is_pod_ready(oldest_old) or is_pod_available(oldest_new, min_ready, now)):
                to_delete.append(oldest_old)
        # Pods for nodes that no longer exist (the pod garbage collector's job upstream).
        for node_name, pods in node_pods.items():
            if node_name not in eligibility:
                to_delete.extend(p for p in pods if not _deleting(p))
        await self._sync_nodes(ds, key, to_create, to_delete, hash_)
        return bool(to_create or to_delete)

    async def _sync_nodes(self, ds: Obj, key: str, to_create: list[str], to_delete: list[Obj],
                          hash_: str) -> None:
        ns = ds["metadata"]["namespace"]
        self.expectations.expect_creations(key, len(to_create))
        self.expectations.expect_deletions(key, [key_of(p) for p in to_delete])
        errors: list[BaseException] = []
        batch = SLOW_START_INITIAL_BATCH
        pending = list(to_create)
        while pending and not errors:
            chunk, pending = pending[:batch], pending[batch:]
            results = await asyncio.gather(*(self.pods_rc.create(self._new_pod(ds, n, hash_), ns) for n in chunk),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    self.expectations.creation_failed(key)
                    errors.append(r)
            batch *= 2
        for _ in pending:
            # Never attempted after a failure: nothing will be observed for them.
            self.expectations.creation_failed(key)

        async def delete(p: Obj) -> None:
            m = p["metadata"]
            # A pod on a node that is gone has no kubelet to finish a graceful deletion.
            grace = 0 if target_node(p) not in self.nodes else None
            try:
                await self.pods_rc.delete(m["name"], ns, preconditions={"uid": m["uid"]},
                                          grace_period_seconds=grace)
            except StatusError as e:
                self.expectations.deletion_observed(key, key_of(p))
                if e.code not in (404, 409):
                    raise
        results = await asyncio.gather(*(delete(p) for p in to_delete), return_exceptions=True)
        errors.extend(r for r in results if isinstance(r, BaseException))
        if errors:
            raise errors[0]

    def _surging(self, ds: Obj) -> bool:
        strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return False
        return scaled_value((strategy.get("rollingUpdate") or {}).get("maxSurge"), 1, True) > 0

    def _limits(self, ds: Obj, desired: int) -> tuple[int, int]:
        """(maxSurge, maxUnavailable) as pod counts for `desired` nodes."""
        ru = (((ds.get("spec") or {}).get("updateStrategy") or {}).get("rollingUpdate") or {})
        surge = scaled_value(ru.get("maxSurge"), desired, True)
        unavailable = scaled_value(ru.get("maxUnavailable"), desired, True)
        if surge == 0 and unavailable == 0:
            # Validation forbids it; a rollout must still be able to move.
            unavailable = 1
        return surge, unavailable

    async def _rolling_update(self, ds: Obj, key: str, eligibility: dict[str, tuple[bool, bool]],
                              node_pods: dict[str, list[Obj]], hash_: str) -> None:
        desired = sum(1 for run, _ in eligibility.values() if run)
        max_surge, max_unavailable = self._limits(ds, desired)
        min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
        now = time.time()
        to_delete: list[Obj] = []
        to_create: list[str] = []
        unavailable = surging = 0
        candidates_delete: list[Obj] = []
        candidates_create: list[str] = []
        for node_name in sorted(eligibility):
            if not eligibility[node_name][0]:
                continue
            pods = [p for p in node_pods.get(node_name, []) if not _deleting(p)
                    and _phase(p) not in ("Failed", "Succeeded")]
            new = [p for p in pods if (p["metadata"].get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL) == hash_]
            old = [p for p in pods if p not in new]
            if len(new) > 1 or len(old) > 1:
                # Duplicates are _manage's to settle first.
                continue
            new_pod, old_pod = (new or [None])[0], (old or [None])[0]
            if max_surge == 0:
                if old_pod is None:
                    if new_pod is None or not is_pod_available(new_pod, min_ready, now):
                        unavailable += 1
                elif not is_pod_available(old_pod, min_ready, now):
                    # Already down: replacing it costs no availability.
                    to_delete.append(old_pod)
                elif unavailable < max_unavailable:
                    candidates_delete.append(old_pod)
                continue
            if old_pod is None:
                continue
            if new_pod is None:
                if not is_pod_available(old_pod, min_ready, now):
                    to_create.append(node_name)
                elif surging < max_surge:
                    candidates_create.append(node_name)
                continue
            surging += 1
            if is_pod_available(new_pod, min_ready, now):
                to_delete.append(old_pod)
        if max_surge == 0:
            to_delete.extend(candidates_delete[:max(0, max_unavailable - unavailable)])
        else:
            to_create.extend(candidates_create[:max(0, max_surge - surging)])
        # A pod turning available makes no event; _update_status asks to be called again then.
        if to_create or to_delete:
            await self._sync_nodes(ds, key, to_create, to_delete, hash_)

    # ------------------------------------------------------------ status

    async def _update_status(self, ds: Obj, eligibility: dict[str, tuple[bool, bool]],
                             node_pods: dict[str, list[Obj]], hash_: str) -> None:
        min_ready = int((ds.get("spec") or {}).get("minReadySeconds") or 0)
        now = time.time()
        generation = str(ds["metadata"].get("generation") or 1)
        desired = current = misscheduled = ready = available = updated = 0
        waiting_for_available = False
        for node_name, (should_run, _) in eligibility.items():
            pods = [p for p in node_pods.get(node_name, [])
                    if not (_deleting(p) and _phase(p) in ("Failed", "Succeeded"))]
            if should_run:
                desired += 1
            if not pods:
                continue
            if not should_run:
                misscheduled += 1
                continue
            current += 1
            pod = pods[0]
            if is_pod_ready(pod):
                ready += 1
                if is_pod_available(pod, min_ready, now):
                    available += 1
                else:
                    waiting_for_available = True
            labels = pod["metadata"].get("labels") or {}
            if labels.get(CONTROLLER_REVISION_HASH_LABEL) == hash_ or (
                    CONTROLLER_REVISION_HASH_LABEL not in labels
                    and labels.get(TEMPLATE_GENERATION_LABEL) == generation):
                updated += 1
        status = {"currentNumberScheduled": current, "numberMisscheduled": misscheduled,
                  "desiredNumberScheduled": desired, "numberReady": ready, "updatedNumberScheduled": updated,
                  "numberAvailable": available, "numberUnavailable": desired - available,
                  "observedGeneration": ds["metadata"].get("generation") or 1}
        have = ds.get("status") or {}
        if any(have.get(k, 0) != v for k, v in status.items()):
            await self._patch_status(ds, status)
        if waiting_for_available:
            raise Requeue(after=float(min_ready))

    async def _patch_status(self, ds: Obj, status: Obj) -> None:
        m = ds["metadata"]
        try:
            await self.ds_rc.patch(m["name"], {"status": status}, namespace=m["namespace"],
                                   patch_type="merge", subresource="status")
        except StatusError as e:
            if e.code != 404:
                raise
