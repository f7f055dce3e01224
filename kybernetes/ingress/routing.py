"""The ingress route table: which backend answers a (host, path), as pure functions of API objects.

`ingress_is_ours` decides which Ingresses this controller serves: those whose
spec.ingressClassName (or the deprecated `kubernetes.io/ingress.class` annotation)
names an IngressClass with our spec.controller, and those naming no class when one
of our classes is the default (annotation `ingressclass.kubernetes.io/is-default-class:
"true"`).

`build_table` turns those Ingresses into a `RouteTable`, resolving each backend
(a Service port, by number or name) to the ready endpoints of its EndpointSlices
with `resolve_backend`, so that a request is answered from the table alone. The
controller rebuilds the whole table from its informer caches and swaps it in one
assignment; a request in flight keeps the table it started with.

Matching follows the Ingress API reference and the ingress-controller conformance
features:

* Hosts: an exact host (case-insensitive, the request's port and a trailing dot
  ignored) first, then a `*.suffix` wildcard, which covers exactly one DNS label
  (`*.foo.com` matches `bar.foo.com`, not `foo.com` nor `baz.bar.foo.com`), then
  rules without a host. A host whose paths do not match falls through to the less
  specific ones, as Gateway API's HTTPRoute precedence does; `spec.defaultBackend`
  comes last, then a 404.
* Paths: the longest matching path wins, and Exact beats Prefix on a tie. Exact is
  the request path as it is (case-sensitive; `/foo` does not match `/foo/`).
  Prefix compares whole `/`-separated elements, empty ones ignored, so `/foo`
  matches `/foo`, `/foo/` and `/foo/bar` but not `/foobar`, and a trailing slash on
  either side does not matter. ImplementationSpecific is treated as Prefix (an empty
  path is `/`).
* Conflicts (the same host, path and type in several Ingresses, several default
  backends) go to the oldest Ingress (creationTimestamp, then namespace/name), as
  ingress-nginx resolves them.

Per-Ingress options come from annotations under `ingress.kubernetes.io/` or
`nginx.ingress.kubernetes.io/`: `ssl-redirect` / `force-ssl-redirect` ("true":
plain HTTP gets a 308 to https), `proxy-connect-timeout`, `proxy-read-timeout` and
`proxy-send-timeout` (seconds, as ingress-nginx's).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
Endpoint = tuple[str, int]

CONTROLLER_NAME = "kybernetes.io/ingress"
DEFAULT_CLASS_NAME = "kybernetes"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ANNOTATION_PREFIXES = ("ingress.kubernetes.io/", "nginx.ingress.kubernetes.io/")

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_SEND_TIMEOUT = 60.0


# ---------------------------------------------------------------------- which Ingresses are ours

def our_classes(classes: Iterable[Obj], controller: str = CONTROLLER_NAME) -> tuple[set[str], bool]:
    """(names of the IngressClasses naming `controller`, whether one of them is the default)."""
    names, default = set(), False
    for c in classes:
        if ((c.get("spec") or {}).get("controller")) != controller:
            continue
        meta = c.get("metadata") or {}
        names.add(meta.get("name") or "")
        if ((meta.get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) or "").lower() == "true":
            default = True
    return names, default


def ingress_is_ours(ing: Obj, names: set[str], default: bool) -> bool:
    """Whether the Ingress names one of our classes, or no class while ours is the default."""
    cls = (ing.get("spec") or {}).get("ingressClassName")
    if cls:
        return cls in names
    ann = ((ing.get("metadata") or {}).get("annotations") or {}).get(CLASS_ANNOTATION)
    if ann:
        return ann in names
    return default


def _age(ing: Obj) -> tuple[str, str, str]:
    meta = ing.get("metadata") or {}
    return meta.get("creationTimestamp") or "", meta.get("namespace") or "", meta.get("name") or ""


def oldest_first(ingresses: Iterable[Obj]) -> list[Obj]:
    return sorted(ingresses, key=_age)


# ---------------------------------------------------------------------- options from annotations

def annotation(ing: Obj, name: str) -> str | None:
    """The value of `name` under either annotation prefix (ingress.kubernetes.io/ first)."""
    anns = (ing.get("metadata") or {}).get("annotations") or {}
    for prefix in ANNOTATION_PREFIXES:
        v = anns.get(prefix + name)
        if v is not None:
            return str(v)
    return None


def _seconds(value: str | None, default: float) -> float:
    if value is None:
        return default
    v = value.strip().lower().removesuffix("s")
    try:
        f = float(v)
    except ValueError:
        return default
    return f if f > 0 else default


@dataclass(frozen=True)
class Options:
    """What an Ingress's annotations change about the requests it routes."""

    ssl_redirect: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT


