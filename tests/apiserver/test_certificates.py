"""TLS bootstrap: bootstrap tokens, CertificateSigningRequests (API, signer rules, controllers), node join."""

from __future__ import annotations

import asyncio
import base64
import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kybernetes.api import certificates as csrs
from kybernetes.api.errors import StatusError
from kybernetes.apiserver.http import TokenAuth, serve, server_ssl_context
from kybernetes.apiserver.pki import (
    PKI,
    ca_cert_hash,
    cluster_info_kubeconfig,
    detached_jws,
    hash_matches,
    join_string,
    new_bootstrap_token,
    parse_join,
)
from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client
from kybernetes.client.informer import SharedInformers
from kybernetes.controllers.certificates import (
    BootstrapSigner,
    CSRApprovingController,
    CSRCleaner,
    CSRSigningController,
    TokenCleaner,
)
from kybernetes.controllers.manager import SA_GROUPS, SA_PREFIX
from kybernetes.kubelet import bootstrap

from .conftest import call, eventually, start_api, stop_api

CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
TOKEN_ID, TOKEN_SECRET = "abcdef", "0123456789abcdef"
TOKEN = f"{TOKEN_ID}.{TOKEN_SECRET}"


def token_secret(tid: str = TOKEN_ID, secret: str = TOKEN_SECRET, **fields: str) -> dict:
    data = {"token-id": tid, "token-secret": secret, "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true", **fields}
    return {"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": f"bootstrap-token-{tid}", "namespace": "kube-system"},
            "stringData": {k: v for k, v in data.items() if v is not None}}


def rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def request(cn: str = "system:node:n1", orgs: tuple[str, ...] = ("system:nodes",), **sans: Any) -> bytes:
    return csrs.make_request(key(), cn, list(orgs), dns=sans.get("dns", []), ips=sans.get("ips", []))


def csr(name: str, req: bytes | None = None, signer: str = csrs.KUBELET_CLIENT,
        usages: tuple[str, ...] = ("digital signature", "client auth"), **spec: Any) -> dict:
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
            "spec": {"request": base64.b64encode(req or request()).decode(), "signerName": signer,
                     "usages": list(usages), **spec}}


def parsed(req: bytes) -> x509.CertificateSigningRequest:
    return csrs.parse_request(req)


# --------------------------------------------------------------------- join strings and pins


