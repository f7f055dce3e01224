"""Decoding of Kubernetes protobuf request bodies into the JSON-shaped dicts the rest of the server uses.

The real kubectl sends built-in objects as ``application/vnd.kubernetes.protobuf`` when it uses its
typed clients (``kubectl create namespace``, ``create deployment``, drain's Eviction, ...) and does
not retry in JSON when a server refuses. The server answers in JSON, which kubectl accepts, so only
decoding is needed.

The field numbers and types are not typed in here: Go programs built with gogo-protobuf embed the
gzip-compressed FileDescriptorProto of every ``generated.proto`` they link, and kubectl links all of
the built-in API groups. This module finds those blobs in the kubectl binary on the machine at run
time (lazily, on the first protobuf request, then cached in memory), parses them with a small
wire-format reader and walks request bodies with them. Nothing derived from upstream files is stored
in the project.

The output follows the Kubernetes JSON shape (what Go's encoding/json makes of the Go structs), not
the proto3 JSON mapping: well-known apimachinery messages (Time, Duration, Quantity, IntOrString,
RawExtension, ...) become their JSON scalars, and zero values of non-pointer Go fields, which gogo
writes but Go's JSON omits, are dropped.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from kybernetes.api.errors import StatusError, bad_request

PROTOBUF_MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
ENV_DESCRIPTORS_FROM = "KYB_PROTO_DESCRIPTORS_FROM"
ENVELOPE_MAGIC = b"k8s\x00"

# Wire types.
_VARINT, _FIXED64, _LEN, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5

# FieldDescriptorProto.Type values (descriptor.proto).
T_DOUBLE, T_FLOAT, T_INT64, T_UINT64, T_INT32, T_FIXED64, T_FIXED32, T_BOOL = 1, 2, 3, 4, 5, 6, 7, 8
T_STRING, T_GROUP, T_MESSAGE, T_BYTES, T_UINT32, T_ENUM, T_SFIXED32, T_SFIXED64 = 9, 10, 11, 12, 13, 14, 15, 16
T_SINT32, T_SINT64 = 17, 18
LABEL_REPEATED = 3

_VARINT_TYPES = frozenset({T_INT64, T_UINT64, T_INT32, T_BOOL, T_UINT32, T_ENUM, T_SINT32, T_SINT64})
_FIXED32_FORMATS = {T_FIXED32: "<I", T_SFIXED32: "<i", T_FLOAT: "<f"}
_FIXED64_FORMATS = {T_FIXED64: "<Q", T_SFIXED64: "<q", T_DOUBLE: "<d"}

_META = ".k8s.io.apimachinery.pkg.apis.meta.v1."
_TIME = _META + "Time"
_MICRO_TIME = _META + "MicroTime"
_DURATION = _META + "Duration"
_FIELDS_V1 = _META + "FieldsV1"
_QUANTITY = ".k8s.io.apimachinery.pkg.api.resource.Quantity"
_INT_OR_STRING = ".k8s.io.apimachinery.pkg.util.intstr.IntOrString"
_RAW_EXTENSION = ".k8s.io.apimachinery.pkg.runtime.RawExtension"

# Go's zero time.Time (0001-01-01T00:00:00Z) as Unix seconds; some encoders write it instead of nothing.
_GO_ZERO_TIME_SECONDS = -62135596800
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Fields that are Go pointers (or otherwise keep a meaningful zero) in the built-in types. gogo only
# writes a pointer field when it is set, so a zero there was said on purpose ("replicas: 0",
# "suspend: false", "gracePeriodSeconds: 0") and must survive; every other zero scalar is a Go zero
# value that JSON's omitempty would have left out. Written from the API reference's field types; a
# bare name applies in every message, "Message.field" in one message only.
KEEP_ZERO_FIELDS: frozenset[str] = frozenset({
    # workloads: Deployment, ReplicaSet, StatefulSet, DaemonSet
    "DeploymentSpec.replicas", "ReplicaSetSpec.replicas", "StatefulSetSpec.replicas",
    "ReplicationControllerSpec.replicas", "ScaleSpec.replicas", "revisionHistoryLimit", "progressDeadlineSeconds", "partition", "maxSurge",
    "maxUnavailable",
    # Job and CronJob
    "parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "backoffLimitPerIndex",
    "maxFailedIndexes", "ttlSecondsAfterFinished", "manualSelector", "suspend", "completionMode",
    "podReplacementPolicy", "managedBy", "startingDeadlineSeconds", "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit", "timeZone",
    # PodSpec, containers, security contexts, probes
    "terminationGracePeriodSeconds", "automountServiceAccountToken", "shareProcessNamespace",
    "PodSpec.priority", "enableServiceLinks", "hostUsers", "setHostnameAsFQDN", "preemptionPolicy",
    "runtimeClassName", "privileged", "runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
    "allowPrivilegeEscalation", "procMount", "fsGroup", "fsGroupChangePolicy", "supplementalGroupsPolicy",
    "Container.restartPolicy",
    # volumes and projections
    "defaultMode", "mode", "optional", "expirationSeconds", "PersistentVolumeClaimSpec.storageClassName",
    "volumeMode",
    # Service
    "allocateLoadBalancerNodePorts", "ipFamilyPolicy", "internalTrafficPolicy", "loadBalancerClass",
    "trafficDistribution", "ClientIPConfig.timeoutSeconds",
    # ConfigMap, Secret, ServiceAccount
    "immutable",
    # PodDisruptionBudget, HPA
    "minAvailable", "unhealthyPodEvictionPolicy", "minReplicas", "stabilizationWindowSeconds",
    "selectPolicy",
    # PriorityClass.value is a plain int32, but a required one: 0 is a real priority
    "PriorityClass.value",
    # DeleteOptions (delete --grace-period=0, drain's Eviction), preconditions
    "gracePeriodSeconds", "propagationPolicy", "orphanDependents", "Preconditions.uid",
    "Preconditions.resourceVersion",
    # Ingress, Lease
    "ingressClassName", "pathType", "holderIdentity", "leaseDurationSeconds", "leaseTransitions",
})

# Go structs embedded with `json:",inline"`: protobuf gives them a field of their own (named after the
# type), JSON spreads their fields into the parent ("volumeSource" -> "emptyDir" beside "name").
# Written from the Go type definitions; same key form as KEEP_ZERO_FIELDS.
INLINE_FIELDS: frozenset[str] = frozenset({
    "Volume.volumeSource", "PersistentVolumeSpec.persistentVolumeSource", "Probe.handler",
    "EphemeralContainer.ephemeralContainerCommon", "localObjectReference", "IngressRule.ingressRuleValue",
    "RuleWithOperations.rule", "NamedRuleWithOperations.ruleWithOperations", "deviceConfiguration",
})

_OMIT = object()


class WireError(ValueError):
    """The bytes are not valid protobuf wire format."""


# --- wire format -----------------------------------------------------------------------------------

def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Read a base-128 varint at pos; return (value, position after it)."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint too long")


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one message.

    Varints come as ints, fixed32/fixed64 as their raw little-endian bytes, length-delimited
    fields as bytes. Groups (unused by Kubernetes) are rejected.
    """
    if not isinstance(buf, memoryview):
        buf = memoryview(buf)
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == _VARINT:
            value, pos = read_varint(buf, pos)
            yield number, wire, value
        elif wire == _LEN:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise WireError(f"field {number}: length {size} runs past the end of the message")
            yield number, wire, bytes(buf[pos:pos + size])
            pos += size
        elif wire == _FIXED64 or wire == _FIXED32:
            size = 8 if wire == _FIXED64 else 4
            if pos + size > end:
                raise WireError(f"field {number}: truncated fixed-width value")
            yield number, wire, bytes(buf[pos:pos + size])
            pos += size
        else:
            raise WireError(f"field {number}: unsupported wire type {wire}")


