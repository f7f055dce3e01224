"""RBAC writes under authorization_mode=RBAC: validation, and nobody grants what they do not hold."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kybernetes.apiserver.escalation import only_gc_fields_changed
from kybernetes.apiserver.request import Request
from kybernetes.apiserver.server import APIServer

from .conftest import call, start_api, stop_api

G = "rbac.authorization.k8s.io"
AV = f"{G}/v1"
ALICE = ("alice", ("devs", "system:authenticated"))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[APIServer]:
    a = await start_api(tmp_path, authorization_mode="RBAC")
    await call(a, "POST", "/api/v1/namespaces", {"metadata": {"name": "shop"}})
    yield a
    await stop_api(a)


async def as_user(api: APIServer, who: tuple[str, tuple[str, ...]], method: str, path: str,
                  body: Any = None) -> tuple[int, Any]:
    raw = orjson.dumps(body) if body is not None else b""
    resp = await api.handle(Request(method, path, {}, {"content-type": "application/json"}, raw,
                                    user=who[0], groups=who[1]))
    return resp.status, (orjson.loads(resp.body) if resp.body else None)


def rule(verbs, resources, groups=("",), **extra) -> dict:
    return {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs), **extra}


def role(name: str, rules: list[dict], ns: str = "shop") -> dict:
    return {"apiVersion": AV, "kind": "Role", "metadata": {"name": name, "namespace": ns}, "rules": rules}


def binding(name: str, role_kind: str, role_name: str, subjects: list[dict], ns: str = "shop") -> dict:
    return {"apiVersion": AV, "kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": G, "kind": role_kind, "name": role_name}, "subjects": subjects}


ROLES = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles"
BINDINGS = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings"


async def grant_alice(api: APIServer, rules: list[dict]) -> None:
    """As the admin: give alice `rules` in shop, plus managing Roles and RoleBindings there."""
    code, body = await call(api, "POST", ROLES, role("alice-role", rules + [
        rule(["create", "update", "get", "list"], ["roles", "rolebindings"], groups=[G])]))
    assert code == 201, body
    code, body = await call(api, "POST", BINDINGS, binding("alice", "Role", "alice-role",
                                                           [{"kind": "User", "name": "alice", "apiGroup": G}]))
    assert code == 201, body


async def test_a_role_within_what_the_writer_holds(api: APIServer) -> None:
    await grant_alice(api, [rule(["get", "list"], ["pods"])])
    code, body = await as_user(api, ALICE, "POST", ROLES, role("r", [rule(["get"], ["pods"])]))
    assert code == 201, body


async def test_a_role_beyond_what_the_writer_holds(api: APIServer) -> None:
    await grant_alice(api, [rule(["get", "list"], ["pods"])])
    code, body = await as_user(api, ALICE, "POST", ROLES, role("r", [rule(["get", "delete"], ["pods", "secrets"])]))
    assert code == 403, body
    assert body["reason"] == "Forbidden" and body["details"] == {"name": "r", "group": G, "kind": "roles"}
    assert body["message"] == (
        'roles.rbac.authorization.k8s.io "r" is forbidden: user "alice" (groups=["devs" "system:authenticated"]) '
        'is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}\n'
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete"]}')
    assert (await call(api, "GET", ROLES + "/r"))[0] == 404
    # An update that would widen an existing role is refused the same way.
    await call(api, "POST", ROLES, role("mine", [rule(["get"], ["pods"])]))
    code, body = await as_user(api, ALICE, "PUT", ROLES + "/mine", role("mine", [rule(["*"], ["pods"])]))
    assert code == 403 and "not currently held" in body["message"], body


async def test_escalate_verb_allows_any_rules(api: APIServer) -> None:
    await grant_alice(api, [rule(["escalate"], ["roles"], groups=[G])])
    code, body = await as_user(api, ALICE, "POST", ROLES, role("r", [rule(["*"], ["*"], groups=["*"])]))
    assert code == 201, body


async def test_bindings(api: APIServer) -> None:
    await grant_alice(api, [rule(["get"], ["pods"])])
    await call(api, "POST", ROLES, role("pod-getter", [rule(["get"], ["pods"])]))
    await call(api, "POST", ROLES, role("pod-killer", [rule(["delete"], ["pods"])]))
    bob = [{"kind": "User", "name": "bob", "apiGroup": G}]
    code, body = await as_user(api, ALICE, "POST", BINDINGS, binding("b1", "Role", "pod-getter", bob))
    assert code == 201, body
    code, body = await as_user(api, ALICE, "POST", BINDINGS, binding("b2", "Role", "pod-killer", bob))
    assert code == 403 and body["message"].startswith(
        'rolebindings.rbac.authorization.k8s.io "b2" is forbidden: user "alice"'), body
    code, body = await as_user(api, ALICE, "POST", BINDINGS, binding("b3", "ClusterRole", "cluster-admin", bob))
    assert code == 403, body
    code, body = await as_user(api, ALICE, "POST", BINDINGS, binding("b4", "Role", "ghost", bob))
    assert code == 404 and body["message"] == 'roles.rbac.authorization.k8s.io "ghost" not found', body


async def test_bind_verb_allows_binding_a_role_not_held(api: APIServer) -> None:
    await grant_alice(api, [rule(["bind"], ["clusterroles"], groups=[G], resourceNames=["edit"])])
    bob = [{"kind": "User", "name": "bob", "apiGroup": G}]
    code, body = await as_user(api, ALICE, "POST", BINDINGS, binding("b", "ClusterRole", "edit", bob))
    assert code == 201, body
    code, body = await as_user(api, ALICE, "POST", BINDINGS, binding("c", "ClusterRole", "cluster-admin", bob))
    assert code == 403, body


async def test_aggregation_rule_needs_full_authority(api: APIServer) -> None:
    code, body = await call(api, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": AV, "kind": "ClusterRole", "metadata": {"name": "cr-writer"},
        "rules": [rule(["create"], ["clusterroles"], groups=[G])]})
    assert code == 201, body
    code, body = await call(api, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": AV, "kind": "ClusterRoleBinding", "metadata": {"name": "cr-writer"},
        "roleRef": {"apiGroup": G, "kind": "ClusterRole", "name": "cr-writer"},
        "subjects": [{"kind": "User", "name": "alice", "apiGroup": G}]})
    assert code == 201, body
    code, body = await as_user(api, ALICE, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": AV, "kind": "ClusterRole", "metadata": {"name": "everything"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}})
    assert code == 403, body
    assert body["message"] == ('clusterroles.rbac.authorization.k8s.io "everything" is forbidden: must have '
                               'cluster-admin privileges to use the aggregationRule')


async def test_masters_may_write_anything(api: APIServer) -> None:
    code, body = await call(api, "POST", ROLES, role("r", [rule(["*"], ["*"], groups=["*"])]))
    assert code == 201, body


async def test_validation(api: APIServer) -> None:
    code, body = await call(api, "POST", ROLES, role("r", [{"apiGroups": [""], "resources": ["pods"]}]))
    assert code == 422 and body["details"]["causes"][0]["field"] == "rules[0].verbs", body
    code, body = await call(api, "POST", ROLES, role("r", [{"verbs": ["get"], "nonResourceURLs": ["/x"]}]))
    assert code == 422 and "namespaced rules cannot apply to non-resource URLs" in body["message"], body
    code, body = await call(api, "POST", BINDINGS, binding("b", "Pod", "x", []))
    assert code == 422 and 'roleRef.kind: Unsupported value: "Pod"' in body["message"], body
    code, body = await call(api, "POST", BINDINGS, binding("b", "Role", "x", [{"kind": "Robot", "name": "r"}]))
    assert code == 422 and "subjects[0].kind" in body["message"], body
    code, body = await call(api, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": AV, "kind": "ClusterRoleBinding", "metadata": {"name": "b"},
        "roleRef": {"apiGroup": G, "kind": "Role", "name": "x"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa"}]})
    assert code == 422 and "roleRef.kind" in body["message"] and "subjects[0].namespace" in body["message"], body


async def test_role_ref_is_immutable_and_subjects_are_defaulted(api: APIServer) -> None:
    await call(api, "POST", ROLES, role("a", [rule(["get"], ["pods"])]))
    code, b = await call(api, "POST", BINDINGS, binding("b", "Role", "a", [{"kind": "User", "name": "u"}]))
    assert code == 201 and b["subjects"][0]["apiGroup"] == G, b
    b["roleRef"]["name"] = "other"
    code, body = await call(api, "PUT", BINDINGS + "/b", b)
    assert code == 422 and "roleRef: Invalid value" in body["message"] and "cannot change roleRef" in body["message"]


async def test_gc_only_changes_are_never_refused(api: APIServer) -> None:
    old = role("r", [rule(["*"], ["*"], groups=["*"])])
    old["metadata"]["resourceVersion"] = "5"
    new = {**old, "metadata": {**old["metadata"], "finalizers": ["x"], "ownerReferences": [], "resourceVersion": "6"}}
    assert only_gc_fields_changed(new, old)
    assert not only_gc_fields_changed({**new, "rules": []}, old)
    assert not only_gc_fields_changed(new, None)
