"""The ingress controller end to end: a real API server, Ingresses and Secrets written through it,
backends on loopback, requests through the controller's listeners."""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp

from kybernetes.ingress import IngressController
from tests.apiserver.conftest import eventually
from tests.ingress.conftest import NODE_IPS, Env, RawConn, cert_for, ingress, path, rule, tls_secret


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


async def test_default_class_is_created_and_status_lists_the_node_addresses(env: Env) -> None:
    classes = env.client.resource("networking.k8s.io/v1", "ingressclasses", False)
    cls = await classes.get("kybernetes")
    assert cls["spec"]["controller"] == "kybernetes.io/ingress"
    assert cls["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true"
    b = await env.backend("one")
    await env.service("web", [b])
    await env.apply(ingress("plain", [rule(None, path("/", "web"))]))
    ings = env.client.resource("networking.k8s.io/v1", "ingresses")

    async def status() -> object:
        got = await ings.get("plain", "default")
        return ((got.get("status") or {}).get("loadBalancer") or {}).get("ingress")

    assert await eventually(status, 5) == [{"ip": ip} for ip in NODE_IPS]
    await env.until("anything", "/", 200, "one")


async def test_only_ingresses_of_our_class_or_none_are_served(env: Env) -> None:
    await env.apply({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "nginx"},
                     "spec": {"controller": "k8s.io/ingress-nginx"}})
    b, other = await env.backend("ours"), await env.backend("theirs")
    await env.service("ours", [b])
    await env.service("theirs", [other])
    await env.apply(ingress("theirs", [rule("theirs.example", path("/", "theirs"))], class_name="nginx"))
    await env.apply(ingress("explicit", [rule("ours.example", path("/", "ours"))], class_name="kybernetes"))
    await env.apply(ingress("classless", [rule("classless.example", path("/", "ours"))]))
    await env.until("ours.example", "/", 200, "ours")
    await env.until("classless.example", "/", 200, "ours")
    await env.settled()
    assert (await env.get("theirs.example", "/"))[0] == 404
    ings = env.client.resource("networking.k8s.io/v1", "ingresses")
    got = await ings.get("theirs", "default")
    assert not (got.get("status") or {}).get("loadBalancer", {}).get("ingress")

    async def lb(name: str) -> object:
        return ((await ings.get(name, "default")).get("status") or {}).get("loadBalancer", {}).get("ingress")

    # Moved to the other class: it is no longer served and loses the addresses we wrote.
    assert await eventually(lambda: lb("explicit"), 5)
    moved = ingress("explicit", [rule("ours.example", path("/", "ours"))], class_name="nginx")
    await env.apply(moved)
    await env.until("ours.example", "/", 404)
    await eventually(lambda: _none(lb("explicit")), 5, "the status to be cleared")


async def _none(coro: object) -> bool:
    return not await coro  # type: ignore[misc]


async def test_docs_simple_fanout(env: Env) -> None:
    s1, s2 = await env.backend("service1"), await env.backend("service2")
    await env.service("service1", [s1], port=4200)
    await env.service("service2", [s2], port=8080)
    await env.apply(ingress("simple-fanout-example", [rule(
        "foo.bar.com", path("/foo", "service1", 4200), path("/bar", "service2", 8080))]))
    await env.until("foo.bar.com", "/foo", 200, "service1")
    assert (await env.get("foo.bar.com", "/foo/x?q=1"))[1]["path"] == "/foo/x?q=1"
    assert (await env.get("foo.bar.com", "/bar"))[1]["backend"] == "service2"
    assert (await env.get("foo.bar.com", "/foobar"))[0] == 404
    assert (await env.get("other.host", "/foo"))[0] == 404


