"""The rules of persistent storage that several components must read alike.

Which PersistentVolume may serve which PersistentVolumeClaim (class, access
modes, volume mode, label selector, size, pre-binding), the annotations that
record a binding's progress, and what a StorageClass asks for. The PV
controller binds with these rules, the scheduler's VolumeBinding plugin
predicts with them whether a node can get a volume, and the DefaultStorageClass
admission step reads the default-class annotation. Pure functions over plain
objects; nothing here talks to the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .quantity import Quantity
from .selectors import InvalidSelector, from_label_selector_object

Obj = dict[str, Any]

ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_BETA_CLASS = "volume.beta.kubernetes.io/storage-class"
ANN_DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
ANN_BETA_DEFAULT_CLASS = "storageclass.beta.kubernetes.io/is-default-class"

PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"

IMMEDIATE = "Immediate"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
NO_PROVISIONER = "kubernetes.io/no-provisioner"


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def annotations(obj: Obj) -> dict[str, str]:
    return _meta(obj).get("annotations") or {}


def claim_class(claim: Obj) -> str:
    """The class a claim asks for: the beta annotation wins over spec.storageClassName, as upstream."""
    ann = annotations(claim)
    if ANN_BETA_CLASS in ann:
        return ann[ANN_BETA_CLASS] or ""
    return _spec(claim).get("storageClassName") or ""


def volume_class(pv: Obj) -> str:
    ann = annotations(pv)
    if ANN_BETA_CLASS in ann:
        return ann[ANN_BETA_CLASS] or ""
    return _spec(pv).get("storageClassName") or ""


def is_default_class(sc: Obj) -> bool:
    ann = annotations(sc)
    return ann.get(ANN_DEFAULT_CLASS) == "true" or ann.get(ANN_BETA_DEFAULT_CLASS) == "true"


def binding_mode(sc: Obj | None) -> str:
    return (sc or {}).get("volumeBindingMode") or IMMEDIATE


def _quantity(raw: Any) -> Quantity | None:
    try:
        return Quantity.parse(raw)
    except ValueError:
        return None


def claim_request(claim: Obj) -> Quantity:
    raw = ((_spec(claim).get("resources") or {}).get("requests") or {}).get("storage")
    return _quantity(raw) or Quantity(0)


def volume_capacity(pv: Obj) -> Quantity:
    return _quantity((_spec(pv).get("capacity") or {}).get("storage")) or Quantity(0)


def is_volume_bound_to_claim(pv: Obj, claim: Obj) -> bool:
    """Does the volume's claimRef name this claim (any uid when the ref has none)?"""
    ref = _spec(pv).get("claimRef")
    if not ref:
        return False
    cm = _meta(claim)
    if ref.get("name") != cm.get("name") or (ref.get("namespace") or "") != (cm.get("namespace") or ""):
        return False
    return not ref.get("uid") or ref.get("uid") == cm.get("uid")


def access_modes_ok(pv: Obj, claim: Obj) -> bool:
    have = set(_spec(pv).get("accessModes") or [])
    return all(m in have for m in _spec(claim).get("accessModes") or [])


def volume_mode_ok(pv: Obj, claim: Obj) -> bool:
    return (_spec(pv).get("volumeMode") or "Filesystem") == (_spec(claim).get("volumeMode") or "Filesystem")


def volume_satisfies_claim(pv: Obj, claim: Obj) -> str | None:
    """Why this volume cannot serve the claim it is asked for by name, or None when it can."""
    if volume_capacity(pv) < claim_request(claim):
        return "requested PV is too small"
    if volume_class(pv) != claim_class(claim):
        return "storageClassName does not match"
    if not volume_mode_ok(pv, claim):
        return "incompatible volumeMode"
    if not access_modes_ok(pv, claim):
        return "incompatible accessMode"
    return None


def find_matching_volume(claim: Obj, volumes: Iterable[Obj], *, delay_binding: bool = False,
                         node_ok: Callable[[Obj], bool] | None = None) -> Obj | None:
    """The volume the claim should bind to: a volume pre-bound to it, else the smallest fitting one.

    A fitting volume is Available, unclaimed, of the claim's class and volume
    mode, offers every access mode the claim asks for, matches its label
    selector and is at least as large as the request. With delayed binding and
    no node yet (``node_ok`` None) only a pre-bound volume is returned: choosing
    among the others is left until a node is known. ``node_ok`` says whether a
    volume is reachable from that node.
    """
    request = claim_request(claim)
    cls = claim_class(claim)
    try:
        selector = from_label_selector_object(_spec(claim).get("selector")) \
            if _spec(claim).get("selector") is not None else None
    except InvalidSelector:
        return None
    best: Obj | None = None
    best_size: Quantity | None = None
    for pv in volumes:
        if _meta(pv).get("deletionTimestamp"):
            continue
        if not volume_mode_ok(pv, claim):
            continue
        size = volume_capacity(pv)
        if node_ok is not None and not node_ok(pv):
            continue
        if is_volume_bound_to_claim(pv, claim):
            # Pre-bound to this claim: it wins if it fits at all.
            if size < request or volume_class(pv) != cls:
                continue
            return pv
        if node_ok is None and delay_binding:
            continue
        if (pv.get("status") or {}).get("phase") != "Available" or _spec(pv).get("claimRef"):
            continue
        if selector is not None and not selector.matches(_meta(pv).get("labels") or {}):
            continue
        if volume_class(pv) != cls or not access_modes_ok(pv, claim) or size < request:
            continue
        if best_size is None or size < best_size:
            best, best_size = pv, size
    return best


def claim_names(pod: Obj) -> list[str]:
    """The claims a pod's persistentVolumeClaim volumes use, in volume order."""
    return [(vol.get("persistentVolumeClaim") or {}).get("claimName") or ""
            for vol in _spec(pod).get("volumes") or [] if vol.get("persistentVolumeClaim") is not None]
