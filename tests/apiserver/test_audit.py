"""Audit logging: the policy, the events at each level and stage, the writer, the log backend, the flags."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest

from kybernetes.api.errors import StatusError, unauthorized
from kybernetes.apiserver import audit, chain
from kybernetes.apiserver.audit import (
    Audit,
    AuditOptions,
    AuditWriter,
    BlockingWriter,
    LogBackend,
    PolicyError,
    load_policy,
    parse_policy,
)
from kybernetes.apiserver.authentication import TokenAuth
from kybernetes.apiserver.http import serve
from kybernetes.apiserver.request import Handler, Request, Response
from kybernetes.apiserver.requestinfo import parse

from .conftest import cm, start_api, stop_api

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def policy(*rules: dict[str, Any], **top: Any) -> audit.Policy:
    return parse_policy({"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": list(rules), **top})


def request(method: str, path: str, query: dict[str, str] | None = None, body: Any = None,
            user: str = "alice", groups: tuple[str, ...] = ("devs", "system:authenticated"),
            headers: dict[str, str] | None = None) -> Request:
    raw = body if isinstance(body, bytes) else (orjson.dumps(body) if body is not None else b"")
    h = {"content-type": "application/json", **(headers or {})}
    req = Request(method, path, dict(query or {}), h, raw, user=user, groups=groups)
    req.info = parse(method, path, req.query)
    return req


class Memory:
    """A backend that keeps the lines it is given."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.closed = False

    def write(self, lines: list[bytes]) -> None:
        self.lines.extend(lines)

    def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines]


def auditor(p: audit.Policy, **kw: Any) -> tuple[Audit, Memory]:
    mem = Memory()
    return Audit(p, AuditWriter(mem, **kw)), mem


async def run(a: Audit, req: Request, handler: Handler, *filters) -> tuple[Response, list[dict[str, Any]]]:
    resp = await chain.build([a, *filters], handler)(req)
    await a.flush()
    assert isinstance(a.writer.backend, Memory)
    return resp, a.writer.backend.events


def created(req: Request) -> Response:
    obj = orjson.loads(req.body)
    obj["metadata"].update(uid="u-1", resourceVersion="7", managedFields=[{"manager": "kubectl"}])
    return Response(201, orjson.dumps(obj))


async def create_handler(req: Request) -> Response:
    return created(req)


async def ok(req: Request) -> Response:
    return Response(200, b'{"kind":"ConfigMapList","apiVersion":"v1","metadata":{},"items":[]}')


EVERYTHING = {"level": "Metadata"}


# ------------------------------------------------------------------ policy matching


@pytest.mark.parametrize("rule,method,path,query,user,groups,matches", [
    ({"users": ["alice"]}, "GET", "/api/v1/pods", {}, "alice", (), True),
    ({"users": ["alice"]}, "GET", "/api/v1/pods", {}, "bob", (), False),
    ({"userGroups": ["devs", "ops"]}, "GET", "/api/v1/pods", {}, "bob", ("ops",), True),
    ({"userGroups": ["devs"]}, "GET", "/api/v1/pods", {}, "bob", ("ops",), False),
    ({"verbs": ["watch"]}, "GET", "/api/v1/pods", {"watch": "true"}, "u", (), True),
    ({"verbs": ["watch"]}, "GET", "/api/v1/pods", {}, "u", (), False),
    ({"resources": [{"group": "", "resources": ["pods"]}]}, "GET", "/api/v1/namespaces/a/pods/p", {}, "u", (), True),
    # a resource names no subresource of it, and the group must be the request's
    ({"resources": [{"group": "", "resources": ["pods"]}]}, "GET", "/api/v1/namespaces/a/pods/p/log", {}, "u", (),
     False),
    ({"resources": [{"group": "apps", "resources": ["pods"]}]}, "GET", "/api/v1/pods", {}, "u", (), False),
    ({"resources": [{"group": "", "resources": ["pods/log"]}]}, "GET", "/api/v1/namespaces/a/pods/p/log", {}, "u",
     (), True),
    ({"resources": [{"group": "", "resources": ["pods/log"]}]}, "GET", "/api/v1/namespaces/a/pods/p", {}, "u", (),
     False),
    ({"resources": [{"group": "", "resources": ["*"]}]}, "GET", "/api/v1/namespaces/a/pods/p/log", {}, "u", (), True),
    ({"resources": [{"group": "apps", "resources": ["*/scale"]}]}, "PATCH",
     "/apis/apps/v1/namespaces/a/deployments/d/scale", {}, "u", (), True),
    ({"resources": [{"group": "apps", "resources": ["*/scale"]}]}, "PATCH",
     "/apis/apps/v1/namespaces/a/deployments/d", {}, "u", (), False),
    ({"resources": [{"group": "", "resources": ["pods/*"]}]}, "POST", "/api/v1/namespaces/a/pods/p/exec", {}, "u",
     (), True),
    ({"resources": [{"group": "apps"}]}, "GET", "/apis/apps/v1/deployments", {}, "u", (), True),
    ({"resources": [{"group": "", "resources": ["secrets"], "resourceNames": ["s1"]}]}, "GET",
     "/api/v1/namespaces/a/secrets/s1", {}, "u", (), True),
    ({"resources": [{"group": "", "resources": ["secrets"], "resourceNames": ["s1"]}]}, "GET",
     "/api/v1/namespaces/a/secrets/s2", {}, "u", (), False),
    ({"namespaces": ["kube-system"]}, "GET", "/api/v1/namespaces/kube-system/pods", {}, "u", (), True),
    ({"namespaces": ["kube-system"]}, "GET", "/api/v1/namespaces/default/pods", {}, "u", (), False),
    ({"namespaces": [""]}, "GET", "/api/v1/nodes", {}, "u", (), True),
    ({"namespaces": [""]}, "GET", "/api/v1/namespaces/a/pods", {}, "u", (), False),
    ({"namespaces": ["kube-system"]}, "GET", "/healthz", {}, "u", (), False),  # resource rules skip non-resource
    ({"nonResourceURLs": ["/healthz*"]}, "GET", "/healthz/etcd", {}, "u", (), True),
    ({"nonResourceURLs": ["/healthz*"]}, "GET", "/version", {}, "u", (), False),
    ({"nonResourceURLs": ["/version"]}, "GET", "/version", {}, "u", (), True),
    ({"nonResourceURLs": ["*"]}, "GET", "/metrics", {}, "u", (), True),
    ({"nonResourceURLs": ["*"]}, "GET", "/api/v1/pods", {}, "u", (), False),
    ({}, "GET", "/anything", {}, "u", (), True),
])
def test_each_selector(rule, method, path, query, user, groups, matches) -> None:
    p = policy({"level": "Request", **rule})
    got = p.decide(user, groups, parse(method, path, query)).level
    assert got == ("Request" if matches else "None")


