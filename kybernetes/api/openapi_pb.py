"""The OpenAPI v2 (swagger 2.0) document as protobuf, the form kubectl 1.27 and 1.28 ask for.

Those kubectl versions fetch ``GET /openapi/v2`` with
``Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`` and parse the answer as the
``openapi.v2.Document`` message of the gnostic project (the Go library they use for OpenAPI); they
need it for client-side validation, ``kubectl explain`` and strategic merge patches in ``apply``.

As in protobuf.py, no field numbers are typed in here. kubectl links gnostic, which registers its
FileDescriptorProto with the newer Go protobuf API: serialized as-is, not gzipped. This module finds
that descriptor in a kubectl binary at run time (``raw_file_descriptor``), loads it into a
``DescriptorPool`` and encodes our JSON swagger document into a Document by walking the message
descriptors, following how gnostic maps the JSON/YAML shape onto its messages:

* a field ``foo_bar`` holds the JSON key ``fooBar``; ``_ref`` holds ``$ref``;
* ``vendor_extension`` collects the ``x-*`` keys as NamedAny{name, Any{yaml}};
* a message whose one field is ``additional_properties`` (Definitions, Properties, ...) is a JSON
  object: one Named* pair per key; Paths and Responses split their keys between their map and
  their vendor extensions;
* free-form values (enum entries, default, example, extension values) become Any with the value
  written as YAML text;
* the wrapper messages (TypeItem, ItemsItem, AdditionalPropertiesItem, Parameter, ...) pick their
  branch from the JSON value, as gnostic's readers do.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

import orjson
import yaml

from kybernetes.api.protobuf import (
    T_BOOL,
    T_BYTES,
    T_DOUBLE,
    T_FLOAT,
    T_INT32,
    T_INT64,
    T_MESSAGE,
    T_STRING,
    T_UINT32,
    T_UINT64,
    ENV_DESCRIPTORS_FROM,
    DescriptorPool,
    FieldInfo,
    MessageInfo,
    WireError,
    descriptor_sources,
    read_varint,
)

# What kubectl asks for. '@' is not allowed in a MIME token, so Go's mime.ParseMediaType (which
# kubectl applies to every response) rejects it in a Content-Type: the answer is labelled with the
# dotted spelling, which kubectl also accepts in requests.
MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
_ACCEPTED = frozenset({MEDIA_TYPE.lower(), CONTENT_TYPE.lower()})
DESCRIPTOR_FILE = "openapiv2/OpenAPIv2.proto"
PACKAGE = ".openapi.v2."

# Messages the encoder must find for a descriptor to be usable, with a field each that it relies on.
_EXPECTED = {
    "Document": "swagger", "Info": "title", "Paths": "path", "NamedPathItem": "value", "PathItem": "get",
    "Operation": "parameters", "ParametersItem": "parameter", "Parameter": "body_parameter",
    "NonBodyParameter": "query_parameter_sub_schema", "BodyParameter": "schema", "Responses": "response_code",
    "ResponseValue": "response", "Response": "schema", "SchemaItem": "schema", "Definitions":
    "additional_properties", "NamedSchema": "value", "Schema": "_ref", "Properties": "additional_properties",
    "TypeItem": "value", "ItemsItem": "schema", "AdditionalPropertiesItem": "boolean", "Any": "yaml",
    "NamedAny": "value", "JsonReference": "_ref", "SecurityDefinitionsItem": "api_key_security",
}

# FileDescriptorProto's top-level fields (descriptor.proto) and the wire types each may use:
# 1 name, 2 package, 3 dependency, 4 message_type, 5 enum_type, 6 service, 7 extension, 8 options,
# 9 source_code_info, 10 public_dependency, 11 weak_dependency, 12 syntax, 13 (old) edition string,
# 14 edition enum.
_LEN, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5
_FILE_FIELD_WIRES = {n: {_LEN} for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13)}
_FILE_FIELD_WIRES.update({10: {_VARINT, _LEN}, 11: {_VARINT, _LEN}, 14: {_VARINT}})


# --- finding the descriptor ---------------------------------------------------------------------------

def descriptor_extent(data: bytes, start: int) -> int:
    """End offset of the serialized FileDescriptorProto starting at ``start``.

    A raw descriptor in a binary has no length prefix near it that can be trusted, so read it
    field by field until the next tag is not a FileDescriptorProto field (or the data ends).
    """
    pos = start
    end = len(data)
    while pos < end:
        try:
            key, p = read_varint(data, pos)
        except WireError:
            return pos
        number, wire = key >> 3, key & 7
        if wire not in _FILE_FIELD_WIRES.get(number, ()):
            return pos
        try:
            if wire == _LEN:
                size, p = read_varint(data, p)
                p += size
            else:
                _, p = read_varint(data, p)
        except WireError:
            return pos
        if p > end:
            return pos
        pos = p
    return pos


def raw_file_descriptor(data: bytes, name: str = DESCRIPTOR_FILE) -> bytes | None:
    """The serialized (not compressed) FileDescriptorProto called ``name`` inside ``data``, or None."""
    encoded = name.encode()
    if len(encoded) > 127:
        raise ValueError("descriptor file name too long")
    marker = b"\n" + bytes([len(encoded)]) + encoded  # field 1 (name), length-delimited
    pos = data.find(marker)
    while pos >= 0:
        end = descriptor_extent(data, pos)
        blob = data[pos:end]
        if _usable(blob):
            return blob
        pos = data.find(marker, pos + 1)
    return None


def _usable(blob: bytes) -> bool:
    pool = DescriptorPool()
    try:
        pool.add_file(blob)
    except (WireError, UnicodeDecodeError):
        return False
    return check_pool(pool)


def check_pool(pool: DescriptorPool) -> bool:
    """Whether the pool holds the gnostic messages and fields the encoder relies on."""
    for message, field_name in _EXPECTED.items():
        msg = pool.messages.get(PACKAGE + message)
        if msg is None or not any(f.name == field_name for f in msg.fields.values()):
            return False
    return True


def load_openapi_v2_pool(sources: list[str] | None = None) -> DescriptorPool | None:
    """A pool with gnostic's OpenAPI v2 messages, from the first binary that embeds them, or None."""
    for path in descriptor_sources() if sources is None else sources:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        blob = raw_file_descriptor(data)
        if blob is None:
            continue
        pool = DescriptorPool()
        pool.add_file(blob)
        return pool
    return None


