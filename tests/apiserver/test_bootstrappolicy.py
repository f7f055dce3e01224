"""The bootstrap RBAC policy (apiserver/bootstrappolicy.py): its data, what it grants, and its reconciliation.

The data is checked as a whole (labels, names, references) and through the
grants that matter (what view, edit and admin may do once aggregated, what
the control-plane identities may do). The grants are asked of the real
RBACAuthorizer over a real APIServer's watch cache, after reconcile wrote
the policy there; reconcile is then run again over changed objects.
"""

from __future__ import annotations

import copy

import pytest

from kybernetes.apiserver import bootstrappolicy as bp
from kybernetes.apiserver.rbac import RBACAuthorizer, covers
from kybernetes.controllers.clusterroleaggregation import aggregate_rules

G = bp.GROUP
AUTH = ("system:authenticated",)
UNAUTH = ("system:unauthenticated",)
PLURALS = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings", "Role": "roles",
           "RoleBinding": "rolebindings"}


# ---------------------------------------------------------------- helpers

def objects_of(kind):
    return {o["metadata"]["name"]: o for o in bp.bootstrap_objects() if o["kind"] == kind}


def rules_of(name):
    """A ClusterRole's rules, an aggregated one's as the aggregation controller would fill them."""
    roles = objects_of("ClusterRole")
    role = roles[name]
    if "aggregationRule" in role:
        # admin aggregates edit, which aggregates view: fill the inner ones first.
        for inner in ("view", "edit"):
            roles[inner]["rules"] = aggregate_rules(roles[inner], roles.values())
        return aggregate_rules(role, roles.values())
    return role["rules"]


def grants(rules, verb, resource, group=""):
    return covers(rules, [{"verbs": [verb], "apiGroups": [group], "resources": [resource]}])[0]


def res(verb, resource, ns="", group="", sub="", name=""):
    return {"verb": verb, "group": group, "version": "v1", "resource": resource, "subresource": sub,
            "namespace": ns, "name": name}


def url(verb, path):
    return {"verb": verb, "path": path}


def rc(client, kind):
    return client.resource(bp.API_VERSION, PLURALS[kind], namespaced=kind in ("Role", "RoleBinding"))


async def get(client, kind, name, ns=None):
    return await rc(client, kind).get(name, ns)


async def put(client, obj):
    await rc(client, obj["kind"]).update(obj)


async def versions(client):
    """resourceVersion of every bootstrap object as stored."""
    out = {}
    for o in bp.bootstrap_objects():
        meta = o["metadata"]
        stored = await get(client, o["kind"], meta["name"], meta.get("namespace"))
        out[(o["kind"], meta.get("namespace"), meta["name"])] = stored["metadata"]["resourceVersion"]
    return out


@pytest.fixture
async def reconciled(api, client):
    """A client on an API server the policy was reconciled into (by the server object itself)."""
    await bp.reconcile_bootstrap_policy(api)
    return client


@pytest.fixture
async def az(api, reconciled):
    # Fill the aggregated roles as the aggregation controller would.
    for name in ("view", "edit", "admin"):
        role = await get(reconciled, "ClusterRole", name)
        role["rules"] = rules_of(name)
        await put(reconciled, role)
    await api.cache.fresh()
    return RBACAuthorizer(api.cache, api.registry)


# ---------------------------------------------------------------- the data

def test_every_object_is_labelled_and_annotated_for_autoupdate():
    for o in bp.bootstrap_objects():
        meta = o["metadata"]
        assert o["apiVersion"] == "rbac.authorization.k8s.io/v1"
        # Upstream's defaults, or what kybernetes adds as a distribution (as kubeadm and k3s do).
        want = "kybernetes-defaults" if meta["name"].startswith("kybernetes:") else "rbac-defaults"
        assert meta["labels"]["kubernetes.io/bootstrapping"] == want, meta["name"]
        assert meta["annotations"] == {"rbac.authorization.kubernetes.io/autoupdate": "true"}, meta["name"]


