"""authorization.k8s.io/v1: access reviews, answered by the server's authorizer.

The reviews are computed, never stored (as upstream): SelfSubjectAccessReview
(`kubectl auth can-i`), SubjectAccessReview, LocalSubjectAccessReview and
SelfSubjectRulesReview (`kubectl auth can-i --list`).

Two authorizers answer through the one ``Authorizer`` interface: AlwaysAllow
(upstream's --authorization-mode=AlwaysAllow: every authenticated request is
allowed, and the reviews say exactly that) and RBAC (rbac.py), behind
``Superusers``: members of system:masters may do anything, as upstream's
privileged-groups authorizer grants before RBAC is asked.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ..api import errors

GROUP = "authorization.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

Obj = dict[str, Any]

# plural -> (kind, namespaced)
REVIEWS = {
    "selfsubjectaccessreviews": ("SelfSubjectAccessReview", False),
    "subjectaccessreviews": ("SubjectAccessReview", False),
    "localsubjectaccessreviews": ("LocalSubjectAccessReview", True),
    "selfsubjectrulesreviews": ("SelfSubjectRulesReview", False),
}


class Authorizer(Protocol):
    # Whether anonymous requests are the authorizer's to judge; when False (AlwaysAllow)
    # they may reach only the public paths (see chain.py).
    restricts_anonymous: bool

    def authorize(self, user: str, groups: tuple[str, ...], attributes: Obj, resource: bool) -> tuple[bool, str]:
        """(allowed, reason) for one request described by resource or non-resource attributes."""

    def rules_for(self, user: str, groups: tuple[str, ...], namespace: str) -> tuple[list[Obj], list[Obj], bool]:
        """(resourceRules, nonResourceRules, incomplete) the user has in a namespace."""


class AlwaysAllow:
    """Every request is allowed: upstream's --authorization-mode=AlwaysAllow."""

    restricts_anonymous = False

    def authorize(self, user: str, groups: tuple[str, ...], attributes: Obj, resource: bool) -> tuple[bool, str]:
        return True, ""

    def rules_for(self, user: str, groups: tuple[str, ...], namespace: str) -> tuple[list[Obj], list[Obj], bool]:
        return ([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                [{"verbs": ["*"], "nonResourceURLs": ["*"]}], False)


SUPERUSER_GROUP = "system:masters"
_EVERYTHING = AlwaysAllow()


class Superusers:
    """Members of system:masters may do anything; everyone else is asked of ``inner``."""

    restricts_anonymous = True

    def __init__(self, inner: Authorizer, group: str = SUPERUSER_GROUP) -> None:
        self.inner = inner
        self.group = group

    def authorize(self, user: str, groups: tuple[str, ...], attributes: Obj, resource: bool) -> tuple[bool, str]:
        if self.group in groups:
            return True, ""
        return self.inner.authorize(user, groups, attributes, resource)

    def rules_for(self, user: str, groups: tuple[str, ...], namespace: str) -> tuple[list[Obj], list[Obj], bool]:
        if self.group in groups:
            return _EVERYTHING.rules_for(user, groups, namespace)
        return self.inner.rules_for(user, groups, namespace)


class Union:
    """The first of several authorizers that allows a request decides it (upstream's union).

    An authorizer that does not allow has no opinion; the request is refused
    when none allows it, with the reasons they gave.
    """

    restricts_anonymous = True

    def __init__(self, *authorizers: Authorizer) -> None:
        self.authorizers = authorizers

    def authorize(self, user: str, groups: tuple[str, ...], attributes: Obj, resource: bool) -> tuple[bool, str]:
        reasons = []
        for a in self.authorizers:
            allowed, reason = a.authorize(user, groups, attributes, resource)
            if allowed:
                return True, reason
            if reason:
                reasons.append(reason)
        return False, ", ".join(reasons)

    def rules_for(self, user: str, groups: tuple[str, ...], namespace: str) -> tuple[list[Obj], list[Obj], bool]:
        res: list[Obj] = []
        non: list[Obj] = []
        incomplete = False
        for a in self.authorizers:
            r, n, inc = a.rules_for(user, groups, namespace)
            res += r
            non += n
            incomplete = incomplete or inc
        return res, non, incomplete


def group_entry() -> Obj:
    gv = {"groupVersion": API_VERSION, "version": VERSION}
    return {"name": GROUP, "versions": [gv], "preferredVersion": gv}


def resource_list() -> Obj:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
            "resources": [{"name": plural, "singularName": plural[:-1], "namespaced": namespaced, "kind": kind,
                           "verbs": ["create"]} for plural, (kind, namespaced) in sorted(REVIEWS.items())]}


