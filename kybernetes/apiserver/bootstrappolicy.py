"""The bootstrap RBAC policy: upstream's default roles and bindings (Kubernetes 1.32), and their reconciliation.

This module owns two things:

* The policy as data: the ClusterRoles a cluster starts with (cluster-admin,
  the aggregated admin/edit/view and the ``system:aggregate-to-*`` roles that
  feed them, the roles of the control-plane components, the
  ``system:controller:*`` role of every built-in controller), their
  ClusterRoleBindings, and the few Roles and RoleBindings upstream puts in
  kube-system and kube-public. Rules are those upstream grants with its
  feature gates at their 1.32 defaults (alpha and default-off beta gates
  grant nothing here). ``bootstrap_objects()`` hands them out as fresh
  objects.
* ``reconcile_bootstrap_policy(api)``, run when the server starts, as
  upstream's ``rbac/bootstrap-roles`` post-start hook: what is missing is
  created; what exists is widened, never narrowed (missing rules, subjects,
  labels, annotations and aggregation selectors are added, nothing a user
  added is removed, a roleRef is never changed). An object annotated
  ``rbac.authorization.kubernetes.io/autoupdate: "false"`` is left alone. The
  rules of an aggregated role belong to the clusterrole-aggregation
  controller, so reconcile only sees to its selectors.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..api.errors import StatusError
from ..client import Client, ResourceClient
from .rbac import GROUP, VERSION, covers

if TYPE_CHECKING:
    from .server import APIServer

log = logging.getLogger("kybernetes.apiserver.bootstrappolicy")

Obj = dict[str, Any]

API_VERSION = f"{GROUP}/{VERSION}"
BOOTSTRAPPING_LABEL = "kubernetes.io/bootstrapping"
BOOTSTRAPPING_VALUE = "rbac-defaults"
AUTOUPDATE_ANNOTATION = "rbac.authorization.kubernetes.io/autoupdate"
AGGREGATE_TO_ADMIN = "rbac.authorization.k8s.io/aggregate-to-admin"
AGGREGATE_TO_EDIT = "rbac.authorization.k8s.io/aggregate-to-edit"
AGGREGATE_TO_VIEW = "rbac.authorization.k8s.io/aggregate-to-view"
CONTROLLER_PREFIX = "system:controller:"

_PLURALS = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
            "Role": "roles", "RoleBinding": "rolebindings"}

# How often one object is re-read and re-written when others keep winning the race.
_ATTEMPTS = 5


# ---------------------------------------------------------------- building blocks

READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete", "deletecollection")
READ_WRITE = READ + WRITE
READ_UPDATE = READ + ("update", "patch")

CORE = ""
APPS = "apps"
AUTHENTICATION = "authentication.k8s.io"
AUTHORIZATION = "authorization.k8s.io"
AUTOSCALING = "autoscaling"
BATCH = "batch"
CERTIFICATES = "certificates.k8s.io"
COORDINATION = "coordination.k8s.io"
DISCOVERY = "discovery.k8s.io"
EVENTS_GROUP = "events.k8s.io"
EXTENSIONS = "extensions"
NETWORKING = "networking.k8s.io"
POLICY = "policy"
STORAGE = "storage.k8s.io"
ADMISSION = "admissionregistration.k8s.io"


def rule(verbs: Iterable[str] | str, groups: Iterable[str] | str, *resources: str,
         names: Iterable[str] = ()) -> Obj:
    """A resource PolicyRule; every list sorted, as upstream's rule builder leaves them."""
    r: Obj = {"verbs": sorted([verbs] if isinstance(verbs, str) else verbs),
              "apiGroups": sorted([groups] if isinstance(groups, str) else groups),
              "resources": sorted(resources)}
    names = sorted(names)
    if names:
        r["resourceNames"] = names
    return r


def url_rule(verbs: Iterable[str] | str, *urls: str) -> Obj:
    """A non-resource PolicyRule."""
    return {"verbs": sorted([verbs] if isinstance(verbs, str) else verbs), "nonResourceURLs": sorted(urls)}


def events_rule() -> Obj:
    """What every component that records events needs, in both event API groups."""
    return rule(("create", "update", "patch"), (CORE, EVENTS_GROUP), "events")


def user(name: str) -> Obj:
    return {"kind": "User", "apiGroup": GROUP, "name": name}


def group(name: str) -> Obj:
    return {"kind": "Group", "apiGroup": GROUP, "name": name}


def service_account(namespace: str, name: str) -> Obj:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


# ---------------------------------------------------------------- cluster roles

# The aggregated roles hold no rules of their own: the clusterrole-aggregation
# controller fills them from every role labelled to aggregate into them.
# name -> (the label that selects what it aggregates, labels of its own)
AGGREGATED_ROLES: dict[str, tuple[str, dict[str, str]]] = {
    "admin": (AGGREGATE_TO_ADMIN, {}),
    "edit": (AGGREGATE_TO_EDIT, {AGGREGATE_TO_ADMIN: "true"}),
    "view": (AGGREGATE_TO_VIEW, {AGGREGATE_TO_EDIT: "true"}),
}

# name -> labels of its own (besides the bootstrapping label)
ROLE_LABELS: dict[str, dict[str, str]] = {
    "system:aggregate-to-admin": {AGGREGATE_TO_ADMIN: "true"},
    "system:aggregate-to-edit": {AGGREGATE_TO_EDIT: "true"},
    "system:aggregate-to-view": {AGGREGATE_TO_VIEW: "true"},
}


