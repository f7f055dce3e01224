"""The kubelet's service account tokens in projected volumes (issued, renewed, failing), and gRPC probes
against a real grpc.health.v1 server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from kybernetes.apiserver.server import APIServer
from kybernetes.apiserver.serviceaccounts import b64url_decode
from kybernetes.client import Client
from kybernetes.api.errors import StatusError
from kybernetes.api.times import format_time
from kybernetes.kubelet.probes import FAILURE, SUCCESS, run_check
from kybernetes.kubelet.tokens import TokenManager

from .conftest import eventually, pod
from .test_fake import cond, events_for, status_of

grpc = pytest.importorskip("grpc")
health = pytest.importorskip("grpc_health.v1.health")
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

API_ACCESS = {"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                 "fieldPath": "metadata.namespace"}}]}}]}}


def claims(token: str) -> dict:
    return orjson.loads(b64url_decode(token.split(".")[1]))


async def _setup_account(client: Client) -> None:
    await client.resource("v1", "serviceaccounts").create(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}, "default")
    await client.resource("v1", "configmaps").create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"},
         "data": {"ca.crt": "CA-1"}}, "default")


def _volume_dir(k, uid: str) -> Path:
    return Path(k.config.root_dir) / "pods" / uid / "volumes" / "kubernetes.io~projected" / "kube-api-access-abcde"


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


async def test_token_volume_issued_and_renewed(api: APIServer, client: Client, make_kubelet) -> None:
    await _setup_account(client)
    k = await make_kubelet()
    created = await client.resource("v1", "pods").create(pod("tok", [{"name": "c", "image": "nginx"}],
                                                             volumes=[API_ACCESS]))
    uid = created["metadata"]["uid"]
    vol = _volume_dir(k, uid)
    first = await eventually(lambda: _read(vol / "token"), 5, "token file written")
    c = claims(first)
    assert c["sub"] == "system:serviceaccount:default:default"
    assert c["kubernetes.io"]["pod"] == {"name": "tok", "uid": uid}
    assert c["exp"] - c["iat"] == 3607
    assert _read(vol / "ca.crt") == "CA-1" and _read(vol / "namespace") == "default"
    assert oct((vol / "token").stat().st_mode & 0o777) == oct(0o644)
    # The API server takes it as a bearer token.
    assert await api.service_accounts.authenticate(first) == (
        "system:serviceaccount:default:default",
        ("system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"))
    # Reused on every volume sync while it is young ...
    await asyncio.sleep(0.3)
    assert _read(vol / "token") == first
    # ... renewed once 80% of its lifetime has passed (a clock ~50 minutes ahead).
    k.tokens.clock = lambda: time.time() + 0.85 * 3607
    renewed = await eventually(lambda: (t := _read(vol / "token")) != first and t, 5, "token renewed")
    assert claims(renewed)["jti"] != c["jti"]
    # The CA is kept in sync like any configMap source.
    await client.resource("v1", "configmaps").patch("kube-root-ca.crt", {"data": {"ca.crt": "CA-2"}},
                                                    namespace="default")
    await eventually(lambda: _read(vol / "ca.crt") == "CA-2", 5, "ca.crt updated")
    await client.resource("v1", "pods").delete("tok", "default", grace_period_seconds=0)
    await eventually(lambda: not any(key[0] == uid for key in k.tokens._cache), 5, "tokens forgotten")


async def test_token_failure_is_failed_mount(client: Client, make_kubelet) -> None:
    await _setup_account(client)
    await make_kubelet()
    await client.resource("v1", "pods").create(pod("ghost", [{"name": "c", "image": "nginx"}],
                                                   serviceAccountName="ghost", volumes=[API_ACCESS]))

    async def failed_mount() -> bool:
        return any(e["reason"] == "FailedMount" and 'serviceaccount "ghost"' in e["message"]
                   for e in await events_for(client, "ghost"))

    await eventually(failed_mount, 5, "FailedMount event")
    assert (await status_of(client, "ghost")).get("phase") == "Pending"


async def test_token_manager_renewal_and_fallback() -> None:
    now = [1_000_000.0]
    answers: list[object] = []
    asked: list[tuple[str, str, dict]] = []

    async def request(ns: str, sa: str, body: dict) -> dict:
        asked.append((ns, sa, body))
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return {"status": {"token": a, "expirationTimestamp": format_time(now[0] + 1000)}}

    tm = TokenManager(request, clock=lambda: now[0])
    p = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": {"serviceAccountName": "sa"}}
    src = {"expirationSeconds": 1000, "audience": "vault"}
    answers.append("t1")
    assert await tm.get(p, src) == "t1"
    ns, sa, body = asked[0]
    assert (ns, sa) == ("ns", "sa") and body["spec"]["audiences"] == ["vault"]
    assert body["spec"]["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u1"}
    now[0] += 500  # half its life: reused
    assert await tm.get(p, src) == "t1" and len(asked) == 1
    now[0] += 350  # 85%: renewed; a failed renewal keeps the still-valid token
    answers.append(StatusError(500, "InternalError", "boom"))
    assert await tm.get(p, src) == "t1" and len(asked) == 2
    answers.append("t2")
    assert await tm.get(p, src) == "t2"
    now[0] += 5000  # long expired, and renewal fails: no token at all
    answers.append(StatusError(404, "NotFound", "gone"))
    with pytest.raises(StatusError):
        await tm.get(p, src)
    tm.forget("u1")
    assert not tm._cache


# --------------------------------------------------------------------- gRPC probes


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[int, object]]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", SERVING)
    await servicer.set("db", NOT_SERVING)
    try:
        yield port, servicer
    finally:
        await server.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _check(port: int, service: str | None = None, timeout: float = 1.0) -> tuple[str, str]:
    action = {"grpc": {"port": port, **({"service": service} if service is not None else {})}}
    return await run_check(action, runtime=None, container_id="", container={}, pod_ip="127.0.0.1",
                           timeout=timeout)


async def test_grpc_check_results(health_server) -> None:
    port, servicer = health_server
    assert await _check(port) == (SUCCESS, "")
    result, msg = await _check(port, "db")
    assert result == FAILURE and "NOT_SERVING" in msg
    result, msg = await _check(port, "nope")  # unknown service: NOT_FOUND from the server
    assert result == FAILURE and "NOT_FOUND" in msg
    await servicer.set("db", SERVING)
    assert (await _check(port, "db"))[0] == SUCCESS
    result, msg = await _check(_free_port())
    assert result == FAILURE and msg


async def test_grpc_check_times_out() -> None:
    # Accepts connections and never speaks HTTP/2: the probe must give up after its timeout.
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        result, msg = await _check(port, timeout=0.5)
        took = time.monotonic() - t0
        assert result == FAILURE and took < 3, (msg, took)
    finally:
        srv.close()


async def test_grpc_readiness_probe(client: Client, make_kubelet, health_server) -> None:
    port, servicer = health_server
    await make_kubelet()
    probe = {"grpc": {"port": port}, "periodSeconds": 1, "failureThreshold": 1}
    await client.resource("v1", "pods").create(pod("g", [{"name": "c", "image": "nginx",
                                                          "readinessProbe": probe}]))

    async def ready(want: str) -> bool:
        return cond(await status_of(client, "g"), "Ready") == want

    await eventually(lambda: ready("True"), 5, "ready via SERVING")
    await servicer.set("", NOT_SERVING)
    await eventually(lambda: ready("False"), 5, "not ready via NOT_SERVING")
