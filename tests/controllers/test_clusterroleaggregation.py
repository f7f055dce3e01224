"""The clusterrole-aggregation controller against a real in-process API server, and its pure aggregation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.apiserver.bootstrappolicy import reconcile_bootstrap_policy
from kybernetes.apiserver.rbac import covers
from kybernetes.client import Client
from kybernetes.controllers.clusterroleaggregation import (
    ClusterRoleAggregationController,
    aggregate_rules,
    same_rules,
)
from tests.apiserver.conftest import eventually, start_api, stop_api

RBAC = "rbac.authorization.k8s.io"
AV = f"{RBAC}/v1"
TO_VIEW = "rbac.authorization.k8s.io/aggregate-to-view"
TO_EDIT = "rbac.authorization.k8s.io/aggregate-to-edit"


def rule(verbs, resources, group=""):
    return {"verbs": list(verbs), "apiGroups": [group], "resources": list(resources)}


WIDGETS = rule(["get", "list", "watch"], ["widgets"], "example.com")


def role(name, rules=None, labels=None, selectors=None):
    obj: dict[str, Any] = {"apiVersion": AV, "kind": "ClusterRole",
                           "metadata": {"name": name, "labels": labels or {}}}
    if rules is not None:
        obj["rules"] = rules
    if selectors is not None:
        obj["aggregationRule"] = {"clusterRoleSelectors": selectors}
    return obj


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Any, ClusterRoleAggregationController]]:
    """(clusterroles client, controller) over an API server holding the bootstrap policy."""
    api = await start_api(tmp_path)
    await reconcile_bootstrap_policy(api)
    client = Client.in_process(api.handle)
    ctrl = ClusterRoleAggregationController(Client.in_process(api.handle))
    await ctrl.start()
    try:
        yield client.resource(AV, "clusterroles", namespaced=False), ctrl
    finally:
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
        await stop_api(api)


async def rules_of(roles, name):
    return (await roles.get(name)).get("rules") or []


def grants(rules, verb, resource, group=""):
    return covers(rules, [rule([verb], [resource], group)])[0]


# ---------------------------------------------------------------- against the API

async def test_admin_edit_and_view_are_filled_from_the_bootstrap_roles(env):
    roles, _ = env
    feeders = {n: await rules_of(roles, f"system:aggregate-to-{n}") for n in ("admin", "edit", "view")}
    # edit aggregates view and admin aggregates edit: each settles once the one it selects has.
    # The selected roles are taken by name: "edit" before "system:...", "system:..." before "view".
    want_view = feeders["view"]
    want_edit = feeders["edit"] + [r for r in want_view if r not in feeders["edit"]]
    want_admin = want_edit + [r for r in feeders["admin"] if r not in want_edit]
    for name, want in (("view", want_view), ("edit", want_edit), ("admin", want_admin)):
        await eventually(lambda n=name, w=want: _equal(roles, n, w), what=f"{name} aggregated")
    assert grants(want_view, "list", "pods") and not grants(want_view, "get", "secrets")
    assert grants(want_edit, "get", "secrets") and not grants(want_edit, "create", "rolebindings", RBAC)
    assert grants(want_admin, "create", "rolebindings", RBAC)


async def test_a_new_labelled_role_joins_the_aggregates_and_leaves_with_its_label(env):
    roles, _ = env
    await eventually(lambda: rules_of(roles, "admin"), what="admin filled")
    await roles.create(role("widgets-view", [WIDGETS], {TO_VIEW: "true"}))

    async def everywhere(present):
        return all([(WIDGETS in await rules_of(roles, n)) == present for n in ("view", "edit", "admin")])
    await eventually(lambda: everywhere(True), what="widgets in view, edit and admin")
    w = await roles.get("widgets-view")
    w["metadata"]["labels"] = {}
    await roles.update(w)
    await eventually(lambda: everywhere(False), what="widgets gone again")


async def test_a_deleted_role_takes_its_rules_away(env):
    roles, _ = env
    await roles.create(role("widgets-view", [WIDGETS], {TO_VIEW: "true"}))
    await eventually(lambda: _has(roles, "view", WIDGETS), what="widgets in view")
    await roles.delete("widgets-view")
    await eventually(lambda: _lacks(roles, "view", WIDGETS), what="widgets gone")


async def _has(roles, name, r):
    return r in await rules_of(roles, name)


async def _lacks(roles, name, r):
    return r not in await rules_of(roles, name)


async def test_match_expressions_and_several_selectors(env):
    roles, _ = env
    ra, rb, rc, rd = (rule(["get"], [f"res-{x}"]) for x in "abcd")
    await roles.create(role("tier-b", [rb], {"tier": "b"}))
    await roles.create(role("tier-a", [ra], {"tier": "a"}))
    await roles.create(role("tier-c", [rc], {"tier": "c"}))
    await roles.create(role("other", [rd], {"team": "x"}))
    await roles.create(role("mine", selectors=[
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
        {"matchExpressions": [{"key": "team", "operator": "Exists"}]}]))
    # Selector by selector, the selected roles by name.
    await eventually(lambda: _equal(roles, "mine", [ra, rb, rd]), what="mine aggregated")


async def _equal(roles, name, want):
    return await rules_of(roles, name) == want


async def test_no_write_when_the_rules_are_already_right(env):
    roles, ctrl = env
    view = await eventually(lambda: rules_of(roles, "view"), what="view filled")
    await eventually(lambda: ctrl.clusterroles.get("view") and ctrl.clusterroles.get("view").get("rules"),
                     what="the cache sees it")
    rv = (await roles.get("view"))["metadata"]["resourceVersion"]
    await ctrl.reconcile("view")
    await roles.create(role("unrelated", [rule(["get"], ["things"])], {"team": "y"}))
    await ctrl.reconcile("view")
    got = await roles.get("view")
    assert got["metadata"]["resourceVersion"] == rv and got["rules"] == view


async def test_reconcile_of_a_plain_or_missing_role_does_nothing(env):
    roles, ctrl = env
    rv = (await roles.get("system:kube-dns"))["metadata"]["resourceVersion"]
    await ctrl.reconcile("system:kube-dns")
    await ctrl.reconcile("no-such-role")
    assert (await roles.get("system:kube-dns"))["metadata"]["resourceVersion"] == rv


# ---------------------------------------------------------------- aggregate_rules, the pure part

def test_aggregate_rules_skips_itself_and_duplicates():
    same = rule(["get"], ["pods"])
    agg = role("agg", [rule(["*"], ["*"], "*")], {"pick": "me"}, selectors=[{"matchLabels": {"pick": "me"}}])
    others = [role("z", [same, rule(["list"], ["pods"])], {"pick": "me"}),
              role("a", [same], {"pick": "me"}),
              role("m", [rule(["get"], ["nodes"])], {"pick": "not-me"})]
    assert aggregate_rules(agg, [agg, *others]) == [same, rule(["list"], ["pods"])]


def test_aggregate_rules_empty_selectors_and_everything_selector():
    assert aggregate_rules(role("agg", selectors=[]), [role("a", [WIDGETS], {"x": "y"})]) == []
    assert aggregate_rules(role("agg", selectors=[{}]), [role("a", [WIDGETS], {"x": "y"})]) == [WIDGETS]


def test_same_rules_treats_empty_fields_as_absent():
    assert same_rules([{"verbs": ["get"], "resourceNames": [], "apiGroups": [""], "resources": ["pods"]}],
                      [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
    assert same_rules(None, [])
    assert not same_rules([WIDGETS, rule(["get"], ["pods"])], [rule(["get"], ["pods"]), WIDGETS])