def ingress_options(ing: Obj, defaults: Options = Options()) -> Options:
    redirect = any((annotation(ing, a) or "").strip().lower() == "true"
                   for a in ("ssl-redirect", "force-ssl-redirect"))
    return Options(
        ssl_redirect=redirect,
        connect_timeout=_seconds(annotation(ing, "proxy-connect-timeout"), defaults.connect_timeout),
        read_timeout=_seconds(annotation(ing, "proxy-read-timeout"), defaults.read_timeout),
        send_timeout=_seconds(annotation(ing, "proxy-send-timeout"), defaults.send_timeout),
    )


# ---------------------------------------------------------------------- backends

@dataclass(eq=False)
class Backend:
    """A Service port resolved to endpoints; `problem` says why there are none (a 503)."""

    key: str                                  # "namespace/service:port"
    endpoints: tuple[Endpoint, ...] = ()
    problem: str | None = None
    _next: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        # Round robin from a random start, so that the nodes' proxies do not all begin at the first.
        if self.endpoints:
            self._next = random.randrange(len(self.endpoints))

    def pick(self, n: int = 1) -> list[Endpoint]:
        """The next endpoint in turn, followed by up to n-1 others to try if it cannot be reached."""
        eps = self.endpoints
        count = len(eps)
        if not count:
            return []
        i = self._next
        self._next = (i + 1) % count
        if n == 1 or count == 1:
            return [eps[i]]
        return [eps[(i + k) % count] for k in range(min(n, count))]


def _ip(addr: str) -> bool:
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return False
    return True


def resolve_backend(namespace: str, backend: Obj | None, service: Obj | None,
                    slices: Sequence[Obj]) -> Backend:
    """The ready endpoints (pod IP, targetPort) of `backend` (an IngressBackend) in `namespace`.

    The Service port is found by number or name; the slices' port of the same name gives
    the endpoint port, as ingress-nginx connects to pods directly. Endpoints with
    conditions.ready unset count as ready (the API's meaning). An ExternalName Service is
    its external name at the port's number."""
    svc_ref = (backend or {}).get("service") or {}
    name = svc_ref.get("name") or ""
    port_ref = svc_ref.get("port") or {}
    want_num, want_name = port_ref.get("number"), port_ref.get("name")
    key = f"{namespace}/{name}:{want_num if want_num else want_name}"
    if not svc_ref:
        return Backend(key, problem="the backend is not a Service")
    if service is None:
        return Backend(key, problem=f'service "{namespace}/{name}" not found')
    spec = service.get("spec") or {}
    sport = None
    for p in spec.get("ports") or []:
        if (want_num and p.get("port") == want_num) or (want_name and p.get("name") == want_name):
            sport = p
            break
    if spec.get("type") == "ExternalName":
        ext = spec.get("externalName") or ""
        number = want_num or (sport or {}).get("port")
        if not ext or not number:
            return Backend(key, problem=f"ExternalName service {namespace}/{name} has no port {key}")
        return Backend(key, ((ext, int(number)),))
    if sport is None:
        return Backend(key, problem=f"service {namespace}/{name} has no port "
                                    f"{want_num if want_num else repr(want_name)}")
    if (sport.get("protocol") or "TCP") != "TCP":
        return Backend(key, problem=f"service {namespace}/{name} port is not TCP")
    port_name = sport.get("name") or ""
    eps: list[Endpoint] = []
    seen: set[Endpoint] = set()
    for sl in slices:
        if sl.get("addressType") not in ("IPv4", "IPv6"):
            continue
        target = None
        for sp in sl.get("ports") or []:
            if (sp.get("name") or "") == port_name and (sp.get("protocol") or "TCP") == "TCP":
                target = sp.get("port")
                break
        if not target:
            continue
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            for addr in (ep.get("addresses") or [])[:1]:  # addresses beyond the first are the same pod
                if not _ip(addr):
                    continue
                e = (addr, int(target))
                if e not in seen:
                    seen.add(e)
                    eps.append(e)
    if not eps:
        return Backend(key, problem=f"service {namespace}/{name} has no ready endpoints")
    eps.sort()
    return Backend(key, tuple(eps))


# ---------------------------------------------------------------------- the table

@dataclass(frozen=True, eq=False)
class Route:
    """Where a matched request goes and how: the backend, the Ingress it came from, its options."""

    backend: Backend
    ingress: str              # "namespace/name"
    options: Options


