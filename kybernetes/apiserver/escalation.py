"""Who may write RBAC objects: nobody grants what they do not hold (upstream's escalation checks).

Being allowed to create Roles and RoleBindings must not let a user give
themselves (or anyone) more than they have. As upstream's RBAC storage does,
a write of a Role or ClusterRole, or of a binding, is checked after the
authorizer let the request through and before anything is stored:

* members of system:masters may write anything;
* a Role/ClusterRole whose rules the writer does not all hold needs the
  ``escalate`` verb on it; a ClusterRole with an aggregationRule (which can
  gather any rule) needs full authority or ``escalate``;
* a binding needs the ``bind`` verb on the role it refers to, or the writer
  must hold every rule of that role in the binding's namespace; a binding to a
  role that does not exist is refused as NotFound unless ``bind`` allows it;
* a change that touches only what the garbage collector writes (owner
  references, finalizers) is never refused, so a role can always be deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..api import errors
from ..api.kinds import Kind
from . import rbac
from .authorization import SUPERUSER_GROUP, Authorizer

if TYPE_CHECKING:
    from .rest import Call
    from .watchcache import WatchCache

Obj = dict[str, Any]
_GC_FIELDS = ("ownerReferences", "finalizers", "resourceVersion", "managedFields", "generation")


def _without_gc_fields(obj: Obj) -> Obj:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _GC_FIELDS}
    return {**obj, "metadata": meta}


def only_gc_fields_changed(new: Obj, old: Obj | None) -> bool:
    return old is not None and _without_gc_fields(new) == _without_gc_fields(old)


class EscalationCheck:
    """The checks above, for one API server's RBAC authorizer."""

    def __init__(self, rbac_authorizer: rbac.RBACAuthorizer, authorizer: Authorizer, cache: WatchCache) -> None:
        self.rbac = rbac_authorizer
        self.authorizer = authorizer
        self.cache = cache

    async def admit(self, kind: Kind, obj: Obj, old: Obj | None, call: Call) -> None:
        """Refuse (403, or 404 for a missing role) a write of an RBAC object that would escalate."""
        if kind.group != rbac.GROUP or SUPERUSER_GROUP in call.groups or only_gc_fields_changed(obj, old):
            return
        meta = obj.get("metadata") or {}
        name, ns = meta.get("name") or "", meta.get("namespace") or ""
        # Judge by the newest roles and bindings, including ones written a moment ago.
        await self.cache.fresh()
        if kind.kind in ("Role", "ClusterRole"):
            self._role(kind, obj, old, name, ns, call)
        elif kind.kind in ("RoleBinding", "ClusterRoleBinding"):
            self._binding(kind, obj, name, ns, call)

    def _allowed(self, call: Call, attributes: Obj) -> bool:
        return self.authorizer.authorize(call.user, call.groups, attributes, True)[0]

    def _refuse(self, kind: Kind, name: str, message: str) -> errors.StatusError:
        return errors.StatusError(403, "Forbidden", f'{kind.plural}.{rbac.GROUP} "{name}" is forbidden: {message}',
                                  {"name": name, "group": rbac.GROUP, "kind": kind.plural})

    def _role(self, kind: Kind, obj: Obj, old: Obj | None, name: str, ns: str, call: Call) -> None:
        if self._allowed(call, rbac.escalate_attributes(kind.plural, ns, name)):
            return
        agg = obj.get("aggregationRule")
        if agg is not None and (old is None or old.get("aggregationRule") != agg):
            if self.rbac.confirm_no_escalation(call.user, call.groups, "", rbac.FULL_AUTHORITY) is not None:
                raise self._refuse(kind, name, rbac.AGGREGATION_MESSAGE)
        rules = obj.get("rules") if isinstance(obj.get("rules"), list) else []
        refusal = self.rbac.confirm_no_escalation(call.user, call.groups, ns, rules)
        if refusal is not None:
            raise self._refuse(kind, name, refusal)

    def _binding(self, kind: Kind, obj: Obj, name: str, ns: str, call: Call) -> None:
        ref = obj.get("roleRef") if isinstance(obj.get("roleRef"), dict) else {}
        if self._allowed(call, rbac.bind_attributes(ref, ns)):
            return
        rules = self.rbac.role_ref_rules(ref, ns)
        if rules is None:
            resource, role_name = rbac.role_ref_not_found(ref)
            raise errors.not_found(resource, rbac.GROUP, role_name)
        refusal = self.rbac.confirm_no_escalation(call.user, call.groups, ns, rules)
        if refusal is not None:
            raise self._refuse(kind, name, refusal)