def node_rules() -> list[Obj]:
    """The rules of system:node, which the Node authorizer applies to every node (upstream's NodeRules)."""
    # Node authorizer and NodeRestriction narrow most of these to the node's own objects.
    return [
        rule("create", AUTHENTICATION, "tokenreviews"),
        rule("create", AUTHORIZATION, "subjectaccessreviews", "localsubjectaccessreviews"),
        rule(READ, CORE, "services"),
        rule(("create", "get", "list", "watch"), CORE, "nodes"),
        rule(("update", "patch"), CORE, "nodes/status"),
        rule(("update", "patch"), CORE, "nodes"),
        rule(("create", "update", "patch"), CORE, "events"),
        rule(READ, CORE, "pods"),
        rule(("create", "delete"), CORE, "pods"),  # mirror pods
        rule(("update", "patch"), CORE, "pods/status"),
        rule("create", CORE, "pods/eviction"),
        rule(READ, CORE, "secrets", "configmaps"),
        rule("get", CORE, "persistentvolumeclaims", "persistentvolumes"),
        rule("get", CORE, "endpoints"),
        rule(("create", "get", "list", "watch"), CERTIFICATES, "certificatesigningrequests"),
        rule(("get", "create", "update", "patch", "delete"), COORDINATION, "leases"),
        rule("get", STORAGE, "volumeattachments"),
        rule("create", CORE, "serviceaccounts/token"),
        rule(("get", "update", "patch"), CORE, "persistentvolumeclaims/status"),
        rule(READ, STORAGE, "csidrivers"),
        rule(("get", "create", "update", "patch", "delete"), STORAGE, "csinodes"),
        rule(READ, "node.k8s.io", "runtimeclasses"),
    ]


def _approver(signer: str) -> list[Obj]:
    return [rule("approve", CERTIFICATES, "signers", names=[signer])]


