"""NodeRestriction admission: a node changes only itself and the pods bound to it.

What the Node authorizer cannot see (the object being written), this step
checks for requests made as a node (``system:node:<name>`` in
``system:nodes``), as upstream's NodeRestriction plugin does:

* its own Node only: creates, updates and deletes of other Nodes are refused;
  on update it may not change its taints, and it may set only the labels
  kubelets are allowed to set about themselves (no ``node-restriction.
  kubernetes.io/`` labels, and within ``kubernetes.io``/``k8s.io`` only the
  well-known ones);
* pods: it may create only mirror pods bound to itself, update (status) and
  delete only pods bound to itself;
* Leases in ``kube-node-lease``: only the one named after it;
* service account tokens: only bound to a pod that runs on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..api import errors
from ..api.kinds import Kind
from .nodeauthorizer import node_name

if TYPE_CHECKING:
    from .rest import Call

Obj = dict[str, Any]

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
NODE_LEASE_NAMESPACE = "kube-node-lease"
RESTRICTED_LABEL_PREFIX = "node-restriction.kubernetes.io/"
# The kubernetes.io / k8s.io labels a kubelet may set on its own Node (upstream's allowed set).
_ALLOWED_LABELS = frozenset((
    "kubernetes.io/hostname", "kubernetes.io/arch", "kubernetes.io/os",
    "beta.kubernetes.io/arch", "beta.kubernetes.io/os", "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type", "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone", "topology.kubernetes.io/region", "topology.kubernetes.io/zone",
))
_ALLOWED_LABEL_PREFIXES = ("kubelet.kubernetes.io/", "node.kubernetes.io/")


def _meta(obj: Obj) -> Obj:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def _spec(obj: Obj) -> Obj:
    s = obj.get("spec")
    return s if isinstance(s, dict) else {}


def forbidden_label(key: str) -> bool:
    """Labels a node may not set on itself."""
    if key.startswith(RESTRICTED_LABEL_PREFIX):
        return True
    domain = key.split("/", 1)[0] if "/" in key else ""
    if not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io") or domain == "k8s.io"
            or domain.endswith(".k8s.io")):
        return False
    return key not in _ALLOWED_LABELS and not key.startswith(_ALLOWED_LABEL_PREFIXES)


class NodeRestriction:
    def _refuse(self, message: str) -> errors.StatusError:
        return errors.forbidden_error(message)

    def admit(self, kind: Kind, obj: Obj, old: Obj | None, call: Call, operation: str) -> None:
        """Refuse (403) a node's write of anything but itself and its pods; operation: CREATE, UPDATE, DELETE."""
        node = node_name(call.user, call.groups)
        if node is None or kind.group not in ("", "coordination.k8s.io"):
            return
        if kind.group == "" and kind.kind == "Node":
            self._node(node, obj, old, operation)
        elif kind.group == "" and kind.kind == "Pod":
            self._pod(node, obj, operation)
        elif kind.group == "coordination.k8s.io" and kind.kind == "Lease":
            meta = _meta(obj)
            if meta.get("namespace") == NODE_LEASE_NAMESPACE and meta.get("name") != node:
                raise self._refuse(f"node {node!r} cannot modify leases of other nodes "
                                   f"(lease {meta.get('name')!r})")

    def _node(self, node: str, obj: Obj, old: Obj | None, operation: str) -> None:
        name = _meta(obj).get("name")
        if name != node:
            raise self._refuse(f"node {node!r} is not allowed to modify node {name!r}")
        if operation == "DELETE":
            return
        labels = _meta(obj).get("labels") or {}
        old_labels = (_meta(old).get("labels") or {}) if old is not None else {}
        bad = sorted(k for k, v in labels.items() if forbidden_label(k) and old_labels.get(k) != v)
        if bad:
            raise self._refuse(f"node {node!r} is not allowed to modify labels: {', '.join(bad)}")
        if old is not None and (_spec(obj).get("taints") or []) != (_spec(old).get("taints") or []):
            raise self._refuse(f"node {node!r} is not allowed to modify taints")

    def _pod(self, node: str, pod: Obj, operation: str) -> None:
        meta, bound = _meta(pod), _spec(pod).get("nodeName") or ""
        name = meta.get("name") or meta.get("generateName") or ""
        if operation == "CREATE":
            if MIRROR_ANNOTATION not in (meta.get("annotations") or {}):
                raise self._refuse(f"pod does not have \"{MIRROR_ANNOTATION}\" annotation, node {node!r} can "
                                   "only create mirror pods")
            if bound != node:
                raise self._refuse(f"node {node!r} can only create pods with spec.nodeName set to itself")
            return
        if bound != node:
            verb = "delete" if operation == "DELETE" else "update"
            raise self._refuse(f"node {node!r} can only {verb} pods with spec.nodeName set to itself "
                               f"(pod {name!r} is bound to {bound!r})")

    def admit_token_request(self, call: Call, namespace: str, body: Any, pods_on_node) -> None:
        """A node may only ask for a token bound to a pod that runs on it; pods_on_node(node, ns) -> pods."""
        node = node_name(call.user, call.groups)
        if node is None:
            return
        ref = (_spec(body).get("boundObjectRef") if isinstance(body, dict) else None) or {}
        if not isinstance(ref, dict) or ref.get("kind") != "Pod":
            raise self._refuse("node requested token not bound to a pod")
        for p in pods_on_node(node, namespace):
            pm = _meta(p)
            if pm.get("name") == ref.get("name") and (not ref.get("uid") or pm.get("uid") == ref.get("uid")):
                return
        raise self._refuse("node requested token bound to a pod scheduled on a different node")
