"""The RBAC authorizer (apiserver/rbac.py) against a real APIServer's watch cache, and its escalation logic.

Roles and bindings are created through the REST layer (or, for objects
validation would refuse, written straight to the store), the cache is brought
up to date, and the authorizer is asked as SubjectAccessReviews ask it.
"""

from __future__ import annotations

import time

import orjson
import pytest

from kybernetes.apiserver import rbac
from kybernetes.apiserver.rbac import RBACAuthorizer, covers, escalation_message
from kybernetes.apiserver.watchcache import WatchCache
from kybernetes.storage.base import KV

G = "rbac.authorization.k8s.io"
AV = f"{G}/v1"
AUTH = ("system:authenticated",)


# ---------------------------------------------------------------- helpers

def _kind(api, plural):
    return api.registry.by_resource(G, "v1", plural)


def user(name):
    return {"kind": "User", "apiGroup": G, "name": name}


def group(name):
    return {"kind": "Group", "apiGroup": G, "name": name}


def sa(name, ns=None):
    s = {"kind": "ServiceAccount", "name": name}
    if ns is not None:
        s["namespace"] = ns
    return s


def rule(verbs, resources=None, groups=("",), names=None, urls=None):
    r = {"verbs": list(verbs)}
    if resources is not None:
        r["apiGroups"] = list(groups)
        r["resources"] = list(resources)
    if names is not None:
        r["resourceNames"] = list(names)
    if urls is not None:
        r["nonResourceURLs"] = list(urls)
    return r


def res(verb, resource, ns="", group="", sub="", name=""):
    return {"verb": verb, "group": group, "version": "v1", "resource": resource, "subresource": sub,
            "namespace": ns, "name": name}


