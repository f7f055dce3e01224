"""The typed-by-URL client every component uses to read and write cluster state.

`Client` sits on a Transport and owns what the bytes mean: JSON encoding (orjson),
turning error responses into StatusError, the upstream URL layout and query
parameters, and discovery (kind -> plural/scope) so custom resources work as well
as built-in ones. `ResourceClient` is one resource type (e.g. apps/v1 deployments)
with the verbs; `Watch` is one open watch yielding (type, object) pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import orjson

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.request import Handler

from .transport import (
    EventStream,
    HTTPTransport,
    InProcessTransport,
    Transport,
    status_error_from_object,
    status_error_from_response,
)

if TYPE_CHECKING:
    from .informer import SharedInformers

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    # JSON is YAML, so an apply body can stay JSON under the YAML media type.
    "apply": "application/apply-patch+yaml",
}

_JSON = {"Content-Type": "application/json"}

Obj = dict[str, Any]


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _api_prefix(api_version: str) -> str:
    group, version = _split_api_version(api_version)
    return f"/api/{version}" if not group else f"/apis/{group}/{version}"


def _seg(value: str) -> str:
    return quote(value, safe="")


def _bool_query(query: dict[str, str], key: str, value: bool | None) -> None:
    if value is not None:
        query[key] = "true" if value else "false"


class Client:
    """Talks to one API server through a Transport; use resource() or for_kind() to address objects."""

    def __init__(self, transport: Transport, *, namespace: str | None = None):
        self.transport = transport
        # The namespace used when a namespaced call names none; for kubeconfig
        # transports it is the context's namespace, as kubectl does.
        self.namespace = namespace or getattr(transport, "namespace", None) or "default"
        self._discovery: dict[str, list[Obj]] = {}
        # Set by a process that runs many components on this client (the
        # controller manager) so they share one informer per resource.
        self.shared_informers: SharedInformers | None = None

    @classmethod
    def in_process(cls, handler: Handler, **kwargs: Any) -> Client:
        """A client calling the API server's handler directly (same process)."""
        return cls(InProcessTransport(handler, **kwargs))

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None, **kwargs: Any) -> Client:
        return cls(HTTPTransport.from_kubeconfig(path, context, **kwargs))

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ raw

    async def request(self, method: str, path: str, query: Mapping[str, str] | None = None,
                      body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        """One request; returns the decoded JSON answer, raises StatusError on a non-2xx status.

        `body` may be bytes (sent as is) or anything orjson can encode.
        """
        data: bytes | None
        if body is None or isinstance(body, (bytes, bytearray)):
            data = bytes(body) if body is not None else None
        else:
            data = orjson.dumps(body)
            headers = {**_JSON, **(headers or {})}
        status, _, raw = await self.transport.request(method, path, query, data, headers)
        if status >= 300:
            raise status_error_from_response(status, raw)
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw

    def resource(self, api_version: str, plural: str, namespaced: bool = True, *,
                 metadata_only: bool = False) -> ResourceClient:
        return ResourceClient(self, api_version, plural, namespaced, metadata_only=metadata_only)

    # ------------------------------------------------------------------ discovery

    async def discover(self, api_version: str, *, refresh: bool = False) -> list[Obj]:
        """The server's APIResourceList.resources for one group/version (cached)."""
        if refresh or api_version not in self._discovery:
            doc = await self.request("GET", _api_prefix(api_version))
            self._discovery[api_version] = list((doc or {}).get("resources") or [])
        return self._discovery[api_version]

    def invalidate_discovery(self) -> None:
        self._discovery.clear()

    async def for_kind(self, api_version: str, kind: str) -> ResourceClient:
        """The ResourceClient serving `kind` in `api_version`, looked up in discovery.

        A miss refreshes the cached document once, so a CRD created a moment ago is found.
        """
        for refresh in (False, True):
            try:
                resources = await self.discover(api_version, refresh=refresh)
            except StatusError as e:
                if e.code != 404:
                    raise
                resources = []
            for r in resources:
                if r.get("kind") == kind and "/" not in r.get("name", ""):
                    return self.resource(api_version, r["name"], bool(r.get("namespaced")))
        raise StatusError(404, "NotFound", f'no matches for kind "{kind}" in version "{api_version}"',
                          {"kind": kind, "group": _split_api_version(api_version)[0]})

    async def create_object(self, obj: Obj, *, namespace: str | None = None, dry_run: bool = False,
                            field_validation: str | None = None) -> Obj:
        """Create any object, finding its resource from apiVersion/kind."""
        rc = await self.for_kind(obj["apiVersion"], obj["kind"])
        return await rc.create(obj, namespace, dry_run=dry_run, field_validation=field_validation)

    async def apply_object(self, obj: Obj, *, field_manager: str = "kybernetes", force: bool = False,
                           namespace: str | None = None, dry_run: bool = False) -> Obj:
        """Server-side apply of any object (creates it when missing)."""
        rc = await self.for_kind(obj["apiVersion"], obj["kind"])
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            raise ValueError("apply_object: metadata.name is required")
        return await rc.patch(name, obj, namespace=namespace or (obj.get("metadata") or {}).get("namespace"),
                              patch_type="apply", field_manager=field_manager, force=force, dry_run=dry_run)

    async def delete_object(self, obj: Obj, **kwargs: Any) -> Any:
        rc = await self.for_kind(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}
        return await rc.delete(meta["name"], meta.get("namespace"), **kwargs)


class ResourceClient:
    """The verbs for one resource type, e.g. Client.resource("apps/v1", "deployments")."""

    def __init__(self, client: Client, api_version: str, plural: str, namespaced: bool = True, *,
                 metadata_only: bool = False):
        self.client = client
        # Reads return PartialObjectMetadata(List): what a component that only
        # needs metadata (the garbage collector) asks for, to hold far less.
        self.metadata_only = metadata_only
        self.api_version = api_version
        self.group, self.version = _split_api_version(api_version)
        self.plural = plural
        self.namespaced = namespaced
        self._prefix = _api_prefix(api_version)

    def __repr__(self) -> str:
        return f"ResourceClient({self.api_version!r}, {self.plural!r}, namespaced={self.namespaced})"

    # ------------------------------------------------------------------ paths

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The URL path; namespace None on a namespaced resource means all namespaces (collections only)."""
        parts = [self._prefix]
        if self.namespaced and namespace:
            parts.append(f"/namespaces/{_seg(namespace)}")
        parts.append(f"/{self.plural}")
        if name is not None:
            if not name:
                raise ValueError("resource name may not be empty")
            parts.append(f"/{_seg(name)}")
            if subresource:
                parts.append(f"/{subresource}")
        return "".join(parts)

    def _ns(self, namespace: str | None, obj: Obj | None = None) -> str | None:
        if not self.namespaced:
            return None
        if namespace:
            return namespace
        if obj is not None:
            ns = (obj.get("metadata") or {}).get("namespace")
            if ns:
                return ns
        return self.client.namespace

    @staticmethod
    def _name_of(obj: Obj) -> str:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            raise ValueError("object has no metadata.name")
        return name

    @staticmethod
    def _write_query(dry_run: bool, field_manager: str | None = None,
                     field_validation: str | None = None) -> dict[str, str]:
        query: dict[str, str] = {}
        if dry_run:
            query["dryRun"] = "All"
        if field_manager:
            query["fieldManager"] = field_manager
        if field_validation:
            query["fieldValidation"] = field_validation
        return query

    # ------------------------------------------------------------------ verbs

    async def get(self, name: str, namespace: str | None = None, *,
                  resource_version: str | None = None) -> Obj:
        query = {"resourceVersion": resource_version} if resource_version is not None else None
        return await self.client.request("GET", self.path(self._ns(namespace), name), query,
                                         headers=_META_ONE if self.metadata_only else None)

    async def list(self, namespace: str | None = None, *, label_selector: str | None = None,
                   field_selector: str | None = None, limit: int | None = None,
                   continue_: str | None = None, resource_version: str | None = None,
                   resource_version_match: str | None = None) -> Obj:
        """One page of the List object; namespace None lists across all namespaces."""
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        if limit:
            query["limit"] = str(limit)
        if continue_:
            query["continue"] = continue_
        if resource_version is not None:
            query["resourceVersion"] = resource_version
        if resource_version_match:
            query["resourceVersionMatch"] = resource_version_match
        ns = namespace if self.namespaced else None
        return await self.client.request("GET", self.path(ns), query,
                                         headers=_META_LIST if self.metadata_only else None)

    async def list_all(self, namespace: str | None = None, *, label_selector: str | None = None,
                       field_selector: str | None = None, page_size: int = 500,
                       resource_version: str | None = None) -> Obj:
        """The whole list, following continue tokens; one List object with every item.

        If a continue token expires between pages (410), the list is retried in
        one unpaginated request rather than stitched from two snapshots.
        """
        first = await self.list(namespace, label_selector=label_selector, field_selector=field_selector,
                                limit=page_size, resource_version=resource_version)
        items: list[Obj] = list(first.get("items") or [])
        meta = dict(first.get("metadata") or {})
        token = meta.get("continue")
        while token:
            try:
                page = await self.list(namespace, label_selector=label_selector,
                                       field_selector=field_selector, limit=page_size, continue_=token)
            except StatusError as e:
                if e.code != 410:
                    raise
                return await self.list(namespace, label_selector=label_selector,
                                       field_selector=field_selector)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
        meta.pop("continue", None)
        meta.pop("remainingItemCount", None)
        first["items"] = items
        first["metadata"] = meta
        return first

    async def create(self, obj: Obj, namespace: str | None = None, *, dry_run: bool = False,
                     field_validation: str | None = None, field_manager: str | None = None) -> Obj:
        query = self._write_query(dry_run, field_manager, field_validation)
        return await self.client.request("POST", self.path(self._ns(namespace, obj)), query, obj)

    async def update(self, obj: Obj, namespace: str | None = None, *, dry_run: bool = False,
                     field_validation: str | None = None, field_manager: str | None = None) -> Obj:
        """PUT the whole object; metadata.resourceVersion, when set, guards against lost updates."""
        query = self._write_query(dry_run, field_manager, field_validation)
        path = self.path(self._ns(namespace, obj), self._name_of(obj))
        return await self.client.request("PUT", path, query, obj)

    async def update_status(self, obj: Obj, namespace: str | None = None, *, dry_run: bool = False,
                            field_manager: str | None = None) -> Obj:
        return await self.update_subresource(self._name_of(obj), "status", obj,
                                             self._ns(namespace, obj), dry_run=dry_run,
                                             field_manager=field_manager)

    async def patch(self, name: str, patch: Obj | list[Any], *, namespace: str | None = None,
                    patch_type: str = "merge", subresource: str | None = None,
                    field_manager: str | None = None, force: bool | None = None,
                    dry_run: bool = False, field_validation: str | None = None) -> Obj:
        """PATCH with patch_type one of "merge", "strategic", "json" (RFC 6902 list) or "apply"."""
        try:
            content_type = PATCH_CONTENT_TYPES[patch_type]
        except KeyError:
            raise ValueError(f"unknown patch type {patch_type!r}; expected one of "
                             f"{', '.join(PATCH_CONTENT_TYPES)}") from None
        if patch_type == "apply" and not field_manager:
            raise ValueError("apply patches need a field_manager")
        query = self._write_query(dry_run, field_manager, field_validation)
        _bool_query(query, "force", force)
        path = self.path(self._ns(namespace), name, subresource)
        return await self.client.request("PATCH", path, query, orjson.dumps(patch),
                                         {"Content-Type": content_type})

    async def delete(self, name: str, namespace: str | None = None, *,
                     propagation_policy: str | None = None, grace_period_seconds: int | None = None,
                     preconditions: Mapping[str, str] | None = None, dry_run: bool = False) -> Any:
        """Delete one object; returns the server's answer (the object, or a Status)."""
        body = _delete_options(propagation_policy, grace_period_seconds, preconditions, dry_run)
        return await self.client.request("DELETE", self.path(self._ns(namespace), name), None, body)

    async def delete_collection(self, namespace: str | None = None, *, label_selector: str | None = None,
                                field_selector: str | None = None, propagation_policy: str | None = None,
                                grace_period_seconds: int | None = None, dry_run: bool = False) -> Any:
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        body = _delete_options(propagation_policy, grace_period_seconds, None, dry_run)
        return await self.client.request("DELETE", self.path(self._ns(namespace)), query, body)

    async def get_subresource(self, name: str, subresource: str, namespace: str | None = None) -> Obj:
        return await self.client.request("GET", self.path(self._ns(namespace), name, subresource))

    async def update_subresource(self, name: str, subresource: str, obj: Obj, namespace: str | None = None,
                                 *, dry_run: bool = False, field_manager: str | None = None) -> Obj:
        """PUT to a subresource such as status or scale."""
        query = self._write_query(dry_run, field_manager)
        return await self.client.request("PUT", self.path(self._ns(namespace, obj), name, subresource),
                                         query, obj)

    async def create_subresource(self, name: str, subresource: str, obj: Obj, namespace: str | None = None,
                                 *, dry_run: bool = False) -> Any:
        """POST to a subresource such as pods/NAME/binding or pods/NAME/eviction."""
        query = self._write_query(dry_run)
        return await self.client.request("POST", self.path(self._ns(namespace, obj), name, subresource),
                                         query, obj)

    def watch(self, namespace: str | None = None, *, resource_version: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              allow_bookmarks: bool = True, timeout_seconds: int | None = None,
              send_initial_events: bool | None = None) -> Watch:
        """Open a watch (lazily, on first iteration); namespace None watches all namespaces."""
        query: dict[str, str] = {"watch": "true"}
        if resource_version is not None:
            query["resourceVersion"] = resource_version
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        if allow_bookmarks:
            query["allowWatchBookmarks"] = "true"
        if timeout_seconds is not None:
            query["timeoutSeconds"] = str(int(timeout_seconds))
        if send_initial_events is not None:
            _bool_query(query, "sendInitialEvents", send_initial_events)
        ns = namespace if self.namespaced else None
        accept = _META_ONE if self.metadata_only else {"Accept": "application/json"}
        return Watch(self.client.transport.stream("GET", self.path(ns), query, accept))


_META_ONE = {"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"}
_META_LIST = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"}


def _delete_options(propagation_policy: str | None, grace_period_seconds: int | None,
                    preconditions: Mapping[str, str] | None, dry_run: bool) -> Obj:
    body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
    if propagation_policy:
        body["propagationPolicy"] = propagation_policy
    if grace_period_seconds is not None:
        body["gracePeriodSeconds"] = grace_period_seconds
    if preconditions:
        body["preconditions"] = dict(preconditions)
    if dry_run:
        body["dryRun"] = ["All"]
    return body


class Watch:
    """One open watch: `async for event_type, obj in watch`, then close() (or use `async with`).

    Yields ADDED, MODIFIED, DELETED and BOOKMARK events in server order. An ERROR
    event ends the watch by raising the StatusError it carries (410 Gone means
    the resourceVersion is too old: list again). The iteration simply ends when
    the server closes the watch (timeoutSeconds, restart); `resource_version`
    then says where to resume.
    """

    def __init__(self, stream: EventStream):
        self._stream = stream
        self.resource_version: str | None = None

    def __aiter__(self) -> AsyncIterator[tuple[str, Obj]]:
        return self

    async def __anext__(self) -> tuple[str, Obj]:
        line = await self._stream.__anext__()
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            await self.close()
            raise StatusError(500, "InternalError", f"undecodable watch event: {line[:200]!r}") from None
        etype = event.get("type")
        obj = event.get("object") or {}
        if etype == "ERROR":
            await self.close()
            raise status_error_from_object(obj, int(obj.get("code") or 500) if isinstance(obj, dict) else 500)
        rv = (obj.get("metadata") or {}).get("resourceVersion") if isinstance(obj, dict) else None
        if rv:
            self.resource_version = rv
        return etype, obj

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stream.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
