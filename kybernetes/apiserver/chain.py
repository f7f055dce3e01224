"""The request chain: the filters every API request passes before its handler.

    request info -> authenticate -> audit -> impersonate -> authorize -> read body -> handler

(audit, audit.py, only when a policy asks for it; it also records failed authentications.)

``APIServer`` builds the chain in one place (``APIServer.chain``); the HTTPS
front door and the in-process transport both enter it, so a component inside
the server process is checked exactly as kubectl over HTTPS is. Each filter is
a small unit: it takes the request and the rest of the chain, and either
answers (raises a StatusError, which becomes a metav1.Status) or calls on.
Most filters only look at the request before it goes on; they say so with a
``before(req)`` step (returning None, or an awaitable when it must wait), and
``build`` runs consecutive ones in one loop instead of nesting a coroutine per
filter, which matters on a path taken thousands of times a second.

Admission is not a filter here, as it is not in upstream: it needs the decoded
object (and, for updates, the stored one), so the REST storage runs it after
decoding, mutating then validating, before anything is written (rest.py,
admission.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ..api import errors
from . import audit, authentication, requestinfo
from .request import Handler, Request, Response

if TYPE_CHECKING:
    from .server import APIServer

Filter = Callable[[Request, Handler], Awaitable[Response]]
Before = Callable[[Request], Awaitable[None] | None]

# Anonymous requests may reach these without an authorizer's say, while every
# authenticated request is allowed (AlwaysAllow): the health and version
# endpoints and what a joining node reads before it trusts anything, the
# kube-public cluster-info ConfigMap (its CA is checked against the join pin).
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


def build(filters: Sequence[Filter], handler: Handler) -> Handler:
    """One handler that runs ``filters`` in order, then ``handler``."""
    h = handler
    group: list[Before] = []
    for f in reversed(filters):
        before = getattr(f, "before", None)
        if before is not None:
            group.insert(0, before)
            continue
        if group:
            h = _steps(tuple(group), h)
            group = []
        h = _link(f, h)
    return _steps(tuple(group), h) if group else h


def _link(f: Filter, rest: Handler) -> Handler:
    async def step(req: Request) -> Response:
        return await f(req, rest)
    return step


def _steps(befores: tuple[Before, ...], rest: Handler) -> Handler:
    async def steps(req: Request) -> Response:
        for b in befores:
            pending = b(req)
            if pending is not None:
                await pending
        return await rest(req)
    return steps


class _Step:
    """A filter that only looks at the request before it goes on (see ``build``)."""

    def before(self, req: Request) -> Awaitable[None] | None:
        raise NotImplementedError

    async def __call__(self, req: Request, rest: Handler) -> Response:
        pending = self.before(req)
        if pending is not None:
            await pending
        return await rest(req)


class _RequestInfo(_Step):
    """Parse what the request asks for once; a path that may not be served ends here."""

    def before(self, req: Request) -> None:
        req.info = requestinfo.parse(req.method, req.path, req.query)


with_request_info = _RequestInfo()


def public(req: Request) -> bool:
    """May an anonymous request reach this while there is no authorizer to ask?"""
    path = req.info.path if req.info is not None else req.path
    return is_health(path) or path == "/version" or (path == CLUSTER_INFO_PATH and req.method == "GET")


def is_health(path: str) -> bool:
    """/healthz, /livez, /readyz and their individual checks."""
    return path in HEALTH_PATHS or path.startswith(("/healthz/", "/livez/", "/readyz/"))


class Authenticate(_Step):
    """Set the request's identity from its credentials (an empty ``user`` means: not yet known).

    The in-process transport gives its callers' identity itself; the front door
    leaves it to this filter. Without credentials a request is
    ``system:anonymous``: the authorizer decides what it may do, or, with
    authorization off (AlwaysAllow), only the public paths answer and the rest is 401.
    """

    def __init__(self, api: APIServer, authenticator: authentication.Authenticator) -> None:
        self.api = api
        self.authenticator = authenticator

    def before(self, req: Request) -> Awaitable[None] | None:
        return None if req.user else self._authenticate(req)

    async def _authenticate(self, req: Request) -> None:
        who = await self.authenticator.authenticate(req)
        if who is None:
            if not self.api.authorizer.restricts_anonymous and not public(req):
                raise errors.unauthorized()
            who = authentication.ANONYMOUS
        req.user, req.groups = who


class Impersonate(_Step):
    """Replace the identity with the one the Impersonate-* headers name, if the caller may."""

    def __init__(self, api: APIServer) -> None:
        self.api = api

    def before(self, req: Request) -> None:
        if req.headers and authentication.wants_impersonation(req.headers):
            req.user, req.groups = authentication.impersonate(self.api, req.headers, (req.user, req.groups))


def attributes(info: requestinfo.RequestInfo) -> dict[str, str]:
    """The authorizer's attributes of a request (a SubjectAccessReview's resourceAttributes or
    nonResourceAttributes)."""
    if not info.is_resource:
        return {"verb": info.verb, "path": info.path}
    attrs = {"verb": info.verb, "group": info.group, "version": info.version, "resource": info.resource,
             "subresource": info.subresource, "namespace": info.namespace, "name": info.name}
    if info.field_selector:
        attrs["fieldSelector"] = info.field_selector
    return attrs


def forbidden(user: str, info: requestinfo.RequestInfo, reason: str) -> errors.StatusError:
    """A 403 in upstream's words, e.g. `pods "web" is forbidden: User "u" cannot get resource "pods"
    in API group "" in the namespace "shop"`."""
    if not info.is_resource:
        msg = f'forbidden: User "{user}" cannot {info.verb} path "{info.path}"'
        details: dict[str, str] = {}
    else:
        resource = info.resource + ("/" + info.subresource if info.subresource else "")
        what = f'{info.resource}.{info.group}' if info.group else info.resource
        subject = f'{what} "{info.name}"' if info.name else what
        scope = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
        msg = (f'{subject} is forbidden: User "{user}" cannot {info.verb} resource "{resource}" '
               f'in API group "{info.group}" {scope}')
        # Empty fields are left out, as Go's omitempty leaves them.
        details = {k: v for k, v in (("name", info.name), ("group", info.group), ("kind", info.resource)) if v}
    if reason:
        msg += ": " + reason
    return errors.StatusError(403, "Forbidden", msg, details or None)


class Authorize(_Step):
    """Refuse what the authorizer does not allow (403, in upstream's words)."""

    def __init__(self, api: APIServer) -> None:
        self.api = api

    def before(self, req: Request) -> None:
        info = req.info
        assert info is not None, "the request info filter runs first"
        allowed, reason = self.api.authorizer.authorize(req.user, req.groups, attributes(info), info.is_resource)
        audit.record_authorization(allowed, reason)
        if not allowed:
            raise forbidden(req.user, info, reason)


class _ReadBody(_Step):
    """Read the request's body only once the request is known to be allowed."""

    def before(self, req: Request) -> Awaitable[None] | None:
        return self._read(req) if req.read_body is not None else None

    async def _read(self, req: Request) -> None:
        reader, req.read_body = req.read_body, None
        assert reader is not None
        req.body = await reader()


read_body = _ReadBody()
