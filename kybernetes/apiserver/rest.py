"""Generic REST storage: create, get, list, update, patch, delete and watch for any kind.

Every kind goes through the same path: decode, check, default, validate,
admit, encode once, compare-and-swap in the store. What differs per kind is
data (the kinds registry, the upstream schema, validation rules), not code.
Status and scale subresources, binding and namespace finalization live here
too because they are variations of update.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml

from ..api import certificates, conversion, errors, validation
from ..api import apply as ssa
from ..api import patch as patchlib
from ..api.errors import FieldError, StatusError
from ..api.kinds import Kind, Registry
from ..api.pods import qos_class
from ..api.times import format_time
from ..api.schema import decode_error, get_schema
from ..api.selectors import selector_string, FieldSelector, LabelSelector, supported_fields
from ..storage.base import Compacted, FutureRevision, KeyExists, KeyNotFound, RevisionConflict, Store
from .admission import Admission
from .watchcache import Entry, ResourceCache, Watcher, WatchCache, make_entry, splice_rv

log = logging.getLogger("kybernetes.rest")

_TOP = ("apiVersion", "kind", "metadata")


def now_rfc3339() -> str:
    return format_time()


def encode(obj: dict[str, Any]) -> bytes:
    """Stored form: apiVersion, kind, metadata first, no resourceVersion."""
    meta = obj.get("metadata") or {}
    if "resourceVersion" in meta:
        meta = {k: v for k, v in meta.items() if k != "resourceVersion"}
    ordered = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta}
    for k, v in obj.items():
        if k not in _TOP:
            ordered[k] = v
    return orjson.dumps(ordered)


def decode_body(body: bytes, content_type: str) -> Any:
    if not body:
        raise errors.bad_request("the request body is empty")
    ct = (content_type or "").split(";")[0].strip()
    if ct == "application/vnd.kubernetes.protobuf":
        # kubectl's typed clients send built-in objects as protobuf.
        from ..api.protobuf import decode_k8s_protobuf
        return decode_k8s_protobuf(body)
    try:
        if ct in ("application/yaml", "application/apply-patch+yaml") or (
                ct not in ("application/json",) and body.lstrip()[:1] not in (b"{", b"[")):
            return yaml.load(body, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        return orjson.loads(body)
    except (orjson.JSONDecodeError, yaml.YAMLError) as e:
        raise errors.bad_request(f"error decoding body: {e}") from None


@dataclass(slots=True)
class Call:
    """What one request brings to a write besides its object: who asks, and how.

    ``query`` holds the write's options (dryRun, fieldValidation, fieldManager,
    force, gracePeriodSeconds, ...), ``manager`` the field manager its changes
    are recorded under (none: not recorded), and ``warnings`` collects what
    the answer's Warning headers will say.
    """

    user: str = ""
    groups: tuple[str, ...] = ()
    query: dict[str, str] = field(default_factory=dict)
    manager: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"


class ListOptions:
    __slots__ = (
        "bookmarks",
        "cont",
        "field",
        "label",
        "limit",
        "rv",
        "rv_match",
        "send_initial",
        "timeout",
        "watch",
    )

    def __init__(self, query: dict[str, str]):
        try:
            self.label = LabelSelector.parse(query.get("labelSelector", ""))
            self.field = FieldSelector.parse(query.get("fieldSelector", ""))
        except ValueError as e:
            raise errors.bad_request(str(e)) from None
        try:
            self.limit = int(query.get("limit") or 0)
            self.timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            raise errors.bad_request("invalid limit or timeoutSeconds") from None
        self.cont = query.get("continue", "")
        self.rv = query.get("resourceVersion", "")
        self.rv_match = query.get("resourceVersionMatch", "")
        self.watch = query.get("watch", "") in ("true", "1", "True")
        self.bookmarks = query.get("allowWatchBookmarks", "") in ("true", "1", "True")
        self.send_initial = query.get("sendInitialEvents", "") in ("true", "1", "True")
        self._check(query.get("sendInitialEvents") is not None)

    def _check(self, initial_given: bool) -> None:
        """Upstream's ListOptions validation: which resourceVersion combinations make sense."""
        errs: list[FieldError] = []
        match = self.rv_match
        if self.watch:
            if initial_given and match != "NotOlderThan":
                errs.append(errors.forbidden("resourceVersionMatch", "sendInitialEvents requires setting "
                                             "resourceVersionMatch to NotOlderThan"))
            if match:
                if not initial_given:
                    errs.append(errors.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden for "
                                                 "watch unless sendInitialEvents is provided"))
                if match != "NotOlderThan":
                    errs.append(errors.not_supported("resourceVersionMatch", match, ["NotOlderThan"]))
        else:
            if match:
                if not self.rv:
                    errs.append(errors.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden "
                                                 "unless resourceVersion is provided"))
                if self.cont:
                    errs.append(errors.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden "
                                                 "when continue is provided"))
                if match not in ("Exact", "NotOlderThan"):
                    errs.append(errors.not_supported("resourceVersionMatch", match, ["Exact", "NotOlderThan", ""]))
                if match == "Exact" and self.rv == "0":
                    errs.append(errors.forbidden("resourceVersionMatch", 'resourceVersionMatch "exact" is '
                                                 'forbidden for resourceVersion "0"'))
            if initial_given:
                errs.append(errors.forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"))
        if errs:
            raise errors.invalid_object("ListOptions", "meta.k8s.io", "", errs)


def _parse_rv(rv: str) -> int:
    try:
        n = int(rv)
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise errors.bad_request(f'invalid resource version: "{rv}"') from None


class REST:
    """The REST operations for every served kind, backed by one store and one watch cache."""

    def __init__(self, store: Store, cache: WatchCache, registry: Registry, admission: Admission,
                 bookmark_interval: float = 30.0):
        self.store = store
        # Upstream sends a bookmark about once a minute at most; a quiet
        # watch here gets one after this many seconds (shorter in tests).
        self.bookmark_interval = bookmark_interval
        self.cache = cache
        self.registry = registry
        self.admission = admission
        self.schema = get_schema()
        # Components that finish deletions (the garbage collector) register
        # here; without one, propagation finalizers would never be removed.
        self.gc_enabled = False

    # ---------------------------------------------------------------- helpers

    def _to_served(self, kind: Kind, raw: bytes) -> bytes:
        if kind.stored_api_version == kind.api_version:
            return raw
        obj = conversion.convert(orjson.loads(raw), kind.api_version)
        return orjson.dumps(obj)

    def _to_served_obj(self, kind: Kind, obj: dict) -> dict:
        return conversion.convert(obj, kind.api_version)

    def _to_storage(self, kind: Kind, obj: dict) -> dict:
        return conversion.convert(obj, kind.stored_api_version)

    def _decode_stored(self, kind: Kind, raw: bytes, rv: int) -> dict:
        obj = orjson.loads(raw)
        obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
        return obj

    async def _get_current(self, kind: Kind, ns: str | None, name: str) -> tuple[dict, int]:
        kv = await self.store.get(kind.key(ns, name))
        if kv is None:
            raise errors.not_found(kind.plural, kind.group, name)
        return self._decode_stored(kind, kv.value, kv.mod_revision), kv.mod_revision

    def _check_type_meta(self, kind: Kind, obj: Any) -> dict:
        if not isinstance(obj, dict):
            raise errors.bad_request("the body of the request was not a JSON object")
        av = obj.get("apiVersion")
        k = obj.get("kind")
        if av is None or av == "":
            obj["apiVersion"] = kind.api_version
        elif av != kind.api_version:
            raise errors.bad_request(
                f"the API version in the data ({av}) does not match the expected API version ({kind.api_version})")
        if k is None or k == "":
            obj["kind"] = kind.kind
        elif k != kind.kind:
            raise errors.bad_request(f"the kind in the data ({k}) does not match the expected kind ({kind.kind})")
        if not isinstance(obj.get("metadata") or {}, dict):
            raise errors.bad_request("metadata must be an object")
        obj.setdefault("metadata", {})
        return obj

    def _structural(self, kind: Kind, obj: dict, call: Call) -> None:
        mode = call.query.get("fieldValidation") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise errors.bad_request(f"fieldValidation parameter unsupported: {mode}")
        errs, warns = self.schema.validate(obj, kind.group, kind.version, kind.kind, strict=mode == "Strict")
        err = decode_error(kind.kind, kind.version, errs)
        if err is not None:
            raise err
        if mode != "Ignore":
            call.warnings.extend(warns)

    def _validate(self, kind: Kind, obj: dict, old: dict | None) -> None:
        errs: list[FieldError] = validation.validate(kind.kind, kind.group, obj, old, namespaced=kind.namespaced)
        if errs:
            meta = obj.get("metadata") or {}
            raise errors.invalid_object(kind.kind, kind.group, meta.get("name") or meta.get("generateName", ""),
                                        errs)

    def _node(self, kind: Kind):
        return self.schema.node_for(kind.group, kind.version, kind.kind)

    def _track(self, kind: Kind, old: dict | None, new: dict, manager: str, subresource: str = "") -> None:
        """Record in managedFields which fields this write gave to `manager`."""
        if not manager:
            return
        mf = ssa.track_update(old, new, manager=manager, api_version=kind.api_version, node=self._node(kind),
                              subresource=subresource, now=now_rfc3339())
        if mf:
            new["metadata"]["managedFields"] = mf
        else:
            new["metadata"].pop("managedFields", None)

    def _respond_obj(self, kind: Kind, raw_stored: bytes, rv: int) -> bytes:
        return self._to_served(kind, splice_rv(raw_stored, rv))

    # ---------------------------------------------------------------- create

    async def create(self, kind: Kind, ns: str | None, body: Any, call: Call | None = None, *,
                     track: bool = True) -> tuple[int, bytes]:
        call = call if call is not None else Call()
        obj = self._check_type_meta(kind, body)
        if kind.group == certificates.GROUP:
            # Who asks for a certificate comes from authentication, never from the body.
            certificates.prepare_create(obj, call.user, call.groups)
        meta = obj["metadata"]
        if kind.namespaced:
            bns = meta.get("namespace")
            if bns and ns and bns != ns:
                raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                         "sent on the request")
            meta["namespace"] = ns or bns
        else:
            meta.pop("namespace", None)
        self._structural(kind, obj, call)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = validation_generate_name(meta["generateName"])
        for k in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if kind.has_spec:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        obj = self._to_storage(kind, obj)
        _normalize(kind, obj)
        _on_create(kind, obj)
        validation.apply_defaults(kind.kind, kind.group, obj)
        await self.admission.mutate_create(kind, obj, call)
        if track:
            self._track(kind, None, obj, call.manager)
        self._validate(kind, obj, None)
        reservation = await self.admission.admit_create(kind, obj, call)
        written = None
        try:
            name = meta.get("name") or ""
            if call.dry_run:
                return 201, self._to_served(kind, orjson.dumps(obj))
            raw = encode(obj)
            for attempt in range(8):
                try:
                    kv = await self.store.create(kind.key(meta.get("namespace"), name), raw)
                    break
                except KeyExists:
                    if meta.get("generateName") and attempt < 7 and name.startswith(meta["generateName"]):
                        name = validation_generate_name(meta["generateName"])
                        obj["metadata"]["name"] = name
                        raw = encode(obj)
                        continue
                    raise errors.already_exists(kind.plural, kind.group, name) from None
            written = kv.mod_revision
            return 201, self._respond_obj(kind, kv.value, kv.mod_revision)
        finally:
            await self.admission.release(reservation, written)

    # ---------------------------------------------------------------- read

    async def get(self, kind: Kind, ns: str | None, name: str) -> bytes:
        key = kind.key(ns, name)
        if self.cache.rv >= await self.store.current_revision():
            # The cache has seen every write the store has acknowledged, so it holds what a
            # read of the store would return now (as upstream's consistent reads from cache).
            e = self.cache.cache(kind.storage_prefix).objects.get(key)
            if e is None:
                raise errors.not_found(kind.plural, kind.group, name)
            return self._to_served(kind, e.raw)
        kv = await self.store.get(key)
        if kv is None:
            raise errors.not_found(kind.plural, kind.group, name)
        return self._respond_obj(kind, kv.value, kv.mod_revision)

    def _filter(self, kind: Kind, opts: ListOptions):
        label, fieldsel = opts.label, opts.field
        if not fieldsel.empty:
            for f, _op, _v in fieldsel.requirements:
                if f not in supported_fields(kind.kind, kind.namespaced):
                    raise errors.bad_request(f'field label not supported: {f}')
        if label.empty and fieldsel.empty:
            return None

        def match(e: Entry) -> bool:
            if not label.empty and not label.matches(e.labels):
                return False
            if not fieldsel.empty:
                f = dict(e.fields)
                f["metadata.name"] = e.name
                f["metadata.namespace"] = e.namespace
                if not fieldsel.matches(f):
                    return False
            return True
        return match

    async def list_entries(self, kind: Kind, ns: str | None, opts: ListOptions) -> tuple[list[Entry], int, str]:
        """Matching entries, the list's resourceVersion, and a continue token."""
        match = self._filter(kind, opts)
        if opts.cont:
            return await self._list_continue(kind, ns, opts, match)
        if opts.rv and opts.rv != "0":
            want = _parse_rv(opts.rv)
            if opts.rv_match == "Exact" or (opts.limit and opts.rv_match != "NotOlderThan"):
                return await self._list_from_store(kind, ns, opts, match, want, "")
            if not await self.cache.wait_for(want, 3.0):
                raise _too_large(want, self.cache.rv)
            rev = self.cache.rv
        elif opts.rv == "0":
            rev = self.cache.rv
        else:
            await self.cache.fresh()
            # The cache may be past the revision fresh() waited for; what is
            # read below is the cache's state, so that is the list's version
            # (and the one later pages read the store at).
            rev = self.cache.rv
        c = self.cache.cache(kind.storage_prefix)
        entries = _candidates(c, ns if kind.namespaced else None, opts)
        if match is not None:
            entries = [e for e in entries if match(e)]
        entries.sort(key=lambda e: e.key)
        if opts.limit and len(entries) > opts.limit and opts.rv != "0":
            cut = entries[: opts.limit]
            return cut, rev, _continue_token(rev, cut[-1].key)
        return entries, rev, ""

    async def _list_continue(self, kind, ns, opts, match):
        try:
            tok = orjson.loads(base64.b64decode(opts.cont))
            rev, start = int(tok["rv"]), tok["start"]
        except Exception:
            raise errors.bad_request("continue key is not valid: malformed continue token") from None
        return await self._list_from_store(kind, ns, opts, match, rev, start)

    async def _list_from_store(self, kind, ns, opts, match, rev, start):
        prefix = kind.prefix(ns if kind.namespaced else None)
        out: list[Entry] = []
        start_key = start or prefix
        cached = self.cache.cache(kind.storage_prefix)
        fields_fn, current = cached.fields_fn, cached.objects
        while True:
            try:
                kvs, read_rev, more = await self.store.list(prefix, revision=rev, limit=opts.limit or 0,
                                                            start_key=start_key)
            except FutureRevision:
                raise _too_large(rev, await self.store.current_revision()) from None
            except Compacted:
                if not start:
                    raise errors.gone("The resourceVersion for the provided list is too old.") from None
                raise errors.gone("The provided continue parameter is too old to display a consistent list "
                                  "result. You can start a new list without the continue parameter, or use "
                                  "the continue token in this response to retrieve the remainder of the "
                                  "results. Continuing with the provided token results in an inconsistent "
                                  "list - objects that were created, modified, or deleted between the time "
                                  "the first chunk was returned and now may show up in the list.") from None
            rev = rev or read_rev
            for kv in kvs:
                # An object unchanged since the page's revision is the cache's entry, already decoded.
                e = current.get(kv.key)
                if e is None or e.rv != kv.mod_revision:
                    e = make_entry(kv, kv.mod_revision, fields_fn)
                if match is None or match(e):
                    out.append(e)
            if not more:
                return out, rev, ""
            last = kvs[-1].key
            if opts.limit and len(out) >= opts.limit:
                return out, rev, _continue_token(rev, last)
            start_key = last + "\x00"

    async def list_bytes(self, kind: Kind, ns: str | None, opts: ListOptions) -> bytes:
        entries, rev, cont = await self.list_entries(kind, ns, opts)
        meta = b'{"resourceVersion":"' + str(rev).encode() + b'"'
        if cont:
            meta += b',"continue":"' + cont.encode() + b'"'
        meta += b"}"
        if kind.stored_api_version == kind.api_version:
            items = b",".join(e.raw for e in entries)
        else:
            items = b",".join(self._to_served(kind, e.raw) for e in entries)
        return b"".join((b'{"kind":"', kind.list_kind.encode(), b'","apiVersion":"', kind.api_version.encode(),
                         b'","metadata":', meta, b',"items":[', items, b"]}"))

    async def list_objects(self, kind: Kind, ns: str | None, opts: ListOptions) -> tuple[list[dict], dict]:
        entries, rev, cont = await self.list_entries(kind, ns, opts)
        objs = [self._to_served_obj(kind, orjson.loads(e.raw)) for e in entries]
        lm = {"resourceVersion": str(rev)}
        if cont:
            lm["continue"] = cont
        return objs, lm

    # ---------------------------------------------------------------- watch

    async def watch(self, kind: Kind, ns: str | None, opts: ListOptions):
        """An async iterator of encoded watch events (bytes, newline-terminated)."""
        match = self._filter(kind, opts) or (lambda e: True)
        c = self.cache.cache(kind.storage_prefix)
        ns_filter = ns if kind.namespaced else None
        w = Watcher(c, match, ns_filter)
        initial: list[bytes] = []
        convert = kind.stored_api_version != kind.api_version
        if opts.rv and opts.rv != "0" and not opts.send_initial:
            since = _parse_rv(opts.rv)
            if since > self.cache.rv:
                await self.cache.wait_for(since, 3.0)
            evs = c.events_since(since)
            if evs is None:
                c.watchers.add(w)  # so that close() is uniform
                w.close()
                gone = errors.gone(f"too old resource version: {since} ({c.oldest_rv})")
                initial.append(b'{"type":"ERROR","object":' + gone.to_json() + b"}\n")
            else:
                c.watchers.add(w)
                for ev in evs:
                    w.deliver(ev)
        else:
            # No resourceVersion (or "0", or sendInitialEvents): synthetic
            # ADDED events for the current state, then changes, as upstream.
            # That state is the latest for "", at least the one asked for
            # with sendInitialEvents, and whatever the cache has for "0".
            if not opts.rv:
                await self.cache.fresh()
            elif opts.rv != "0":
                want = _parse_rv(opts.rv)
                if not await self.cache.wait_for(want, 3.0):
                    raise _too_large(want, self.cache.rv)
            c.watchers.add(w)
            for e in sorted(_candidates(c, ns_filter, opts), key=lambda e: e.key):
                if match(e):
                    initial.append(b'{"type":"ADDED","object":' + e.raw + b"}\n")
            if opts.send_initial and opts.bookmarks:
                initial.append(self._bookmark(kind, self.cache.rv, initial_end=True))
        w.last_rv = self.cache.rv
        return _WatchStream(self, kind, w, initial, opts, convert)

    def _bookmark(self, kind: Kind, rv: int, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return orjson.dumps({"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version,
                                                            "metadata": meta}}) + b"\n"

    # ---------------------------------------------------------------- update

    async def update(self, kind: Kind, ns: str | None, name: str, body: Any, call: Call | None = None,
                     subresource: str = "") -> tuple[int, bytes]:
        call = call if call is not None else Call()
        obj = self._check_type_meta(kind, body)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request("the name of the object (%s) does not match the name on the URL (%s)"
                                     % (meta["name"], name))
        if kind.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent "
                                     "on the request")
        self._structural(kind, obj, call)
        want_rv = meta.get("resourceVersion") or ""
        if want_rv:
            want_rv = str(_parse_rv(want_rv))

        def mutate(cur: dict) -> dict:
            new = copy.deepcopy(obj)
            if want_rv and cur["metadata"]["resourceVersion"] != want_rv:
                raise errors.stale_conflict(kind.plural, kind.group, name)
            return new
        return await self._guaranteed_update(kind, ns, name, mutate, call, subresource, retry=not want_rv)

    async def patch(self, kind: Kind, ns: str | None, name: str, body: bytes, content_type: str,
                    call: Call | None = None, subresource: str = "") -> tuple[int, bytes]:
        call = call if call is not None else Call()
        ct = (content_type or "").split(";")[0].strip()
        if ct not in ("application/json-patch+json", "application/merge-patch+json",
                      "application/strategic-merge-patch+json", "application/apply-patch+yaml",
                      "application/apply-patch+cbor"):
            raise StatusError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                              "accepted media types include: application/json-patch+json, "
                              "application/merge-patch+json, application/apply-patch+yaml, "
                              "application/strategic-merge-patch+json")
        if ct == "application/apply-patch+yaml":
            return await self.apply(kind, ns, name, body, call, subresource)
        if call.query.get("force"):
            raise errors.invalid_object("PatchOptions", "meta.k8s.io", "", [errors.forbidden(
                "force", "may not be specified for non-apply patch")])
        try:
            p = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise errors.bad_request(f"error decoding patch: {e}") from None
        defname = self.schema.definition_for(kind.group, kind.version, kind.kind)
        node = self.schema.node(defname) if defname else None
        precondition = None
        if isinstance(p, dict):
            precondition = ((p.get("metadata") or {}) if isinstance(p.get("metadata"), dict) else {}).get(
                "resourceVersion")

        def mutate(cur: dict) -> dict:
            served = self._to_served_obj(kind, copy.deepcopy(cur))
            rv = served["metadata"].get("resourceVersion")
            if ct == "application/json-patch+json":
                if not isinstance(p, list):
                    raise errors.bad_request("json patch must be a list of operations")
                new = patchlib.json_patch(served, p)
            elif ct == "application/merge-patch+json":
                if not isinstance(p, dict):
                    raise errors.bad_request("merge patch must be a JSON object")
                new = patchlib.merge_patch(served, p)
            else:
                if not isinstance(p, dict):
                    raise errors.bad_request("strategic merge patch must be a JSON object")
                new = patchlib.strategic_merge_patch(served, p, node)
            if not isinstance(new, dict):
                raise errors.bad_request("the patch produced something that is not an object")
            if precondition is not None and str(precondition) != rv:
                raise errors.stale_conflict(kind.plural, kind.group, name)
            new.setdefault("metadata", {})["resourceVersion"] = rv
            self._check_type_meta(kind, new)
            self._structural(kind, new, call)
            return new
        return await self._guaranteed_update(kind, ns, name, mutate, call, subresource,
                                             retry=precondition is None)

    async def apply(self, kind: Kind, ns: str | None, name: str, body: bytes, call: Call,
                    subresource: str = "") -> tuple[int, bytes]:
        """Server-side apply: merge the user's configuration and own its fields (kybernetes.api.apply)."""
        query = call.query
        manager = query.get("fieldManager")
        if not manager:
            raise errors.invalid_object("PatchOptions", "meta.k8s.io", "", [errors.required(
                "fieldManager", "is required for apply requests")])
        force = query.get("force") in ("true", "1", "True")
        try:
            applied = yaml.load(body, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as e:
            raise errors.bad_request(f"error decoding YAML: {e}") from None
        if not isinstance(applied, dict):
            raise errors.bad_request("apply patch must be an object")
        last_applied = _last_applied(applied) if manager == "kubectl" else None
        applied = self._check_type_meta(kind, applied)
        if applied["metadata"].get("name") not in (None, name):
            raise errors.bad_request("the name of the object does not match the name on the URL")
        applied["metadata"]["name"] = name
        if kind.namespaced and ns:
            applied["metadata"].setdefault("namespace", ns)
        self._structural(kind, applied, call)
        want_rv = applied["metadata"].pop("resourceVersion", None)
        node = self._node(kind)
        kv = await self.store.get(kind.key(ns, name))
        if kv is None and not subresource:
            obj = ssa.apply(None, applied, manager=manager, node=node, force=force, now=now_rfc3339(),
                            api_version=kind.api_version)
            try:
                return await self.create(kind, ns, obj, call, track=False)
            except StatusError as e:
                if e.reason != "AlreadyExists":
                    raise
                # Lost a race with another create: apply to what won.

        def mutate(cur: dict) -> dict:
            served = self._to_served_obj(kind, copy.deepcopy(cur))
            rv = served["metadata"].get("resourceVersion")
            if want_rv is not None and str(want_rv) != rv:
                raise errors.stale_conflict(kind.plural, kind.group, name)
            new = ssa.apply(served, applied, manager=manager, node=node, force=force, now=now_rfc3339(),
                            subresource=subresource, api_version=kind.api_version)
            new.setdefault("metadata", {})["resourceVersion"] = rv
            annotations = new["metadata"].get("annotations")
            if last_applied is not None and annotations and LAST_APPLIED in annotations:
                # As upstream's last-applied updater: kubectl's server-side apply keeps a
                # client-side apply annotation (if the object has one) equal to what it applied,
                # so that a later client-side apply diffs against the truth.
                annotations[LAST_APPLIED] = last_applied
            self._structural(kind, new, call)
            self._structural(kind, new, call)
            return new
        # The apply itself recorded the manager's fields.
        return await self._guaranteed_update(kind, ns, name, mutate, call, subresource, retry=True, track=False)

    async def _guaranteed_update(self, kind: Kind, ns: str | None, name: str, mutate, call: Call,
                                 subresource: str, retry: bool, track: bool = True) -> tuple[int, bytes]:
        # As upstream's GuaranteedUpdate, retry for as long as others win the
        # race: every conflict means some other write made progress, and a cap
        # would fail unconditional writes under contention.
        while True:
            cur, cur_rev = await self._get_current(kind, ns, name)
            new = mutate(cur)
            new = self._to_storage(kind, new)
            new = self._prepare_update(kind, new, cur, subresource)
            _normalize(kind, new)
            if subresource not in ("status", "finalize"):
                validation.apply_defaults(kind.kind, kind.group, new)
            if subresource != "binding" and track:
                self._track(kind, cur, new, call.manager, subresource)
            if subresource != "binding":
                # A binding is the server's own write of the one field a pod
                # update may never change (spec.nodeName), as upstream's
                # BindingREST, which does not run pod update validation.
                self._validate(kind, new, cur)
            reservation = await self.admission.admit_update(kind, new, cur, call, subresource)
            written = None
            try:
                done, written, out = await self._write_update(kind, ns, name, new, cur, cur_rev, call, retry)
            finally:
                await self.admission.release(reservation, written)
            if done:
                return out

    async def _stale(self, key: str) -> bool:
        """Is the stored value encrypted with other than the current key? Then even a no-op update is
        written, as upstream does, so that `kubectl replace` of unchanged Secrets re-encrypts them."""
        stale = getattr(self.store, "stale", None)
        return bool(stale is not None and await stale(key))

    async def _write_update(self, kind: Kind, ns: str | None, name: str, new: dict, cur: dict, cur_rev: int,
                            call: Call, retry: bool) -> tuple[bool, int | None, tuple[int, bytes]]:
        """One attempt at writing an update: (done, revision written, response); not done means retry."""
        new_meta = new["metadata"]
        cur_cmp = dict(cur)
        cur_cmp["metadata"] = {k: v for k, v in cur["metadata"].items() if k != "resourceVersion"}
        new_cmp = dict(new)
        new_cmp["metadata"] = {k: v for k, v in new_meta.items() if k != "resourceVersion"}
        if call.dry_run:
            return True, None, (200, self._to_served(kind, orjson.dumps(new)))
        if encode(new_cmp) == encode(cur_cmp) and not await self._stale(kind.key(ns, name)):
            # No-op writes are not written, as upstream: resourceVersion stays.
            return True, None, (200, self._to_served(kind, orjson.dumps(cur)))
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers") and \
                not _namespace_spec_finalizers(kind, new):
            # The last finalizer is gone: the update completes the deletion.
            try:
                kv = await self.store.delete(kind.key(ns, name), cur_rev)
            except RevisionConflict:
                return False, None, (0, b"")
            except KeyNotFound:
                raise errors.not_found(kind.plural, kind.group, name) from None
            new_meta["resourceVersion"] = str(kv.mod_revision)
            return True, None, (200, self._to_served(kind, orjson.dumps(new)))
        try:
            kv = await self.store.update(kind.key(ns, name), encode(new), cur_rev)
        except RevisionConflict:
            if retry:
                return False, None, (0, b"")
            raise errors.stale_conflict(kind.plural, kind.group, name) from None
        except KeyNotFound:
            raise errors.not_found(kind.plural, kind.group, name) from None
        return True, kv.mod_revision, (200, self._respond_obj(kind, kv.value, kv.mod_revision))

    def _prepare_update(self, kind: Kind, new: dict, cur: dict, subresource: str) -> dict:
        nm = new.setdefault("metadata", {})
        cm = cur["metadata"]
        if nm.get("uid") and nm["uid"] != cm.get("uid"):
            # A uid in the written object is a precondition: it names the
            # object the writer meant, which a same-named successor is not.
            raise errors.conflict(kind.plural, kind.group, cm.get("name", ""),
                                  f"Precondition failed: UID in precondition: {nm['uid']}, "
                                  f"UID in object meta: {cm.get('uid')}")
        # Fields the server owns never change through an update.
        for k in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation"):
            if k in cm:
                nm[k] = cm[k]
            else:
                nm.pop(k, None)
        if kind.namespaced:
            nm["namespace"] = cm.get("namespace")
        has_status = "status" in kind.subresources
        if subresource in ("status", "approval"):
            # Status writes change status (and labels/annotations), nothing else.
            out = {k: v for k, v in cur.items() if k != "status"}
            if "status" in new:
                out["status"] = new["status"]
            meta = dict(cm)
            for k in ("labels", "annotations"):
                if k in nm:
                    meta[k] = nm[k]
                else:
                    meta.pop(k, None)
            out["metadata"] = meta
            if kind.group == certificates.GROUP:
                certificates.prepare_update(out, cur, subresource)
            return out
        if kind.group == certificates.GROUP and subresource == "":
            certificates.prepare_update(new, cur, subresource)
        # A binding writes the PodScheduled condition along with spec.nodeName.
        if has_status and subresource != "binding":
            if "status" in cur:
                new["status"] = cur["status"]
            else:
                new.pop("status", None)
        if kind.has_spec and "generation" in cm:
            a = {k: v for k, v in new.items() if k not in ("metadata", "status")}
            b = {k: v for k, v in cur.items() if k not in ("metadata", "status")}
            if orjson.dumps(a, option=orjson.OPT_SORT_KEYS) != orjson.dumps(b, option=orjson.OPT_SORT_KEYS):
                nm["generation"] = int(cm.get("generation") or 0) + 1
        return new

    # ---------------------------------------------------------------- delete

    async def delete(self, kind: Kind, ns: str | None, name: str, body: bytes, call: Call | None = None,
                     status_response: bool = True) -> tuple[int, bytes]:
        call = call if call is not None else Call()
        query = call.query
        opts: dict[str, Any] = {}
        if body:
            try:
                opts = orjson.loads(body) or {}
            except orjson.JSONDecodeError:
                raise errors.bad_request("invalid DeleteOptions body") from None
            if not isinstance(opts, dict):
                raise errors.bad_request("invalid DeleteOptions body")
        for q in ("gracePeriodSeconds", "propagationPolicy", "orphanDependents"):
            if q in query and q not in opts:
                opts[q] = query[q]
        if isinstance(opts.get("gracePeriodSeconds"), str):
            try:
                opts["gracePeriodSeconds"] = int(opts["gracePeriodSeconds"])
            except ValueError:
                raise errors.bad_request(f'invalid gracePeriodSeconds: "{opts["gracePeriodSeconds"]}"') from None
        orphan = opts.get("orphanDependents")
        if isinstance(orphan, str):
            orphan = {"true": True, "false": False}.get(orphan, orphan)
        policy = opts.get("propagationPolicy")
        bad: list[FieldError] = []
        if orphan is not None and policy is not None:
            bad.append(errors.invalid("propagationPolicy", policy, "orphanDependents and deletionPropagation "
                                      "cannot be both set"))
        if policy not in (None, "Orphan", "Background", "Foreground"):
            bad.append(errors.not_supported("propagationPolicy", policy,
                                            ["Foreground", "Background", "Orphan", "nil"]))
        if bad:
            raise errors.invalid_object("DeleteOptions", "meta.k8s.io", "", bad)
        if orphan is True:
            policy = "Orphan"
        # Upstream answers 200 with the object still being deleted, and 202
        # only when the (deprecated) orphanDependents=false asked for a
        # cascading delete that did not finish at once.
        pending = 202 if orphan is False else 200
        pre = opts.get("preconditions") or {}
        dry = call.dry_run or opts.get("dryRun") == ["All"]
        while True:  # retried on conflict like _guaranteed_update
            cur, cur_rev = await self._get_current(kind, ns, name)
            m = cur["metadata"]
            if pre.get("uid") and pre["uid"] != m.get("uid"):
                raise errors.conflict(kind.plural, kind.group, name,
                                      f"Precondition failed: UID in precondition: {pre['uid']}, "
                                      f"UID in object meta: {m.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != m.get("resourceVersion"):
                raise errors.conflict(kind.plural, kind.group, name,
                                      f"Precondition failed: ResourceVersion in precondition: "
                                      f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                      f"{m.get('resourceVersion')}")
            await self.admission.admit_delete(kind, cur, call)
            finalizers = list(m.get("finalizers") or [])
            if self.gc_enabled and policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            if self.gc_enabled and policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            grace = self._grace(kind, cur, opts)
            graceful = bool(finalizers) or _namespace_spec_finalizers(kind, cur) or grace > 0
            if graceful:
                new = copy.deepcopy(cur)
                nm = new["metadata"]
                if not nm.get("deletionTimestamp") or grace < (nm.get("deletionGracePeriodSeconds") or 0):
                    nm["deletionTimestamp"] = _ts_after(grace)
                    nm["deletionGracePeriodSeconds"] = grace
                if finalizers:
                    nm["finalizers"] = finalizers
                if kind.kind == "Namespace" and not kind.group:
                    new.setdefault("status", {})["phase"] = "Terminating"
                if dry:
                    return 200, self._to_served(kind, orjson.dumps(new))
                if new == cur:
                    return pending, self._to_served(kind, orjson.dumps(cur))
                try:
                    kv = await self.store.update(kind.key(ns, name), encode(new), cur_rev)
                except RevisionConflict:
                    continue
                except KeyNotFound:
                    raise errors.not_found(kind.plural, kind.group, name) from None
                return pending, self._respond_obj(kind, kv.value, kv.mod_revision)
            if dry:
                return 200, self._to_served(kind, orjson.dumps(cur))
            try:
                kv = await self.store.delete(kind.key(ns, name), cur_rev)
            except RevisionConflict:
                continue
            except KeyNotFound:
                raise errors.not_found(kind.plural, kind.group, name) from None
            if kind.return_deleted or not status_response:
                return 200, self._respond_obj(kind, kv.value, kv.mod_revision)
            # Most kinds answer an immediate delete with a Status, as upstream.
            details = {"name": name, "kind": kind.plural, "uid": m.get("uid")}
            if kind.group:
                details["group"] = kind.group
            return 200, orjson.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                      "details": details})

    def _grace(self, kind: Kind, obj: dict, opts: dict) -> int:
        """Graceful deletion applies to pods a kubelet is running; everything else goes at once."""
        if kind.kind != "Pod" or kind.group:
            return 0
        spec = obj.get("spec") or {}
        phase = (obj.get("status") or {}).get("phase")
        if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
            return 0
        g = opts.get("gracePeriodSeconds")
        if g is None:
            g = spec.get("terminationGracePeriodSeconds", 30)
        try:
            return max(0, int(g))
        except (TypeError, ValueError):
            raise errors.bad_request("invalid gracePeriodSeconds") from None

    async def delete_collection(self, kind: Kind, ns: str | None, body: bytes, call: Call) -> bytes:
        opts = ListOptions({k: v for k, v in call.query.items() if k in ("labelSelector", "fieldSelector")})
        entries, _rev, _ = await self.list_entries(kind, ns, opts)
        deleted = []
        for e in entries:
            try:
                _, raw = await self.delete(kind, e.namespace or None, e.name, body, call, status_response=False)
                deleted.append(raw)
            except StatusError as err:
                if err.code != 404:
                    raise
        rv = str(self.cache.rv)
        return b"".join((b'{"kind":"', kind.list_kind.encode(), b'","apiVersion":"', kind.api_version.encode(),
                         b'","metadata":{"resourceVersion":"', rv.encode(), b'"},"items":[', b",".join(deleted),
                         b"]}"))

    # ---------------------------------------------------------------- subresources

    async def get_scale(self, kind: Kind, ns: str | None, name: str) -> dict:
        obj, _ = await self._get_current(kind, ns, name)
        return _scale_of(kind, obj)

    async def update_scale(self, kind: Kind, ns: str | None, name: str, body: bytes, content_type: str,
                           method: str, call: Call) -> dict:
        cur, _ = await self._get_current(kind, ns, name)
        scale = _scale_of(kind, cur)
        if method == "PATCH":
            ct = (content_type or "").split(";")[0]
            p = orjson.loads(body)
            if ct == "application/json-patch+json":
                scale = patchlib.json_patch(scale, p)
            else:
                scale = patchlib.merge_patch(scale, p)
        else:
            scale = decode_body(body, content_type)
        if not isinstance(scale, dict):
            raise errors.bad_request("invalid Scale body")
        replicas = (scale.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise errors.bad_request("Scale.spec.replicas must be an integer")
        if replicas < 0:
            raise errors.invalid_object("Scale", "autoscaling", name, [
                errors.invalid("spec.replicas", replicas, "must be greater than or equal to 0")])
        want_rv = (scale.get("metadata") or {}).get("resourceVersion")

        def mutate(c: dict) -> dict:
            if want_rv and c["metadata"]["resourceVersion"] != want_rv:
                raise errors.stale_conflict(kind.plural, kind.group, name)
            new = copy.deepcopy(c)
            new.setdefault("spec", {})["replicas"] = replicas
            return new
        _, raw = await self._guaranteed_update(kind, ns, name, mutate, call, "", retry=not want_rv, track=False)
        return _scale_of(kind, orjson.loads(raw))

    async def bind(self, kind: Kind, ns: str, name: str, body: Any) -> None:
        if not isinstance(body, dict):
            raise errors.bad_request("invalid Binding")
        target = body.get("target") or {}
        node = target.get("name")
        if not node:
            raise errors.invalid_object("Binding", "", name, [errors.required("target.name")])

        def mutate(cur: dict) -> dict:
            if (cur.get("spec") or {}).get("nodeName"):
                raise errors.conflict(kind.plural, kind.group, name,
                                      f"pod {name} is already assigned to node "
                                      f"\"{cur['spec']['nodeName']}\"")
            if cur["metadata"].get("deletionTimestamp"):
                raise errors.conflict(kind.plural, kind.group, name, "pod is being deleted, cannot be assigned "
                                      "to a host")
            new = copy.deepcopy(cur)
            new["spec"]["nodeName"] = node
            st = new.setdefault("status", {})
            conds = [c for c in st.get("conditions") or [] if c.get("type") != "PodScheduled"]
            conds.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                          "lastTransitionTime": now_rfc3339()})
            st["conditions"] = conds
            return new
        await self._guaranteed_update(kind, ns, name, mutate, Call(), "binding", retry=True)

    async def finalize_namespace(self, kind: Kind, name: str, body: Any) -> tuple[int, bytes]:
        if not isinstance(body, dict):
            raise errors.bad_request("invalid Namespace")
        fins = (body.get("spec") or {}).get("finalizers") or []

        def mutate(cur: dict) -> dict:
            new = copy.deepcopy(cur)
            new.setdefault("spec", {})["finalizers"] = list(fins)
            if not fins:
                new["spec"].pop("finalizers")
            return new
        return await self._guaranteed_update(kind, None, name, mutate, Call(), "finalize", retry=True)