def _object(body: Any, kind: str) -> tuple[Obj, Obj]:
    if not isinstance(body, dict):
        raise errors.bad_request("the body of the request was not a JSON object")
    av, k = body.get("apiVersion"), body.get("kind")
    if (av and av != API_VERSION) or (k and k != kind):
        raise errors.bad_request(f"the body of the request must be an {API_VERSION} {kind} "
                                 f"(got {av or '?'} {k or '?'})")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise errors.invalid_object(kind, GROUP, "", [errors.required("spec")])
    return body, spec


def _attributes(kind: str, spec: Obj) -> tuple[Obj, bool]:
    res, non = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if (res is None) == (non is None):
        raise errors.invalid_object(kind, GROUP, "", [errors.invalid(
            "spec.resourceAttributes", res, "exactly one of nonResourceAttributes or resourceAttributes "
            "must be specified")])
    attrs = res if res is not None else non
    if not isinstance(attrs, dict):
        field = "spec.resourceAttributes" if res is not None else "spec.nonResourceAttributes"
        raise errors.invalid_object(kind, GROUP, "", [errors.invalid(field, attrs, "must be an object")])
    return attrs, res is not None


def review(authorizer: Authorizer, plural: str, body: Any, user: str, groups: tuple[str, ...],
           namespace: str | None = None) -> tuple[int, bytes]:
    """Answer one POSTed review; (HTTP code, the review with its status)."""
    kind, _namespaced = REVIEWS[plural]
    obj, spec = _object(body, kind)
    if kind == "SelfSubjectRulesReview":
        ns = spec.get("namespace") or ""
        res_rules, non_rules, incomplete = authorizer.rules_for(user, groups, ns)
        status: Obj = {"resourceRules": res_rules, "nonResourceRules": non_rules, "incomplete": incomplete}
    else:
        if kind in ("SubjectAccessReview", "LocalSubjectAccessReview"):
            subject, subject_groups = spec.get("user") or "", tuple(spec.get("groups") or ())
            if not subject and not subject_groups:
                raise errors.invalid_object(kind, GROUP, "", [errors.invalid(
                    "spec.user", subject, "at least one of user or group must be specified")])
        else:
            subject, subject_groups = user, groups
        attrs, is_resource = _attributes(kind, spec)
        if kind == "LocalSubjectAccessReview":
            if not is_resource:
                raise errors.invalid_object(kind, GROUP, "", [errors.invalid(
                    "spec.nonResourceAttributes", attrs, "disallowed on this kind of request")])
            if (attrs.get("namespace") or "") != (namespace or ""):
                raise errors.invalid_object(kind, GROUP, "", [errors.invalid(
                    "spec.resourceAttributes.namespace", attrs.get("namespace"),
                    "must match metadata.namespace")])
        allowed, reason = authorizer.authorize(subject, subject_groups, attrs, is_resource)
        status = {"allowed": allowed}
        if reason:
            status["reason"] = reason
    meta = dict(obj.get("metadata") or {}) if isinstance(obj.get("metadata"), dict) else {}
    meta.setdefault("creationTimestamp", None)
    if namespace:
        meta["namespace"] = namespace
    out = {"kind": kind, "apiVersion": API_VERSION, "metadata": meta, "spec": spec, "status": status}
    return 201, orjson.dumps(out)
