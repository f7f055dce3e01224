"""rbac.authorization.k8s.io/v1 objects: defaults and validation, with upstream's messages.

Roles and ClusterRoles hold policy rules; RoleBindings and ClusterRoleBindings
give a role's rules to subjects (users, groups, service accounts). What the
rules mean is the authorizer's (apiserver/rbac.py); who may write them is the
escalation check's (apiserver/escalation.py). Here is only what makes one of
these objects well-formed:

* every rule names verbs; a resource rule names API groups and resources; a
  non-resource rule names URLs and nothing else, and only in a ClusterRole;
* an aggregationRule has at least one valid clusterRoleSelector;
* a binding's roleRef is a Role or ClusterRole (a ClusterRoleBinding: only a
  ClusterRole) of this group, by a name that can be a path segment, and it
  never changes once the binding exists (delete and recreate instead);
* a subject is a User or Group of this group, or a ServiceAccount of the core
  group, with a namespace in a ClusterRoleBinding.
"""

from __future__ import annotations

from typing import Any

from .errors import FieldError, invalid, not_supported, required
from .selectors import is_dns1123_subdomain, is_path_segment_name, validate_label_selector_object

GROUP = "rbac.authorization.k8s.io"
ROLE_KINDS = ("Role", "ClusterRole")
SUBJECT_KINDS = ("ServiceAccount", "User", "Group")

Obj = dict[str, Any]


def _d(v: Any) -> Obj:
    return v if isinstance(v, dict) else {}


def _l(v: Any) -> list:
    return v if isinstance(v, list) else []


# ---------------------------------------------------------------- defaults


def default_subjects(obj: Obj) -> None:
    """A User or Group subject without an apiGroup is of this group; a ServiceAccount's is the core group."""
    for s in _l(obj.get("subjects")):
        if isinstance(s, dict) and not s.get("apiGroup") and s.get("kind") in ("User", "Group"):
            s["apiGroup"] = GROUP


def default_binding(obj: Obj) -> None:
    ref = obj.get("roleRef")
    if isinstance(ref, dict) and not ref.get("apiGroup"):
        ref["apiGroup"] = GROUP
    default_subjects(obj)


# ---------------------------------------------------------------- roles


def validate_rule(rule: Any, namespaced: bool, path: str) -> list[FieldError]:
    r = _d(rule)
    errs: list[FieldError] = []
    if not _l(r.get("verbs")):
        errs.append(required(f"{path}.verbs", "verbs must contain at least one value"))
    urls = _l(r.get("nonResourceURLs"))
    if urls:
        if namespaced:
            errs.append(invalid(f"{path}.nonResourceURLs", urls,
                                "namespaced rules cannot apply to non-resource URLs"))
        if _l(r.get("apiGroups")) or _l(r.get("resources")):
            errs.append(invalid(f"{path}.nonResourceURLs", urls,
                                "rules cannot apply to both regular resources and non-resource URLs"))
        return errs
    if not _l(r.get("apiGroups")):
        errs.append(required(f"{path}.apiGroups", "resource rules must supply at least one api group"))
    if not _l(r.get("resources")):
        errs.append(required(f"{path}.resources", "resource rules must supply at least one resource"))
    return errs


def _validate_rules(obj: Obj, namespaced: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    for i, rule in enumerate(_l(obj.get("rules"))):
        errs.extend(validate_rule(rule, namespaced, f"rules[{i}]"))
    return errs


def validate_role(obj: Obj, old: Obj | None) -> list[FieldError]:
    return _validate_rules(obj, namespaced=True)


def validate_cluster_role(obj: Obj, old: Obj | None) -> list[FieldError]:
    errs = _validate_rules(obj, namespaced=False)
    agg = obj.get("aggregationRule")
    if isinstance(agg, dict):
        selectors = _l(agg.get("clusterRoleSelectors"))
        if not selectors:
            errs.append(required("aggregationRule.clusterRoleSelectors",
                                 "at least one clusterRoleSelector required if aggregationRule is non-nil"))
        for i, sel in enumerate(selectors):
            errs.extend(validate_label_selector_object(sel, f"aggregationRule.clusterRoleSelectors[{i}]"))
    return errs


# ---------------------------------------------------------------- bindings


def validate_subject(subject: Any, namespaced: bool, path: str) -> list[FieldError]:
    s = _d(subject)
    errs: list[FieldError] = []
    name, kind, group = s.get("name") or "", s.get("kind") or "", s.get("apiGroup") or ""
    if not name:
        errs.append(required(f"{path}.name", ""))
    if kind == "ServiceAccount":
        if name:
            for msg in is_dns1123_subdomain(name):
                errs.append(invalid(f"{path}.name", name, msg))
        if group:
            errs.append(not_supported(f"{path}.apiGroup", group, [""]))
        if not namespaced and not s.get("namespace"):
            errs.append(required(f"{path}.namespace", ""))
    elif kind in ("User", "Group"):
        if group != GROUP:
            errs.append(not_supported(f"{path}.apiGroup", group, [GROUP]))
    else:
        errs.append(not_supported(f"{path}.kind", kind, list(SUBJECT_KINDS)))
    return errs


def _validate_binding(obj: Obj, old: Obj | None, kinds: tuple[str, ...], namespaced: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    ref = _d(obj.get("roleRef"))
    if ref.get("apiGroup") != GROUP:
        errs.append(not_supported("roleRef.apiGroup", ref.get("apiGroup") or "", [GROUP]))
    if ref.get("kind") not in kinds:
        errs.append(not_supported("roleRef.kind", ref.get("kind") or "", list(kinds)))
    name = ref.get("name")
    if not name:
        errs.append(required("roleRef.name", ""))
    elif isinstance(name, str):
        for msg in is_path_segment_name(name):
            errs.append(invalid("roleRef.name", name, msg))
    for i, s in enumerate(_l(obj.get("subjects"))):
        errs.extend(validate_subject(s, namespaced, f"subjects[{i}]"))
    if old is not None and _d(old.get("roleRef")) != ref:
        errs.append(invalid("roleRef", ref, "cannot change roleRef"))
    return errs


def validate_role_binding(obj: Obj, old: Obj | None) -> list[FieldError]:
    return _validate_binding(obj, old, ROLE_KINDS, namespaced=True)


def validate_cluster_role_binding(obj: Obj, old: Obj | None) -> list[FieldError]:
    return _validate_binding(obj, old, ("ClusterRole",), namespaced=False)


VALIDATORS = {
    (GROUP, "Role"): validate_role,
    (GROUP, "ClusterRole"): validate_cluster_role,
    (GROUP, "RoleBinding"): validate_role_binding,
    (GROUP, "ClusterRoleBinding"): validate_cluster_role_binding,
}
DEFAULTERS = {
    (GROUP, "RoleBinding"): default_binding,
    (GROUP, "ClusterRoleBinding"): default_binding,
}
