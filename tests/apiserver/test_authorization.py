"""authorization.k8s.io access reviews: computed by the server's authorizer (AlwaysAllow for now)."""

from __future__ import annotations

import pytest

from .conftest import call

AV = "authorization.k8s.io/v1"


async def test_discovery_lists_the_reviews(api):
    code, groups = await call(api, "GET", "/apis")
    assert code == 200 and any(g["name"] == "authorization.k8s.io" for g in groups["groups"])
    code, rl = await call(api, "GET", "/apis/authorization.k8s.io/v1")
    assert code == 200
    got = {r["name"]: (r["kind"], r["namespaced"], r["verbs"]) for r in rl["resources"]}
    assert got == {"selfsubjectaccessreviews": ("SelfSubjectAccessReview", False, ["create"]),
                   "subjectaccessreviews": ("SubjectAccessReview", False, ["create"]),
                   "localsubjectaccessreviews": ("LocalSubjectAccessReview", True, ["create"]),
                   "selfsubjectrulesreviews": ("SelfSubjectRulesReview", False, ["create"])}


async def test_self_subject_access_review_is_answered(api):
    body = {"apiVersion": AV, "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "pods"}}}
    code, out = await call(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body)
    assert code == 201 and out["kind"] == "SelfSubjectAccessReview" and out["status"]["allowed"] is True
    assert out["spec"]["resourceAttributes"]["resource"] == "pods"
    body["spec"] = {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}
    code, out = await call(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body)
    assert code == 201 and out["status"]["allowed"] is True


async def test_rules_review_lists_everything_under_always_allow(api):
    body = {"apiVersion": AV, "kind": "SelfSubjectRulesReview", "spec": {"namespace": "default"}}
    code, out = await call(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", body)
    assert code == 201
    assert out["status"]["resourceRules"] == [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]
    assert out["status"]["incomplete"] is False


async def test_local_review_must_match_its_namespace(api):
    path = "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews"
    body = {"apiVersion": AV, "kind": "LocalSubjectAccessReview",
            "spec": {"user": "alice", "resourceAttributes": {"namespace": "default", "verb": "get",
                                                             "resource": "pods"}}}
    code, out = await call(api, "POST", path, body)
    assert code == 201 and out["status"]["allowed"] is True and out["metadata"]["namespace"] == "default"
    body["spec"]["resourceAttributes"]["namespace"] = "other"
    code, out = await call(api, "POST", path, body)
    assert code == 422 and out["reason"] == "Invalid"
    assert out["details"]["causes"][0]["field"] == "spec.resourceAttributes.namespace"


@pytest.mark.parametrize("spec, field", [
    ({"user": "bob"}, "spec.resourceAttributes"),
    ({"user": "bob", "resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"path": "/"}},
     "spec.resourceAttributes"),
    ({"resourceAttributes": {"verb": "get", "resource": "pods"}}, "spec.user"),
])
async def test_bad_reviews_are_invalid(api, spec, field):
    body = {"apiVersion": AV, "kind": "SubjectAccessReview", "spec": spec}
    code, out = await call(api, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
    assert code == 422 and out["kind"] == "Status" and out["reason"] == "Invalid", out
    assert out["details"]["causes"][0]["field"] == field


async def test_reviews_are_create_only(api):
    code, out = await call(api, "GET", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
    assert code == 405 and out["reason"] == "MethodNotAllowed"
    code, _ = await call(api, "POST", "/apis/authorization.k8s.io/v1/namespaces/x/subjectaccessreviews", {})
    assert code == 404