_lock = threading.Lock()
_pool: DescriptorPool | None = None
_pool_loaded = False
_encoded: dict[bytes, bytes] = {}


def openapi_v2_pool() -> DescriptorPool | None:
    """The process-wide pool, loaded on first use; None when no kubectl on this machine provides it."""
    global _pool, _pool_loaded
    with _lock:
        if not _pool_loaded:
            _pool = load_openapi_v2_pool()
            _pool_loaded = True
        return _pool


def reset() -> None:
    """Forget the loaded descriptors and encoded documents (tests, reloads)."""
    global _pool, _pool_loaded
    with _lock:
        _pool = None
        _pool_loaded = False
        _encoded.clear()


def wants_protobuf(accept: str) -> bool:
    """Whether an Accept header names the gnostic protobuf form of /openapi/v2 (either spelling)."""
    return any(part.split(";", 1)[0].strip().lower() in _ACCEPTED for part in accept.split(","))


def cached_openapi_v2_protobuf(json_doc: bytes) -> bytes | None:
    """The protobuf form of a serialized JSON swagger document; None when no descriptors are found.

    Results are kept per document (the key is the bytes object itself, whose hash Python caches),
    so a server that keeps its JSON bytes pays for the encoding once. Thread-safe; the first call
    reads a kubectl binary and encodes (a few hundred milliseconds): run it with
    ``asyncio.to_thread`` from an event loop.
    """
    pool = openapi_v2_pool()
    if pool is None:
        return None
    with _lock:
        hit = _encoded.get(json_doc)
    if hit is not None:
        return hit
    out = openapi_v2_protobuf(orjson.loads(json_doc), pool)
    with _lock:
        if len(_encoded) >= 4:
            _encoded.clear()
        _encoded[json_doc] = out
    return out


# --- encoding -------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _json_key(field_name: str) -> str:
    if field_name == "_ref":
        return "$ref"
    head, *rest = field_name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


_yaml_cache: dict[bytes, str] = {}
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def yaml_text(value: Any) -> str:
    """A JSON value as the block-style YAML text gnostic stores in an Any."""
    key = orjson.dumps(value)
    text = _yaml_cache.get(key)
    if text is None:
        text = yaml.dump(value, Dumper=_Dumper, default_flow_style=False, sort_keys=False,
                         allow_unicode=True, width=1 << 20)
        if text.endswith("\n...\n"):  # PyYAML's end marker after a bare scalar
            text = text[:-4]
        if len(_yaml_cache) < 100_000:
            _yaml_cache[key] = text
    return text