def normalize_host(host: str) -> str:
    """A Host header's host, lowercased, without port or trailing dot ("[::1]:80" -> "[::1]")."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    host = host.partition(":")[0]
    return host[:-1] if host.endswith(".") else host


def prefix_key(path: str) -> str:
    """A Prefix path as its elements joined by "/", empty ones dropped ("/aaa/bbb/" -> "aaa/bbb")."""
    return "/".join(s for s in path.split("/") if s)


class HostRoutes:
    """The paths of one host (or of the wildcard, or of rules without a host)."""

    __slots__ = ("exact", "max_depth", "prefix")

    def __init__(self) -> None:
        self.exact: dict[str, Route] = {}
        self.prefix: dict[str, Route] = {}
        self.max_depth = 0

    def add(self, path_type: str, path: str, route: Route) -> None:
        if path_type == "Exact":
            self.exact.setdefault(path, route)
            return
        key = prefix_key(path or "/")
        if key not in self.prefix:
            self.prefix[key] = route
            self.max_depth = max(self.max_depth, key.count("/") + 1 if key else 0)

    def match(self, path: str) -> Route | None:
        r = self.exact.get(path)
        if r is not None:
            return r
        prefix = self.prefix
        if not prefix:
            return None
        segs = [s for s in path.split("/") if s]
        for i in range(min(len(segs), self.max_depth), -1, -1):
            r = prefix.get("/".join(segs[:i]))
            if r is not None:
                return r
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.prefix)


class RouteTable:
    """Every served host's routes; `match(host, path)` is the whole lookup of a request."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostRoutes] = {}
        self.wildcards: dict[str, HostRoutes] = {}   # "*.foo.com" is under "foo.com"
        self.any = HostRoutes()
        self.default: Route | None = None
        self.ingresses: list[str] = []               # the Ingresses served, "namespace/name"

    def routes_for(self, host: str) -> HostRoutes:
        host = host.lower()
        if not host:
            return self.any
        if host.startswith("*."):
            return self.wildcards.setdefault(host[2:], HostRoutes())
        return self.hosts.setdefault(host, HostRoutes())

    def match(self, host: str, path: str) -> Route | None:
        """The route of a request: host is the Host header's (normalised here), path without query."""
        host = normalize_host(host)
        hr = self.hosts.get(host)
        if hr is not None and (r := hr.match(path)) is not None:
            return r
        if self.wildcards:
            first, dot, suffix = host.partition(".")
            if dot and first:
                hr = self.wildcards.get(suffix)
                if hr is not None and (r := hr.match(path)) is not None:
                    return r
        r = self.any.match(path)
        return r if r is not None else self.default


Resolver = Callable[[str, Obj | None], Backend]


def build_table(ingresses: Iterable[Obj], resolve: Resolver, defaults: Options = Options()) -> RouteTable:
    """The table for `ingresses` (already filtered to ours). `resolve(namespace, IngressBackend)`
    gives a Backend; it is asked once per distinct backend."""
    table = RouteTable()
    memo: dict[tuple[str, str], Backend] = {}

    def backend(ns: str, b: Obj | None) -> Backend:
        svc = (b or {}).get("service") or {}
        port = svc.get("port") or {}
        k = (ns, f"{svc.get('name')}:{port.get('number')}:{port.get('name')}:{bool(svc)}")
        got = memo.get(k)
        if got is None:
            got = memo[k] = resolve(ns, b)
        return got

    for ing in oldest_first(ingresses):
        meta = ing.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        ikey = f"{ns}/{meta.get('name')}"
        table.ingresses.append(ikey)
        opts = ingress_options(ing, defaults)
        spec = ing.get("spec") or {}
        if spec.get("defaultBackend") and table.default is None:
            table.default = Route(backend(ns, spec["defaultBackend"]), ikey, opts)
        for rule in spec.get("rules") or []:
            if not isinstance(rule, dict):
                continue
            paths = ((rule.get("http") or {}).get("paths")) or []
            if not paths:
                continue
            hr = table.routes_for(rule.get("host") or "")
            for p in paths:
                if not isinstance(p, dict):
                    continue
                hr.add(p.get("pathType") or "ImplementationSpecific", p.get("path") or "",
                       Route(backend(ns, p.get("backend")), ikey, opts))
    return table


def service_slices_index(slices: Iterable[Obj]) -> Mapping[str, list[Obj]]:
    """EndpointSlices by "namespace/service" (their kubernetes.io/service-name label)."""
    out: dict[str, list[Obj]] = {}
    for sl in slices:
        meta = sl.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc:
            out.setdefault(f"{meta.get('namespace')}/{svc}", []).append(sl)
    return out


def status_ingress(addresses: Iterable[str]) -> list[Obj]:
    """status.loadBalancer.ingress for the given addresses: IPs as `ip`, names as `hostname`."""
    out, seen = [], set()
    for a in addresses:
        if not a or a in seen:
            continue
        seen.add(a)
        out.append({"ip": a} if _ip(a) else {"hostname": a})
    return out