class _WatchStream:
    """Async iterator over one watch's encoded events, with bookmarks and timeout.

    Each item is exactly one event (see Response.stream): the in-process
    transport hands items to the client as events, and the HTTP front door
    writes them as they come.
    """

    def __init__(self, rest: REST, kind: Kind, w, initial: list[bytes], opts: ListOptions, convert: bool):
        self.rest = rest
        self.kind = kind
        self.w = w
        self.pending: deque[bytes] = deque(initial)
        self.opts = opts
        self.convert = convert
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + opts.timeout if opts.timeout else None

    def __aiter__(self):
        return self

    def close(self) -> None:
        self.w.close()

    async def aclose(self) -> None:
        # The name async-iterator consumers (the client's in-process
        # transport) call to say they are done: unregister the watcher.
        self.w.close()

    def _conv(self, line: bytes) -> bytes:
        if not self.convert:
            return line
        ev = orjson.loads(line)
        if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
            ev["object"] = conversion.convert(ev["object"], self.kind.api_version)
        return orjson.dumps(ev) + b"\n"

    async def __anext__(self) -> bytes:
        if self.pending:
            return self._conv(self.pending.popleft())
        loop = asyncio.get_running_loop()
        while True:
            wait = self.rest.bookmark_interval
            if self.deadline is not None:
                left = self.deadline - loop.time()
                if left <= 0:
                    self.w.close()
                    raise StopAsyncIteration
                wait = min(wait, left)
            chunk = await self.w.next_chunk(wait)
            if chunk is None:
                raise StopAsyncIteration
            if chunk:
                self.pending.extend(chunk)
                return self._conv(self.pending.popleft())
            if self.opts.bookmarks and (self.deadline is None or self.deadline - loop.time() > 0):
                return self.rest._bookmark(self.kind, self.w.last_rv or self.rest.cache.rv)


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _last_applied(applied: dict) -> str:
    """The client-side apply annotation's value for an applied configuration: the configuration
    as JSON with sorted keys, without that annotation (as upstream's buildLastApplied)."""
    cfg = copy.deepcopy(applied)
    meta = cfg.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
        meta["annotations"].pop(LAST_APPLIED, None)
        if not meta["annotations"]:
            del meta["annotations"]
    return orjson.dumps(cfg, option=orjson.OPT_SORT_KEYS, default=str).decode()