class _Plan:
    """How one message type is encoded: its fields by JSON key, in field-number order."""

    __slots__ = ("msg", "short", "fields", "by_name", "vendor", "map_field")

    def __init__(self, msg: MessageInfo):
        self.msg = msg
        self.short = msg.full_name.rsplit(".", 1)[-1]
        ordered = sorted(msg.fields.values(), key=lambda f: f.number)
        self.by_name = {f.name: f for f in ordered}
        self.vendor = self.by_name.get("vendor_extension")
        self.map_field = self.by_name.get("additional_properties") if len(ordered) == 1 else None
        self.fields = [(_json_key(f.name), f) for f in ordered if f.name != "vendor_extension"]


def _tag(f: FieldInfo, wire: int) -> bytes:
    return _varint(f.number << 3 | wire)


class Encoder:
    """Encodes swagger-2.0 JSON values into gnostic messages of one DescriptorPool."""

    def __init__(self, pool: DescriptorPool):
        self.pool = pool
        self._plans: dict[str, _Plan] = {}
        self._special: dict[str, Callable[[_Plan, Any], bytes]] = {
            "Any": self._any,
            "TypeItem": self._type_item,
            "StringArray": self._type_item,
            "ItemsItem": self._items_item,
            "AdditionalPropertiesItem": self._additional_properties_item,
            "Parameter": self._parameter,
            "NonBodyParameter": self._non_body_parameter,
            "ParametersItem": self._reference_or_first,
            "ResponseValue": self._reference_or_first,
            "SchemaItem": self._schema_item,
            "SecurityDefinitionsItem": self._security_definitions_item,
            "Paths": self._paths,
            "Responses": self._responses,
        }

    def plan(self, name: str) -> _Plan:
        p = self._plans.get(name)
        if p is None:
            msg = self.pool.messages.get(name)
            if msg is None:
                raise KeyError(f"unknown message {name}")
            p = self._plans[name] = _Plan(msg)
        return p

    def message(self, name: str, value: Any) -> bytes:
        """The serialized message ``name`` (".openapi.v2.Schema") for a JSON value."""
        p = self.plan(name)
        special = self._special.get(p.short)
        if special is not None:
            return special(p, value)
        if p.map_field is not None:
            return self._map(p.map_field, value)
        if not isinstance(value, dict):
            return b""
        out = []
        for key, f in p.fields:
            if key in value:
                out.append(self.field(f, value[key]))
        if p.vendor is not None:
            out.append(self._vendor(p.vendor, value))
        return b"".join(out)

    # --- fields ---

    def field(self, f: FieldInfo, value: Any, *, oneof: bool = False) -> bytes:
        """One field's bytes; proto3 zero scalars are left out unless they are a oneof branch."""
        if value is None:
            return b""
        if f.repeated:
            items = value if isinstance(value, list) else [value]
            return b"".join(self._one(f, v, True) for v in items)
        return self._one(f, value, oneof)

    def _one(self, f: FieldInfo, value: Any, keep_zero: bool) -> bytes:
        t = f.type
        if t == T_MESSAGE:
            return _len_field(_tag(f, _LEN), self.message(f.type_name, value))
        if t in (T_STRING, T_BYTES):
            if not isinstance(value, str):
                value = value if isinstance(value, bytes | bytearray) else _scalar_text(value)
            data = value.encode() if isinstance(value, str) else bytes(value)
            return _len_field(_tag(f, _LEN), data) if data or keep_zero else b""
        if t == T_BOOL:
            flag = bool(value)
            return _tag(f, _VARINT) + (b"\x01" if flag else b"\x00") if flag or keep_zero else b""
        if t in (T_INT64, T_INT32, T_UINT64, T_UINT32):
            try:
                n = int(value)
            except (TypeError, ValueError):
                return b""
            return _tag(f, _VARINT) + _varint(n) if n or keep_zero else b""
        if t in (T_DOUBLE, T_FLOAT):
            try:
                x = float(value)
            except (TypeError, ValueError):
                return b""
            if not x and not keep_zero:
                return b""
            if t == T_DOUBLE:
                return _tag(f, _FIXED64) + struct.pack("<d", x)
            return _tag(f, _FIXED32) + struct.pack("<f", x)
        raise ValueError(f"field {f.name}: unsupported type {t}")

    def _pair(self, map_field: FieldInfo, key: str, value: Any) -> bytes:
        entry = self.plan(map_field.type_name)
        name_f, value_f = entry.by_name["name"], entry.by_name["value"]
        body = _len_field(_tag(name_f, _LEN), key.encode()) + self._one(value_f, value, True)
        return _len_field(_tag(map_field, _LEN), body)

    def _map(self, map_field: FieldInfo, value: Any, keep: Callable[[str], bool] | None = None) -> bytes:
        if not isinstance(value, dict):
            return b""
        return b"".join(self._pair(map_field, str(k), v) for k, v in value.items()
                        if keep is None or keep(str(k)))

    def _vendor(self, f: FieldInfo, value: dict) -> bytes:
        return self._map(f, value, lambda k: k.startswith("x-"))

    # --- messages with their own reading rules ---

    def _any(self, p: _Plan, value: Any) -> bytes:
        return _len_field(_tag(p.by_name["yaml"], _LEN), yaml_text(value).encode())

    def _type_item(self, p: _Plan, value: Any) -> bytes:
        return self.field(p.by_name["value"], value if isinstance(value, list) else [value])

    def _items_item(self, p: _Plan, value: Any) -> bytes:
        return self.field(p.by_name["schema"], value if isinstance(value, list) else [value])

    def _additional_properties_item(self, p: _Plan, value: Any) -> bytes:
        if isinstance(value, bool):
            return self.field(p.by_name["boolean"], value, oneof=True)
        return self.field(p.by_name["schema"], value, oneof=True)

    def _parameter(self, p: _Plan, value: Any) -> bytes:
        body = isinstance(value, dict) and value.get("in") == "body"
        return self.field(p.by_name["body_parameter" if body else "non_body_parameter"], value, oneof=True)

    def _non_body_parameter(self, p: _Plan, value: Any) -> bytes:
        where = value.get("in") if isinstance(value, dict) else None
        # The branch fields are named after the "in" values: header, formData, query, path.
        for name, f in p.by_name.items():
            if where and _json_key(name).lower().startswith(str(where).lower()):
                return self.field(f, value, oneof=True)
        return b""

    def _reference_or_first(self, p: _Plan, value: Any) -> bytes:
        # ParametersItem {parameter | json_reference}, ResponseValue {response | json_reference}.
        if isinstance(value, dict) and "$ref" in value and "json_reference" in p.by_name:
            return self.field(p.by_name["json_reference"], value, oneof=True)
        other = next(f for name, f in p.by_name.items() if name != "json_reference")
        return self.field(other, value, oneof=True)

    def _schema_item(self, p: _Plan, value: Any) -> bytes:
        file = isinstance(value, dict) and value.get("type") == "file"
        return self.field(p.by_name["file_schema" if file else "schema"], value, oneof=True)

    def _security_definitions_item(self, p: _Plan, value: Any) -> bytes:
        if not isinstance(value, dict):
            return b""
        kind, flow = value.get("type"), str(value.get("flow", "")).lower()
        for name, f in p.by_name.items():
            key = name.replace("_", "").lower()  # "oauth2accesscodesecurity"
            if (kind == "basic" and key.startswith("basic")) or (kind == "apiKey" and key.startswith("apikey")) \
                    or (kind == "oauth2" and flow and key == f"oauth2{flow}security"):
                return self.field(f, value, oneof=True)
        return b""

    def _paths(self, p: _Plan, value: Any) -> bytes:
        if not isinstance(value, dict):
            return b""
        return self._vendor(p.by_name["vendor_extension"], value) + self._map(
            p.by_name["path"], value, lambda k: k.startswith("/"))

    def _responses(self, p: _Plan, value: Any) -> bytes:
        if not isinstance(value, dict):
            return b""

        def is_code(k: str) -> bool:
            return k == "default" or (len(k) == 3 and k.isdigit())
        return self._map(p.by_name["response_code"], value, is_code) + self._vendor(
            p.by_name["vendor_extension"], value)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def openapi_v2_protobuf(doc: dict, pool: DescriptorPool | None = None) -> bytes:
    """Encode a swagger-2.0 JSON document as gnostic's ``openapi.v2.Document`` message.

    Raises LookupError when no pool is given and no kubectl on this machine embeds the descriptors.
    """
    if pool is None:
        pool = openapi_v2_pool()
        if pool is None:
            raise LookupError("no kubectl binary with the gnostic OpenAPI v2 descriptors was found; "
                              f"put kubectl on PATH or set {ENV_DESCRIPTORS_FROM}")
    return Encoder(pool).message(PACKAGE + "Document", doc)

