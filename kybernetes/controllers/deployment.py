"""The Deployment controller: rolls a Deployment's pod template out through ReplicaSets.

Each template gets its own ReplicaSet, named "<deployment>-<pod-template-hash>",
whose selector and pod labels carry the hash so revisions never share pods.
One reconcile of a Deployment key, as upstream's syncDeployment:

* claims ReplicaSets (adopts matching orphans, releases ones that stopped
  matching) and finds the new one (template equal ignoring the hash label);
  the others are old;
* keeps revisions: the new ReplicaSet gets max(old revisions)+1 in
  deployment.kubernetes.io/revision, copied to the Deployment, so a rollback
  (`kubectl rollout undo` patches the old template back in) finds the old
  ReplicaSet by its hash and bumps its revision, remembering the previous one
  in revision-history;
* paused, or when only spec.replicas changed (a ReplicaSet's desired-replicas
  annotation disagrees with it): scales every active ReplicaSet
  proportionally and makes no rollout progress;
* otherwise rolls out: Recreate scales old ReplicaSets to zero, waits for
  their pods to be gone, then scales the new one up; RollingUpdate scales the
  new one up while the total stays within replicas+maxSurge, and old ones
  down while availability stays at replicas-maxUnavailable;
* deletes the oldest old ReplicaSets with no pods beyond revisionHistoryLimit
  once the rollout is complete;
* writes status (replicas, updated, ready, available, unavailable,
  observedGeneration) and the Available and Progressing conditions, timing
  out with ProgressDeadlineExceeded when no progress was seen within
  progressDeadlineSeconds (the key is requeued for that moment).

Counting differs from upstream in one place on purpose: room to surge is
measured against max(spec.replicas, status.replicas) of each ReplicaSet and
availability against min(spec.replicas, status.availableReplicas), so a
ReplicaSet controller that has not yet acted on a scale-down can neither let
the pod count exceed replicas+maxSurge nor let a second scale-down drop
availability below replicas-maxUnavailable.
"""

from __future__ import annotations

import copy
import logging
import math
import struct
import time
from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Any

import orjson

from ..api.errors import StatusError
from ..api.selectors import InvalidSelector, from_label_selector_object
from ..client import Client
from .base import Controller, Requeue, key_of
from .common import Obj, controller_ref, now_rfc3339, owner_reference, parse_time, selecting
from .replicaset import CONTROLLER_INDEX, RefManager, controller_uid_index

log = logging.getLogger("kybernetes.controllers.deployment")

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# Annotations of a Deployment that are its own, never copied to its ReplicaSets
# (and, in `kubectl rollout undo`, never copied back).
SKIP_ANNOTATIONS = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY, DESIRED_REPLICAS,
    MAX_REPLICAS, "deprecated.deployment.rollback.to"})
MAX_REVISION_HISTORY_CHARS = 2000

# Condition reasons, as upstream names them (kubectl and users match on them).
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
FAILED_RS_CREATE = "ReplicaSetCreateError"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"

_MAX_INT32 = 2**31 - 1
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# ---------------------------------------------------------------------- pure helpers


def safe_encode(s: str) -> str:
    """Upstream's rand.SafeEncodeString: no vowels (no words) and no look-alike characters."""
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in s.encode())


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def canonical(value: Any) -> Any:
    """A template as Go would see it after decoding: null, {} and [] fields are the same as absent.

    kubectl sends back templates with `creationTimestamp: null` (rollout undo),
    and apimachinery's semantic equality treats nil and empty maps and slices
    alike; without this a rollback would not find its old ReplicaSet.
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = canonical(v)
            if v is None or (isinstance(v, (dict, list)) and not v):
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def template_hash(template: Obj, collision_count: int | None = None) -> str:
    """The pod-template-hash: FNV-32a of the template's canonical JSON, safe-encoded like upstream.

    The collision count is mixed in as upstream does, so a Deployment whose
    hash names someone else's ReplicaSet moves to a fresh name.
    """
    data = orjson.dumps(canonical(template), option=orjson.OPT_SORT_KEYS)
    if collision_count is not None:
        data += struct.pack("<Q", collision_count & 0xFFFFFFFF)
    return safe_encode(str(_fnv32a(data)))


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """An IntOrString (3 or "25%") resolved against total."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"invalid value {value!r}")
    if isinstance(value, int):
        return value
    s = str(value)
    if not s.endswith("%"):
        raise ValueError(f"invalid value for IntOrString: invalid type: string is not a percentage: {s!r}")
    pct = int(s[:-1])
    exact = pct * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def _replicas(obj: Obj | None) -> int:
    if obj is None:
        return 0
    r = (obj.get("spec") or {}).get("replicas")
    return 1 if r is None else int(r)