def _signed64(value: int) -> int:
    # int32 and int64 negatives are sign-extended to 64 bits on the wire.
    return value - (1 << 64) if value >= 1 << 63 else value


def _zigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


# --- descriptors -----------------------------------------------------------------------------------

@dataclass(slots=True)
class FieldInfo:
    """One field of a message, as far as decoding needs it."""

    name: str
    number: int
    type: int
    repeated: bool
    type_name: str = ""  # fully qualified with a leading dot, for messages and enums
    keep_zero: bool = False
    inline: bool = False


@dataclass(slots=True)
class MessageInfo:
    """One message type: its fields by number and whether it is a synthesized map entry."""

    full_name: str  # ".k8s.io.api.core.v1.Pod"
    fields: dict[int, FieldInfo] = field(default_factory=dict)
    map_entry: bool = False
    items_wrapper: bool = False  # a Go named slice type (meta.v1.Verbs): one repeated scalar "items"


def _str(raw: int | bytes) -> str:
    if not isinstance(raw, bytes):
        raise WireError("expected a length-delimited string")
    return raw.decode()


class DescriptorPool:
    """Message types parsed from FileDescriptorProtos, and a decoder driven by them."""

    def __init__(self) -> None:
        self.messages: dict[str, MessageInfo] = {}
        self.files: list[str] = []

    def add_file(self, data: bytes) -> None:
        """Add the message types of one serialized FileDescriptorProto."""
        name = package = ""
        message_blobs: list[bytes] = []
        for number, _wire, value in iter_fields(data):
            if number == 1:
                name = _str(value)
            elif number == 2:
                package = _str(value)
            elif number == 4 and isinstance(value, bytes):
                message_blobs.append(value)
        prefix = "." + package if package else ""
        for blob in message_blobs:
            self._add_message(prefix, blob)
        self.files.append(name)

    def _add_message(self, prefix: str, data: bytes) -> None:
        name = ""
        field_blobs: list[bytes] = []
        nested: list[bytes] = []
        map_entry = False
        for number, _wire, value in iter_fields(data):
            if number == 1:
                name = _str(value)
            elif number == 2 and isinstance(value, bytes):
                field_blobs.append(value)
            elif number == 3 and isinstance(value, bytes):
                nested.append(value)
            elif number == 7 and isinstance(value, bytes):
                for opt, _w, flag in iter_fields(value):
                    if opt == 7 and flag:
                        map_entry = True
        full = f"{prefix}.{name}"
        msg = MessageInfo(full, map_entry=map_entry)
        for blob in field_blobs:
            f = self._parse_field(name, blob)
            msg.fields[f.number] = f
        # Named slices of scalars (Verbs, ExtraValue) are wrapped in a message on the wire but are
        # plain lists in JSON; a struct with one list of objects (DownwardAPIProjection) is not.
        msg.items_wrapper = (len(msg.fields) == 1 and all(
            f.name == "items" and f.repeated and f.type not in (T_MESSAGE, T_GROUP)
            for f in msg.fields.values()))
        self.messages[full] = msg
        for blob in nested:
            self._add_message(full, blob)

    @staticmethod
    def _parse_field(message_name: str, data: bytes) -> FieldInfo:
        name = type_name = ""
        number = ftype = label = 0
        for num, _wire, value in iter_fields(data):
            if num == 1:
                name = _str(value)
            elif num == 3 and isinstance(value, int):
                number = value
            elif num == 4 and isinstance(value, int):
                label = value
            elif num == 5 and isinstance(value, int):
                ftype = value
            elif num == 6:
                type_name = _str(value)
        qualified = f"{message_name}.{name}"
        keep = name in KEEP_ZERO_FIELDS or qualified in KEEP_ZERO_FIELDS
        inline = ftype == T_MESSAGE and (name in INLINE_FIELDS or qualified in INLINE_FIELDS)
        return FieldInfo(name, number, ftype, label == LABEL_REPEATED, type_name, keep, inline)

    # --- type lookup ---

    def message_for(self, api_version: str, kind: str) -> MessageInfo:
        """The message type of a kind in an API version, e.g. ("apps/v1", "Deployment")."""
        package = package_for(api_version)
        msg = self.messages.get(f".{package}.{kind}")
        if msg is None:
            # Option types (DeleteOptions, CreateOptions, ...) are registered in every group
            # version, so clients may label them with the group version they talk to.
            msg = self.messages.get(f".k8s.io.apimachinery.pkg.apis.meta.v1.{kind}")
        if msg is None:
            raise bad_request(f"protobuf: no known type for kind {kind!r} in apiVersion {api_version!r}")
        return msg

    # --- decoding ---

    def decode_message(self, msg: MessageInfo, data: bytes) -> Any:
        """Decode one message body to its Kubernetes JSON value (usually a dict)."""
        special = _SPECIAL.get(msg.full_name)
        if special is not None:
            return special(self, msg, data)
        out: dict[str, Any] = {}
        inlined: list[dict[str, Any]] = []
        for number, wire, value in iter_fields(data):
            f = msg.fields.get(number)
            if f is None:
                continue  # a field newer than the descriptors: skip it, as protobuf does
            if f.type == T_MESSAGE:
                if not isinstance(value, bytes):
                    raise WireError(f"field {f.name}: expected a message")
                sub = self.messages.get(f.type_name)
                if sub is None:
                    raise WireError(f"field {f.name}: unknown message type {f.type_name}")
                if sub.map_entry:
                    key, item = self._decode_entry(sub, value)
                    out.setdefault(f.name, {})[key] = item
                    continue
                decoded = self.decode_message(sub, value)
                if f.inline and isinstance(decoded, dict) and not f.repeated:
                    inlined.append(decoded)
                elif f.repeated:
                    out.setdefault(f.name, []).append(None if decoded is _OMIT else decoded)
                else:
                    out[f.name] = decoded
            elif f.repeated:
                items = out.setdefault(f.name, [])
                if wire == _LEN and f.type not in (T_STRING, T_BYTES):
                    items.extend(_unpack(f, value))  # packed repeated scalars
                else:
                    items.append(_scalar(f, wire, value))
            else:
                out[f.name] = _scalar(f, wire, value)
        if msg.items_wrapper:
            return out.get("items") or _OMIT
        for name, value in list(out.items()):
            if value is _OMIT:
                del out[name]
        out = _drop_zero_values(msg, out)
        for extra in inlined:
            out.update(extra)
        return out

    def _decode_entry(self, entry: MessageInfo, data: bytes) -> tuple[str, Any]:
        key_field, value_field = entry.fields.get(1), entry.fields.get(2)
        if key_field is None or value_field is None:
            raise WireError(f"map entry {entry.full_name} lacks key or value")
        key: Any = ""
        value: Any = _OMIT
        for number, wire, raw in iter_fields(data):
            f = entry.fields.get(number)
            if f is None:
                continue
            if f.type == T_MESSAGE:
                sub = self.messages.get(f.type_name)
                if sub is None or not isinstance(raw, bytes):
                    raise WireError(f"map entry {entry.full_name}: bad value")
                decoded = self.decode_message(sub, raw)
            else:
                decoded = _scalar(f, wire, raw)
            if number == 1:
                key = decoded
            else:
                value = decoded
        if value is _OMIT:
            # A map value is written even when empty; an absent one is its type's zero value.
            value = _zero_of(value_field) if value_field.type != T_MESSAGE else {}
        # JSON object keys are strings; Go's encoding/json formats integer keys in decimal.
        return (key if isinstance(key, str) else str(key)), value