def test_names_are_unique_per_kind_and_namespace():
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in bp.bootstrap_objects()]
    assert len(keys) == len(set(keys))


def test_bootstrap_objects_are_fresh_copies():
    first = objects_of("ClusterRole")["cluster-admin"]
    first["metadata"]["labels"]["x"] = "y"
    first["rules"].clear()
    again = objects_of("ClusterRole")["cluster-admin"]
    assert "x" not in again["metadata"]["labels"] and again["rules"]
    # Nor do the objects of one list share parts (every role has its own events rule).
    objs = bp.bootstrap_objects()
    seen = set()
    for o in objs:
        for part in [o["metadata"], *o.get("rules", []), *o.get("subjects", [])]:
            assert id(part) not in seen
            seen.add(id(part))


def test_well_known_roles_exist():
    roles = objects_of("ClusterRole")
    for name in ("cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user",
                 "system:public-info-viewer", "system:monitoring", "system:node", "system:node-proxier",
                 "system:kube-scheduler", "system:kube-controller-manager", "system:kube-dns",
                 "system:persistent-volume-provisioner", "system:node-bootstrapper", "system:auth-delegator",
                 "system:heapster", "system:kube-aggregator", "system:service-account-issuer-discovery",
                 "system:volume-scheduler", "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                 "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                 "system:certificates.k8s.io:kube-apiserver-client-approver",
                 "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
                 "system:certificates.k8s.io:kubelet-serving-approver",
                 "system:certificates.k8s.io:legacy-unknown-approver"):
        assert name in roles, name
    for c in ("attachdetach", "clusterrole-aggregation", "cronjob", "daemon-set", "deployment", "disruption",
              "endpoint", "endpointslice", "endpointslicemirroring", "expand", "ephemeral-volume",
              "job", "namespace", "node", "pvc-protection", "pv-protection", "replicaset", "statefulset",
              "ttl", "ttl-after-finished", "certificate", "validatingadmissionpolicy-status"):
        assert f"system:controller:{c}-controller" in roles, c
    for name in ("generic-garbage-collector", "horizontal-pod-autoscaler", "persistent-volume-binder",
                 "pod-garbage-collector", "replication-controller", "resourcequota-controller",
                 "route-controller", "service-account-controller", "service-controller",
                 "root-ca-cert-publisher", "legacy-service-account-token-cleaner"):
        assert f"system:controller:{name}" in roles, name