def test_join_string_round_trip(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    pki.ensure(["127.0.0.1"])
    token = new_bootstrap_token()
    assert parse_join(token)[0] is None
    pin = ca_cert_hash(pki.ca_cert.read_bytes())
    assert pin.startswith("sha256:") and len(pin) == 7 + 64
    join = join_string(pin, token)
    assert join.startswith("K10") and join.endswith("::" + token)
    assert parse_join(join) == (pin, *token.split("."))
    assert hash_matches(pki.ca_cert.read_bytes(), pin)
    assert not hash_matches(pki.ca_cert.read_bytes(), "sha256:" + "0" * 64)
    for bad in ("wrong.token", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde", "K10zz::" + token, ""):
        with pytest.raises(ValueError):
            parse_join(bad)


def test_detached_jws_shape() -> None:
    sig = detached_jws("content", TOKEN_ID, TOKEN_SECRET)
    header, payload, mac = sig.split(".")
    assert payload == "" and mac
    assert base64.urlsafe_b64decode(header + "==") == b'{"alg":"HS256","kid":"abcdef"}'
    assert sig == detached_jws("content", TOKEN_ID, TOKEN_SECRET) != detached_jws("other", TOKEN_ID, TOKEN_SECRET)


# --------------------------------------------------------------------- bootstrap token authentication


@pytest.fixture
async def http_api(tmp_path: Path) -> AsyncIterator[tuple[APIServer, str]]:
    api = await start_api(tmp_path)
    runner = await serve(api, TokenAuth(), "127.0.0.1", 0, None)
    port = runner.addresses[0][1]
    try:
        yield api, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await stop_api(api)


async def _whoami(url: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.post(
            f"{url}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def _get(url: str, path: str, token: str | None = None, method: str = "GET") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.request(method, url + path, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_bootstrap_token_authenticates(http_api: tuple[APIServer, str]) -> None:
    api, url = http_api
    code, _ = await call(api, "POST", "/api/v1/namespaces/kube-system/secrets",
                         token_secret(**{"auth-extra-groups": "system:bootstrappers:kyb:default-node-token"}))
    assert code == 201
    code, who = await _whoami(url, TOKEN)
    assert code == 201, who
    info = who["status"]["userInfo"]
    assert info["username"] == "system:bootstrap:abcdef"
    assert info["groups"] == ["system:bootstrappers", "system:bootstrappers:kyb:default-node-token",
                              "system:authenticated"]
    # The join string is for `kyb agent`, not a credential: only the token itself is (as upstream).
    code, st = await _whoami(url, join_string("sha256:" + "a" * 64, TOKEN))
    assert code == 401 and st["reason"] == "Unauthorized"
    for bad in ("abcdef.0123456789abcdee", "zzzzzz.0123456789abcdef", "abcdef.short"):
        code, st = await _whoami(url, bad)
        assert code == 401 and st["reason"] == "Unauthorized", bad


@pytest.mark.parametrize("fields, secret_type", [
    ({"expiration": rfc3339(time.time() - 5)}, None),
    ({"expiration": "not a time"}, None),
    ({"usage-bootstrap-authentication": "false"}, None),
    ({"usage-bootstrap-authentication": None}, None),
    ({"auth-extra-groups": "system:masters"}, None),
    ({"token-id": "ghijkl"}, None),
    ({}, "Opaque"),
])
async def test_bootstrap_token_refused(http_api: tuple[APIServer, str], fields: dict, secret_type: str | None) -> None:
    api, url = http_api
    body = token_secret(**fields)
    if "token-id" in fields:
        body["metadata"]["name"] = f"bootstrap-token-{TOKEN_ID}"
    if secret_type:
        body["type"] = secret_type
    code, created = await call(api, "POST", "/api/v1/namespaces/kube-system/secrets", body)
    assert code == 201, created
    code, st = await _whoami(url, TOKEN)
    assert code == 401 and st["reason"] == "Unauthorized"


async def test_bootstrap_token_not_expired_yet_and_deleted(http_api: tuple[APIServer, str]) -> None:
    api, url = http_api
    await call(api, "POST", "/api/v1/namespaces/kube-system/secrets",
               token_secret(expiration=rfc3339(time.time() + 3600)))
    assert (await _whoami(url, TOKEN))[0] == 201
    await call(api, "DELETE", f"/api/v1/namespaces/kube-system/secrets/bootstrap-token-{TOKEN_ID}")
    assert (await _whoami(url, TOKEN))[0] == 401


async def test_anonymous_reads_cluster_info_only(http_api: tuple[APIServer, str]) -> None:
    api, url = http_api
    for name in ("cluster-info", "other"):
        await call(api, "POST", "/api/v1/namespaces/kube-public/configmaps",
                   {"metadata": {"name": name}, "data": {"kubeconfig": "x"}})
    code, cm = await _get(url, "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    assert code == 200 and cm["data"] == {"kubeconfig": "x"}
    assert (await _get(url, "/api/v1/namespaces/kube-public/configmaps/other"))[0] == 401
    assert (await _get(url, "/api/v1/namespaces/kube-public/configmaps"))[0] == 401
    assert (await _get(url, "/api/v1/namespaces/kube-public/configmaps/cluster-info", method="DELETE"))[0] == 401


# --------------------------------------------------------------------- the CSR API


async def test_csr_create_fills_requestor_and_drops_status(api: APIServer) -> None:
    body = csr("c1")
    body["spec"].update(username="someone-else", groups=["system:masters"])
    body["status"] = {"conditions": [{"type": "Approved", "status": "True"}]}
    c = Client.in_process(api.handle, user="system:bootstrap:abcdef",
                          groups=("system:bootstrappers", "system:authenticated"))
    created = await c.request("POST", CSR_PATH, body=body)
    assert created["spec"]["username"] == "system:bootstrap:abcdef"
    assert created["spec"]["groups"] == ["system:bootstrappers", "system:authenticated"]
    assert not (created.get("status") or {}).get("conditions")
    # Server-side apply creating one is no way around it.
    applied = {**body, "metadata": {"name": "c2"}}
    created = await c.request("PATCH", f"{CSR_PATH}/c2", query={"fieldManager": "test"}, body=yaml.safe_dump(
        applied).encode(), headers={"Content-Type": "application/apply-patch+yaml"})
    assert created["spec"]["username"] == "system:bootstrap:abcdef" and not created.get("status", {}).get(
        "conditions"), created
    # Cluster-scoped, short name csr, served with status and approval.
    code, rl = await call(api, "GET", "/apis/certificates.k8s.io/v1")
    names = {r["name"]: r for r in rl["resources"]}
    assert names["certificatesigningrequests"]["shortNames"] == ["csr"]
    assert not names["certificatesigningrequests"]["namespaced"]
    assert {"certificatesigningrequests/status", "certificatesigningrequests/approval"} <= set(names)
    await c.close()


@pytest.mark.parametrize("mutate, field, reason", [
    (lambda b: b["spec"].update(request=base64.b64encode(b"not pem").decode()), "spec.request", "FieldValueInvalid"),
    (lambda b: b["spec"].update(request=base64.b64encode(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").decode()), "spec.request",
     "FieldValueInvalid"),
    (lambda b: b["spec"].update(usages=[]), "spec.usages", "FieldValueRequired"),
    (lambda b: b["spec"].update(usages=["client auth", "flying"]), "spec.usages[1]", "FieldValueNotSupported"),
    (lambda b: b["spec"].update(usages=["client auth", "client auth"]), "spec.usages[1]", "FieldValueDuplicate"),
    (lambda b: b["spec"].update(signerName="nodomain"), "spec.signerName", "FieldValueInvalid"),
    (lambda b: b["spec"].update(signerName="example/x"), "spec.signerName", "FieldValueInvalid"),
    (lambda b: b["spec"].pop("signerName"), "spec.signerName", "FieldValueRequired"),
    (lambda b: b["spec"].update(signerName=csrs.LEGACY_UNKNOWN), "spec.signerName", "FieldValueInvalid"),
    (lambda b: b["spec"].update(expirationSeconds=599), "spec.expirationSeconds", "FieldValueInvalid"),
])
async def test_csr_validation(api: APIServer, mutate, field: str, reason: str) -> None:
    body = csr("bad")
    mutate(body)
    code, st = await call(api, "POST", CSR_PATH, body)
    assert code == 422, st
    assert st["reason"] == "Invalid"
    assert {"field": field, "reason": reason} in [{"field": c["field"], "reason": c["reason"]}
                                                 for c in st["details"]["causes"]], st


async def test_csr_bad_signature_refused(api: APIServer) -> None:
    # Another name in the signed body: well-formed, but the signature no longer matches.
    der = x509.load_pem_x509_csr(request()).public_bytes(serialization.Encoding.DER)
    forged = der.replace(b"system:node:n1", b"system:node:n2")
    assert forged != der
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(forged) + \
        b"-----END CERTIFICATE REQUEST-----\n"
    code, st = await call(api, "POST", CSR_PATH, csr("forged", pem))
    assert code == 422 and st["details"]["causes"][0]["field"] == "spec.request", st


async def test_csr_subresources(api: APIServer) -> None:
    code, obj = await call(api, "POST", CSR_PATH, csr("c1"))
    assert code == 201
    base = f"{CSR_PATH}/c1"
    # The main resource writes neither spec nor status.
    changed = {**obj, "spec": {**obj["spec"], "signerName": "example.com/other"},
               "status": {"conditions": [{"type": "Approved", "status": "True"}]}}
    code, out = await call(api, "PUT", base, changed)
    assert code == 200 and out["spec"]["signerName"] == csrs.KUBELET_CLIENT and not out.get("status")
    # /status may not approve: a write that adds an Approved condition keeps the old conditions,
    # as upstream's status strategy does; other conditions it may add.
    code, out = await call(api, "PUT", base + "/status", {**obj, "status": {"conditions": [
        {"type": "Approved", "status": "True"}, {"type": "Progressing", "status": "False"}]}})
    assert code == 200, out
    assert not (out.get("status") or {}).get("conditions"), out
    code, out = await call(api, "PUT", base + "/status", {**obj, "status": {"conditions": [
        {"type": "Progressing", "status": "False"}]}})
    assert code == 200, out
    assert [c["type"] for c in out["status"]["conditions"]] == ["Progressing"]
    # /approval approves; timestamps are filled in.
    approve = {**out, "status": {"conditions": [*out["status"]["conditions"], {
        "type": "Approved", "status": "True", "reason": "KubectlApprove", "message": "ok"}]}}
    code, out = await call(api, "PUT", base + "/approval", approve)
    assert code == 200, out
    cond = out["status"]["conditions"][-1]
    assert cond["type"] == "Approved" and cond["lastUpdateTime"] and cond["lastTransitionTime"]
    # A /status update that keeps the Approved condition where it is and appends one of its own
    # keeps that order (the conformance spec's "updating /status").
    code, st = await call(api, "PUT", base + "/status", {**out, "status": {"conditions": [
        *out["status"]["conditions"], {"type": "StatusUpdate", "status": "True", "reason": "E2E"}]}})
    assert code == 200, st
    assert [c["type"] for c in st["status"]["conditions"]] == ["Progressing", "Approved", "StatusUpdate"]
    out = st
    # /approval cannot set the certificate; /status can, once.
    cert_b64 = base64.b64encode(_self_signed()).decode()
    code, out2 = await call(api, "PUT", base + "/approval", {**out, "status": {**out["status"],
                                                                               "certificate": cert_b64}})
    assert code == 200 and "certificate" not in out2["status"]
    code, out = await call(api, "PUT", base + "/status", {**out, "status": {**out["status"], "certificate": cert_b64}})
    assert code == 200 and out["status"]["certificate"] == cert_b64
    code, st = await call(api, "PUT", base + "/status", {**out, "status": {
        **out["status"], "certificate": base64.b64encode(_self_signed()).decode()}})
    assert code == 422 and "may not modify existing certificate content" in st["message"]
    code, st = await call(api, "PUT", base + "/status", {**out, "status": {
        **out["status"], "certificate": base64.b64encode(b"garbage").decode()}})
    assert code == 422
    # Approval stays: it cannot be removed, and Denied cannot join it.
    code, st = await call(api, "PUT", base + "/approval", {**out, "status": {**out["status"], "conditions": []}})
    assert code == 422 and 'may not remove a condition of type "Approved"' in st["message"], st
    code, st = await call(api, "PUT", base + "/approval", {**out, "status": {**out["status"], "conditions": [
        *out["status"]["conditions"], {"type": "Denied", "status": "True"}]}})
    assert code == 422 and "mutually exclusive" in st["message"]


async def test_csr_approval_condition_rules(api: APIServer) -> None:
    code, obj = await call(api, "POST", CSR_PATH, csr("c2"))
    for conds, msg in (([{"type": "Approved", "status": "False"}], "supported values"),
                       ([{"type": "Approved", "status": "True"}, {"type": "Approved", "status": "True"}],
                        "Duplicate value"),
                       ([{"type": "", "status": "True"}], "Required value")):
        code, st = await call(api, "PUT", f"{CSR_PATH}/c2/approval", {**obj, "status": {"conditions": conds}})
        assert code == 422 and msg in st["message"], (conds, st)


def _self_signed() -> bytes:
    from kybernetes.apiserver import pki as pkimod

    k = key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(k, hashes.SHA256()))
    return pkimod._cert_pem(cert)


# --------------------------------------------------------------------- signer rules


def test_kubelet_client_rules() -> None:
    ok = ["digital signature", "client auth"]
    csrs.check_kubelet_client(parsed(request()), ok)
    csrs.check_kubelet_client(parsed(request()), ["digital signature", "key encipherment", "client auth"])
    for req, usages, msg in (
            (request(orgs=("system:masters",)), ok, "organization is not system:nodes"),
            (request(orgs=("system:nodes", "x")), ok, "organization is not system:nodes"),
            (request(cn="alice"), ok, "does not begin with system:node:"),
            (request(dns=["n1"]), ok, "DNS subjectAltNames are not allowed"),
            (request(ips=["10.0.0.1"]), ok, "IP subjectAltNames are not allowed"),
            (request(), ["digital signature", "server auth"], "usages did not match"),
            (request(), ["client auth"], "usages did not match")):
        with pytest.raises(csrs.CSRError, match=msg):
            csrs.check_kubelet_client(parsed(req), usages)


def test_kubelet_serving_rules() -> None:
    ok = ["digital signature", "server auth"]
    csrs.check_kubelet_serving(parsed(request(dns=["n1"], ips=["10.0.0.1"])), ok)
    for req, usages, msg in (
            (request(), ok, "DNS or IP subjectAltName is required"),
            (request(orgs=(), dns=["n1"]), ok, "organization is not system:nodes"),
            (request(cn="n1", dns=["n1"]), ok, "does not begin with system:node:"),
            (request(dns=["n1"]), ["digital signature", "client auth"], "usages did not match")):
        with pytest.raises(csrs.CSRError, match=msg):
            csrs.check_kubelet_serving(parsed(req), usages)


def test_kube_apiserver_client_rules() -> None:
    csrs.check_kube_apiserver_client(parsed(request(cn="alice", orgs=("dev",))),
                                     ["digital signature", "key encipherment", "client auth"])
    with pytest.raises(csrs.CSRError, match="invalid usage for client certificate: server auth"):
        csrs.check_kube_apiserver_client(parsed(request(cn="alice")), ["client auth", "server auth"])


def test_issue_follows_request_and_usages(tmp_path: Path) -> None:
    pki = PKI(tmp_path / "pki")
    pki.ensure(["127.0.0.1"])
    ca, ca_key = pki.load_ca()
    req = parsed(request(dns=["n1"], ips=["10.0.0.1"]))
    pem = csrs.issue(req, ["digital signature", "server auth"], ca, ca_key, ttl=3600)
    cert = x509.load_pem_x509_certificate(pem)
    cert.verify_directly_issued_by(ca)
    assert cert.subject == req.subject
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["n1"]
    life = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=59) < life <= datetime.timedelta(hours=1)


# --------------------------------------------------------------------- controllers


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[APIServer, PKI]]:
    """An API server with RBAC and its default policy, and the approving and signing controllers running
    as the controller manager runs them: as the certificate-controller service account, reading through
    informers shared under the manager's own identity."""
    pki = PKI(tmp_path / "pki")
    pki.ensure(["127.0.0.1", "localhost"])
    api = await start_api(tmp_path, authorization_mode="RBAC")
    # Users of group "dev" may ask for certificates (as system:node-bootstrapper lets one), nothing more.
    code, out = await call(api, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": "dev-csr"}, "subjects": [{"kind": "Group", "name": "dev"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:node-bootstrapper"}})
    assert code == 201, out
    manager = Client.in_process(api.handle, user="system:kube-controller-manager", groups=("system:authenticated",))
    shared = SharedInformers(manager)
    clients: list[Client] = []

    def as_(account: str) -> Client:
        c = Client.in_process(api.handle, user=SA_PREFIX + account, groups=SA_GROUPS)
        c.shared_informers = shared
        clients.append(c)
        return c
    certs = as_("certificate-controller")
    ctrls = [CSRApprovingController(certs),
             CSRSigningController(certs, pki.ca_cert.read_bytes(), pki.ca_key.read_bytes()),
             BootstrapSigner(as_("bootstrap-signer")), TokenCleaner(as_("token-cleaner")), CSRCleaner(certs)]
    for c in ctrls:
        await c.start()
    try:
        yield api, pki
    finally:
        for c in ctrls:
            await c.stop()
        for c in (*clients, manager):
            await c.close()
        await stop_api(api)


def _as(api: APIServer, user: str, *groups: str) -> Client:
    return Client.in_process(api.handle, user=user, groups=(*groups, "system:authenticated"))


async def _issued(api: APIServer, name: str) -> dict:
    async def done() -> dict | None:
        code, obj = await call(api, "GET", f"{CSR_PATH}/{name}")
        st = obj.get("status") or {}
        return obj if st.get("certificate") or any(c["type"] == "Failed" for c in st.get("conditions") or []) \
            else None
    return await eventually(done, timeout=10, what=f"csr {name} issued")


async def test_node_client_csr_from_bootstrapper_is_approved_and_signed(cluster) -> None:
    api, pki = cluster
    c = _as(api, "system:bootstrap:abcdef", "system:bootstrappers")
    await c.request("POST", CSR_PATH, body=csr("node-csr-1", expirationSeconds=3600))
    obj = await _issued(api, "node-csr-1")
    cond = next(x for x in obj["status"]["conditions"] if x["type"] == "Approved")
    assert cond["reason"] == "AutoApproved" and cond["status"] == "True"
    assert cond["message"] == "Auto approving kubelet client certificate after SubjectAccessReview."
    cert = x509.load_pem_x509_certificate(base64.b64decode(obj["status"]["certificate"]))
    cert.verify_directly_issued_by(pki.load_ca()[0])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH])
    # expirationSeconds is honoured (below the signing duration).
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(hours=1)
    await c.close()


