"""The Node authorizer: a kubelet reads only what the pods bound to its node need.

A node authenticates as ``system:node:<name>`` in the group ``system:nodes``.
As upstream's Node authorizer does, for the kinds that carry a pod's private
inputs it allows a node only the objects a pod bound to it refers to:

* Secrets and ConfigMaps (get, or a list/watch of that one object by a
  ``metadata.name`` field selector) named by a pod's volumes, projected
  volumes, environment (``valueFrom``, ``envFrom``) or imagePullSecrets;
* PersistentVolumeClaims a pod mounts (also a generic ephemeral volume's
  claim), and the PersistentVolumes bound to them;
* tokens (``serviceaccounts/token``) of the ServiceAccounts its pods run as.

Anything else is judged by the rules of the ``system:node`` role (upstream's
node rules, from the bootstrap policy). Where it does not allow, it has no
opinion and the next authorizer (RBAC) is asked.

kybernetes adds one relationship upstream has no need of: every node runs the
ingress controller, which serves the TLS certificates of Ingresses, so a node
may list and watch Secrets of type ``kubernetes.io/tls`` (only with that
field selector). It still cannot read any other Secret of a pod elsewhere.

The relationships are read from the watch cache at the time of the request:
the node's pods from the cache's ``spec.nodeName`` index (pods elsewhere are
never looked at), and what each refers to is worked out once per version of
the pod and kept with its cache entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from .bootstrappolicy import node_rules
from .rbac import compile_rules, rules_allow
from .watchcache import Entry, ResourceCache, WatchCache

Obj = dict[str, Any]

NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
PODS_PREFIX = "/registry/pods/"
PVS_PREFIX = "/registry/persistentvolumes/"
TLS_SELECTOR = "type=kubernetes.io/tls"
_READ_ONE = ("get", "list", "watch")


def node_name(user: str, groups: tuple[str, ...]) -> str | None:
    """The node a user is, if it is one (``system:node:<name>`` in ``system:nodes``)."""
    if user.startswith(NODE_PREFIX) and NODES_GROUP in groups:
        return user[len(NODE_PREFIX):] or None
    return None


def _dicts(v: Any) -> list[Obj]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def _d(v: Any) -> Obj:
    return v if isinstance(v, dict) else {}


def pod_references(pod: Obj) -> dict[str, set[str]]:
    """What a pod refers to: {"secrets": names, "configmaps": ..., "persistentvolumeclaims": ...,
    "serviceaccounts": ...}."""
    spec = _d(pod.get("spec"))
    refs: dict[str, set[str]] = {"secrets": set(), "configmaps": set(), "persistentvolumeclaims": set(),
                                 "serviceaccounts": set()}
    secrets, configmaps, claims = refs["secrets"], refs["configmaps"], refs["persistentvolumeclaims"]
    refs["serviceaccounts"].add(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    for s in _dicts(spec.get("imagePullSecrets")):
        secrets.add(s.get("name") or "")
    pod_name = _d(pod.get("metadata")).get("name") or ""
    for v in _dicts(spec.get("volumes")):
        secrets.add(_d(v.get("secret")).get("secretName") or "")
        configmaps.add(_d(v.get("configMap")).get("name") or "")
        claims.add(_d(v.get("persistentVolumeClaim")).get("claimName") or "")
        if isinstance(v.get("ephemeral"), dict):
            claims.add(f"{pod_name}-{v.get('name') or ''}")
        for src in _dicts(_d(v.get("projected")).get("sources")):
            secrets.add(_d(src.get("secret")).get("name") or "")
            configmaps.add(_d(src.get("configMap")).get("name") or "")
        for driver in v.values():
            # csi, cephfs, rbd, iscsi, flexVolume, ...: the secrets their drivers log in with.
            if isinstance(driver, dict):
                for key in ("secretRef", "nodePublishSecretRef"):
                    secrets.add(_d(driver.get(key)).get("name") or "")
    for c in _containers(spec):
        for e in _dicts(c.get("env")):
            ref = _d(e.get("valueFrom"))
            secrets.add(_d(ref.get("secretKeyRef")).get("name") or "")
            configmaps.add(_d(ref.get("configMapKeyRef")).get("name") or "")
        for e in _dicts(c.get("envFrom")):
            secrets.add(_d(e.get("secretRef")).get("name") or "")
            configmaps.add(_d(e.get("configMapRef")).get("name") or "")
    for names in refs.values():
        names.discard("")
    return refs


def _references(e: Entry) -> dict[str, set[str]]:
    try:
        return pod_references(orjson.loads(e.raw))
    except orjson.JSONDecodeError:
        return {}


def _containers(spec: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from _dicts(spec.get(key))


class NodeAuthorizer:
    """Upstream's Node authorizer over the watch cache (see the module docstring)."""

    restricts_anonymous = True

    def __init__(self, cache: WatchCache) -> None:
        self.cache = cache
        self.rules = compile_rules(node_rules())

    def _entries_on(self, node: str, namespace: str) -> list[Entry]:
        entries = self.cache.cache(PODS_PREFIX).index("spec.nodeName", node)
        return [e for e in entries if e.namespace == namespace] if namespace else entries

    def pods_on(self, node: str, namespace: str) -> Iterator[Obj]:
        """The pods bound to ``node`` in ``namespace`` ("" for every namespace), decoded."""
        for e in self._entries_on(node, namespace):
            try:
                yield orjson.loads(e.raw)
            except orjson.JSONDecodeError:
                continue

    def related(self, node: str, resource: str, namespace: str, name: str) -> bool:
        """Does a pod bound to ``node`` refer to this object?"""
        if resource == "persistentvolumes":
            e = self.cache.cache(PVS_PREFIX).objects.get(PVS_PREFIX + name)
            if e is None:
                return False
            ref = _d(_d(orjson.loads(e.raw).get("spec")).get("claimRef"))
            ns, claim = ref.get("namespace") or "", ref.get("name") or ""
            return bool(ns and claim) and self.related(node, "persistentvolumeclaims", ns, claim)
        return any(name in ResourceCache.derive(e, "references", _references).get(resource, ())
                   for e in self._entries_on(node, namespace))

    def authorize(self, user: str, groups: tuple[str, ...], attributes: Obj, resource: bool) -> tuple[bool, str]:
        node = node_name(user, groups) if isinstance(user, str) and isinstance(groups, tuple) else None
        if node is None:
            return False, ""
        if not resource:
            return rules_allow(self.rules, attributes, False), ""
        group, res = attributes.get("group") or "", attributes.get("resource") or ""
        sub, verb = attributes.get("subresource") or "", attributes.get("verb") or ""
        ns, name = attributes.get("namespace") or "", attributes.get("name") or ""
        if group == "" and res in ("secrets", "configmaps") and not sub:
            selector = attributes.get("fieldSelector") or ""
            if res == "secrets" and verb in ("list", "watch") and TLS_SELECTOR in selector.replace(" ", ""):
                return True, ""  # what every node's ingress controller serves
            # A list or watch by a metadata.name field selector has that name here (requestinfo.py).
            return self._graph(node, verb in _READ_ONE, res, ns, name)
        if group == "" and res in ("persistentvolumeclaims", "persistentvolumes") and not sub:
            return self._graph(node, verb == "get", res, ns, name)
        if group == "" and res == "serviceaccounts" and sub == "token":
            return self._graph(node, verb == "create", res, ns, name)
        if rules_allow(self.rules, attributes, True):
            return True, ""
        return False, ""

    def _graph(self, node: str, verb_ok: bool, resource: str, namespace: str, name: str) -> tuple[bool, str]:
        if not verb_ok:
            return False, "can only get individual resources of this type"
        if not name:
            return False, "can only read resources of this type by name"
        if self.related(node, resource, namespace, name):
            return True, ""
        return False, f"no relationship found between node '{node}' and this object"

    def rules_for(self, user: str, groups: tuple[str, ...], namespace: str) -> tuple[list[Obj], list[Obj], bool]:
        # The relationships cannot be listed as rules; upstream says as much with "incomplete".
        if node_name(user, groups) is None:
            return [], [], False
        return [], [], True
