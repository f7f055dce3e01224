"""Tests for JSON patch, JSON merge patch and strategic merge patch (with the upstream schema)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.api.patch import json_patch, merge_patch, strategic_merge_patch
from kybernetes.api.schema import get_schema


def _pod(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "labels": {"a": "1", "b": "2"},
                         "finalizers": ["x/a", "x/b", "x/c"]},
            "spec": {"containers": [{"name": "app", "image": "app:v1",
                                     "terminationMessagePath": "/dev/termination-log"}],
                     "dnsPolicy": "ClusterFirst", **spec}}


def _deployment() -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "annotations": {"keep": "1"}},
            "spec": {"replicas": 2,
                     "selector": {"matchLabels": {"app": "web"},
                                  "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{
                                      "name": "app", "image": "web:1",
                                      "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                                      "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                      "imagePullPolicy": "IfNotPresent"}],
                                      "restartPolicy": "Always"}}}}


def _names(items: list[dict[str, Any]]) -> list[Any]:
    return [i["name"] for i in items]


POD = ("", "v1", "Pod")
DEPLOY = ("apps", "v1", "Deployment")

# (description, gvk, live, patch, check(result))
CASES: list[tuple[str, tuple[str, str, str], dict[str, Any], dict[str, Any], Any]] = [
    ("maps merge and null deletes (kubectl label/annotate)", POD, _pod(),
     {"metadata": {"labels": {"b": None, "c": "3"}}},
     lambda r: r["metadata"]["labels"] == {"a": "1", "c": "3"}),
    ("containers merge by name keeping server-set fields", POD,
     _pod(containers=[{"name": "app", "image": "app:v1", "terminationMessagePath": "/t"},
                      {"name": "side", "image": "s:1"}]),
     {"spec": {"containers": [{"name": "app", "image": "app:v2"}]}},
     lambda r: r["spec"]["containers"] == [{"name": "app", "image": "app:v2", "terminationMessagePath": "/t"},
                                           {"name": "side", "image": "s:1"}]),
    ("a container unknown to the live list is added (patch items first, as upstream orders them)", POD, _pod(),
     {"spec": {"containers": [{"name": "new", "image": "n:1"}]}},
     lambda r: _names(r["spec"]["containers"]) == ["new", "app"]),
    ("ports merge by containerPort", DEPLOY, _deployment(),
     {"spec": {"template": {"spec": {"containers": [
         {"name": "app", "ports": [{"containerPort": 80, "name": "web"}, {"containerPort": 443}]}]}}}},
     lambda r: r["spec"]["template"]["spec"]["containers"][0]["ports"] ==
     [{"containerPort": 80, "protocol": "TCP", "name": "web"}, {"containerPort": 443}]),
    ("kubectl apply: env var dropped from the file is deleted", DEPLOY, _deployment(),
     {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "app"}],
                                     "containers": [{"$setElementOrder/env": [{"name": "A"}],
                                                     "env": [{"$patch": "delete", "name": "B"}],
                                                     "name": "app"}]}}}},
     lambda r: r["spec"]["template"]["spec"]["containers"] == [{
         "name": "app", "image": "web:1", "env": [{"name": "A", "value": "1"}],
         "ports": [{"containerPort": 80, "protocol": "TCP"}], "imagePullPolicy": "IfNotPresent"}]),
    ("kubectl apply: env reordered and one added via $setElementOrder", DEPLOY, _deployment(),
     {"spec": {"template": {"spec": {"containers": [{
         "$setElementOrder/env": [{"name": "C"}, {"name": "B"}, {"name": "A"}],
         "env": [{"name": "C", "value": "3"}], "name": "app"}]}}}},
     lambda r: r["spec"]["template"]["spec"]["containers"][0]["env"] ==
     [{"name": "C", "value": "3"}, {"name": "B", "value": "2"}, {"name": "A", "value": "1"}]),
    ("$setElementOrder keeps server-only items next to their live neighbours", POD,
     _pod(containers=[{"name": "1", "other": "a"}, {"name": "2"}, {"name": "9"}, {"name": "3"}, {"name": "4"}]),
     {"spec": {"$setElementOrder/containers": [{"name": "2"}, {"name": "1"}, {"name": "4"}, {"name": "3"}]}},
     lambda r: r["spec"]["containers"] ==
     [{"name": "2"}, {"name": "1", "other": "a"}, {"name": "9"}, {"name": "4"}, {"name": "3"}]),
    ("$setElementOrder with add and delete in one patch", POD,
     _pod(containers=[{"name": "1"}, {"name": "2", "other": "b"}, {"name": "4", "other": "c"}]),
     {"spec": {"$setElementOrder/containers": [{"name": "2"}, {"name": "3"}],
               "containers": [{"name": "3"}, {"name": "1", "$patch": "delete"}]}},
     lambda r: r["spec"]["containers"] == [{"name": "2", "other": "b"}, {"name": "4", "other": "c"}, {"name": "3"}]),
    ("kubectl edit: a port replaced", DEPLOY, _deployment(),
     {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "app"}], "containers": [{
         "$setElementOrder/ports": [{"containerPort": 8080}], "name": "app",
         "ports": [{"containerPort": 8080}, {"$patch": "delete", "containerPort": 80}]}]}}}},
     lambda r: r["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 8080}]),
    ("$patch: replace inside a list replaces the whole list", POD,
     _pod(containers=[{"name": "app", "image": "a"}, {"name": "side", "image": "s"}]),
     {"spec": {"containers": [{"name": "only", "image": "o"}, {"$patch": "replace"}]}},
     lambda r: r["spec"]["containers"] == [{"name": "only", "image": "o"}]),
    ("$patch: replace on a map", DEPLOY, _deployment(),
     {"spec": {"selector": {"$patch": "replace", "matchLabels": {"x": "y"}}}},
     lambda r: r["spec"]["selector"] == {"matchLabels": {"x": "y"}}),
    ("$patch: delete on a map empties it", DEPLOY, _deployment(),
     {"metadata": {"annotations": {"$patch": "delete"}}},
     lambda r: r["metadata"]["annotations"] == {}),
    ("$retainKeys switches deployment strategy (apply sends the null too)", DEPLOY, _deployment(),
     {"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": None, "type": "Recreate"}}},
     lambda r: r["spec"]["strategy"] == {"type": "Recreate"}),
    ("$retainKeys alone clears keys it does not list", DEPLOY, _deployment(),
     {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}},
     lambda r: r["spec"]["strategy"] == {"type": "Recreate"}),
    ("$retainKeys on a volume switches its source", POD,
     _pod(volumes=[{"name": "data", "emptyDir": {}}, {"name": "other", "emptyDir": {}}]),
     {"spec": {"volumes": [{"$retainKeys": ["hostPath", "name"], "hostPath": {"path": "/x"}, "name": "data"}]}},
     lambda r: r["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": "/x"}},
                                        {"name": "other", "emptyDir": {}}]),
    ("$deleteFromPrimitiveList removes finalizers", POD, _pod(),
     {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x/b"]}},
     lambda r: r["metadata"]["finalizers"] == ["x/a", "x/c"]),
    ("$deleteFromPrimitiveList of a missing list adds nothing", POD, _pod(),
     {"spec": {"$deleteFromPrimitiveList/imagePullSecrets": ["x"]}},
     lambda r: "imagePullSecrets" not in r["spec"]),
    ("primitive merge lists take the union, patch items first", POD, _pod(),
     {"metadata": {"finalizers": ["x/d", "x/a"]}},
     lambda r: r["metadata"]["finalizers"] == ["x/d", "x/a", "x/b", "x/c"]),
    ("primitive merge lists follow $setElementOrder", POD, _pod(),
     {"metadata": {"$setElementOrder/finalizers": ["x/a", "x/c", "x/d"], "finalizers": ["x/d"],
                   "$deleteFromPrimitiveList/finalizers": ["x/b"]}},
     lambda r: r["metadata"]["finalizers"] == ["x/a", "x/c", "x/d"]),
    ("lists without a merge strategy are replaced", POD,
     _pod(tolerations=[{"key": "a", "operator": "Exists"}]),
     {"spec": {"tolerations": [{"key": "b", "operator": "Exists"}],
               "containers": [{"name": "app", "args": ["z"]}]}},
     lambda r: r["spec"]["tolerations"] == [{"key": "b", "operator": "Exists"}]
     and r["spec"]["containers"][0]["args"] == ["z"]),
    ("new content is stored without nulls or directives", POD, _pod(),
     {"spec": {"securityContext": {"runAsUser": 1, "fsGroup": None},
               "hostAliases": [{"ip": "1.2.3.4", "$setElementOrder/hostnames": ["a"], "hostnames": ["a"]}]}},
     lambda r: r["spec"]["securityContext"] == {"runAsUser": 1}
     and r["spec"]["hostAliases"] == [{"ip": "1.2.3.4", "hostnames": ["a"]}]),
    ("a type change replaces the value", POD, _pod(),
     {"metadata": {"labels": "oops"}},
     lambda r: r["metadata"]["labels"] == "oops"),
]


@pytest.mark.parametrize("desc,gvk,live,patch,check", CASES, ids=[c[0] for c in CASES])
def test_strategic_merge_patch(desc: str, gvk: tuple[str, str, str], live: dict[str, Any],
                               patch: dict[str, Any], check: Any) -> None:
    node = get_schema().node_for(*gvk)
    live_before, patch_before = copy.deepcopy(live), copy.deepcopy(patch)
    result = strategic_merge_patch(live, patch, node)
    assert check(result), result
    assert live == live_before and patch == patch_before


def test_strategic_merge_patch_without_schema_is_a_merge_patch() -> None:
    doc = {"spec": {"items": [{"name": "a", "v": 1}], "m": {"x": 1, "y": 2}}}
    patch = {"spec": {"items": [{"name": "b"}], "m": {"x": None, "z": 3}}}
    assert strategic_merge_patch(doc, patch, None) == {"spec": {"items": [{"name": "b"}], "m": {"y": 2, "z": 3}}}


@pytest.mark.parametrize("patch,code,message", [
    ({"spec": {"containers": [{"image": "x"}]}}, 500,
     "map: map[image:x] does not contain declared merge key: name"),
    ({"spec": {"$setElementOrder/containers": {"name": "x"}}}, 400,
     "invalid patch format of setElementOrder list"),
    ({"spec": {"$setElementOrder/containers": [{"name": "app"}],
               "containers": [{"name": "new"}]}}, 500, None),
    ({"metadata": {"finalizers": [["a"]]}}, 422, "the server rejected our request due to an error in our request"),
    ({"spec": {"containers": [{"name": "app", "$patch": "merge"}]}}, 500,
     "merging lists cannot yet be specified in the patch"),
    ({"metadata": {"labels": {"$patch": "bogus"}}}, 500, None),
    ({"spec": {"$retainKeys": "x"}}, 400, "invalid patch format of retainKeys"),
])
def test_strategic_merge_patch_errors(patch: dict[str, Any], code: int, message: str | None) -> None:
    node = get_schema().node_for(*POD)
    with pytest.raises(StatusError) as exc:
        strategic_merge_patch(_pod(), patch, node)
    assert exc.value.code == code
    if message is not None:
        assert exc.value.message == message


def test_strategic_merge_patch_rejects_non_object() -> None:
    with pytest.raises(StatusError) as exc:
        strategic_merge_patch(_pod(), [{"op": "add"}], None)
    assert exc.value.code == 400 and exc.value.reason == "BadRequest"


# ---- JSON patch -------------------------------------------------------------------------


def test_json_patch_applies_operations() -> None:
    doc = _deployment()
    out = json_patch(doc, [
        {"op": "test", "path": "/spec/replicas", "value": 2},
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
        {"op": "remove", "path": "/metadata/annotations/keep"},
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "C"}},
    ])
    assert out["spec"]["replicas"] == 5
    assert out["metadata"] == {"name": "d", "annotations": {}, "labels": {"a": "b"}}
    assert _names(out["spec"]["template"]["spec"]["containers"][0]["env"]) == ["A", "B", "C"]
    assert doc == _deployment()


@pytest.mark.parametrize("ops", [
    [{"op": "test", "path": "/spec/replicas", "value": 3}],
    [{"op": "remove", "path": "/spec/nothing"}],
    [{"op": "add", "path": "/no/such/parent", "value": 1}],
    [{"op": "frobnicate", "path": "/spec"}],
    [{"op": "replace", "value": 1}],
])
def test_json_patch_failures_are_422(ops: list[dict[str, Any]]) -> None:
    with pytest.raises(StatusError) as exc:
        json_patch(_deployment(), ops)
    assert (exc.value.code, exc.value.reason) == (422, "Invalid")
    assert exc.value.message == "the server rejected our request due to an error in our request"


def test_json_patch_bad_body_is_400_and_too_many_is_413() -> None:
    with pytest.raises(StatusError) as exc:
        json_patch(_deployment(), {"op": "add"})
    assert exc.value.code == 400
    with pytest.raises(StatusError) as exc:
        json_patch(_deployment(), [{"op": "test", "path": "/kind", "value": "Deployment"}] * 10001)
    assert exc.value.code == 413


# ---- JSON merge patch -------------------------------------------------------------------


def test_merge_patch() -> None:
    doc = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    out = merge_patch(doc, {"a": "z", "c": {"f": None, "n": {"x": None, "y": 1}}, "l": [3]})
    assert out == {"a": "z", "c": {"d": "e", "n": {"y": 1}}, "l": [3]}
    assert doc == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    assert merge_patch({"a": {"b": 1}}, {"a": "s"}) == {"a": "s"}
    assert merge_patch({"a": "s"}, {"a": {"b": 1}}) == {"a": {"b": 1}}
    with pytest.raises(StatusError) as exc:
        merge_patch(doc, ["x"])
    assert exc.value.code == 400