def _cluster_role_rules() -> dict[str, list[Obj]]:
    """The rules of every ClusterRole that is not aggregated, in upstream's order."""
    health = ("/livez", "/readyz", "/healthz")
    version = ("/version", "/version/")
    return {
        "cluster-admin": [rule("*", "*", "*"), url_rule("*", "*")],
        "system:discovery": [url_rule("get", *health, *version, "/openapi", "/openapi/*",
                                      "/api", "/api/*", "/apis", "/apis/*")],
        "system:monitoring": [url_rule("get", "/metrics", "/metrics/slis", *health,
                                       "/livez/*", "/readyz/*", "/healthz/*")],
        "system:basic-user": [
            rule("create", AUTHORIZATION, "selfsubjectaccessreviews", "selfsubjectrulesreviews"),
            rule("create", AUTHENTICATION, "selfsubjectreviews"),
        ],
        "system:public-info-viewer": [url_rule("get", *health, *version)],
        "system:aggregate-to-admin": [
            rule("create", AUTHORIZATION, "localsubjectaccessreviews"),
            rule(READ_WRITE, GROUP, "roles", "rolebindings"),
        ],
        "system:aggregate-to-edit": [
            # Reading these escalates (secrets, exec into pods), hence edit and not view.
            rule(READ, CORE, "pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets",
                 "services/proxy"),
            rule("impersonate", CORE, "serviceaccounts"),
            rule(WRITE, CORE, "pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward"),
            rule("create", CORE, "pods/eviction"),
            rule(WRITE, CORE, "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
                 "services", "services/proxy", "persistentvolumeclaims", "configmaps", "secrets", "events"),
            rule("create", CORE, "serviceaccounts/token"),
            rule(WRITE, APPS, "statefulsets", "statefulsets/scale", "daemonsets", "deployments",
                 "deployments/scale", "deployments/rollback", "replicasets", "replicasets/scale"),
            rule(WRITE, AUTOSCALING, "horizontalpodautoscalers"),
            rule(WRITE, BATCH, "jobs", "cronjobs"),
            rule(WRITE, EXTENSIONS, "daemonsets", "deployments", "deployments/scale", "deployments/rollback",
                 "ingresses", "replicasets", "replicasets/scale", "replicationcontrollers/scale",
                 "networkpolicies"),
            rule(WRITE, POLICY, "poddisruptionbudgets"),
            rule(WRITE, NETWORKING, "networkpolicies", "ingresses"),
            rule(READ_WRITE, COORDINATION, "leases"),
        ],
        "system:aggregate-to-view": [
            rule(READ, CORE, "pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
                 "services", "services/status", "endpoints", "persistentvolumeclaims",
                 "persistentvolumeclaims/status", "configmaps"),
            rule(READ, CORE, "limitranges", "resourcequotas", "bindings", "events", "pods/status",
                 "resourcequotas/status", "namespaces/status", "replicationcontrollers/status", "pods/log"),
            # Reading namespaces through a RoleBinding reads only that namespace.
            rule(READ, CORE, "namespaces"),
            rule(READ, DISCOVERY, "endpointslices"),
            rule(READ, APPS, "controllerrevisions", "statefulsets", "statefulsets/status", "statefulsets/scale",
                 "daemonsets", "daemonsets/status", "deployments", "deployments/status", "deployments/scale",
                 "replicasets", "replicasets/status", "replicasets/scale"),
            rule(READ, AUTOSCALING, "horizontalpodautoscalers", "horizontalpodautoscalers/status"),
            rule(READ, BATCH, "jobs", "cronjobs", "cronjobs/status", "jobs/status"),
            rule(READ, EXTENSIONS, "daemonsets", "daemonsets/status", "deployments", "deployments/scale",
                 "deployments/status", "ingresses", "ingresses/status", "replicasets", "replicasets/scale",
                 "replicasets/status", "replicationcontrollers/scale", "networkpolicies"),
            rule(READ, POLICY, "poddisruptionbudgets", "poddisruptionbudgets/status"),
            rule(READ, NETWORKING, "networkpolicies", "ingresses", "ingresses/status"),
        ],
        "system:heapster": [
            rule(READ, CORE, "events", "pods", "nodes", "namespaces"),
            rule(READ, EXTENSIONS, "deployments"),
        ],
        "system:node": node_rules(),
        "system:node-problem-detector": [
            rule("get", CORE, "nodes"),
            rule("patch", CORE, "nodes/status"),
            events_rule(),
        ],
        "system:node-bootstrapper": [
            rule(("create", "get", "list", "watch"), CERTIFICATES, "certificatesigningrequests"),
        ],
        "system:auth-delegator": [
            rule("create", AUTHENTICATION, "tokenreviews"),
            rule("create", AUTHORIZATION, "subjectaccessreviews"),
        ],
        "system:kube-aggregator": [rule(READ, CORE, "services", "endpoints")],
        "system:kube-controller-manager": [
            events_rule(),
            rule("create", COORDINATION, "leases"),
            rule(("get", "update"), COORDINATION, "leases", names=["kube-controller-manager"]),
            rule("create", CORE, "secrets", "serviceaccounts"),
            rule("delete", CORE, "secrets"),
            rule("get", CORE, "namespaces", "secrets", "serviceaccounts", "configmaps"),
            rule("update", CORE, "secrets", "serviceaccounts"),
            rule("create", AUTHENTICATION, "tokenreviews"),
            rule("create", AUTHORIZATION, "subjectaccessreviews"),
            rule(("list", "watch"), "*", "*"),  # every shared informer
            rule("create", CORE, "serviceaccounts/token"),
        ],
        "system:kube-dns": [rule(("list", "watch"), CORE, "endpoints", "services")],
        "system:persistent-volume-provisioner": [
            rule(("get", "list", "watch", "create", "delete"), CORE, "persistentvolumes"),
            rule(("get", "list", "watch", "update"), CORE, "persistentvolumeclaims"),
            rule(READ, STORAGE, "storageclasses"),
            rule("watch", CORE, "events"),
            events_rule(),
        ],
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient": [
            rule("create", CERTIFICATES, "certificatesigningrequests/nodeclient"),
        ],
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient": [
            rule("create", CERTIFICATES, "certificatesigningrequests/selfnodeclient"),
        ],
        "system:volume-scheduler": [
            rule(READ_UPDATE, CORE, "persistentvolumes"),
            rule(READ, STORAGE, "storageclasses"),
            rule(READ_UPDATE, CORE, "persistentvolumeclaims"),
        ],
        "system:certificates.k8s.io:legacy-unknown-approver": _approver("kubernetes.io/legacy-unknown"),
        "system:certificates.k8s.io:kubelet-serving-approver": _approver("kubernetes.io/kubelet-serving"),
        "system:certificates.k8s.io:kube-apiserver-client-approver":
            _approver("kubernetes.io/kube-apiserver-client"),
        "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver":
            _approver("kubernetes.io/kube-apiserver-client-kubelet"),
        # Trailing-slash forms too: clients generated from older OpenAPI documents ask for them.
        "system:service-account-issuer-discovery": [
            url_rule("get", "/.well-known/openid-configuration", "/.well-known/openid-configuration/",
                     "/openid/v1/jwks", "/openid/v1/jwks/"),
        ],
        "system:kubelet-api-admin": [
            rule(READ, CORE, "nodes"),
            rule("proxy", CORE, "nodes"),
            rule("*", CORE, "nodes/proxy", "nodes/metrics", "nodes/stats", "nodes/log"),
        ],
        "system:node-proxier": [
            rule(("list", "watch"), CORE, "services", "endpoints"),
            rule(READ, CORE, "nodes"),
            events_rule(),
            rule(("list", "watch"), DISCOVERY, "endpointslices"),
        ],
        "system:kube-scheduler": [
            events_rule(),
            rule("create", COORDINATION, "leases"),
            rule(("get", "update", "list", "watch"), COORDINATION, "leases", names=["kube-scheduler"]),
            rule(READ_WRITE, COORDINATION, "leasecandidates"),
            rule(READ, CORE, "nodes"),
            rule(("get", "list", "watch", "delete"), CORE, "pods"),
            rule("create", CORE, "pods/binding", "bindings"),
            rule(("patch", "update"), CORE, "pods/status"),
            # What selects pods (spreading), and what pods use (volumes, disruption budgets).
            rule(READ, CORE, "services", "replicationcontrollers"),
            rule(READ, (APPS, EXTENSIONS), "replicasets"),
            rule(READ, APPS, "statefulsets"),
            rule(READ, POLICY, "poddisruptionbudgets"),
            rule(READ, CORE, "persistentvolumeclaims", "persistentvolumes"),
            rule("create", AUTHENTICATION, "tokenreviews"),
            rule("create", AUTHORIZATION, "subjectaccessreviews"),
            rule(READ, STORAGE, "csinodes"),
            rule(READ, STORAGE, "volumeattachments"),
            rule(READ, CORE, "namespaces"),  # namespaceSelector of pod affinity
            rule(READ, STORAGE, "csidrivers"),
            rule(READ, STORAGE, "csistoragecapacities"),
        ],
    }


# ---------------------------------------------------------------- controller roles

