"""Server-side apply and managed fields: kybernetes.api.apply.

The scenarios follow the Server-Side Apply documentation: apply, re-apply
without a field, shared ownership, conflicts and forcing them, and a
client-side-apply "Update" owner meeting a server-side apply.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kybernetes.api import apply as ssa
from kybernetes.api.apply import FieldSet, apply, fields_of, path_string, track_update
from kybernetes.api.errors import StatusError
from kybernetes.api.schema import get_schema

T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:01:00Z"
T2 = "2024-05-01T10:02:00Z"


@pytest.fixture(scope="module")
def deploy_node():
    return get_schema().node_for("apps", "v1", "Deployment")


@pytest.fixture(scope="module")
def cm_node():
    return get_schema().node_for("", "v1", "ConfigMap")


def deployment(replicas: int | None = 3, labels: dict | None = None, containers: list | None = None,
               **spec: Any) -> dict:
    d: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "nginx", "namespace": "default", "labels": labels or {"app": "nginx"}},
        "spec": {
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {"metadata": {"labels": {"app": "nginx"}},
                         "spec": {"containers": containers if containers is not None else [
                             {"name": "nginx", "image": "nginx:1.14.2", "ports": [{"containerPort": 80}]}]}},
            **spec,
        },
    }
    if replicas is not None:
        d["spec"]["replicas"] = replicas
    return d


def entries(obj: dict) -> dict[tuple[str, str], dict]:
    return {(e["manager"], e["operation"]): e for e in obj["metadata"]["managedFields"]}


def owned(obj: dict, manager: str, operation: str = "Apply") -> FieldSet:
    return FieldSet.from_fields_v1(entries(obj)[(manager, operation)]["fieldsV1"])


def containers(obj: dict) -> list[dict]:
    return obj["spec"]["template"]["spec"]["containers"]


REPLICAS = ("f:spec", "f:replicas")


# ---- FieldsV1 and set algebra ------------------------------------------------------


def test_fields_v1_round_trip_and_member_marks():
    doc = {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
           "f:spec": {"f:containers": {'k:{"name":"nginx"}': {".": {}, "f:image": {}}}}}
    fs = FieldSet.from_fields_v1(doc)
    assert fs.to_fields_v1() == doc
    assert fs.has(("f:metadata", "f:labels"))  # "." makes the labels map itself a member
    assert not fs.has(("f:metadata",))
    assert fs.has(("f:spec", "f:containers", 'k:{"name":"nginx"}'))
    assert fs.has(("f:spec", "f:containers", 'k:{"name":"nginx"}', "f:image"))
    assert FieldSet.from_fields_v1(fs.to_fields_v1()) == fs


def test_fields_v1_normalizes_keys_and_orders_like_upstream():
    fs = FieldSet.from_fields_v1({'k:{"protocol":"TCP", "containerPort":80}': {}, 'v:"x"': {}, "f:b": {},
                                  "f:a": {}, "i:3": {}})
    assert list(fs.to_fields_v1()) == ["f:a", "f:b", 'k:{"containerPort":80,"protocol":"TCP"}', 'v:"x"', "i:3"]


@pytest.mark.parametrize("bad", [[], {"x:y": {}}, {"f:a": 1}, {'k:[1]': {}}, {"i:x": {}}, {"k:{": {}}])
def test_fields_v1_rejects_malformed(bad):
    with pytest.raises(ValueError):
        FieldSet.from_fields_v1(bad)


def test_set_algebra():
    a = FieldSet.from_paths([("f:spec", "f:replicas"), ("f:spec", "f:paused"), ("f:metadata", "f:labels", "f:a")])
    b = FieldSet.from_paths([("f:spec", "f:replicas"), ("f:metadata", "f:labels", "f:b")])
    assert sorted(a.union(b).paths()) == sorted([("f:spec", "f:replicas"), ("f:spec", "f:paused"),
                                                 ("f:metadata", "f:labels", "f:a"),
                                                 ("f:metadata", "f:labels", "f:b")])
    assert list(a.intersection(b).paths()) == [("f:spec", "f:replicas")]
    assert sorted(a.difference(b).paths()) == [("f:metadata", "f:labels", "f:a"), ("f:spec", "f:paused")]
    assert a.difference(a).empty() and a.difference(a).to_fields_v1() == {}
    # Difference is per path: a member says nothing about paths below it.
    parent = FieldSet.from_paths([("f:spec",)])
    assert a.difference(parent) == a
    assert a.without_subtrees(parent).to_fields_v1() == {"f:metadata": {"f:labels": {"f:a": {}}}}


def test_path_string():
    assert path_string(("f:spec", "f:replicas")) == ".spec.replicas"
    assert path_string(("f:spec", "f:containers", 'k:{"name":"nginx"}', "f:image")) == \
        '.spec.containers[name="nginx"].image'
    assert path_string(("f:ports", 'k:{"containerPort":80,"protocol":"TCP"}')) == \
        '.ports[containerPort=80,protocol="TCP"]'
    assert path_string(("f:metadata", "f:finalizers", 'v:"a"')) == '.metadata.finalizers[="a"]'


# ---- what a configuration owns -----------------------------------------------------


def test_fields_of_deployment(deploy_node):
    obj = deployment(containers=[{"name": "nginx", "image": "nginx", "args": ["-g", "daemon off;"],
                                  "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                                  "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     strategy={"type": "Recreate"})
    obj["metadata"].update(uid="u", resourceVersion="7", generation=2, creationTimestamp=T0,
                           finalizers=["example.com/a"], managedFields=[{"manager": "x"}])
    obj["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    obj["status"] = {"replicas": 3}
    assert fields_of(obj, deploy_node).to_fields_v1() == {
        "f:metadata": {"f:finalizers": {'v:"example.com/a"': {}}, "f:labels": {"f:app": {}}},
        "f:spec": {
            "f:replicas": {},
            "f:selector": {},  # LabelSelector is an atomic map: owned whole
            "f:strategy": {"f:type": {}},
            "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:containers": {'k:{"name":"nginx"}': {
                        ".": {}, "f:args": {}, "f:image": {}, "f:name": {},
                        "f:ports": {'k:{"containerPort":53,"protocol":"UDP"}': {".": {}, "f:containerPort": {},
                                                                                "f:protocol": {}},
                                    'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}},
                        "f:volumeMounts": {'k:{"mountPath":"/data"}': {".": {}, "f:mountPath": {}, "f:name": {}}},
                    }},
                    "f:volumes": {'k:{"name":"data"}': {".": {}, "f:emptyDir": {}, "f:name": {}}},
                },
            },
        },
    }


def test_fields_of_status_subresource_and_untyped(deploy_node):
    obj = deployment()
    obj["status"] = {"replicas": 3, "conditions": [{"type": "Available", "status": "True"}]}
    assert fields_of(obj, deploy_node, subresource="status").to_fields_v1()["f:status"] == {
        "f:conditions": {'k:{"type":"Available"}': {".": {}, "f:status": {}, "f:type": {}}}, "f:replicas": {}}
    # Without a schema maps are granular and lists atomic, as upstream's deduced type.
    assert fields_of({"spec": {"a": {"b": 1}, "l": [1, 2]}}, None).to_fields_v1() == {
        "f:spec": {".": {}, "f:a": {".": {}, "f:b": {}}, "f:l": {}}}


# ---- apply -------------------------------------------------------------------------


def test_apply_creates_with_one_apply_entry(deploy_node):
    out = apply(None, deployment(), manager="kubectl", node=deploy_node, now=T0)
    assert out["spec"]["replicas"] == 3 and containers(out)[0]["image"] == "nginx:1.14.2"
    (entry,) = out["metadata"]["managedFields"]
    assert entry == {"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1", "time": T0,
                     "fieldsType": "FieldsV1", "fieldsV1": fields_of(deployment(), deploy_node).to_fields_v1()}
    assert "subresource" not in entry


def test_reapply_without_a_field_removes_it(deploy_node):
    cfg = deployment(labels={"app": "nginx", "tier": "web"},
                     containers=[{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]},
                                 {"name": "sidecar", "image": "busybox"}])
    live = apply(None, cfg, manager="kubectl", node=deploy_node, now=T0)
    # Server defaults nobody applied survive pruning.
    containers(live)[0]["terminationMessagePath"] = "/dev/termination-log"
    live["spec"]["revisionHistoryLimit"] = 10

    cfg2 = deployment(replicas=None, labels={"app": "nginx"},
                      containers=[{"name": "nginx", "image": "nginx"}])
    out = apply(live, cfg2, manager="kubectl", node=deploy_node, now=T1)
    assert out["metadata"]["labels"] == {"app": "nginx"}
    assert "replicas" not in out["spec"]
    assert containers(out) == [{"name": "nginx", "image": "nginx", "terminationMessagePath": "/dev/termination-log"}]
    assert out["spec"]["revisionHistoryLimit"] == 10
    assert owned(out, "kubectl") == fields_of(cfg2, deploy_node)
    assert entries(out)[("kubectl", "Apply")]["time"] == T1


def test_dropping_a_struct_removes_it_with_its_defaults(deploy_node):
    cfg = deployment(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2}})
    live = apply(None, cfg, manager="kubectl", node=deploy_node, now=T0)
    live["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = "25%"  # defaulted, unowned
    out = apply(live, deployment(), manager="kubectl", node=deploy_node, now=T1)
    assert "strategy" not in out["spec"]


def test_two_appliers_share_a_field_with_the_same_value(deploy_node):
    live = apply(None, deployment(replicas=3), manager="alice", node=deploy_node, now=T0)
    bob = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"}, "spec": {"replicas": 3}}
    live = apply(live, bob, manager="bob", node=deploy_node, now=T1)
    assert owned(live, "alice").has(REPLICAS) and owned(live, "bob").has(REPLICAS)
    # One sharer dropping the field leaves it to the other ...
    live = apply(live, deployment(replicas=None), manager="alice", node=deploy_node, now=T2)
    assert live["spec"]["replicas"] == 3
    assert not owned(live, "alice").has(REPLICAS)
    # ... and when the last owner drops it, it is gone.
    bob["spec"] = {}
    live = apply(live, bob, manager="bob", node=deploy_node, now=T2)
    assert "replicas" not in live["spec"]


def test_conflicting_apply_raises_409_and_force_takes_ownership(deploy_node):
    live = apply(None, deployment(replicas=3), manager="alice", node=deploy_node, now=T0)
    bob = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"}, "spec": {"replicas": 5}}
    with pytest.raises(StatusError) as exc:
        apply(live, bob, manager="bob", node=deploy_node, now=T1)
    err = exc.value
    assert (err.code, err.reason) == (409, "Conflict")
    assert err.message == 'Apply failed with 1 conflict: conflict with "alice": .spec.replicas'
    assert err.status()["details"] == {"causes": [
        {"reason": "FieldManagerConflict", "message": 'conflict with "alice"', "field": ".spec.replicas"}]}

    out = apply(live, bob, manager="bob", node=deploy_node, force=True, now=T1)
    assert out["spec"]["replicas"] == 5
    assert owned(out, "bob").has(REPLICAS) and not owned(out, "alice").has(REPLICAS)
    assert owned(out, "alice").has(("f:spec", "f:selector"))
    # Alice applying her file again now conflicts with bob.
    with pytest.raises(StatusError, match='conflict with "bob": .spec.replicas'):
        apply(out, deployment(replicas=3), manager="alice", node=deploy_node, now=T2)


def test_client_side_apply_owner_conflicts_with_server_side_apply(deploy_node):
    created = deployment(replicas=2)
    created["metadata"]["managedFields"] = track_update(None, created, manager="kubectl-client-side-apply",
                                                        api_version="apps/v1", node=deploy_node, now=T0)
    with pytest.raises(StatusError) as exc:
        apply(created, deployment(replicas=3), manager="kubectl", node=deploy_node, now=T1)
    assert exc.value.message == ('Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" '
                                 'using apps/v1: .spec.replicas')
    assert exc.value.status()["details"]["causes"][0]["message"] == \
        'conflict with "kubectl-client-side-apply" using apps/v1'
    # The same values are no conflict: the applier shares them.
    out = apply(created, deployment(replicas=2), manager="kubectl", node=deploy_node, now=T1)
    assert owned(out, "kubectl").has(REPLICAS)
    assert owned(out, "kubectl-client-side-apply", "Update").has(REPLICAS)


def test_several_conflicts_are_listed_per_manager(deploy_node):
    live = apply(None, deployment(replicas=3, paused=False), manager="alice", node=deploy_node, now=T0)
    live = apply(live, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
                        "spec": {"minReadySeconds": 5}}, manager="bob", node=deploy_node, now=T1)
    cfg = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
           "spec": {"replicas": 1, "paused": True, "minReadySeconds": 9}}
    with pytest.raises(StatusError) as exc:
        apply(live, cfg, manager="carol", node=deploy_node, now=T2)
    assert exc.value.message == ('Apply failed with 3 conflicts: conflicts with "alice":\n- .spec.paused\n'
                                 '- .spec.replicas\nconflicts with "bob":\n- .spec.minReadySeconds')
    assert [c["field"] for c in exc.value.status()["details"]["causes"]] == \
        [".spec.paused", ".spec.replicas", ".spec.minReadySeconds"]


def test_list_map_merges_containers_by_name(deploy_node):
    live = apply(None, deployment(), manager="kubectl", node=deploy_node, now=T0)
    ctl = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
           "spec": {"template": {"spec": {"containers": [{"name": "istio-proxy", "image": "proxy:1"}]}}}}
    live = apply(live, ctl, manager="injector", node=deploy_node, now=T1)
    assert [c["name"] for c in containers(live)] == ["nginx", "istio-proxy"]

    cfg = deployment(containers=[{"name": "nginx", "image": "nginx:1.16.1", "ports": [{"containerPort": 80}]}])
    out = apply(live, cfg, manager="kubectl", node=deploy_node, now=T2)
    assert containers(out) == [{"name": "nginx", "image": "nginx:1.16.1", "ports": [{"containerPort": 80}]},
                               {"name": "istio-proxy", "image": "proxy:1"}]
    # Changing a field inside the other manager's item is a conflict on that field only.
    cfg["spec"]["template"]["spec"]["containers"].append({"name": "istio-proxy", "image": "proxy:2"})
    with pytest.raises(StatusError) as exc:
        apply(out, cfg, manager="kubectl", node=deploy_node, now=T2)
    assert exc.value.message.endswith('conflict with "injector": '
                                      '.spec.template.spec.containers[name="istio-proxy"].image')


def test_list_map_merges_ports_by_port_and_protocol(deploy_node):
    live = apply(None, deployment(), manager="kubectl", node=deploy_node, now=T0)
    other = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
             "spec": {"template": {"spec": {"containers": [
                 {"name": "nginx", "ports": [{"containerPort": 80, "protocol": "UDP", "name": "quic"}]}]}}}}
    live = apply(live, other, manager="quic", node=deploy_node, now=T1)
    ports = containers(live)[0]["ports"]
    assert ports == [{"containerPort": 80}, {"containerPort": 80, "protocol": "UDP", "name": "quic"}]
    # An explicit TCP is the same item as an omitted (defaulted) protocol.
    cfg = deployment(containers=[{"name": "nginx", "image": "nginx:1.14.2",
                                  "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"},
                                            {"containerPort": 443}]}])
    out = apply(live, cfg, manager="kubectl", node=deploy_node, now=T2)
    assert containers(out)[0]["ports"] == [{"containerPort": 80, "protocol": "TCP", "name": "http"},
                                           {"containerPort": 80, "protocol": "UDP", "name": "quic"},
                                           {"containerPort": 443}]
    # Dropping 443 from the file removes only that port.
    out = apply(out, deployment(), manager="kubectl", node=deploy_node, now=T2)
    assert [(p["containerPort"], p.get("protocol")) for p in containers(out)[0]["ports"]] == \
        [(80, None), (80, "UDP")]


def test_set_lists_union_and_prune_per_value(deploy_node):
    def with_finalizers(*f):
        d = deployment()
        d["metadata"]["finalizers"] = list(f)
        return d
    live = apply(None, with_finalizers("a.io/x"), manager="kubectl", node=deploy_node, now=T0)
    # Another writer adds its own finalizer through an update.
    new = copy.deepcopy(live)
    new["metadata"]["finalizers"].append("b.io/y")
    new["metadata"]["managedFields"] = track_update(live, new, manager="controller", api_version="apps/v1",
                                                    node=deploy_node, now=T1)
    assert FieldSet.from_fields_v1(entries(new)[("controller", "Update")]["fieldsV1"]) == \
        FieldSet.from_paths([("f:metadata", "f:finalizers", 'v:"b.io/y"')])
    out = apply(new, with_finalizers("a.io/x", "c.io/z"), manager="kubectl", node=deploy_node, now=T2)
    assert out["metadata"]["finalizers"] == ["a.io/x", "b.io/y", "c.io/z"]
    out = apply(out, with_finalizers("c.io/z"), manager="kubectl", node=deploy_node, now=T2)
    assert out["metadata"]["finalizers"] == ["b.io/y", "c.io/z"]


def test_atomic_lists_are_replaced_and_owned_whole(deploy_node):
    def with_args(*args):
        return deployment(containers=[{"name": "nginx", "image": "nginx", "args": list(args)}])
    live = apply(None, with_args("-a", "-b"), manager="kubectl", node=deploy_node, now=T0)
    out = apply(live, with_args("-c"), manager="kubectl", node=deploy_node, now=T1)
    assert containers(out)[0]["args"] == ["-c"]
    args_path = ("f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"nginx"}', "f:args")
    assert owned(out, "kubectl").has(args_path)
    assert not any(p[-1].startswith(("i:", "v:")) for p in owned(out, "kubectl").paths())
    with pytest.raises(StatusError, match=r'containers\[name="nginx"\]\.args$'):
        apply(out, with_args("-c", "-d"), manager="other", node=deploy_node, now=T2)


def test_noop_apply_keeps_time_and_object(deploy_node):
    live = apply(None, deployment(), manager="kubectl", node=deploy_node, now=T0)
    again = apply(live, deployment(), manager="kubectl", node=deploy_node, now=T1)
    assert again == live


def test_apply_list_order_follows_config_for_shared_items(cm_node, deploy_node):
    live = apply(None, deployment(containers=[{"name": n, "image": "i"} for n in "abc"]),
                 manager="kubectl", node=deploy_node, now=T0)
    out = apply(live, deployment(containers=[{"name": n, "image": "i"} for n in "cab"]),
                manager="kubectl", node=deploy_node, now=T1)
    assert [c["name"] for c in containers(out)] == ["c", "a", "b"]


def test_apply_to_configmap_prunes_data_keys(cm_node):
    cfg = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}
    live = apply(None, cfg, manager="kubectl", node=cm_node, now=T0)
    assert owned(live, "kubectl").to_fields_v1() == {"f:data": {"f:a": {}, "f:b": {}}}
    cfg["data"] = {"a": "1"}
    assert apply(live, cfg, manager="kubectl", node=cm_node, now=T1)["data"] == {"a": "1"}


def test_apply_rejects_managed_fields_and_wrong_version(deploy_node):
    cfg = deployment()
    cfg["metadata"]["managedFields"] = []
    with pytest.raises(StatusError) as exc:
        apply(None, cfg, manager="kubectl", node=deploy_node, now=T0)
    assert (exc.value.code, exc.value.message) == (400, "metadata.managedFields must be nil")
    cfg = deployment()
    cfg["apiVersion"] = "apps/v1beta2"
    with pytest.raises(StatusError) as exc:
        apply(None, cfg, manager="kubectl", node=deploy_node, now=T0, api_version="apps/v1")
    assert exc.value.message == ("Incorrect version specified in apply patch. Specified patch version: "
                                 "apps/v1beta2, expected: apps/v1")


def test_apply_to_main_resource_ignores_status_and_server_metadata(deploy_node):
    live = apply(None, deployment(), manager="kubectl", node=deploy_node, now=T0)
    live["status"] = {"replicas": 1}
    live["metadata"].update(uid="u1", resourceVersion="5")
    cfg = deployment()
    cfg["status"] = {"replicas": 9}
    cfg["metadata"].update(uid="other", resourceVersion="1")
    out = apply(live, cfg, manager="kubectl", node=deploy_node, now=T1)
    assert out["status"] == {"replicas": 1}
    assert (out["metadata"]["uid"], out["metadata"]["resourceVersion"]) == ("u1", "5")
    assert "f:status" not in owned(out, "kubectl").to_fields_v1()


def test_apply_to_status_subresource(deploy_node):
    live = apply(None, deployment(), manager="kubectl", node=deploy_node, now=T0)
    cfg = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
           "spec": {"replicas": 100}, "status": {"replicas": 3}}
    out = apply(live, cfg, manager="ctrl", node=deploy_node, now=T1, subresource="status")
    assert out["status"] == {"replicas": 3} and out["spec"]["replicas"] == 3
    entry = entries(out)[("ctrl", "Apply")]
    assert entry["subresource"] == "status"
    assert entry["fieldsV1"] == {"f:status": {"f:replicas": {}}}


# ---- track_update ------------------------------------------------------------------


def test_track_update_gives_changed_fields_to_the_updater(deploy_node):
    live = apply(None, deployment(replicas=3), manager="kubectl", node=deploy_node, now=T0)
    new = copy.deepcopy(live)
    new["spec"]["replicas"] = 7
    new["metadata"]["labels"]["team"] = "web"
    new["metadata"]["resourceVersion"] = "9"
    mf = track_update(live, new, manager="kubectl-edit", api_version="apps/v1", node=deploy_node, now=T1)
    by = {(e["manager"], e["operation"]): e for e in mf}
    assert by[("kubectl-edit", "Update")] == {
        "manager": "kubectl-edit", "operation": "Update", "apiVersion": "apps/v1", "time": T1,
        "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}, "f:spec": {"f:replicas": {}}}}
    applier = FieldSet.from_fields_v1(by[("kubectl", "Apply")]["fieldsV1"])
    assert not applier.has(REPLICAS) and applier.has(("f:spec", "f:selector"))
    assert [e["operation"] for e in mf] == ["Apply", "Update"]

    # The applier now conflicts with the editor on replicas.
    new["metadata"]["managedFields"] = mf
    with pytest.raises(StatusError, match='conflict with "kubectl-edit" using apps/v1: .spec.replicas'):
        apply(new, deployment(replicas=3), manager="kubectl", node=deploy_node, now=T2)


def test_track_update_removal_leaves_every_owner_and_entries_merge(deploy_node):
    old = deployment(labels={"app": "nginx", "tier": "web"})
    old["metadata"]["managedFields"] = track_update(None, old, manager="kubectl-create", api_version="apps/v1",
                                                    node=deploy_node, now=T0)
    new = copy.deepcopy(old)
    del new["metadata"]["labels"]["tier"]
    mf = track_update(old, new, manager="kubectl-label", api_version="apps/v1", node=deploy_node, now=T1)
    (create,) = mf  # a pure removal gives the remover nothing
    assert "f:tier" not in create["fieldsV1"]["f:metadata"]["f:labels"]
    assert create["time"] == T0

    # Two writes by the same updater land in one entry with the latest time.
    new["metadata"]["managedFields"] = mf
    a = copy.deepcopy(new)
    a["spec"]["paused"] = True
    a["metadata"]["managedFields"] = track_update(new, a, manager="ctl", api_version="apps/v1",
                                                  node=deploy_node, now=T1)
    b = copy.deepcopy(a)
    b["spec"]["minReadySeconds"] = 4
    mf = track_update(a, b, manager="ctl", api_version="apps/v1", node=deploy_node, now=T2)
    ctl = [e for e in mf if e["manager"] == "ctl"]
    assert len(ctl) == 1 and ctl[0]["time"] == T2
    assert ctl[0]["fieldsV1"] == {"f:spec": {"f:minReadySeconds": {}, "f:paused": {}}}


def test_track_update_create_owns_everything_but_server_fields(deploy_node):
    obj = deployment()
    obj["metadata"].update(uid="u", creationTimestamp=T0, generation=1, resourceVersion="1")
    obj["status"] = {"replicas": 0}
    (entry,) = track_update(None, obj, manager="kubectl-create", api_version="apps/v1", node=deploy_node, now=T0)
    fs = entry["fieldsV1"]
    assert set(fs) == {"f:metadata", "f:spec"}
    assert fs["f:metadata"] == {"f:labels": {".": {}, "f:app": {}}}
    assert fs["f:spec"]["f:template"]["f:spec"]["f:containers"] == {'k:{"name":"nginx"}': {
        ".": {}, "f:image": {}, "f:name": {},
        "f:ports": {".": {}, 'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}}}}


def test_track_update_status_subresource(deploy_node):
    old = deployment()
    old["metadata"]["managedFields"] = track_update(None, old, manager="kubectl", api_version="apps/v1",
                                                    node=deploy_node, now=T0)
    new = copy.deepcopy(old)
    new["status"] = {"readyReplicas": 3}
    mf = track_update(old, new, manager="kube-controller-manager", api_version="apps/v1", node=deploy_node,
                      subresource="status", now=T1)
    status = [e for e in mf if e["manager"] == "kube-controller-manager"]
    assert status == [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                       "time": T1, "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:readyReplicas": {}}},
                       "subresource": "status"}]
    # A main-resource write never takes status.
    newer = copy.deepcopy(new)
    newer["metadata"]["managedFields"] = mf
    newer["status"]["readyReplicas"] = 1
    assert track_update(new, newer, manager="x", api_version="apps/v1", node=deploy_node, now=T2) == mf


def test_track_update_honours_sent_managed_fields_and_reset(deploy_node):
    old = deployment()
    old["metadata"]["managedFields"] = track_update(None, old, manager="kubectl", api_version="apps/v1",
                                                    node=deploy_node, now=T0)
    unchanged = copy.deepcopy(old)
    for reset in ([], [{}]):
        unchanged["metadata"]["managedFields"] = reset
        assert track_update(old, unchanged, manager="m", api_version="apps/v1", node=deploy_node, now=T1) == []
    # Omitted or unreadable managedFields keep the stored ones.
    unchanged["metadata"].pop("managedFields")
    assert track_update(old, unchanged, manager="m", api_version="apps/v1", node=deploy_node, now=T1) == \
        old["metadata"]["managedFields"]
    unchanged["metadata"]["managedFields"] = [{"manager": "x", "operation": "Bogus"}]
    assert track_update(old, unchanged, manager="m", api_version="apps/v1", node=deploy_node, now=T1) == \
        old["metadata"]["managedFields"]
    # Entries a client sends replace the stored ones.
    mine = [{"manager": "me", "operation": "Update", "apiVersion": "apps/v1", "time": T0,
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    unchanged["metadata"]["managedFields"] = mine
    assert track_update(old, unchanged, manager="m", api_version="apps/v1", node=deploy_node, now=T1) == mine


def test_update_entries_are_capped(cm_node):
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}
    for i in range(12):
        new = copy.deepcopy(obj)
        new["data"][f"k{i}"] = "v"
        new["metadata"]["managedFields"] = track_update(obj, new, manager=f"m{i:02}", api_version="v1",
                                                        node=cm_node, now=f"2024-05-01T10:00:{i:02}Z")
        obj = new
    mf = obj["metadata"]["managedFields"]
    assert len(mf) == 10
    ancient = [e for e in mf if e["manager"] == ssa.ANCIENT_CHANGES]
    assert len(ancient) == 1
    assert ancient[0]["fieldsV1"] == {"f:data": {"f:k0": {}, "f:k1": {}, "f:k2": {}}}
    assert ancient[0]["time"] == "2024-05-01T10:00:02Z"
    assert [e["manager"] for e in mf][1:] == [f"m{i:02}" for i in range(3, 12)]


def test_items_only_in_live_keep_their_place(deploy_node):
    def names(*ns):
        return deployment(containers=[{"name": n, "image": "i"} for n in ns])
    live = apply(None, names("a", "x", "b"), manager="kubectl", node=deploy_node, now=T0)
    live = apply(live, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
                        "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "i"}]}}}},
                 manager="other", node=deploy_node, now=T1)
    out = apply(live, names("b", "a"), manager="kubectl", node=deploy_node, now=T2)
    assert [c["name"] for c in containers(out)] == ["x", "b", "a"]


def test_null_in_config_owns_the_field_and_unsets_it(deploy_node):
    live = apply(None, deployment(replicas=3), manager="kubectl", node=deploy_node, now=T0)
    cfg = deployment(replicas=None)
    cfg["spec"]["replicas"] = None
    out = apply(live, cfg, manager="kubectl", node=deploy_node, now=T1)
    assert "replicas" not in out["spec"]
    assert owned(out, "kubectl").has(REPLICAS)


def test_manager_name_from_field_manager_or_user_agent():
    ua = "kubectl-client-side-apply/v1.32.0 (linux/amd64) kubernetes/70d3cc9"
    assert ssa.manager_name(None, ua) == "kubectl-client-side-apply"
    assert ssa.manager_name("helm", ua) == "helm"
    assert ssa.manager_name("", "x" * 300) == "x" * 128
    assert ssa.manager_name(None, None) == ""
