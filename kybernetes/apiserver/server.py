"""The API server: routing, discovery, OpenAPI and content negotiation over the REST storage.

``APIServer.handle`` takes a transport-independent Request (see request.py)
and returns a Response; the HTTPS front door (http.py) and the client's
in-process transport both call it. It runs the request chain (chain.py:
request info, authentication, impersonation, authorization, body), whose last
step is ``_route``. Paths follow upstream exactly:
/api/v1/namespaces/{ns}/{resource}/{name}/{subresource} and
/apis/{group}/{version}/..., plus /api, /apis, /version, /openapi/v2,
/openapi/v3 and the health endpoints.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .. import __version__
from ..api import apply as ssa
from ..api import errors, openapi_pb
from ..api.errors import StatusError
from ..api.kinds import Kind, Registry, builtin_registry
from ..api.schema import ServedResource, get_schema
from ..api.selectors import field_set
from ..storage.base import Compactor, Store
from . import chain, eviction, proxy, tables
from . import authentication
from . import authorization as authz_api
from . import serviceaccounts as sa_api
from .bootstrappolicy import reconcile_bootstrap_policy
from .endpoints import KubernetesEndpoints
from .escalation import EscalationCheck
from .limitranger import LimitRanger
from .nodeauthorizer import NodeAuthorizer
from .podsecurity import PodSecurity
from .quota import QuotaAdmission
from .noderestriction import NodeRestriction
from .rbac import RBACAuthorizer
from .metrics import Metrics
from . import metrics as metrics_api
from .admission import Admission
from .audit import Audit
from .ipalloc import DEFAULT_SERVICE_CIDR, kubernetes_service_ip, parse_cidrs
from .request import Request, Response
from .requestinfo import RequestInfo, not_found
from .rest import REST, Call, ListOptions, decode_body
from .watchcache import WatchCache

log = logging.getLogger("kybernetes.apiserver")

KUBE_MINOR = "32"
BOOT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
JSON = "application/json"


def _status_ok(details: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details:
        body["details"] = details
    return orjson.dumps(body)


# API groups served by code of their own rather than by REST storage.
_OWN_GROUPS = frozenset((sa_api.GROUP, authz_api.GROUP, metrics_api.GROUP))


class APIServer:
    def __init__(self, store: Store, *, registry: Registry | None = None,
                 service_cidr: str | Sequence[str] = DEFAULT_SERVICE_CIDR,
                 advertise: str = "127.0.0.1:6443", watch_cache_window: int = 10000,
                 bookmark_interval: float = 30.0, service_account_key: bytes | None = None,
                 service_account_admission: bool = False, authorization_mode: str = "AlwaysAllow",
                 audit: Audit | None = None, pod_security: Mapping[str, Any] | None = None):
        """service_cidr: the Service address range, one CIDR or a dual-stack IPv4,IPv6 pair ("a,b" or a
        list, the primary family first); ValueError if malformed;
        watch_cache_window: events kept per resource for watches to resume from;
        bookmark_interval: seconds of quiet after which a watch asking for bookmarks gets one;
        service_account_key: PEM private key signing service account tokens (a per-process one if None);
        service_account_admission: default and check pods' service accounts and mount their tokens
        (needs a controller manager that gives every namespace its default service account);
        authorization_mode: "RBAC" (system:masters may do anything, everyone else what Roles and
        bindings grant) or "AlwaysAllow" (every authenticated request; anonymous ones only reach the
        public paths); ValueError for anything else;
        audit: records requests as its policy says (audit.py); stopped by the caller;
        pod_security: PodSecurity's keyword arguments (its defaults and exemptions), as
        admissionconfig.pod_security_options makes them from a PodSecurityConfiguration."""
        self.store = store
        self.registry = registry or builtin_registry()
        # The parsed ranges, primary first; service_cidr is their canonical "a,b" spelling.
        self.service_cidrs = parse_cidrs(service_cidr)
        self.service_cidr = ",".join(str(n) for n in self.service_cidrs)
        self.advertise = advertise
        self.cache = WatchCache(store, window=watch_cache_window, fields_for=self._fields_for)
        self.admission = Admission(self.cache, self.service_cidrs, service_accounts=service_account_admission)
        self.service_accounts = sa_api.ServiceAccountTokens(store, self.cache, self.registry,
                                                            key_pem=service_account_key)
        self.rest = REST(store, self.cache, self.registry, self.admission, bookmark_interval=bookmark_interval)
        # Who may do what (authorization.py, rbac.py); the RBAC objects' own writes are checked for
        # escalation at admission (escalation.py).
        self.authorization_mode = authorization_mode
        self.rbac: RBACAuthorizer | None = None
        self.authorizer: authz_api.Authorizer
        self.node_authorizer: NodeAuthorizer | None = None
        if authorization_mode == "RBAC":
            # As upstream's --authorization-mode=Node,RBAC: nodes first, then Roles and bindings.
            self.rbac = RBACAuthorizer(self.cache, self.registry)
            self.node_authorizer = NodeAuthorizer(self.cache)
            self.authorizer = authz_api.Superusers(authz_api.Union(self.node_authorizer, self.rbac))
            self.admission.escalation = EscalationCheck(self.rbac, self.authorizer, self.cache)
            self.admission.node_restriction = NodeRestriction()
        elif authorization_mode == "AlwaysAllow":
            self.authorizer = authz_api.AlwaysAllow()
        else:
            raise ValueError(f"unknown authorization mode {authorization_mode!r} (RBAC or AlwaysAllow)")
        # Always on, as upstream's defaults: they change nothing until a namespace label, a
        # LimitRange or a ResourceQuota asks for it.
        self.admission.pod_security = PodSecurity(**(pod_security or {}))
        self.admission.limit_ranger = LimitRanger(self.cache)
        self.admission.quota = QuotaAdmission(self.cache, self._write_quota_status)
        self.schema = get_schema()
        self._discovery: dict[str, bytes] = {}
        self._openapi: dict[str, bytes] = {}
        self.started = False
        self._compactor: asyncio.Task | None = None
        self.kubernetes_endpoints: KubernetesEndpoints | None = None
        # How the API server reaches kubelets (logs, exec, attach, port-forward); set by kyb server.
        self.kubelet_client: proxy.KubeletClient | None = None
        self.metrics = Metrics(self)
        self.start_time = time.time()
        self.authenticator = authentication.Authenticator(self)
        self.audit = audit
        # Every request's way through the server, in order (see chain.py).
        filters: list[chain.Filter] = [chain.with_request_info]
        if audit is not None:
            filters.append(audit.failed_authentication)
        filters.append(chain.Authenticate(self, self.authenticator))
        if audit is not None:
            filters.append(audit)
        filters += [chain.Impersonate(self), chain.Authorize(self), chain.read_body]
        self.chain = chain.build(filters, self._route)

    async def _write_quota_status(self, quota: dict) -> dict:
        """ResourceQuota admission's charge: the quota's status, guarded by its resourceVersion."""
        meta = quota["metadata"]
        kind = self.registry.by_resource("", "v1", "resourcequotas")
        _, raw = await self.rest.update(kind, meta["namespace"], meta["name"], quota, Call(), subresource="status")
        return orjson.loads(raw)

    def _fields_for(self, prefix: str):
        for k in self.registry.kinds:
            if k.storage_prefix == prefix:
                kind_name = k.kind

                def fn(obj: dict, _k=kind_name) -> dict[str, str]:
                    return field_set(_k, obj)
                return fn
        return None

    async def start(self, compact_interval: float = 300.0) -> None:
        await self.cache.start()
        await self._bootstrap()
        self._compactor = asyncio.create_task(Compactor(self.store, compact_interval).run(), name="compactor")
        # The `kubernetes` Service's endpoints are this server's address, as kube-apiserver keeps them.
        self.kubernetes_endpoints = KubernetesEndpoints(self)
        await self.kubernetes_endpoints.start()
        self.started = True

    async def stop(self) -> None:
        if self.kubernetes_endpoints is not None:
            await self.kubernetes_endpoints.stop()
        if self.kubelet_client is not None:
            await self.kubelet_client.close()
        if self._compactor is not None:
            self._compactor.cancel()
            try:
                await self._compactor
            except asyncio.CancelledError:
                pass
        for c in self.cache.caches.values():
            for w in list(c.watchers):
                w.close()
        await self.cache.stop()

    async def _bootstrap(self) -> None:
        nsk = self.registry.by_resource("", "v1", "namespaces")
        for ns in BOOT_NAMESPACES:
            if await self.store.get(nsk.key(None, ns)) is None:
                try:
                    await self.rest.create(nsk, None, {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": ns}})
                except StatusError as e:
                    if e.code != 409:
                        raise
        svck = self.registry.by_resource("", "v1", "services")
        if await self.store.get(svck.key("default", "kubernetes")) is None:
            ip = kubernetes_service_ip(self.service_cidr)
            port = int(self.advertise.rsplit(":", 1)[1]) if ":" in self.advertise else 6443
            try:
                await self.rest.create(svck, "default", {
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "kubernetes", "namespace": "default",
                                 "labels": {"component": "apiserver", "provider": "kubernetes"}},
                    "spec": {"clusterIP": ip, "type": "ClusterIP", "sessionAffinity": "None",
                             "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}})
            except StatusError as e:
                if e.code != 409:
                    raise
        if self.rbac is not None:
            # The default roles and bindings, as upstream's rbac/bootstrap-roles post-start hook makes them.
            await reconcile_bootstrap_policy(self)

    # ------------------------------------------------------------ dispatch

    async def handle(self, req: Request) -> Response:
        try:
            return await self.chain(req)
        except StatusError as e:
            return Response(e.code, e.to_bytes())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must never take the server down
            log.exception("internal error serving %s %s", req.method, req.path)
            err = errors.internal(str(e))
            return Response(err.code, err.to_bytes())

    async def _route(self, req: Request) -> Response:
        info = req.info
        assert info is not None, "the request info filter runs first"
        if info.is_resource and info.group not in _OWN_GROUPS:
            return await self._resource(req, info)
        segs = info.segments
        if len(segs) >= 2 and segs[0] == "apis":
            # Groups served by code of their own rather than by REST storage.
            group = segs[1]
            if group == sa_api.GROUP:
                return await self._authentication(req, list(segs[2:]))
            if group == authz_api.GROUP:
                return await self._authorization(req, list(segs[2:]))
            if group == metrics_api.GROUP:
                if len(segs) == 2:
                    return self._json({"kind": "APIGroup", "apiVersion": "v1", **metrics_api.group_entry()})
                if segs[2] != metrics_api.VERSION:
                    raise not_found()
                return await self.metrics.handle(req, list(segs[3:]))
        if info.is_resource:
            return await self._resource(req, info)
        path = info.path
        if segs[:1] == ("api",):
            if len(segs) == 1:
                return self._json(self._api_versions())
            if segs[1] != "v1":
                raise not_found()
            return self._resource_list_response("", "v1")
        if segs[:1] == ("apis",):
            if len(segs) == 1:
                return self._cached("apis", self._api_groups)
            if len(segs) == 2:
                g = self._group(segs[1])
                if g is None:
                    raise not_found()
                return self._json(g)
            return self._resource_list_response(segs[1], segs[2])
        if chain.is_health(path):
            return self._health(req, path)
        if path == "/version":
            return self._json(version_info())
        if path == "/.well-known/openid-configuration":
            return self._json(self.service_accounts.openid_configuration())
        if path == "/openid/v1/jwks":
            return Response(200, orjson.dumps(self.service_accounts.jwks()), "application/jwk-set+json")
        if path == "/openapi/v2":
            accept = req.headers.get("accept", "")
            if openapi_pb.wants_protobuf(accept):
                # kubectl before 1.29 reads only this protobuf form for apply and explain.
                pb_doc = await asyncio.to_thread(openapi_pb.cached_openapi_v2_protobuf, self._openapi_v2())
                if pb_doc is not None:
                    return Response(200, pb_doc, openapi_pb.CONTENT_TYPE)
            if "protobuf" in accept and "json" not in accept:
                # No kubectl with the gnostic descriptors on this machine: kubectl falls back (and
                # 1.29+ prefers /openapi/v3 anyway).
                return Response(406, errors.StatusError(406, "NotAcceptable", "only application/json is "
                                                        "served").to_bytes(), JSON)
            return Response(200, self._openapi_v2(), JSON)
        if path.startswith("/openapi/v3"):
            return self._openapi_v3(path)
        if path == "/":
            return self._json({"paths": sorted(["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz",
                                                "/version", "/openapi/v2", "/openapi/v3"]
                                               + [f"/apis/{g}" for g in self.registry.groups() if g])})
        raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")

    def _json(self, obj: Any, status: int = 200) -> Response:
        return Response(status, orjson.dumps(obj), JSON)

    def _cached(self, key: str, build) -> Response:
        """A discovery document, encoded once; 404 when build() finds none."""
        b = self._discovery.get(key)
        if b is None:
            doc = build()
            if doc is None:
                raise not_found()
            b = self._discovery[key] = orjson.dumps(doc)
        return Response(200, b, JSON)

    def _health(self, req: Request, path: str) -> Response:
        checks = ["ping", "log", "etcd", "poststarthook/start-kube-apiserver-informers"]
        ok = self.started
        if path.endswith("/ping"):
            return Response(200, b"ok", "text/plain; charset=utf-8")
        if "verbose" in req.query:
            lines = [f"[{'+' if ok or c == 'ping' else '-'}]{c} {'ok' if ok or c == 'ping' else 'failed'}"
                     for c in checks]
            name = path.strip("/").split("/")[0]
            lines.append(f"{name} check {'passed' if ok else 'failed'}")
            return Response(200 if ok else 500, ("\n".join(lines) + "\n").encode(), "text/plain; charset=utf-8")
        return Response(200 if ok else 500, b"ok" if ok else b"not ready", "text/plain; charset=utf-8")

    # ------------------------------------------------------------ discovery

    def _api_versions(self) -> dict:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.advertise}]}

    def _group(self, group: str) -> dict | None:
        versions = self.registry.groups().get(group)
        if not versions or not group:
            return None
        vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0]}

    def _api_groups(self) -> dict:
        groups = [self._group(g) for g in self.registry.groups() if g]
        groups.append(sa_api.group_entry())
        groups.append(authz_api.group_entry())
        groups.append(metrics_api.group_entry())
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> dict | None:
        kinds = self.registry.in_group_version(group, version)
        if not kinds:
            return None
        res = []
        for k in kinds:
            entry: dict[str, Any] = {"name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
                                     "kind": k.kind, "verbs": list(k.verbs)}
            if k.short_names:
                entry["shortNames"] = list(k.short_names)
            if k.categories:
                entry["categories"] = list(k.categories)
            entry["storageVersionHash"] = hashlib.sha256(
                f"{k.group}/{k.stored_api_version}/{k.kind}".encode()).digest()[:8].hex()
            res.append(entry)
            for sub in k.subresources:
                s: dict[str, Any] = {"name": f"{k.plural}/{sub}", "singularName": "", "namespaced": k.namespaced,
                                     "kind": k.kind, "verbs": ["get", "patch", "update"]}
                if sub == "scale":
                    s.update(group="autoscaling", version="v1", kind="Scale")
                elif sub == "binding":
                    s.update(kind="Binding", verbs=["create"])
                elif sub == "eviction":
                    s.update(group="policy", version="v1", kind="Eviction", verbs=["create"])
                elif sub == "log":
                    s.update(verbs=["get"])
                elif sub in ("exec", "attach", "portforward"):
                    s.update(kind={"exec": "PodExecOptions", "attach": "PodAttachOptions",
                                   "portforward": "PodPortForwardOptions"}[sub], verbs=["create", "get"])
                elif sub == "finalize":
                    s.update(verbs=["update"])
                elif sub == "token":
                    s.update(group=sa_api.GROUP, version=sa_api.VERSION, kind="TokenRequest", verbs=["create"])
                res.append(s)
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res}

    # ------------------------------------------------------------ openapi

    def served_resources(self) -> list[ServedResource]:
        return [ServedResource(k.group, k.version, k.kind, k.plural, k.namespaced, list(k.verbs),
                               list(k.subresources)) for k in self.registry.kinds]

    def _openapi_v2(self) -> bytes:
        b = self._openapi.get("v2")
        if b is None:
            b = orjson.dumps(self.schema.openapi_v2(self.served_resources()))
            self._openapi["v2"] = b
        return b

    def _openapi_v3(self, path: str) -> Response:
        served = self.served_resources()
        if path.rstrip("/") == "/openapi/v3":
            b = self._openapi.get("v3")
            if b is None:
                b = orjson.dumps(self.schema.openapi_v3_index(served))
                self._openapi["v3"] = b
            return Response(200, b, JSON)
        rel = path[len("/openapi/v3/"):]
        b = self._openapi.get(rel)
        if b is None:
            parts = rel.split("/")
            if parts[0] == "api" and len(parts) == 2:
                group, version = "", parts[1]
            elif parts[0] == "apis" and len(parts) == 3:
                group, version = parts[1], parts[2]
            else:
                raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
            if not self.registry.in_group_version(group, version):
                raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
            b = orjson.dumps(self.schema.openapi_v3_group_version(group, version, served))
            self._openapi[rel] = b
        return Response(200, b, JSON, {"Cache-Control": "public, immutable", "Etag": '"' + hashlib.sha256(
            b).hexdigest()[:32] + '"'})

    # ------------------------------------------------------------ resources

    def _resource_list_response(self, group: str, version: str) -> Response:
        return self._cached(f"rl/{group}/{version}", lambda: self._resource_list(group, version))

    async def _resource(self, req: Request, info: RequestInfo) -> Response:
        kind = self.registry.by_resource(info.group, info.version, info.resource)
        parts = info.parts
        if kind is None or len(parts) > 3:
            raise not_found()
        name = parts[1] if len(parts) > 1 else None
        sub = info.subresource
        ns: str | None = info.namespace or None
        if not kind.namespaced:
            # Only a Namespace itself is reached through /namespaces/{name}.
            if ns is not None and name != ns:
                raise not_found()
            ns = None
        elif name is not None and ns is None:
            raise not_found()
        if sub and sub not in kind.subresources:
            raise not_found()
        query = dict(req.query)
        if info.verb == "watch":
            query["watch"] = "true"
        m = req.method
        call = Call(req.user, req.groups, query,
                    manager=ssa.manager_name(query.get("fieldManager"), req.headers.get("user-agent", "")))
        warnings = call.warnings
        accept = req.headers.get("accept", "")
        if query.get("includeObject"):
            # Table rows carry the whole object when asked (kubectl get --sort-by does).
            accept += ";includeObject=" + query["includeObject"]
        ct = req.headers.get("content-type", "")
        if name is None:
            if m == "GET":
                opts = ListOptions(query)
                if opts.watch:
                    return await self._watch(kind, ns, opts, accept)
                return await self._list(kind, ns, opts, accept)
            if m == "POST":
                body = decode_body(req.body, ct)
                code, raw = await self.rest.create(kind, ns, body, call)
                return self._obj_response(code, raw, warnings, kind, accept)
            if m == "DELETE":
                raw = await self.rest.delete_collection(kind, ns, req.body, call)
                return Response(200, raw, JSON)
            raise errors.method_not_allowed()
        if not sub:
            if m == "GET":
                if query.get("watch") == "true":
                    opts = ListOptions({**query, "fieldSelector": f"metadata.name={name}"})
                    return await self._watch(kind, ns, opts, accept)
                raw = await self.rest.get(kind, ns, name)
                return self._obj_response(200, raw, warnings, kind, accept)
            if m == "PUT":
                body = decode_body(req.body, ct)
                code, raw = await self.rest.update(kind, ns, name, body, call)
                return self._obj_response(code, raw, warnings, kind, accept)
            if m == "PATCH":
                code, raw = await self.rest.patch(kind, ns, name, req.body, ct, call)
                return self._obj_response(code, raw, warnings, kind, accept)
            if m == "DELETE":
                code, raw = await self.rest.delete(kind, ns, name, req.body, call)
                return self._obj_response(code, raw, warnings, kind, accept)
            raise errors.method_not_allowed()
        if sub in ("status", "approval"):
            if m == "GET":
                return self._obj_response(200, await self.rest.get(kind, ns, name), warnings, kind, accept)
            if m == "PUT":
                body = decode_body(req.body, ct)
                code, raw = await self.rest.update(kind, ns, name, body, call, sub)
                return self._obj_response(code, raw, warnings, kind, accept)
            if m == "PATCH":
                code, raw = await self.rest.patch(kind, ns, name, req.body, ct, call, sub)
                return self._obj_response(code, raw, warnings, kind, accept)
            raise errors.method_not_allowed()
        if sub == "scale":
            if m == "GET":
                return self._json(await self.rest.get_scale(kind, ns, name))
            if m in ("PUT", "PATCH"):
                return self._json(await self.rest.update_scale(kind, ns, name, req.body, ct, m, call))
            raise errors.method_not_allowed()
        if sub == "binding" and m == "POST":
            await self.rest.bind(kind, ns or "", name, decode_body(req.body, ct))
            return Response(201, _status_ok(), JSON)
        if sub == "log" and m == "GET":
            return await proxy.pod_log(self, ns or "", name, query)
        if sub in proxy.UPGRADE_SUBRESOURCES:
            # Only an HTTP upgrade, which the front door hands over as req.upgrade, carries these streams.
            if req.upgrade is not None:
                native = await req.upgrade(req.user, req.groups)
                if native is not None:
                    return Response(101, native=native)
            raise proxy.upgrade_required()
        if sub == "eviction" and m == "POST":
            code, raw = await eviction.evict(self.rest, kind, ns or "", name, decode_body(req.body, ct), call)
            return Response(code, raw, JSON)
        if sub == "token" and m == "POST":
            body = decode_body(req.body, ct)
            if self.admission.node_restriction is not None and self.node_authorizer is not None:
                self.admission.node_restriction.admit_token_request(call, ns or "", body,
                                                                    self.node_authorizer.pods_on)
            code, raw = await self.service_accounts.token_request(ns or "", name, body)
            return Response(code, raw, JSON)
        if sub == "finalize" and m == "PUT":
            code, raw = await self.rest.finalize_namespace(kind, name, decode_body(req.body, ct))
            return Response(code, raw, JSON)
        raise errors.method_not_allowed()

    async def _authentication(self, req: Request, segs: list[str]) -> Response:
        """authentication.k8s.io: TokenReview and SelfSubjectReview, computed, never stored."""
        if not segs:
            return self._json({"kind": "APIGroup", "apiVersion": "v1", **sa_api.group_entry()})
        if segs[0] != sa_api.VERSION or len(segs) > 2:
            raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        if len(segs) == 1:
            return self._json(sa_api.resource_list())
        if segs[1] not in ("tokenreviews", "selfsubjectreviews"):
            raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        if req.method != "POST":
            raise errors.method_not_allowed()
        body = decode_body(req.body, req.headers.get("content-type", ""))
        if segs[1] == "tokenreviews":
            code, raw = await self.service_accounts.token_review(body)
        else:
            code, raw = sa_api.self_subject_review(req.user, req.groups)
        return Response(code, raw, JSON)

    async def _authorization(self, req: Request, segs: list[str]) -> Response:
        """authorization.k8s.io: access reviews, computed by the authorizer, never stored."""
        not_found = errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        if not segs:
            return self._json({"kind": "APIGroup", "apiVersion": "v1", **authz_api.group_entry()})
        if segs[0] != authz_api.VERSION:
            raise not_found
        if len(segs) == 1:
            return self._json(authz_api.resource_list())
        namespace = None
        rest = segs[1:]
        if len(rest) == 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) != 1 or rest[0] not in authz_api.REVIEWS or \
                authz_api.REVIEWS[rest[0]][1] != (namespace is not None):
            raise not_found
        if req.method != "POST":
            raise errors.method_not_allowed()
        body = decode_body(req.body, req.headers.get("content-type", ""))
        code, raw = authz_api.review(self.authorizer, rest[0], body, req.user, req.groups, namespace)
        return Response(code, raw, JSON)

    def _obj_response(self, code: int, raw: bytes, warnings: list[str], kind: Kind, accept: str) -> Response:
        headers = {}
        if warnings:
            headers["Warning"] = ", ".join('299 - "%s"' % w.replace('"', '\\"') for w in warnings)
        if "as=Table" in accept:
            obj = orjson.loads(raw)
            return Response(code, orjson.dumps(tables.table(kind.group, kind.kind, [obj],
                                                            include_object=_include(accept))), JSON, headers)
        if "as=PartialObjectMetadata" in accept:
            obj = orjson.loads(raw)
            return Response(code, orjson.dumps({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": obj.get("metadata", {})}), JSON, headers)
        return Response(code, raw, JSON, headers)

    async def _list(self, kind: Kind, ns: str | None, opts: ListOptions, accept: str) -> Response:
        if "as=Table" in accept:
            objs, lm = await self.rest.list_objects(kind, ns, opts)
            t = tables.table(kind.group, kind.kind, objs, include_object=_include(accept), list_meta=lm)
            return Response(200, orjson.dumps(t), JSON)
        if "as=PartialObjectMetadataList" in accept:
            objs, lm = await self.rest.list_objects(kind, ns, opts)
            items = [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
                     for o in objs]
            return self._json({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                               "metadata": lm, "items": items})
        return Response(200, await self.rest.list_bytes(kind, ns, opts), JSON)

    async def _watch(self, kind: Kind, ns: str | None, opts: ListOptions, accept: str) -> Response:
        stream = await self.rest.watch(kind, ns, opts)
        if "as=Table" in accept:
            return Response(200, b"", JSON, {}, _table_events(kind, stream, _include(accept)))
        if "as=PartialObjectMetadata" in accept:
            return Response(200, b"", JSON, {}, _metadata_events(stream))
        return Response(200, b"", JSON, {}, stream)


async def _table_events(kind: Kind, stream, include: str):
    try:
        async for chunk in stream:
            out = []
            for line in chunk.splitlines():
                if not line:
                    continue
                ev = orjson.loads(line)
                if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    ev["object"] = tables.table(kind.group, kind.kind, [ev["object"]], include_object=include)
                out.append(orjson.dumps(ev) + b"\n")
            yield b"".join(out)
    finally:
        stream.close()


async def _metadata_events(stream):
    """Watch events carrying only metadata (PartialObjectMetadata), one event per item."""
    try:
        async for line in stream:
            ev = orjson.loads(line)
            obj = ev.get("object") or {}
            if ev.get("type") in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                ev["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                "metadata": obj.get("metadata") or {}}
            yield orjson.dumps(ev) + b"\n"
    finally:
        await stream.aclose()


def _include(accept: str) -> str:
    i = accept.rfind(";includeObject=")
    if i < 0:
        return "Metadata"
    value = accept[i + len(";includeObject="):]
    if value not in ("None", "Metadata", "Object"):
        raise errors.bad_request(f"includeObject: unsupported value {value!r}: must be None, Metadata or Object")
    return value


def version_info() -> dict:
    import platform
    return {"major": "1", "minor": KUBE_MINOR, "gitVersion": f"v1.{KUBE_MINOR}.0-kyb.{__version__}",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "python" + platform.python_version(), "compiler": "cpython",
            "platform": f"{platform.system().lower()}/{platform.machine()}"}