def _controller_rules() -> dict[str, list[Obj]]:
    """Each built-in controller's role (system:controller:<name>), bound to its kube-system ServiceAccount."""
    return {
        "attachdetach-controller": [
            rule(("list", "watch"), CORE, "persistentvolumes", "persistentvolumeclaims"),
            rule(READ, CORE, "nodes"),
            rule(("patch", "update"), CORE, "nodes/status"),
            rule(("list", "watch"), CORE, "pods"),
            events_rule(),
            rule(("get", "create", "delete", "list", "watch"), STORAGE, "volumeattachments"),
            rule(READ, STORAGE, "csidrivers"),
            rule(READ, STORAGE, "csinodes"),
        ],
        # It may write any rules into an aggregated role, so it must be allowed to escalate.
        "clusterrole-aggregation-controller": [
            rule(("escalate", "get", "list", "watch", "update", "patch"), GROUP, "clusterroles"),
        ],
        "cronjob-controller": [
            rule(("get", "list", "watch", "update"), BATCH, "cronjobs"),
            rule(("get", "list", "watch", "create", "update", "delete", "patch"), BATCH, "jobs"),
            rule("update", BATCH, "cronjobs/status"),
            rule("update", BATCH, "cronjobs/finalizers"),
            rule(("list", "watch", "delete"), CORE, "pods"),
            events_rule(),
        ],
        "daemon-set-controller": [
            rule(READ, (EXTENSIONS, APPS), "daemonsets"),
            rule("update", (EXTENSIONS, APPS), "daemonsets/status"),
            rule("update", (EXTENSIONS, APPS), "daemonsets/finalizers"),
            rule(("list", "watch"), CORE, "nodes"),
            rule(("list", "watch", "create", "delete", "patch"), CORE, "pods"),
            rule("create", CORE, "pods/binding"),
            rule(("get", "list", "watch", "create", "delete", "update", "patch"), APPS, "controllerrevisions"),
            events_rule(),
        ],
        "deployment-controller": [
            rule(("get", "list", "watch", "update"), (EXTENSIONS, APPS), "deployments"),
            rule("update", (EXTENSIONS, APPS), "deployments/status"),
            rule("update", (EXTENSIONS, APPS), "deployments/finalizers"),
            rule(("get", "list", "watch", "create", "update", "patch", "delete"), (APPS, EXTENSIONS), "replicasets"),
            rule(("get", "list", "watch", "update"), CORE, "pods"),
            events_rule(),
        ],
        "disruption-controller": [
            rule(READ, (EXTENSIONS, APPS), "deployments"),
            rule(READ, (APPS, EXTENSIONS), "replicasets"),
            rule(READ, CORE, "replicationcontrollers"),
            rule(READ, POLICY, "poddisruptionbudgets"),
            rule(READ, APPS, "statefulsets"),
            rule("update", POLICY, "poddisruptionbudgets/status"),
            rule(("patch", "update"), CORE, "pods/status"),
            rule("get", "*", "*/scale"),
            events_rule(),
        ],
        "endpoint-controller": [
            rule(READ, CORE, "services", "pods"),
            rule(("get", "list", "watch", "create", "update", "delete"), CORE, "endpoints"),
            rule("create", CORE, "endpoints/restricted"),
            events_rule(),
        ],
        # Finalizer updates let slices owned by a Service (or Endpoints) block its deletion.
        "endpointslice-controller": [
            rule(READ, CORE, "services", "pods", "nodes"),
            rule("update", CORE, "services/finalizers"),
            rule(("get", "list", "watch", "create", "update", "delete"), DISCOVERY, "endpointslices"),
            events_rule(),
        ],
        "endpointslicemirroring-controller": [
            rule(READ, CORE, "services", "endpoints"),
            rule("update", CORE, "services/finalizers"),
            rule("update", CORE, "endpoints/finalizers"),
            rule(("get", "list", "watch", "create", "update", "delete"), DISCOVERY, "endpointslices"),
            events_rule(),
        ],
        "expand-controller": [
            rule(READ_UPDATE, CORE, "persistentvolumes"),
            rule(("update", "patch"), CORE, "persistentvolumeclaims/status"),
            rule(READ, CORE, "persistentvolumeclaims"),
            events_rule(),
            rule("get", CORE, "services"),  # the in-tree portworx volume plugin
        ],
        "ephemeral-volume-controller": [
            rule(READ, CORE, "pods"),
            rule("update", CORE, "pods/finalizers"),
            rule(("get", "list", "watch", "create"), CORE, "persistentvolumeclaims"),
            events_rule(),
        ],
        "generic-garbage-collector": [
            rule(("get", "list", "watch", "patch", "update", "delete"), "*", "*"),
            events_rule(),
        ],
        "horizontal-pod-autoscaler": [
            rule(READ, AUTOSCALING, "horizontalpodautoscalers"),
            rule("update", AUTOSCALING, "horizontalpodautoscalers/status"),
            rule(("get", "update"), "*", "*/scale"),
            rule(("list", "watch"), CORE, "pods"),
            rule(("list", "watch"), "metrics.k8s.io", "pods"),
            rule(READ, "custom.metrics.k8s.io", "*"),
            rule(READ, "external.metrics.k8s.io", "*"),
            events_rule(),
        ],
        "job-controller": [
            rule(READ_UPDATE, BATCH, "jobs"),
            rule("update", BATCH, "jobs/status"),
            rule("update", BATCH, "jobs/finalizers"),
            rule(("list", "watch", "create", "delete", "patch"), CORE, "pods"),
            events_rule(),
        ],
        "namespace-controller": [
            rule(("get", "list", "watch", "delete"), CORE, "namespaces"),
            rule("update", CORE, "namespaces/finalize", "namespaces/status"),
            rule(("get", "list", "watch", "delete", "deletecollection"), "*", "*"),
        ],
        "node-controller": [
            rule(("get", "list", "watch", "update", "delete", "patch"), CORE, "nodes"),
            rule(("patch", "update"), CORE, "nodes/status"),
            rule(("patch", "update"), CORE, "pods/status"),  # marking pods before deleting them
            rule(("list", "watch", "get", "delete"), CORE, "pods"),
            events_rule(),
        ],
        "persistent-volume-binder": [
            rule(("get", "list", "watch", "update", "create", "delete"), CORE, "persistentvolumes"),
            rule("update", CORE, "persistentvolumes/status"),
            rule(("get", "list", "watch", "update"), CORE, "persistentvolumeclaims"),
            rule("update", CORE, "persistentvolumeclaims/status"),
            rule(("list", "watch", "get", "create", "delete"), CORE, "pods"),
            rule(READ, STORAGE, "storageclasses"),
            rule(("list", "watch"), CORE, "nodes"),
            events_rule(),
            rule("watch", CORE, "events"),  # the recycler watches its pod's events
            rule("get", CORE, "services"),  # the in-tree portworx volume plugin
        ],
        "pod-garbage-collector": [
            rule(("list", "watch", "delete"), CORE, "pods"),
            rule(READ, CORE, "nodes"),
            rule("patch", CORE, "pods/status"),
        ],
        "replicaset-controller": [
            rule(("get", "list", "watch", "update"), (APPS, EXTENSIONS), "replicasets"),
            rule("update", (APPS, EXTENSIONS), "replicasets/status"),
            rule("update", (APPS, EXTENSIONS), "replicasets/finalizers"),
            rule(("list", "watch", "patch", "create", "delete"), CORE, "pods"),
            events_rule(),
        ],
        "replication-controller": [
            rule(("get", "list", "watch", "update"), CORE, "replicationcontrollers"),
            rule("update", CORE, "replicationcontrollers/status"),
            rule("update", CORE, "replicationcontrollers/finalizers"),
            rule(("list", "watch", "patch", "create", "delete"), CORE, "pods"),
            events_rule(),
        ],
        "resourcequota-controller": [
            rule(("list", "watch"), "*", "*"),  # quota may count anything
            rule("update", CORE, "resourcequotas/status"),
            events_rule(),
        ],
        "route-controller": [
            rule(("list", "watch"), CORE, "nodes"),
            rule("patch", CORE, "nodes/status"),
            events_rule(),
        ],
        "service-account-controller": [
            rule("create", CORE, "serviceaccounts"),
            events_rule(),
        ],
        "service-controller": [
            rule(READ, CORE, "services"),
            rule(("patch", "update"), CORE, "services/status"),
            rule(("list", "watch"), CORE, "nodes"),
            events_rule(),
        ],
        "statefulset-controller": [
            rule(("list", "watch"), CORE, "pods"),
            rule(READ, APPS, "statefulsets"),
            rule("update", APPS, "statefulsets/status"),
            rule("update", APPS, "statefulsets/finalizers"),
            rule(("get", "create", "delete", "update", "patch"), CORE, "pods"),
            rule(("get", "create", "delete", "update", "patch", "list", "watch"), APPS, "controllerrevisions"),
            rule(("get", "create", "list", "watch"), CORE, "persistentvolumeclaims"),
            rule(("update", "delete"), CORE, "persistentvolumeclaims"),
            rule("update", CORE, "pods/finalizers"),
            events_rule(),
        ],
        "ttl-controller": [
            rule(("update", "patch", "list", "watch"), CORE, "nodes"),
            events_rule(),
        ],
        "certificate-controller": [
            rule(("get", "list", "watch", "delete"), CERTIFICATES, "certificatesigningrequests"),
            rule("update", CERTIFICATES, "certificatesigningrequests/status",
                 "certificatesigningrequests/approval"),
            rule("approve", CERTIFICATES, "signers", names=["kubernetes.io/kube-apiserver-client-kubelet"]),
            rule("sign", CERTIFICATES, "signers",
                 names=["kubernetes.io/legacy-unknown", "kubernetes.io/kube-apiserver-client",
                        "kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving"]),
            rule("create", AUTHORIZATION, "subjectaccessreviews"),
            events_rule(),
        ],
        "pvc-protection-controller": [
            rule(("get", "list", "watch", "update"), CORE, "persistentvolumeclaims"),
            rule(READ, CORE, "pods"),
            events_rule(),
        ],
        "pv-protection-controller": [
            rule(("get", "list", "watch", "update"), CORE, "persistentvolumes"),
            events_rule(),
        ],
        "ttl-after-finished-controller": [
            rule(("get", "list", "watch", "delete"), BATCH, "jobs"),
            events_rule(),
        ],
        "root-ca-cert-publisher": [
            rule(("create", "update"), CORE, "configmaps"),
            events_rule(),
        ],
        "validatingadmissionpolicy-status-controller": [
            rule(READ, ADMISSION, "validatingadmissionpolicies"),
            rule(("get", "patch", "update"), ADMISSION, "validatingadmissionpolicies/status"),
            events_rule(),
        ],
        "legacy-service-account-token-cleaner": [
            rule("get", CORE, "configmaps", names=["kube-apiserver-legacy-service-account-token-tracking"]),
            rule(("patch", "delete"), CORE, "secrets"),
        ],
    }


