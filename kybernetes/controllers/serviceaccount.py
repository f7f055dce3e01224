"""Per-namespace service account plumbing: the ``default`` ServiceAccount and the ``kube-root-ca.crt`` ConfigMap.

ServiceAccountController gives every active namespace a ServiceAccount named
``default`` (made again if someone deletes it), which is what a pod runs as
unless it names another. RootCACertPublisher keeps a ConfigMap
``kube-root-ca.crt`` with key ``ca.crt`` holding the cluster CA in every
active namespace, so pods can check the API server's certificate through
their mounted service account volume. Both work per namespace key; a
terminating namespace is left alone (its content is being emptied).

TokensController fills in long-lived token Secrets (type
``kubernetes.io/service-account-token``, annotated with the account's name):
a never-expiring legacy JWT under ``token``, the cluster CA under ``ca.crt``
and ``namespace``, and records the account's uid in an annotation. A Secret
whose account does not exist (yet) is left alone; once filled, it lives only
as long as the account it names: when that account is gone (or replaced by
one with another uid) the Secret is deleted, as upstream's token controller
does. It works per Secret key (namespace/name).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from ..api.errors import StatusError
from ..client import Client, Informer
from ..client.informer import strip_managed_fields
from ..apiserver.serviceaccounts import Signer, legacy_claims
from .base import Controller

log = logging.getLogger("kybernetes.controllers.serviceaccount")

Obj = dict[str, Any]

DEFAULT_ACCOUNTS = ("default",)
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
DESCRIPTION_ANNOTATION = "kubernetes.io/description"
SA_TOKEN_TYPE = "kubernetes.io/service-account-token"
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
SA_UID_ANNOTATION = "kubernetes.io/service-account.uid"
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
        self.configmaps = Informer(self.reader("v1", "configmaps"), field_selector=f"metadata.name={ROOT_CA_CONFIGMAP}",
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


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _sa_ref(secret: Obj) -> str:
    """namespace/name of the account a token Secret names ("" if none)."""
    name = ((secret.get("metadata") or {}).get("annotations") or {}).get(SA_NAME_ANNOTATION)
    return f"{_ns_of(secret)}/{name}" if name else ""


class TokensController(Controller):
    name = "serviceaccount-token"

    def __init__(self, client: Client, signing_key: bytes, root_ca: str = ""):
        super().__init__(client)
        self.signer = Signer(signing_key)
        self.root_ca = root_ca
        self.api = client.resource("v1", "secrets")
        self.serviceaccounts = self.informer("v1", "serviceaccounts")
        # Only token Secrets: not every Secret of the cluster.
        self.secrets = Informer(self.reader("v1", "secrets"), field_selector=f"type={SA_TOKEN_TYPE}",
                                transform=strip_managed_fields)
        self.informers.append(self.secrets)
        self.secrets.add_index("serviceaccount", lambda s: [r] if (r := _sa_ref(s)) else [])
        self.secrets.add_handler(on_add=self._on_secret, on_update=lambda _old, new: self._on_secret(new))
        # A Secret made before its account is filled in when the account appears; one whose
        # account is deleted goes with it.
        self.serviceaccounts.add_handler(on_add=self._on_sa, on_update=lambda _old, new: self._on_sa(new),
                                         on_delete=self._on_sa)

    def _on_secret(self, secret: Obj) -> None:
        self.enqueue(f"{_ns_of(secret)}/{secret['metadata']['name']}")

    def _on_sa(self, sa: Obj) -> None:
        for key in self.secrets.index_keys("serviceaccount", f"{_ns_of(sa)}/{sa['metadata']['name']}"):
            self.enqueue(key)

    async def stop(self) -> None:
        await super().stop()
        await self.secrets.stop()  # made here, not through the (possibly shared) informer factory

    async def _live_sa(self, ns: str, name: str) -> Obj | None:
        try:
            return await self.client.resource("v1", "serviceaccounts").get(name, ns)
        except StatusError as e:
            if e.code == 404:
                return None
            raise

    async def reconcile(self, key: str) -> None:
        secret = self.secrets.get(key)
        if secret is None or secret.get("type") != SA_TOKEN_TYPE:
            return
        meta = secret["metadata"]
        if meta.get("deletionTimestamp"):
            return
        ann = meta.get("annotations") or {}
        ns, sa_name = _ns_of(secret), ann.get(SA_NAME_ANNOTATION)
        if not sa_name:
            return
        want_uid = ann.get(SA_UID_ANNOTATION)
        sa = self.serviceaccounts.get(f"{ns}/{sa_name}")
        if sa is None or (want_uid and sa["metadata"].get("uid") != want_uid):
            if not want_uid:
                return  # the account may come later; upstream's cleaner, not this loop, ages such Secrets out
            # The cache may lag behind a re-created account: ask the server before deleting.
            sa = await self._live_sa(ns, sa_name)
            if sa is None or sa["metadata"].get("uid") != want_uid:
                await self._delete(secret)
                return
        if sa["metadata"].get("deletionTimestamp"):
            return
        await self._fill(secret, sa)

    async def _delete(self, secret: Obj) -> None:
        meta = secret["metadata"]
        try:
            await self.api.delete(meta["name"], meta["namespace"], preconditions={"uid": meta["uid"]})
        except StatusError as e:
            if e.code not in (404, 409):
                raise

    async def _fill(self, secret: Obj, sa: Obj) -> None:
        meta, data = secret["metadata"], dict(secret.get("data") or {})
        ns, name = meta["namespace"], meta["name"]
        sa_uid = sa["metadata"].get("uid", "")
        ann = dict(meta.get("annotations") or {})
        changed = False
        if self.root_ca and data.get("ca.crt") != _b64(self.root_ca):
            data["ca.crt"], changed = _b64(self.root_ca), True
        if not data.get("namespace"):
            data["namespace"], changed = _b64(ns), True
        if not data.get("token"):
            token = self.signer.sign(legacy_claims(ns, sa["metadata"]["name"], sa_uid, name))
            data["token"], changed = _b64(token), True
        if ann.get(SA_UID_ANNOTATION) != sa_uid:
            ann[SA_UID_ANNOTATION], changed = sa_uid, True
        if not changed:
            return
        try:
            await self.api.update({**secret, "metadata": {**meta, "annotations": ann}, "data": data}, ns)
        except StatusError as e:
            # 409: changed under us (the informer event brings us back); 404: deleted meanwhile.
            if e.code not in (404, 409):
                raise
