"""What the workload controllers share: pods from templates, controller references,
pod readiness and availability, and expectations.

Expectations are how a controller avoids acting twice on the same need: after
it asks for N creations it does not create again for that owner until it has
seen N pods appear (or a timeout passed), however many events arrive in between.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from ..api.pods import is_pod_ready, pod_condition  # noqa: F401 - is_pod_ready is part of this module's API
from ..api.selectors import InvalidSelector, LabelSelector, from_label_selector_object
from ..api.times import format_time, parse_time  # noqa: F401 - parse_time is part of this module's API
from ..client import Informer

Obj = dict[str, Any]

EXPECTATIONS_TTL = 300.0


def _spec_selector(owner: Obj) -> LabelSelector:
    return from_label_selector_object((owner.get("spec") or {}).get("selector"))


def selecting(owners: Informer, obj: Obj, selector_of: Callable[[Obj], LabelSelector] = _spec_selector) -> list[Obj]:
    """The objects in obj's namespace, from owners' cache, whose selector matches obj's labels.

    What an event on an orphan (or on any pod, for PodDisruptionBudgets) concerns.
    ``selector_of`` compiles an owner's selector (default: spec.selector as a
    metav1.LabelSelector); an invalid selector selects nothing.
    """
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    out = []
    for owner in owners.list_by_namespace(meta.get("namespace") or ""):
        try:
            if selector_of(owner).matches(labels):
                out.append(owner)
        except InvalidSelector:
            continue
    return out


def now_rfc3339() -> str:
    return format_time()


def owner_reference(owner: Obj, *, controller: bool = True) -> Obj:
    m = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": m["name"], "uid": m["uid"],
            "controller": controller, "blockOwnerDeletion": True}


def controller_ref(obj: Obj) -> Obj | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def pod_from_template(template: Obj, owner: Obj, *, name: str | None = None,
                      generate_name: str | None = None) -> Obj:
    """A Pod for `owner` from its pod template, controlled by it."""
    tmeta = template.get("metadata") or {}
    meta: Obj = {"namespace": owner["metadata"].get("namespace"),
                 "labels": dict(tmeta.get("labels") or {}),
                 "ownerReferences": [owner_reference(owner)]}
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    if tmeta.get("finalizers"):
        meta["finalizers"] = list(tmeta["finalizers"])
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = generate_name or (owner["metadata"]["name"] + "-")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})}


def is_pod_active(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not (pod.get("metadata") or {}).get("deletionTimestamp")


def is_pod_available(pod: Obj, min_ready_seconds: int, now: float | None = None) -> bool:
    """Ready for at least min_ready_seconds, as upstream's availability rule."""
    if not is_pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time((pod_condition(pod, "Ready") or {}).get("lastTransitionTime"))
    if since is None:
        return False
    return (now if now is not None else time.time()) - since >= min_ready_seconds


class Expectations:
    """Per-owner counts of creations and deletions asked for but not yet observed."""

    def __init__(self, ttl: float = EXPECTATIONS_TTL):
        self.ttl = ttl
        self._adds: dict[str, int] = {}
        self._dels: dict[str, set[str]] = {}
        self._stamp: dict[str, float] = {}

    def expect_creations(self, key: str, n: int) -> None:
        self._adds[key] = self._adds.get(key, 0) + n
        self._stamp[key] = time.monotonic()

    def expect_deletions(self, key: str, pod_keys: list[str]) -> None:
        self._dels.setdefault(key, set()).update(pod_keys)
        self._stamp[key] = time.monotonic()

    def creation_observed(self, key: str) -> None:
        if self._adds.get(key, 0) > 0:
            self._adds[key] -= 1

    def creation_failed(self, key: str) -> None:
        self.creation_observed(key)

    def deletion_observed(self, key: str, pod_key: str) -> None:
        dels = self._dels.get(key)
        if dels:
            dels.discard(pod_key)

    def satisfied(self, key: str) -> bool:
        if self._adds.get(key, 0) <= 0 and not self._dels.get(key):
            return True
        # Events can be lost (a watch restart between create and observe):
        # after the TTL the controller looks at the world afresh.
        return time.monotonic() - self._stamp.get(key, 0) > self.ttl

    def forget(self, key: str) -> None:
        self._adds.pop(key, None)
        self._dels.pop(key, None)
        self._stamp.pop(key, None)
