"""HTTPTransport over a real local aiohttp server: TLS client certs, tokens, kubeconfig, streaming."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kybernetes.api.errors import StatusError
from kybernetes.client import Client, HTTPTransport, InProcessTransport, TransportError

from .fakeapi import FakeAPI
from .httpserver import HandlerServer


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          *, ca: bool = False, ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("apiserver", server_key, "test-ca", ca_key, ip="127.0.0.1")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("alice", client_key, "test-ca", ca_key)
    files = {"ca.pem": _pem(ca), "server.pem": _pem(server), "server-key.pem": _key_pem(server_key),
             "client.pem": _pem(client), "client-key.pem": _key_pem(client_key)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {"dir": d, "ca": files["ca.pem"], "cert": files["client.pem"], "key": files["client-key.pem"]}


@pytest.fixture
async def tls_server(pki: dict, fake: FakeAPI) -> AsyncIterator[str]:
    d = pki["dir"]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "server.pem", d / "server-key.pem")
    ctx.load_verify_locations(d / "ca.pem")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    server = HandlerServer(fake, ctx)
    yield await server.start()
    await server.stop()


@pytest.fixture
async def plain_server(fake: FakeAPI) -> AsyncIterator[str]:
    server = HandlerServer(fake)
    yield await server.start()
    await server.stop()


async def test_tls_with_client_certificate_from_data(tls_server: str, pki: dict, fake: FakeAPI) -> None:
    async with Client(HTTPTransport(tls_server, ca_data=pki["ca"], cert_data=pki["cert"],
                                    key_data=pki["key"])) as c:
        await c.resource("v1", "configmaps").list()
    assert fake.requests[-1].user == "alice"


async def test_tls_with_files_and_watch(tls_server: str, pki: dict, fake: FakeAPI) -> None:
    d = pki["dir"]
    transport = HTTPTransport(tls_server, ca_file=str(d / "ca.pem"), cert_file=str(d / "client.pem"),
                              key_file=str(d / "client-key.pem"))
    async with Client(transport) as c:
        cms = c.resource("v1", "configmaps")
        await cms.create({"metadata": {"name": "a"}}, "ns")
        async with cms.watch("ns", resource_version="0") as w:
            etype, obj = await w.__anext__()
        assert (etype, obj["metadata"]["name"]) == ("ADDED", "a")
    assert {r.user for r in fake.requests} == {"alice"}


async def test_tls_rejects_unknown_server_ca(tls_server: str) -> None:
    async with Client(HTTPTransport(tls_server)) as c:  # system trust store only
        with pytest.raises(TransportError):
            await c.resource("v1", "configmaps").list()
    async with Client(HTTPTransport(tls_server, insecure=True)) as c:
        await c.resource("v1", "configmaps").list()


async def test_bearer_token_and_token_file(plain_server: str, fake: FakeAPI, tmp_path: Path) -> None:
    async with Client(HTTPTransport(plain_server, token="s3cret")) as c:
        await c.resource("v1", "pods").list()
    assert fake.requests[-1].headers["authorization"] == "Bearer s3cret"
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    async with Client(HTTPTransport(plain_server, token_file=str(token_file))) as c:
        await c.resource("v1", "pods").list()
        assert fake.requests[-1].headers["authorization"] == "Bearer first"
        token_file.write_text("rotated\n")
        await c.resource("v1", "pods").list()
        assert fake.requests[-1].headers["authorization"] == "Bearer rotated"


async def test_kubeconfig_with_embedded_data(tls_server: str, pki: dict, fake: FakeAPI, tmp_path: Path) -> None:
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "main",
        "clusters": [{"name": "c", "cluster": {"server": tls_server, "certificate-authority-data": b64(pki["ca"])}}],
        "users": [{"name": "u", "user": {"client-certificate-data": b64(pki["cert"]),
                                         "client-key-data": b64(pki["key"])}},
                  {"name": "t", "user": {"token": "tok"}}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u", "namespace": "team"}},
                     {"name": "tokened", "context": {"cluster": "c", "user": "t"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    async with Client.from_kubeconfig(str(path)) as c:
        assert c.namespace == "team"
        await c.resource("v1", "configmaps").create({"metadata": {"name": "x"}})
    assert fake.requests[-1].path == "/api/v1/namespaces/team/configmaps"
    assert fake.requests[-1].user == "alice"
    async with Client.from_kubeconfig(str(path), context="tokened") as c:
        assert c.namespace == "default"
        await c.resource("v1", "configmaps").list()
    assert fake.requests[-1].headers["authorization"] == "Bearer tok"
    with pytest.raises(ValueError):
        HTTPTransport.from_kubeconfig(path, context="missing")


async def test_kubeconfig_with_relative_file_paths(tls_server: str, pki: dict, fake: FakeAPI) -> None:
    d = pki["dir"]
    config = {
        "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": tls_server, "certificate-authority": "ca.pem"}}],
        "users": [{"name": "u", "user": {"client-certificate": "client.pem", "client-key": "client-key.pem"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }
    (d / "kubeconfig").write_text(yaml.safe_dump(config))
    async with Client.from_kubeconfig(str(d / "kubeconfig")) as c:
        await c.resource("v1", "configmaps").list()
    assert fake.requests[-1].user == "alice"


async def test_large_watch_events_cross_chunk_boundaries(plain_server: str) -> None:
    async with Client(HTTPTransport(plain_server)) as c:
        cms = c.resource("v1", "configmaps")
        big = "x" * 700_000  # far beyond aiohttp's readline limit
        await cms.create({"metadata": {"name": "big"}, "data": {"v": big}}, "ns")
        await cms.create({"metadata": {"name": "small"}}, "ns")
        names = []
        async with cms.watch("ns", resource_version="0") as w:
            async for _, obj in w:
                names.append(obj["metadata"]["name"])
                if obj["metadata"]["name"] == "big":
                    assert obj["data"]["v"] == big
                if len(names) == 2:
                    break
        assert names == ["big", "small"]


async def test_connection_refused_is_a_transport_error() -> None:
    async with Client(HTTPTransport("http://127.0.0.1:1", timeout=5)) as c:
        with pytest.raises(TransportError):
            await c.resource("v1", "pods").list()
        with pytest.raises(TransportError):
            async for _ in c.resource("v1", "pods").watch():
                pass
        with pytest.raises(ConnectionError):  # TransportError is a ConnectionError
            await c.resource("v1", "pods").get("x")


async def test_watch_error_status_over_http(plain_server: str, fake: FakeAPI) -> None:
    fake.fail_next.append(StatusError(403, "Forbidden", 'pods is forbidden: User "x" cannot watch'))
    async with Client(HTTPTransport(plain_server)) as c:
        with pytest.raises(StatusError) as err:
            async for _ in c.resource("v1", "pods").watch():
                pass
    assert (err.value.code, err.value.reason) == (403, "Forbidden")


async def test_in_process_transport_passes_identity_and_lowercases_headers(fake: FakeAPI) -> None:
    t = InProcessTransport(fake, user="system:node:n1", groups=("system:nodes",))
    status, headers, body = await t.request("GET", "/api/v1/pods", {"limit": "1"},
                                            headers={"X-Custom": "v"})
    assert status == 200 and headers["content-type"] == "application/json" and body
    req = fake.requests[-1]
    assert (req.user, req.groups, req.headers, req.query) == ("system:node:n1", ("system:nodes",),
                                                              {"x-custom": "v"}, {"limit": "1"})


async def test_in_process_handler_raising_status_error_is_rendered() -> None:
    async def raising(req):
        raise StatusError(404, "NotFound", 'pods "x" not found')

    c = Client(InProcessTransport(raising))
    with pytest.raises(StatusError) as err:
        await c.resource("v1", "pods").get("x")
    assert (err.value.code, err.value.reason, err.value.message) == (404, "NotFound", 'pods "x" not found')
    with pytest.raises(StatusError):
        async for _ in c.resource("v1", "pods").watch():
            pass
