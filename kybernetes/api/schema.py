"""The upstream Kubernetes schema, loaded as data, and everything derived from it.

This module owns the one place where kybernetes learns the shape of the built-in
kinds: the Kubernetes 1.32 definitions shipped (as JSON Schema 2020-12) inside the
``kubernetes-validate`` package. From them it derives

* a compiled, navigable tree of :class:`Node` objects (refs resolved once) that
  strategic merge patch and server-side apply walk to find patch strategies,
  merge keys, list types and list-map keys;
* structural validation of incoming objects the way apiserver decoding sees
  them: Go-style type errors, and unknown-field paths for ``fieldValidation``;
* the ``/openapi/v2`` and ``/openapi/v3`` documents that kubectl reads for
  ``explain``, client-side ``apply`` and its server-side field validation check.

Nothing here is typed by hand per kind; the package data is read lazily, once.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from kybernetes.api.errors import FieldError, StatusError, bad_request

KUBERNETES_VERSION = "v1.32.0"
_DEFS_PACKAGE = "kubernetes_validate"
_DEFS_FILE = ("kubernetes-json-schema", "v1.32.0-local", "_definitions.json")
_REF_PREFIX = "#/$defs/"
_INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
_QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_STATUS = _META + "Status"
_DELETE_OPTIONS = _META + "DeleteOptions"
_PATCH = _META + "Patch"
_APIRESOURCELIST = _META + "APIResourceList"
_SCALE = "io.k8s.api.autoscaling.v1.Scale"

# Go decodes these with custom unmarshalers that accept any JSON, so nothing
# below them is ever an unknown field or a type error.
_FREE_FORM = frozenset({
    _META + "FieldsV1",
    _META + "Patch",
    "io.k8s.apimachinery.pkg.runtime.RawExtension",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray",
})

# Node kinds.
ANY = "any"
OBJECT = "object"  # a Go struct: known properties, anything else is unknown
MAP = "map"  # map[string]T
ARRAY = "array"
STRING = "string"
BYTES = "bytes"  # []byte, base64 on the wire
INTEGER = "integer"
NUMBER = "number"
BOOLEAN = "boolean"
INT_OR_STRING = "int-or-string"
QUANTITY = "quantity"


class Node:
    """One compiled schema node: a field's type plus the field-level extensions.

    Property, item and value children are reached with :meth:`prop`,
    :attr:`items` and :attr:`values`; ``$ref`` is already resolved. A property
    that refers to a definition shares that definition's property table, so a
    recursive definition (JSONSchemaProps) costs nothing extra.
    """

    __slots__ = (
        "description",
        "go_type",
        "int_bits",
        "items",
        "kind",
        "list_map_keys",
        "list_type",
        "map_type",
        "merge_key",
        "name",
        "props",
        "required",
        "strategy",
        "struct",
        "values",
    )

    def __init__(self, kind: str = ANY, name: str | None = None) -> None:
        self.kind = kind
        self.name = name  # definition name when this node is (or refers to) a definition
        self.go_type = ""  # how Go would print the field's type in a decoding error
        self.struct = ""  # Go struct name, for OBJECT nodes
        self.props: dict[str, Node] = {}
        self.items: Node | None = None
        self.values: Node | None = None
        self.required: tuple[str, ...] = ()
        self.strategy: str | None = None
        self.merge_key: str | None = None
        self.list_type: str | None = None
        self.list_map_keys: tuple[str, ...] = ()
        self.map_type: str | None = None
        self.int_bits = 64
        self.description = ""

    def prop(self, name: str) -> Node | None:
        """The schema of property ``name`` of this object, or None if it has none."""
        return self.props.get(name)

    def _clone(self) -> Node:
        other = Node(self.kind, self.name)
        for slot in Node.__slots__:
            setattr(other, slot, getattr(self, slot))
        return other

    def __repr__(self) -> str:
        return f"Node({self.kind}, {self.name or self.go_type})"


@dataclass(frozen=True)
class ServedResource:
    """One resource the API server serves, as the OpenAPI builders need it.

    ``group`` is "" for the core group; ``verbs`` are discovery verbs (get, list,
    watch, create, update, patch, delete, deletecollection); ``subresources`` are
    names such as "status" and "scale". Lists are accepted and stored as tuples so
    the value can key the document caches.
    """

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "verbs", tuple(self.verbs))
        object.__setattr__(self, "subresources", tuple(self.subresources))


def _go_struct(defname: str) -> str:
    return defname.rsplit(".", 1)[-1]


def _go_named(defname: str) -> str:
    # Go prints named types with their package's last path element: v1.DeploymentSpec.
    parts = defname.split(".")
    return f"{parts[-2]}.{parts[-1]}" if len(parts) >= 2 else defname


def _primary_type(raw: dict[str, Any]) -> str | None:
    t = raw.get("type")
    if isinstance(t, list):
        for x in t:
            if x != "null":
                return x
        return None
    return t


class Schema:
    """The compiled 1.32 definitions: lookup, navigation, validation, OpenAPI."""

    def __init__(self, defs: dict[str, dict[str, Any]]) -> None:
        self.defs = defs
        self._nodes: dict[str, Node] = {}
        self._gvk: dict[tuple[str, str, str], str] = {}
        for name, raw in defs.items():
            for gvk in raw.get("x-kubernetes-group-version-kind", ()):
                # DeleteOptions and WatchEvent claim every group; a kind's own
                # definition must win over those shared ones.
                key = (gvk.get("group", ""), gvk.get("version", ""), gvk.get("kind", ""))
                if key not in self._gvk or len(raw["x-kubernetes-group-version-kind"]) == 1:
                    self._gvk[key] = name
        # Re-entrant: building one cached document asks for others.
        self._lock = threading.RLock()
        self._docs: dict[Any, Any] = {}
        # Compiling every definition takes a few milliseconds; doing it up front
        # keeps node lookups lock-free afterwards.
        for name in defs:
            self._compile_def(name)

    # ---- lookup and navigation -------------------------------------------------

    def definition_for(self, group: str, version: str, kind: str) -> str | None:
        """The definition name carrying this group/version/kind, e.g. io.k8s.api.apps.v1.Deployment."""
        return self._gvk.get((group, version, kind))

    def gvks(self) -> Iterable[tuple[str, str, str]]:
        return self._gvk.keys()

    def node(self, defname: str) -> Node:
        """The compiled node of a definition; KeyError if the definition does not exist."""
        return self._nodes[defname]

    def node_for(self, group: str, version: str, kind: str) -> Node | None:
        name = self.definition_for(group, version, kind)
        return self.node(name) if name else None

    @staticmethod
    def patch_meta(node: Node | None) -> tuple[str | None, str | None]:
        """(x-kubernetes-patch-strategy, x-kubernetes-patch-merge-key) of a field node."""
        if node is None:
            return None, None
        return node.strategy, node.merge_key

    @staticmethod
    def list_meta(node: Node | None) -> tuple[str | None, tuple[str, ...]]:
        """(x-kubernetes-list-type, x-kubernetes-list-map-keys) of a list field node."""
        if node is None:
            return None, ()
        return node.list_type, node.list_map_keys

    def _compile_def(self, defname: str) -> Node:
        node = self._nodes.get(defname)
        if node is not None:
            return node
        raw = self.defs[defname]
        node = Node(ANY, defname)
        # Registered before filling so recursive references find it.
        self._nodes[defname] = node
        node.description = raw.get("description", "")
        if defname == _INT_OR_STRING:
            node.kind, node.go_type = INT_OR_STRING, "int32"
        elif defname == _QUANTITY:
            node.kind, node.go_type = QUANTITY, "resource.Quantity"
        elif defname in _FREE_FORM:
            node.kind, node.go_type = ANY, _go_named(defname)
        else:
            # Set before filling: a recursive reference may clone this node mid-way.
            # _fill overrides go_type for non-struct kinds; metav1.Time and friends
            # unmarshal through a plain Go string, which is what _fill says.
            node.go_type = _go_named(defname)
            node.struct = _go_struct(defname)
            self._fill(node, raw, defname)
        return node

    def _fill(self, node: Node, raw: dict[str, Any], owner: str) -> None:
        t = _primary_type(raw)
        fmt = raw.get("format")
        if "properties" in raw or (t == "object" and "additionalProperties" not in raw):
            node.kind = OBJECT
            node.required = tuple(raw.get("required", ()))
            props = node.props
            for pname, praw in raw.get("properties", {}).items():
                props[pname] = self._compile_field(praw, owner)
        elif t == "object":
            node.kind = MAP
            ap = raw.get("additionalProperties")
            node.values = self._compile_field(ap, owner) if isinstance(ap, dict) else Node(ANY)
            node.go_type = "map[string]" + (node.values.go_type or "interface {}")
        elif t == "array":
            node.kind = ARRAY
            it = raw.get("items")
            node.items = self._compile_field(it, owner) if isinstance(it, dict) else Node(ANY)
            node.go_type = "[]" + (node.items.go_type or "interface {}")
        elif t == "string":
            if fmt == "byte":
                node.kind, node.go_type = BYTES, "[]uint8"
            else:
                node.kind, node.go_type = STRING, "string"
        elif t == "integer":
            node.kind = INTEGER
            node.int_bits = 32 if fmt == "int32" else 64
            node.go_type = "int32" if node.int_bits == 32 else "int64"
        elif t == "number":
            node.kind, node.go_type = NUMBER, "float64"
        elif t == "boolean":
            node.kind, node.go_type = BOOLEAN, "bool"
        else:
            node.kind = ANY

    def _compile_field(self, raw: dict[str, Any], owner: str) -> Node:
        ref = raw.get("$ref")
        if ref is not None:
            target = self._compile_def(ref[len(_REF_PREFIX):])
            if not any(k.startswith("x-kubernetes-") for k in raw):
                return target
            node = target._clone()
        else:
            node = Node(ANY)
            self._fill(node, raw, owner)
        node.description = raw.get("description", node.description)
        node.strategy = raw.get("x-kubernetes-patch-strategy")
        node.merge_key = raw.get("x-kubernetes-patch-merge-key")
        node.list_type = raw.get("x-kubernetes-list-type")
        node.list_map_keys = tuple(raw.get("x-kubernetes-list-map-keys", ()))
        node.map_type = raw.get("x-kubernetes-map-type")
        return node

    # ---- structural validation -------------------------------------------------

    def validate(self, obj: dict[str, Any], group: str, version: str, kind: str, *,
                 strict: bool) -> tuple[list[FieldError], list[str]]:
        """Check ``obj`` the way apiserver decoding would, returning (errors, warnings).

        Type errors come back as FieldError("TypeInvalid", path, detail) where
        ``detail`` is the message Go's decoder would print (``json: cannot unmarshal
        string into Go struct field DeploymentSpec.spec.replicas of type int32``);
        they are listed in document order and upstream reports only the first.
        Unknown fields come back as FieldError("Invalid", path, 'unknown field "path"')
        when ``strict``; otherwise they are removed from ``obj`` (upstream's decoder drops
        them) and come back as warning strings ``unknown field "path"``.
        :func:`decode_error` turns the errors into the 400 upstream sends.
        A kind without a definition validates clean (nothing to check against).
        """
        node = self.node_for(group, version, kind)
        if node is None:
            return [], []
        v = _Validator()
        if not isinstance(obj, dict):
            v.errors.append(FieldError("TypeInvalid", "", f"json: cannot unmarshal {_json_type(obj)} "
                                       f"into Go value of type {node.go_type}", _json_type(obj)))
            return v.errors, []
        v.walk_object(node, obj, [], "")
        if strict:
            errs = v.errors + [FieldError("Invalid", p, f'unknown field "{p}"') for p in v.unknown]
            return errs, []
        # Not strict: an unknown field is dropped, as decoding into the Go type drops it upstream.
        for parent, key in v.found:
            parent.pop(key, None)
        return v.errors, [f'unknown field "{p}"' for p in v.unknown]

    # ---- OpenAPI ----------------------------------------------------------------

    def _cached(self, key: Any, build: Any) -> Any:
        doc = self._docs.get(key)
        if doc is None:
            with self._lock:
                doc = self._docs.get(key)
                if doc is None:
                    doc = build()
                    self._docs[key] = doc
        return doc

    def _v2_definitions(self) -> dict[str, Any]:
        return self._cached("v2defs", lambda: {name: self._convert(name, raw, "#/definitions/", v3=False)
                                               for name, raw in self.defs.items()})

    def _v3_schema(self, name: str) -> dict[str, Any]:
        return self._cached(("v3def", name), lambda: self._convert(name, self.defs[name],
                                                                   "#/components/schemas/", v3=True))

    def _convert(self, name: str, raw: dict[str, Any], prefix: str, *, v3: bool) -> dict[str, Any]:
        # Upstream serves these two with their Go-side OpenAPI types, not oneOf.
        if name == _INT_OR_STRING:
            if v3:
                return {"oneOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
            return {"type": "string", "format": "int-or-string"}
        if name == _QUANTITY:
            if v3:
                return {"oneOf": [{"type": "string"}, {"type": "number"}]}
            return {"type": "string"}
        out = _convert_node(raw, prefix, v3)
        if "x-kubernetes-group-version-kind" in raw and "properties" in out:
            # kubernetes-validate pins apiVersion/kind with one-value enums; upstream
            # does not, and several GVKs (DeleteOptions) share one definition.
            for p in ("apiVersion", "kind"):
                if p in out["properties"]:
                    out["properties"][p].pop("enum", None)
        return out

    def openapi_v2(self, served: Iterable[ServedResource]) -> dict[str, Any]:
        """The swagger 2.0 document for /openapi/v2: every definition plus paths of served resources."""
        served = tuple(served)
        return self._cached(("v2", served), lambda: _build_v2(self, served))

    def openapi_v2_bytes(self, served: Iterable[ServedResource]) -> bytes:
        served = tuple(served)
        return self._cached(("v2b", served), lambda: orjson.dumps(self.openapi_v2(served)))

    def openapi_v3_group_version(self, group: str, version: str,
                                 served: Iterable[ServedResource]) -> dict[str, Any] | None:
        """The OpenAPI 3.0 document for /openapi/v3/api/v1 or /openapi/v3/apis/<group>/<version>."""
        served = tuple(served)
        if not any(s.group == group and s.version == version for s in served):
            return None
        return self._cached(("v3", group, version, served), lambda: _build_v3(self, group, version, served))

    def openapi_v3_group_version_bytes(self, group: str, version: str,
                                       served: Iterable[ServedResource]) -> bytes | None:
        served = tuple(served)

        def build() -> bytes | None:
            doc = self.openapi_v3_group_version(group, version, served)
            return None if doc is None else orjson.dumps(doc)
        if not any(s.group == group and s.version == version for s in served):
            return None
        return self._cached(("v3b", group, version, served), build)

    def openapi_v3_index(self, served: Iterable[ServedResource]) -> dict[str, Any]:
        """The /openapi/v3 index: one entry per served group/version with a content hash."""
        served = tuple(served)

        def build() -> dict[str, Any]:
            paths: dict[str, Any] = {}
            for group, version in sorted({(s.group, s.version) for s in served}):
                body = self.openapi_v3_group_version_bytes(group, version, served) or b""
                digest = hashlib.sha512(body).hexdigest().upper()
                key = gv_path(group, version)
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
            return {"paths": paths}
        return self._cached(("v3index", served), build)

    def openapi_v3_index_bytes(self, served: Iterable[ServedResource]) -> bytes:
        served = tuple(served)
        return self._cached(("v3indexb", served), lambda: orjson.dumps(self.openapi_v3_index(served)))


def gv_path(group: str, version: str) -> str:
    """'api/v1' for the core group, 'apis/<group>/<version>' otherwise (no leading slash)."""
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _convert_node(raw: Any, prefix: str, v3: bool) -> Any:
    if isinstance(raw, list):
        return [_convert_node(x, prefix, v3) for x in raw]
    if not isinstance(raw, dict):
        return raw
    ref = raw.get("$ref")
    if ref is not None:
        target = prefix + ref[len(_REF_PREFIX):]
        siblings = {k: _convert_node(v, prefix, v3) for k, v in raw.items() if k != "$ref"}
        if not siblings:
            return {"$ref": target}
        if v3:
            # OpenAPI 3.0 ignores siblings of $ref; upstream wraps the ref in allOf so
            # descriptions and patch extensions survive (kubectl explain relies on it).
            return {"allOf": [{"$ref": target}], **siblings}
        return {"$ref": target, **siblings}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "type":
            t = _primary_type(raw)
            if t is not None:
                out["type"] = t
        elif k in ("properties", "$defs"):
            out[k] = {pk: _convert_node(pv, prefix, v3) for pk, pv in v.items()}
        else:
            out[k] = _convert_node(v, prefix, v3)
    return out


# ---- validation -----------------------------------------------------------------

_QUANTITY_RE = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_QUANTITY_SUFFIXES = frozenset({"", "n", "u", "m", "k", "M", "G", "T", "P", "E",
                                "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"})
_QUANTITY_FORMAT_ERR = ("quantities must match the regular expression "
                        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def quantity_error(text: str) -> str | None:
    """The message resource.ParseQuantity would fail with, or None if ``text`` parses."""
    text = text.strip()
    m = _QUANTITY_RE.match(text)
    if m is None:
        return _QUANTITY_FORMAT_ERR
    number, suffix = m.group(1), m.group(2)
    if number.count(".") > 1 or number.strip("+-") in ("", "."):
        return "unable to parse numeric part of quantity"
    if suffix not in _QUANTITY_SUFFIXES and not re.fullmatch(r"[eE][-+]?[0-9]+", suffix):
        return "unable to parse quantity's suffix"
    return None


def _base64_error(text: str) -> str | None:
    data = text.encode()
    try:
        binascii.a2b_base64(data, strict_mode=True)
        return None
    except (binascii.Error, ValueError):
        pass
    body = data.replace(b"\r", b"").replace(b"\n", b"")
    stripped = body.rstrip(b"=")
    for i, c in enumerate(stripped):
        if c not in _B64:
            return f"illegal base64 data at input byte {i}"
    return f"illegal base64 data at input byte {len(stripped) - len(stripped) % 4}"


class _MapKey(str):
    """A map key on the validation path: shown as [key] in field errors, left out of
    unknown-field and Go paths as upstream leaves it out."""

    __slots__ = ()


def _render_path(path: list[Any], keys: bool = True) -> str:
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif isinstance(seg, _MapKey):
            if keys:
                out += f"[{seg}]"
        else:
            out = f"{out}.{seg}" if out else seg
    return out


def _go_path(path: list[Any]) -> str:
    return ".".join(seg for seg in path if isinstance(seg, str) and not isinstance(seg, _MapKey))


class _Validator:
    __slots__ = ("errors", "found", "unknown")

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.unknown: list[str] = []
        self.found: list[tuple[dict[str, Any], str]] = []   # (object, key) of each unknown field

    def type_error(self, node: Node, value: Any, path: list[Any], struct: str,
                   what: str | None = None, message: str | None = None) -> None:
        if message is None:
            what = what or _json_type(value)
            message = (f"json: cannot unmarshal {what} into Go struct field "
                       f"{struct}.{_go_path(path)} of type {node.go_type}")
        self.errors.append(FieldError("TypeInvalid", _render_path(path), message, value))

    def walk_object(self, node: Node, value: dict[str, Any], path: list[Any], struct: str) -> None:
        props = node.props
        own = node.struct or struct
        for key, child in value.items():
            sub = props.get(key)
            path.append(key)
            if sub is None:
                self.unknown.append(_render_path(path, keys=False))
                self.found.append((value, key))
            elif child is not None:
                self.walk(sub, child, path, own)
            path.pop()

    def walk(self, node: Node, value: Any, path: list[Any], struct: str) -> None:
        kind = node.kind
        if kind == STRING:
            if type(value) is not str:
                self.type_error(node, value, path, struct)
        elif kind == OBJECT:
            if type(value) is dict:
                self.walk_object(node, value, path, struct)
            else:
                self.type_error(node, value, path, struct)
        elif kind == ARRAY:
            if type(value) is list:
                items = node.items
                if items is not None and items.kind != ANY:
                    for i, item in enumerate(value):
                        if item is not None:
                            path.append(i)
                            self.walk(items, item, path, struct)
                            path.pop()
            else:
                self.type_error(node, value, path, struct)
        elif kind == MAP:
            if type(value) is dict:
                values = node.values
                if values is not None and values.kind != ANY:
                    for key, item in value.items():
                        if item is not None:
                            path.append(_MapKey(key))
                            self.walk(values, item, path, struct)
                            path.pop()
            else:
                self.type_error(node, value, path, struct)
        elif kind == INTEGER:
            if type(value) is int:
                lo, hi = _INT32 if node.int_bits == 32 else _INT64
                if not lo <= value <= hi:
                    self.type_error(node, value, path, struct, f"number {value}")
            elif type(value) is float:
                self.type_error(node, value, path, struct, f"number {value!r}")
            else:
                self.type_error(node, value, path, struct)
        elif kind == BOOLEAN:
            if type(value) is not bool:
                self.type_error(node, value, path, struct)
        elif kind == INT_OR_STRING:
            if type(value) is int:
                if not _INT32[0] <= value <= _INT32[1]:
                    self.type_error(node, value, path, struct, f"number {value}")
            elif type(value) is not str:
                what = f"number {value!r}" if type(value) is float else None
                self.type_error(node, value, path, struct, what)
        elif kind == QUANTITY:
            if type(value) is str:
                msg = quantity_error(value)
            elif type(value) in (int, float):
                msg = quantity_error(repr(value))
            else:
                msg = _QUANTITY_FORMAT_ERR
            if msg is not None:
                self.type_error(node, value, path, struct, message=msg)
        elif kind == NUMBER:
            if type(value) not in (int, float):
                self.type_error(node, value, path, struct)
        elif kind == BYTES:
            if type(value) is str:
                msg = _base64_error(value)
                if msg is not None:
                    self.type_error(node, value, path, struct, message=msg)
            else:
                self.type_error(node, value, path, struct)


def decode_error(kind: str, version: str, errors: list[FieldError]) -> StatusError | None:
    """The 400 BadRequest apiserver answers when decoding fails, or None if ``errors`` is empty.

    A type error wins (upstream stops at the first one): ``Deployment in version "v1"
    cannot be handled as a Deployment: json: cannot unmarshal ...``. Otherwise the
    unknown fields of strict validation: ``strict decoding error: unknown field "spec.foo", ...``.
    """
    if not errors:
        return None
    for e in errors:
        if e.type == "TypeInvalid":
            return bad_request(f'{kind} in version "{version}" cannot be handled as a {kind}: {e.detail}')
    return bad_request("strict decoding error: " + ", ".join(e.detail for e in errors))


# ---- OpenAPI documents ------------------------------------------------------------

_LIST_PARAMS = ("allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit",
                "resourceVersion", "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds", "watch")
_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")
_DELETE_PARAMS = ("dryRun", "gracePeriodSeconds", "ignoreStoreReadErrorWithClusterBreakingPotential",
                  "orphanDependents", "propagationPolicy")

# name -> (type, description)
_PARAM_INFO: dict[str, tuple[str, str]] = {
    "allowWatchBookmarks": ("boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
    "continue": ("string", "The continue option should be set when retrieving more results from the server."),
    "fieldSelector": ("string", "A selector to restrict the list of returned objects by their fields."),
    "labelSelector": ("string", "A selector to restrict the list of returned objects by their labels."),
    "limit": ("integer", "limit is a maximum number of responses to return for a list call."),
    "resourceVersion": ("string", ("resourceVersion sets a constraint on what resource versions a request "
                                  "may be served from.")),
    "resourceVersionMatch": ("string", ("resourceVersionMatch determines how resourceVersion is applied "
                                       "to list calls.")),
    "sendInitialEvents": ("boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
    "timeoutSeconds": ("integer", "Timeout for the list/watch call."),
    "watch": ("boolean", ("Watch for changes to the described resources and return them as a stream of "
                         "add, update, and remove notifications.")),
    "dryRun": ("string", ("When present, indicates that modifications should not be persisted. "
                         "Valid values are: All.")),
    "fieldManager": ("string", ("fieldManager is a name associated with the actor or entity that is "
                               "making these changes.")),
    "fieldValidation": ("string", ("fieldValidation instructs the server on how to handle objects in the "
                                  "request containing unknown or duplicate fields. Valid values are "
                                  "Ignore, Warn and Strict.")),
    "force": ("boolean", ("Force is going to \"force\" Apply requests. It must be unset for non-apply "
                         "patch requests.")),
    "gracePeriodSeconds": ("integer", "The duration in seconds before the object should be deleted."),
    "ignoreStoreReadErrorWithClusterBreakingPotential": (
        "boolean", ("if set to true, it will trigger an unsafe deletion of the resource in case the normal "
                   "deletion flow fails with a corrupt object error.")),
    "orphanDependents": ("boolean", "Deprecated: please use the PropagationPolicy."),
    "propagationPolicy": ("string", ("Whether and how garbage collection will be performed: "
                                    "Orphan, Background or Foreground.")),
    "pretty": ("string", "If 'true', then the output is pretty printed."),
    "name": ("string", "name of the resource"),
    "namespace": ("string", "object name and auth scope, such as for teams and projects"),
}

_PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json",
                "application/merge-patch+json", "application/strategic-merge-patch+json")
_PRODUCES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")
_SUBRESOURCE_BODY = {"scale": _SCALE}
_BODYLESS_SUBRESOURCES = frozenset({"log", "exec", "attach", "portforward", "proxy"})
# Subresources that are only ever created (POST), with their own kind as the body.
_CREATE_SUBRESOURCES = {"binding": "io.k8s.api.core.v1.Binding", "eviction": "io.k8s.api.policy.v1.Eviction",
                        "token": "io.k8s.api.authentication.v1.TokenRequest"}
# Subresources that are only ever replaced (PUT).
_REPLACE_ONLY_SUBRESOURCES = frozenset({"finalize"})


def _camel(text: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[.\-]", text) if p)


def _op_group(group: str) -> str:
    if not group:
        return "Core"
    return _camel(group.removesuffix(".k8s.io"))


def _tag(group: str, version: str) -> str:
    g = "core" if not group else group.removesuffix(".k8s.io").replace(".", "")
    return f"{g}_{version}"


def _param(name: str, where: str, v3: bool, required: bool = False) -> dict[str, Any]:
    typ, desc = _PARAM_INFO[name]
    p: dict[str, Any] = {"name": name, "in": where, "description": desc}
    if required or where == "path":
        p["required"] = True
    if v3:
        p["schema"] = {"type": typ, "uniqueItems": True}
    else:
        p["type"] = typ
        p["uniqueItems"] = True
    return p


class _OpBuilder:
    """Builds path items for one served resource in either swagger 2.0 or OpenAPI 3.0 shape."""

    def __init__(self, schema: Schema, v3: bool) -> None:
        self.schema = schema
        self.v3 = v3
        self.prefix = "#/components/schemas/" if v3 else "#/definitions/"
        self.refs: set[str] = set()

    def ref(self, defname: str) -> dict[str, Any]:
        self.refs.add(defname)
        return {"$ref": self.prefix + defname}

    def response(self, defname: str | None, codes: Iterable[str] = ("200",)) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for code in codes:
            desc = {"200": "OK", "201": "Created", "202": "Accepted"}.get(code, "OK")
            r: dict[str, Any] = {"description": desc}
            if defname is not None:
                if self.v3:
                    r["content"] = {ct: {"schema": self.ref(defname)} for ct in _PRODUCES}
                else:
                    r["schema"] = self.ref(defname)
            out[code] = r
        out["401"] = {"description": "Unauthorized"}
        return out

    def op(self, action: str, op_id: str, gvk: dict[str, str], tag: str, *, params: Iterable[str] = (),
           body: str | None = None, body_types: Iterable[str] = ("*/*",), response: str | None = None,
           codes: Iterable[str] = ("200",), description: str = "") -> dict[str, Any]:
        op: dict[str, Any] = {"description": description, "operationId": op_id, "tags": [tag]}
        plist = [_param(p, "query", self.v3) for p in params]
        if body is not None:
            if self.v3:
                op["requestBody"] = {"content": {ct: {"schema": self.ref(body)} for ct in body_types},
                                     "required": action != "delete"}
            else:
                plist.insert(0, {"name": "body", "in": "body", "required": action != "delete",
                                 "schema": self.ref(body)})
                op["consumes"] = list(body_types)
        if plist:
            op["parameters"] = plist
        if not self.v3:
            op["produces"] = list(_PRODUCES)
            op["schemes"] = ["https"]
        op["responses"] = self.response(response, codes)
        op["x-kubernetes-action"] = action
        op["x-kubernetes-group-version-kind"] = dict(gvk)
        return op

    def paths_for(self, res: ServedResource) -> dict[str, Any]:
        schema = self.schema
        obj = schema.definition_for(res.group, res.version, res.kind)
        if obj is None:
            return {}
        lst = schema.definition_for(res.group, res.version, res.kind + "List")
        gvk = {"group": res.group, "kind": res.kind, "version": res.version}
        base = "/" + gv_path(res.group, res.version)
        ns_base = f"{base}/namespaces/{{namespace}}" if res.namespaced else base
        opg = _op_group(res.group) + _camel(res.version)
        scope = "Namespaced" if res.namespaced else ""
        tag = _tag(res.group, res.version)
        verbs = set(res.verbs)
        path_params = [_param("pretty", "query", self.v3)]
        if res.namespaced:
            path_params.insert(0, _param("namespace", "path", self.v3))
        paths: dict[str, Any] = {}

        coll: dict[str, Any] = {}
        if "list" in verbs and lst:
            coll["get"] = self.op("list", f"list{opg}{scope}{res.kind}", gvk, tag, params=_LIST_PARAMS,
                                  response=lst, description=f"list or watch objects of kind {res.kind}")
        if "create" in verbs:
            coll["post"] = self.op("post", f"create{opg}{scope}{res.kind}", gvk, tag, params=_WRITE_PARAMS,
                                   body=obj, response=obj, codes=("200", "201", "202"),
                                   description=f"create a {res.kind}")
        if "deletecollection" in verbs:
            coll["delete"] = self.op("deletecollection", f"deleteCollection{opg}{scope}{res.kind}", gvk, tag,
                                     params=_DELETE_PARAMS + _LIST_PARAMS, body=_DELETE_OPTIONS,
                                     response=_STATUS, description=f"delete collection of {res.kind}")
        if coll:
            coll["parameters"] = list(path_params)
            paths[f"{ns_base}/{res.plural}"] = coll

        item: dict[str, Any] = {}
        if "get" in verbs:
            item["get"] = self.op("get", f"read{opg}{scope}{res.kind}", gvk, tag, response=obj,
                                  description=f"read the specified {res.kind}")
        if "update" in verbs:
            item["put"] = self.op("put", f"replace{opg}{scope}{res.kind}", gvk, tag, params=_WRITE_PARAMS,
                                  body=obj, response=obj, codes=("200", "201"),
                                  description=f"replace the specified {res.kind}")
        if "patch" in verbs:
            item["patch"] = self.op("patch", f"patch{opg}{scope}{res.kind}", gvk, tag,
                                    params=_WRITE_PARAMS + ("force",), body=_PATCH, body_types=_PATCH_TYPES,
                                    response=obj, codes=("200", "201"),
                                    description=f"partially update the specified {res.kind}")
        if "delete" in verbs:
            item["delete"] = self.op("delete", f"delete{opg}{scope}{res.kind}", gvk, tag,
                                     params=_DELETE_PARAMS, body=_DELETE_OPTIONS, response=_STATUS,
                                     codes=("200", "202"), description=f"delete a {res.kind}")
        name_params = [_param("name", "path", self.v3)] + path_params
        if item:
            item["parameters"] = list(name_params)
            paths[f"{ns_base}/{res.plural}/{{name}}"] = item

        if res.namespaced and "list" in verbs and lst:
            paths[f"{base}/{res.plural}"] = {
                "get": self.op("list", f"list{opg}{res.kind}ForAllNamespaces", gvk, tag, params=_LIST_PARAMS,
                               response=lst, description=f"list or watch objects of kind {res.kind}"),
                "parameters": [_param("pretty", "query", self.v3)],
            }

        for sub in res.subresources:
            if sub in _BODYLESS_SUBRESOURCES:
                continue
            sub_def = _CREATE_SUBRESOURCES.get(sub) or _SUBRESOURCE_BODY.get(sub, obj)
            sub_gvk = gvk
            if sub_def != obj:
                g = schema.defs[sub_def].get("x-kubernetes-group-version-kind", [gvk])[0]
                sub_gvk = {"group": g.get("group", ""), "kind": g["kind"], "version": g["version"]}
            suffix = _camel(sub)
            ops: dict[str, Any] = {
                "get": self.op("get", f"read{opg}{scope}{res.kind}{suffix}", sub_gvk, tag, response=sub_def,
                               description=f"read {sub} of the specified {res.kind}"),
                "put": self.op("put", f"replace{opg}{scope}{res.kind}{suffix}", sub_gvk, tag,
                               params=_WRITE_PARAMS, body=sub_def, response=sub_def, codes=("200", "201"),
                               description=f"replace {sub} of the specified {res.kind}"),
                "patch": self.op("patch", f"patch{opg}{scope}{res.kind}{suffix}", sub_gvk, tag,
                                 params=_WRITE_PARAMS + ("force",), body=_PATCH, body_types=_PATCH_TYPES,
                                 response=sub_def, codes=("200", "201"),
                                 description=f"partially update {sub} of the specified {res.kind}"),
                "parameters": list(name_params),
            }
            if sub in _CREATE_SUBRESOURCES:
                ops = {"post": self.op("post", f"create{opg}{scope}{res.kind}{suffix}", sub_gvk, tag,
                                       params=_WRITE_PARAMS, body=sub_def, response=sub_def,
                                       codes=("200", "201", "202"), description=f"create {sub} of a {res.kind}"),
                       "parameters": list(name_params)}
            elif sub in _REPLACE_ONLY_SUBRESOURCES:
                ops = {"put": ops["put"], "parameters": ops["parameters"]}
            paths[f"{ns_base}/{res.plural}/{{name}}/{sub}"] = ops
        return paths


def _discovery_path(b: _OpBuilder, group: str, version: str) -> dict[str, Any]:
    tag = _tag(group, version)
    op: dict[str, Any] = {"description": "get available resources",
                          "operationId": f"get{_op_group(group)}{_camel(version)}APIResources",
                          "tags": [tag], "responses": b.response(_APIRESOURCELIST)}
    if not b.v3:
        op["produces"] = list(_PRODUCES)
        op["schemes"] = ["https"]
    return {"get": op}


def _build_v2(schema: Schema, served: tuple[ServedResource, ...]) -> dict[str, Any]:
    b = _OpBuilder(schema, v3=False)
    paths: dict[str, Any] = {}
    for group, version in sorted({(s.group, s.version) for s in served}):
        paths[f"/{gv_path(group, version)}/"] = _discovery_path(b, group, version)
    for res in served:
        paths.update(b.paths_for(res))
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": dict(sorted(paths.items())),
        "definitions": schema._v2_definitions(),
        "securityDefinitions": {"BearerToken": {"description": "Bearer Token authentication",
                                                "type": "apiKey", "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}],
    }


def _build_v3(schema: Schema, group: str, version: str, served: tuple[ServedResource, ...]) -> dict[str, Any]:
    b = _OpBuilder(schema, v3=True)
    paths: dict[str, Any] = {f"/{gv_path(group, version)}/": _discovery_path(b, group, version)}
    for res in served:
        if res.group == group and res.version == version:
            paths.update(b.paths_for(res))
    # Every schema reachable from the operations, as upstream ships per group/version.
    pending = list(b.refs)
    components: dict[str, Any] = {}
    while pending:
        name = pending.pop()
        if name in components:
            continue
        converted = schema._v3_schema(name)
        components[name] = converted
        for ref in _refs_in(schema.defs[name]):
            if ref not in components:
                pending.append(ref)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication",
                                                "name": "authorization", "in": "header"}},
        },
        "security": [{"BearerToken": []}],
    }


def _refs_in(raw: Any) -> Iterable[str]:
    if isinstance(raw, dict):
        ref = raw.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            yield ref[len(_REF_PREFIX):]
        for v in raw.values():
            if isinstance(v, (dict, list)):
                yield from _refs_in(v)
    elif isinstance(raw, list):
        for v in raw:
            yield from _refs_in(v)


# ---- the process-wide instance -----------------------------------------------------

_schema: Schema | None = None
_schema_lock = threading.Lock()


def _load_definitions() -> dict[str, dict[str, Any]]:
    ref = resources.files(_DEFS_PACKAGE).joinpath(*_DEFS_FILE)
    return orjson.loads(ref.read_bytes())["$defs"]


def get_schema() -> Schema:
    """The process-wide Schema, loading the package data on first use."""
    global _schema
    if _schema is None:
        with _schema_lock:
            if _schema is None:
                _schema = Schema(_load_definitions())
    return _schema


def validate(obj: dict[str, Any], group: str, version: str, kind: str, *,
             strict: bool) -> tuple[list[FieldError], list[str]]:
    """Module-level shortcut for ``get_schema().validate(...)``."""
    return get_schema().validate(obj, group, version, kind, strict=strict)


def openapi_v2(served: Iterable[ServedResource]) -> dict[str, Any]:
    return get_schema().openapi_v2(served)


def openapi_v3_index(served: Iterable[ServedResource]) -> dict[str, Any]:
    return get_schema().openapi_v3_index(served)


def openapi_v3_group_version(group: str, version: str, served: Iterable[ServedResource]) -> dict[str, Any] | None:
    return get_schema().openapi_v3_group_version(group, version, served)