async def test_docs_name_based_virtual_hosting(env: Env) -> None:
    s1, s2, s3 = await env.backend("service1"), await env.backend("service2"), await env.backend("service3")
    for name, b in (("service1", s1), ("service2", s2), ("service3", s3)):
        await env.service(name, [b])
    await env.apply(ingress("name-virtual-host-ingress-no-third-host", [
        rule("first.bar.com", path("/", "service1")),
        rule("second.bar.com", path("/", "service2")),
        rule(None, path("/", "service3"))]))
    await env.until("first.bar.com", "/", 200, "service1")
    assert (await env.get("second.bar.com", "/a"))[1]["backend"] == "service2"
    assert (await env.get("third.bar.com", "/a"))[1]["backend"] == "service3"
    await env.apply(ingress("wild", [rule("*.foo.com", path("/", "service1"))]))
    await env.until("bar.foo.com", "/", 200, "service1")
    assert (await env.get("baz.bar.foo.com", "/"))[1]["backend"] == "service3"   # not the wildcard's


async def test_default_backend_and_404(env: Env) -> None:
    d, api = await env.backend("default"), await env.backend("api")
    await env.service("default-svc", [d])
    await env.service("api", [api])
    await env.apply(ingress("apis", [rule("api.example", path("/v1", "api", "http", "Exact"))]))
    await env.until("api.example", "/v1", 200, "api")
    assert (await env.get("api.example", "/v1/x"))[0] == 404
    await env.apply(ingress("catch-all", default="default-svc"))
    await env.until("api.example", "/v1/x", 200, "default")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, body, _ = await env.get("some-host", "/resource", method=method)
        assert (status, body["backend"], body["method"]) == (200, "default", method)


async def test_tls_by_sni_and_the_default_certificate(env: Env) -> None:
    b = await env.backend("secure")
    await env.service("secure", [b])
    foo, wild = cert_for("foo.bar.com"), cert_for("*.wild.io")
    await env.apply(tls_secret("foo-tls", foo))
    await env.apply(tls_secret("wild-tls", wild))
    await env.apply(ingress("tls", [rule("foo.bar.com", path("/", "secure")), rule("*.wild.io", path("/", "secure"))],
                            tls=[{"hosts": ["foo.bar.com"], "secretName": "foo-tls"},
                                 {"hosts": ["*.wild.io"], "secretName": "wild-tls"}]))
    await env.until("foo.bar.com", "/", 200, "secure", tls=True)

    async def shown(sni: str | None, host: str) -> tuple[bytes, int, bytes]:
        c = await RawConn.open(env.https_port, sni=sni, tls=True)
        try:
            status, _, body = await c.request(host, "/")
            return c.peer_cert, status, body
        finally:
            await c.close()

    async def foo_served() -> bool:
        return (await shown("foo.bar.com", "foo.bar.com"))[0] == _der(foo[0])

    await eventually(foo_served, 5, "the foo.bar.com certificate")
    cert, status, body = await shown("foo.bar.com", "foo.bar.com")
    assert status == 200 and json.loads(body)["headers"]["X-Forwarded-Proto"] == "https"
    assert (await shown("a.wild.io", "a.wild.io"))[0] == _der(wild[0])
    # Anything else, and no SNI at all: the generated default certificate.
    for sni in ("unknown.example", "x.a.wild.io", None):
        cert, _, _ = await shown(sni, "foo.bar.com")
        assert cert not in (_der(foo[0]), _der(wild[0]))
        assert b"Kybernetes Ingress Controller Fake Certificate" in cert
    # A secret that is not kubernetes.io/tls is not used.
    await env.apply(ingress("bad-tls", [rule("bad.example", path("/", "secure"))],
                            tls=[{"hosts": ["bad.example"], "secretName": "missing"}]))
    await env.until("bad.example", "/", 200, "secure", tls=True)
    assert b"Fake Certificate" in (await shown("bad.example", "bad.example"))[0]


