"""The clusterrole-aggregation controller: the rules of an aggregated ClusterRole are those of the roles it selects.

A ClusterRole with an ``aggregationRule`` (admin, edit and view are the
bootstrap ones) gets as its ``rules`` the union of the rules of every other
ClusterRole matched by any of its ``clusterRoleSelectors``, as upstream
computes it: selector by selector, the matched roles by name, each role's
rules in order, a rule already taken not taken again. Whatever the
aggregated role held before is replaced, so removing a label (or a rule
from a selected role) takes the rules away again.

Any ClusterRole may be selected by any aggregated role, so every change to
any ClusterRole enqueues every aggregated role, as upstream does. A role is
written (with an update guarded by its resourceVersion) only when its rules
differ; a conflict is retried through the base's requeue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..api.errors import StatusError
from ..api.selectors import InvalidSelector, from_label_selector_object
from ..client import Client
from .base import Controller

log = logging.getLogger("kybernetes.controllers.clusterroleaggregation")

Obj = dict[str, Any]

API_VERSION = "rbac.authorization.k8s.io/v1"


def _name(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("name") or ""


def _semantic(rule: Any) -> Any:
    # Upstream compares rules semantically: an empty list is the same as none.
    if not isinstance(rule, dict):
        return rule
    return {k: v for k, v in rule.items() if v not in (None, [], {})}


def same_rules(a: Iterable[Any] | None, b: Iterable[Any] | None) -> bool:
    """Whether two rule lists are equal, in order, with empty fields counting as absent."""
    return [_semantic(r) for r in a or ()] == [_semantic(r) for r in b or ()]


def aggregate_rules(role: Obj, roles: Iterable[Obj]) -> list[Obj]:
    """The rules an aggregated role should hold, given every ClusterRole there is.

    Raises InvalidSelector when one of the role's selectors cannot be used
    (its rules are then left as they are).
    """
    name = _name(role)
    selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or []
    candidates = sorted((r for r in roles if _name(r) != name), key=_name)
    out: list[Obj] = []
    seen: list[Any] = []
    for i, raw in enumerate(selectors):
        selector = from_label_selector_object(raw, f"aggregationRule.clusterRoleSelectors[{i}]")
        for other in candidates:
            if not selector.matches((other.get("metadata") or {}).get("labels") or {}):
                continue
            for rule in other.get("rules") or []:
                key = _semantic(rule)
                if key not in seen:
                    seen.append(key)
                    out.append(rule)
    return out


class ClusterRoleAggregationController(Controller):
    name = "clusterrole-aggregation"

    def __init__(self, client: Client):
        super().__init__(client)
        self.api = client.resource(API_VERSION, "clusterroles", namespaced=False)
        self.clusterroles = self.informer(API_VERSION, "clusterroles", namespaced=False, resync_period=300)
        self.clusterroles.add_handler(on_add=self._on_change, on_update=lambda _old, new: self._on_change(new),
                                      on_delete=self._on_change)

    def _on_change(self, _role: Obj) -> None:
        for role in self.clusterroles.list():
            if role.get("aggregationRule") is not None:
                self.enqueue(_name(role))

    async def reconcile(self, key: str) -> None:
        role = self.clusterroles.get(key)
        if role is None or role.get("aggregationRule") is None:
            return
        try:
            rules = aggregate_rules(role, self.clusterroles.list())
        except InvalidSelector as e:
            # Validation refuses such selectors; one that slipped through keeps
            # the role as it is until the role is fixed (which enqueues it).
            log.warning("clusterrole %s: %s", key, e)
            return
        if same_rules(rules, role.get("rules")):
            return
        try:
            await self.api.update({**role, "rules": rules})
        except StatusError as e:
            if e.code != 404:  # deleted meanwhile: nothing to aggregate into
                raise
