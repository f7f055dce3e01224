"""The HTTPS front door: aiohttp, TLS, authentication, and streaming of watches.

Authentication is upstream's: an x509 client certificate signed by the
cluster CA (user = CN, groups = O) or a bearer token: static, a service
account token (see serviceaccounts.py) or a bootstrap token (a
``bootstrap.kubernetes.io/token`` Secret in kube-system, user
``system:bootstrap:<id>``, groups ``system:bootstrappers`` and its extra
groups), which new nodes use to ask for their certificates. Anonymous requests
may reach only the health and version endpoints and the kube-public
``cluster-info`` ConfigMap (the CA a joining node checks against its pin).
Everything else is handed to APIServer.handle as a transport-independent Request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import re
import ssl
import time

import orjson
from aiohttp import web

from ..api import errors
from ..api.times import parse_time
from . import proxy
from .pki import PKI, parse_join, peer_identity
from .request import Request
from .server import APIServer

log = logging.getLogger("kybernetes.http")

_PUBLIC = ("/healthz", "/livez", "/readyz", "/version")
# What a joining node reads before it trusts anything (upstream grants anonymous `get` on it alone).
CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


class TokenAuth:
    """Static bearer tokens: token -> (user, groups)."""

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[str, tuple[str, ...]]] = {}

    def add(self, token: str, user: str, groups: tuple[str, ...]) -> None:
        self.tokens[token] = (user, groups)

    def lookup(self, token: str) -> tuple[str, tuple[str, ...]] | None:
        for t, who in self.tokens.items():
            if hmac.compare_digest(t, token):
                return who
        return None


BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
BOOTSTRAP_SECRET_PREFIX = "bootstrap-token-"
BOOTSTRAP_USER_PREFIX = "system:bootstrap:"
BOOTSTRAPPERS = "system:bootstrappers"
_EXTRA_GROUP_RE = re.compile(r"^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$")


class BootstrapTokenAuth:
    """Bootstrap tokens (``<id>.<secret>``) checked against their Secrets in kube-system.

    The Secret must be of type bootstrap.kubernetes.io/token, named
    bootstrap-token-<id>, not being deleted, not expired, and allow
    authentication (usage-bootstrap-authentication: "true"). Only the token
    itself is a credential, as upstream; a join string (``K10<ca hash>::<id>.<secret>``)
    is what `kyb agent` is given, not a bearer token.
    """

    def __init__(self, api: APIServer) -> None:
        self.api = api

    def _secret(self, name: str) -> dict | None:
        kind = self.api.registry.by_resource("", "v1", "secrets")
        e = self.api.cache.cache(kind.storage_prefix).objects.get(kind.key("kube-system", name))
        return orjson.loads(e.raw) if e is not None else None

    async def authenticate(self, token: str) -> tuple[str, tuple[str, ...]] | None:
        if "::" in token:
            return None
        try:
            _, tid, secret = parse_join(token)
        except ValueError:
            return None
        name = BOOTSTRAP_SECRET_PREFIX + tid
        obj = self._secret(name)
        if obj is None:
            # Maybe created a moment ago: let the cache catch up once before saying no.
            await self.api.cache.fresh()
            obj = self._secret(name)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp") or obj.get("type") != BOOTSTRAP_TOKEN_TYPE:
            return None
        data = obj.get("data") if isinstance(obj.get("data"), dict) else {}

        def field(key: str) -> str:
            try:
                return base64.b64decode(data.get(key) or "", validate=True).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError):
                return ""
        if not hmac.compare_digest(field("token-secret").encode(), secret.encode()) or field("token-id") != tid:
            return None
        exp = field("expiration")
        if exp:
            t = parse_time(exp)
            if t is None or t <= time.time():
                log.debug("bootstrap token %s has expired", tid)
                return None
        if field("usage-bootstrap-authentication") != "true":
            return None
        groups = [BOOTSTRAPPERS]
        for g in (x.strip() for x in field("auth-extra-groups").split(",")):
            if not g:
                continue
            if not _EXTRA_GROUP_RE.match(g):
                log.warning("bootstrap token %s: auth-extra-groups %r is not a system:bootstrappers: group", tid, g)
                return None
            if g not in groups:
                groups.append(g)
        return BOOTSTRAP_USER_PREFIX + tid, (*groups, "system:authenticated")


def _peer_identity(request: web.Request) -> tuple[str, tuple[str, ...]] | None:
    who = peer_identity(request)
    return (who[0], who[1] + ("system:authenticated",)) if who else None


_LARGE_BODY = 1 << 20
_SLICE = 256 * 1024


async def _write_large(request: web.Request, resp) -> web.StreamResponse:
    """Write a large body (a big list) in slices, waiting for the socket to drain between them.

    Handing TLS megabytes at once makes it encrypt and buffer all of them at
    once, and the heap they leave behind is never given back.
    """
    sr = web.StreamResponse(status=resp.status, headers=resp.headers)
    sr.content_type = resp.content_type.split(";")[0]
    sr.content_length = len(resp.body)
    await sr.prepare(request)
    view = memoryview(resp.body)
    for i in range(0, len(view), _SLICE):
        await sr.write(view[i:i + _SLICE])
    await sr.write_eof()
    return sr


SA_USER_PREFIX = "system:serviceaccount:"


def impersonate(api: APIServer, request: web.Request,
                who: tuple[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    """Act as the user the Impersonate-* headers name, if the caller may (upstream's impersonation).

    kubectl --as / --as-group send these. The caller needs the "impersonate" verb on each
    user, group and uid it asks for; the result is the named user with the named groups,
    plus system:authenticated (and a service account's own groups when none are named).
    """
    user = request.headers.get("Impersonate-User")
    groups = tuple(request.headers.getall("Impersonate-Group", ()))
    uid = request.headers.get("Impersonate-Uid")
    extras = [k for k in request.headers if k.lower().startswith("impersonate-extra-")]
    if user is None:
        if groups or uid or extras:
            raise errors.bad_request(f"requested {list(groups) or extras or [uid]} without impersonating a user")
        return who
    asked = [("users", user)] + [("groups", g) for g in groups] + ([("uids", uid)] if uid else [])
    for resource, name in asked:
        allowed, _ = api.authorizer.authorize(who[0], who[1], {"verb": "impersonate", "resource": resource,
                                                              "group": "", "name": name}, True)
        if not allowed:
            raise errors.forbidden_error(f'{resource} "{name}" is forbidden: User "{who[0]}" cannot impersonate '
                                         f'resource "{resource}" in API group "" at the cluster scope')
    out = list(groups)
    if user.startswith(SA_USER_PREFIX) and not groups:
        ns = user[len(SA_USER_PREFIX):].split(":", 1)[0]
        out += ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
    if user != "system:anonymous" and "system:authenticated" not in out:
        out.append("system:authenticated")
    return user, tuple(out)


def make_app(api: APIServer, tokens: TokenAuth) -> web.Application:
    bootstrap = BootstrapTokenAuth(api)

    async def handler(request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        who = _peer_identity(request)
        auth = request.headers.get("Authorization", "")
        if who is None and auth.startswith("Bearer "):
            token = auth[7:].strip()
            who = tokens.lookup(token)
            if who is None and token.count(".") == 2:
                who = await api.service_accounts.authenticate(token)
            if who is None and token.count(".") == 1:
                who = await bootstrap.authenticate(token)
            if who is None:
                err = errors.unauthorized()
                return web.Response(status=401, body=err.to_bytes(), content_type="application/json")
        path = request.path
        if who is None:
            if not (path in _PUBLIC or path.startswith(("/healthz/", "/livez/", "/readyz/"))
                    or (path == CLUSTER_INFO_PATH and request.method == "GET")):
                err = errors.unauthorized()
                return web.Response(status=401, body=err.to_bytes(), content_type="application/json")
            who = ("system:anonymous", ("system:unauthenticated",))
        if any(k.lower().startswith("impersonate-") for k in request.headers):
            try:
                who = impersonate(api, request, who)
            except errors.StatusError as e:
                return web.Response(status=e.code, body=e.to_bytes(), content_type="application/json")
        if proxy.is_upgrade(request):
            # exec/attach/port-forward: a WebSocket relayed to the pod's kubelet.
            up = await proxy.handle_upgrade(api, request, who[0], who[1])
            if up is not None:
                return up
        body = await request.read() if request.can_read_body else b""
        req = Request(request.method, path, dict(request.query),
                      {k.lower(): v for k, v in request.headers.items()}, body, who[0], who[1])
        resp = await api.handle(req)
        if resp.stream is None and len(resp.body) > _LARGE_BODY:
            return await _write_large(request, resp)
        if resp.stream is None:
            out = web.Response(status=resp.status, body=resp.body, headers=resp.headers)
            out.content_type = resp.content_type.split(";")[0]
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s %d %.1fms user=%s", request.method, request.path_qs, resp.status,
                          (time.perf_counter() - t0) * 1000, who[0])
            return out
        sr = web.StreamResponse(status=resp.status, headers=resp.headers)
        sr.content_type = resp.content_type
        sr.enable_chunked_encoding()
        log.debug("WATCH %s user=%s", request.path_qs, who[0])
        try:
            await sr.prepare(request)
            async for chunk in resp.stream:
                await sr.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            close = getattr(resp.stream, "close", None) or getattr(resp.stream, "aclose", None)
            if close is not None:
                r = close()
                if asyncio.iscoroutine(r):
                    await r
        try:
            await sr.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return sr

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def server_ssl_context(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    # Optional: token-authenticated and anonymous health checks come without one.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


async def serve(api: APIServer, tokens: TokenAuth, host: str, port: int,
                ssl_ctx: ssl.SSLContext | None) -> web.AppRunner:
    app = make_app(api, tokens)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024, reuse_address=True)
    await site.start()
    return runner