# ---------------------------------------------------------------- cluster role bindings

def _cluster_role_bindings() -> list[tuple[str, list[Obj]]]:
    """(role name, subjects) of each ClusterRoleBinding, named as its role."""
    return [
        ("cluster-admin", [group("system:masters")]),
        ("system:monitoring", [group("system:monitoring")]),
        ("system:discovery", [group("system:authenticated")]),
        ("system:basic-user", [group("system:authenticated")]),
        ("system:public-info-viewer", [group("system:authenticated"), group("system:unauthenticated")]),
        ("system:node-proxier", [user("system:kube-proxy")]),
        ("system:kube-controller-manager", [user("system:kube-controller-manager")]),
        ("system:kube-dns", [service_account("kube-system", "kube-dns")]),
        ("system:kube-scheduler", [user("system:kube-scheduler")]),
        ("system:volume-scheduler", [user("system:kube-scheduler")]),
        # Nodes are authorized by the Node authorizer; upstream keeps this
        # binding, empty, so that a reconcile that tightens can drop old subjects.
        ("system:node", []),
        # Every workload may read the OIDC discovery documents of the tokens it holds.
        ("system:service-account-issuer-discovery", [group("system:serviceaccounts")]),
    ]


# ---------------------------------------------------------------- namespaced roles and bindings

