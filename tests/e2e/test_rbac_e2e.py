"""RBAC through the real kubectl: roles, bindings, tokens and can-i, as a new user meets them."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from .conftest import Server, needs_kubectl, wait_for

pytestmark = [needs_kubectl]

READER = "system:serviceaccount:shop:reader"

RBAC_YAML = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-editor, namespace: shop}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, create, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cm-editor, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-editor}
subjects:
- {kind: ServiceAccount, name: reader, namespace: shop}
"""


def _token(server: Server) -> str:
    return server.kubectl("create", "token", "reader", "-n", "shop").stdout.strip()


def _as_token(server: Server, token: str, *args: str):
    # The token alone: no client certificate of the admin's beside it.
    cluster = server.kjson("config", "view", "--raw")["clusters"][0]["cluster"]
    return server.kubectl("--kubeconfig=/dev/null", f"--server={cluster['server']}",
                          "--insecure-skip-tls-verify", f"--token={token}", *args, check=False)


def test_default_roles_exist(server: Server):
    names = server.kubectl("get", "clusterroles", "-o", "name").stdout.split()
    for want in ("cluster-admin", "admin", "edit", "view", "system:node", "system:kube-scheduler"):
        assert f"clusterrole.rbac.authorization.k8s.io/{want}" in names, names
    # The aggregation controller fills the aggregated roles.
    view = wait_for(lambda: (r := server.kjson("get", "clusterrole", "view")).get("rules") and r)
    assert any("pods" in (rule.get("resources") or []) for rule in view["rules"])


def test_a_role_bound_to_a_service_account(server: Server):
    server.kubectl("create", "namespace", "shop")
    server.kubectl("create", "serviceaccount", "reader", "-n", "shop")
    server.kubectl("create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods", "-n", "shop")
    server.kubectl("create", "rolebinding", "r", "--role=pod-reader", "--serviceaccount=shop:reader", "-n", "shop")
    server.kubectl("create", "secret", "generic", "s1", "--from-literal=k=v", "-n", "shop")

    def can_i(*args: str) -> str:
        return server.kubectl("auth", "can-i", *args, f"--as={READER}", check=False).stdout.strip()
    assert wait_for(lambda: can_i("list", "pods", "-n", "shop") == "yes")
    assert can_i("list", "secrets", "-n", "shop") == "no"
    assert can_i("list", "pods", "-n", "default") == "no"
    assert can_i("delete", "namespaces") == "no"
    listed = server.kubectl("auth", "can-i", "--list", "-n", "shop", f"--as={READER}").stdout
    assert any(line.split()[:1] == ["pods"] and "[get list watch]" in line for line in listed.splitlines()), listed

    token = _token(server)
    p = _as_token(server, token, "get", "pods", "-n", "shop")
    assert p.returncode == 0, p.stderr
    p = _as_token(server, token, "get", "secrets", "-n", "shop")
    assert p.returncode != 0
    assert ('secrets is forbidden: User "system:serviceaccount:shop:reader" cannot list resource "secrets" '
            'in API group "" in the namespace "shop"') in p.stderr, p.stderr
    p = _as_token(server, token, "delete", "namespace", "shop")
    assert p.returncode != 0 and "forbidden" in p.stderr, p.stderr
    # Discovery and whoami work for everyone authenticated.
    p = _as_token(server, token, "auth", "whoami", "-o", "json")
    assert p.returncode == 0 and json.loads(p.stdout)["status"]["userInfo"]["username"] == READER, p.stderr


def test_auth_reconcile(server: Server, tmp_path):
    f = tmp_path / "rbac.yaml"
    f.write_text(RBAC_YAML)
    p = server.kubectl("auth", "reconcile", "-f", str(f))
    assert "cm-editor" in p.stdout, p.stdout + p.stderr
    again = server.kubectl("auth", "reconcile", "-f", str(f))
    assert again.returncode == 0
    assert wait_for(lambda: server.kubectl("auth", "can-i", "create", "configmaps", "-n", "shop", f"--as={READER}",
                                           check=False).stdout.strip() == "yes")


def test_no_escalation_through_roles_and_bindings(server: Server):
    # The reader may manage Roles and RoleBindings in its namespace, but grant nothing it lacks.
    server.kubectl("create", "role", "rbac-manager", "--verb=create,get,list", "--resource=roles,rolebindings",
                   "-n", "shop")
    server.kubectl("create", "rolebinding", "m", "--role=rbac-manager", "--serviceaccount=shop:reader",
                   "-n", "shop")
    token = _token(server)
    wait_for(lambda: server.kubectl("auth", "can-i", "create", "roles", "-n", "shop", f"--as={READER}",
                                    check=False).stdout.strip() == "yes")
    p = _as_token(server, token, "create", "role", "mine", "--verb=get", "--resource=pods", "-n", "shop")
    assert p.returncode == 0, p.stderr
    p = _as_token(server, token, "create", "role", "more", "--verb=delete", "--resource=pods", "-n", "shop")
    assert p.returncode != 0
    assert 'is attempting to grant RBAC permissions not currently held' in p.stderr, p.stderr
    p = _as_token(server, token, "create", "rolebinding", "to-admin", "--clusterrole=admin",
                  "--serviceaccount=shop:reader", "-n", "shop")
    assert p.returncode != 0 and "not currently held" in p.stderr, p.stderr
    p = _as_token(server, token, "create", "rolebinding", "to-mine", "--role=mine", "--user=bob", "-n", "shop")
    assert p.returncode == 0, p.stderr