def test_first_matching_rule_wins_and_no_match_is_none() -> None:
    p = policy({"level": "None", "users": ["system:kube-proxy"]},
               {"level": "RequestResponse", "resources": [{"group": "", "resources": ["secrets"]}]},
               {"level": "Metadata", "namespaces": ["kube-system"]})
    info = parse("GET", "/api/v1/namespaces/kube-system/secrets/s", {})
    assert p.decide("system:kube-proxy", (), info).level == "None"
    assert p.decide("alice", (), info).level == "RequestResponse"
    assert p.decide("alice", (), parse("GET", "/api/v1/namespaces/kube-system/pods", {})).level == "Metadata"
    assert p.decide("alice", (), parse("GET", "/api/v1/namespaces/default/pods", {})).level == "None"


def test_omit_stages_and_managed_fields_combine() -> None:
    p = policy({"level": "Request", "users": ["a"], "omitStages": ["ResponseStarted"], "omitManagedFields": False},
               {"level": "Metadata"}, omitStages=["RequestReceived"], omitManagedFields=True)
    info = parse("GET", "/api/v1/pods", {})
    first, second = p.decide("a", (), info), p.decide("b", (), info)
    assert first.omit_stages == {"RequestReceived", "ResponseStarted"} and first.omit_managed_fields is False
    assert second.omit_stages == {"RequestReceived"} and second.omit_managed_fields is True


def test_policy_from_yaml_and_json_files(tmp_path: Path) -> None:
    y = tmp_path / "policy.yaml"
    y.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
                 "- level: None\n  nonResourceURLs: ['/healthz*']\n- level: Metadata\n")
    j = tmp_path / "policy.json"
    j.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                             "rules": [{"level": "RequestResponse"}]}))
    py = load_policy(y)
    assert len(py.rules) == 2 and py.omit_stages == {"RequestReceived"}
    assert py.decide("u", (), parse("GET", "/healthz", {})).level == "None"
    assert load_policy(j).decide("u", (), parse("GET", "/healthz", {})).level == "RequestResponse"
    with pytest.raises(PolicyError, match="cannot read audit policy file"):
        load_policy(tmp_path / "missing.yaml")