def _drop_zero_values(msg: MessageInfo, out: dict[str, Any]) -> dict[str, Any]:
    # gogo writes every non-pointer field even when zero; Go's JSON leaves those out (omitempty),
    # so a zero scalar means "unset" unless the field is a pointer (KEEP_ZERO_FIELDS). Nested
    # messages stay even when empty: encoding/json never omits a struct, and an empty pointer
    # struct such as "emptyDir: {}" or "podSelector: {}" carries meaning.
    by_name = {f.name: f for f in msg.fields.values()}
    for name in list(out):
        f = by_name[name]
        value = out[name]
        if f.repeated:
            continue  # absent when empty; elements (apiGroups: [""]) are always kept
        if f.type == T_MESSAGE and isinstance(value, dict):
            continue
        if f.keep_zero:
            continue
        # Covers "", 0, 0.0, False, and the empty list of a named slice type such as Verbs.
        if value == "" or value == 0 or value == []:
            del out[name]
    return out


def _zero_of(f: FieldInfo) -> Any:
    if f.type in (T_STRING, T_BYTES):
        return ""
    if f.type == T_BOOL:
        return False
    return 0


def _scalar(f: FieldInfo, wire: int, value: int | bytes) -> Any:
    t = f.type
    if t in _VARINT_TYPES:
        if wire != _VARINT or not isinstance(value, int):
            raise WireError(f"field {f.name}: expected a varint")
        if t == T_BOOL:
            return value != 0
        if t in (T_INT64, T_INT32, T_ENUM):
            return _signed64(value)
        if t in (T_SINT32, T_SINT64):
            return _zigzag(value)
        return value
    if t == T_STRING:
        if wire != _LEN or not isinstance(value, bytes):
            raise WireError(f"field {f.name}: expected a string")
        return value.decode()
    if t == T_BYTES:
        if wire != _LEN or not isinstance(value, bytes):
            raise WireError(f"field {f.name}: expected bytes")
        # Go's encoding/json writes []byte as standard base64.
        return base64.b64encode(value).decode()
    fmt = _FIXED32_FORMATS.get(t) or _FIXED64_FORMATS.get(t)
    if fmt is not None and isinstance(value, bytes) and len(value) == struct.calcsize(fmt):
        return struct.unpack(fmt, value)[0]
    raise WireError(f"field {f.name}: value does not match its type")


