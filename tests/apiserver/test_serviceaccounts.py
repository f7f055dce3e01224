"""Service accounts: TokenRequest, token authentication over HTTP, TokenReview, the ServiceAccount
admission plugin, and the controllers that give each namespace its default account and root CA."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kybernetes.apiserver.admission import SA_TOKEN_MOUNT_PATH
from kybernetes.apiserver.http import TokenAuth, serve, server_ssl_context
from kybernetes.apiserver.pki import PKI
from kybernetes.apiserver.server import APIServer
from kybernetes.apiserver.serviceaccounts import ISSUER, InvalidToken, Signer, b64url_decode, legacy_claims
from kybernetes.client import Client
from kybernetes.controllers.serviceaccount import RootCACertPublisher, ServiceAccountController, TokensController

from .conftest import call, eventually, start_api, stop_api

CA = "-----BEGIN CERTIFICATE-----\nZmFrZQ==\n-----END CERTIFICATE-----\n"


def claims_of(token: str) -> dict[str, Any]:
    return orjson.loads(b64url_decode(token.split(".")[1]))


async def make_sa(api: APIServer, name: str = "builder", ns: str = "default", **extra: Any) -> dict:
    code, sa = await call(api, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                          {"metadata": {"name": name}, **extra})
    assert code == 201, sa
    return sa


async def request_token(api: APIServer, name: str, ns: str = "default", **spec: Any) -> tuple[int, Any]:
    return await call(api, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
                      {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})


# --------------------------------------------------------------------- TokenRequest


async def test_token_request_claims(api: APIServer) -> None:
    sa = await make_sa(api)
    code, tr = await request_token(api, "builder")
    assert code == 201, tr
    assert tr["kind"] == "TokenRequest" and tr["apiVersion"] == "authentication.k8s.io/v1"
    assert tr["spec"] == {"audiences": [ISSUER], "expirationSeconds": 3600}
    c = claims_of(tr["status"]["token"])
    assert c["sub"] == "system:serviceaccount:default:builder"
    assert c["iss"] == ISSUER and c["aud"] == [ISSUER]
    assert c["exp"] - c["iat"] == 3600 and c["nbf"] == c["iat"]
    assert abs(c["iat"] - time.time()) < 5
    assert c["kubernetes.io"] == {"namespace": "default",
                                  "serviceaccount": {"name": "builder", "uid": sa["metadata"]["uid"]}}
    assert tr["status"]["expirationTimestamp"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c["exp"]))
    header = orjson.loads(b64url_decode(tr["status"]["token"].split(".")[0]))
    assert header["alg"] == "ES256" and header["kid"] == api.service_accounts.signer.kid


async def test_token_request_errors_and_binding(api: APIServer) -> None:
    code, st = await request_token(api, "nobody")
    assert code == 404 and st["message"] == 'serviceaccounts "nobody" not found'
    await make_sa(api)
    code, st = await request_token(api, "builder", expirationSeconds=500)
    assert code == 422 and st["reason"] == "Invalid"
    assert "spec.expirationSeconds" in st["message"]
    code, st = await request_token(api, "builder", boundObjectRef={"apiVersion": "v1", "kind": "Pod",
                                                                    "name": "absent"})
    assert code == 404
    code, pod = await call(api, "POST", "/api/v1/namespaces/default/pods", {
        "metadata": {"name": "p"}, "spec": {"serviceAccountName": "builder",
                                            "containers": [{"name": "c", "image": "busybox"}]}})
    assert code == 201
    uid = pod["metadata"]["uid"]
    code, st = await request_token(api, "builder", boundObjectRef={"apiVersion": "v1", "kind": "Pod",
                                                                    "name": "p", "uid": "other"})
    assert code == 409 and st["reason"] == "Conflict"
    code, st = await request_token(api, "default", boundObjectRef={"apiVersion": "v1", "kind": "Pod", "name": "p"})
    assert code in (400, 404)  # no default SA here, or a pod running as another account
    code, st = await request_token(api, "builder", boundObjectRef={"apiVersion": "apps/v1", "kind": "Deployment",
                                                                    "name": "p"})
    assert code == 400
    code, tr = await request_token(api, "builder", audiences=["vault"], expirationSeconds=7200,
                                   boundObjectRef={"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": uid})
    assert code == 201, tr
    c = claims_of(tr["status"]["token"])
    assert c["aud"] == ["vault"] and c["exp"] - c["iat"] == 7200
    assert c["kubernetes.io"]["pod"] == {"name": "p", "uid": uid}


async def test_discovery_lists_token_subresource(api: APIServer) -> None:
    code, rl = await call(api, "GET", "/api/v1")
    entry = next(r for r in rl["resources"] if r["name"] == "serviceaccounts/token")
    assert entry["kind"] == "TokenRequest" and entry["group"] == "authentication.k8s.io"
    assert entry["version"] == "v1" and entry["verbs"] == ["create"]
    code, groups = await call(api, "GET", "/apis")
    assert any(g["name"] == "authentication.k8s.io" for g in groups["groups"])
    code, rl = await call(api, "GET", "/apis/authentication.k8s.io/v1")
    assert code == 200 and {r["name"] for r in rl["resources"]} >= {"tokenreviews"}
    code, jwks = await call(api, "GET", "/openid/v1/jwks")
    assert code == 200 and jwks["keys"][0]["kid"] == api.service_accounts.signer.kid


async def test_token_review(api: APIServer) -> None:
    sa = await make_sa(api)
    _, tr = await request_token(api, "builder")
    code, review = await call(api, "POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                               "spec": {"token": tr["status"]["token"]}})
    assert code == 201, review
    st = review["status"]
    assert st["authenticated"] is True
    assert st["user"]["username"] == "system:serviceaccount:default:builder"
    assert st["user"]["uid"] == sa["metadata"]["uid"]
    assert "system:serviceaccounts:default" in st["user"]["groups"]
    code, review = await call(api, "POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                              {"spec": {"token": "a.b.c"}})
    assert code == 201 and not review["status"].get("authenticated") and review["status"]["error"]


def test_signer_rsa_and_persisted_key(tmp_path: Path) -> None:
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    s = Signer(pem)
    tok = s.sign({"a": 1})
    assert orjson.loads(b64url_decode(tok.split(".")[0]))["alg"] == "RS256"
    assert s.verify(tok) == {"a": 1}
    with pytest.raises(InvalidToken):
        Signer().verify(tok)
    tampered = tok.rsplit(".", 1)[0][:-2] + "xx." + tok.rsplit(".", 1)[1]
    with pytest.raises(InvalidToken):
        s.verify(tampered)
    pki = PKI(tmp_path / "pki")
    pki.ensure(["127.0.0.1"])
    key = pki.sa_key.read_bytes()
    pki.ensure(["127.0.0.1"])
    assert pki.sa_key.read_bytes() == key and pki.sa_pub.exists()
    assert Signer(key).kid == Signer.from_file(pki.sa_key).kid


# --------------------------------------------------------------------- authentication over HTTP


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


async def _get(url: str, token: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)


async def test_http_bearer_service_account_token(http_api: tuple[APIServer, str]) -> None:
    api, url = http_api
    await make_sa(api)
    _, tr = await request_token(api, "builder")
    token = tr["status"]["token"]
    code, body = await _get(f"{url}/api/v1/namespaces/default/pods", token)
    assert code == 200 and body["kind"] == "PodList"
    async with aiohttp.ClientSession() as s, s.post(
            f"{url}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            headers={"Authorization": f"Bearer {token}"}) as r:
        who = await r.json()
    assert who["status"]["userInfo"]["username"] == "system:serviceaccount:default:builder"
    assert set(who["status"]["userInfo"]["groups"]) == {"system:serviceaccounts", "system:serviceaccounts:default",
                                                        "system:authenticated"}
    # Not ours, garbled, expired, for another audience: all 401 Unauthorized.
    c = claims_of(token)
    expired = api.service_accounts.signer.sign({**c, "exp": int(time.time()) - 5})
    other_aud = api.service_accounts.signer.sign({**c, "aud": ["vault"]})
    for bad in ("x.y.z", token[:-4] + "AAAA", Signer().sign(c), expired, other_aud):
        code, st = await _get(f"{url}/api/v1/namespaces/default/pods", bad)
        assert code == 401 and st["reason"] == "Unauthorized", bad
    # Deleting the account revokes its tokens; a new account of the same name does not revive them.
    await call(api, "DELETE", "/api/v1/namespaces/default/serviceaccounts/builder")
    code, _ = await _get(f"{url}/api/v1/namespaces/default/pods", token)
    assert code == 401
    await make_sa(api)
    code, _ = await _get(f"{url}/api/v1/namespaces/default/pods", token)
    assert code == 401


async def test_http_pod_bound_token_dies_with_pod(http_api: tuple[APIServer, str]) -> None:
    api, url = http_api
    await make_sa(api)
    _, pod = await call(api, "POST", "/api/v1/namespaces/default/pods", {
        "metadata": {"name": "p"}, "spec": {"serviceAccountName": "builder",
                                            "containers": [{"name": "c", "image": "busybox"}]}})
    _, tr = await request_token(api, "builder", boundObjectRef={"apiVersion": "v1", "kind": "Pod", "name": "p",
                                                                 "uid": pod["metadata"]["uid"]})
    token = tr["status"]["token"]
    assert (await _get(f"{url}/api/v1/namespaces/default/pods/p", token))[0] == 200
    code, _ = await call(api, "DELETE", "/api/v1/namespaces/default/pods/p")
    assert code == 200
    assert (await _get(f"{url}/api/v1/namespaces/default/pods", token))[0] == 401


# --------------------------------------------------------------------- admission


@pytest.fixture
async def sa_api(tmp_path: Path) -> AsyncIterator[APIServer]:
    api = await start_api(tmp_path, service_account_admission=True)
    try:
        yield api
    finally:
        await stop_api(api)


def _pod(name: str, **spec: Any) -> dict:
    containers = spec.pop("containers", [{"name": "c", "image": "busybox"}])
    return {"metadata": {"name": name, **spec.pop("metadata", {})}, "spec": {"containers": containers, **spec}}


async def test_admission_mounts_api_access(sa_api: APIServer) -> None:
    await make_sa(sa_api, "default", imagePullSecrets=[{"name": "regcred"}])
    code, pod = await call(sa_api, "POST", "/api/v1/namespaces/default/pods", _pod(
        "p", initContainers=[{"name": "init", "image": "busybox"}],
        containers=[{"name": "a", "image": "busybox"},
                    {"name": "b", "image": "busybox",
                     "volumeMounts": [{"name": "own", "mountPath": SA_TOKEN_MOUNT_PATH}]}],
        volumes=[{"name": "own", "emptyDir": {}}]))
    assert code == 201, pod
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "default" and spec["serviceAccount"] == "default"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    vol = next(v for v in spec["volumes"] if v["name"].startswith("kube-api-access-"))
    assert len(vol["name"]) == len("kube-api-access-") + 5
    assert vol["projected"] == {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                     "fieldPath": "metadata.namespace"}}]}}]}
    mount = {"name": vol["name"], "readOnly": True, "mountPath": SA_TOKEN_MOUNT_PATH}
    assert spec["initContainers"][0]["volumeMounts"] == [mount]
    assert spec["containers"][0]["volumeMounts"] == [mount]
    assert spec["containers"][1]["volumeMounts"] == [{"name": "own", "mountPath": SA_TOKEN_MOUNT_PATH}]


async def test_admission_opt_outs_and_missing_account(sa_api: APIServer) -> None:
    code, st = await call(sa_api, "POST", "/api/v1/namespaces/default/pods", _pod("p", serviceAccountName="ghost"))
    assert code == 403 and st["reason"] == "Forbidden"
    assert "error looking up service account default/ghost" in st["message"]
    await make_sa(sa_api, "quiet", automountServiceAccountToken=False)
    code, pod = await call(sa_api, "POST", "/api/v1/namespaces/default/pods", _pod("q", serviceAccountName="quiet"))
    assert code == 201 and not pod["spec"].get("volumes")
    await make_sa(sa_api, "default")
    code, pod = await call(sa_api, "POST", "/api/v1/namespaces/default/pods",
                           _pod("r", automountServiceAccountToken=False))
    assert code == 201 and not pod["spec"].get("volumes")
    # A mirror pod is taken as the kubelet made it.
    code, pod = await call(sa_api, "POST", "/api/v1/namespaces/default/pods", _pod(
        "m", metadata={"annotations": {"kubernetes.io/config.mirror": "abc"}}, nodeName="n1"))
    assert code == 201 and not pod["spec"].get("volumes")


# --------------------------------------------------------------------- controllers


async def test_controllers_default_account_and_root_ca(sa_api: APIServer) -> None:
    client = Client.in_process(sa_api.handle)
    ctrls = [ServiceAccountController(client), RootCACertPublisher(client, CA)]
    for c in ctrls:
        await c.start()
    try:
        sas = client.resource("v1", "serviceaccounts")
        cms = client.resource("v1", "configmaps")
        code, _ = await call(sa_api, "POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})
        assert code == 201
        # A pod right after its namespace: admission waits for the default account to appear.
        code, pod = await call(sa_api, "POST", "/api/v1/namespaces/team/pods", _pod("p"))
        assert code == 201, pod
        assert any(v["name"].startswith("kube-api-access-") for v in pod["spec"]["volumes"])
        for ns in ("default", "kube-system", "team"):
            await eventually(lambda ns=ns: _exists(sas, "default", ns), what=f"default SA in {ns}")
            cm = await eventually(lambda ns=ns: _exists(cms, "kube-root-ca.crt", ns), what=f"root CA in {ns}")
            assert cm["data"] == {"ca.crt": CA}
        old_uid = (await sas.get("default", "team"))["metadata"]["uid"]
        await sas.delete("default", "team")
        again = await eventually(lambda: _exists(sas, "default", "team", not_uid=old_uid), what="SA recreated")
        assert again["metadata"]["uid"] != old_uid
        await cms.patch("kube-root-ca.crt", {"data": {"ca.crt": "tampered", "extra": "x"}}, namespace="team",
                        patch_type="merge")
        await eventually(lambda: _cm_is(cms, "team", {"ca.crt": CA}), what="root CA restored")
        await cms.delete("kube-root-ca.crt", "team")
        await eventually(lambda: _cm_is(cms, "team", {"ca.crt": CA}), what="root CA recreated")
    finally:
        for c in ctrls:
            await c.stop()
        await client.close()


async def _exists(rc, name: str, ns: str, not_uid: str = "") -> dict | None:
    from kybernetes.api.errors import StatusError
    try:
        obj = await rc.get(name, ns)
    except StatusError:
        return None
    return None if obj["metadata"]["uid"] == not_uid else obj


async def _cm_is(rc, ns: str, data: dict) -> bool:
    obj = await _exists(rc, "kube-root-ca.crt", ns)
    return obj is not None and obj.get("data") == data


# --------------------------------------------------------------------- long-lived token Secrets


@pytest.fixture
async def https_api(tmp_path: Path) -> AsyncIterator[tuple[APIServer, str, ssl.SSLContext, PKI]]:
    """An API server over HTTPS with the data dir's PKI, and the token controller signing with its key."""
    pki = PKI(tmp_path / "pki")
    pki.ensure(["127.0.0.1"])
    api = await start_api(tmp_path, service_account_key=pki.sa_key.read_bytes())
    runner = await serve(api, TokenAuth(), "127.0.0.1", 0, server_ssl_context(pki))
    client = Client.in_process(api.handle)
    ctrl = TokensController(client, pki.sa_key.read_bytes(), pki.ca_cert.read_text())
    await ctrl.start()
    try:
        yield api, f"https://127.0.0.1:{runner.addresses[0][1]}", ssl.create_default_context(
            cafile=str(pki.ca_cert)), pki
    finally:
        await ctrl.stop()
        await client.close()
        await runner.cleanup()
        await stop_api(api)


