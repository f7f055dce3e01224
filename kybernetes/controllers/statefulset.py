"""The StatefulSet controller: pods with stable names, stable storage and ordered change.

A StatefulSet named ``web`` owns pods ``web-<ordinal>`` for ordinals
``spec.ordinals.start`` … ``start + replicas - 1``. Each pod carries its
identity (hostname = pod name, subdomain = ``spec.serviceName``, the
``statefulset.kubernetes.io/pod-name`` and ``apps.kubernetes.io/pod-index``
labels) and, for every volumeClaimTemplate, a PersistentVolumeClaim
``<template>-<set>-<ordinal>`` created before the pod and kept after it, so a
recreated ``web-1`` finds its data again.

One reconcile takes the steps upstream's stateful set control takes:

* ``OrderedReady`` (the default) is monotonic: create the lowest missing
  ordinal and wait until it is Running and Ready before the next; scale down
  from the highest ordinal, one at a time, and only while everything else is
  healthy. ``Parallel`` creates and deletes without waiting.
* Pods that failed or were deleted are recreated under the same name.
* RollingUpdate replaces pods whose revision is not the update revision, from
  the highest ordinal down to ``partition``, never with more than
  ``maxUnavailable`` (default 1) pods unavailable; OnDelete only uses the new
  template for pods the user deleted. Revisions are ControllerRevisions (see
  history.py); the ``controller-revision-hash`` label on a pod names its revision.
* ``persistentVolumeClaimRetentionPolicy`` decides who owns the claims:
  ``whenDeleted: Delete`` makes the StatefulSet an owner (the garbage collector
  removes them with it), ``whenScaled: Delete`` makes a condemned pod the owner
  just before it is deleted, so its claim goes with it. A pod whose claim is
  still being deleted is not created until the claim is gone and made afresh,
  so it never starts on storage about to vanish.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from typing import Any

from ..api.errors import StatusError
from ..api.selectors import InvalidSelector, LabelSelector, from_label_selector_object
from ..client import Client
from .base import Controller, Requeue, key_of
from .common import controller_ref, is_pod_available, is_pod_ready, owner_reference, pod_from_template
from .daemonset import scaled_value
from .history import (
    CONTROLLER_REVISION_HASH_LABEL,
    create_revision,
    equal_revision,
    next_revision,
    owned_revisions,
    revisions_to_prune,
    sort_revisions,
    template_of,
    template_patch,
)

log = logging.getLogger("kybernetes.controllers.statefulset")

Obj = dict[str, Any]

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def claim_name(template_name: str, set_name: str, ordinal: int) -> str:
    return f"{template_name}-{set_name}-{ordinal}"


def pod_ordinal(set_name: str, pod: Obj) -> int | None:
    """The ordinal of a pod named like a member of the set, else None."""
    m = re.fullmatch(re.escape(set_name) + r"-(\d+)", (pod.get("metadata") or {}).get("name") or "")
    return int(m.group(1)) if m else None


def _deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _phase(pod: Obj) -> str | None:
    return (pod.get("status") or {}).get("phase")


def _revision_of(pod: Obj) -> str:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL, "")


def _set_key_for(obj: Obj) -> str | None:
    ref = controller_ref(obj)
    if ref is None or ref.get("kind") != "StatefulSet":
        return None
    return f"{obj['metadata'].get('namespace')}/{ref.get('name')}"


def new_pod(sts: Obj, template: Obj, ordinal: int, revision: str) -> Obj:
    """Pod `ordinal` of the set from `template` (one revision's), with identity and storage."""
    name = f"{sts['metadata']['name']}-{ordinal}"
    pod = pod_from_template(template, sts, name=name)
    labels = pod["metadata"]["labels"]
    labels[POD_NAME_LABEL] = name
    labels[POD_INDEX_LABEL] = str(ordinal)
    labels[CONTROLLER_REVISION_HASH_LABEL] = revision
    spec = pod["spec"]
    spec["hostname"] = name
    service = (sts.get("spec") or {}).get("serviceName")
    if service:
        spec["subdomain"] = service
    claims = (sts.get("spec") or {}).get("volumeClaimTemplates") or []
    if claims:
        by_name = {t["metadata"]["name"]: t for t in claims}
        # The claim wins over a same-named template volume, as upstream.
        volumes = [v for v in spec.get("volumes") or [] if v.get("name") not in by_name]
        for tname in by_name:
            volumes.append({"name": tname, "persistentVolumeClaim": {
                "claimName": claim_name(tname, sts["metadata"]["name"], ordinal)}})
        spec["volumes"] = volumes
    return pod


class StatefulSetController(Controller):
    name = "statefulset-controller"

    def __init__(self, client: Client):
        super().__init__(client)
        self.sets = self.informer("apps/v1", "statefulsets", resync_period=300)
        self.pods = self.informer("v1", "pods")
        self.revisions = self.informer("apps/v1", "controllerrevisions")
        self.claims = self.informer("v1", "persistentvolumeclaims")
        self.sets.add_handler(on_add=self._enqueue_set, on_update=lambda _o, n: self._enqueue_set(n),
                              on_delete=self._enqueue_set)
        self.pods.add_handler(on_add=self._pod_event, on_update=self._pod_updated, on_delete=self._pod_event)
        self.revisions.add_handler(on_add=self._owned_event, on_update=lambda _o, n: self._owned_event(n),
                                   on_delete=self._owned_event)
        self.claims.add_handler(on_delete=self._claim_deleted)
        self.pods_rc = client.resource("v1", "pods")
        self.sets_rc = client.resource("apps/v1", "statefulsets")
        self.revisions_rc = client.resource("apps/v1", "controllerrevisions")
        self.claims_rc = client.resource("v1", "persistentvolumeclaims")

    # ------------------------------------------------------------ event handlers

    def _enqueue_set(self, sts: Obj) -> None:
        self.enqueue(key_of(sts))

    def _owned_event(self, obj: Obj) -> None:
        key = _set_key_for(obj)
        if key:
            self.enqueue(key)

    def _pod_event(self, pod: Obj) -> None:
        key = _set_key_for(pod)
        if key:
            self.enqueue(key)
        elif controller_ref(pod) is None and not _deleting(pod):
            self._enqueue_adopters(pod)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        old_key = _set_key_for(old)
        if old_key and old_key != _set_key_for(new):
            self.enqueue(old_key)
        self._pod_event(new)

    def _claim_deleted(self, claim: Obj) -> None:
        """A pod waiting for its old claim to go can now get a new one."""
        name = claim["metadata"].get("name") or ""
        for sts in self.sets.list_by_namespace(claim["metadata"].get("namespace") or ""):
            set_name = sts["metadata"]["name"]
            for tmpl in (sts.get("spec") or {}).get("volumeClaimTemplates") or []:
                if name.startswith(f"{(tmpl.get('metadata') or {}).get('name')}-{set_name}-"):
                    self._enqueue_set(sts)
                    break

    def _enqueue_adopters(self, pod: Obj) -> None:
        labels = pod["metadata"].get("labels") or {}
        for sts in self.sets.list_by_namespace(pod["metadata"].get("namespace") or ""):
            try:
                sel = from_label_selector_object((sts.get("spec") or {}).get("selector"))
            except InvalidSelector:
                continue
            if sel.matches(labels) and pod_ordinal(sts["metadata"]["name"], pod) is not None:
                self._enqueue_set(sts)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        sts = self.sets.get(key)
        if sts is None or _deleting(sts):
            # Pods, revisions and claims owned by a deleted set are the garbage collector's.
            return
        try:
            selector = from_label_selector_object((sts.get("spec") or {}).get("selector"))
        except InvalidSelector:
            return
        if selector.empty:
            return
        pods = await self._claim_pods(sts, selector)
        revisions = owned_revisions(self.revisions.list_by_namespace(sts["metadata"]["namespace"]), sts)
        current, update, collisions = await self._revisions(sts, revisions)
        status = self._status(sts, pods, current, update, collisions)
        await self._sync(sts, pods, current, update)
        await self._write_status(sts, status)
        await self._truncate_history(sts, revisions, pods, current, update)
        min_ready = int((sts.get("spec") or {}).get("minReadySeconds") or 0)
        if min_ready and status["readyReplicas"] > status["availableReplicas"]:
            # A pod turning available makes no event: look again when it will have.
            raise Requeue(after=float(min_ready))

    # ------------------------------------------------------------ pods and revisions

    async def _claim_pods(self, sts: Obj, selector: LabelSelector) -> dict[int, Obj]:
        """Member pods by ordinal, adopting matching orphans and releasing pods that stopped matching."""
        uid = sts["metadata"]["uid"]
        name = sts["metadata"]["name"]
        out: dict[int, Obj] = {}
        for pod in self.pods.list_by_namespace(sts["metadata"]["namespace"]):
            ref = controller_ref(pod)
            if ref is not None and ref.get("uid") != uid:
                continue
            ordinal = pod_ordinal(name, pod)
            matches = selector.matches(pod["metadata"].get("labels") or {}) and ordinal is not None
            if ref is None:
                if not matches or _deleting(pod):
                    continue
                refs = [*(pod["metadata"].get("ownerReferences") or []), owner_reference(sts)]
                adopted = await self._set_pod_owners(pod, refs)
                if adopted is None:
                    continue
                pod = adopted
            elif not matches:
                if not _deleting(pod):
                    await self._set_pod_owners(pod, [r for r in pod["metadata"].get("ownerReferences") or []
                                                     if r.get("uid") != uid])
                continue
            assert ordinal is not None
            out[ordinal] = pod
        return out

    async def _set_pod_owners(self, pod: Obj, refs: list[Obj]) -> Obj | None:
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

    async def _revisions(self, sts: Obj, revisions: list[Obj]) -> tuple[Obj, Obj, int]:
        """(current revision, update revision, collisionCount), creating the update revision if new."""
        revisions = sort_revisions(revisions)
        status = sts.get("status") or {}
        collisions = int(status.get("collisionCount") or 0)
        data = template_patch(sts)
        probe = {"data": data}
        equal = [r for r in revisions if equal_revision(r, probe)]
        if equal and equal[-1] is revisions[-1]:
            update = equal[-1]
        elif equal:
            # Back to an older template (a rollback): that revision becomes the newest.
            update = await self.revisions_rc.patch(equal[-1]["metadata"]["name"],
                                                   {"revision": next_revision(revisions)},
                                                   namespace=sts["metadata"]["namespace"])
        else:
            update, collisions = await create_revision(self.revisions_rc, sts, data, next_revision(revisions),
                                                       collisions)
        current = next((r for r in revisions if r["metadata"]["name"] == status.get("currentRevision")), update)
        return current, update, collisions

    async def _truncate_history(self, sts: Obj, revisions: list[Obj], pods: dict[int, Obj], current: Obj,
                                update: Obj) -> None:
        live = {current["metadata"]["name"], update["metadata"]["name"]}
        live.update(_revision_of(p) for p in pods.values())
        limit = int((sts.get("spec") or {}).get("revisionHistoryLimit", 10))
        candidates = [r for r in revisions if r["metadata"]["name"] not in live]
        for rev in revisions_to_prune(candidates, live, limit):
            try:
                await self.revisions_rc.delete(rev["metadata"]["name"], rev["metadata"]["namespace"])
            except StatusError as e:
                if e.code != 404:
                    raise

    # ------------------------------------------------------------ the ordered walk

    def _healthy(self, sts: Obj, pod: Obj, now: float) -> bool:
        min_ready = int((sts.get("spec") or {}).get("minReadySeconds") or 0)
        return (_phase(pod) == "Running" and not _deleting(pod)
                and is_pod_available(pod, min_ready, now))

    async def _sync(self, sts: Obj, pods: dict[int, Obj], current: Obj, update: Obj) -> None:
        spec = sts.get("spec") or {}
        start = int((spec.get("ordinals") or {}).get("start") or 0)
        end = start + int(spec.get("replicas") if spec.get("replicas") is not None else 1)
        monotonic = spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
        strategy = spec.get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
        now = time.time()
        condemned = sorted((o for o in pods if not start <= o < end), reverse=True)
        # Only the first unhealthy pod (in processing order) may be condemned while unhealthy.
        order = list(range(start, end)) + condemned
        first_unhealthy = next((o for o in order if o in pods and not self._healthy(sts, pods[o], now)), None)

        for ordinal in range(start, end):
            pod = pods.get(ordinal)
            if pod is not None and _phase(pod) in ("Failed", "Succeeded") and not _deleting(pod):
                # Recreated under the same name once it is gone.
                await self._delete_pod(pod)
                if monotonic:
                    return
                continue
            if pod is None:
                old_ordinal = rolling and ordinal < partition
                revision = current if old_ordinal else update
                if not await self._ensure_claims(sts, ordinal, None, condemned=False):
                    # Its claim from before is still going away: the pod waits for a fresh one
                    # rather than start on storage about to vanish (the claim's deletion wakes us).
                    if monotonic:
                        return
                    continue
                try:
                    await self.pods_rc.create(new_pod(sts, template_of(revision), ordinal,
                                                      revision["metadata"]["name"]), sts["metadata"]["namespace"])
                except StatusError as e:
                    # A pod we created a moment ago that the cache has not shown us yet.
                    if e.code != 409:
                        raise
                if monotonic:
                    return
                continue
            if not self._healthy(sts, pod, now) and monotonic:
                return
            await self._ensure_identity(sts, ordinal, pod)
            await self._ensure_claims(sts, ordinal, pod, condemned=False)

        for ordinal in condemned:
            pod = pods[ordinal]
            if _deleting(pod):
                if monotonic:
                    return
                continue
            if monotonic and not self._healthy(sts, pod, now) and ordinal != first_unhealthy:
                return
            await self._ensure_claims(sts, ordinal, pod, condemned=True)
            await self._delete_pod(pod)
            if monotonic:
                return

        if not rolling:
            return
        # Pods are replaced from the highest ordinal down, within the unavailability budget.
        replicas = end - start
        max_unavailable = max(1, scaled_value((strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1),
                                              replicas, False))
        unavailable = sum(1 for o in range(start, end) if o not in pods or not self._healthy(sts, pods[o], now))
        for ordinal in range(end - 1, max(start, partition) - 1, -1):
            pod = pods.get(ordinal)
            if pod is None or _deleting(pod) or _revision_of(pod) == update["metadata"]["name"]:
                continue
            healthy = self._healthy(sts, pod, now)
            if healthy and unavailable >= max_unavailable:
                break
            await self._delete_pod(pod)
            if healthy:
                unavailable += 1

    async def _delete_pod(self, pod: Obj) -> None:
        m = pod["metadata"]
        try:
            await self.pods_rc.delete(m["name"], m["namespace"], preconditions={"uid": m["uid"]})
        except StatusError as e:
            if e.code not in (404, 409):
                raise

    async def _ensure_identity(self, sts: Obj, ordinal: int, pod: Obj) -> None:
        """Adopted or older pods get the identity labels every member carries."""
        labels = pod["metadata"].get("labels") or {}
        want = {POD_NAME_LABEL: pod["metadata"]["name"], POD_INDEX_LABEL: str(ordinal)}
        if all(labels.get(k) == v for k, v in want.items()):
            return
        try:
            await self.pods_rc.patch(pod["metadata"]["name"], {"metadata": {"labels": want}},
                                     namespace=pod["metadata"]["namespace"])
        except StatusError as e:
            if e.code != 404:
                raise

    # ------------------------------------------------------------ claims

    def _claim_owners(self, sts: Obj, claim: Obj | None, pod: Obj | None, condemned: bool) -> list[Obj]:
        """The ownerReferences a claim should have under the retention policy."""
        policy = (sts.get("spec") or {}).get("persistentVolumeClaimRetentionPolicy") or {}
        when_deleted = policy.get("whenDeleted", "Retain")
        when_scaled = policy.get("whenScaled", "Retain")
        uid = sts["metadata"]["uid"]
        pod_name = f"{sts['metadata']['name']}-" if pod is None else pod["metadata"]["name"]
        refs = [r for r in ((claim or {}).get("metadata") or {}).get("ownerReferences") or []
                if r.get("uid") != uid and not (r.get("kind") == "Pod" and r.get("name") == pod_name)]
        scaled_away = condemned and when_scaled == "Delete" and pod is not None
        if scaled_away:
            # The claim goes when its pod does; the set no longer holds it.
            refs.append({"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                         "uid": pod["metadata"]["uid"]})
        elif when_deleted == "Delete":
            refs.append({"apiVersion": sts["apiVersion"], "kind": sts["kind"], "name": sts["metadata"]["name"],
                         "uid": uid})
        return refs

    async def _ensure_claims(self, sts: Obj, ordinal: int, pod: Obj | None, *, condemned: bool) -> bool:
        """Create missing claims and set their owners; False while one of them is being deleted."""
        ready = True
        ns = sts["metadata"]["namespace"]
        set_name = sts["metadata"]["name"]
        match_labels = ((sts.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        for tmpl in (sts.get("spec") or {}).get("volumeClaimTemplates") or []:
            tmeta = tmpl.get("metadata") or {}
            name = claim_name(tmeta["name"], set_name, ordinal)
            claim = self.claims.get(f"{ns}/{name}")
            refs = self._claim_owners(sts, claim, pod, condemned)
            if claim is None:
                if condemned:
                    continue
                meta: Obj = {"name": name, "namespace": ns,
                             "labels": {**(tmeta.get("labels") or {}), **match_labels}}
                if tmeta.get("annotations"):
                    meta["annotations"] = dict(tmeta["annotations"])
                if refs:
                    meta["ownerReferences"] = refs
                body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
                        "spec": copy.deepcopy(tmpl.get("spec") or {})}
                try:
                    await self.claims_rc.create(body, ns)
                except StatusError as e:
                    if e.code != 409:
                        raise
                continue
            if _deleting(claim):
                ready = False
                continue
            have = claim["metadata"].get("ownerReferences") or []
            if have == refs:
                continue
            patch = [{"op": "test", "path": "/metadata/uid", "value": claim["metadata"]["uid"]},
                     {"op": "replace" if "ownerReferences" in claim["metadata"] else "add",
                      "path": "/metadata/ownerReferences", "value": refs}]
            try:
                await self.claims_rc.patch(name, patch, namespace=ns, patch_type="json")
            except StatusError as e:
                if e.code not in (404, 409, 422):
                    raise
        return ready

    # ------------------------------------------------------------ status

    def _status(self, sts: Obj, pods: dict[int, Obj], current: Obj, update: Obj, collisions: int) -> Obj:
        min_ready = int((sts.get("spec") or {}).get("minReadySeconds") or 0)
        now = time.time()
        cur_name, upd_name = current["metadata"]["name"], update["metadata"]["name"]
        replicas = ready = available = current_n = updated = 0
        for pod in pods.values():
            if _deleting(pod):
                continue
            replicas += 1
            if is_pod_ready(pod) and _phase(pod) == "Running":
                ready += 1
                if is_pod_available(pod, min_ready, now):
                    available += 1
            rev = _revision_of(pod)
            if rev == cur_name:
                current_n += 1
            if rev == upd_name:
                updated += 1
        status: Obj = {"observedGeneration": sts["metadata"].get("generation") or 1, "replicas": replicas,
                       "readyReplicas": ready, "availableReplicas": available, "currentReplicas": current_n,
                       "updatedReplicas": updated, "currentRevision": cur_name, "updateRevision": upd_name,
                       "collisionCount": collisions}
        strategy = ((sts.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
        if strategy == "RollingUpdate" and updated == replicas and ready == replicas:
            # The rollout is complete: the update revision is now the current one.
            status["currentRevision"] = upd_name
            status["currentReplicas"] = updated
        return status

    async def _write_status(self, sts: Obj, status: Obj) -> None:
        have = sts.get("status") or {}
        if all(have.get(k, 0 if isinstance(v, int) else None) == v for k, v in status.items()):
            return
        m = sts["metadata"]
        try:
            await self.sets_rc.patch(m["name"], {"status": status}, namespace=m["namespace"],
                                     patch_type="merge", subresource="status")
        except StatusError as e:
            if e.code != 404:
                raise