def _normalize(kind: Kind, obj: dict) -> None:
    """Write-time conversions upstream does in its internal types."""
    if kind.kind == "Secret" and not kind.group and isinstance(obj.get("stringData"), dict):
        data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
        for k, v in obj.pop("stringData").items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


_INITIAL_STATUS: dict[tuple[str, str], dict] = {
    ("", "Namespace"): {"phase": "Active"},
    ("", "Service"): {"loadBalancer": {}},
    ("", "PersistentVolumeClaim"): {"phase": "Pending"},
    ("", "PersistentVolume"): {"phase": "Pending"},
    ("", "ReplicationController"): {"replicas": 0},
    ("apps", "Deployment"): {}, ("apps", "ReplicaSet"): {"replicas": 0}, ("apps", "StatefulSet"): {"replicas": 0,
                                                                                                   "availableReplicas": 0},
    ("apps", "DaemonSet"): {"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0,
                            "numberReady": 0},
    ("batch", "Job"): {}, ("batch", "CronJob"): {}, ("networking.k8s.io", "Ingress"): {"loadBalancer": {}},
    ("autoscaling", "HorizontalPodAutoscaler"): {"currentReplicas": 0, "desiredReplicas": 0},
    ("policy", "PodDisruptionBudget"): {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0,
                                        "expectedPods": 0},
}