async def test_ssl_redirect_by_annotation(env: Env) -> None:
    b = await env.backend("web")
    await env.service("web", [b])
    await env.apply(ingress("plain", [rule("plain.example", path("/", "web"))]))
    await env.apply(ingress("secure", [rule("secure.example", path("/", "web"))],
                            annotations={"ingress.kubernetes.io/ssl-redirect": "true"}))
    await env.apply(ingress("nginx", [rule("nginx.example", path("/", "web"))],
                            annotations={"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}))
    await env.until("plain.example", "/", 200, "web")
    await env.until("secure.example", "/a/b?c=d", 308)
    status, _, headers = await env.get("secure.example:8080", "/a/b?c=d")
    assert status == 308
    assert headers["Location"] == f"https://secure.example:{env.https_port}/a/b?c=d"
    await env.until("nginx.example", "/", 308)
    # Over TLS the same Ingress is served.
    await env.until("secure.example", "/a", 200, "web", tls=True)


async def test_websocket_through_the_ingress(env: Env) -> None:
    b = await env.backend("ws")
    await env.service("ws", [b])
    await env.apply(ingress("ws", [rule("ws.example", path("/", "ws"))]))
    await env.until("ws.example", "/", 200, "ws")
    assert env.session is not None
    for tls in (False, True):
        async with env.session.ws_connect(env.url("/ws", tls=tls).replace("http", "ws", 1),
                                          headers={"Host": "ws.example"}, ssl=False if tls else True) as ws:
            for i in range(3):
                await ws.send_str(f"hello {i}")
                assert (await ws.receive(timeout=5)).data == f"ws:hello {i}"
            await ws.send_bytes(b"\x00\x01" * 50000)
            assert (await ws.receive(timeout=5)).data == b"\x00\x01" * 50000


async def test_bodies_stream_both_ways(env: Env) -> None:
    b = await env.backend("stream")
    await env.service("stream", [b])
    await env.apply(ingress("stream", [rule("stream.example", path("/", "stream"))]))
    await env.until("stream.example", "/", 200, "stream")
    assert env.session is not None
    # Response: the first chunk arrives while the backend still holds the second back.
    async with env.session.get(env.url("/stream"), headers={"Host": "stream.example"}) as r:
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await asyncio.wait_for(r.content.readline(), 5) == b"first\n"
        b.stream_gate.set()
        assert await asyncio.wait_for(r.content.read(), 5) == b"second\n"
    # Request: the backend gets the first bytes while the client still holds the rest back.
    gate = asyncio.Event()

    async def body():  # type: ignore[no-untyped-def]
        yield b"x" * 1000
        await gate.wait()
        for _ in range(20):
            yield b"y" * 100_000

    task = asyncio.ensure_future(env.session.post(env.url("/upload"), data=body(),
                                                  headers={"Host": "stream.example"}))
    await asyncio.wait_for(b.upload_first.wait(), 5)
    gate.set()
    async with await task as r:
        assert (await r.json())["received"] == 1000 + 2_000_000
    # A big Content-Length body both ways.
    big = b"z" * 3_000_000
    status, got, _ = await env.get("stream.example", "/echo", method="POST", data=big)
    assert status == 200 and got["body"] == len(big)


async def test_forwarded_headers(env: Env) -> None:
    b = await env.backend("fwd")
    await env.service("fwd", [b])
    await env.apply(ingress("fwd", [rule("fwd.example", path("/", "fwd"))]))
    await env.until("fwd.example", "/", 200, "fwd")
    _, body, _ = await env.get("fwd.example:81", "/", headers={"X-Forwarded-For": "203.0.113.9",
                                                               "X-Real-IP": "6.6.6.6", "X-Forwarded-Proto": "gopher",
                                                               "Connection": "keep-alive, X-Drop-Me",
                                                               "X-Drop-Me": "1", "X-Keep": "2"})
    h = body["headers"]
    assert h["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert h["X-Real-IP"] == "127.0.0.1"
    assert h["X-Forwarded-Proto"] == "http"
    assert h["X-Forwarded-Host"] == "fwd.example:81"
    assert h["X-Forwarded-Port"] == str(env.http_port)
    assert h["Host"] == "fwd.example:81"
    assert "X-Drop-Me" not in h and h["X-Keep"] == "2"


async def test_upstream_errors(env: Env) -> None:
    slow = await env.backend("slow")
    gone = await env.backend("gone")
    await env.service("slow", [slow])
    await env.service("gone", [gone])
    await env.service("empty", [])
    await env.service("unready", [slow], ready=[False])
    await gone.stop()   # its port now refuses connections
    await env.apply(ingress("errors", [rule("err.example", path("/gone", "gone"), path("/empty", "empty"),
                                            path("/unready", "unready"), path("/missing", "nosuchservice"),
                                            path("/badport", "slow", 81))]))
    await env.apply(ingress("timeouts", [rule("slow.example", path("/", "slow"))],
                            annotations={"nginx.ingress.kubernetes.io/proxy-read-timeout": "0.3"}))
    await env.until("slow.example", "/fast", 200, "slow")
    assert (await env.get("err.example", "/gone"))[0] == 502
    for p in ("/empty", "/unready", "/missing", "/badport"):
        assert (await env.get("err.example", p))[0] == 503, p
    loop = asyncio.get_running_loop()
    t = loop.time()
    assert (await env.get("slow.example", "/slow"))[0] == 504
    assert 0.25 < loop.time() - t < 3


async def test_load_balancing_and_an_unready_endpoint_stops_receiving(env: Env) -> None:
    a, b = await env.backend("a", "127.0.0.2"), await env.backend("b", "127.0.0.3")
    await env.service("lb", [a, b])
    await env.apply(ingress("lb", [rule("lb.example", path("/", "lb"))]))
    await env.until("lb.example", "/", 200)
    seen = [(await env.get("lb.example", "/"))[1]["backend"] for _ in range(10)]
    assert seen.count("a") == seen.count("b") == 5          # round robin
    assert (await env.get("lb.example", "/"))[1]["headers"]["X-Real-IP"] == "127.0.0.1"
    await env.set_endpoints("lb", [a, b], ready=[True, False])
    await env.settled()
    hits = b.hits
    assert {(await env.get("lb.example", "/"))[1]["backend"] for _ in range(8)} == {"a"}
    assert b.hits == hits
    await env.set_endpoints("lb", [a, b], ready=[False, False])
    await env.settled()
    assert (await env.get("lb.example", "/"))[0] == 503
    await env.set_endpoints("lb", [a, b])
    await env.settled()
    assert {(await env.get("lb.example", "/"))[1]["backend"] for _ in range(4)} == {"a", "b"}


async def test_keep_alive_to_clients_and_backends(env: Env) -> None:
    b = await env.backend("ka")
    await env.service("ka", [b])
    await env.apply(ingress("ka", [rule("ka.example", path("/", "ka"))]))
    await env.until("ka.example", "/", 200, "ka")
    opened = env.ctrl.proxy.pool.opened
    c = await RawConn.open(env.http_port)
    try:
        for i in range(20):
            status, _, body = await c.request("ka.example", f"/{i}")
            assert status == 200 and json.loads(body)["path"] == f"/{i}"
    finally:
        await c.close()
    assert env.ctrl.proxy.pool.opened - opened <= 1


async def test_certificate_rotation_keeps_open_connections(env: Env) -> None:
    b = await env.backend("rot")
    await env.service("rot", [b])
    old, new = cert_for("rot.example"), cert_for("rot.example")
    await env.apply(tls_secret("rot-tls", old))
    await env.apply(ingress("rot", [rule("rot.example", path("/", "rot"))],
                            tls=[{"hosts": ["rot.example"], "secretName": "rot-tls"}]))

    async def cert_now() -> bytes:
        c = await RawConn.open(env.https_port, sni="rot.example")
        try:
            await c.request("rot.example", "/")
            return c.peer_cert
        finally:
            await c.close()

    await eventually(lambda: _is(cert_now(), _der(old[0])), 5, "the first certificate")
    kept = await RawConn.open(env.https_port, sni="rot.example")
    try:
        assert (await kept.request("rot.example", "/"))[0] == 200
        await env.apply(tls_secret("rot-tls", new))
        await eventually(lambda: _is(cert_now(), _der(new[0])), 5, "the rotated certificate")
        # The connection opened before the rotation goes on, with the certificate it was shown.
        for _ in range(3):
            assert (await kept.request("rot.example", "/"))[0] == 200
        assert kept.peer_cert == _der(old[0])
    finally:
        await kept.close()


async def _is(coro: object, want: bytes) -> bool:
    return await coro == want  # type: ignore[misc]


async def test_routes_follow_ingress_changes_without_dropping_connections(env: Env) -> None:
    v1, v2 = await env.backend("v1"), await env.backend("v2")
    await env.service("v1", [v1])
    await env.service("v2", [v2])
    await env.apply(ingress("app", [rule("app.example", path("/", "v1"))]))
    await env.until("app.example", "/", 200, "v1")
    c = await RawConn.open(env.http_port)
    try:
        assert json.loads((await c.request("app.example", "/"))[2])["backend"] == "v1"
        await env.apply(ingress("app", [rule("app.example", path("/", "v2"))]))
        await env.settled()
        assert json.loads((await c.request("app.example", "/"))[2])["backend"] == "v2"
        await env.delete("Ingress", "app")
        await env.settled()
        assert (await c.request("app.example", "/"))[0] == 404
    finally:
        await c.close()


async def test_http_client_library_over_tls_verifies_the_secret_certificate(env: Env) -> None:
    b = await env.backend("verified")
    await env.service("verified", [b])
    pair = cert_for("verified.example")
    await env.apply(tls_secret("v-tls", pair))
    await env.apply(ingress("v", [rule("verified.example", path("/", "verified"))],
                            tls=[{"hosts": ["verified.example"], "secretName": "v-tls"}]))
    ctx = ssl.create_default_context(cadata=pair[0].decode())
    ctx.check_hostname = True
    assert env.session is not None

    async def ok() -> bool:
        try:
            async with env.session.get(env.url("/", tls=True), headers={"Host": "verified.example"},  # type: ignore[union-attr]
                                       ssl=ctx, server_hostname="verified.example") as r:
                return r.status == 200
        except aiohttp.ClientConnectorCertificateError:
            return False

    assert await eventually(ok, 5, "a verified TLS request")


async def test_several_nodes_share_one_status_and_a_stopped_node_drops_out(env: Env) -> None:
    b = await env.backend("multi")
    await env.service("multi", [b])
    await env.apply(ingress("multi", [rule("multi.example", path("/", "multi"))]))
    ings = env.client.resource("networking.k8s.io/v1", "ingresses")

    async def status() -> object:
        got = await ings.get("multi", "default")
        return ((got.get("status") or {}).get("loadBalancer") or {}).get("ingress")

    other = IngressController(env.client, "node0", ["10.0.0.9"], 0, None, bind="127.0.0.1")
    await other.start()
    try:
        both = [{"ip": "10.0.0.9"}] + [{"ip": ip} for ip in NODE_IPS]    # node0 sorts before node1
        await eventually(lambda: _equal(status(), both), 5, "both nodes' addresses")
        # It serves as well, from its own port.
        c = await RawConn.open(other.http_ports[0])
        try:
            assert json.loads((await c.request("multi.example", "/"))[2])["backend"] == "multi"
        finally:
            await c.close()
    finally:
        await other.stop()
    await eventually(lambda: _equal(status(), [{"ip": ip} for ip in NODE_IPS]), 5, "node0's addresses gone")


async def _equal(coro: object, want: object) -> bool:
    return await coro == want  # type: ignore[misc]