def _unpack(f: FieldInfo, data: int | bytes) -> list[Any]:
    if not isinstance(data, bytes):
        raise WireError(f"field {f.name}: bad packed value")
    out: list[Any] = []
    if f.type in _VARINT_TYPES:
        pos = 0
        while pos < len(data):
            v, pos = read_varint(data, pos)
            out.append(_scalar(f, _VARINT, v))
        return out
    size = 4 if f.type in _FIXED32_FORMATS else 8 if f.type in _FIXED64_FORMATS else 0
    if not size or len(data) % size:
        raise WireError(f"field {f.name}: bad packed value")
    wire = _FIXED32 if size == 4 else _FIXED64
    return [_scalar(f, wire, data[i:i + size]) for i in range(0, len(data), size)]


# --- well-known apimachinery messages ---------------------------------------------------------------

def _plain_fields(data: bytes) -> dict[int, int | bytes]:
    return {number: value for number, _wire, value in iter_fields(data)}


def _seconds_nanos(data: bytes) -> tuple[int, int]:
    values = _plain_fields(data)
    seconds, nanos = values.get(1, 0), values.get(2, 0)
    if not isinstance(seconds, int) or not isinstance(nanos, int):
        raise WireError("time: expected varints")
    return _signed64(seconds), _signed64(nanos)