def _namespace_roles() -> list[tuple[str, str, list[Obj]]]:
    """(namespace, name, rules) of each bootstrap Role."""
    return [
        ("kube-system", "extension-apiserver-authentication-reader", [
            rule(READ, CORE, "configmaps", names=["extension-apiserver-authentication"]),
        ]),
        ("kube-system", CONTROLLER_PREFIX + "bootstrap-signer", [rule(READ, CORE, "secrets")]),
        # Deprecated upstream since 1.10, still bootstrapped.
        ("kube-system", CONTROLLER_PREFIX + "cloud-provider", [
            rule(("create", "get", "list", "watch"), CORE, "configmaps"),
        ]),
        ("kube-system", CONTROLLER_PREFIX + "token-cleaner", [
            rule(("get", "list", "watch", "delete"), CORE, "secrets"),
            events_rule(),
        ]),
        ("kube-system", "system::leader-locking-kube-controller-manager", [
            rule("watch", CORE, "configmaps"),
            rule(("get", "update"), CORE, "configmaps", names=["kube-controller-manager"]),
        ]),
        ("kube-system", "system::leader-locking-kube-scheduler", [
            rule("watch", CORE, "configmaps"),
            rule(("get", "update"), CORE, "configmaps", names=["kube-scheduler"]),
        ]),
        ("kube-public", CONTROLLER_PREFIX + "bootstrap-signer", [
            rule(READ, CORE, "configmaps"),
            rule("update", CORE, "configmaps", names=["cluster-info"]),
            events_rule(),
        ]),
    ]


def _namespace_role_bindings() -> list[tuple[str, str, str, list[Obj]]]:
    """(namespace, binding name, Role name, subjects) of each bootstrap RoleBinding."""
    kcm, sched = "system:kube-controller-manager", "system:kube-scheduler"
    return [
        ("kube-system", "system::extension-apiserver-authentication-reader",
         "extension-apiserver-authentication-reader", [user(kcm), user(sched)]),
        ("kube-system", "system::leader-locking-kube-controller-manager",
         "system::leader-locking-kube-controller-manager",
         [user(kcm), service_account("kube-system", "kube-controller-manager")]),
        ("kube-system", "system::leader-locking-kube-scheduler", "system::leader-locking-kube-scheduler",
         [user(sched), service_account("kube-system", "kube-scheduler")]),
        ("kube-system", CONTROLLER_PREFIX + "bootstrap-signer", CONTROLLER_PREFIX + "bootstrap-signer",
         [service_account("kube-system", "bootstrap-signer")]),
        ("kube-system", CONTROLLER_PREFIX + "cloud-provider", CONTROLLER_PREFIX + "cloud-provider",
         [service_account("kube-system", "cloud-provider")]),
        ("kube-system", CONTROLLER_PREFIX + "token-cleaner", CONTROLLER_PREFIX + "token-cleaner",
         [service_account("kube-system", "token-cleaner")]),
        ("kube-public", CONTROLLER_PREFIX + "bootstrap-signer", CONTROLLER_PREFIX + "bootstrap-signer",
         [service_account("kube-system", "bootstrap-signer")]),
    ]


# ---------------------------------------------------------------- what kybernetes adds

# As kubeadm and k3s add theirs: who may join and what a node's own components
# (kubelet, service proxy, NetworkPolicy agent, ingress controller, all with the
# node's certificate: user system:node:<name>, group system:nodes) may do.
DISTRIBUTION_PREFIX = "kybernetes:"
DISTRIBUTION_VALUE = "kybernetes-defaults"


def _distribution_cluster_roles() -> dict[str, list[Obj]]:
    return {
        DISTRIBUTION_PREFIX + "kube-scheduler": [rule(READ, "scheduling.k8s.io", "priorityclasses")],
        DISTRIBUTION_PREFIX + "node-agent": [
            # (Secrets: the Node authorizer allows the TLS ones every node's ingress serves.)
            rule(READ, CORE, "namespaces", "pods", "services", "endpoints", "nodes"),
            rule(READ, DISCOVERY, "endpointslices"),
            rule(READ, NETWORKING, "networkpolicies", "ingresses", "ingressclasses"),
            rule("create", NETWORKING, "ingressclasses"),  # the default class, if no server made it yet
            rule(("update", "patch"), NETWORKING, "ingresses/status"),
            rule(("get", "list", "watch", "create", "update", "patch", "delete"), COORDINATION, "leases"),
            events_rule(),
        ],
    }


# kybernetes' own controllers, each as its kube-system service account (see controllers/manager.py).
def _distribution_controller_rules() -> dict[str, list[Obj]]:
    return {
        # Fills the tokens of kubernetes.io/service-account-token Secrets (upstream's runs with the
        # controller manager's own credentials).
        "tokens-controller": [
            rule(READ, CORE, "serviceaccounts"),
            rule(("get", "list", "watch", "create", "update", "patch", "delete"), CORE, "secrets"),
            events_rule(),
        ],
        # The cluster DNS (upstream's system:kube-dns reads only Services and Endpoints; this one
        # answers from EndpointSlices and for pods by address, as CoreDNS's kubeadm role allows).
        "kube-dns": [
            rule(READ, CORE, "services", "endpoints", "namespaces", "pods"),
            rule(READ, DISCOVERY, "endpointslices"),
        ],
        # The local-path provisioner's default StorageClass, made when it starts (as k3s ships it),
        # and the nodes whose directories hold its volumes.
        "persistent-volume-binder": [
            rule(("get", "create"), STORAGE, "storageclasses"),
            rule(READ, CORE, "nodes"),
        ],
        # These controllers write their status as a merge patch; upstream's roles grant only update.
        "daemon-set-controller": [rule("patch", APPS, "daemonsets/status")],
        "statefulset-controller": [rule("patch", APPS, "statefulsets/status")],
        "horizontal-pod-autoscaler": [rule("patch", AUTOSCALING, "horizontalpodautoscalers/status")],
        # Addresses for LoadBalancer Services, as k3s's servicelb.
        "servicelb-controller": [
            rule(READ, CORE, "services", "nodes"),
            rule(("update", "patch"), CORE, "services/status"),
            rule(READ, DISCOVERY, "endpointslices"),
            rule(READ, COORDINATION, "leases"),
            events_rule(),
        ],
    }


