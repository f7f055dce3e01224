"""A small in-memory API server handler for testing the client library.

It speaks the apiserver's Request/Response contract with upstream URL layout,
resourceVersions, list paging, watches (with history, bookmarks, timeouts and
410 Gone after compaction), optimistic concurrency, patches, delete options and
a few subresources. Tests drive its failure modes directly (compact,
close_watches, expire_watches) — things a real server does only under load.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import orjson

from kybernetes.api import errors
from kybernetes.api.errors import StatusError
from kybernetes.apiserver.request import Request, Response

Obj = dict[str, Any]

# (group, version, plural) -> (kind, namespaced, subresources)
DEFAULT_RESOURCES: dict[tuple[str, str, str], tuple[str, bool, tuple[str, ...]]] = {
    ("", "v1", "pods"): ("Pod", True, ("status", "binding")),
    ("", "v1", "configmaps"): ("ConfigMap", True, ()),
    ("", "v1", "namespaces"): ("Namespace", False, ("status",)),
    ("", "v1", "nodes"): ("Node", False, ("status",)),
    ("apps", "v1", "deployments"): ("Deployment", True, ("status", "scale")),
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def match_labels(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.strip().rstrip("=")) != v.strip().lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def match_fields(selector: str, obj: Obj) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        path, value = term.split("!=" if negate else "=", 1)
        cur: Any = obj
        for part in path.strip().split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        actual = "" if cur is None else str(cur)
        if (actual == value.lstrip("=")) == negate:
            return False
    return True


@dataclass
class _Watcher:
    resource: tuple[str, str]
    namespace: str | None
    label_selector: str
    field_selector: str
    bookmarks: bool
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


_END = object()


class FakeAPI:
    def __init__(self) -> None:
        self.resources = dict(DEFAULT_RESOURCES)
        self.rv = 100
        self.objects: dict[tuple[str, str, str, str], Obj] = {}
        # (rv, (group, plural), type, obj) for watch replay
        self.history: list[tuple[int, tuple[str, str], str, Obj]] = []
        self.compacted = 0
        self.watchers: list[_Watcher] = []
        self.requests: list[Request] = []
        self.gone_as_event = True
        self.fail_next: list[StatusError] = []

    # ------------------------------------------------------------------ test controls

    def add_resource(self, group: str, version: str, plural: str, kind: str, namespaced: bool = True,
                     subresources: tuple[str, ...] = ()) -> None:
        self.resources[(group, version, plural)] = (kind, namespaced, subresources)

    def compact(self) -> None:
        """Forget all history up to now: older watches and continue tokens get 410."""
        self.compacted = self.rv
        self.history.clear()

    def close_watches(self) -> None:
        for w in self.watchers:
            w.queue.put_nowait(_END)

    def expire_watches(self) -> None:
        """Tell every watcher its resourceVersion is too old, then end the watch."""
        status = errors.gone("too old resource version").status()
        for w in self.watchers:
            w.queue.put_nowait(orjson.dumps({"type": "ERROR", "object": status}) + b"\n")
            w.queue.put_nowait(_END)

    def bookmark(self) -> None:
        for w in self.watchers:
            if w.bookmarks:
                kind = self.resources[self._gv_for(w.resource)][0]
                obj = {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)}}
                w.queue.put_nowait(orjson.dumps({"type": "BOOKMARK", "object": obj}) + b"\n")

    def active_watches(self) -> int:
        return len(self.watchers)

    def _gv_for(self, resource: tuple[str, str]) -> tuple[str, str, str]:
        for key in self.resources:
            if (key[0], key[2]) == resource:
                return key
        raise KeyError(resource)

    # ------------------------------------------------------------------ entry point

    async def __call__(self, req: Request) -> Response:
        self.requests.append(req)
        try:
            if self.fail_next:
                raise self.fail_next.pop(0)
            return await self._route(req)
        except StatusError as e:
            return Response(e.code, e.to_bytes())

    async def _route(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        if parts[:1] == ["api"]:
            group, rest = "", parts[1:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, rest = parts[1], parts[2:]
        else:
            raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        version, rest = rest[0], rest[1:]
        if not rest:
            return self._discovery(group, version)
        namespace = None
        # /namespaces/NAME/status is the namespace's subresource, not a resource called "status".
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, version, rest[2]) in self.resources:
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
        info = self.resources.get((group, version, plural))
        if info is None:
            raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        kind, namespaced, subresources = info
        if sub is not None and sub not in subresources:
            raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        if namespaced and name is not None and namespace is None:
            raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        ctx = _Ctx(self, group, version, plural, kind, namespaced, namespace, name, sub, req)
        return await ctx.handle()

    def _discovery(self, group: str, version: str) -> Response:
        resources = []
        for (g, v, plural), (kind, namespaced, subs) in self.resources.items():
            if (g, v) != (group, version):
                continue
            resources.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                              "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update",
                                                      "watch"]})
            for sub in subs:
                resources.append({"name": f"{plural}/{sub}", "singularName": "", "namespaced": namespaced,
                                  "kind": kind, "verbs": ["get", "update"]})
        if not resources:
            raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")
        body = {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}
        return Response(200, orjson.dumps(body))

    # ------------------------------------------------------------------ storage

    def record(self, resource: tuple[str, str], etype: str, obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self.history.append((rv, resource, etype, obj))
        for w in self.watchers:
            if w.resource == resource and _visible(w, obj):
                w.queue.put_nowait(orjson.dumps({"type": etype, "object": obj}) + b"\n")

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)


def _visible(w: _Watcher, obj: Obj) -> bool:
    meta = obj.get("metadata") or {}
    if w.namespace is not None and meta.get("namespace") != w.namespace:
        return False
    if w.label_selector and not match_labels(w.label_selector, meta.get("labels") or {}):
        return False
    return not (w.field_selector and not match_fields(w.field_selector, obj))


class _Ctx:
    def __init__(self, api: FakeAPI, group: str, version: str, plural: str, kind: str, namespaced: bool,
                 namespace: str | None, name: str | None, sub: str | None, req: Request):
        self.api = api
        self.group, self.version, self.plural, self.kind = group, version, plural, kind
        self.namespaced, self.namespace, self.name, self.sub, self.req = namespaced, namespace, name, sub, req
        self.resource = (group, plural)
        self.api_version = f"{group}/{version}" if group else version

    def key(self, name: str, namespace: str | None = None) -> tuple[str, str, str, str]:
        return (self.group, self.plural, (namespace or self.namespace or "") if self.namespaced else "", name)

    def body(self) -> Any:
        try:
            return orjson.loads(self.req.body) if self.req.body else None
        except orjson.JSONDecodeError as e:
            raise errors.bad_request(f"invalid JSON: {e}") from None

    def ok(self, obj: Any, status: int = 200) -> Response:
        return Response(status, orjson.dumps(obj))

    def existing(self) -> Obj:
        assert self.name is not None
        obj = self.api.objects.get(self.key(self.name))
        if obj is None:
            raise errors.not_found(self.plural, self.group, self.name)
        return obj

    async def handle(self) -> Response:
        m = self.req.method
        if self.name is None:
            if m == "GET" and self.req.query.get("watch") in ("true", "1"):
                return self.watch()
            if m == "GET":
                return self.list()
            if m == "POST":
                return self.create()
            if m == "DELETE":
                return self.delete_collection()
        elif self.sub == "binding" and m == "POST":
            return self.bind()
        elif self.sub == "scale":
            return self.scale()
        elif m == "GET":
            return self.ok(self.existing())
        elif m == "PUT":
            return self.update(self.body())
        elif m == "PATCH":
            return self.patch()
        elif m == "DELETE":
            return self.delete()
        raise errors.method_not_allowed()

    def selected(self) -> list[Obj]:
        q = self.req.query
        w = _Watcher(self.resource, self.namespace if self.namespaced else None,
                     q.get("labelSelector", ""), q.get("fieldSelector", ""), False)
        out = [o for k, o in self.api.objects.items() if k[:2] == self.resource and _visible(w, o)]
        out.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return out

    def list(self) -> Response:
        q = self.req.query
        items = self.selected()
        list_rv = self.api.rv
        start = 0
        if q.get("continue"):
            token = orjson.loads(base64.urlsafe_b64decode(q["continue"]))
            if token["rv"] < self.api.compacted:
                raise StatusError(410, "Expired", "The provided continue parameter is too old")
            list_rv = token["rv"]
            start = token["start"]
        meta: Obj = {"resourceVersion": str(list_rv)}
        limit = int(q.get("limit") or 0)
        if limit and start + limit < len(items):
            token = {"rv": list_rv, "start": start + limit}
            meta["continue"] = base64.urlsafe_b64encode(orjson.dumps(token)).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start:start + limit]
        else:
            items = items[start:]
        return self.ok({"kind": f"{self.kind}List", "apiVersion": self.api_version, "metadata": meta,
                        "items": items})

    def create(self) -> Response:
        obj = self.body()
        if not isinstance(obj, dict):
            raise errors.bad_request("expected an object")
        meta = obj.setdefault("metadata", {})
        if self.namespaced:
            if meta.get("namespace") and meta["namespace"] != self.namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                         "sent on the request")
            meta["namespace"] = self.namespace
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise errors.invalid_object(self.kind, self.group, "", [errors.required("metadata.name",
                                                                                        "name is required")])
        key = self.key(meta["name"])
        if key in self.api.objects:
            raise errors.already_exists(self.plural, self.group, meta["name"])
        obj["apiVersion"], obj["kind"] = self.api_version, self.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = "2024-01-01T00:00:00Z"
        meta["generation"] = 1
        if self.req.query.get("dryRun") == "All":
            meta["resourceVersion"] = ""
            return self.ok(obj, 201)
        meta["resourceVersion"] = self.api.next_rv()
        self.api.objects[key] = obj
        self.api.record(self.resource, "ADDED", obj)
        return self.ok(obj, 201)

    def update(self, obj: Any, *, from_patch: bool = False) -> Response:
        if not isinstance(obj, dict):
            raise errors.bad_request("expected an object")
        old = self.existing()
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != self.name:
            raise errors.bad_request("the name of the object does not match the name on the URL")
        rv = meta.get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise errors.stale_conflict(self.plural, self.group, self.name or "")
        new = copy.deepcopy(obj)
        if self.sub == "status":
            new = {**copy.deepcopy(old), "status": obj.get("status")}
        elif not from_patch and "status" in old:
            new["status"] = old["status"]
        new_meta = new["metadata"]
        for k in ("uid", "creationTimestamp", "namespace"):
            if k in old["metadata"]:
                new_meta[k] = old["metadata"][k]
        new["apiVersion"], new["kind"] = self.api_version, self.kind
        if new.get("spec") != old.get("spec"):
            new_meta["generation"] = old["metadata"].get("generation", 1) + 1
        if self.req.query.get("dryRun") == "All":
            return self.ok(new)
        new_meta["resourceVersion"] = self.api.next_rv()
        self.api.objects[self.key(self.name or "")] = new
        self.api.record(self.resource, "MODIFIED", new)
        return self.ok(new)

    def patch(self) -> Response:
        ct = self.req.headers.get("content-type", "")
        body = self.body()
        if ct == "application/apply-patch+yaml":
            if not self.req.query.get("fieldManager"):
                raise errors.bad_request("PATCH requests with apply content type require a fieldManager")
            if self.key(self.name or "") not in self.api.objects:
                self.req.body = orjson.dumps(body)
                return self.create()
            current = self.existing()
            patched = merge_patch(copy.deepcopy(current), body)
        elif ct in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            patched = merge_patch(copy.deepcopy(self.existing()), body)
        elif ct == "application/json-patch+json":
            try:
                patched = jsonpatch.apply_patch(self.existing(), body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise StatusError(422, "Invalid", str(e)) from None
        else:
            raise errors.unsupported_media_type(ct)
        patched.setdefault("metadata", {})["resourceVersion"] = None
        patched["metadata"].pop("resourceVersion")
        return self.update(patched, from_patch=True)

    def _delete_one(self, key: tuple[str, str, str, str]) -> Obj:
        obj = self.api.objects.pop(key)
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = self.api.next_rv()
        self.api.record(self.resource, "DELETED", final)
        return final

    def delete(self) -> Response:
        old = self.existing()
        opts = self.body() or {}
        pre = opts.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise errors.conflict(self.plural, self.group, self.name or "",
                                  f"Precondition failed: UID in precondition: {pre['uid']}, "
                                  f"UID in object meta: {old['metadata']['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise errors.conflict(self.plural, self.group, self.name or "", "Precondition failed: "
                                  "resourceVersion mismatch")
        if "All" in (opts.get("dryRun") or []):
            return self.ok(old)
        return self.ok(self._delete_one(self.key(self.name or "")))

    def delete_collection(self) -> Response:
        deleted = [self._delete_one(self.key(o["metadata"]["name"], o["metadata"].get("namespace")))
                   for o in self.selected()]
        return self.ok({"kind": f"{self.kind}List", "apiVersion": self.api_version,
                        "metadata": {"resourceVersion": str(self.api.rv)}, "items": deleted})

    def bind(self) -> Response:
        binding = self.body() or {}
        target = (binding.get("target") or {}).get("name")
        if not target:
            raise errors.invalid_object("Binding", "", self.name or "", [errors.required("target.name")])
        pod = copy.deepcopy(self.existing())
        if (pod.get("spec") or {}).get("nodeName"):
            raise errors.conflict(self.plural, "", self.name or "", f"pod {self.name} is already assigned")
        pod.setdefault("spec", {})["nodeName"] = target
        pod["metadata"]["resourceVersion"] = self.api.next_rv()
        self.api.objects[self.key(self.name or "")] = pod
        self.api.record(self.resource, "MODIFIED", pod)
        return self.ok({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                        "code": 201}, 201)

    def scale(self) -> Response:
        obj = self.existing()
        if self.req.method == "PUT":
            scale = self.body() or {}
            new = copy.deepcopy(obj)
            new["spec"]["replicas"] = scale["spec"]["replicas"]
            new["metadata"]["resourceVersion"] = self.api.next_rv()
            self.api.objects[self.key(self.name or "")] = new
            self.api.record(self.resource, "MODIFIED", new)
            obj = new
        elif self.req.method != "GET":
            raise errors.method_not_allowed()
        return self.ok({"kind": "Scale", "apiVersion": "autoscaling/v1",
                        "metadata": {"name": self.name, "namespace": self.namespace,
                                     "resourceVersion": obj["metadata"]["resourceVersion"]},
                        "spec": {"replicas": obj["spec"].get("replicas", 1)},
                        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0)}})

    def watch(self) -> Response:
        q = self.req.query
        rv = q.get("resourceVersion")
        if rv not in (None, "", "0") and int(rv) < self.api.compacted:
            status = errors.gone(f"too old resource version: {rv} ({self.api.compacted})")
            if not self.api.gone_as_event:
                raise status
            event = orjson.dumps({"type": "ERROR", "object": status.status()}) + b"\n"
            return Response(200, stream=_one(event))
        w = _Watcher(self.resource, self.namespace if self.namespaced else None,
                     q.get("labelSelector", ""), q.get("fieldSelector", ""),
                     q.get("allowWatchBookmarks") == "true")
        # Snapshot and registration happen without an await between them, so
        # no event can fall into a gap between replay and live delivery.
        if rv in (None, "", "0"):
            for obj in self.selected():
                w.queue.put_nowait(orjson.dumps({"type": "ADDED", "object": obj}) + b"\n")
        else:
            for ev_rv, resource, etype, obj in self.api.history:
                if ev_rv > int(rv) and resource == self.resource and _visible(w, obj):
                    w.queue.put_nowait(orjson.dumps({"type": etype, "object": obj}) + b"\n")
        self.api.watchers.append(w)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        return Response(200, stream=_stream(self.api, w, timeout))


async def _one(event: bytes) -> AsyncIterator[bytes]:
    yield event


async def _stream(api: FakeAPI, w: _Watcher, timeout: float | None) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    try:
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            try:
                item = await asyncio.wait_for(w.queue.get(), remaining)
            except TimeoutError:
                return
            if item is _END:
                return
            yield item
    finally:
        if w in api.watchers:
            api.watchers.remove(w)