def test_aggregated_roles_select_their_feeders_and_nest():
    roles = objects_of("ClusterRole")
    for name in ("admin", "edit", "view"):
        assert roles[name]["aggregationRule"] == {
            "clusterRoleSelectors": [{"matchLabels": {f"rbac.authorization.k8s.io/aggregate-to-{name}": "true"}}]}
        assert "rules" not in roles[name]
        feeder = roles[f"system:aggregate-to-{name}"]
        assert feeder["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{name}"] == "true"
    assert roles["edit"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert roles["view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"


def test_view_edit_admin_grants():
    view, edit, admin = rules_of("view"), rules_of("edit"), rules_of("admin")
    assert grants(view, "list", "pods") and grants(view, "get", "configmaps")
    assert grants(view, "watch", "deployments", "apps")
    assert not grants(view, "get", "secrets")
    assert not grants(view, "create", "pods")
    assert not grants(view, "create", "pods", "exec") if False else not grants(view, "create", "pods/exec")
    assert grants(edit, "get", "secrets") and grants(edit, "create", "secrets")
    assert grants(edit, "create", "pods/exec") and grants(edit, "update", "deployments/scale", "apps")
    assert grants(edit, "list", "pods")  # edit holds view
    assert not grants(edit, "create", "rolebindings", G)
    assert grants(admin, "create", "rolebindings", G) and grants(admin, "delete", "roles", G)
    assert grants(admin, "get", "secrets")  # admin holds edit
    assert not grants(admin, "create", "clusterrolebindings", G)
    assert not grants(admin, "update", "resourcequotas")


def test_component_roles_key_grants():
    node = rules_of("system:node")
    assert grants(node, "update", "nodes/status") and grants(node, "patch", "pods/status")
    assert grants(node, "create", "serviceaccounts/token")
    sched = rules_of("system:kube-scheduler")
    assert grants(sched, "create", "bindings") and grants(sched, "create", "pods/binding")
    assert grants(sched, "list", "nodes") and not grants(sched, "update", "nodes")
    kcm = rules_of("system:kube-controller-manager")
    assert grants(kcm, "list", "anything", "example.com")
    gc = rules_of("system:controller:generic-garbage-collector")
    assert grants(gc, "delete", "widgets", "example.com")
    agg = rules_of("system:controller:clusterrole-aggregation-controller")
    assert grants(agg, "escalate", "clusterroles", G) and grants(agg, "update", "clusterroles", G)


def test_bindings_point_at_existing_roles():
    cluster_roles = objects_of("ClusterRole")
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in bp.bootstrap_objects()
             if o["kind"] == "Role"}
    for o in bp.bootstrap_objects():
        if o["kind"] == "ClusterRoleBinding":
            if not o["metadata"]["name"].startswith("kybernetes:"):  # upstream names each after its role
                assert o["roleRef"] == {"apiGroup": G, "kind": "ClusterRole", "name": o["metadata"]["name"]}
            assert o["roleRef"]["kind"] == "ClusterRole" and o["roleRef"]["name"] in cluster_roles
        elif o["kind"] == "RoleBinding":
            ref = o["roleRef"]
            assert ref["kind"] == "Role" and ref["apiGroup"] == G
            assert (o["metadata"]["namespace"], ref["name"]) in roles, o["metadata"]["name"]


def test_well_known_bindings():
    crbs = objects_of("ClusterRoleBinding")

    def subjects(name):
        return [(s["kind"], s.get("namespace", ""), s["name"]) for s in crbs[name]["subjects"]]
    assert subjects("cluster-admin") == [("Group", "", "system:masters")]
    assert subjects("system:discovery") == [("Group", "", "system:authenticated")]
    assert subjects("system:basic-user") == [("Group", "", "system:authenticated")]
    assert subjects("system:public-info-viewer") == [("Group", "", "system:authenticated"),
                                                     ("Group", "", "system:unauthenticated")]
    assert subjects("system:node-proxier") == [("User", "", "system:kube-proxy")]
    assert subjects("system:kube-controller-manager") == [("User", "", "system:kube-controller-manager")]
    assert subjects("system:kube-scheduler") == [("User", "", "system:kube-scheduler")]
    assert subjects("system:volume-scheduler") == [("User", "", "system:kube-scheduler")]
    assert subjects("system:kube-dns") == [("ServiceAccount", "kube-system", "kube-dns")]
    assert subjects("system:monitoring") == [("Group", "", "system:monitoring")]
    assert subjects("system:service-account-issuer-discovery") == [("Group", "", "system:serviceaccounts")]
    assert subjects("system:node") == []
    assert subjects("system:controller:deployment-controller") == [
        ("ServiceAccount", "kube-system", "deployment-controller")]
    controller_roles = [n for n in objects_of("ClusterRole") if n.startswith("system:controller:")]
    assert all(n in crbs for n in controller_roles)


# ---------------------------------------------------------------- what the policy grants, asked of RBAC

async def test_system_masters_may_do_anything(az):
    masters = ("system:masters", "system:authenticated")
    assert az.authorize("root", masters, res("delete", "secrets", "kube-system", name="x"), True)[0]
    assert az.authorize("root", masters, res("create", "widgets", group="example.com"), True)[0]
    assert az.authorize("root", masters, url("post", "/anything/at/all"), False)[0]
    assert not az.authorize("root", AUTH, res("delete", "secrets", "kube-system", name="x"), True)[0]


async def test_authenticated_users_discover_and_check_health(az):
    for path in ("/version", "/api", "/api/v1", "/apis/apps/v1", "/healthz", "/livez", "/readyz",
                 "/openapi/v2"):
        assert az.authorize("alice", AUTH, url("get", path), False)[0], path
    assert not az.authorize("alice", AUTH, url("get", "/metrics"), False)[0]
    assert az.authorize("alice", AUTH, res("create", "selfsubjectaccessreviews", group="authorization.k8s.io"),
                        True)[0]
    assert not az.authorize("alice", AUTH, res("list", "pods", "default"), True)[0]


async def test_unauthenticated_users_see_only_public_info(az):
    for path in ("/version", "/healthz", "/livez", "/readyz"):
        assert az.authorize("system:anonymous", UNAUTH, url("get", path), False)[0], path
    assert not az.authorize("system:anonymous", UNAUTH, url("get", "/api"), False)[0]
    assert not az.authorize("system:anonymous", UNAUTH, res("list", "pods", "default"), True)[0]
    assert not az.authorize("system:anonymous", UNAUTH, res("list", "pods"), True)[0]


async def test_component_identities(az):
    assert az.authorize("system:kube-scheduler", AUTH, res("create", "pods", "default", sub="binding",
                                                           name="p"), True)[0]
    assert az.authorize("system:kube-proxy", AUTH, res("watch", "endpointslices", group="discovery.k8s.io"),
                        True)[0]
    deploy = "system:serviceaccount:kube-system:deployment-controller"
    sa_groups = ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated")
    assert az.authorize(deploy, sa_groups, res("update", "deployments", "default", group="apps", sub="status",
                                               name="d"), True)[0]
    assert not az.authorize(deploy, sa_groups, res("delete", "nodes", name="n1"), True)[0]
    assert az.authorize(deploy, sa_groups, url("get", "/.well-known/openid-configuration"), False)[0]
    # Upstream's system:node binding names nobody (the Node authorizer applies its rules); RBAC gives
    # nodes only what their proxy, NetworkPolicy agent and ingress controller read.
    node = ("system:node:n1", ("system:nodes", "system:authenticated"))
    assert objects_of("ClusterRoleBinding")["system:node"]["subjects"] == []
    assert not az.authorize(*node, res("update", "nodes", sub="status", name="n1"), True)[0]
    assert not az.authorize(*node, res("get", "secrets", "a", name="s"), True)[0]
    assert az.authorize(*node, res("watch", "ingresses", group="networking.k8s.io"), True)[0]
    assert az.authorize(*node, res("update", "ingresses", "a", group="networking.k8s.io", sub="status",
                                   name="i"), True)[0]
    assert az.authorize(*node, res("list", "networkpolicies", group="networking.k8s.io"), True)[0]
    assert az.authorize(*node, res("watch", "endpointslices", group="discovery.k8s.io"), True)[0]
    assert not az.authorize(*node, res("create", "deployments", "a", group="apps"), True)[0]
    assert not az.authorize(*node, res("delete", "namespaces", name="a"), True)[0]
    # A bootstrap token may ask for a node certificate, and nothing else.
    joiner = ("system:bootstrap:abcdef", ("system:bootstrappers", "system:authenticated"))
    assert az.authorize(*joiner, res("create", "certificatesigningrequests", group="certificates.k8s.io"), True)[0]
    assert az.authorize(*joiner, res("create", "certificatesigningrequests", group="certificates.k8s.io",
                                     sub="nodeclient"), True)[0]
    assert not az.authorize(*joiner, res("list", "secrets", "kube-system"), True)[0]
    # Anonymous: the cluster-info ConfigMap a joining node checks its pin against, nothing else there.
    anon = ("system:anonymous", ("system:unauthenticated",))
    assert az.authorize(*anon, res("get", "configmaps", "kube-public", name="cluster-info"), True)[0]
    assert not az.authorize(*anon, res("get", "configmaps", "kube-public", name="other"), True)[0]
    assert not az.authorize(*anon, res("list", "configmaps", "kube-public"), True)[0]
    # A namespaced bootstrap binding grants in its namespace only.
    signer = "system:serviceaccount:kube-system:bootstrap-signer"
    assert az.authorize(signer, sa_groups, res("update", "configmaps", "kube-public", name="cluster-info"),
                        True)[0]
    assert not az.authorize(signer, sa_groups, res("update", "configmaps", "default", name="cluster-info"),
                            True)[0]


async def test_the_aggregated_view_role_bound_in_one_namespace(api, reconciled, az):
    await rc(reconciled, "RoleBinding").create({
        "apiVersion": bp.API_VERSION, "kind": "RoleBinding", "metadata": {"name": "alice-view"},
        "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "apiGroup": G, "name": "alice"}]}, "default")
    await api.cache.fresh()
    assert az.authorize("alice", AUTH, res("list", "pods", "default"), True)[0]
    assert az.authorize("alice", AUTH, res("get", "pods", "default", sub="log", name="p"), True)[0]
    assert not az.authorize("alice", AUTH, res("get", "secrets", "default", name="s"), True)[0]
    assert not az.authorize("alice", AUTH, res("list", "pods", "kube-system"), True)[0]


# ---------------------------------------------------------------- reconcile against the API

async def test_reconcile_creates_everything_and_a_second_run_writes_nothing(reconciled):
    c = reconciled
    for o in bp.bootstrap_objects():
        meta = o["metadata"]
        stored = await get(c, o["kind"], meta["name"], meta.get("namespace"))
        assert stored["metadata"]["labels"] == meta["labels"]
        for field in ("rules", "aggregationRule", "roleRef", "subjects"):
            if field in o and o[field]:
                assert stored[field] == o[field], (meta["name"], field)
    before = await versions(c)
    await bp.reconcile_bootstrap_policy(c)
    assert await versions(c) == before


async def test_reconcile_keeps_user_added_rules_and_restores_removed_ones(reconciled):
    c = reconciled
    extra = {"verbs": ["get"], "apiGroups": ["example.com"], "resources": ["widgets"]}
    role = await get(c, "ClusterRole", "system:kube-dns")
    role["rules"] = [extra]  # the bootstrap rule removed, one of the user's added
    await put(c, role)
    await bp.reconcile_bootstrap_policy(c)
    rules = (await get(c, "ClusterRole", "system:kube-dns"))["rules"]
    assert extra in rules
    expected = objects_of("ClusterRole")["system:kube-dns"]["rules"]
    assert covers(rules, expected)[0]
    before = await versions(c)
    await bp.reconcile_bootstrap_policy(c)
    assert await versions(c) == before


async def test_reconcile_restores_missing_verbs_without_duplicating_what_is_covered(reconciled):
    c = reconciled
    role = await get(c, "ClusterRole", "system:node-proxier")
    role["rules"][0]["verbs"] = ["list"]  # "watch" taken away
    await put(c, role)
    await bp.reconcile_bootstrap_policy(c)
    rules = (await get(c, "ClusterRole", "system:node-proxier"))["rules"]
    assert covers(rules, objects_of("ClusterRole")["system:node-proxier"]["rules"])[0]
    assert len(rules) == len(objects_of("ClusterRole")["system:node-proxier"]["rules"]) + 1


async def test_reconcile_adds_missing_subjects_labels_and_annotations(reconciled):
    c = reconciled
    crb = await get(c, "ClusterRoleBinding", "cluster-admin")
    alice = {"kind": "User", "apiGroup": G, "name": "alice"}
    crb["subjects"] = [alice]
    crb["metadata"]["labels"] = {"team": "ops"}
    crb["metadata"]["annotations"] = {}
    await put(c, crb)
    await bp.reconcile_bootstrap_policy(c)
    crb = await get(c, "ClusterRoleBinding", "cluster-admin")
    assert alice in crb["subjects"]
    assert {"kind": "Group", "apiGroup": G, "name": "system:masters"} in crb["subjects"]
    assert crb["metadata"]["labels"] == {"team": "ops", "kubernetes.io/bootstrapping": "rbac-defaults"}
    assert crb["metadata"]["annotations"] == {"rbac.authorization.kubernetes.io/autoupdate": "true"}


async def test_reconcile_respects_autoupdate_false(reconciled):
    c = reconciled
    role = await get(c, "ClusterRole", "system:kube-dns")
    role["rules"] = []
    role["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] = "false"
    await put(c, role)
    rb = await get(c, "RoleBinding", "system:controller:token-cleaner", "kube-system")
    rb["subjects"] = []
    rb["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] = "false"
    await put(c, rb)
    before = await versions(c)
    await bp.reconcile_bootstrap_policy(c)
    assert await versions(c) == before
    assert not (await get(c, "ClusterRole", "system:kube-dns")).get("rules")


async def test_reconcile_leaves_aggregated_rules_to_the_controller_but_restores_selectors(reconciled):
    c = reconciled
    admin = await get(c, "ClusterRole", "admin")
    mine = {"matchLabels": {"example.com/aggregate-to-admin": "true"}}
    admin["aggregationRule"] = {"clusterRoleSelectors": [mine]}
    admin["rules"] = [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]
    await put(c, admin)
    await bp.reconcile_bootstrap_policy(c)
    admin = await get(c, "ClusterRole", "admin")
    assert admin["aggregationRule"]["clusterRoleSelectors"] == [
        mine, {"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-admin": "true"}}]
    assert admin["rules"] == [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]


async def test_reconcile_recreates_deleted_objects(reconciled):
    await rc(reconciled, "ClusterRole").delete("system:heapster")
    await rc(reconciled, "RoleBinding").delete("system:controller:token-cleaner", "kube-system")
    await bp.reconcile_bootstrap_policy(reconciled)  # a Client does as well as the server object
    assert (await get(reconciled, "ClusterRole", "system:heapster"))["rules"]
    assert (await get(reconciled, "RoleBinding", "system:controller:token-cleaner", "kube-system"))["subjects"]


async def test_reconcile_finishes_what_another_server_started(api, client):
    # Part of the policy is there already (another server, or an earlier run cut short).
    objs = bp.bootstrap_objects()
    await bp.reconcile_bootstrap_policy(api, objs[:10])
    await bp.reconcile_bootstrap_policy(api)
    assert len(await versions(client)) == len(objs)


# ---------------------------------------------------------------- reconcile_object, the pure part

def test_reconcile_object_never_changes_a_role_ref():
    expected = objects_of("ClusterRoleBinding")["system:kube-dns"]
    existing = copy.deepcopy(expected)
    existing["roleRef"] = {"apiGroup": G, "kind": "ClusterRole", "name": "view"}
    existing["subjects"] = []
    out = bp.reconcile_object(existing, expected)
    assert out["roleRef"]["name"] == "view"
    assert out["subjects"] == expected["subjects"]


def test_reconcile_object_equal_is_none_and_protected_is_none():
    for o in bp.bootstrap_objects():
        assert bp.reconcile_object(copy.deepcopy(o), o) is None
    o = objects_of("ClusterRole")["system:discovery"]
    narrowed = copy.deepcopy(o)
    narrowed["rules"] = []
    assert bp.reconcile_object(narrowed, o)["rules"] == o["rules"]
    narrowed["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] = "false"
    assert bp.reconcile_object(narrowed, o) is None


def test_reconcile_object_keeps_existing_label_values_and_drops_foreign_aggregation():
    o = objects_of("ClusterRole")["system:discovery"]
    existing = copy.deepcopy(o)
    existing["metadata"]["labels"]["kubernetes.io/bootstrapping"] = "mine"
    existing["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}
    out = bp.reconcile_object(existing, o)
    assert out["metadata"]["labels"]["kubernetes.io/bootstrapping"] == "mine"
    assert "aggregationRule" not in out