def _distribution_cluster_role_bindings() -> list[tuple[str, str, list[Obj]]]:
    """(binding name, ClusterRole, subjects)."""
    def nodes() -> Obj:
        return group("system:nodes")

    def bootstrappers() -> Obj:
        return group("system:bootstrappers")
    return [
        # The scheduler also reads PriorityClasses (for preemption by a class's policy).
        (DISTRIBUTION_PREFIX + "kube-scheduler", DISTRIBUTION_PREFIX + "kube-scheduler",
         [user("system:kube-scheduler")]),
        # A bootstrap token may ask for a node's client certificate, which is approved
        # at once; a node may ask to renew its own.
        (DISTRIBUTION_PREFIX + "node-bootstrapper", "system:node-bootstrapper", [bootstrappers()]),
        (DISTRIBUTION_PREFIX + "node-autoapprove-bootstrap",
         "system:certificates.k8s.io:certificatesigningrequests:nodeclient", [bootstrappers()]),
        (DISTRIBUTION_PREFIX + "node-autoapprove-certificate-rotation",
         "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [nodes()]),
        (DISTRIBUTION_PREFIX + "node-proxier", "system:node-proxier", [nodes()]),
        (DISTRIBUTION_PREFIX + "node-agent", DISTRIBUTION_PREFIX + "node-agent", [nodes()]),
    ]


def _distribution_objects() -> list[Obj]:
    labels = {BOOTSTRAPPING_LABEL: DISTRIBUTION_VALUE}
    objs = [_role("ClusterRole", name, rules, labels=labels) for name, rules in _distribution_cluster_roles().items()]
    objs += [_binding("ClusterRoleBinding", name, "ClusterRole", role, subjects, labels=labels)
             for name, role, subjects in _distribution_cluster_role_bindings()]
    for account, rules in _distribution_controller_rules().items():
        name = DISTRIBUTION_PREFIX + "controller:" + account
        objs.append(_role("ClusterRole", name, rules, labels=labels))
        objs.append(_binding("ClusterRoleBinding", name, "ClusterRole", name,
                             [service_account("kube-system", account)], labels=labels))
    # What a joining node reads before it trusts anything: the CA it checks against its join pin.
    reader = DISTRIBUTION_PREFIX + "cluster-info-reader"
    objs.append(_role("Role", reader, [rule("get", CORE, "configmaps", names=["cluster-info"])], "kube-public",
                      labels=labels))
    objs.append(_binding("RoleBinding", reader, "Role", reader, [user("system:anonymous")], "kube-public",
                         labels=labels))
    # What an agent reads of the cluster's settings (the pod and service networks) when it joins.
    settings = DISTRIBUTION_PREFIX + "cluster-config-reader"
    objs.append(_role("Role", settings, [rule("get", CORE, "configmaps", names=["kybernetes-config"])],
                      "kube-public", labels=labels))
    objs.append(_binding("RoleBinding", settings, "Role", settings, [group("system:nodes")], "kube-public",
                         labels=labels))
    return objs


# ---------------------------------------------------------------- the objects

def _metadata(name: str, namespace: str | None = None, labels: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {BOOTSTRAPPING_LABEL: BOOTSTRAPPING_VALUE, **(labels or {})}
    meta["annotations"] = {AUTOUPDATE_ANNOTATION: "true"}
    return meta


def _role(kind: str, name: str, rules: list[Obj], namespace: str | None = None,
          labels: dict[str, str] | None = None) -> Obj:
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": _metadata(name, namespace, labels or ROLE_LABELS.get(name)), "rules": rules}


def _aggregated_role(name: str, selects: str, labels: dict[str, str]) -> Obj:
    return {"apiVersion": API_VERSION, "kind": "ClusterRole", "metadata": _metadata(name, labels=labels),
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {selects: "true"}}]}}


def _binding(kind: str, name: str, role_kind: str, role_name: str, subjects: list[Obj],
             namespace: str | None = None, labels: dict[str, str] | None = None) -> Obj:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": _metadata(name, namespace, labels),
            "roleRef": {"apiGroup": GROUP, "kind": role_kind, "name": role_name}, "subjects": subjects}


def _build() -> list[Obj]:
    objs: list[Obj] = []
    objs += [_aggregated_role(name, selects, labels) for name, (selects, labels) in AGGREGATED_ROLES.items()]
    objs += [_role("ClusterRole", name, rules) for name, rules in _cluster_role_rules().items()]
    controllers = _controller_rules()
    objs += [_role("ClusterRole", CONTROLLER_PREFIX + name, rules) for name, rules in controllers.items()]
    objs += [_binding("ClusterRoleBinding", name, "ClusterRole", name, subjects)
             for name, subjects in _cluster_role_bindings()]
    objs += [_binding("ClusterRoleBinding", CONTROLLER_PREFIX + name, "ClusterRole", CONTROLLER_PREFIX + name,
                      [service_account("kube-system", name)]) for name in controllers]
    objs += [_role("Role", name, rules, ns) for ns, name, rules in _namespace_roles()]
    objs += [_binding("RoleBinding", name, "Role", role, subjects, ns)
             for ns, name, role, subjects in _namespace_role_bindings()]
    objs += _distribution_objects()
    return objs


