"""The PersistentVolume controller: binds claims to volumes, provisions local-path volumes, reclaims.

Binding follows upstream's rules (see api/storage.py for the matching): a
claim naming a volume (``spec.volumeName``) gets that volume if it fits; a
volume whose ``claimRef`` names a claim is pre-bound to it and wins; otherwise
the smallest Available volume of the claim's class, access modes, volume mode
and label selector that holds the request. A binding is written in upstream's
order, each step idempotent so an interrupted one is finished by the next
sync: the volume's ``claimRef`` (annotated ``pv.kubernetes.io/bound-by-controller``
when the controller chose it), the volume's phase Bound, the claim's
``volumeName`` and ``pv.kubernetes.io/bind-completed``, the claim's status
(phase Bound, capacity and access modes of the volume).

A volume whose claim is gone is Released and then reclaimed: Retain keeps it
(an administrator decides), Delete deletes it, and the directory too when this
controller provisioned it. A claim whose volume vanished is Lost.

Claims of a class whose ``volumeBindingMode`` is WaitForFirstConsumer are left
alone until the scheduler has picked a node for a pod using them and written
it to the claim's ``volume.kubernetes.io/selected-node`` annotation; then the
claim gets a static volume reachable from that node, or a provisioned one.

**The local-path provisioner** (the ``local-path`` class, default, as k3s
ships it) makes a directory ``<storage_dir>/pvc-<uid>_<namespace>_<claim>``
and a PV for it: ``hostPath`` with type DirectoryOrCreate and node affinity to
the selected node, reclaim policy from the class. The controller creates the
directory itself, which serves a single-node server (its data dir is the
node's disk); a kubelet on another machine creates the same path on its own
disk when it first mounts the volume (DirectoryOrCreate), and the node
affinity keeps the claim's pods on that node from then on. Removing the
directory of a deleted volume only happens on the controller's machine: on
another node it is left behind (upstream's local-path provisioner runs a
helper pod on the node for that; this one does not).

Protection, as upstream's two small protection controllers: claims carry the
``kubernetes.io/pvc-protection`` finalizer, removed once the claim is being
deleted and no running pod uses it; volumes carry ``kubernetes.io/pv-protection``,
removed once a deleted volume is no longer Bound. So a StatefulSet's claim
deleted with the set keeps its data until its pod is really gone.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from typing import Any

from ..api.errors import StatusError
from ..api.storage import (
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_BIND_COMPLETED,
    ANN_BOUND_BY_CONTROLLER,
    ANN_DEFAULT_CLASS,
    ANN_PROVISIONED_BY,
    ANN_SELECTED_NODE,
    ANN_STORAGE_PROVISIONER,
    PV_PROTECTION,
    PVC_PROTECTION,
    WAIT_FOR_FIRST_CONSUMER,
    annotations,
    binding_mode,
    claim_class,
    claim_names,
    find_matching_volume,
    is_volume_bound_to_claim,
    volume_satisfies_claim,
)
from ..api.times import format_time
from ..client import Client
from ..scheduler.nodeinfo import NodeSelector
from .base import Controller, Requeue

log = logging.getLogger("kybernetes.controllers.persistentvolume")

Obj = dict[str, Any]

LOCAL_PATH_PROVISIONER = "kybernetes.io/local-path"
LOCAL_PATH_CLASS = "local-path"
HOSTNAME_LABEL = "kubernetes.io/hostname"
COMPONENT = "persistentvolume-controller"
_CLAIM = "pvc/"
_VOLUME = "pv/"


def local_path_storage_class() -> Obj:
    """The built-in default class: directories on the node, made when a pod first needs one."""
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": LOCAL_PATH_CLASS, "annotations": {ANN_DEFAULT_CLASS: "true"}},
            "provisioner": LOCAL_PATH_PROVISIONER, "reclaimPolicy": "Delete",
            "volumeBindingMode": WAIT_FOR_FIRST_CONSUMER}


def volume_node_selector(pv: Obj) -> NodeSelector | None:
    required = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required"))
    return NodeSelector(required) if required else None


def volume_reachable(pv: Obj, node: Obj | None) -> bool:
    """Can a pod on `node` use this volume (its node affinity, if any, matches the node)?"""
    sel = volume_node_selector(pv)
    if sel is None:
        return True
    if node is None:
        return False
    meta = node.get("metadata") or {}
    return sel.matches(meta.get("labels") or {}, meta.get("name") or "")


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def _phase(obj: Obj) -> str:
    return (obj.get("status") or {}).get("phase") or ""


def _deleting(obj: Obj) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def _claim_key(ns: str, name: str) -> str:
    return f"{_CLAIM}{ns}/{name}"


class PersistentVolumeController(Controller):
    name = "persistentvolume-binder-controller"
    component = COMPONENT

    def __init__(self, client: Client, *, storage_dir: str | None = None, resync_period: float = 15.0,
                 in_use_recheck: float = 1.0):
        """storage_dir: where local-path volumes are made; None leaves their claims to someone else."""
        super().__init__(client)
        self.storage_dir = os.path.abspath(storage_dir) if storage_dir else None
        self.in_use_recheck = in_use_recheck
        self.claims = self.informer("v1", "persistentvolumeclaims", resync_period=resync_period)
        self.volumes = self.informer("v1", "persistentvolumes", namespaced=False, resync_period=resync_period)
        self.classes = self.informer("storage.k8s.io/v1", "storageclasses", namespaced=False)
        self.volumes.add_index("claim", _volume_claim_index)
        self.claims.add_handler(on_add=self._claim_event, on_update=lambda _o, n: self._claim_event(n),
                                on_delete=self._claim_deleted)
        self.volumes.add_handler(on_add=self._volume_event, on_update=self._volume_updated,
                                 on_delete=self._volume_deleted)
        self.classes.add_handler(on_add=lambda _c: self._enqueue_unbound(),
                                 on_update=lambda _o, _n: self._enqueue_unbound())
        # Pods, for claim protection: a deleting claim is released when no pod uses it.
        self.pods = self.informer("v1", "pods")
        self.pods.add_handler(on_update=lambda _o, n: self._pod_changed(n), on_delete=self._pod_changed)
        self.claims_rc = client.resource("v1", "persistentvolumeclaims")
        self.volumes_rc = client.resource("v1", "persistentvolumes", namespaced=False)
        self.classes_rc = client.resource("storage.k8s.io/v1", "storageclasses", namespaced=False)
        self.nodes_rc = client.resource("v1", "nodes", namespaced=False)
        self.pods_rc = client.resource("v1", "pods")

    async def start(self) -> None:
        if self.storage_dir is not None:
            os.makedirs(self.storage_dir, mode=0o755, exist_ok=True)
            try:
                await self.classes_rc.create(local_path_storage_class())
            except StatusError as e:
                if e.code != 409:
                    log.warning("creating storage class %s: %s", LOCAL_PATH_CLASS, e.message)
        await super().start()

    # ------------------------------------------------------------ event handlers

    def _pod_changed(self, pod: Obj) -> None:
        ns = _meta(pod).get("namespace") or ""
        for name in claim_names(pod):
            claim = self.claims.get_by_name(name, ns)
            if claim is not None and _meta(claim).get("deletionTimestamp"):
                self.enqueue(_claim_key(ns, name))

    def _claim_event(self, claim: Obj) -> None:
        m = _meta(claim)
        self.enqueue(_claim_key(m.get("namespace") or "", m.get("name") or ""))
        if _spec(claim).get("volumeName"):
            self.enqueue(_VOLUME + _spec(claim)["volumeName"])

    def _claim_deleted(self, claim: Obj) -> None:
        m = _meta(claim)
        if _spec(claim).get("volumeName"):
            self.enqueue(_VOLUME + _spec(claim)["volumeName"])
        for pv in self.volumes.by_index("claim", f"{m.get('namespace')}/{m.get('name')}"):
            self.enqueue(_VOLUME + _meta(pv)["name"])

    def _volume_event(self, pv: Obj, was_free: bool = False) -> None:
        self.enqueue(_VOLUME + (_meta(pv).get("name") or ""))
        ref = _spec(pv).get("claimRef")
        if ref:
            self.enqueue(_claim_key(ref.get("namespace") or "", ref.get("name") or ""))
        elif _phase(pv) == "Available" and not was_free:
            # A volume newly free for anyone: pending claims may fit it now.
            self._enqueue_unbound()

    def _volume_updated(self, old: Obj, new: Obj) -> None:
        self._volume_event(new, was_free=_phase(old) == "Available" and not _spec(old).get("claimRef"))
        ref = _spec(old).get("claimRef")
        if ref and ref != _spec(new).get("claimRef"):
            self.enqueue(_claim_key(ref.get("namespace") or "", ref.get("name") or ""))

    def _volume_deleted(self, pv: Obj) -> None:
        ref = _spec(pv).get("claimRef")
        if ref:
            self.enqueue(_claim_key(ref.get("namespace") or "", ref.get("name") or ""))

    def _enqueue_unbound(self) -> None:
        for claim in self.claims.list():
            if annotations(claim).get(ANN_BIND_COMPLETED) != "yes":
                m = _meta(claim)
                self.enqueue(_claim_key(m.get("namespace") or "", m.get("name") or ""))

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        if key.startswith(_CLAIM):
            await self.sync_claim(key[len(_CLAIM):])
        elif key.startswith(_VOLUME):
            await self.sync_volume(key[len(_VOLUME):])

    async def sync_claim(self, key: str) -> None:
        claim = self.claims.get(key)
        if claim is None:
            return
        if _deleting(claim):
            await self._release_claim_protection(claim)
            return
        claim = await self._ensure_finalizer(self.claims_rc, claim, PVC_PROTECTION)
        if annotations(claim).get(ANN_BIND_COMPLETED) != "yes":
            await self._sync_unbound_claim(claim)
        else:
            await self._sync_bound_claim(claim)

    async def sync_volume(self, name: str) -> None:
        pv = self.volumes.get(name)
        if pv is None:
            return
        if _deleting(pv):
            if _phase(pv) != "Bound" or self._bound_claim(pv) is None:
                await self._remove_finalizer(self.volumes_rc, pv, PV_PROTECTION)
            return
        pv = await self._ensure_finalizer(self.volumes_rc, pv, PV_PROTECTION)
        ref = _spec(pv).get("claimRef")
        if not ref or not ref.get("uid"):
            # Free, or pre-bound by a user to a claim that has not come to it yet.
            await self._volume_phase(pv, "Available")
            return
        claim = self._bound_claim(pv)
        if claim is None:
            if _phase(pv) not in ("Released", "Failed"):
                # The cache may not show a claim created a moment ago: ask the API before releasing.
                try:
                    fresh = await self.claims_rc.get(ref.get("name") or "", ref.get("namespace") or "")
                except StatusError as e:
                    if e.code != 404:
                        raise
                    fresh = None
                if fresh is not None and _meta(fresh).get("uid") == ref.get("uid"):
                    raise Requeue(after=0.5)
                pv = await self._volume_phase(pv, "Released")
            await self._reclaim(pv)
            return
        volume_name = _spec(claim).get("volumeName")
        if not volume_name:
            # The claim's side of the binding is not written yet; its own sync finishes it.
            self.enqueue(_claim_key(_meta(claim)["namespace"], _meta(claim)["name"]))
            return
        if volume_name == name:
            await self._volume_phase(pv, "Bound")
            return
        # The claim went to another volume.
        if annotations(pv).get(ANN_BOUND_BY_CONTROLLER) != "yes":
            return  # a user's pre-binding: theirs to fix
        if annotations(pv).get(ANN_PROVISIONED_BY) and _spec(pv).get("persistentVolumeReclaimPolicy") == "Delete":
            # Provisioned for a claim that does not want it: give it back.
            pv = await self._volume_phase(pv, "Released")
            await self._reclaim(pv)
            return
        await self._unbind_volume(pv)

    def _bound_claim(self, pv: Obj) -> Obj | None:
        """The claim the volume's claimRef names, if it exists with that uid."""
        ref = _spec(pv).get("claimRef") or {}
        claim = self.claims.get(f"{ref.get('namespace') or ''}/{ref.get('name') or ''}")
        if claim is None or (ref.get("uid") and _meta(claim).get("uid") != ref.get("uid")):
            return None
        return claim

    # ------------------------------------------------------------ claims

    async def _sync_unbound_claim(self, claim: Obj) -> None:
        spec = _spec(claim)
        requested = spec.get("volumeName")
        if requested:
            await self._sync_requested_volume(claim, requested)
            return
        cls = claim_class(claim)
        sc = self.classes.get(cls) if cls else None
        delay = sc is not None and binding_mode(sc) == WAIT_FOR_FIRST_CONSUMER
        selected = annotations(claim).get(ANN_SELECTED_NODE)
        node_ok = None
        if delay and selected:
            node = await self._node(selected)
            node_ok = lambda pv: volume_reachable(pv, node)  # noqa: E731
        pv = find_matching_volume(claim, self.volumes.list(), delay_binding=delay, node_ok=node_ok)
        if pv is not None:
            await self._bind(pv, claim)
            return
        if delay and not selected:
            await self._event(claim, "Normal", "WaitForFirstConsumer",
                              "waiting for first consumer to be created before binding")
        elif cls:
            claim = await self._provision(claim, cls, sc)
        else:
            await self._event(claim, "Normal", "FailedBinding",
                              "no persistent volumes available for this claim and no storage class is set")
        await self._claim_phase(claim, "Pending")

    async def _sync_requested_volume(self, claim: Obj, name: str) -> None:
        pv = self.volumes.get(name)
        if pv is None:
            await self._claim_phase(claim, "Pending")
            return
        if not _spec(pv).get("claimRef"):
            why = volume_satisfies_claim(pv, claim)
            if why:
                await self._event(claim, "Warning", "VolumeMismatch",
                                  f'Cannot bind to requested volume "{name}": {why}')
                await self._claim_phase(claim, "Pending")
                return
            await self._bind(pv, claim)
        elif is_volume_bound_to_claim(pv, claim):
            await self._bind(pv, claim)
        else:
            await self._event(claim, "Warning", "FailedBinding",
                              f'volume "{name}" already bound to a different claim.')
            await self._claim_phase(claim, "Pending")

    async def _sync_bound_claim(self, claim: Obj) -> None:
        name = _spec(claim).get("volumeName")
        pv = self.volumes.get(name) if name else None
        if pv is None:
            if _phase(claim) != "Lost":
                await self._event(claim, "Warning", "ClaimLost",
                                  "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!")
            await self._claim_phase(claim, "Lost")
            return
        ref = _spec(pv).get("claimRef")
        if not ref or is_volume_bound_to_claim(pv, claim):
            await self._bind(pv, claim)
            return
        if _phase(claim) != "Lost":
            await self._event(claim, "Warning", "ClaimMisbound",
                              "Two claims are bound to the same volume, this one is bound incorrectly")
        await self._claim_phase(claim, "Lost")

    async def _release_claim_protection(self, claim: Obj) -> None:
        if PVC_PROTECTION not in (_meta(claim).get("finalizers") or []):
            return
        m = _meta(claim)

        def in_use(pods: list[Obj]) -> bool:
            return any((pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                       and m["name"] in claim_names(pod) for pod in pods)
        if in_use(self.pods.list_by_namespace(m["namespace"])):
            return  # the pod's update or deletion brings the claim back here
        # The cache may lag a pod that was just created with this claim: ask the
        # API server before letting the claim go, as upstream's protection does.
        if in_use((await self.pods_rc.list(m["namespace"]))["items"]):
            raise Requeue(after=self.in_use_recheck)
        await self._remove_finalizer(self.claims_rc, claim, PVC_PROTECTION)

    # ------------------------------------------------------------ binding

    async def _bind(self, pv: Obj, claim: Obj) -> None:
        """Write the binding in upstream's order; every step is skipped when already done."""
        pv = await self._bind_volume_to_claim(pv, claim)
        pv = await self._volume_phase(pv, "Bound")
        claim = await self._bind_claim_to_volume(claim, pv)
        await self._claim_status_bound(claim, pv)

    async def _bind_volume_to_claim(self, pv: Obj, claim: Obj) -> Obj:
        ref = _spec(pv).get("claimRef")
        cm = _meta(claim)
        if ref and ref.get("uid") == cm.get("uid") and ref.get("name") == cm.get("name") \
                and ref.get("namespace") == cm.get("namespace"):
            return pv
        new = copy.deepcopy(pv)
        new["spec"]["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": cm["namespace"],
                                   "name": cm["name"], "uid": cm["uid"], "apiVersion": "v1",
                                   "resourceVersion": cm.get("resourceVersion")}
        if not ref:
            new["metadata"].setdefault("annotations", {})[ANN_BOUND_BY_CONTROLLER] = "yes"
        return await self.volumes_rc.update(new)

    async def _bind_claim_to_volume(self, claim: Obj, pv: Obj) -> Obj:
        new = copy.deepcopy(claim)
        ann = new["metadata"].setdefault("annotations", {})
        dirty = False
        if not _spec(claim).get("volumeName"):
            new["spec"]["volumeName"] = _meta(pv)["name"]
            ann[ANN_BOUND_BY_CONTROLLER] = "yes"
            dirty = True
        if ann.get(ANN_BIND_COMPLETED) != "yes":
            ann[ANN_BIND_COMPLETED] = "yes"
            dirty = True
        return await self.claims_rc.update(new) if dirty else claim

    async def _claim_status_bound(self, claim: Obj, pv: Obj) -> None:
        status = claim.get("status") or {}
        want = {"phase": "Bound", "accessModes": list(_spec(pv).get("accessModes") or []),
                "capacity": dict(_spec(pv).get("capacity") or {})}
        if all(status.get(k) == v for k, v in want.items()):
            return
        new = copy.deepcopy(claim)
        new["status"] = {**status, **want}
        await self.claims_rc.update_status(new)
        if _phase(claim) != "Bound":
            log.info("claim %s/%s bound to volume %s", _meta(claim)["namespace"], _meta(claim)["name"],
                     _meta(pv)["name"])

    async def _claim_phase(self, claim: Obj, phase: str) -> Obj:
        if _phase(claim) == phase:
            return claim
        new = copy.deepcopy(claim)
        new.setdefault("status", {})["phase"] = phase
        return await self.claims_rc.update_status(new)

    async def _volume_phase(self, pv: Obj, phase: str, message: str = "") -> Obj:
        status = pv.get("status") or {}
        if status.get("phase") == phase and (status.get("message") or "") == message:
            return pv
        new = copy.deepcopy(pv)
        st: Obj = {"phase": phase, "lastPhaseTransitionTime": format_time()}
        if message:
            st["message"] = message
        new["status"] = st
        return await self.volumes_rc.update_status(new)

    async def _unbind_volume(self, pv: Obj) -> None:
        new = copy.deepcopy(pv)
        new["spec"].pop("claimRef", None)
        (new["metadata"].get("annotations") or {}).pop(ANN_BOUND_BY_CONTROLLER, None)
        pv = await self.volumes_rc.update(new)
        await self._volume_phase(pv, "Available")

    # ------------------------------------------------------------ provisioning

    async def _provision(self, claim: Obj, cls: str, sc: Obj | None) -> Obj:
        """Provision a volume for the claim (local-path), or say who is expected to; returns the claim."""
        if sc is None:
            await self._event(claim, "Warning", "ProvisioningFailed", f'storageclass.storage.k8s.io "{cls}" not found')
            return claim
        provisioner = sc.get("provisioner") or ""
        cm = _meta(claim)
        claim = await self._set_provisioner(claim, provisioner)
        if provisioner != LOCAL_PATH_PROVISIONER or self.storage_dir is None:
            await self._event(claim, "Normal", "ExternalProvisioning",
                              f"Waiting for a volume to be created either by the external provisioner '{provisioner}' "
                              "or manually by the system administrator. If volume creation is delayed, please "
                              "verify that the provisioner is running and correctly registered.")
            return claim
        name = f"pvc-{cm['uid']}"
        if self.volumes.get(name) is not None:
            return claim  # made already; its binding follows from its own event
        node_name = annotations(claim).get(ANN_SELECTED_NODE)
        path = os.path.join(self.storage_dir, f"{name}_{cm['namespace']}_{cm['name']}")
        os.makedirs(path, exist_ok=True)
        # Any container user may write into its volume, as with upstream's local-path provisioner.
        os.chmod(path, 0o777)
        spec = _spec(claim)
        pv_spec: Obj = {
            "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage")},
            "accessModes": list(spec.get("accessModes") or []),
            "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy") or "Delete",
            "storageClassName": cls,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": cm["namespace"], "name": cm["name"],
                         "uid": cm["uid"], "apiVersion": "v1", "resourceVersion": cm.get("resourceVersion")},
        }
        if sc.get("mountOptions"):
            pv_spec["mountOptions"] = list(sc["mountOptions"])
        if node_name:
            pv_spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [await self._hostname(node_name)]}]}]}}
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": name, "annotations": {ANN_PROVISIONED_BY: provisioner},
                           "finalizers": [PV_PROTECTION]},
              "spec": pv_spec}
        try:
            await self.volumes_rc.create(pv)
        except StatusError as e:
            if e.code == 409:
                return claim
            await self._event(claim, "Warning", "ProvisioningFailed", f"Failed to provision volume: {e.message}")
            raise
        log.info("provisioned %s at %s for claim %s/%s", name, path, cm["namespace"], cm["name"])
        await self._event(claim, "Normal", "ProvisioningSucceeded",
                          f"Successfully provisioned volume {name} using {provisioner}")
        return claim

    async def _set_provisioner(self, claim: Obj, provisioner: str) -> Obj:
        ann = annotations(claim)
        if ann.get(ANN_STORAGE_PROVISIONER) == provisioner and ann.get(ANN_BETA_STORAGE_PROVISIONER) == provisioner:
            return claim
        new = copy.deepcopy(claim)
        a = new["metadata"].setdefault("annotations", {})
        a[ANN_STORAGE_PROVISIONER] = provisioner
        a[ANN_BETA_STORAGE_PROVISIONER] = provisioner
        return await self.claims_rc.update(new)

    async def _node(self, name: str) -> Obj | None:
        try:
            return await self.nodes_rc.get(name)
        except StatusError as e:
            if e.code == 404:
                return None
            raise

    async def _hostname(self, node_name: str) -> str:
        node = await self._node(node_name)
        return ((_meta(node or {}).get("labels") or {}).get(HOSTNAME_LABEL)) or node_name

    # ------------------------------------------------------------ reclaiming

    async def _reclaim(self, pv: Obj) -> None:
        policy = _spec(pv).get("persistentVolumeReclaimPolicy") or "Retain"
        if policy == "Retain":
            return
        name = _meta(pv)["name"]
        if policy == "Recycle":
            if _phase(pv) != "Failed":
                await self._event(pv, "Warning", "VolumeFailedRecycle", "No recycler plugin found for the volume!")
                await self._volume_phase(pv, "Failed", "No recycler plugin found for the volume!")
            return
        provisioner = annotations(pv).get(ANN_PROVISIONED_BY)
        if provisioner == LOCAL_PATH_PROVISIONER:
            self._remove_directory(pv)
        elif provisioner:
            return  # its provisioner deletes what it made
        else:
            if _phase(pv) != "Failed":
                msg = f'error getting deleter volume plugin for volume "{name}": no deletable volume plugin matched'
                await self._event(pv, "Warning", "VolumeFailedDelete", msg)
                await self._volume_phase(pv, "Failed", msg)
            return
        try:
            await self.volumes_rc.delete(name, preconditions={"uid": _meta(pv)["uid"]})
        except StatusError as e:
            if e.code not in (404, 409):
                raise
        log.info("deleted released volume %s", name)

    def _remove_directory(self, pv: Obj) -> None:
        path = (_spec(pv).get("hostPath") or _spec(pv).get("local") or {}).get("path") or ""
        if not path or self.storage_dir is None:
            return
        real = os.path.realpath(path)
        # Only ever a directory this provisioner made, never anything a PV merely points at.
        if os.path.dirname(real) != os.path.realpath(self.storage_dir) or \
                not os.path.basename(real).startswith("pvc-"):
            log.warning("not removing %s of volume %s: outside %s", path, _meta(pv)["name"], self.storage_dir)
            return
        shutil.rmtree(real, ignore_errors=True)

    # ------------------------------------------------------------ finalizers

    async def _ensure_finalizer(self, rc: Any, obj: Obj, finalizer: str) -> Obj:
        finalizers = _meta(obj).get("finalizers") or []
        if finalizer in finalizers:
            return obj
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [*finalizers, finalizer]
        return await rc.update(new)

    async def _remove_finalizer(self, rc: Any, obj: Obj, finalizer: str) -> None:
        finalizers = _meta(obj).get("finalizers") or []
        if finalizer not in finalizers:
            return
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in finalizers if f != finalizer]
        try:
            await rc.update(new)
        except StatusError as e:
            if e.code != 404:
                raise

    # ------------------------------------------------------------ events

    async def _event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        self.recorder.event(obj, type_, reason, message)


def _volume_claim_index(pv: Obj) -> list[str]:
    ref = _spec(pv).get("claimRef")
    return [f"{ref.get('namespace') or ''}/{ref.get('name') or ''}"] if ref else []