async def mk_ns(api, name):
    await api.rest.create(api.registry.by_resource("", "v1", "namespaces"), None,
                          {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def cluster_role(api, name, rules):
    await api.rest.create(_kind(api, "clusterroles"), None,
                          {"apiVersion": AV, "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})


async def role(api, ns, name, rules):
    await api.rest.create(_kind(api, "roles"), ns, {"apiVersion": AV, "kind": "Role",
                                                    "metadata": {"name": name, "namespace": ns}, "rules": rules})


async def crb(api, name, role_name, subjects, role_kind="ClusterRole"):
    await api.rest.create(_kind(api, "clusterrolebindings"), None, {
        "apiVersion": AV, "kind": "ClusterRoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": G, "kind": role_kind, "name": role_name}, "subjects": subjects})


async def rb(api, ns, name, role_kind, role_name, subjects):
    await api.rest.create(_kind(api, "rolebindings"), ns, {
        "apiVersion": AV, "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": G, "kind": role_kind, "name": role_name}, "subjects": subjects})


async def raw_put(api, plural, obj):
    """Write an object straight to the store, past validation (as a corrupted or foreign store might hold it)."""
    k = _kind(api, plural)
    meta = obj["metadata"]
    await api.store.create(k.key(meta.get("namespace"), meta["name"]), orjson.dumps(obj))


@pytest.fixture
async def az(api):
    await mk_ns(api, "a")
    await mk_ns(api, "b")
    await api.cache.fresh()
    return RBACAuthorizer(api.cache, api.registry)


async def fresh(api):
    await api.cache.fresh()


# ---------------------------------------------------------------- deny by default, ClusterRoleBindings

async def test_nothing_is_allowed_without_bindings(api, az):
    assert az.authorize("alice", AUTH, res("get", "pods", "a"), True) == (False, "")
    assert az.authorize("alice", AUTH, {"verb": "get", "path": "/healthz"}, False) == (False, "")
    assert az.rules_for("alice", AUTH, "a") == ([], [], False)


async def test_cluster_role_binding_grants_in_every_namespace_cluster_wide_and_urls(api, az):
    await cluster_role(api, "reader", [rule(["get", "list"], ["pods", "nodes"]), rule(["get"], urls=["/healthz"])])
    await crb(api, "read-all", "reader", [user("alice")])
    await fresh(api)
    why = 'RBAC: allowed by ClusterRoleBinding "read-all" of ClusterRole "reader" to User "alice"'
    assert az.authorize("alice", (), res("get", "pods", "a"), True) == (True, why)
    assert az.authorize("alice", (), res("list", "pods", "b"), True) == (True, why)
    assert az.authorize("alice", (), res("list", "pods"), True) == (True, why)  # across namespaces
    assert az.authorize("alice", (), res("get", "nodes", name="n1"), True) == (True, why)
    assert az.authorize("alice", (), {"verb": "get", "path": "/healthz"}, False) == (True, why)
    # ... and nothing else, nor for anyone else.
    assert az.authorize("alice", (), res("delete", "pods", "a"), True) == (False, "")
    assert az.authorize("alice", (), res("get", "secrets", "a"), True) == (False, "")
    assert az.authorize("alice", (), {"verb": "post", "path": "/healthz"}, False) == (False, "")
    assert az.authorize("bob", (), res("get", "pods", "a"), True) == (False, "")


# ---------------------------------------------------------------- rule matching

async def test_verbs_and_the_verb_wildcard(api, az):
    await cluster_role(api, "some", [rule(["get", "watch"], ["configmaps"])])
    await cluster_role(api, "all", [rule(["*"], ["secrets"])])
    await crb(api, "b1", "some", [user("u")])
    await crb(api, "b2", "all", [user("u")])
    await fresh(api)
    assert az.authorize("u", (), res("watch", "configmaps", "a"), True)[0]
    assert not az.authorize("u", (), res("update", "configmaps", "a"), True)[0]
    for verb in ("get", "deletecollection", "escalate", "impersonate"):
        assert az.authorize("u", (), res(verb, "secrets", "a"), True)[0], verb
    assert not az.authorize("u", (), res("get", "services", "a"), True)[0]


async def test_api_groups_and_the_group_wildcard(api, az):
    await cluster_role(api, "apps", [rule(["get"], ["deployments"], groups=["apps"])])
    await cluster_role(api, "any", [rule(["list"], ["widgets"], groups=["*"])])
    await crb(api, "b1", "apps", [user("u")])
    await crb(api, "b2", "any", [user("u")])
    await fresh(api)
    assert az.authorize("u", (), res("get", "deployments", "a", group="apps"), True)[0]
    assert not az.authorize("u", (), res("get", "deployments", "a", group="extensions"), True)[0]
    assert not az.authorize("u", (), res("get", "deployments", "a"), True)[0]  # "" is the core group
    assert az.authorize("u", (), res("list", "widgets", "a", group="example.com"), True)[0]
    assert az.authorize("u", (), res("list", "widgets", "a"), True)[0]
    assert not az.authorize("u", (), res("list", "gadgets", "a", group="example.com"), True)[0]


async def test_resources_wildcard_and_subresources(api, az):
    await cluster_role(api, "r", [rule(["get"], ["pods/log"]), rule(["get"], ["services"]),
                                  rule(["update"], ["*/scale"], groups=["*"]),
                                  rule(["get"], ["nodes/*"]), rule(["list"], ["*"])])
    await crb(api, "b", "r", [user("u")])
    await fresh(api)
    ok = lambda verb, resource, sub="", grp="": az.authorize(  # noqa: E731
        "u", (), res(verb, resource, "a", group=grp, sub=sub, name="x"), True)[0]
    assert ok("get", "pods", "log")
    assert not ok("get", "pods")              # the subresource alone does not grant its parent
    assert not ok("get", "pods", "exec")
    assert ok("get", "services")
    assert not ok("get", "services", "proxy")  # ... nor the parent its subresources
    assert ok("update", "deployments", "scale", "apps")
    assert ok("update", "replicationcontrollers", "scale")
    assert not ok("update", "deployments", "", "apps")
    assert not ok("update", "deployments", "status", "apps")
    # Upstream has no "resource/*" form: "nodes/*" grants no subresource of nodes.
    assert not ok("get", "nodes", "proxy")
    assert not ok("get", "nodes", "status")
    assert ok("list", "anything")
    assert ok("list", "pods", "log")          # "*" covers subresources too


async def test_resource_names_limit_to_named_objects_and_never_match_nameless_requests(api, az):
    await cluster_role(api, "named", [rule(["get", "list", "create", "update"], ["configmaps"], names=["cfg"])])
    await cluster_role(api, "unnamed", [rule(["get", "list"], ["secrets"])])
    await crb(api, "b1", "named", [user("u")])
    await crb(api, "b2", "unnamed", [user("u")])
    await fresh(api)
    assert az.authorize("u", (), res("get", "configmaps", "a", name="cfg"), True)[0]
    assert az.authorize("u", (), res("update", "configmaps", "a", name="cfg"), True)[0]
    assert not az.authorize("u", (), res("get", "configmaps", "a", name="other"), True)[0]
    assert not az.authorize("u", (), res("list", "configmaps", "a"), True)[0]
    assert not az.authorize("u", (), res("create", "configmaps", "a"), True)[0]
    # No resourceNames: every name and no name.
    assert az.authorize("u", (), res("get", "secrets", "a", name="any"), True)[0]
    assert az.authorize("u", (), res("list", "secrets", "a"), True)[0]


async def test_non_resource_urls_exact_prefix_and_star(api, az):
    await cluster_role(api, "exact", [rule(["get"], urls=["/healthz"])])
    await cluster_role(api, "prefix", [rule(["get"], urls=["/apis/*"])])
    await cluster_role(api, "star", [rule(["post"], urls=["*"])])
    await crb(api, "b1", "exact", [user("u")])
    await crb(api, "b2", "prefix", [user("u")])
    await crb(api, "b3", "star", [user("v")])
    await fresh(api)
    url = lambda who, verb, path: az.authorize(who, (), {"verb": verb, "path": path}, False)[0]  # noqa: E731
    assert url("u", "get", "/healthz")
    assert not url("u", "get", "/healthz/ready")
    assert not url("u", "get", "/health")
    assert url("u", "get", "/apis/")
    assert url("u", "get", "/apis/apps/v1")
    assert not url("u", "get", "/apis")
    assert not url("u", "post", "/apis/apps")
    assert url("v", "post", "/anything/at/all")
    assert not url("v", "get", "/anything")
    # A URL rule never grants a resource request.
    assert not az.authorize("v", (), res("post", "pods", "a"), True)[0]


# ---------------------------------------------------------------- RoleBindings

async def test_role_binding_to_a_cluster_role_grants_only_in_its_namespace(api, az):
    await cluster_role(api, "edit", [rule(["*"], ["*"], groups=["*"]), rule(["get"], urls=["/metrics"])])
    await rb(api, "a", "edit-a", "ClusterRole", "edit", [user("alice")])
    await fresh(api)
    assert az.authorize("alice", (), res("delete", "pods", "a", name="p"), True) == (
        True, 'RBAC: allowed by RoleBinding "edit-a/a" of ClusterRole "edit" to User "alice"')
    assert az.authorize("alice", (), res("delete", "pods", "b", name="p"), True) == (False, "")
    assert az.authorize("alice", (), res("list", "pods"), True) == (False, "")
    assert az.authorize("alice", (), res("get", "nodes", name="n"), True) == (False, "")
    # The ClusterRole's non-resource rules do not come through a RoleBinding.
    assert az.authorize("alice", (), {"verb": "get", "path": "/metrics"}, False) == (False, "")


async def test_role_binding_to_a_role_uses_the_role_of_its_own_namespace(api, az):
    await role(api, "a", "pod-reader", [rule(["get"], ["pods"])])
    await role(api, "b", "pod-reader", [rule(["get", "delete"], ["pods"])])
    await rb(api, "a", "read", "Role", "pod-reader", [user("alice")])
    await fresh(api)
    assert az.authorize("alice", (), res("get", "pods", "a", name="p"), True) == (
        True, 'RBAC: allowed by RoleBinding "read/a" of Role "pod-reader" to User "alice"')
    assert not az.authorize("alice", (), res("delete", "pods", "a", name="p"), True)[0]  # b's role is not a's
    assert not az.authorize("alice", (), res("get", "pods", "b", name="p"), True)[0]


# ---------------------------------------------------------------- subjects

async def test_group_subjects_match_membership(api, az):
    await cluster_role(api, "discovery", [rule(["get"], urls=["/api", "/api/*"])])
    await crb(api, "disc", "discovery", [group("system:authenticated")])
    await fresh(api)
    assert az.authorize("anyone", AUTH, {"verb": "get", "path": "/api/v1"}, False) == (
        True, 'RBAC: allowed by ClusterRoleBinding "disc" of ClusterRole "discovery" to Group '
              '"system:authenticated"')
    assert az.authorize("anyone", ("system:unauthenticated",), {"verb": "get", "path": "/api"}, False)[0] is False
    # A user named like the group is not in it.
    assert az.authorize("system:authenticated", (), {"verb": "get", "path": "/api"}, False)[0] is False


async def test_service_account_subjects(api, az):
    await cluster_role(api, "r", [rule(["get"], ["pods"])])
    await crb(api, "sa-explicit", "r", [sa("builder", "a")])
    await rb(api, "b", "sa-implicit", "ClusterRole", "r", [sa("deployer")])
    await crb(api, "sa-as-user", "r", [user("system:serviceaccount:a:runner")])
    await fresh(api)
    get = res("get", "pods", "b", name="p")
    assert az.authorize("system:serviceaccount:a:builder", (), get, True) == (
        True, 'RBAC: allowed by ClusterRoleBinding "sa-explicit" of ClusterRole "r" to ServiceAccount "builder/a"')
    assert not az.authorize("system:serviceaccount:b:builder", (), get, True)[0]
    assert not az.authorize("builder", (), get, True)[0]
    # Without a namespace, a RoleBinding's service account is in the binding's namespace.
    assert az.authorize("system:serviceaccount:b:deployer", (), get, True) == (
        True, 'RBAC: allowed by RoleBinding "sa-implicit/b" of ClusterRole "r" to ServiceAccount "deployer/b"')
    assert not az.authorize("system:serviceaccount:a:deployer", (), res("get", "pods", "a"), True)[0]
    # A User subject spelling a service account's user name matches it too.
    assert az.authorize("system:serviceaccount:a:runner", (), get, True) == (
        True, 'RBAC: allowed by ClusterRoleBinding "sa-as-user" of ClusterRole "r" to User '
              '"system:serviceaccount:a:runner"')


async def test_cluster_role_binding_service_account_without_namespace_matches_nobody(api, az):
    await cluster_role(api, "r", [rule(["get"], ["pods"])])
    # Validation would require the namespace; a stored object without it must still be safe.
    await raw_put(api, "clusterrolebindings", {
        "apiVersion": AV, "kind": "ClusterRoleBinding", "metadata": {"name": "nsless"},
        "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": "r"},
        "subjects": [sa("builder"), {"kind": "Robot", "name": "r2d2"}]})
    await fresh(api)
    for who in ("system:serviceaccount::builder", "system:serviceaccount:default:builder", "builder", "r2d2"):
        assert not az.authorize(who, (), res("get", "pods", "a"), True)[0], who


async def test_the_reason_names_the_first_subject_of_the_binding_that_applies(api, az):
    await cluster_role(api, "r", [rule(["get"], ["pods"])])
    await crb(api, "team", "r", [user("bob"), group("devs"), user("alice")])
    await crb(api, "a-first", "r", [user("carol")])
    await fresh(api)
    assert az.authorize("alice", ("devs",), res("get", "pods", "a"), True)[1].endswith('to Group "devs"')
    assert az.authorize("alice", (), res("get", "pods", "a"), True)[1].endswith('to User "alice"')
    # ClusterRoleBindings are visited by name, so the reason is stable.
    await crb(api, "0-also", "r", [user("alice")])
    await fresh(api)
    assert az.authorize("alice", ("devs",), res("get", "pods", "a"), True)[1] == (
        'RBAC: allowed by ClusterRoleBinding "0-also" of ClusterRole "r" to User "alice"')


# ---------------------------------------------------------------- missing roles, malformed objects

async def test_a_binding_to_a_missing_role_grants_nothing_and_says_why_on_denial(api, az):
    await crb(api, "ghostly", "ghost", [user("u")])
    await rb(api, "a", "local-ghost", "Role", "phantom", [user("u")])
    await fresh(api)
    assert az.authorize("u", (), res("get", "pods", "b"), True) == (
        False, 'RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found')
    assert az.authorize("u", (), res("get", "pods", "a"), True) == (
        False, 'RBAC: [clusterrole.rbac.authorization.k8s.io "ghost" not found, '
               'role.rbac.authorization.k8s.io "phantom" not found]')
    assert az.rules_for("u", (), "a") == ([], [], False)
    # Another binding still grants; the missing one is no obstacle.
    await cluster_role(api, "real", [rule(["get"], ["pods"])])
    await crb(api, "real", "real", [user("u")])
    await fresh(api)
    assert az.authorize("u", (), res("get", "pods", "a"), True)[0]
    # The role appearing later makes the binding work.
    await cluster_role(api, "ghost", [rule(["list"], ["pods"])])
    await fresh(api)
    assert az.authorize("u", (), res("list", "pods", "a"), True) == (
        True, 'RBAC: allowed by ClusterRoleBinding "ghostly" of ClusterRole "ghost" to User "u"')


async def test_a_cluster_role_binding_cannot_use_a_role(api, az):
    await role(api, "a", "r", [rule(["get"], ["pods"])])
    await raw_put(api, "clusterrolebindings", {
        "apiVersion": AV, "kind": "ClusterRoleBinding", "metadata": {"name": "odd"},
        "roleRef": {"apiGroup": G, "kind": "Role", "name": "r"}, "subjects": [user("u")]})
    await raw_put(api, "clusterrolebindings", {
        "apiVersion": AV, "kind": "ClusterRoleBinding", "metadata": {"name": "odder"},
        "roleRef": {"apiGroup": G, "kind": "Gizmo", "name": "r"}, "subjects": [user("v")]})
    await fresh(api)
    assert az.authorize("u", (), res("get", "pods", "a"), True) == (
        False, 'RBAC: role.rbac.authorization.k8s.io "r" not found')
    assert az.authorize("v", (), res("get", "pods", "a"), True) == (
        False, 'RBAC: unsupported role reference kind: "Gizmo"')


async def test_malformed_objects_are_skipped_and_never_crash(api, az):
    await raw_put(api, "clusterroles", {"apiVersion": AV, "kind": "ClusterRole", "metadata": {"name": "bad-rules"},
                                        "rules": "everything"})
    await raw_put(api, "clusterroles", {"apiVersion": AV, "kind": "ClusterRole", "metadata": {"name": "mixed"},
                                        "rules": ["x", {"verbs": "get", "apiGroups": [""], "resources": ["pods"]},
                                                  {"verbs": ["get"], "apiGroups": [""], "resources": [7]},
                                                  {"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]})
    for name, body in [("no-ref", {"subjects": [user("u")]}),
                       ("str-ref", {"roleRef": "mixed", "subjects": [user("u")]}),
                       ("bad-subjects", {"roleRef": {"kind": "ClusterRole", "name": "mixed"},
                                         "subjects": {"kind": "User", "name": "u"}}),
                       ("bad-role-name", {"roleRef": {"kind": "ClusterRole", "name": ["mixed"]},
                                          "subjects": [user("u")]})]:
        await raw_put(api, "clusterrolebindings", {"apiVersion": AV, "kind": "ClusterRoleBinding",
                                                   "metadata": {"name": name}, **body})
    await raw_put(api, "clusterrolebindings", {
        "apiVersion": AV, "kind": "ClusterRoleBinding", "metadata": {"name": "good"},
        "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": "mixed"},
        "subjects": [None, {"kind": "User", "name": 5}, "u", user("u")]})
    await raw_put(api, "clusterrolebindings", {
        "apiVersion": AV, "kind": "ClusterRoleBinding", "metadata": {"name": "bad-role"},
        "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": "bad-rules"}, "subjects": [user("u")]})
    await fresh(api)
    # Only the one well-formed rule of "mixed" grants, through the one well-formed binding.
    assert az.authorize("u", (), res("list", "pods", "a"), True) == (
        True, 'RBAC: allowed by ClusterRoleBinding "good" of ClusterRole "mixed" to User "u"')
    assert az.authorize("u", (), res("get", "pods", "a"), True) == (False, "")
    res_rules, non_rules, _ = az.rules_for("u", (), "a")
    assert res_rules == [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}] and non_rules == []
    # Attributes of the wrong type are read as empty, not trusted and not fatal.
    assert az.authorize("u", (), {"verb": ["list"], "resource": "pods", "namespace": 3}, True) == (False, "")
    assert az.authorize("u", (), {}, False) == (False, "")
    # So are users and groups of the wrong type (a SubjectAccessReview body can carry anything).
    assert az.authorize({"name": "u"}, ([1], "u"), res("list", "pods", "a"), True) == (False, "")  # type: ignore
    assert az.authorize("u", None, res("list", "pods", "a"), True)[0]  # type: ignore[arg-type]
    assert az.rules_for(7, [{}], "a") == ([], [], False)  # type: ignore[arg-type]
    # A namespace of the wrong type is no namespace: the cluster-wide rules only.
    assert az.rules_for("u", (), {"ns": 1}) == (res_rules, [], False)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the index follows the cache

async def test_the_index_follows_edits_and_deletes(api, az):
    await cluster_role(api, "r", [rule(["get"], ["pods"])])
    await crb(api, "b", "r", [user("u")])
    await fresh(api)
    assert az.authorize("u", (), res("get", "pods", "a"), True)[0]
    kind = _kind(api, "clusterroles")
    await api.rest.update(kind, None, "r", {"apiVersion": AV, "kind": "ClusterRole", "metadata": {"name": "r"},
                                            "rules": [rule(["list"], ["pods"])]})
    await fresh(api)
    assert not az.authorize("u", (), res("get", "pods", "a"), True)[0]
    assert az.authorize("u", (), res("list", "pods", "a"), True)[0]
    await api.rest.delete(kind, None, "r", b"")
    await fresh(api)
    assert az.authorize("u", (), res("list", "pods", "a"), True) == (
        False, 'RBAC: clusterrole.rbac.authorization.k8s.io "r" not found')
    await cluster_role(api, "r", [rule(["list"], ["pods"])])
    await fresh(api)
    assert az.authorize("u", (), res("list", "pods", "a"), True)[0]
    await api.rest.delete(_kind(api, "clusterrolebindings"), None, "b", b"")
    await fresh(api)
    assert az.authorize("u", (), res("list", "pods", "a"), True) == (False, "")


async def test_the_index_is_rebuilt_only_when_rbac_objects_change(api, az, monkeypatch):
    await cluster_role(api, "r", [rule(["get"], ["pods"])])
    await crb(api, "b", "r", [user("u")])
    await fresh(api)
    builds = []
    real = az._build
    monkeypatch.setattr(az, "_build", lambda caches: builds.append(1) or real(caches))
    for _ in range(5):
        assert az.authorize("u", (), res("get", "pods", "a"), True)[0]
    assert len(builds) == 1
    await api.rest.create(api.registry.by_resource("", "v1", "configmaps"), "a",
                          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    await fresh(api)
    assert az.authorize("u", (), res("get", "pods", "a"), True)[0]
    assert len(builds) == 1
    await role(api, "a", "x", [rule(["get"], ["secrets"])])
    await fresh(api)
    assert az.authorize("u", (), res("get", "pods", "a"), True)[0]
    assert len(builds) == 2


# ---------------------------------------------------------------- rules_for and rules_applying

async def test_rules_for_lists_cluster_and_namespace_rules_as_the_rules_review_does(api, az):
    await cluster_role(api, "basic", [rule(["create"], ["selfsubjectaccessreviews"], groups=["authorization.k8s.io"]),
                                      rule(["get"], urls=["/healthz", "/version"])])
    await cluster_role(api, "edit", [rule(["get", "list"], ["pods"], names=["p1"]), rule(["get"], urls=["/x"])])
    await role(api, "a", "cm", [rule(["*"], ["configmaps"])])
    await crb(api, "basic", "basic", [group("system:authenticated")])
    await rb(api, "a", "edit", "ClusterRole", "edit", [user("u")])
    await rb(api, "a", "cm", "Role", "cm", [user("u")])
    await fresh(api)
    basic = [{"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews"]}]
    assert az.rules_for("u", AUTH, "a") == (
        basic + [{"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"]},
                 {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["p1"]}],
        # As upstream's rules review, a RoleBinding's ClusterRole URL rules are listed (they grant nothing).
        [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/version"]},
         {"verbs": ["get"], "nonResourceURLs": ["/x"]}],
        False)
    assert az.rules_for("u", AUTH, "b") == (basic, [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/version"]}],
                                            False)
    assert az.rules_for("u", (), "b") == ([], [], False)
    # The result is a copy: changing it changes nothing.
    az.rules_for("u", AUTH, "b")[0][0]["verbs"].append("delete")
    assert az.rules_for("u", AUTH, "b")[0] == basic


async def test_rules_applying_is_every_rule_held_in_the_namespace(api, az):
    await cluster_role(api, "c", [rule(["get"], ["nodes"]), rule(["get"], urls=["/metrics"])])
    await role(api, "a", "r", [rule(["list"], ["pods"])])
    await crb(api, "c", "c", [user("u")])
    await rb(api, "a", "r", "Role", "r", [user("u")])
    await rb(api, "a", "ghost", "Role", "ghost", [user("u")])
    await fresh(api)
    cluster = [{"verbs": ["get"], "apiGroups": [""], "resources": ["nodes"]},
               {"verbs": ["get"], "nonResourceURLs": ["/metrics"]}]
    assert az.rules_applying("u", (), "") == cluster
    assert az.rules_applying("u", (), "a") == cluster + [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]
    assert az.resolve("u", (), "a")[1] == ['roles.rbac.authorization.k8s.io "ghost" not found']


# ---------------------------------------------------------------- escalation

def test_covers_exact_wildcards_and_subresources():
    owner = [rule(["get", "list"], ["pods", "services"]), rule(["*"], ["deployments"], groups=["apps"]),
             rule(["update"], ["*/scale"], groups=["*"]), rule(["get"], ["nodes/*"]),
             rule(["get"], urls=["/healthz", "/apis/*"])]
    assert covers(owner, [rule(["get"], ["pods"])]) == (True, [])
    assert covers(owner, [rule(["list", "get"], ["services", "pods"])]) == (True, [])
    assert covers(owner, [rule(["delete", "patch", "*"], ["deployments"], groups=["apps"])]) == (True, [])
    assert covers(owner, [rule(["update"], ["deployments/scale", "statefulsets/scale"], groups=["apps"])])[0]
    assert covers(owner, [rule(["get"], urls=["/healthz", "/apis/apps", "/apis/*"])]) == (True, [])
    assert covers(owner, []) == (True, [])
    # What is not held comes back as atoms, in order.
    ok, missing = covers(owner, [rule(["get", "delete"], ["pods", "secrets"])])
    assert not ok and missing == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["delete"]}]
    assert covers(owner, [rule(["get"], ["deployments"], groups=["extensions"])])[0] is False
    assert covers(owner, [rule(["get"], ["pods"], groups=["*"])])[0] is False     # "*" needs "*"
    assert covers(owner, [rule(["get"], ["*"])])[0] is False
    assert covers(owner, [rule(["*"], ["pods"])])[0] is False
    assert covers(owner, [rule(["get"], ["pods/log"])])[0] is False
    assert covers(owner, [rule(["get"], ["nodes/proxy"])])[0] is False            # no "resource/*" form
    assert covers(owner, [rule(["update"], ["deployments"], groups=["apps"])])[0] is True
    assert covers(owner, [rule(["update"], ["statefulsets"], groups=["apps"])])[0] is False
    assert covers(owner, [rule(["get"], urls=["/apis"])]) == (False, [{"nonResourceURLs": ["/apis"], "verbs": ["get"]}])
    assert covers(owner, [rule(["post"], urls=["/healthz"])])[0] is False
    # The superuser's rules cover anything.
    assert covers(rbac.FULL_AUTHORITY, owner + [rule(["*"], ["*"], groups=["*"])]) == (True, [])