def _anonymous_get(server: Server, path: str) -> tuple[int, str]:
    cluster = server.kjson("config", "view", "--raw")["clusters"][0]["cluster"]
    ctx = ssl.create_default_context(cafile=str(server.data_dir / "pki" / "ca.crt"))
    try:
        with urllib.request.urlopen(cluster["server"] + path, context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_anonymous(server: Server):
    assert _anonymous_get(server, "/version")[0] == 200
    assert _anonymous_get(server, "/healthz")[0] == 200
    code, body = _anonymous_get(server, "/api/v1/namespaces/default/pods")
    assert code == 403, body
    assert json.loads(body)["message"] == ('pods is forbidden: User "system:anonymous" cannot list resource "pods" '
                                           'in API group "" in the namespace "default"')
    code, body = _anonymous_get(server, "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    assert code == 200 and "kubeconfig" in json.loads(body)["data"], body
    assert _anonymous_get(server, "/api/v1/namespaces/kube-public/configmaps")[0] == 403


# The RBAC examples of the Kubernetes documentation ("Using RBAC Authorization"), as they are.
DOCS_EXAMPLES = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  namespace: default
  name: pod-reader
rules:
- apiGroups: [""] # "" indicates the core API group
  resources: ["pods"]
  verbs: ["get", "watch", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  # "namespace" omitted since ClusterRoles are not namespaced
  name: secret-reader
rules:
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "watch", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: read-pods
  namespace: default
subjects:
- kind: User
  name: jane # "name" is case sensitive
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: Role #this must be Role or ClusterRole
  name: pod-reader # this must match the name of the Role or ClusterRole you wish to bind to
  apiGroup: rbac.authorization.k8s.io
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: read-secrets-global
subjects:
- kind: Group
  name: manager # Name is case sensitive
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: ClusterRole
  name: secret-reader
  apiGroup: rbac.authorization.k8s.io
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: monitoring
aggregationRule:
  clusterRoleSelectors:
  - matchLabels:
      rbac.example.com/aggregate-to-monitoring: "true"
rules: [] # The control plane automatically fills in the rules
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: monitoring-endpoints
  labels:
    rbac.example.com/aggregate-to-monitoring: "true"
# When you create the "monitoring-endpoints" ClusterRole,
# the rules below will be added to the "monitoring" ClusterRole.
rules:
- apiGroups: [""]
  resources: ["services", "endpointslices", "pods"]
  verbs: ["get", "list", "watch"]
"""


def test_the_docs_rbac_examples(server: Server):
    server.kubectl("apply", "-f", "-", input=DOCS_EXAMPLES)

    def can(*args: str) -> str:
        return server.kubectl("auth", "can-i", *args, check=False).stdout.strip()
    assert wait_for(lambda: can("list", "pods", "-n", "default", "--as=jane") == "yes")
    assert can("list", "pods", "-n", "kube-system", "--as=jane") == "no"
    assert can("get", "secrets", "-n", "kube-system", "--as=someone", "--as-group=manager") == "yes"
    assert can("get", "secrets", "-n", "kube-system", "--as=jane") == "no"
    monitoring = wait_for(lambda: (r := server.kjson("get", "clusterrole", "monitoring")).get("rules") and r)
    assert monitoring["rules"] == [{"apiGroups": [""], "resources": ["services", "endpointslices", "pods"],
                                    "verbs": ["get", "list", "watch"]}]


def test_python_client_under_rbac(server: Server):
    """The official client with a token of a service account bound to the view role."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    server.kubectl("create", "namespace", "pyrbac")
    server.kubectl("create", "serviceaccount", "viewer", "-n", "pyrbac")
    server.kubectl("create", "rolebinding", "viewer", "--clusterrole=view", "--serviceaccount=pyrbac:viewer",
                   "-n", "pyrbac")
    server.kubectl("create", "configmap", "cm", "--from-literal=a=b", "-n", "pyrbac")
    wait_for(lambda: server.kubectl("auth", "can-i", "list", "configmaps", "-n", "pyrbac",
                                    "--as=system:serviceaccount:pyrbac:viewer", check=False).stdout.strip() == "yes")
    token = server.kubectl("create", "token", "viewer", "-n", "pyrbac").stdout.strip()
    cluster = server.kjson("config", "view", "--raw")["clusters"][0]["cluster"]
    cfg = client.Configuration()
    cfg.host = cluster["server"]
    cfg.ssl_ca_cert = str(server.data_dir / "pki" / "ca.crt")
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        assert [c.metadata.name for c in core.list_namespaced_config_map("pyrbac").items if c.metadata.name == "cm"]
        with pytest.raises(ApiException) as e:
            core.list_namespaced_secret("pyrbac")
        assert e.value.status == 403
        body = json.loads(e.value.body)
        assert body["reason"] == "Forbidden" and body["details"] == {"kind": "secrets"}, body
        with pytest.raises(ApiException) as e:
            core.create_namespaced_config_map("pyrbac", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")))
        assert e.value.status == 403
        review = client.AuthorizationV1Api(api).create_self_subject_access_review(
            client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(namespace="pyrbac", verb="delete",
                                                                resource="configmaps"))))
        assert review.status.allowed is False
