"""The garbage collector: ownerReferences with background, foreground and orphan propagation.

It watches every resource and keeps a graph of owners and dependents keyed by
uid. Work items are uids, and one reconcile decides, from the current state
alone, what a single object needs:

* an object being deleted with the ``foregroundDeletion`` finalizer deletes
  its dependents and drops the finalizer once no dependent that blocks owner
  deletion (``blockOwnerDeletion: true``) is left;
* an object being deleted with the ``orphan`` finalizer removes itself from
  its dependents' ownerReferences, then drops the finalizer;
* an object whose owners are all gone (checked against the live API, never
  only the cache) is deleted, in the foreground when an owner is waiting for
  its dependents; references to owners that are gone are removed when other
  owners remain.

Because the initial list enqueues everything, dependents of an owner that
vanished while the collector was down are collected when it starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..api.errors import StatusError
from ..client import Client
from .base import Controller, Requeue

log = logging.getLogger("kybernetes.controllers.gc")

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"


@dataclass
class Node:
    uid: str
    api_version: str
    kind: str
    namespace: str
    name: str
    owners: list[dict[str, Any]] = field(default_factory=list)
    finalizers: tuple[str, ...] = ()
    deleting: bool = False


class GarbageCollector(Controller):
    name = "garbage-collector"
    workers = 4

    def __init__(self, client: Client, resources: list[tuple[str, str, str, bool]]):
        """resources: (apiVersion, kind, plural, namespaced) of every resource to watch, one per storage."""
        super().__init__(client)
        self.nodes: dict[str, Node] = {}
        # owner uid -> dependent uids
        self.dependents: dict[str, set[str]] = {}
        for api_version, kind, plural, namespaced in resources:
            # Metadata is all the collector reads: the informers hold
            # PartialObjectMetadata, a fraction of the objects' size.
            inf = self.informer(api_version, plural, namespaced=namespaced, metadata_only=True)

            def observe(obj: dict[str, Any], _av: str = api_version, _k: str = kind) -> None:
                self._observe(obj, _av, _k)
            inf.add_handler(on_add=observe, on_update=lambda _old, new, _o=observe: _o(new),
                            on_delete=self._forget)

    # ------------------------------------------------------------ graph

    def _observe(self, obj: dict[str, Any], api_version: str, kind: str) -> None:
        m = obj.get("metadata") or {}
        uid = m.get("uid")
        if not uid:
            return
        old = self.nodes.get(uid)
        node = Node(uid, api_version, kind, m.get("namespace") or "",
                    m.get("name", ""), list(m.get("ownerReferences") or []), tuple(m.get("finalizers") or ()),
                    bool(m.get("deletionTimestamp")))
        if old is not None:
            for ref in old.owners:
                self.dependents.get(ref.get("uid", ""), set()).discard(uid)
        for ref in node.owners:
            self.dependents.setdefault(ref.get("uid", ""), set()).add(uid)
        self.nodes[uid] = node
        if node.owners or (node.deleting and (FOREGROUND in node.finalizers or ORPHAN in node.finalizers)):
            self.enqueue(uid)
        # An owner that appears, changes or starts deleting concerns its dependents.
        if old is None or node.deleting != old.deleting or node.finalizers != old.finalizers:
            for dep in self.dependents.get(uid, ()):
                self.enqueue(dep)

    def _forget(self, obj: dict[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        node = self.nodes.pop(uid, None) if uid else None
        if node is None:
            return
        for ref in node.owners:
            deps = self.dependents.get(ref.get("uid", ""))
            if deps is not None:
                deps.discard(uid)
                owner = self.nodes.get(ref.get("uid", ""))
                if owner is not None and owner.deleting:
                    self.enqueue(owner.uid)
        for dep in self.dependents.get(uid, ()):
            self.enqueue(dep)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            return
        if node.deleting and FOREGROUND in node.finalizers:
            await self._foreground(node)
            return
        if node.deleting and ORPHAN in node.finalizers:
            await self._orphan(node)
            return
        if node.owners:
            await self._check_owners(node)

    async def _resource(self, api_version: str, kind: str):
        return await self.client.for_kind(api_version, kind)

    async def _live(self, node: Node) -> dict[str, Any] | None:
        rc = await self._resource(node.api_version, node.kind)
        try:
            obj = await rc.get(node.name, node.namespace or None)
        except StatusError as e:
            if e.code == 404:
                return None
            raise
        return obj if (obj.get("metadata") or {}).get("uid") == node.uid else None

    async def _owner_state(self, ref: dict[str, Any], namespace: str) -> str:
        """'absent', 'present' or 'waiting' (being deleted in the foreground)."""
        try:
            rc = await self._resource(ref.get("apiVersion", ""), ref.get("kind", ""))
        except StatusError as e:
            if e.code == 404:
                # A kind the server does not serve cannot own anything that exists.
                return "absent"
            raise
        try:
            owner = await rc.get(ref.get("name", ""), namespace if rc.namespaced else None)
        except StatusError as e:
            if e.code == 404:
                return "absent"
            raise
        m = owner.get("metadata") or {}
        if m.get("uid") != ref.get("uid"):
            return "absent"
        if m.get("deletionTimestamp") and FOREGROUND in (m.get("finalizers") or []):
            return "waiting"
        return "present"

    async def _check_owners(self, node: Node) -> None:
        live = await self._live(node)
        if live is None:
            return
        refs = list((live.get("metadata") or {}).get("ownerReferences") or [])
        states = [(ref, await self._owner_state(ref, node.namespace)) for ref in refs]
        solid = [ref for ref, st in states if st == "present"]
        waiting = [ref for ref, st in states if st == "waiting"]
        absent = [ref for ref, st in states if st == "absent"]
        if not solid and not waiting:
            log.info("deleting %s %s/%s: all owners are gone", node.kind, node.namespace, node.name)
            await self._delete(node, "Background")
            return
        if absent:
            # Keep the owners that exist; drop the references to those that don't.
            keep = [ref for ref in refs if ref not in absent]
            await self._patch_owner_refs(node, live, keep)
            return
        if waiting and not solid:
            blocking = any(ref.get("blockOwnerDeletion") for ref in waiting)
            await self._delete(node, "Foreground" if blocking else "Background")

    async def _foreground(self, node: Node) -> None:
        live = await self._live(node)
        if live is None:
            return
        blocking_left = False
        for dep_uid in list(self.dependents.get(node.uid, ())):
            dep = self.nodes.get(dep_uid)
            if dep is None:
                continue
            ref = next((r for r in dep.owners if r.get("uid") == node.uid), None)
            if ref is None:
                continue
            if ref.get("blockOwnerDeletion"):
                blocking_left = True
            if not dep.deleting:
                await self._delete(dep, "Foreground" if self.dependents.get(dep.uid) else "Background")
        if blocking_left:
            # Dependents are on their way out; their deletion events re-enqueue this owner.
            raise Requeue(after=2.0)
        await self._remove_finalizer(node, live, FOREGROUND)

    async def _orphan(self, node: Node) -> None:
        live = await self._live(node)
        if live is None:
            return
        for dep_uid in list(self.dependents.get(node.uid, ())):
            dep = self.nodes.get(dep_uid)
            if dep is None:
                continue
            dep_live = await self._live(dep)
            if dep_live is None:
                continue
            refs = (dep_live.get("metadata") or {}).get("ownerReferences") or []
            keep = [r for r in refs if r.get("uid") != node.uid]
            if len(keep) != len(refs):
                await self._patch_owner_refs(dep, dep_live, keep)
        await self._remove_finalizer(node, live, ORPHAN)

    # ------------------------------------------------------------ writes

    async def _delete(self, node: Node, policy: str) -> None:
        rc = await self._resource(node.api_version, node.kind)
        try:
            await rc.delete(node.name, node.namespace or None, propagation_policy=policy,
                            preconditions={"uid": node.uid})
        except StatusError as e:
            if e.code not in (404, 409):
                raise

    async def _patch_owner_refs(self, node: Node, live: dict[str, Any], refs: list[dict[str, Any]]) -> None:
        rc = await self._resource(node.api_version, node.kind)
        m = live.get("metadata") or {}
        patch = [{"op": "test", "path": "/metadata/uid", "value": node.uid},
                 {"op": "replace" if "ownerReferences" in m else "add", "path": "/metadata/ownerReferences",
                  "value": refs}]
        try:
            await rc.patch(node.name, patch, namespace=node.namespace or None, patch_type="json")
        except StatusError as e:
            if e.code not in (404, 422):
                raise

    async def _remove_finalizer(self, node: Node, live: dict[str, Any], finalizer: str) -> None:
        rc = await self._resource(node.api_version, node.kind)
        m = live.get("metadata") or {}
        fins = [f for f in (m.get("finalizers") or []) if f != finalizer]
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": m.get("resourceVersion")},
                 {"op": "replace", "path": "/metadata/finalizers", "value": fins}]
        try:
            await rc.patch(node.name, patch, namespace=node.namespace or None, patch_type="json")
        except StatusError as e:
            if e.code == 404:
                return
            if e.code in (409, 422):
                raise Requeue() from None
            raise
