"""What a request asks for, parsed once from its method, path and query.

Every filter of the request chain (authorization, audit, admission) and the
handler read the same ``RequestInfo``, so a path has exactly one meaning: the
authorizer can never approve one resource while the handler serves another.
The shapes are upstream's (apiserver's RequestInfoFactory):

    /api/{version}/...                     the core group ("")
    /apis/{group}/{version}/...            named groups
    .../watch/{resource}...                the deprecated watch prefix (verb "watch")
    .../namespaces/{ns}/{resource}/{name}/{subresource}
    .../namespaces/{name}[/status|/finalize]     a Namespace itself

Anything shorter than ``/api/v1/{resource}`` or ``/apis/{g}/{v}/{resource}``,
and anything outside /api and /apis, is a non-resource request whose verb is
the lower-cased method. Resource verbs come from the method (POST create,
GET/HEAD get, PUT update, PATCH patch, DELETE delete); a GET or DELETE without
a name is a list/watch or a deletecollection, and a ``metadata.name=``
field selector names the one object a list or watch is about.

Paths are read strictly, from the raw (still percent-encoded) path: an encoded
slash, a NUL and a ``.`` or ``..`` segment are refused (400), an empty segment
inside the path finds nothing (404), and a namespace or name that could not be
a path segment (it contains ``/`` or ``%``, or is ``.`` or ``..``) is a 400, as
upstream's key functions answer it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from ..api import errors
from ..api.selectors import is_path_segment_name

API_PREFIXES = ("api", "apis")
LEGACY_PREFIX = "api"
# Path segments after a namespace's name that are its own subresources, not a resource in it.
NAMESPACE_SUBRESOURCES = frozenset(("status", "finalize"))
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
                 "DELETE": "delete"}


@dataclass(slots=True)
class RequestInfo:
    verb: str
    path: str  # decoded, without a trailing slash ("/" for the root)
    is_resource: bool = False
    api_prefix: str = ""  # "api" or "apis" for resource requests
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    # The path's parts from the resource on: (resource, name, subresource, ...).
    parts: tuple[str, ...] = ()
    # A list's or watch's field selector, as sent: authorizers may allow a list limited by it.
    field_selector: str = ""

    @property
    def segments(self) -> tuple[str, ...]:
        """The decoded path's segments ("/api/v1/pods" -> ("api", "v1", "pods"))."""
        return tuple(self.path.split("/")[1:]) if self.path != "/" else ()


def not_found() -> errors.StatusError:
    return errors.StatusError(404, "NotFound", "the server could not find the requested resource")


def split_path(raw_path: str) -> list[str]:
    """The decoded segments of a raw path, refusing what could give it a second meaning.

    One trailing slash is allowed ("/api/v1/pods/" is "/api/v1/pods"); an empty
    segment elsewhere ("/api/v1/namespaces//pods") matches no route.
    """
    if not raw_path.startswith("/"):
        raise errors.bad_request(f"the request path {raw_path!r} is not absolute")
    body = raw_path[1:]
    if body.endswith("/"):
        body = body[:-1]
    if not body:
        return []
    raw_segments = body.split("/")
    if "%" not in body and "\x00" not in body and "" not in raw_segments and "." not in raw_segments \
            and ".." not in raw_segments:
        return raw_segments  # the common case: nothing to decode or refuse
    out = []
    for raw in raw_segments:
        if not raw:
            raise not_found()
        try:
            seg = unquote(raw, errors="strict") if "%" in raw else raw
        except UnicodeDecodeError:
            raise errors.bad_request("the request path is not valid UTF-8") from None
        if "/" in seg:
            raise errors.bad_request("encoded slashes are not allowed in a request path")
        if "\x00" in seg:
            raise errors.bad_request("the request path may not contain NUL")
        if seg in (".", ".."):
            raise errors.bad_request(f"the request path may not contain a '{seg}' segment")
        out.append(seg)
    return out


def _selected_name(query: Mapping[str, str]) -> str:
    """The name a list or watch is limited to by an exact metadata.name field selector, or ""."""
    sel = query.get("fieldSelector") or ""
    if "metadata.name" not in sel:
        return ""
    for term in sel.split(","):
        key, sep, value = term.partition("=")
        if sep and key.strip() == "metadata.name":
            value = (value[1:] if value.startswith("=") else value).strip()  # "==" is "="
            return value if value and not is_path_segment_name(value) else ""
    return ""


def _watch_requested(query: Mapping[str, str]) -> bool:
    v = query.get("watch")
    return v is not None and v.lower() not in ("false", "0")


def parse(method: str, raw_path: str, query: Mapping[str, str]) -> RequestInfo:
    """The RequestInfo of one request; StatusError (400/404) for a path that may not be served."""
    segs = split_path(raw_path)
    if "%" in raw_path or not segs:
        path = "/" + "/".join(segs)
    else:
        path = raw_path[:-1] if raw_path.endswith("/") else raw_path
    nonresource = RequestInfo(verb=method.lower(), path=path)
    if len(segs) < 3 or segs[0] not in API_PREFIXES:
        return nonresource
    prefix = segs[0]
    rest = segs[1:]
    group = ""
    if prefix != LEGACY_PREFIX:
        if len(rest) < 3:
            return nonresource
        group, rest = rest[0], rest[1:]
    version, rest = rest[0], rest[1:]
    watch_prefix = rest[0] == "watch"
    if watch_prefix:
        if len(rest) < 2:
            raise errors.bad_request(f"unable to determine kind and namespace from url {path}")
        verb = "watch"
        rest = rest[1:]
    else:
        verb = _METHOD_VERBS.get(method, "")
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    parts = tuple(rest)
    resource = parts[0]
    name = parts[1] if len(parts) > 1 else ""
    subresource = parts[2] if len(parts) > 2 else ""
    if "%" in raw_path:
        # Only a decoded segment can hold what a name may not (split_path refused the rest).
        for what, value in (("Namespace", namespace), ("Name", name)):
            problems = is_path_segment_name(value) if value else []
            if problems:
                raise errors.bad_request(f'{what} parameter invalid: "{value}": {";".join(problems)}')
    if verb == "get" and not name:
        verb = "watch" if _watch_requested(query) else "list"
        name = _selected_name(query)
    elif verb == "get" and _watch_requested(query):
        # A named GET with watch=true is served as a watch of that object.
        verb = "watch"
    elif verb == "watch" and not name:
        name = _selected_name(query)
    if verb == "delete" and not name:
        verb = "deletecollection"
    selector = query.get("fieldSelector") or "" if verb in ("list", "watch", "deletecollection") else ""
    # Positional: keyword construction costs twice as much, on every request.
    return RequestInfo(verb, path, True, prefix, group, version, namespace, resource, subresource, name, parts,
                       selector)