async def test_renewal_by_the_node_itself_is_approved_others_are_not(cluster) -> None:
    api, _ = cluster
    node = _as(api, "system:node:n1", "system:nodes")
    await node.request("POST", CSR_PATH, body=csr("renew"))
    obj = await _issued(api, "renew")
    assert obj["status"]["certificate"]
    cond = next(x for x in obj["status"]["conditions"] if x["type"] == "Approved")
    assert cond["message"] == "Auto approving self kubelet client certificate after SubjectAccessReview."
    # Another node may not ask for n1's certificate; an ordinary user may not ask for a node's.
    other = _as(api, "system:node:n2", "system:nodes")
    await other.request("POST", CSR_PATH, body=csr("steal"))
    alice = _as(api, "alice", "dev")
    await alice.request("POST", CSR_PATH, body=csr("alice"))
    # A kube-apiserver-client request is left to a person.
    await alice.request("POST", CSR_PATH, body=csr("plain", request(cn="alice"), signer=csrs.KUBE_APISERVER_CLIENT))
    await asyncio.sleep(0.3)
    for name in ("steal", "alice", "plain"):
        code, obj = await call(api, "GET", f"{CSR_PATH}/{name}")
        assert not (obj.get("status") or {}).get("conditions"), obj
    for c in (node, other, alice):
        await c.close()


