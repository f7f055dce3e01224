"""Per-namespace service account plumbing: the ``default`` ServiceAccount and the ``kube-root-ca.crt`` ConfigMap.

ServiceAccountController gives every active namespace a ServiceAccount named
``default`` (made again if someone deletes it), which is what a pod runs as
unless it names another. RootCACertPublisher keeps a ConfigMap
``kube-root-ca.crt`` with key ``ca.crt`` holding the cluster CA in every
active namespace, so pods can check the API server's certificate through
their mounted service account volume. Both work per namespace key; a
terminating namespace is left alone (its content is being emptied).
"""

from __future__ import annotations

import logging
from typing import Any

from ..api.errors import StatusError
from ..client import Client, Informer
from ..client.informer import strip_managed_fields
from .base import Controller

log = logging.getLogger("kybernetes.controllers.serviceaccount")

Obj = dict[str, Any]

DEFAULT_ACCOUNTS = ("default",)
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
DESCRIPTION_ANNOTATION = "kubernetes.io/description"
ROOT_CA_DESCRIPTION = ("The cluster CA bundle, to verify the API server's certificate when reaching it from a pod "
                       "(the kubernetes service, kubernetes.default.svc).")


def _active(ns: Obj | None) -> bool:
    return ns is not None and not (ns.get("metadata") or {}).get("deletionTimestamp") and \
        (ns.get("status") or {}).get("phase", "Active") == "Active"


def _ns_of(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("namespace") or ""


class ServiceAccountController(Controller):
    name = "serviceaccount"

    def __init__(self, client: Client, accounts: tuple[str, ...] = DEFAULT_ACCOUNTS):
        super().__init__(client)
        self.accounts = accounts
        self.api = client.resource("v1", "serviceaccounts")
        self.namespaces = self.informer("v1", "namespaces", namespaced=False, resync_period=300)
        self.serviceaccounts = self.informer("v1", "serviceaccounts")
        self.namespaces.add_handler(on_add=self._on_ns, on_update=lambda _old, new: self._on_ns(new))
        self.serviceaccounts.add_handler(on_delete=lambda sa: self.enqueue(_ns_of(sa)))

    def _on_ns(self, ns: Obj) -> None:
        if _active(ns):
            self.enqueue(ns["metadata"]["name"])

    async def reconcile(self, key: str) -> None:
        if not _active(self.namespaces.get(key)):
            return
        for name in self.accounts:
            if self.serviceaccounts.get(f"{key}/{name}") is not None:
                continue
            try:
                await self.api.create({"apiVersion": "v1", "kind": "ServiceAccount",
                                       "metadata": {"name": name, "namespace": key}}, key)
            except StatusError as e:
                # Already there (the cache lags), or the namespace started terminating meanwhile.
                if e.code not in (403, 404, 409):
                    raise


class RootCACertPublisher(Controller):
    name = "root-ca-cert-publisher"

    def __init__(self, client: Client, root_ca: str):
        super().__init__(client)
        self.root_ca = root_ca
        self.api = client.resource("v1", "configmaps")
        self.namespaces = self.informer("v1", "namespaces", namespaced=False, resync_period=300)
        # Only the one ConfigMap per namespace this controller owns: not every ConfigMap of the cluster.
        self.configmaps = Informer(self.api, field_selector=f"metadata.name={ROOT_CA_CONFIGMAP}",
                                   transform=strip_managed_fields)
        self.informers.append(self.configmaps)
        self.namespaces.add_handler(on_add=self._on_ns, on_update=lambda _old, new: self._on_ns(new))
        self.configmaps.add_handler(on_add=lambda cm: self.enqueue(_ns_of(cm)),
                                    on_update=lambda _old, new: self.enqueue(_ns_of(new)),
                                    on_delete=lambda cm: self.enqueue(_ns_of(cm)))

    def _on_ns(self, ns: Obj) -> None:
        if _active(ns):
            self.enqueue(ns["metadata"]["name"])

    async def stop(self) -> None:
        await super().stop()
        await self.configmaps.stop()  # made here, not through the (possibly shared) informer factory

    async def reconcile(self, key: str) -> None:
        if not _active(self.namespaces.get(key)):
            return
        data = {"ca.crt": self.root_ca}
        cm = self.configmaps.get(f"{key}/{ROOT_CA_CONFIGMAP}")
        try:
            if cm is None:
                await self.api.create({"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": key,
                                                    "annotations": {DESCRIPTION_ANNOTATION: ROOT_CA_DESCRIPTION}},
                                       "data": data}, key)
                return
            ann = cm["metadata"].get("annotations") or {}
            if cm.get("data") == data and not cm.get("binaryData") and ann.get(DESCRIPTION_ANNOTATION):
                return
            new = {**cm, "data": data, "metadata": {**cm["metadata"],
                                                    "annotations": {**ann, DESCRIPTION_ANNOTATION:
                                                                    ann.get(DESCRIPTION_ANNOTATION)
                                                                    or ROOT_CA_DESCRIPTION}}}
            new.pop("binaryData", None)
            await self.api.update(new, key)
        except StatusError as e:
            # 409: created meanwhile / changed under us; the informer event brings us back.
            if e.code not in (403, 404, 409):
                raise