def is_rolling(d: Obj) -> bool:
    return ((d.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"


def resolve_fenceposts(d: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as pod counts: surge rounds up, unavailable down; never both 0."""
    ru = (((d.get("spec") or {}).get("strategy") or {}).get("rollingUpdate")) or {}
    desired = _replicas(d)
    surge = scaled_value(ru.get("maxSurge", "25%"), desired, True)
    unavailable = scaled_value(ru.get("maxUnavailable", "25%"), desired, False)
    if surge == 0 and unavailable == 0:
        # Rounding down may leave no room at all; surging is impossible, so allow one unavailable.
        unavailable = 1
    return surge, unavailable


def max_surge(d: Obj) -> int:
    return resolve_fenceposts(d)[0] if is_rolling(d) else 0


def max_unavailable(d: Obj) -> int:
    desired = _replicas(d)
    if not is_rolling(d) or desired == 0:
        return 0
    return min(resolve_fenceposts(d)[1], desired)


def _without_hash(template: Obj) -> Obj:
    t = copy.deepcopy(template or {})
    meta = t.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    labels.pop(HASH_LABEL, None)
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    if meta:
        t["metadata"] = meta
    else:
        t.pop("metadata", None)
    return t


def equal_ignore_hash(a: Obj | None, b: Obj | None) -> bool:
    return canonical(_without_hash(a or {})) == canonical(_without_hash(b or {}))


def revision(rs: Obj) -> int:
    try:
        return int(((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _annotation_int(rs: Obj, key: str) -> int | None:
    raw = ((rs.get("metadata") or {}).get("annotations") or {}).get(key)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _created(obj: Obj) -> float:
    return parse_time((obj.get("metadata") or {}).get("creationTimestamp")) or 0.0


def by_creation(rss: list[Obj], newest_first: bool = False) -> list[Obj]:
    out = sorted(rss, key=lambda r: (_created(r), r["metadata"]["name"]))
    return out[::-1] if newest_first else out


def _by_size(rss: list[Obj], newer_first_on_ties: bool) -> list[Obj]:
    """Larger first; ties go newer first when scaling up, older first when scaling down."""
    def cmp(a: Obj, b: Obj) -> int:
        if _replicas(a) != _replicas(b):
            return -1 if _replicas(a) > _replicas(b) else 1
        ka, kb = (_created(a), a["metadata"]["name"]), (_created(b), b["metadata"]["name"])
        if ka == kb:
            return 0
        older = -1 if ka < kb else 1
        return -older if newer_first_on_ties else older
    return sorted(rss, key=cmp_to_key(cmp))


def active(rss: list[Obj | None]) -> list[Obj]:
    return [r for r in rss if r is not None and _replicas(r) > 0]


def _status_int(rs: Obj | None, field_name: str) -> int:
    return int(((rs or {}).get("status") or {}).get(field_name) or 0)


def pods_bound(rs: Obj) -> int:
    """An upper bound on the pods the ReplicaSet has or is about to have."""
    return max(_replicas(rs), _status_int(rs, "replicas"))


def available_bound(rs: Obj) -> int:
    """The pods that will still be available once the ReplicaSet reaches its spec."""
    return min(_replicas(rs), _status_int(rs, "availableReplicas"))


def get_condition(status: Obj, typ: str) -> Obj | None:
    for c in status.get("conditions") or []:
        if c.get("type") == typ:
            return c
    return None


def new_condition(typ: str, status: str, reason: str, message: str) -> Obj:
    now = now_rfc3339()
    return {"type": typ, "status": status, "lastUpdateTime": now, "lastTransitionTime": now,
            "reason": reason, "message": message}


def set_condition(status: Obj, cond: Obj) -> None:
    """Upstream's SetDeploymentCondition: same status and reason is no change; same status keeps the transition time."""
    cur = get_condition(status, cond["type"])
    if cur is not None and cur.get("status") == cond["status"] and cur.get("reason") == cond["reason"]:
        return
    if cur is not None and cur.get("status") == cond["status"]:
        cond = dict(cond, lastTransitionTime=cur.get("lastTransitionTime"))
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != cond["type"]] + [cond]


def remove_condition(status: Obj, typ: str) -> None:
    if get_condition(status, typ) is not None:
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != typ]


def has_progress_deadline(d: Obj) -> bool:
    pds = (d.get("spec") or {}).get("progressDeadlineSeconds")
    return pds is not None and pds != _MAX_INT32


def deployment_complete(d: Obj, status: Obj) -> bool:
    n = _replicas(d)
    return (status.get("updatedReplicas", 0) == n and status.get("replicas", 0) == n
            and status.get("availableReplicas", 0) == n
            and status.get("observedGeneration", 0) >= d["metadata"].get("generation", 0))


def deployment_progressing(d: Obj, new: Obj) -> bool:
    old = d.get("status") or {}
    old_old = old.get("replicas", 0) - old.get("updatedReplicas", 0)
    new_old = new.get("replicas", 0) - new.get("updatedReplicas", 0)
    return (new.get("updatedReplicas", 0) > old.get("updatedReplicas", 0) or new_old < old_old
            or new.get("readyReplicas", 0) > old.get("readyReplicas", 0)
            or new.get("availableReplicas", 0) > old.get("availableReplicas", 0))


def deployment_timed_out(d: Obj, status: Obj, now: float) -> bool:
    if not has_progress_deadline(d):
        return False
    cond = get_condition(status, "Progressing")
    if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return False
    if cond.get("reason") == TIMED_OUT:
        return True
    since = parse_time(cond.get("lastUpdateTime"))
    return since is not None and since + int(d["spec"]["progressDeadlineSeconds"]) < now


def replica_set_proportion(rs: Obj, d: Obj, to_add: int, added: int) -> int:
    """This ReplicaSet's share of `to_add` more (or fewer) replicas, by its max-replicas annotation."""
    if _replicas(rs) == 0 or to_add == 0 or to_add == added:
        return 0
    if _replicas(d) == 0:
        fraction = -_replicas(rs)
    else:
        deployment_replicas = _replicas(d) + max_surge(d)
        annotated = _annotation_int(rs, MAX_REPLICAS)
        if annotated is None or annotated == 0:
            # Without the annotation the deployment's current size is the best estimate;
            # the min/max below keeps us within bounds anyway.
            annotated = max(int((d.get("status") or {}).get("replicas") or 0), 1)
        exact = _replicas(rs) * deployment_replicas / annotated
        # Go's math.Round: halves away from zero.
        fraction = int(math.floor(exact + 0.5)) - _replicas(rs)
    allowed = to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


# ---------------------------------------------------------------------- the controller


@dataclass
class _Sync:
    """What one reconcile knows: the deployment as last written, and its ReplicaSets by name."""

    d: Obj
    rss: dict[str, Obj] = field(default_factory=dict)
    requeue_after: float | None = None


class DeploymentController(Controller):
    name = "deployment"
    workers = 4

    def __init__(self, client: Client):
        super().__init__(client)
        self.d_client = client.resource("apps/v1", "deployments")
        self.rs_client = client.resource("apps/v1", "replicasets")
        self.deployments = self.informer("apps/v1", "deployments")
        self.replicasets = self.informer("apps/v1", "replicasets")
        self.pods = self.informer("v1", "pods")
        self.replicasets.add_index(CONTROLLER_INDEX, controller_uid_index)
        self.pods.add_index(CONTROLLER_INDEX, controller_uid_index)
        self.deployments.add_handler(on_add=self._d_changed, on_update=lambda _o, n: self._d_changed(n),
                                     on_delete=self._d_changed)
        self.replicasets.add_handler(on_add=self._rs_added, on_update=self._rs_updated,
                                     on_delete=self._rs_deleted)
        self.pods.add_handler(on_delete=self._pod_deleted)

    # ------------------------------------------------------------ event handlers

    def _d_changed(self, d: Obj) -> None:
        self.enqueue(key_of(d))

    def _owner_key(self, obj: Obj, ref: Obj | None) -> str | None:
        if ref is None or ref.get("kind") != "Deployment":
            return None
        d = self.deployments.get_by_name(ref.get("name", ""), (obj.get("metadata") or {}).get("namespace"))
        if d is None or d["metadata"].get("uid") != ref.get("uid"):
            return None
        return key_of(d)

    def _enqueue_matching(self, rs: Obj) -> None:
        for d in selecting(self.deployments, rs):
            self.enqueue(key_of(d))

    def _rs_added(self, rs: Obj) -> None:
        key = self._owner_key(rs, controller_ref(rs))
        if key:
            self.enqueue(key)
        elif controller_ref(rs) is None:
            self._enqueue_matching(rs)

    def _rs_updated(self, old: Obj, new: Obj) -> None:
        old_ref, new_ref = controller_ref(old), controller_ref(new)
        if old_ref is not None and (new_ref is None or old_ref.get("uid") != new_ref.get("uid")):
            key = self._owner_key(old, old_ref)
            if key:
                self.enqueue(key)
        if new_ref is not None:
            key = self._owner_key(new, new_ref)
            if key:
                self.enqueue(key)
        else:
            self._enqueue_matching(new)

    def _rs_deleted(self, rs: Obj) -> None:
        key = self._owner_key(rs, controller_ref(rs))
        if key:
            self.enqueue(key)

    def _pod_deleted(self, pod: Obj) -> None:
        # Recreate waits for the last old pod to be gone; nothing else changes
        # on pod events that a ReplicaSet status update would not also bring.
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return
        rs = self.replicasets.get_by_name(ref.get("name", ""), (pod.get("metadata") or {}).get("namespace"))
        if rs is None:
            return
        key = self._owner_key(rs, controller_ref(rs))
        if key:
            d = self.deployments.get(key)
            if d is not None and not is_rolling(d):
                self.enqueue(key)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        cached = self.deployments.get(key)
        if cached is None:
            return
        s = _Sync(copy.deepcopy(cached))
        d = s.d
        spec = d.get("spec") or {}
        try:
            selector = from_label_selector_object(spec.get("selector"))
        except InvalidSelector as e:
            log.warning("deployment %s has an invalid selector: %s", key, e)
            return
        if selector.empty:
            # Selecting every pod in the namespace is never what a user meant; upstream refuses too.
            if (d.get("status") or {}).get("observedGeneration") != d["metadata"].get("generation"):
                d.setdefault("status", {})["observedGeneration"] = d["metadata"].get("generation")
                await self.d_client.update_status(d)
            return
        ns = d["metadata"].get("namespace") or ""
        claimed = await RefManager(self.client, d, ("apps/v1", "deployments"), ("apps/v1", "replicasets"),
                                   selector).claim(self.replicasets.list_by_namespace(ns))
        s.rss = {r["metadata"]["name"]: r for r in claimed}

        if d["metadata"].get("deletionTimestamp"):
            await self._sync_status_only(s)
            return
        await self._check_paused_conditions(s)
        if spec.get("paused"):
            await self._sync(s)
        elif await self._is_scaling_event(s):
            await self._sync(s)
        elif is_rolling(d):
            await self._rollout_rolling(s)
        else:
            await self._rollout_recreate(s)
        if s.requeue_after is not None:
            raise Requeue(after=s.requeue_after)

    # ------------------------------------------------------------ finding ReplicaSets

    def _split(self, s: _Sync) -> tuple[Obj | None, list[Obj]]:
        """(new ReplicaSet or None, all old ones). The oldest matching template wins, as upstream."""
        template = (s.d.get("spec") or {}).get("template")
        new = None
        for rs in by_creation(list(s.rss.values())):
            if equal_ignore_hash((rs.get("spec") or {}).get("template"), template):
                new = rs
                break
        old = [rs for rs in s.rss.values() if rs is not new]
        return new, old

    async def _get_all(self, s: _Sync, create: bool) -> tuple[Obj | None, list[Obj]]:
        """Upstream's getAllReplicaSetsAndSyncRevision: find (or create) the new RS and sync revisions."""
        existing, old = self._split(s)
        new_revision = str(max((revision(r) for r in old), default=0) + 1)
        d = s.d
        if existing is not None:
            rs = copy.deepcopy(existing)
            changed = self._set_new_rs_annotations(d, rs, new_revision, exists=True)
            if changed or (rs["spec"].get("minReadySeconds") or 0) != (d["spec"].get("minReadySeconds") or 0):
                rs["spec"]["minReadySeconds"] = d["spec"].get("minReadySeconds") or 0
                rs = await self.rs_client.update(rs)
                s.rss[rs["metadata"]["name"]] = rs
                # The deployment's revision follows on the sync this update triggers.
                return rs, old
            needs_update = self._set_revision(d, ((rs["metadata"].get("annotations") or {}).get(REVISION)))
            status = d.setdefault("status", {})
            if has_progress_deadline(d) and get_condition(status, "Progressing") is None:
                set_condition(status, new_condition("Progressing", "True", FOUND_NEW_RS,
                                                    f'Found new replica set "{rs["metadata"]["name"]}"'))
                needs_update = True
            if needs_update:
                await self._write_status(s)
            return rs, old
        if not create:
            return None, old
        return await self._create_new_rs(s, old, new_revision), old

    async def _create_new_rs(self, s: _Sync, old: list[Obj], new_revision: str) -> Obj | None:
        d = s.d
        spec = d["spec"]
        template = copy.deepcopy(spec.get("template") or {})
        collision = (d.get("status") or {}).get("collisionCount")
        h = template_hash(template, collision)
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), HASH_LABEL: h}
        selector = copy.deepcopy(spec.get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: h}
        name = f"{d['metadata']['name']}-{h}"
        rs: Obj = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                   "metadata": {"name": name, "namespace": d["metadata"].get("namespace"),
                                "labels": dict(tmeta["labels"]), "ownerReferences": [owner_reference(d)]},
                   "spec": {"replicas": 0, "minReadySeconds": spec.get("minReadySeconds") or 0,
                            "selector": selector, "template": template}}
        rs["spec"]["replicas"] = self._new_rs_new_replicas(d, [*old, rs], rs)
        self._set_new_rs_annotations(d, rs, new_revision, exists=False)
        already_exists = False
        try:
            created = await self.rs_client.create(rs)
        except StatusError as e:
            if e.code == 409 and e.reason == "AlreadyExists":
                found = self.replicasets.get_by_name(name, d["metadata"].get("namespace"))
                if found is None:
                    found = await self.rs_client.get(name, d["metadata"].get("namespace"))
                ref = controller_ref(found)
                if ref and ref.get("uid") == d["metadata"]["uid"] and equal_ignore_hash(
                        found["spec"].get("template"), spec.get("template")):
                    created, already_exists = found, True
                else:
                    # Someone else's ReplicaSet has our name: a hash collision. Count
                    # it so the next hash differs, and try again on the next sync.
                    status = d.setdefault("status", {})
                    status["collisionCount"] = int(status.get("collisionCount") or 0) + 1
                    await self._write_status(s)
                    raise
            elif e.code == 403 and "being terminated" in e.message:
                raise
            else:
                if has_progress_deadline(d):
                    set_condition(d.setdefault("status", {}), new_condition(
                        "Progressing", "False", FAILED_RS_CREATE,
                        f'Failed to create new replica set "{name}": {e.message}'))
                    await self._write_status(s)
                raise
        s.rss[created["metadata"]["name"]] = created
        needs_update = self._set_revision(d, new_revision)
        if not already_exists and has_progress_deadline(d):
            set_condition(d.setdefault("status", {}), new_condition(
                "Progressing", "True", NEW_RS_CREATED, f'Created new replica set "{name}"'))
            needs_update = True
        if needs_update:
            await self._write_status(s)
        return created

    @staticmethod
    def _set_revision(d: Obj, rev: str | None) -> bool:
        annotations = d["metadata"].setdefault("annotations", {})
        if rev is None or annotations.get(REVISION) == rev:
            return False
        annotations[REVISION] = rev
        return True

    @staticmethod
    def _set_replicas_annotations(d: Obj, rs: Obj) -> bool:
        annotations = rs["metadata"].setdefault("annotations", {})
        want = {DESIRED_REPLICAS: str(_replicas(d)), MAX_REPLICAS: str(_replicas(d) + max_surge(d))}
        if all(annotations.get(k) == v for k, v in want.items()):
            return False
        annotations.update(want)
        return True

    def _set_new_rs_annotations(self, d: Obj, rs: Obj, new_revision: str, exists: bool) -> bool:
        annotations = rs["metadata"].setdefault("annotations", {})
        changed = False
        for k, v in ((d["metadata"].get("annotations")) or {}).items():
            if k not in SKIP_ANNOTATIONS and annotations.get(k) != v:
                annotations[k] = v
                changed = True
        had = annotations.get(REVISION)
        try:
            old_rev = int(had) if had is not None else 0
        except ValueError:
            return changed
        if old_rev < int(new_revision):
            annotations[REVISION] = new_revision
            changed = True
            if had is not None:
                # Rolling back to this ReplicaSet: remember which revisions it was.
                history = annotations.get(REVISION_HISTORY, "")
                revs = [r for r in history.split(",") if r]
                while revs and len(",".join([*revs, had])) > MAX_REVISION_HISTORY_CHARS:
                    revs.pop(0)
                annotations[REVISION_HISTORY] = ",".join([*revs, had])
        if not exists and self._set_replicas_annotations(d, rs):
            changed = True
        return changed

    # ------------------------------------------------------------ paused and scaling

    async def _check_paused_conditions(self, s: _Sync) -> None:
        d = s.d
        if not has_progress_deadline(d):
            return
        status = d.setdefault("status", {})
        cond = get_condition(status, "Progressing")
        if cond is not None and cond.get("reason") == TIMED_OUT:
            # Having reported no progress, a pause must not hide it.
            return
        paused_cond = cond is not None and cond.get("reason") == PAUSED
        if d["spec"].get("paused") and not paused_cond:
            set_condition(status, new_condition("Progressing", "Unknown", PAUSED, "Deployment is paused"))
        elif not d["spec"].get("paused") and paused_cond:
            set_condition(status, new_condition("Progressing", "Unknown", RESUMED, "Deployment is resumed"))
        else:
            return
        await self._write_status(s)

    async def _is_scaling_event(self, s: _Sync) -> bool:
        new, old = await self._get_all(s, create=False)
        for rs in active([*old, new]):
            desired = _annotation_int(rs, DESIRED_REPLICAS)
            if desired is not None and desired != _replicas(s.d):
                return True
        return False

    async def _sync(self, s: _Sync) -> None:
        """Scaling (and cleanup while paused): no rollout progress."""
        new, old = await self._get_all(s, create=False)
        await self._scale(s, new, old)
        new, old = self._fresh(s, new), [self._fresh(s, r) for r in old]
        if s.d["spec"].get("paused"):
            await self._cleanup(s, old)
        await self._sync_deployment_status(s, [*old, new], new)

    async def _sync_status_only(self, s: _Sync) -> None:
        new, old = await self._get_all(s, create=False)
        await self._sync_deployment_status(s, [*old, new], new)

    @staticmethod
    def _fresh(s: _Sync, rs: Obj | None) -> Obj | None:
        return None if rs is None else s.rss.get(rs["metadata"]["name"], rs)

    async def _scale(self, s: _Sync, new: Obj | None, old: list[Obj]) -> None:
        d = s.d
        target = self._active_or_latest(new, old)
        if target is not None:
            if _replicas(target) != _replicas(d):
                await self._scale_rs(s, target, _replicas(d))
            return
        if self._saturated(d, new):
            for rs in active(old):
                await self._scale_rs(s, rs, 0)
            return
        if not is_rolling(d):
            return
        # Old ReplicaSets still have pods and the new one is not saturated:
        # spread the change over all of them in proportion to their size.
        rss = active([*old, new])
        allowed = _replicas(d) + max_surge(d) if _replicas(d) > 0 else 0
        to_add = allowed - sum(_replicas(r) for r in rss)
        if to_add > 0:
            rss = _by_size(rss, newer_first_on_ties=True)
        elif to_add < 0:
            rss = _by_size(rss, newer_first_on_ties=False)
        added = 0
        sizes: dict[str, int] = {}
        for rs in rss:
            if to_add != 0:
                p = replica_set_proportion(rs, d, to_add, added)
                sizes[rs["metadata"]["name"]] = _replicas(rs) + p
                added += p
            else:
                sizes[rs["metadata"]["name"]] = _replicas(rs)
        for i, rs in enumerate(rss):
            name = rs["metadata"]["name"]
            if i == 0 and to_add != 0:
                # Leftovers of rounding go to the largest ReplicaSet.
                sizes[name] = max(sizes[name] + to_add - added, 0)
            await self._scale_rs(s, rs, sizes[name])

    @staticmethod
    def _active_or_latest(new: Obj | None, old: list[Obj]) -> Obj | None:
        if new is None and not old:
            return None
        old_sorted = by_creation(old, newest_first=True)
        rss = active([*old_sorted, new])
        if not rss:
            return new if new is not None else old_sorted[0]
        return rss[0] if len(rss) == 1 else None

    @staticmethod
    def _saturated(d: Obj, rs: Obj | None) -> bool:
        if rs is None:
            return False
        n = _replicas(d)
        return (_replicas(rs) == n and _annotation_int(rs, DESIRED_REPLICAS) == n
                and _status_int(rs, "availableReplicas") == n)

    async def _scale_rs(self, s: _Sync, rs: Obj, replicas: int) -> bool:
        """Set a ReplicaSet's size and its desired/max-replicas annotations; True if the size changed."""
        rs = s.rss.get(rs["metadata"]["name"], rs)
        copy_ = copy.deepcopy(rs)
        size_changed = _replicas(rs) != replicas
        if not self._set_replicas_annotations(s.d, copy_) and not size_changed:
            return False
        copy_["spec"]["replicas"] = replicas
        updated = await self.rs_client.update(copy_)
        s.rss[updated["metadata"]["name"]] = updated
        if size_changed:
            log.info("deployment %s: scaled %s replica set %s from %d to %d", key_of(s.d),
                     "up" if replicas > _replicas(rs) else "down", rs["metadata"]["name"], _replicas(rs), replicas)
        return size_changed

    # ------------------------------------------------------------ rollouts

    def _new_rs_new_replicas(self, d: Obj, all_rss: list[Obj], new: Obj) -> int:
        if not is_rolling(d):
            return _replicas(d)
        max_total = _replicas(d) + max_surge(d)
        current = sum(pods_bound(r) for r in all_rss)
        if current >= max_total:
            return _replicas(new)
        up = min(max_total - current, _replicas(d) - _replicas(new))
        return _replicas(new) + max(up, 0)

    async def _rollout_rolling(self, s: _Sync) -> None:
        new, old = await self._get_all(s, create=True)
        all_rss = [*old, new] if new is not None else list(old)
        if new is not None:
            if await self._reconcile_new(s, all_rss, new):
                await self._sync_rollout_status(s)
                return
            new = self._fresh(s, new)
        if await self._reconcile_old(s, [*old, new] if new else old, active(old), new):
            await self._sync_rollout_status(s)
            return
        if deployment_complete(s.d, s.d.get("status") or {}):
            await self._cleanup(s, [self._fresh(s, r) for r in old])
        await self._sync_rollout_status(s)

    async def _reconcile_new(self, s: _Sync, all_rss: list[Obj], new: Obj) -> bool:
        d = s.d
        if _replicas(new) == _replicas(d):
            return False
        if _replicas(new) > _replicas(d):
            return await self._scale_rs(s, new, _replicas(d))
        return await self._scale_rs(s, new, self._new_rs_new_replicas(d, all_rss, new))

    async def _reconcile_old(self, s: _Sync, all_rss: list[Obj], old_active: list[Obj], new: Obj | None) -> bool:
        d = s.d
        if sum(_replicas(r) for r in old_active) == 0:
            return False
        all_pods = sum(_replicas(r) for r in all_rss)
        min_available = _replicas(d) - max_unavailable(d)
        new_unavailable = _replicas(new) - available_bound(new) if new is not None else 0
        max_scaled_down = all_pods - min_available - new_unavailable
        if max_scaled_down <= 0:
            return False
        # Unhealthy old pods go first: they cost no availability and would
        # otherwise block the rollout (upstream issue 16737).
        cleaned = 0
        for rs in by_creation(old_active):
            if cleaned >= max_scaled_down:
                break
            rs = s.rss.get(rs["metadata"]["name"], rs)
            unhealthy = _replicas(rs) - available_bound(rs)
            if _replicas(rs) == 0 or unhealthy <= 0:
                continue
            n = min(max_scaled_down - cleaned, unhealthy)
            await self._scale_rs(s, rs, _replicas(rs) - n)
            cleaned += n
        old_active = [s.rss.get(r["metadata"]["name"], r) for r in old_active]
        all_now = [*old_active, self._fresh(s, new)] if new is not None else old_active
        available = sum(available_bound(r) for r in all_now)
        scaled = 0
        if available > min_available:
            budget = available - min_available
            for rs in by_creation(old_active):
                if scaled >= budget:
                    break
                if _replicas(rs) == 0:
                    continue
                n = min(_replicas(rs), budget - scaled)
                await self._scale_rs(s, rs, _replicas(rs) - n)
                scaled += n
        return cleaned + scaled > 0

    async def _rollout_recreate(self, s: _Sync) -> None:
        new, old = await self._get_all(s, create=False)
        scaled_down = False
        for rs in active(old):
            if await self._scale_rs(s, rs, 0):
                scaled_down = True
        if scaled_down:
            await self._sync_rollout_status(s)
            return
        old = [self._fresh(s, r) for r in old]
        if self._old_pods_running(new, old):
            await self._sync_rollout_status(s)
            return
        if new is None:
            new, old = await self._get_all(s, create=True)
        if new is not None:
            await self._scale_rs(s, new, _replicas(s.d))
        if deployment_complete(s.d, s.d.get("status") or {}):
            await self._cleanup(s, [self._fresh(s, r) for r in old])
        await self._sync_rollout_status(s)

    def _old_pods_running(self, new: Obj | None, old: list[Obj]) -> bool:
        if sum(_status_int(r, "replicas") for r in old) > 0:
            return True
        for rs in old:
            if new is not None and rs["metadata"].get("uid") == new["metadata"].get("uid"):
                continue
            for pod in self.pods.by_index(CONTROLLER_INDEX, rs["metadata"].get("uid", "")):
                # Terminating pods still run; only finished ones are out of the way.
                if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    return True
        return False

    async def _cleanup(self, s: _Sync, old: list[Obj | None]) -> None:
        """Delete the lowest revisions beyond revisionHistoryLimit, only those with no pods left."""
        limit = (s.d.get("spec") or {}).get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [r for r in old if r is not None and not r["metadata"].get("deletionTimestamp")]
        diff = len(alive) - int(limit)
        if diff <= 0:
            return
        alive.sort(key=lambda r: (revision(r), _created(r), r["metadata"]["name"]))
        for rs in alive[:diff]:
            if (_status_int(rs, "replicas") != 0 or _replicas(rs) != 0
                    or rs["metadata"].get("generation", 0) > _status_int(rs, "observedGeneration")):
                continue
            try:
                await self.rs_client.delete(rs["metadata"]["name"], rs["metadata"].get("namespace"),
                                            preconditions={"uid": rs["metadata"]["uid"]})
            except StatusError as e:
                if e.code not in (404, 409):
                    raise
            s.rss.pop(rs["metadata"]["name"], None)

    # ------------------------------------------------------------ status

    def _calculate_status(self, d: Obj, all_rss: list[Obj], new: Obj | None) -> Obj:
        rss = [r for r in all_rss if r is not None]
        available = sum(_status_int(r, "availableReplicas") for r in rss)
        total = sum(_replicas(r) for r in rss)
        old = d.get("status") or {}
        status: Obj = {
            "observedGeneration": d["metadata"].get("generation", 0),
            "replicas": sum(_status_int(r, "replicas") for r in rss),
            "updatedReplicas": _status_int(new, "replicas") if new is not None else 0,
            "readyReplicas": sum(_status_int(r, "readyReplicas") for r in rss),
            "availableReplicas": available,
            "unavailableReplicas": max(total - available, 0),
            "conditions": [dict(c) for c in old.get("conditions") or []],
        }
        if old.get("collisionCount") is not None:
            status["collisionCount"] = old["collisionCount"]
        if available >= _replicas(d) - max_unavailable(d):
            set_condition(status, new_condition("Available", "True", MIN_AVAILABLE,
                                                "Deployment has minimum availability."))
        else:
            set_condition(status, new_condition("Available", "False", MIN_UNAVAILABLE,
                                                "Deployment does not have minimum availability."))
        return status

    async def _sync_deployment_status(self, s: _Sync, all_rss: list[Obj | None], new: Obj | None) -> None:
        status = self._calculate_status(s.d, [self._fresh(s, r) for r in all_rss if r is not None],
                                        self._fresh(s, new))
        if _status_equal(s.d.get("status") or {}, status):
            return
        s.d["status"] = status
        await self._write_status(s)

    async def _sync_rollout_status(self, s: _Sync) -> None:
        d = s.d
        new, old = self._split(s)
        status = self._calculate_status(d, [*old, new] if new is not None else old, new)
        now = time.time()
        if not has_progress_deadline(d):
            remove_condition(status, "Progressing")
        cur = get_condition(d.get("status") or {}, "Progressing")
        complete_already = (status["replicas"] == status["updatedReplicas"] and cur is not None
                            and cur.get("reason") == NEW_RS_AVAILABLE)
        if has_progress_deadline(d) and not complete_already:
            rs_name = new["metadata"]["name"] if new is not None else None
            if deployment_complete(d, status):
                msg = (f'ReplicaSet "{rs_name}" has successfully progressed.' if rs_name
                       else f'Deployment "{d["metadata"]["name"]}" has successfully progressed.')
                set_condition(status, new_condition("Progressing", "True", NEW_RS_AVAILABLE, msg))
            elif deployment_progressing(d, status):
                msg = (f'ReplicaSet "{rs_name}" is progressing.' if rs_name
                       else f'Deployment "{d["metadata"]["name"]}" is progressing.')
                cond = new_condition("Progressing", "True", RS_UPDATED, msg)
                # Progress refreshes lastUpdateTime (the deadline counts from it)
                # even when the reason stays the same, hence remove-then-set.
                if cur is not None:
                    if cur.get("status") == "True":
                        cond["lastTransitionTime"] = cur.get("lastTransitionTime")
                    remove_condition(status, "Progressing")
                set_condition(status, cond)
            elif deployment_timed_out(d, status, now):
                msg = (f'ReplicaSet "{rs_name}" has timed out progressing.' if rs_name
                       else f'Deployment "{d["metadata"]["name"]}" has timed out progressing.')
                set_condition(status, new_condition("Progressing", "False", TIMED_OUT, msg))
        failure = self._replica_failure([*old, new] if new is not None else old, new)
        if failure is not None:
            set_condition(status, failure)
        else:
            remove_condition(status, "ReplicaFailure")
        if _status_equal(d.get("status") or {}, status):
            s.requeue_after = self._stuck_requeue(d, status, now)
            return
        d["status"] = status
        await self._write_status(s)

    @staticmethod
    def _replica_failure(all_rss: list[Obj], new: Obj | None) -> Obj | None:
        ordered = ([new] if new is not None else []) + [r for r in all_rss if r is not new]
        for rs in ordered:
            c = get_condition(rs.get("status") or {}, "ReplicaFailure")
            if c is not None:
                return {"type": "ReplicaFailure", "status": c.get("status", "True"),
                        "lastUpdateTime": c.get("lastTransitionTime") or now_rfc3339(),
                        "lastTransitionTime": c.get("lastTransitionTime") or now_rfc3339(),
                        "reason": c.get("reason", ""), "message": c.get("message", "")}
        return None

    @staticmethod
    def _stuck_requeue(d: Obj, status: Obj, now: float) -> float | None:
        """When to look again so ProgressDeadlineExceeded is reported without any event."""
        cond = get_condition(status, "Progressing")
        if not has_progress_deadline(d) or cond is None:
            return None
        if deployment_complete(d, status) or cond.get("reason") in (TIMED_OUT, NEW_RS_AVAILABLE):
            return None
        since = parse_time(cond.get("lastUpdateTime"))
        if since is None:
            return None
        # lastUpdateTime has one-second resolution and the check is strict: a
        # little past the deadline is the first moment it can be true.
        return max(since + int(d["spec"]["progressDeadlineSeconds"]) - now, 0.0) + 1.05

    async def _write_status(self, s: _Sync) -> None:
        """Write status and metadata annotations (the revision) in one status update."""
        updated = await self.d_client.update_status(s.d)
        # Keep working on what was written: the next write must carry its resourceVersion.
        s.d = updated


def _status_equal(a: Obj, b: Obj) -> bool:
    keys = ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas",
            "unavailableReplicas", "collisionCount")
    if any((a.get(k) or 0) != (b.get(k) or 0) for k in keys):
        return False
    return (a.get("conditions") or []) == (b.get("conditions") or [])
