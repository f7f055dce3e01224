"""The request chain: each filter on its own, and the whole chain through the HTTPS front door."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from kybernetes.api.errors import StatusError
from kybernetes.apiserver import chain
from kybernetes.apiserver.authentication import TokenAuth
from kybernetes.apiserver.http import serve
from kybernetes.apiserver.request import Request, Response
from kybernetes.apiserver.requestinfo import parse
from kybernetes.apiserver.server import APIServer

from .conftest import call, cm, start_api, stop_api


class Recorder:
    """An authorizer that allows what `allow` says and remembers every question."""

    restricts_anonymous = True

    def __init__(self, allow=lambda user, attrs: True) -> None:
        self.allow = allow
        self.asked: list[tuple[str, tuple[str, ...], dict, bool]] = []

    def authorize(self, user, groups, attributes, resource):
        self.asked.append((user, groups, dict(attributes), resource))
        return (True, "") if self.allow(user, attributes) else (False, "")

    def rules_for(self, user, groups, namespace):
        return [], [], False


async def ok(req: Request) -> Response:
    return Response(200, b"{}")


# ------------------------------------------------------------------ composition


async def test_build_runs_filters_in_order() -> None:
    seen: list[str] = []

    def named(n: str):
        async def f(req: Request, rest):
            seen.append(n)
            return await rest(req)
        return f

    async def handler(req: Request) -> Response:
        seen.append("handler")
        return Response(204)

    h = chain.build([named("a"), named("b"), named("c")], handler)
    assert (await h(Request("GET", "/"))).status == 204
    assert seen == ["a", "b", "c", "handler"]


async def test_a_filter_can_answer_without_calling_on() -> None:
    async def refuse(req: Request, rest):
        raise StatusError(418, "Teapot", "no")

    with pytest.raises(StatusError):
        await chain.build([refuse], ok)(Request("GET", "/"))


async def test_request_info_filter_parses_once() -> None:
    got: list[Any] = []

    async def handler(req: Request) -> Response:
        got.append(req.info)
        return Response(200)

    await chain.build([chain.with_request_info], handler)(Request("GET", "/api/v1/namespaces/a/pods"))
    assert got[0].resource == "pods" and got[0].namespace == "a" and got[0].verb == "list"


async def test_read_body_reads_lazily_once() -> None:
    reads = []

    async def reader() -> bytes:
        reads.append(1)
        return b"data"

    req = Request("POST", "/x", read_body=reader)

    async def handler(r: Request) -> Response:
        return Response(200, r.body)

    assert (await chain.build([chain.read_body], handler)(req)).body == b"data"
    assert reads == [1] and req.read_body is None


# ------------------------------------------------------------------ forbidden messages


@pytest.mark.parametrize("method,path,query,reason,message,details", [
    ("GET", "/api/v1/namespaces/shop/pods", {}, "",
     'pods is forbidden: User "u" cannot list resource "pods" in API group "" in the namespace "shop"',
     {"kind": "pods"}),
    ("GET", "/api/v1/namespaces/shop/secrets/s1", {}, "",
     'secrets "s1" is forbidden: User "u" cannot get resource "secrets" in API group "" in the namespace "shop"',
     {"name": "s1", "kind": "secrets"}),
    ("DELETE", "/api/v1/namespaces/shop", {}, "",
     'namespaces "shop" is forbidden: User "u" cannot delete resource "namespaces" in API group "" '
     'in the namespace "shop"', {"name": "shop", "kind": "namespaces"}),
    ("GET", "/api/v1/nodes", {}, "",
     'nodes is forbidden: User "u" cannot list resource "nodes" in API group "" at the cluster scope',
     {"kind": "nodes"}),
    ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web/scale", {}, "",
     'deployments.apps "web" is forbidden: User "u" cannot patch resource "deployments/scale" in API group '
     '"apps" in the namespace "shop"', {"name": "web", "group": "apps", "kind": "deployments"}),
    ("GET", "/foo", {}, "",
     'forbidden: User "u" cannot get path "/foo"', None),
    ("GET", "/api/v1/namespaces/shop/pods", {"watch": "true"},
     'RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found',
     'pods is forbidden: User "u" cannot watch resource "pods" in API group "" in the namespace "shop": '
     'RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found', {"kind": "pods"}),
])
def test_forbidden_in_upstreams_words(method, path, query, reason, message, details) -> None:
    e = chain.forbidden("u", parse(method, path, query), reason)
    assert (e.code, e.reason, e.message) == (403, "Forbidden", message)
    body = orjson.loads(e.to_bytes())
    assert body.get("details") == details


def test_attributes() -> None:
    assert chain.attributes(parse("GET", "/healthz", {})) == {"verb": "get", "path": "/healthz"}
    assert chain.attributes(parse("POST", "/api/v1/namespaces/a/pods/p/eviction", {})) == {
        "verb": "create", "group": "", "version": "v1", "resource": "pods", "subresource": "eviction",
        "namespace": "a", "name": "p"}


# ------------------------------------------------------------------ the whole chain, in process


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[APIServer]:
    a = await start_api(tmp_path)
    yield a
    await stop_api(a)


async def test_authorizer_is_asked_with_the_parsed_request(api: APIServer) -> None:
    rec = Recorder()
    api.authorizer = rec
    code, _ = await call(api, "POST", "/api/v1/namespaces/default/configmaps", cm("a"))
    assert code == 201
    user, groups, attrs, resource = rec.asked[-1]
    assert (user, resource) == ("system:admin", True)
    assert attrs["verb"] == "create" and attrs["resource"] == "configmaps" and attrs["namespace"] == "default"


async def test_denied_request_is_403_and_changes_nothing(api: APIServer) -> None:
    api.authorizer = Recorder(lambda user, attrs: attrs.get("verb") != "create")
    code, body = await call(api, "POST", "/api/v1/namespaces/default/configmaps", cm("a"))
    assert code == 403 and body["reason"] == "Forbidden"
    assert body["message"].startswith('configmaps is forbidden: User "system:admin" cannot create')
    code, _ = await call(api, "GET", "/api/v1/namespaces/default/configmaps/a")
    assert code == 404


async def test_strict_paths_in_process(api: APIServer) -> None:
    await call(api, "POST", "/api/v1/namespaces/kube-system/secrets", {"metadata": {"name": "s"}})
    for path, code in (("/api/v1/namespaces/kube-system%2Fsecrets", 400), ("/api/v1/namespaces//secrets", 404),
                       ("/api/v1/namespaces/../secrets", 400), ("/api/v1/namespaces/%2e%2e/secrets", 400),
                       ("/api/v1/namespaces/%00/secrets", 400), ("/healthz/../api/v1/secrets", 400)):
        got, body = await call(api, "GET", path)
        assert got == code, (path, body)
        assert body["kind"] == "Status"


async def test_cluster_scoped_kind_under_a_namespace_is_404(api: APIServer) -> None:
    assert (await call(api, "GET", "/api/v1/namespaces/default/nodes"))[0] == 404
    assert (await call(api, "GET", "/api/v1/namespaces/default/namespaces"))[0] == 404
    assert (await call(api, "GET", "/api/v1/namespaces/default"))[0] == 200
    assert (await call(api, "GET", "/api/v1/namespaces/default/status"))[0] == 200


# ------------------------------------------------------------------ through the front door


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[tuple[APIServer, str, TokenAuth]]:
    a = await start_api(tmp_path)
    tokens = TokenAuth()
    tokens.add("admin-token", "alice", ("system:masters",))
    tokens.add("user-token", "bob", ("devs",))
    runner = await serve(a, tokens, "127.0.0.1", 0, None)
    try:
        yield a, f"http://127.0.0.1:{runner.addresses[0][1]}", tokens
    finally:
        await runner.cleanup()
        await stop_api(a)


async def _send(method: str, url: str, raw_path: str, token: str | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.request(method, URL(url + raw_path, encoded=True),
                                                       headers=h, data=body) as r:
        text = await r.read()
        return r.status, (orjson.loads(text) if text[:1] == b"{" else text)


async def test_front_door_strict_paths(front) -> None:
    api, url, _ = front
    await call(api, "POST", "/api/v1/namespaces/kube-system/secrets", {"metadata": {"name": "s"}})
    code, body = await _send("GET", url, "/api/v1/namespaces/kube-system%2Fsecrets", "admin-token")
    assert code == 400 and body["kind"] == "Status"
    code, _ = await _send("GET", url, "/api/v1/namespaces//secrets", "admin-token")
    assert code == 404
    code, _ = await _send("GET", url, "/api/v1/namespaces/%2e%2e/secrets", "admin-token")
    assert code == 400
    code, body = await _send("GET", url, "/api/v1/namespaces/kube-system/secrets", "admin-token")
    assert code == 200 and [i["metadata"]["name"] for i in body["items"]] == ["s"]


async def test_front_door_authentication(front) -> None:
    api, url, _ = front
    assert (await _send("GET", url, "/version"))[0] == 200  # anonymous, public
    code, body = await _send("GET", url, "/api/v1/pods")  # anonymous, not public, no authorizer
    assert code == 401 and body["reason"] == "Unauthorized"
    assert (await _send("GET", url, "/api/v1/pods", "wrong-token"))[0] == 401
    assert (await _send("GET", url, "/version", "wrong-token"))[0] == 401  # a bad token is never anonymous
    assert (await _send("GET", url, "/api/v1/pods", "user-token"))[0] == 200


async def test_front_door_authorizes_the_identity_and_reads_no_body_when_denied(front) -> None:
    api, url, _ = front
    rec = Recorder(lambda user, attrs: user != "bob" or attrs.get("verb") in ("get", "list"))
    api.authorizer = rec
    big = orjson.dumps(cm("big", {"k": "v" * 100_000}))
    code, body = await _send("POST", url, "/api/v1/namespaces/default/configmaps", "user-token", big,
                             {"Content-Type": "application/json"})
    assert code == 403
    assert body["message"] == ('configmaps is forbidden: User "bob" cannot create resource "configmaps" in API '
                               'group "" in the namespace "default"')
    assert rec.asked[-1][:2] == ("bob", ("devs", "system:authenticated"))
    code, _ = await _send("POST", url, "/api/v1/namespaces/default/configmaps", "admin-token", big,
                          {"Content-Type": "application/json"})
    assert code == 201
    # With an authorizer that judges anonymous requests, they are asked about, not refused outright.
    code, body = await _send("GET", url, "/api/v1/namespaces/default/configmaps")
    assert code == 200 and rec.asked[-1][0] == "system:anonymous"


async def test_front_door_impersonation(front) -> None:
    api, url, _ = front
    rec = Recorder(lambda user, attrs: user != "bob" or attrs.get("verb") != "impersonate")
    api.authorizer = rec
    code, body = await _send("GET", url, "/api/v1/namespaces/default/configmaps", "admin-token",
                             headers={"Impersonate-User": "carol", "Impersonate-Group": "qa"})
    assert code == 200
    assert rec.asked[-1][:2] == ("carol", ("qa", "system:authenticated"))
    code, body = await _send("GET", url, "/api/v1/namespaces/default/configmaps", "user-token",
                             headers={"Impersonate-User": "carol"})
    assert code == 403 and 'cannot impersonate resource "users"' in body["message"]


async def test_upgrade_is_authorized_before_the_connection_is_taken_over(front) -> None:
    api, url, _ = front
    api.authorizer = Recorder(lambda user, attrs: attrs.get("subresource") != "exec")
    code, body = await _send("POST", url, "/api/v1/namespaces/default/pods/p/exec?command=ls", "user-token",
                             headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert code == 403 and 'cannot create resource "pods/exec"' in body["message"]
