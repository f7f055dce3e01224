"""The resourcequota controller: every ResourceQuota's status.hard and status.used, recounted.

status.hard mirrors spec.hard; status.used is what the objects of the quota's
namespace use of each of those resources (within the quota's scopes), summed by
the same evaluators quota admission charges with (apiserver/quota.py) over this
controller's informer caches. Admission charges creates as they happen; this
loop gives back what deletions and finished pods free, counts what a new or
changed quota tracks, and heals any drift on each resync. Like upstream's, it
recounts a namespace's quotas on a quota's creation or spec change, on the
deletion of an object they track, on an update that may lower usage (a pod
reaching Succeeded or Failed, a Service changing type), and on the resync; not
on every create, which admission has already charged (recounting then would
forget creates still in flight). Status is written only when it differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..api.errors import StatusError
from ..apiserver.quota import (
    Evaluator,
    evaluator_for,
    observed_usage,
    parse_resource_list,
    resource_list_json,
)
from ..client import Client, Informer
from .base import Controller

log = logging.getLogger("kybernetes.controllers.resourcequota")

Obj = dict[str, Any]

# Kinds whose evaluators read more than metadata, and the plain counters always watched.
_FULL = (("v1", "pods"), ("v1", "services"), ("v1", "persistentvolumeclaims"))
_COUNTED = (("v1", "configmaps"), ("v1", "secrets"), ("v1", "replicationcontrollers"))


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _ns_of(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("namespace") or ""


def _rv(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion") or ""


class ResourceQuotaController(Controller):
    name = "resourcequota"

    def __init__(self, client: Client, resources: Sequence[tuple[str, str, str, bool]] = (), *,
                 resync_period: float = 300.0):
        """resources: (apiVersion, kind, plural, namespaced) of the served resources, so that quotas on
        count/<resource>.<group> of any of them are counted (pods, services, claims, configmaps,
        secrets and replication controllers always are); resync_period: how often every quota is
        recounted regardless of events."""
        super().__init__(client)
        self.api = client.resource("v1", "resourcequotas")
        self.quotas = self.informer("v1", "resourcequotas", resync_period=resync_period)
        self.quotas.add_handler(on_add=self._on_quota, on_update=self._on_quota_update)
        # (group, plural) -> (evaluator, informer of that resource)
        self.sources: dict[tuple[str, str], tuple[Evaluator, Informer]] = {}
        self._watch("v1", "resourcequotas", self.quotas)
        for api_version, plural in _FULL:
            self._watch(api_version, plural, self.informer(api_version, plural))
        wanted = list(_COUNTED) + [(av, plural) for av, _kind, plural, namespaced in resources if namespaced]
        for api_version, plural in wanted:
            group = _group(api_version)
            if (group, plural) not in self.sources:
                # Counting needs nothing but metadata (and shares the garbage collector's informers).
                self._watch(api_version, plural, self.informer(api_version, plural, metadata_only=True))

    def _watch(self, api_version: str, plural: str, inf: Informer) -> None:
        group = _group(api_version)
        ev = evaluator_for(group, plural)
        if ev is None:
            return
        self.sources[(group, plural)] = (ev, inf)
        if inf is self.quotas:
            return

        def on_update(old: Obj, new: Obj, _ev: Evaluator = ev) -> None:
            if _rv(old) != _rv(new) and _ev.released(old, new):
                self._recount(_ns_of(new), _ev)

        inf.add_handler(on_update=on_update, on_delete=lambda obj, _ev=ev: self._recount(_ns_of(obj), _ev))

    # ------------------------------------------------------------ events

    def _on_quota(self, q: Obj) -> None:
        self.enqueue(f"{_ns_of(q)}/{q['metadata']['name']}")

    def _on_quota_update(self, old: Obj, new: Obj) -> None:
        # Status writes (admission's charges among them) are not a reason to recount; a resync
        # (same object delivered again) and a changed spec are.
        spec, status = new.get("spec") or {}, new.get("status") or {}
        if _rv(old) == _rv(new) or old.get("spec") != spec or \
                not _same(parse_resource_list(spec.get("hard")), parse_resource_list(status.get("hard"))):
            self._on_quota(new)

    def _recount(self, ns: str, ev: Evaluator) -> None:
        """Enqueue the namespace's quotas that track anything the evaluator charges."""
        for q in self.quotas.list_by_namespace(ns):
            if ev.matching_resources(((q.get("spec") or {}).get("hard") or {}).keys()):
                self._on_quota(q)

    # ------------------------------------------------------------ reconcile

    def _objects(self, inf: Informer, ns: str) -> Callable[[], Iterable[Obj]]:
        return lambda: inf.list_by_namespace(ns)

    async def reconcile(self, key: str) -> None:
        q = self.quotas.get(key)
        if q is None:
            return
        ns = _ns_of(q)
        spec_hard = parse_resource_list((q.get("spec") or {}).get("hard"))
        status = q.get("status") or {}
        old_hard, old_used = parse_resource_list(status.get("hard")), parse_resource_list(status.get("used"))
        used = {**old_used, **observed_usage(q, [(ev, self._objects(inf, ns)) for ev, inf in self.sources.values()])}
        used = {name: v for name, v in used.items() if name in spec_hard}
        if status.get("hard") is not None and status.get("used") is not None and \
                _same(old_hard, spec_hard) and _same(old_used, used):
            return
        new = {**q, "status": {**status, "hard": resource_list_json(spec_hard), "used": resource_list_json(used)}}
        try:
            await self.api.update_status(new, ns)
        except StatusError as e:
            if e.code == 404:
                return  # deleted meanwhile
            raise  # 409: changed under us (a charge); retried with the newer one


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[n] == b[n] for n in a)