_OBJECTS = _build()


def bootstrap_objects() -> list[Obj]:
    """Every bootstrap object (ClusterRoles, ClusterRoleBindings, Roles, RoleBindings, in that order), fresh."""
    return copy.deepcopy(_OBJECTS)


# ---------------------------------------------------------------- reconciling one object

def is_protected(obj: Obj) -> bool:
    """True when an administrator opted the object out of reconciliation (autoupdate "false")."""
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(AUTOUPDATE_ANNOTATION) == "false"


def _merge_map(meta: Obj, field: str, wanted: dict[str, str]) -> None:
    # Missing keys are added; a value the object already has wins, as upstream merges.
    have = meta.get(field) or {}
    merged = {**wanted, **have}
    if merged:
        meta[field] = merged


def _reconcile_rules(out: Obj, expected: Obj) -> None:
    want_agg = expected.get("aggregationRule")
    if want_agg is None:
        # A bootstrap role that is not aggregated must not become one: the
        # aggregation controller would replace the rules this reconcile keeps.
        out.pop("aggregationRule", None)
        rules = list(out.get("rules") or [])
        for want in expected.get("rules") or []:
            if not covers(rules, [want])[0]:
                rules.append(copy.deepcopy(want))
        if rules or "rules" in out:
            out["rules"] = rules
        return
    # Aggregated: its rules are the aggregation controller's; only the selectors are ours.
    agg = dict(out.get("aggregationRule") or {})
    selectors = list(agg.get("clusterRoleSelectors") or [])
    for sel in want_agg.get("clusterRoleSelectors") or []:
        if sel not in selectors:
            selectors.append(copy.deepcopy(sel))
    agg["clusterRoleSelectors"] = selectors
    out["aggregationRule"] = agg


def _subject_key(s: Any) -> tuple[str, str, str, str]:
    if not isinstance(s, dict):
        return ("", "", "", "")
    kind = s.get("kind") or ""
    api_group = s.get("apiGroup") or ("" if kind == "ServiceAccount" else GROUP)
    return (kind, api_group, s.get("name") or "", s.get("namespace") or "")


def _reconcile_subjects(out: Obj, expected: Obj) -> None:
    # The roleRef is never touched (it is immutable, and a changed one is the administrator's choice).
    subjects = list(out.get("subjects") or [])
    have = {_subject_key(s) for s in subjects}
    for want in expected.get("subjects") or []:
        if _subject_key(want) not in have:
            subjects.append(copy.deepcopy(want))
            have.add(_subject_key(want))
    if subjects or "subjects" in out:
        out["subjects"] = subjects


def reconcile_object(existing: Obj, expected: Obj) -> Obj | None:
    """The existing object widened to cover the expected one, or None when nothing is to change.

    Never narrows: extra rules, subjects, labels and annotations stay, and
    values the existing object holds win over the expected ones. A protected
    object (autoupdate "false") is never changed.
    """
    if is_protected(existing):
        return None
    out = copy.deepcopy(existing)
    meta = out.setdefault("metadata", {})
    want_meta = expected.get("metadata") or {}
    _merge_map(meta, "labels", want_meta.get("labels") or {})
    _merge_map(meta, "annotations", want_meta.get("annotations") or {})
    if expected.get("kind") in ("Role", "ClusterRole"):
        _reconcile_rules(out, expected)
    else:
        _reconcile_subjects(out, expected)
    return None if out == existing else out


# ---------------------------------------------------------------- reconciling against the API

async def _get(rc: ResourceClient, name: str, namespace: str | None = None) -> Obj | None:
    try:
        return await rc.get(name, namespace)
    except StatusError as e:
        if e.code == 404:
            return None
        raise


async def _ensure_namespace(client: Client, name: str) -> None:
    namespaces = client.resource("v1", "namespaces", namespaced=False)
    if await _get(namespaces, name) is not None:
        return
    try:
        await namespaces.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except StatusError as e:
        if e.code != 409:
            raise


async def _reconcile_one(client: Client, expected: Obj) -> None:
    kind = expected["kind"]
    rc = client.resource(API_VERSION, _PLURALS[kind], namespaced=kind in ("Role", "RoleBinding"))
    meta = expected["metadata"]
    ns, name = meta.get("namespace"), meta["name"]
    for _ in range(_ATTEMPTS):
        existing = await _get(rc, name, ns)
        try:
            if existing is None:
                await rc.create(expected, ns)
                return
            wanted = reconcile_object(existing, expected)
            if wanted is None:
                return
            # The resourceVersion read above guards the write: a concurrent change
            # is read again and reconciled, not overwritten.
            await rc.update(wanted, ns)
            return
        except StatusError as e:
            if e.code != 409:  # AlreadyExists or Conflict: someone else wrote it; look again
                raise
    log.warning("bootstrap policy: gave up reconciling %s %s after %d conflicts", kind,
                f"{ns}/{name}" if ns else name, _ATTEMPTS)


async def reconcile_bootstrap_policy(api: APIServer | Client, objects: Sequence[Obj] | None = None) -> None:
    """Create the bootstrap policy where missing and widen it where it is narrower than upstream's.

    ``api`` is the APIServer (written to through an in-process client, as
    system:masters) or any Client with that authority. Idempotent: a second
    run writes nothing. ``objects`` defaults to ``bootstrap_objects()``.
    """
    objs = list(objects) if objects is not None else bootstrap_objects()
    client = api if isinstance(api, Client) else Client.in_process(api.handle)
    try:
        for ns in sorted({o["metadata"]["namespace"] for o in objs if o["metadata"].get("namespace")}):
            await _ensure_namespace(client, ns)
        for obj in objs:
            await _reconcile_one(client, obj)
    finally:
        if client is not api:
            await client.close()