def test_covers_resource_names():
    named = [rule(["get", "update"], ["configmaps"], names=["a", "b"])]
    assert covers(named, [rule(["get"], ["configmaps"], names=["a"])]) == (True, [])
    assert covers(named, [rule(["get", "update"], ["configmaps"], names=["b", "a"])]) == (True, [])
    ok, missing = covers(named, [rule(["get"], ["configmaps"], names=["a", "c"])])
    assert not ok and missing == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
                                   "resourceNames": ["c"]}]
    # Names held do not cover every name.
    assert covers(named, [rule(["get"], ["configmaps"])])[0] is False
    # Holding every name covers any names.
    assert covers([rule(["get"], ["configmaps"])], [rule(["get"], ["configmaps"], names=["x", "y"])]) == (True, [])


def test_covers_tolerates_malformed_rules():
    good = rule(["get"], ["pods"])
    assert covers(["junk", {"verbs": "get"}, good], [good, 5, {"verbs": ["get"], "resources": "pods"}]) == (True, [])
    assert covers(["junk"], [good])[0] is False


def test_escalation_message_is_upstreams():
    missing = covers([], [rule(["get", "list"], ["secrets"]), rule(["get"], ["pods"], names=["p"]),
                          rule(["watch"], ["deployments"], groups=["apps"]), rule(["get"], urls=["/metrics"])])[1]
    msg = escalation_message("alice", ("system:authenticated",), missing)
    assert msg == (
        'user "alice" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:[""], Resources:["pods"], ResourceNames:["p"], Verbs:["get"]}\n'
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "list"]}\n'
        '{APIGroups:["apps"], Resources:["deployments"], Verbs:["watch"]}\n'
        '{NonResourceURLs:["/metrics"], Verbs:["get"]}')
    assert escalation_message("bob", (), [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
                              ['roles.rbac.authorization.k8s.io "x" not found']) == (
        'user "bob" (groups=[]) is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:[""], Resources:["pods"], Verbs:["get"]}'
        '; resolution errors: [roles.rbac.authorization.k8s.io "x" not found]')
    # Names are quoted as Go quotes them; two groups are space-separated.
    assert escalation_message('e"ve', ("g1", "g2"), []).startswith('user "e\\"ve" (groups=["g1" "g2"])')


async def test_confirm_no_escalation_weighs_the_writers_own_rules_in_the_namespace(api, az):
    await role(api, "a", "cm-admin", [rule(["*"], ["configmaps"]), rule(["create"], ["roles"], groups=[G])])
    await rb(api, "a", "cm-admin", "Role", "cm-admin", [user("u")])
    await fresh(api)
    assert az.confirm_no_escalation("u", AUTH, "a", [rule(["get", "list"], ["configmaps"])]) is None
    assert az.confirm_no_escalation("u", AUTH, "a", [rule(["get"], ["secrets"])]) == (
        'user "u" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}')
    # Cluster-wide (a ClusterRole write), the namespace's RoleBindings do not count.
    assert az.confirm_no_escalation("u", AUTH, "", [rule(["get"], ["configmaps"])]) is not None
    assert az.confirm_no_escalation("u", AUTH, "b", [rule(["get"], ["configmaps"])]) is not None


async def test_bind_and_escalate_checks(api, az):
    await cluster_role(api, "view", [rule(["get"], ["pods"])])
    await cluster_role(api, "binder", [rule(["bind"], ["clusterroles"], groups=[G], names=["view"])])
    await cluster_role(api, "escalator", [rule(["escalate"], ["roles"], groups=[G])])
    await rb(api, "a", "binder", "ClusterRole", "binder", [user("u")])
    await rb(api, "a", "escalator", "ClusterRole", "escalator", [user("u")])
    await fresh(api)
    view = {"apiGroup": G, "kind": "ClusterRole", "name": "view"}
    admin = {"apiGroup": G, "kind": "ClusterRole", "name": "admin"}
    assert az.authorize("u", (), rbac.bind_attributes(view, "a"), True)[0]
    assert not az.authorize("u", (), rbac.bind_attributes(admin, "a"), True)[0]
    assert not az.authorize("u", (), rbac.bind_attributes(view, "b"), True)[0]
    assert not az.authorize("u", (), rbac.bind_attributes(view, ""), True)[0]  # a ClusterRoleBinding
    assert az.authorize("u", (), rbac.escalate_attributes("roles", "a", "anything"), True)[0]
    assert not az.authorize("u", (), rbac.escalate_attributes("clusterroles", "", "x"), True)[0]


async def test_role_ref_rules(api, az):
    await cluster_role(api, "c", [rule(["get"], ["pods"])])
    await role(api, "a", "r", [rule(["list"], ["pods"])])
    await fresh(api)
    assert az.role_ref_rules({"kind": "ClusterRole", "name": "c"}, "a") == [rule(["get"], ["pods"])]
    assert az.role_ref_rules({"kind": "ClusterRole", "name": "c"}, "") == [rule(["get"], ["pods"])]
    assert az.role_ref_rules({"kind": "Role", "name": "r"}, "a") == [rule(["list"], ["pods"])]
    assert az.role_ref_rules({"kind": "Role", "name": "r"}, "b") is None
    assert az.role_ref_rules({"kind": "Role", "name": "r"}, "") is None
    assert az.role_ref_rules({"kind": "ClusterRole", "name": "nope"}, "") is None
    assert az.role_ref_rules("junk", "") is None  # type: ignore[arg-type]
    assert rbac.role_ref_not_found({"kind": "Role", "name": "r"}) == ("roles", "r")


# ---------------------------------------------------------------- scale

def test_a_thousand_bindings_authorize_in_microseconds():
    """Not a timed assertion: a by-hand check (run with -s) that lookups are O(this subject's bindings)."""
    cache = WatchCache(None)  # type: ignore[arg-type]  # fed directly, never started
    from kybernetes.api.kinds import builtin_registry
    registry = builtin_registry()
    rv = 0

    def put(plural, obj):
        nonlocal rv
        rv += 1
        k = registry.by_resource(G, "v1", plural)
        meta = obj["metadata"]
        key = k.key(meta.get("namespace"), meta["name"])
        c = cache.cache(k.storage_prefix)
        c.apply("ADDED", KV(key, orjson.dumps(obj), rv, rv), c.objects.get(key))

    for i in range(50):
        put("clusterroles", {"metadata": {"name": f"role-{i}"},
                             "rules": [rule(["get", "list"], [f"res{i}-{j}" for j in range(10)])]})
    for i in range(1000):
        put("clusterrolebindings", {"metadata": {"name": f"b-{i}"},
                                    "roleRef": {"kind": "ClusterRole", "name": f"role-{i % 50}"},
                                    "subjects": [user(f"user-{i}")]})
        put("rolebindings", {"metadata": {"name": f"rb-{i}", "namespace": f"ns-{i % 100}"},
                             "roleRef": {"kind": "ClusterRole", "name": f"role-{i % 50}"},
                             "subjects": [user(f"user-{i}"), group("system:authenticated")]})
    az = RBACAuthorizer(cache, registry)
    t0 = time.perf_counter()
    assert az.authorize("user-7", AUTH, res("get", "res7-3", "ns-7"), True)[0]
    first = time.perf_counter() - t0
    n = 2000
    t0 = time.perf_counter()
    for i in range(n):
        az.authorize(f"user-{i % 1000}", AUTH, res("list", f"res{i % 50}-9", f"ns-{i % 100}"), True)
    per = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        az.authorize("user-999", AUTH, res("delete", "nothing", "ns-3"), True)
    per_deny = (time.perf_counter() - t0) / n
    print(f"\nrbac: first call (index build) {first * 1e3:.2f} ms, allow {per * 1e6:.1f} us, "
          f"deny {per_deny * 1e6:.1f} us")
    # Correctness at scale: a RoleBinding's group grant stays in its namespace.
    assert az.authorize("nobody", AUTH, res("get", "res3-0", "ns-3"), True)[0]
    assert not az.authorize("nobody", AUTH, res("get", "res4-0", "ns-3"), True)[0]