def _token_secret(name: str, sa: str) -> dict:
    return {"metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": sa}},
            "type": "kubernetes.io/service-account-token"}


async def _secret(api: APIServer, name: str, ns: str = "default") -> dict | None:
    code, obj = await call(api, "GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
    return obj if code == 200 else None


async def _filled(api: APIServer, name: str) -> dict | None:
    obj = await _secret(api, name)
    return obj if obj is not None and (obj.get("data") or {}).get("token") else None


async def _https_get(url: str, ctx: ssl.SSLContext, token: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/api/v1/namespaces/default/pods", ssl=ctx,
                                                   headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status


async def test_token_secret_filled_and_authenticates(https_api) -> None:
    api, url, ctx, pki = https_api
    # A Secret made before its account is left alone until the account exists.
    code, _ = await call(api, "POST", "/api/v1/namespaces/default/secrets", _token_secret("build-robot-secret",
                                                                                             "build-robot"))
    assert code == 201
    sa = await make_sa(api, "build-robot")
    secret = await eventually(lambda: _filled(api, "build-robot-secret"), what="token filled in")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["ca.crt"] == pki.ca_cert.read_text() and data["namespace"] == "default"
    uid = sa["metadata"]["uid"]
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"] == uid
    token = data["token"]
    assert claims_of(token) == {
        "iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:default:build-robot",
        "kubernetes.io/serviceaccount/namespace": "default",
        "kubernetes.io/serviceaccount/secret.name": "build-robot-secret",
        "kubernetes.io/serviceaccount/service-account.name": "build-robot",
        "kubernetes.io/serviceaccount/service-account.uid": uid}
    assert await _https_get(url, ctx, token) == 200
    async with aiohttp.ClientSession() as s, s.post(
            f"{url}/apis/authentication.k8s.io/v1/selfsubjectreviews", ssl=ctx,
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            headers={"Authorization": f"Bearer {token}"}) as r:
        who = (await r.json())["status"]["userInfo"]
    assert who["username"] == "system:serviceaccount:default:build-robot"
    assert set(who["groups"]) == {"system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"}
    code, review = await call(api, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", {"spec": {"token": token}})
    assert review["status"]["authenticated"] is True and review["status"]["user"]["uid"] == uid
    assert review["status"]["audiences"] == [ISSUER]

    # Forged: the same claims signed with another key; and a legacy token for a Secret holding another one.
    assert await _https_get(url, ctx, Signer().sign(claims_of(token))) == 401
    other = api.service_accounts.signer.sign(legacy_claims("default", "build-robot", uid, "build-robot-secret")
                                             | {"jti": "x"})
    assert await _https_get(url, ctx, other) == 401
    # Deleting the Secret revokes its token.
    await call(api, "DELETE", "/api/v1/namespaces/default/secrets/build-robot-secret")
    assert await _https_get(url, ctx, token) == 401
    code, review = await call(api, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", {"spec": {"token": token}})
    assert not review["status"].get("authenticated") and review["status"]["error"]


async def test_token_secret_dies_with_service_account(https_api) -> None:
    api, url, ctx, _pki = https_api
    await make_sa(api, "build-robot")
    for name in ("robot-a", "robot-b"):
        await call(api, "POST", "/api/v1/namespaces/default/secrets", _token_secret(name, "build-robot"))
    a = await eventually(lambda: _filled(api, "robot-a"), what="token a")
    await eventually(lambda: _filled(api, "robot-b"), what="token b")
    # An unrelated token Secret whose account never existed stays as it is.
    await call(api, "POST", "/api/v1/namespaces/default/secrets", _token_secret("orphan", "nobody"))
    token = base64.b64decode(a["data"]["token"]).decode()
    assert await _https_get(url, ctx, token) == 200
    await call(api, "DELETE", "/api/v1/namespaces/default/serviceaccounts/build-robot")
    # Refused at once, before the controller has cleaned up.
    assert await _https_get(url, ctx, token) == 401
    for name in ("robot-a", "robot-b"):
        await eventually(lambda name=name: _gone(api, name), what=f"{name} deleted")
    # A new account of the same name does not revive the old token.
    await make_sa(api, "build-robot")
    assert await _https_get(url, ctx, token) == 401
    orphan = await _secret(api, "orphan")
    assert orphan is not None and not orphan.get("data")


async def _gone(api: APIServer, name: str) -> bool:
    return await _secret(api, name) is None