def _to_datetime(seconds: int, nanos: int) -> datetime:
    try:
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise WireError(f"time out of range: {seconds}s") from None


def format_time(seconds: int, nanos: int = 0) -> str | None:
    """metav1.Time as JSON: RFC 3339 in UTC to the second; None for Go's zero time."""
    if (seconds == 0 and nanos == 0) or seconds == _GO_ZERO_TIME_SECONDS:
        return None
    return _to_datetime(seconds, 0).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(seconds: int, nanos: int = 0) -> str | None:
    """metav1.MicroTime as JSON: RFC 3339 in UTC with six fractional digits; None for zero."""
    if (seconds == 0 and nanos == 0) or seconds == _GO_ZERO_TIME_SECONDS:
        return None
    return _to_datetime(seconds, nanos).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fraction(value: int, digits: int) -> str:
    whole, frac = divmod(value, 10 ** digits)
    text = str(frac).rjust(digits, "0").rstrip("0")
    return f"{whole}.{text}" if text else str(whole)


def format_duration(ns: int) -> str:
    """A Go time.Duration as its String(): "1h2m3s", "1.5s", "250ms", "0s"."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_fraction(u, 3)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_fraction(u, 6)}ms"
    hours, rest = divmod(u, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = _fraction(rest, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _decode_time(pool: DescriptorPool, msg: MessageInfo, data: bytes) -> Any:
    text = format_time(*_seconds_nanos(data))
    return _OMIT if text is None else text


def _decode_micro_time(pool: DescriptorPool, msg: MessageInfo, data: bytes) -> Any:
    text = format_micro_time(*_seconds_nanos(data))
    return _OMIT if text is None else text


def _decode_duration(pool: DescriptorPool, msg: MessageInfo, data: bytes) -> Any:
    ns = _plain_fields(data).get(1, 0)
    if not isinstance(ns, int):
        raise WireError("duration: expected a varint")
    ns = _signed64(ns)
    return format_duration(ns) if ns else _OMIT


def _decode_quantity(pool: DescriptorPool, msg: MessageInfo, data: bytes) -> Any:
    text = _plain_fields(data).get(1, b"")
    if not isinstance(text, bytes):
        raise WireError("quantity: expected a string")
    return text.decode() or _OMIT


def _decode_int_or_string(pool: DescriptorPool, msg: MessageInfo, data: bytes) -> Any:
    values = _plain_fields(data)
    kind, int_val, str_val = values.get(1, 0), values.get(2, 0), values.get(3, b"")
    if not isinstance(kind, int) or not isinstance(int_val, int) or not isinstance(str_val, bytes):
        raise WireError("intOrString: bad field types")
    if kind == 1:
        return str_val.decode()
    # The int form with 0 is also Go's zero value; a pointer field that holds it (maxUnavailable: 0)
    # is restored by KEEP_ZERO_FIELDS in the caller.
    return _signed64(int_val)


def _decode_raw_json(pool: DescriptorPool, msg: MessageInfo, data: bytes) -> Any:
    raw = _plain_fields(data).get(1, b"")
    if not isinstance(raw, bytes):
        raise WireError("raw: expected bytes")
    if not raw:
        return _OMIT
    if raw.startswith(ENVELOPE_MAGIC):
        return pool_decode_envelope(pool, raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise WireError(f"embedded object is not JSON: {e}") from None


_SPECIAL = {
    _TIME: _decode_time,
    _MICRO_TIME: _decode_micro_time,
    _DURATION: _decode_duration,
    _QUANTITY: _decode_quantity,
    _INT_OR_STRING: _decode_int_or_string,
    _RAW_EXTENSION: _decode_raw_json,
    _FIELDS_V1: _decode_raw_json,
}


# --- envelope --------------------------------------------------------------------------------------

# API groups whose protobuf package is not k8s.io.api.<first DNS label of the group>.
_GROUP_PACKAGES = {
    "meta.k8s.io": "k8s.io.apimachinery.pkg.apis.meta",
    "internal.apiserver.k8s.io": "k8s.io.api.apiserverinternal",
    "metrics.k8s.io": "k8s.io.metrics.pkg.apis.metrics",
}


def package_for(api_version: str) -> str:
    """The protobuf package of an API version: "apps/v1" -> "k8s.io.api.apps.v1"."""
    group, _, version = api_version.rpartition("/")
    if not group:
        return f"k8s.io.api.core.{version}"
    base = _GROUP_PACKAGES.get(group) or "k8s.io.api." + group.split(".", 1)[0]
    return f"{base}.{version}"


def pool_decode_envelope(pool: DescriptorPool, body: bytes) -> dict[str, Any]:
    """Decode a k8s protobuf envelope (magic + runtime.Unknown) with the given descriptors.

    Raises WireError for malformed bytes and StatusError (400) for types the pool does not know.
    """
    if not body.startswith(ENVELOPE_MAGIC):
        raise WireError("missing the k8s protobuf magic prefix")
    api_version = kind = encoding = ""
    raw = b""
    for number, _wire, value in iter_fields(body[len(ENVELOPE_MAGIC):]):
        if number == 1:
            if not isinstance(value, bytes):
                raise WireError("typeMeta: expected a message")
            for n, _w, v in iter_fields(value):
                if n == 1:
                    api_version = _str(v)
                elif n == 2:
                    kind = _str(v)
        elif number == 2:
            if not isinstance(value, bytes):
                raise WireError("raw: expected bytes")
            raw = value
        elif number == 3:
            encoding = _str(value)
    if not api_version or not kind:
        raise bad_request("protobuf: the envelope does not name apiVersion and kind")
    if encoding:
        raise bad_request(f"protobuf: unsupported contentEncoding {encoding!r}")
    msg = pool.message_for(api_version, kind)
    obj = pool.decode_message(msg, raw)
    if not isinstance(obj, dict):
        raise bad_request(f"protobuf: {kind} does not decode to an object")
    # apiVersion and kind lead, as in the JSON kubectl would have sent.
    return {"apiVersion": api_version, "kind": kind, **obj}


# --- finding descriptors in a kubectl binary ---------------------------------------------------------

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"
_CHUNK = 256 * 1024


def _gunzip_at(data: bytes, start: int) -> bytes | None:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = []
    pos = start
    try:
        while not d.eof and pos < len(data):
            out.append(d.decompress(data[pos:pos + _CHUNK]))
            pos += _CHUNK
    except zlib.error:
        return None
    return b"".join(out) if d.eof else None


def _descriptor_name(blob: bytes) -> str:
    try:
        for number, _wire, value in iter_fields(blob):
            if number == 1 and isinstance(value, bytes):
                return value.decode()
            return ""
    except (WireError, UnicodeDecodeError):
        pass
    return ""


def descriptors_from_binary(path: str) -> list[bytes]:
    """The serialized FileDescriptorProtos of Kubernetes' generated.proto files embedded in a binary.

    gogo-protobuf registers each file's descriptor gzip-compressed (Go's gzip writer leaves the
    header's mtime at zero, hence the fixed 8-byte prefix searched for).
    """
    with open(path, "rb") as fh:
        data = fh.read()
    found: dict[str, bytes] = {}
    pos = data.find(_GZIP_HEADER)
    while pos >= 0:
        blob = _gunzip_at(data, pos)
        if blob is not None:
            name = _descriptor_name(blob)
            if name.endswith("generated.proto"):
                found.setdefault(name, blob)
        pos = data.find(_GZIP_HEADER, pos + 1)
    return list(found.values())


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", os.path.basename(path)))


def descriptor_sources() -> list[str]:
    """Binaries to read descriptors from, in order of preference.

    $KYB_PROTO_DESCRIPTORS_FROM, then kubectl on PATH (symlinks resolved), then the other kubectl*
    binaries beside it, newest version first (cloud SDKs ship several).
    """
    out: list[str] = []
    explicit = os.environ.get(ENV_DESCRIPTORS_FROM)
    if explicit:
        out.append(explicit)
    found = shutil.which("kubectl")
    if found:
        real = os.path.realpath(found)
        out.append(real)
        folder = os.path.dirname(real)
        try:
            siblings = [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("kubectl")]
        except OSError:
            siblings = []
        siblings = [p for p in siblings if os.path.isfile(p) and os.access(p, os.X_OK)]
        siblings.sort(key=_version_key, reverse=True)
        out.extend(siblings)
    return list(dict.fromkeys(out))


def load_descriptor_pool(sources: list[str] | None = None) -> DescriptorPool | None:
    """Build a pool from the first source binary that embeds Kubernetes descriptors, or None."""
    for path in descriptor_sources() if sources is None else sources:
        try:
            blobs = descriptors_from_binary(path)
        except OSError:
            continue
        if not blobs:
            continue
        pool = DescriptorPool()
        for blob in blobs:
            try:
                pool.add_file(blob)
            except (WireError, UnicodeDecodeError):
                continue
        if pool.messages:
            return pool
    return None


_lock = threading.Lock()
_pool: DescriptorPool | None = None
_pool_loaded = False


def default_pool() -> DescriptorPool:
    """The process-wide pool, loaded on first use; StatusError 415 when no kubectl provides one."""
    global _pool, _pool_loaded
    with _lock:
        if not _pool_loaded:
            _pool = load_descriptor_pool()
            _pool_loaded = True
        pool = _pool
    if pool is None:
        raise StatusError(
            415, "UnsupportedMediaType",
            f"{PROTOBUF_MEDIA_TYPE} request bodies are decoded with the protobuf descriptors embedded in a "
            f"kubectl binary, and none was found; install kubectl on the server's PATH or set "
            f"{ENV_DESCRIPTORS_FROM}=/path/to/kubectl for the server process")
    return pool


def reset_default_pool() -> None:
    """Forget the loaded descriptors so the next request looks for a kubectl again (tests, reloads)."""
    global _pool, _pool_loaded
    with _lock:
        _pool = None
        _pool_loaded = False


def decode_k8s_protobuf(body: bytes, pool: DescriptorPool | None = None) -> dict[str, Any]:
    """Decode a Kubernetes protobuf request body to the JSON-shaped object dict.

    Raises StatusError: 400 BadRequest for malformed bytes or unknown types, 415 when no descriptors
    can be found.
    """
    if not body.startswith(ENVELOPE_MAGIC):
        raise bad_request("protobuf: the body does not start with the k8s protobuf magic bytes")
    if pool is None:
        pool = default_pool()
    try:
        return pool_decode_envelope(pool, body)
    except (WireError, UnicodeDecodeError) as e:
        raise bad_request(f"protobuf: malformed request body: {e}") from None