async def test_node_client_approval_asks_a_subject_access_review(tmp_path: Path) -> None:
    """What the approver decides is what RBAC answers for the requester, as upstream's sarApprover."""
    api = await start_api(tmp_path, authorization_mode="RBAC")
    client = Client.in_process(api.handle, user=SA_PREFIX + "certificate-controller", groups=SA_GROUPS)
    approver = CSRApprovingController(client)  # not started: decide() is called directly
    reviews: list[tuple[dict, bool]] = []
    send = client.request

    async def recording(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        out = await send(method, path, *args, **kwargs)
        if path.endswith("/subjectaccessreviews"):
            reviews.append((kwargs["body"]["spec"], out["status"]["allowed"]))
        return out
    client.request = recording  # type: ignore[method-assign]

    def asked(name: str, user: str, *groups: str, **spec: Any) -> dict:
        obj = csr(name, **spec)
        obj["spec"].update(username=user, groups=[*groups, "system:authenticated"])
        return obj

    def tried() -> list[tuple[str, bool]]:
        out = [(r["resourceAttributes"]["subresource"], allowed) for r, allowed in reviews]
        reviews.clear()
        return out
    nodeclient = "Auto approving kubelet client certificate after SubjectAccessReview."
    selfnodeclient = "Auto approving self kubelet client certificate after SubjectAccessReview."
    try:
        # A bootstrap token's request: not the node itself, so only nodeclient is asked, for the requester.
        boot = asked("boot", "system:bootstrap:abcdef", "system:bootstrappers", uid="u-1",
                     extra={"authentication.kubernetes.io/credential-id": ["X509SHA256=ab"]})
        assert await approver.decide(boot) == nodeclient
        [(review, allowed)] = reviews
        assert review == {"user": "system:bootstrap:abcdef", "uid": "u-1",
                          "groups": ["system:bootstrappers", "system:authenticated"],
                          "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=ab"]},
                          "resourceAttributes": {"group": "certificates.k8s.io", "version": "*",
                                                 "resource": "certificatesigningrequests",
                                                 "subresource": "nodeclient", "verb": "create"}}
        assert allowed and tried() == [("nodeclient", True)]
        # A node renewing its own certificate: selfnodeclient, granted to system:nodes.
        renew = asked("renew", "system:node:n1", "system:nodes")
        assert await approver.decide(renew) == selfnodeclient and tried() == [("selfnodeclient", True)]
        # Another node asking for n1's, a user in no bound group: refused by the authorizer.
        assert await approver.decide(asked("steal", "system:node:n2", "system:nodes")) is None
        assert tried() == [("nodeclient", False)]
        alice = asked("alice", "alice", "dev")
        assert await approver.decide(alice) is None and tried() == [("nodeclient", False)]
        # Not a node client certificate request at all: no review asked.
        assert await approver.decide(asked("plain", "alice", "dev", signer=csrs.KUBE_APISERVER_CLIENT)) is None
        bad_usages = asked("usages", "system:bootstrap:abcdef", "system:bootstrappers",
                           usages=("digital signature", "server auth"))
        assert await approver.decide(bad_usages) is None and tried() == []
        # RBAC, not a group list, decides: bind nodeclient to alice and she may; unbind selfnodeclient
        # from the nodes and a renewal is no longer approved (nodeclient tried after it, refused too).
        code, out = await call(api, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "metadata": {"name": "alice-nodeclient"}, "subjects": [{"kind": "User", "name": "alice"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:certificates.k8s.io:certificatesigningrequests:nodeclient"}})
        assert code == 201, out
        assert await eventually(lambda: approver.decide(alice), timeout=5) == nodeclient
        reviews.clear()
        code, out = await call(api, "DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/"
                                              "kybernetes:node-autoapprove-certificate-rotation")
        assert code == 200, out

        async def refused() -> bool:
            reviews.clear()
            return await approver.decide(renew) is None
        await eventually(refused, timeout=5)
        assert tried() == [("selfnodeclient", False), ("nodeclient", False)]
        # The review is asked as the controller: an identity that may not create one gets Forbidden.
        nobody = CSRApprovingController(Client.in_process(api.handle, user="alice", groups=("dev",)))
        with pytest.raises(StatusError) as e:
            await nobody.decide(boot)
        assert e.value.code == 403 and "subjectaccessreviews" in e.value.message
        await nobody.client.close()
    finally:
        await client.close()
        await stop_api(api)


async def test_manual_approval_signs_and_denial_does_not(cluster) -> None:
    api, pki = cluster
    alice = _as(api, "alice", "dev")
    for name in ("approve-me", "deny-me"):
        await alice.request("POST", CSR_PATH, body=csr(name, request(cn="alice", orgs=("dev",)),
                                                       signer=csrs.KUBE_APISERVER_CLIENT))
    for name, t in (("approve-me", "Approved"), ("deny-me", "Denied")):
        code, obj = await call(api, "GET", f"{CSR_PATH}/{name}")
        obj["status"] = {"conditions": [{"type": t, "status": "True", "reason": "Test"}]}
        assert (await call(api, "PUT", f"{CSR_PATH}/{name}/approval", obj))[0] == 200
    obj = await _issued(api, "approve-me")
    cert = x509.load_pem_x509_certificate(base64.b64decode(obj["status"]["certificate"]))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    # A year at most, the signing duration.
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=365, minutes=5)
    await asyncio.sleep(0.2)
    code, obj = await call(api, "GET", f"{CSR_PATH}/deny-me")
    assert "certificate" not in obj["status"]
    await alice.close()


async def test_signer_fails_requests_breaking_its_rules(cluster) -> None:
    api, _ = cluster
    alice = _as(api, "alice", "dev")
    await alice.request("POST", CSR_PATH, body=csr("srv", request(cn="alice"), signer=csrs.KUBE_APISERVER_CLIENT,
                                                   usages=("digital signature", "server auth")))
    code, obj = await call(api, "GET", f"{CSR_PATH}/srv")
    obj["status"] = {"conditions": [{"type": "Approved", "status": "True", "reason": "Test"}]}
    await call(api, "PUT", f"{CSR_PATH}/srv/approval", obj)
    obj = await _issued(api, "srv")
    failed = next(c for c in obj["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "SignerValidationFailure" and "server auth" in failed["message"]
    assert "certificate" not in obj["status"]
    # Another signer's requests are not ours to sign.
    await alice.request("POST", CSR_PATH, body=csr("ext", request(cn="alice"), signer="example.com/mine"))
    code, obj = await call(api, "GET", f"{CSR_PATH}/ext")
    obj["status"] = {"conditions": [{"type": "Approved", "status": "True", "reason": "Test"}]}
    await call(api, "PUT", f"{CSR_PATH}/ext/approval", obj)
    await asyncio.sleep(0.3)
    code, obj = await call(api, "GET", f"{CSR_PATH}/ext")
    assert len(obj["status"]["conditions"]) == 1 and "certificate" not in obj["status"]
    await alice.close()


async def test_cleaner_deletes_requests_that_have_served(cluster) -> None:
    api, _ = cluster
    alice = _as(api, "alice", "dev")
    for name in ("old", "fresh"):
        await alice.request("POST", CSR_PATH, body=csr(name, request(cn="alice"), signer="example.com/mine"))
    code, obj = await call(api, "GET", f"{CSR_PATH}/old")
    obj["status"] = {"conditions": [{"type": "Denied", "status": "True", "reason": "Test",
                                     "lastUpdateTime": rfc3339(time.time() - 7200)}]}
    assert (await call(api, "PUT", f"{CSR_PATH}/old/approval", obj))[0] == 200
    await eventually(lambda: _gone(api, "old"), timeout=5)
    assert (await call(api, "GET", f"{CSR_PATH}/fresh"))[0] == 200
    cleaner = CSRCleaner(Client.in_process(api.handle))
    _, fresh = await call(api, "GET", f"{CSR_PATH}/fresh")
    assert cleaner.deadline(fresh) - time.time() == pytest.approx(24 * 3600, abs=60)
    await alice.close()


async def _gone(api: APIServer, name: str) -> bool:
    return (await call(api, "GET", f"{CSR_PATH}/{name}"))[0] == 404


async def _node(api: APIServer, name: str, ip: str) -> None:
    code, n = await call(api, "POST", "/api/v1/nodes", {"metadata": {"name": name}})
    assert code == 201, n
    n["status"] = {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}
    assert (await call(api, "PUT", f"/api/v1/nodes/{name}/status", n))[0] == 200


async def test_serving_csr_approved_only_for_the_nodes_own_addresses(cluster) -> None:
    api, _ = cluster
    node = _as(api, "system:node:n1", "system:nodes")
    serving = ("digital signature", "server auth")
    # Asked before the node reported its addresses: approved once it has.
    await node.request("POST", CSR_PATH, body=csr("early", request(dns=["n1"], ips=["10.0.0.1"]),
                                                  signer=csrs.KUBELET_SERVING, usages=serving))
    await asyncio.sleep(0.2)
    code, obj = await call(api, "GET", f"{CSR_PATH}/early")
    assert not (obj.get("status") or {}).get("conditions")
    await _node(api, "n1", "10.0.0.1")
    obj = await _issued(api, "early")
    cert = x509.load_pem_x509_certificate(base64.b64decode(obj["status"]["certificate"]))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    # Someone else's address, or another node's name: left pending.
    await node.request("POST", CSR_PATH, body=csr("greedy", request(dns=["n1"], ips=["10.0.0.9"]),
                                                  signer=csrs.KUBELET_SERVING, usages=serving))
    other = _as(api, "system:node:n2", "system:nodes")
    await other.request("POST", CSR_PATH, body=csr("impostor", request(dns=["n1"], ips=["10.0.0.1"]),
                                                   signer=csrs.KUBELET_SERVING, usages=serving))
    await asyncio.sleep(0.3)
    for name in ("greedy", "impostor"):
        code, obj = await call(api, "GET", f"{CSR_PATH}/{name}")
        assert not (obj.get("status") or {}).get("conditions"), obj
    await node.close()
    await other.close()


async def test_bootstrap_signer_and_token_cleaner(cluster) -> None:
    api, pki = cluster
    content = cluster_info_kubeconfig("https://127.0.0.1:6443", pki.ca_cert.read_bytes())
    await call(api, "POST", "/api/v1/namespaces/kube-public/configmaps",
               {"metadata": {"name": "cluster-info"}, "data": {"kubeconfig": content}})
    await call(api, "POST", "/api/v1/namespaces/kube-system/secrets", token_secret())
    await call(api, "POST", "/api/v1/namespaces/kube-system/secrets",
               token_secret("nosign", "0123456789abcdef", **{"usage-bootstrap-signing": None}))
    soon = token_secret("short1", "0123456789abcdef", expiration=rfc3339(time.time() + 1.5))
    await call(api, "POST", "/api/v1/namespaces/kube-system/secrets", soon)

    async def signed() -> dict | None:
        _, cm = await call(api, "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
        keys = {k for k in cm["data"] if k.startswith("jws-kubeconfig-")}
        return cm if keys == {"jws-kubeconfig-abcdef", "jws-kubeconfig-short1"} else None
    cm = await eventually(signed, timeout=5)
    assert cm["data"]["jws-kubeconfig-abcdef"] == detached_jws(content, TOKEN_ID, TOKEN_SECRET)

    # The short-lived token expires: its Secret is deleted and its signature withdrawn.
    async def cleaned() -> bool:
        code, _ = await call(api, "GET", "/api/v1/namespaces/kube-system/secrets/bootstrap-token-short1")
        _, cm = await call(api, "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
        return code == 404 and "jws-kubeconfig-short1" not in cm["data"]
    await eventually(cleaned, timeout=8)


# --------------------------------------------------------------------- a node joining over HTTPS


@pytest.fixture
async def https_cluster(cluster) -> AsyncIterator[tuple[APIServer, PKI, str]]:
    api, pki = cluster
    runner = await serve(api, TokenAuth(), "127.0.0.1", 0, server_ssl_context(pki))
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    await call(api, "POST", "/api/v1/namespaces/kube-public/configmaps", {
        "metadata": {"name": "cluster-info"},
        "data": {"kubeconfig": cluster_info_kubeconfig(url, pki.ca_cert.read_bytes())}})
    await call(api, "POST", "/api/v1/namespaces/kube-system/secrets", token_secret())
    try:
        yield api, pki, url
    finally:
        await runner.cleanup()


async def test_node_joins_with_a_join_string(https_cluster, tmp_path: Path) -> None:
    api, pki, url = https_cluster
    files = bootstrap.NodeFiles(tmp_path / "agent")
    join = join_string(pki.ca_cert_hash(), TOKEN)
    # A pin of some other CA is refused before the token is ever sent.
    with pytest.raises(bootstrap.JoinError, match="does not match the pinned hash"):
        await bootstrap.bootstrap_client(url, join_string("sha256:" + "0" * 64, TOKEN), files, "n1")
    with pytest.raises(bootstrap.JoinError, match="carries no CA hash"):
        await bootstrap.bootstrap_client(url, TOKEN, files, "n1")
    with pytest.raises(bootstrap.JoinError, match="Unauthorized"):
        await bootstrap.bootstrap_client(url, join_string(pki.ca_cert_hash(), "zzzzzz.0123456789abcdef"), files, "n1")
    # Once the bootstrap signer has signed cluster-info with the token, a wrong secret for that id shows there.
    await eventually(lambda: _has_jws(api), timeout=5)
    with pytest.raises(bootstrap.JoinError, match="signed with another secret"):
        await bootstrap.bootstrap_client(url, join_string(pki.ca_cert_hash(), "abcdef.ffffffffffffffff"), files, "n1")

    await bootstrap.bootstrap_client(url, join, files, "n1")
    cfg = yaml.safe_load(files.kubeconfig.read_text())
    assert cfg["clusters"][0]["cluster"]["server"] == url
    assert files.ca.read_bytes() == pki.ca_cert.read_bytes()
    node = Client.from_kubeconfig(str(files.kubeconfig))
    try:
        who = await node.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                 body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert who["status"]["userInfo"]["username"] == "system:node:n1"
        assert "system:nodes" in who["status"]["userInfo"]["groups"]
    finally:
        await node.close()
    # A restart reuses the credentials: no token needed, no new request.
    before = files.client_pem.read_bytes()
    await bootstrap.bootstrap_client(url, "", files, "n1")
    assert files.client_pem.read_bytes() == before
    _, lst = await call(api, "GET", CSR_PATH)
    assert len(lst["items"]) == 1 and lst["items"][0]["spec"]["username"] == "system:bootstrap:abcdef"
    # Beside the server, its CA file may stand in for discovery (kyb agent --server-data-dir / --ca-file).
    other = bootstrap.NodeFiles(tmp_path / "agent2")
    await bootstrap.bootstrap_client(url, TOKEN, other, "n2", ca_file=str(pki.ca_cert))
    assert other.ca.read_bytes() == pki.ca_cert.read_bytes() and other.client_pem.exists()


async def _has_jws(api: APIServer) -> bool:
    _, cm = await call(api, "GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    return f"jws-kubeconfig-{TOKEN_ID}" in cm["data"]


async def test_node_renews_its_certificates(https_cluster, tmp_path: Path) -> None:
    api, pki, url = https_cluster
    files = bootstrap.NodeFiles(tmp_path / "agent")
    await bootstrap.bootstrap_client(url, TOKEN, files, "n1", ca_hash=pki.ca_cert_hash())
    await _node(api, "n1", "127.0.0.1")
    client_ctx = bootstrap.client_ssl_context(files)
    hosts = ["127.0.0.1", "n1"]
    serving_ctx = bootstrap.serving_ssl_context(files, hosts)
    client = Client(bootstrap.HTTPTransport(url, ssl_context=client_ctx))
    certs = bootstrap.CertificateManager(client, files, "n1", hosts, client_ctx, serving_ctx)
    try:
        first = files.client_pem.read_bytes()
        certs.start()
        await asyncio.wait_for(certs.serving_ready.wait(), 10)
        assert bootstrap.serving_cert_ok(files, hosts)
        # Renewal as the node itself (the self-client approval path); the context reloads in place.
        await certs.renew_client()
        assert files.client_pem.read_bytes() != first
        who = await client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                   body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert who["status"]["userInfo"]["username"] == "system:node:n1"
        _, lst = await call(api, "GET", CSR_PATH)
        by_user = sorted((i["spec"]["signerName"], i["spec"]["username"]) for i in lst["items"])
        assert by_user == [(csrs.KUBELET_CLIENT, "system:bootstrap:abcdef"), (csrs.KUBELET_CLIENT, "system:node:n1"),
                           (csrs.KUBELET_SERVING, "system:node:n1")]
    finally:
        await certs.stop()
        await client.close()
