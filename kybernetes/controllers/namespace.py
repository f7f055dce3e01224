"""Namespace lifecycle: empty a Terminating namespace, then release it.

When a namespace has a deletionTimestamp, every namespaced object in it, of
every served resource, is deleted; once none remain the "kubernetes" spec
finalizer is removed through the finalize subresource and the server deletes
the namespace. Status conditions report what is left, as upstream.
"""

from __future__ import annotations

import logging
from typing import Any

from ..api.errors import StatusError
from .base import Controller, Requeue, key_of

log = logging.getLogger("kybernetes.controllers.namespace")


class NamespaceController(Controller):
    name = "namespace"

    def __init__(self, client, resources: list[tuple[str, str]]):
        """resources: (apiVersion, plural) of every namespaced resource to empty, one per storage."""
        super().__init__(client)
        self.resources = resources
        self.namespaces = self.informer("v1", "namespaces", namespaced=False, resync_period=300)
        self.namespaces.add_handler(on_add=self._on, on_update=lambda old, new: self._on(new))

    def _on(self, obj: dict[str, Any]) -> None:
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            self.enqueue(key_of(obj))

    async def reconcile(self, key: str) -> None:
        ns = self.namespaces.get(key)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        remaining: dict[str, int] = {}
        for api_version, plural in self.resources:
            rc = self.client.resource(api_version, plural, True)
            try:
                lst = await rc.list(key)
            except StatusError as e:
                if e.code in (404, 405):
                    continue
                raise
            items = lst.get("items") or []
            for item in items:
                m = item["metadata"]
                if m.get("deletionTimestamp"):
                    remaining[plural] = remaining.get(plural, 0) + 1
                    continue
                try:
                    await rc.delete(m["name"], key, propagation_policy="Background")
                except StatusError as e:
                    if e.code != 404:
                        raise
                remaining[plural] = remaining.get(plural, 0) + 1
        if remaining:
            await self._set_conditions(ns, remaining)
            # Deletions in flight (graceful pods, finalizers): look again soon.
            raise Requeue(after=1.0)
        spec_fins = (ns.get("spec") or {}).get("finalizers") or []
        if "kubernetes" in spec_fins:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": key},
                    "spec": {"finalizers": [f for f in spec_fins if f != "kubernetes"]}}
            try:
                await self.client.resource("v1", "namespaces", False).update_subresource(key, "finalize", body)
            except StatusError as e:
                if e.code != 404:
                    raise
            log.info("namespace %s emptied and finalized", key)

    async def _set_conditions(self, ns: dict[str, Any], remaining: dict[str, int]) -> None:
        name = ns["metadata"]["name"]
        msg = "Some resources are remaining: " + ", ".join(f"{p} has {n} resource instances"
                                                            for p, n in sorted(remaining.items()))
        cond = {"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
                "message": msg}
        have = (ns.get("status") or {}).get("conditions") or []
        if any(c.get("type") == cond["type"] and c.get("message") == msg for c in have):
            return
        try:
            await self.client.resource("v1", "namespaces", False).patch(
                name, {"status": {"conditions": [cond]}}, patch_type="merge", subresource="status")
        except StatusError:
            pass