def _on_create(kind: Kind, obj: dict) -> None:
    """Server-assigned fields of a new object: initial status, and those that depend on its uid."""
    init = _INITIAL_STATUS.get((kind.group, kind.kind))
    if init is not None:
        obj["status"] = copy.deepcopy(init)
    if kind.kind == "Pod" and not kind.group:
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}
    if kind.kind == "Job" and kind.group == "batch":
        spec = obj.get("spec")
        if not isinstance(spec, dict) or spec.get("manualSelector"):
            return
        uid = obj["metadata"]["uid"]
        name = obj["metadata"].get("name", "")
        tmpl = spec.setdefault("template", {})
        if not isinstance(tmpl, dict):
            return
        labels = tmpl.setdefault("metadata", {}).setdefault("labels", {})
        labels.update({"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                       "controller-uid": uid, "job-name": name})
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}


def _too_large(want: int, current: int) -> StatusError:
    return StatusError(504, "Timeout", f"Too large resource version: {want}, current: {current}",
                       {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                        "retryAfterSeconds": 1})


# Selectable fields the watch cache keeps an index of, as upstream's watch cache indexes pods by node:
# every kubelet lists and watches its own pods with spec.nodeName=<node>.
INDEXED_FIELDS = ("spec.nodeName",)


def _candidates(c: ResourceCache, ns: str | None, opts: ListOptions) -> list[Entry]:
    """The entries a list or watch must look at: the namespace's, or fewer when a field
    selector pins an indexed field (the filter still decides)."""
    if not opts.field.empty:
        for field in INDEXED_FIELDS:
            value = opts.field.value_for(field)
            if value is not None:
                found = c.index(field, value)
                return [e for e in found if e.namespace == ns] if ns else found
    return c.entries(ns)


def _continue_token(rev: int, last_key: str) -> str:
    return base64.b64encode(orjson.dumps({"v": "meta.k8s.io/v1", "rv": rev, "start": last_key + "\x00"})).decode()


def _ts_after(seconds: int) -> str:
    return format_time(time.time() + seconds)


def _namespace_spec_finalizers(kind: Kind, obj: dict) -> bool:
    return kind.kind == "Namespace" and not kind.group and bool((obj.get("spec") or {}).get("finalizers"))


def validation_generate_name(base: str) -> str:
    import random
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    if len(base) > 58:
        base = base[:58]
    return base + "".join(random.choice(alphabet) for _ in range(5))


def _get_path(obj: dict, path: str) -> Any:
    cur: Any = obj
    for p in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def _scale_of(kind: Kind, obj: dict) -> dict:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    sel = ""
    selector = spec.get("selector")
    if isinstance(selector, dict):
        if "matchLabels" in selector or "matchExpressions" in selector:
            sel = selector_string(selector)
        else:
            sel = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    out = {"kind": "Scale", "apiVersion": "autoscaling/v1",
           "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                        "resourceVersion": meta.get("resourceVersion"),
                        "creationTimestamp": meta.get("creationTimestamp")},
           "spec": {"replicas": spec.get("replicas", 0) if spec.get("replicas") is not None else 0},
           "status": {"replicas": status.get("replicas", 0) or 0}}
    if sel:
        out["status"]["selector"] = sel
    return out