@pytest.mark.parametrize("doc,message", [
    ("rules: [", "not valid YAML"),
    ("- level: None", "must be an object"),
    ({"kind": "Policy", "apiVersion": "audit.k8s.io/v1beta1", "rules": [EVERYTHING]}, "want \"audit.k8s.io/v1\""),
    ({"kind": "Pollicy", "apiVersion": "audit.k8s.io/v1", "rules": [EVERYTHING]}, "want \"Policy\""),
    ({"rules": []}, "no rules"),
    ({"rules": [{"level": "Everything"}]},
     'rules[0].level: Unsupported value: "Everything": supported values: "None", "Metadata"'),
    ({"rules": [{"users": ["a"]}]}, "rules[0].level: Required value"),
    ({"rules": [{"level": "None", "omitStages": ["Done"]}]}, 'rules[0].omitStages[0]: Invalid value: "Done"'),
    ({"omitStages": ["Done"], "rules": [EVERYTHING]}, 'omitStages[0]: Invalid value: "Done"'),
    ({"rules": [{"level": "None", "nonResourceURLs": ["healthz"]}]}, "must begin with a '/'"),
    ({"rules": [{"level": "None", "nonResourceURLs": ["/a*/b"]}]}, "must be the final character"),
    ({"rules": [{"level": "None", "nonResourceURLs": ["/a"], "namespaces": ["x"]}]},
     "both regular resources and non-resource URLs"),
    ({"rules": [{"level": "None", "resources": [{"group": "", "resourceNames": ["x"]}]}]},
     "requires at least one resource"),
    ({"rules": [{"level": "None", "resources": [{"group": "apps/v1"}]}]}, 'rules[0].resources[0].group'),
    ({"rules": [{"level": "None", "userGroup": ["devs"]}]}, "rules[0].userGroup: Invalid value"),
    ({"rules": [{"level": "None", "users": "alice"}]}, "rules[0].users: Invalid value"),
    ({"rules": [{"level": "None", "omitManagedFields": "yes"}]}, "must be true or false"),
])
def test_bad_policies_are_explained(doc, message) -> None:
    if isinstance(doc, dict):
        doc = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", **doc}
    with pytest.raises(PolicyError) as e:
        parse_policy(doc)
    assert message in str(e.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(PolicyError) as e:
        policy({"level": "Bad"}, {"users": ["a"]})
    assert "rules[0].level" in str(e.value) and "rules[1].level" in str(e.value)


# ------------------------------------------------------------------ events per level


async def test_metadata_event_shape() -> None:
    a, _ = auditor(policy(EVERYTHING))
    req = request("POST", "/api/v1/namespaces/shop/configmaps", {"fieldManager": "kubectl-create"}, cm("c1"),
                  headers={"user-agent": "kubectl/v1.32.0", "x-forwarded-for": "10.0.0.1, bogus, 10.0.0.2"})
    resp, events = await run(a, req, create_handler)
    assert resp.status == 201 and [e["stage"] for e in events] == ["RequestReceived", "ResponseComplete"]
    received, complete = events
    assert list(complete) == ["kind", "apiVersion", "level", "auditID", "stage", "requestURI", "verb", "user",
                              "sourceIPs", "userAgent", "objectRef", "responseStatus", "requestReceivedTimestamp",
                              "stageTimestamp"]
    assert complete["kind"] == "Event" and complete["apiVersion"] == "audit.k8s.io/v1"
    assert complete["level"] == "Metadata" and complete["verb"] == "create"
    assert complete["requestURI"] == "/api/v1/namespaces/shop/configmaps?fieldManager=kubectl-create"
    assert complete["user"] == {"username": "alice", "groups": ["devs", "system:authenticated"]}
    assert complete["sourceIPs"] == ["10.0.0.1", "10.0.0.2"] and complete["userAgent"] == "kubectl/v1.32.0"
    # The name comes from the created object, as upstream fills it in; RequestReceived is before the body.
    assert complete["objectRef"] == {"resource": "configmaps", "namespace": "shop", "name": "c1", "apiVersion": "v1"}
    assert received["objectRef"] == {"resource": "configmaps", "namespace": "shop", "apiVersion": "v1"}
    assert complete["responseStatus"] == {"metadata": {}, "code": 201}
    assert "responseStatus" not in received
    assert received["auditID"] == complete["auditID"] and resp.headers["Audit-Id"] == complete["auditID"]
    assert STAMP.match(complete["requestReceivedTimestamp"]) and STAMP.match(complete["stageTimestamp"])
    assert received["stageTimestamp"] == received["requestReceivedTimestamp"] == complete["requestReceivedTimestamp"]
    assert complete["stageTimestamp"] >= complete["requestReceivedTimestamp"]


def test_timestamps_have_microseconds() -> None:
    assert audit.timestamp(1796346123_123456_789) == "2026-12-04T01:02:03.123456Z"


async def test_request_level_has_the_request_object_only() -> None:
    a, _ = auditor(policy({"level": "Request"}))
    body = cm("c1", {"k": "v"})
    _, events = await run(a, request("POST", "/api/v1/namespaces/shop/configmaps", body=body), create_handler)
    complete = events[-1]
    assert complete["requestObject"] == body and "responseObject" not in complete
    assert "requestObject" not in events[0]


async def test_request_response_level_has_both_objects_and_can_omit_managed_fields() -> None:
    a, _ = auditor(policy({"level": "RequestResponse"}))
    _, events = await run(a, request("POST", "/api/v1/namespaces/shop/configmaps", body=cm("c1")), create_handler)
    complete = events[-1]
    assert complete["requestObject"]["metadata"]["name"] == "c1"
    assert complete["responseObject"]["metadata"]["uid"] == "u-1"
    assert complete["responseObject"]["metadata"]["managedFields"] == [{"manager": "kubectl"}]
    a, _ = auditor(policy({"level": "RequestResponse"}, omitManagedFields=True))
    _, events = await run(a, request("POST", "/api/v1/namespaces/shop/configmaps", body=cm("c1")), create_handler)
    assert "managedFields" not in events[-1]["responseObject"]["metadata"]


async def test_a_patch_is_recorded_as_sent() -> None:
    a, _ = auditor(policy({"level": "Request"}))
    patch = [{"op": "replace", "path": "/data/k", "value": "v2"}]
    req = request("PATCH", "/api/v1/namespaces/shop/configmaps/c1", body=patch,
                  headers={"content-type": "application/json-patch+json"})
    _, events = await run(a, req, ok)
    assert events[-1]["requestObject"] == patch and events[-1]["verb"] == "patch"


def test_audit_ids_are_version_4_uuids() -> None:
    ids = {audit.new_audit_id() for _ in range(100)}
    assert len(ids) == 100
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 4 and u.variant == uuid.RFC_4122


async def test_update_records_the_version_it_was_based_on() -> None:
    a, _ = auditor(policy(EVERYTHING))
    body = cm("c1", resourceVersion="41", uid="u-1")
    _, events = await run(a, request("PUT", "/api/v1/namespaces/shop/configmaps/c1", body=body), create_handler)
    assert events[-1]["objectRef"] == {"resource": "configmaps", "namespace": "shop", "name": "c1", "uid": "u-1",
                                       "apiVersion": "v1", "resourceVersion": "41"}


async def test_non_resource_and_group_requests() -> None:
    a, _ = auditor(policy(EVERYTHING))
    _, events = await run(a, request("GET", "/healthz"), ok)
    assert "objectRef" not in events[-1] and events[-1]["verb"] == "get"
    a, _ = auditor(policy(EVERYTHING))
    _, events = await run(a, request("GET", "/apis/apps/v1/namespaces/a/deployments/d/scale"), ok)
    assert events[-1]["objectRef"] == {"resource": "deployments", "namespace": "a", "name": "d", "apiGroup": "apps",
                                       "apiVersion": "v1", "subresource": "scale"}


async def test_incoming_audit_id_is_kept() -> None:
    a, _ = auditor(policy(EVERYTHING))
    resp, events = await run(a, request("GET", "/api/v1/pods", headers={"audit-id": "trace-42"}), ok)
    assert {e["auditID"] for e in events} == {"trace-42"} and resp.headers["Audit-Id"] == "trace-42"


async def test_level_none_writes_nothing_but_still_answers_with_an_audit_id() -> None:
    a, mem = auditor(policy({"level": "None", "users": ["alice"]}, EVERYTHING))
    resp, events = await run(a, request("GET", "/api/v1/pods"), ok)
    assert resp.status == 200 and events == [] and len(resp.headers["Audit-Id"]) == 36


async def test_omitted_stages_are_not_written() -> None:
    a, _ = auditor(policy(EVERYTHING, omitStages=["RequestReceived"]))
    _, events = await run(a, request("GET", "/api/v1/pods"), ok)
    assert [e["stage"] for e in events] == ["ResponseComplete"]


async def test_a_status_body_is_the_response_status() -> None:
    a, _ = auditor(policy(EVERYTHING))

    async def deleted(req: Request) -> Response:
        return Response(200, b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success",'
                             b'"details":{"name":"c1","kind":"configmaps"}}')

    _, events = await run(a, request("DELETE", "/api/v1/namespaces/a/configmaps/c1"), deleted)
    assert events[-1]["responseStatus"] == {"metadata": {}, "status": "Success",
                                            "details": {"name": "c1", "kind": "configmaps"}, "code": 200}


# ------------------------------------------------------------------ stages


async def test_watch_is_response_started_then_complete_when_the_stream_ends() -> None:
    a, mem = auditor(policy(EVERYTHING))
    gate = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b'{"type":"ADDED","object":{}}\n'
        await gate.wait()
        yield b'{"type":"DELETED","object":{}}\n'

    async def watch(req: Request) -> Response:
        return Response(200, b"", stream=events())

    resp, written = await run(a, request("GET", "/api/v1/namespaces/a/pods", {"watch": "true"}), watch)
    assert [e["stage"] for e in written] == ["RequestReceived", "ResponseStarted"]
    assert written[1]["responseStatus"] == {"metadata": {}, "code": 200} and written[1]["verb"] == "watch"
    assert resp.stream is not None
    chunks = [await anext(resp.stream)]
    gate.set()
    chunks += [c async for c in resp.stream]
    assert len(chunks) == 2
    await a.flush()
    stages = [e["stage"] for e in mem.events]
    assert stages == ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    assert mem.events[2]["stageTimestamp"] >= mem.events[1]["stageTimestamp"]


async def test_a_watch_closed_by_its_reader_completes_once() -> None:
    a, mem = auditor(policy(EVERYTHING))
    closed = []

    class Stream:
        def __aiter__(self):
            return self

        async def __anext__(self) -> bytes:
            await asyncio.sleep(3600)
            return b""

        def close(self) -> None:
            closed.append(True)

    async def watch(req: Request) -> Response:
        return Response(200, b"", stream=Stream())

    resp, _ = await run(a, request("GET", "/api/v1/pods", {"watch": "1"}), watch)
    reader = asyncio.ensure_future(anext(resp.stream))
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await resp.stream.aclose()
    await a.flush()
    assert [e["stage"] for e in mem.events] == ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    assert closed == [True]


async def test_long_running_request_with_a_body_gets_response_started() -> None:
    a, _ = auditor(policy(EVERYTHING))
    _, events = await run(a, request("GET", "/api/v1/namespaces/a/pods/p/log"), ok)
    assert [e["stage"] for e in events] == ["RequestReceived", "ResponseStarted", "ResponseComplete"]


async def test_upgrade_is_recorded_as_101_when_the_connection_is_taken_over() -> None:
    a, mem = auditor(policy(EVERYTHING))
    req = request("POST", "/api/v1/namespaces/a/pods/p/exec", {"command": "ls"})
    stages_at_upgrade = []

    async def take_over(user: str, groups: tuple[str, ...]) -> Any:
        await a.flush()
        stages_at_upgrade.extend(e["stage"] for e in mem.events)
        return SimpleNamespace(status=101)

    req.upgrade = take_over

    async def handler(r: Request) -> Response:
        assert r.upgrade is not None
        return Response(101, native=await r.upgrade(r.user, r.groups))

    _, events = await run(a, req, handler)
    assert stages_at_upgrade == ["RequestReceived", "ResponseStarted"]
    assert [e["stage"] for e in events] == ["RequestReceived", "ResponseStarted", "ResponseComplete"]
    assert events[-1]["responseStatus"]["code"] == 101


async def test_unexpected_failure_is_a_panic_and_is_raised() -> None:
    a, _ = auditor(policy(EVERYTHING))

    async def broken(req: Request) -> Response:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await chain.build([a], broken)(request("GET", "/api/v1/pods"))
    await a.flush()
    assert isinstance(a.writer.backend, Memory)
    events = a.writer.backend.events
    assert [e["stage"] for e in events] == ["RequestReceived", "Panic"]
    assert events[-1]["responseStatus"]["code"] == 500 and "boom" in events[-1]["responseStatus"]["message"]


# ------------------------------------------------------------------ with the other filters


class Recorder:
    restricts_anonymous = True

    def __init__(self, allow=lambda user, attrs: True) -> None:
        self.allow = allow

    def authorize(self, user, groups, attributes, resource):
        return (True, "") if self.allow(user, attributes) else (False, "")


async def test_forbidden_is_recorded_with_403_and_the_decision() -> None:
    a, _ = auditor(policy(EVERYTHING))
    api = SimpleNamespace(authorizer=Recorder(lambda user, attrs: attrs.get("verb") != "delete"))

    async def annotating_authorize(req: Request, rest: Handler) -> Response:
        # What the lead's Authorize does: say what was decided, then refuse or go on.
        assert req.info is not None
        allowed, reason = api.authorizer.authorize(req.user, req.groups, chain.attributes(req.info), True)
        audit.record_authorization(allowed, "no deletes here" if not allowed else reason)
        if not allowed:
            raise chain.forbidden(req.user, req.info, "")
        return await rest(req)

    resp, events = await run(a, request("DELETE", "/api/v1/namespaces/a/configmaps/c1"), ok, annotating_authorize)
    assert resp.status == 403 and orjson.loads(resp.body)["reason"] == "Forbidden"
    status = events[-1]["responseStatus"]
    assert status["code"] == 403 and status["status"] == "Failure" and status["reason"] == "Forbidden"
    assert status["message"].startswith('configmaps "c1" is forbidden: User "alice" cannot delete')
    assert events[-1]["annotations"] == {"authorization.k8s.io/decision": "forbid",
                                         "authorization.k8s.io/reason": "no deletes here"}
    assert "annotations" not in events[0]  # RequestReceived was written before the authorizer spoke
    # The real Authorize filter's refusal is recorded the same way.
    a, _ = auditor(policy(EVERYTHING))
    resp, events = await run(a, request("DELETE", "/api/v1/namespaces/a/configmaps/c1"), ok, chain.Authorize(api))
    assert resp.status == 403 and events[-1]["responseStatus"]["code"] == 403


async def test_impersonation_is_recorded() -> None:
    a, _ = auditor(policy({"level": "Metadata", "users": ["alice"]}))
    api = SimpleNamespace(authorizer=Recorder())
    req = request("GET", "/api/v1/namespaces/a/configmaps",
                  headers={"impersonate-user": "carol", "impersonate-group": "qa"})
    seen = []

    async def handler(r: Request) -> Response:
        seen.append(r.user)
        return await ok(r)

    _, events = await run(a, req, handler, chain.Impersonate(api))
    assert seen == ["carol"]
    # The policy judged the authenticated user; the event names both.
    assert events[-1]["user"] == {"username": "alice", "groups": ["devs", "system:authenticated"]}
    assert events[-1]["impersonatedUser"] == {"username": "carol", "groups": ["qa", "system:authenticated"]}
    assert "impersonatedUser" not in events[0]


async def test_failed_authentication_is_recorded_without_a_user() -> None:
    a, _ = auditor(policy(EVERYTHING))

    async def refuse(req: Request, rest: Handler) -> Response:
        raise unauthorized()

    req = request("GET", "/api/v1/pods", user="", groups=(), headers={"authorization": "Bearer nope"})
    resp = await chain.build([a.failed_authentication, refuse, a], ok)(req)
    await a.flush()
    assert isinstance(a.writer.backend, Memory)
    events = a.writer.backend.events
    assert resp.status == 401 and resp.headers["Audit-Id"] == events[0]["auditID"]
    assert [e["stage"] for e in events] == ["ResponseStarted"]
    assert events[0]["user"] == {}
    assert events[0]["responseStatus"] == {"metadata": {},
                                           "message": "Authentication failed, attempted: bearer", "code": 401}


async def test_failed_authentication_not_audited_by_the_policy() -> None:
    a, mem = auditor(policy({"level": "Metadata", "userGroups": ["system:authenticated"]}))

    async def refuse(req: Request, rest: Handler) -> Response:
        raise unauthorized()

    req = request("GET", "/api/v1/pods", user="", groups=())
    resp = await chain.build([a.failed_authentication, refuse], ok)(req)
    await a.flush()
    assert resp.status == 401 and "Audit-Id" in resp.headers and mem.events == []


async def test_annotate_outside_an_audited_request_does_nothing() -> None:
    audit.annotate("a", "b")
    audit.record_authorization(True)


# ------------------------------------------------------------------ the writer


class Blocked:
    """A backend stuck on its disk until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[bytes] = []

    def write(self, lines: list[bytes]) -> None:
        self.release.wait(10)
        self.lines.extend(lines)

    def close(self) -> None:
        pass


async def test_the_queue_never_blocks_and_counts_what_it_drops(caplog) -> None:
    backend = Blocked()
    a = Audit(policy(EVERYTHING), AuditWriter(backend, queue_size=10))
    h = chain.build([a], ok)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="kybernetes.audit"):
        for _ in range(50):
            assert (await asyncio.wait_for(h(request("GET", "/api/v1/pods")), 1)).status == 200
    assert time.perf_counter() - t0 < 2
    assert a.dropped > 0 and "dropped" in caplog.text and "queue is full" in caplog.text
    backend.release.set()
    await a.stop()
    assert len(backend.lines) + a.dropped == 100


async def test_stop_flushes_to_the_log_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    a = Audit(policy(EVERYTHING), AuditWriter(LogBackend(str(path))))
    h = chain.build([a], ok)
    for _ in range(5):
        await h(request("GET", "/api/v1/pods"))
    await a.stop()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 10 and all(orjson.loads(line)["kind"] == "Event" for line in lines)
    assert path.stat().st_mode & 0o777 == 0o600


async def test_stdout_backend(capsys) -> None:
    a = Audit(policy(EVERYTHING), AuditWriter(LogBackend("-")))
    await chain.build([a], ok)(request("GET", "/api/v1/pods"))
    await a.stop()
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["stage"] for line in out] == ["RequestReceived", "ResponseComplete"]


async def test_unencodable_event_is_dropped_not_fatal() -> None:
    mem = Memory()
    w = AuditWriter(mem)
    w.emit({"auditID": "1", "bad": {1, 2}})
    w.emit({"auditID": "2"})
    await w.flush()
    assert [orjson.loads(line)["auditID"] for line in mem.lines] == ["2"] and w.dropped == 1
    await w.stop()
    assert mem.closed


class Counting(Memory):
    """A backend that counts its writes, and fails them while ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.fail = False

    def write(self, lines: list[bytes]) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.writes += 1
        super().write(lines)


async def test_blocking_writer_writes_a_turn_of_the_loop_at_once() -> None:
    """The default mode: on the event loop, the events of one turn in one write, in order."""
    mem = Counting()
    w = BlockingWriter(mem)
    for i in range(50):
        w.emit({"auditID": str(i)})
    assert mem.lines == []  # not yet: at the end of this turn
    await asyncio.sleep(0)
    assert [orjson.loads(x)["auditID"] for x in mem.lines] == [str(i) for i in range(50)] and mem.writes == 1
    w.emit({"auditID": "bad", "x": {1}})  # cannot be encoded: dropped, counted
    mem.fail = True
    w.emit({"auditID": "lost"})
    await asyncio.sleep(0)
    assert w.dropped == 2 and w.written == 50
    mem.fail = False
    w.emit({"auditID": "after"})
    await w.stop()
    assert orjson.loads(mem.lines[-1])["auditID"] == "after" and mem.closed
    w.emit({"auditID": "too late"})
    assert w.dropped == 3


async def test_blocking_strict_fails_a_request_whose_first_event_is_lost() -> None:
    mem = Counting()
    a = Audit(policy(EVERYTHING), BlockingWriter(mem, strict=True))
    resp = await chain.build([a], ok)(request("GET", "/api/v1/namespaces/default/configmaps"))
    assert resp.status == 200 and [orjson.loads(x)["stage"] for x in mem.lines] == [
        "RequestReceived", "ResponseComplete"]
    mem.fail = True
    called = []

    async def handler(req: Request) -> Response:
        called.append(req)
        return await ok(req)
    with pytest.raises(StatusError) as e:
        await chain.build([a], handler)(request("GET", "/api/v1/namespaces/default/configmaps"))
    assert e.value.code == 500 and "failed to store audit event" in e.value.message and called == []
    assert a.dropped == 1


# ------------------------------------------------------------------ rotation


def test_rotation_by_size_names_backups_like_lumberjack(tmp_path: Path) -> None:
    clock = [1796346123.123]
    path = tmp_path / "audit.log"
    b = LogBackend(str(path), max_size_mb=1, now=lambda: clock[0])
    b.max_size = 100  # bytes, to keep the test small
    line = b"x" * 39 + b"\n"
    b.write([line, line])  # 80 bytes: fits
    b.write([line])  # would be 120: rotate first
    assert (tmp_path / "audit-2026-12-04T01-02-03.123.log").read_bytes() == line * 2
    assert path.read_bytes() == line
    clock[0] += 1
    b.write([line, line, line])  # rotates within the batch, after its first line
    assert (tmp_path / "audit-2026-12-04T01-02-04.123.log").read_bytes() == line * 2
    assert path.read_bytes() == line * 2
    b.close()
    # The size already on disk counts when the log is opened again.
    clock[0] += 1
    b = LogBackend(str(path), now=lambda: clock[0])
    b.max_size = 100
    b.write([line])
    assert len(b.backups()) == 3 and path.read_bytes() == line
    b.close()


def test_rotation_keeps_max_backups_and_max_age(tmp_path: Path) -> None:
    clock = [1796346123.0]
    path = tmp_path / "audit.log"
    b = LogBackend(str(path), max_backups=2, now=lambda: clock[0])
    b.max_size = 10
    for _ in range(5):
        b.write([b"0123456789\n"])
        clock[0] += 60
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names == ["audit-2026-12-04T01-05-03.000.log", "audit-2026-12-04T01-06-03.000.log", "audit.log"]
    b.close()
    b = LogBackend(str(path), max_age_days=1, now=lambda: clock[0] + 2 * 86400)
    b.max_size = 10
    b.write([b"0123456789\n"])
    assert [f.name for _, f in b.backups()] == ["audit-2026-12-06T01-07-03.000.log"]
    b.close()


def test_rotation_compresses_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    b = LogBackend(str(path), compress=True, now=lambda: 1796346123.5)
    b.max_size = 10
    b.write([b"first line\n", b"second line\n"])
    backups = [f for _, f in b.backups()]
    assert [f.name for f in backups] == ["audit-2026-12-04T01-02-03.500.log.gz"]
    assert gzip.decompress(backups[0].read_bytes()) == b"first line\n"
    b.close()


def test_two_rotations_in_one_millisecond_keep_both(tmp_path: Path) -> None:
    b = LogBackend(str(tmp_path / "audit.log"), now=lambda: 1796346123.5)
    b.max_size = 5
    b.write([b"aaaaa\n", b"bbbbb\n", b"ccccc\n"])
    assert sorted(f.name for _, f in b.backups()) == ["audit-2026-12-04T01-02-03.500.log",
                                                      "audit-2026-12-04T01-02-03.501.log"]
    b.close()


# ------------------------------------------------------------------ flags


def test_flags_build_the_filter(tmp_path: Path) -> None:
    pf = tmp_path / "policy.yaml"
    pf.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: [{level: Metadata}]\n")
    p = argparse.ArgumentParser()
    audit.add_flags(p)
    args = p.parse_args(["--audit-policy-file", str(pf), "--audit-log-path", str(tmp_path / "a.log"),
                         "--audit-log-maxsize", "5", "--audit-log-maxbackup", "3", "--audit-log-maxage", "7",
                         "--audit-log-compress"])
    opts = audit.options_from_args(args)
    assert opts == AuditOptions(str(pf), str(tmp_path / "a.log"), 5, 3, 7, True)
    a = opts.build()
    assert a is not None and isinstance(a.writer.backend, LogBackend)
    assert isinstance(a.writer, BlockingWriter) and not a.writer.strict  # upstream's default mode
    assert a.writer.backend.max_size == 5 * 1024 * 1024 and a.writer.backend.max_backups == 3
    a.writer.backend.close()
    assert audit.options_from_args(p.parse_args([])).build() is None
    assert AuditOptions(policy_file=str(pf)).build() is None  # no backend: nothing is audited
    with pytest.raises(ValueError, match="--audit-log-maxage must be greater than or equal to 0"):
        AuditOptions(str(pf), "-", log_maxage=-1).build()
    for mode, writer, strict in (("batch", AuditWriter, None), ("blocking-strict", BlockingWriter, True)):
        b = audit.options_from_args(p.parse_args(["--audit-policy-file", str(pf), "--audit-log-path", "-",
                                                  "--audit-log-mode", mode])).build()
        assert b is not None and isinstance(b.writer, writer) and getattr(b.writer, "strict", None) is strict
    with pytest.raises(ValueError, match="invalid audit log mode fast, allowed modes are batch, blocking, "
                                         "blocking-strict"):
        AuditOptions(str(pf), "-", mode="fast").build()
    pf.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: []\n")
    with pytest.raises(PolicyError, match="no rules"):
        AuditOptions(str(pf), "-").build()


# ------------------------------------------------------------------ in the real chain, through the front door


async def test_through_the_front_door(tmp_path: Path) -> None:
    api = await start_api(tmp_path)
    a, mem = auditor(policy({"level": "None", "nonResourceURLs": ["/healthz*"]}, {"level": "Request"}))
    api.chain = chain.build([chain.with_request_info, chain.Authenticate(api, api.authenticator), a,
                             chain.Impersonate(api), chain.Authorize(api), chain.read_body], api._route)
    tokens = TokenAuth()
    tokens.add("admin-token", "admin", ("system:masters",))
    runner = await serve(api, tokens, "127.0.0.1", 0, None)
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-token"}) as s:
            async with s.post(url + "/api/v1/namespaces/default/configmaps", json=cm("web")) as r:
                assert r.status == 201
                audit_id = r.headers["Audit-Id"]
            async with s.get(url + "/api/v1/namespaces/default/configmaps/nope") as r:
                assert r.status == 404
            async with s.get(url + "/healthz") as r:
                assert r.status == 200
        await a.flush()
        by_id = [e for e in mem.events if e["auditID"] == audit_id]
        assert [e["stage"] for e in by_id] == ["RequestReceived", "ResponseComplete"]
        # The body was read after the audit filter, and it is in the event all the same.
        assert by_id[-1]["requestObject"]["metadata"]["name"] == "web"
        assert by_id[-1]["user"]["username"] == "admin"
        assert by_id[-1]["objectRef"]["name"] == "web"
        assert mem.events[-1]["responseStatus"]["code"] == 404
        assert mem.events[-1]["responseStatus"]["reason"] == "NotFound"
        assert not any(e["requestURI"] == "/healthz" for e in mem.events)
    finally:
        await runner.cleanup()
        await a.stop()
        await stop_api(api)


async def test_status_error_is_answered_not_raised() -> None:
    # The filter answers errors itself (as APIServer.handle would), so they carry the Audit-Id header.
    a, _ = auditor(policy(EVERYTHING))

    async def nope(req: Request) -> Response:
        raise StatusError(404, "NotFound", "not here")

    resp, events = await run(a, request("GET", "/api/v1/pods"), nope)
    assert resp.status == 404 and resp.headers["Audit-Id"] == events[-1]["auditID"]
    assert events[-1]["responseStatus"] == {"metadata": {}, "status": "Failure", "message": "not here",
                                            "reason": "NotFound", "code": 404}
