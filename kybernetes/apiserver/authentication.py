"""Who is asking: authentication and impersonation, the first steps of the request chain.

Authentication is upstream's, tried in its order:

* an x509 client certificate signed by the cluster CA (user = CN, groups = O),
  which the front door reads from the TLS connection (``Request.peer``);
* a bearer token: a static one (``TokenAuth``), a service account token (see
  serviceaccounts.py) or a bootstrap token (``BootstrapTokenAuth``: a
  ``bootstrap.kubernetes.io/token`` Secret in kube-system, user
  ``system:bootstrap:<id>``, groups ``system:bootstrappers`` and its extra
  groups), which new nodes use to ask for their certificates. A bearer token
  that matches none is a 401, never anonymous.
* nothing: the anonymous user ``system:anonymous`` in ``system:unauthenticated``.

Every authenticated identity also gets ``system:authenticated``. Impersonation
(``Impersonate-User``/``-Group``/``-Uid``/``-Extra-*``, which ``kubectl --as``
sends) then replaces the identity, if the authorizer lets the caller
``impersonate`` each user, group and uid named.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson

from ..api import errors
from ..api.times import parse_time
from .pki import parse_join

if TYPE_CHECKING:
    from .request import Request
    from .server import APIServer

log = logging.getLogger("kybernetes.authentication")

Identity = tuple[str, tuple[str, ...]]

AUTHENTICATED = "system:authenticated"
ANONYMOUS: Identity = ("system:anonymous", ("system:unauthenticated",))


class TokenAuth:
    """Static bearer tokens: token -> (user, groups)."""

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[str, tuple[str, ...]]] = {}

    def add(self, token: str, user: str, groups: tuple[str, ...]) -> None:
        self.tokens[token] = (user, groups)

    def lookup(self, token: str) -> Identity | None:
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

    async def authenticate(self, token: str) -> Identity | None:
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
        return BOOTSTRAP_USER_PREFIX + tid, (*groups, AUTHENTICATED)


class Authenticator:
    """The identity behind a request's credentials (see the module docstring for the order)."""

    def __init__(self, api: APIServer, tokens: TokenAuth | None = None) -> None:
        self.api = api
        self.tokens = tokens if tokens is not None else TokenAuth()
        self.bootstrap = BootstrapTokenAuth(api)

    async def authenticate(self, req: Request) -> Identity | None:
        """The identity the request proves, None when it carries no credentials; 401 for a bad token."""
        if req.peer is not None:
            user, groups = req.peer
            return user, groups + (AUTHENTICATED,)
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return None
        token = auth[7:].strip()
        who = self.tokens.lookup(token)
        if who is None and token.count(".") == 2:
            who = await self.api.service_accounts.authenticate(token)
        if who is None and token.count(".") == 1:
            who = await self.bootstrap.authenticate(token)
        if who is None:
            raise errors.unauthorized()
        user, groups = who
        return (user, groups) if AUTHENTICATED in groups else (user, groups + (AUTHENTICATED,))


SA_USER_PREFIX = "system:serviceaccount:"
_IMPERSONATE = "impersonate-"


def _all(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)  # aiohttp's multi-valued headers
    if getall is not None:
        return list(getall(name, ()))
    v = headers.get(name)
    return [v] if v is not None else []


def wants_impersonation(headers: Mapping[str, str]) -> bool:
    return any(k.lower().startswith(_IMPERSONATE) for k in headers)


def impersonate(api: APIServer, headers: Mapping[str, str], who: Identity) -> Identity:
    """Act as the user the Impersonate-* headers name, if the caller may (upstream's impersonation).

    The caller needs the "impersonate" verb on each user, group and uid it asks
    for; the result is the named user with the named groups, plus
    system:authenticated (and a service account's own groups when none are named).
    """
    user = headers.get("impersonate-user")
    groups = tuple(_all(headers, "impersonate-group"))
    uid = headers.get("impersonate-uid")
    extras = [k for k in headers if k.lower().startswith(_IMPERSONATE + "extra-")]
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
    if user != ANONYMOUS[0] and AUTHENTICATED not in out:
        out.append(AUTHENTICATED)
    return user, tuple(out)
