"""Decoding Kubernetes protobuf bodies: the wire reader, the JSON mapping and real kubectl requests.

Unit tests build small FileDescriptorProtos by hand with a tiny encoder below, so they run without
kubectl. The kubectl tests capture the protobuf bodies the real kubectl POSTs to a stub server and
compare their decoding with what the same command prints with `-o json --dry-run=client`.
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from kybernetes.api import protobuf as pb
from kybernetes.api.errors import StatusError

# --- a minimal protobuf encoder for building descriptors and bodies ---------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative ints go on the wire as 64-bit two's complement
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def f_bytes(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_desc(name: str, number: int, ftype: int, type_name: str = "", repeated: bool = False) -> bytes:
    out = f_bytes(1, name) + f_varint(3, number) + f_varint(4, 3 if repeated else 1) + f_varint(5, ftype)
    if type_name:
        out += f_bytes(6, type_name)
    return out


def message_desc(name: str, fields: list[bytes], nested: list[bytes] = (), map_entry: bool = False) -> bytes:
    out = f_bytes(1, name) + b"".join(f_bytes(2, f) for f in fields)
    out += b"".join(f_bytes(3, n) for n in nested)
    if map_entry:
        out += f_bytes(7, f_varint(7, 1))
    return out


def file_desc(name: str, package: str, messages: list[bytes]) -> bytes:
    return f_bytes(1, name) + f_bytes(2, package) + b"".join(f_bytes(4, m) for m in messages)


def envelope(api_version: str, kind: str, raw: bytes, encoding: str = "") -> bytes:
    unknown = f_bytes(1, f_bytes(1, api_version) + f_bytes(2, kind)) + f_bytes(2, raw)
    if encoding:
        unknown += f_bytes(3, encoding)
    return b"k8s\x00" + unknown


T = pb
META = ".k8s.io.apimachinery.pkg.apis.meta.v1."


@pytest.fixture(scope="module")
def pool() -> pb.DescriptorPool:
    p = pb.DescriptorPool()
    p.add_file(file_desc("meta/generated.proto", "k8s.io.apimachinery.pkg.apis.meta.v1", [
        message_desc("Time", [field_desc("seconds", 1, T.T_INT64), field_desc("nanos", 2, T.T_INT32)]),
        message_desc("MicroTime", [field_desc("seconds", 1, T.T_INT64), field_desc("nanos", 2, T.T_INT32)]),
        message_desc("Duration", [field_desc("duration", 1, T.T_INT64)]),
        message_desc("Verbs", [field_desc("items", 1, T.T_STRING, repeated=True)]),
        message_desc("DeleteOptions", [field_desc("gracePeriodSeconds", 1, T.T_INT64),
                                       field_desc("propagationPolicy", 4, T.T_STRING)]),
    ]))
    p.add_file(file_desc("resource/generated.proto", "k8s.io.apimachinery.pkg.api.resource", [
        message_desc("Quantity", [field_desc("string", 1, T.T_STRING)]),
    ]))
    p.add_file(file_desc("intstr/generated.proto", "k8s.io.apimachinery.pkg.util.intstr", [
        message_desc("IntOrString", [field_desc("type", 1, T.T_INT64), field_desc("intVal", 2, T.T_INT32),
                                     field_desc("strVal", 3, T.T_STRING)]),
    ]))
    p.add_file(file_desc("runtime/generated.proto", "k8s.io.apimachinery.pkg.runtime", [
        message_desc("RawExtension", [field_desc("raw", 1, T.T_BYTES)]),
    ]))
    widget = message_desc("Widget", [
        field_desc("name", 1, T.T_STRING),
        field_desc("count", 2, T.T_INT32),
        field_desc("suspend", 3, T.T_BOOL),  # a pointer field: an explicit false is kept
        field_desc("enabled", 4, T.T_BOOL),
        field_desc("created", 5, T.T_MESSAGE, META + "Time"),
        field_desc("renewed", 6, T.T_MESSAGE, META + "MicroTime"),
        field_desc("every", 7, T.T_MESSAGE, META + "Duration"),
        field_desc("limit", 8, T.T_MESSAGE, ".k8s.io.apimachinery.pkg.api.resource.Quantity"),
        field_desc("port", 9, T.T_MESSAGE, ".k8s.io.apimachinery.pkg.util.intstr.IntOrString"),
        field_desc("maxUnavailable", 10, T.T_MESSAGE, ".k8s.io.apimachinery.pkg.util.intstr.IntOrString"),
        field_desc("data", 11, T.T_MESSAGE, ".k8s.io.api.core.v1.Widget.DataEntry", repeated=True),
        field_desc("tags", 12, T.T_STRING, repeated=True),
        field_desc("blob", 13, T.T_BYTES),
        field_desc("offset", 14, T.T_INT32),
        field_desc("ratio", 15, T.T_DOUBLE),
        field_desc("verbs", 16, T.T_MESSAGE, META + "Verbs"),
        field_desc("raw", 17, T.T_MESSAGE, ".k8s.io.apimachinery.pkg.runtime.RawExtension"),
        field_desc("parts", 18, T.T_MESSAGE, ".k8s.io.api.core.v1.Part", repeated=True),
        field_desc("empty", 19, T.T_MESSAGE, ".k8s.io.api.core.v1.Part"),
        field_desc("numbers", 20, T.T_INT32, repeated=True),
    ], nested=[message_desc("DataEntry", [field_desc("key", 1, T.T_STRING), field_desc("value", 2, T.T_BYTES)],
                            map_entry=True)])
    part = message_desc("Part", [field_desc("name", 1, T.T_STRING)])
    volume = message_desc("Volume", [field_desc("name", 1, T.T_STRING),
                                     field_desc("volumeSource", 2, T.T_MESSAGE, ".k8s.io.api.core.v1.VolumeSource")])
    source = message_desc("VolumeSource", [field_desc("emptyDir", 1, T.T_MESSAGE, ".k8s.io.api.core.v1.Part"),
                                           field_desc("hostPath", 2, T.T_MESSAGE, ".k8s.io.api.core.v1.Part")])
    p.add_file(file_desc("core/generated.proto", "k8s.io.api.core.v1", [widget, part, volume, source]))
    return p


def decode_widget(pool: pb.DescriptorPool, raw: bytes) -> dict[str, Any]:
    return pb.decode_k8s_protobuf(envelope("v1", "Widget", raw), pool)


# --- wire reader ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 + 5])
def test_varint_round_trip(value):
    data = varint(value)
    assert pb.read_varint(data, 0) == (value, len(data))


def test_iter_fields_kinds():
    data = f_varint(1, 150) + f_bytes(2, "hi") + varint(3 << 3 | 5) + b"\x01\x00\x00\x00"
    assert list(pb.iter_fields(data)) == [(1, 0, 150), (2, 2, b"hi"), (3, 5, b"\x01\x00\x00\x00")]


@pytest.mark.parametrize("data", [b"\x08", b"\x08\x80", b"\x12\x05abc", b"\x1d\x01\x00", b"\x0b", b"\x00\x01"])
def test_iter_fields_rejects_malformed(data):
    with pytest.raises(pb.WireError):
        list(pb.iter_fields(data))


# --- mapping of well-known types -----------------------------------------------------------------

@pytest.mark.parametrize("ns,text", [
    (0, "0s"), (1, "1ns"), (1500, "1.5µs"), (250_000_000, "250ms"), (1_500_000_000, "1.5s"),
    (3_723_000_000_000, "1h2m3s"), (3_600_000_000_000, "1h0m0s"), (60_000_000_000, "1m0s"),
    (-90_000_000_000, "-1m30s"), (5_000_000_001, "5.000000001s"),
])
def test_format_duration_like_go(ns, text):
    assert pb.format_duration(ns) == text


def test_format_times():
    assert pb.format_time(1136214245) == "2006-01-02T15:04:05Z"
    assert pb.format_time(1136214245, 999_999_999) == "2006-01-02T15:04:05Z"
    assert pb.format_micro_time(1136214245, 123_456_789) == "2006-01-02T15:04:05.123456Z"
    assert pb.format_time(0) is None
    assert pb.format_time(-62135596800) is None


def test_widget_mapping(pool):
    raw = b"".join([
        f_bytes(1, "w"),
        f_varint(2, 7),
        f_varint(3, 0),  # suspend: false, a pointer, kept
        f_varint(4, 0),  # enabled: false, a plain bool, dropped
        f_bytes(5, f_varint(1, 1136214245)),
        f_bytes(6, f_varint(1, 1136214245) + f_varint(2, 5000)),
        f_bytes(7, f_varint(1, 1_500_000_000)),
        f_bytes(8, f_bytes(1, "250m")),
        f_bytes(9, f_varint(1, 1) + f_varint(2, 0) + f_bytes(3, "http")),
        f_bytes(10, f_varint(1, 0) + f_varint(2, 0) + f_bytes(3, "")),  # maxUnavailable: 0, kept
        f_bytes(11, f_bytes(1, "a") + f_bytes(2, b"\x00\xffhi")),
        f_bytes(11, f_bytes(1, "empty") + f_bytes(2, b"")),
        f_bytes(12, ""), f_bytes(12, "x"),  # list elements are kept even when empty
        f_bytes(13, b"bin"),
        f_varint(14, -5),
        varint(15 << 3 | 1) + struct.pack("<d", 2.5),
        f_bytes(16, f_bytes(1, "get") + f_bytes(1, "list")),
        f_bytes(17, f_bytes(1, b'{"a": [1, 2]}')),
        f_bytes(18, f_bytes(1, "p1")), f_bytes(18, b""),
        f_bytes(19, b""),  # an empty struct stays, as encoding/json writes it ("emptyDir: {}")
        f_varint(20, 1), f_bytes(20, varint(2) + varint(3)),  # unpacked then packed
        f_bytes(99, "a field newer than the descriptors"),
    ])
    assert decode_widget(pool, raw) == {
        "apiVersion": "v1", "kind": "Widget",
        "name": "w", "count": 7, "suspend": False,
        "created": "2006-01-02T15:04:05Z",
        "renewed": "2006-01-02T15:04:05.000005Z",
        "every": "1.5s",
        "limit": "250m",
        "port": "http",
        "maxUnavailable": 0,
        "data": {"a": "AP9oaQ==", "empty": ""},
        "tags": ["", "x"],
        "blob": "Ymlu",
        "offset": -5,
        "ratio": 2.5,
        "verbs": ["get", "list"],
        "raw": {"a": [1, 2]},
        "parts": [{"name": "p1"}, {}],
        "empty": {},
        "numbers": [1, 2, 3],
    }


def test_zero_values_of_plain_fields_are_dropped(pool):
    raw = b"".join([
        f_bytes(1, ""), f_varint(2, 0), f_varint(4, 0),
        f_bytes(5, b""),  # zero Time (creationTimestamp) is omitted
        f_bytes(6, b""), f_bytes(7, f_varint(1, 0)), f_bytes(8, f_bytes(1, "")),
        f_bytes(9, f_varint(1, 0) + f_varint(2, 0) + f_bytes(3, "")),  # plain IntOrString 0 dropped
        f_bytes(13, b""), f_bytes(17, f_bytes(1, b"")), f_bytes(16, b""),
    ])
    assert decode_widget(pool, raw) == {"apiVersion": "v1", "kind": "Widget"}


def test_inline_struct_is_spread_into_its_parent(pool):
    # Volume embeds VolumeSource with `json:",inline"`; an empty emptyDir is meaningful and stays.
    body = envelope("v1", "Volume", f_bytes(1, "cache") + f_bytes(2, f_bytes(1, b"")))
    assert pb.decode_k8s_protobuf(body, pool) == {"apiVersion": "v1", "kind": "Volume", "name": "cache",
                                                  "emptyDir": {}}


def test_int_or_string_int(pool):
    raw = f_bytes(9, f_varint(1, 0) + f_varint(2, 8080) + f_bytes(3, ""))
    assert decode_widget(pool, raw)["port"] == 8080


def test_options_kinds_fall_back_to_meta(pool):
    body = envelope("apps/v1", "DeleteOptions", f_varint(1, 0) + f_bytes(4, "Foreground"))
    assert pb.decode_k8s_protobuf(body, pool) == {
        "apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
        "propagationPolicy": "Foreground"}


@pytest.mark.parametrize("api_version,package", [
    ("v1", "k8s.io.api.core.v1"),
    ("apps/v1", "k8s.io.api.apps.v1"),
    ("networking.k8s.io/v1", "k8s.io.api.networking.v1"),
    ("rbac.authorization.k8s.io/v1", "k8s.io.api.rbac.v1"),
    ("autoscaling/v2", "k8s.io.api.autoscaling.v2"),
    ("meta.k8s.io/v1", "k8s.io.apimachinery.pkg.apis.meta.v1"),
    ("internal.apiserver.k8s.io/v1alpha1", "k8s.io.api.apiserverinternal.v1alpha1"),
])
def test_package_for(api_version, package):
    assert pb.package_for(api_version) == package


# --- errors -------------------------------------------------------------------------------------

def _bad(pool, body: bytes) -> StatusError:
    with pytest.raises(StatusError) as info:
        pb.decode_k8s_protobuf(body, pool)
    assert info.value.code == 400 and info.value.reason == "BadRequest"
    return info.value


def test_wrong_magic(pool):
    assert "magic" in _bad(pool, b'{"kind": "Widget"}').message


def test_truncated_body(pool):
    body = envelope("v1", "Widget", f_bytes(1, "name") + f_bytes(13, b"blob"))
    assert "malformed" in _bad(pool, body[:-3]).message


def test_truncated_inner_message(pool):
    assert "malformed" in _bad(pool, envelope("v1", "Widget", b"\x0a\x09abc")).message


def test_wrong_wire_type_for_field(pool):
    assert "malformed" in _bad(pool, envelope("v1", "Widget", f_varint(1, 3))).message


def test_unknown_kind(pool):
    message = _bad(pool, envelope("v1", "Gadget", b"")).message
    assert "Gadget" in message and "v1" in message


def test_missing_type_meta(pool):
    _bad(pool, b"k8s\x00" + f_bytes(2, b""))


def test_content_encoding_refused(pool):
    assert "gzip" in _bad(pool, envelope("v1", "Widget", b"", encoding="gzip")).message


def test_no_descriptors_is_415(monkeypatch):
    monkeypatch.setattr(pb, "descriptor_sources", lambda: [])
    pb.reset_default_pool()
    try:
        with pytest.raises(StatusError) as info:
            pb.decode_k8s_protobuf(envelope("v1", "Namespace", b""))
        assert info.value.code == 415 and info.value.reason == "UnsupportedMediaType"
        assert pb.ENV_DESCRIPTORS_FROM in info.value.message
    finally:
        pb.reset_default_pool()


def test_descriptor_sources_prefers_env(monkeypatch, tmp_path):
    fake = tmp_path / "kubectl-fake"
    fake.write_bytes(b"no descriptors here")
    monkeypatch.setenv(pb.ENV_DESCRIPTORS_FROM, str(fake))
    assert pb.descriptor_sources()[0] == str(fake)
    assert pb.descriptors_from_binary(str(fake)) == []


def test_descriptors_from_binary_finds_gzipped_files(tmp_path, pool):
    import gzip
    proto = file_desc("k8s.io/api/x/v1/generated.proto", "k8s.io.api.x.v1",
                      [message_desc("Thing", [field_desc("name", 1, T.T_STRING)])])
    other = file_desc("google/protobuf/other.proto", "x", [])
    blob = (b"\x00junk" + gzip.compress(proto, mtime=0) + b"\x1f\x8b\x08\x00\x00\x00\x00\x00broken"
            + gzip.compress(other, mtime=0))
    binary = tmp_path / "kubectl"
    binary.write_bytes(blob)
    assert pb.descriptors_from_binary(str(binary)) == [proto]
    loaded = pb.load_descriptor_pool([str(tmp_path / "missing"), str(binary)])
    assert loaded is not None
    body = envelope("x/v1", "Thing", f_bytes(1, "t"))
    assert pb.decode_k8s_protobuf(body, loaded) == {"apiVersion": "x/v1", "kind": "Thing", "name": "t"}


# --- real kubectl ----------------------------------------------------------------------------------

from tests.kubectl import KUBECTL, needs_kubectl  # noqa: E402

KUBECTL_COMMANDS = [
    ["create", "namespace", "shop"],
    ["create", "configmap", "c", "--from-literal=a=b", "--from-literal=empty="],
    ["create", "secret", "generic", "s", "--from-literal=a=b"],
    ["create", "deployment", "d", "--image=nginx", "--replicas=0", "--port=80"],
    ["create", "job", "j", "--image=busybox", "--", "echo", "hi"],
    ["create", "cronjob", "cj", "--image=busybox", "--schedule=*/1 * * * *", "--", "echo", "hi"],
    ["create", "service", "clusterip", "s", "--tcp=80:8080"],
    ["create", "rolebinding", "rb", "--role=r", "--user=alice", "--serviceaccount=default:sa"],
    ["create", "serviceaccount", "sa"],
    ["create", "priorityclass", "pc", "--value=0", "--description=zero"],
    ["create", "poddisruptionbudget", "pdb", "--selector=app=x", "--max-unavailable=0"],
    ["create", "quota", "q", "--hard=cpu=1,memory=1Gi,pods=2"],
    ["create", "ingress", "ing", "--rule=foo.com/bar*=svc:8080"],
    ["create", "service", "nodeport", "np", "--tcp=80:8080", "--node-port=30080"],
    ["create", "service", "externalname", "en", "--external-name=example.com"],
    ["create", "configmap", "bin", "--from-file=blob={tmp}/blob.bin", "--from-file=text={tmp}/text.txt"],
    ["create", "secret", "docker-registry", "dr", "--docker-server=r.io", "--docker-username=u",
     "--docker-password=p"],
    ["create", "poddisruptionbudget", "half", "--selector=app=x", "--min-available=50%"],
    ["create", "deployment", "multi", "--image=nginx", "--image=busybox"],
    ["create", "clusterrolebinding", "crb", "--clusterrole=view", "--group=g"],
    ["create", "quota", "scoped", "--hard=pods=2", "--scopes=BestEffort"],
]


def _as_decoded(value: Any, in_status: bool = False) -> Any:
    """kubectl's JSON with the differences the decoder makes on purpose.

    Go's zero Time prints as "creationTimestamp": null, which the decoder omits; and zero counters
    of a status (a PodDisruptionBudget's) are non-omitempty ints that the decoder cannot tell from
    unset ones. A server ignores status on create.
    """
    if isinstance(value, dict):
        return {k: _as_decoded(v, in_status or k == "status") for k, v in value.items()
                if v is not None and not (in_status and v == 0 and not isinstance(v, bool))}
    if isinstance(value, list):
        return [_as_decoded(v, in_status) for v in value]
    return value


async def _kubectl(kubeconfig: Path, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECTL_KUBERC": "false"})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out


@pytest.fixture
async def stub_server(tmp_path):
    """A server that records POSTed bodies and answers like a permissive apiserver would."""
    posts: list[tuple[str, str, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "POST":
            posts.append((request.path, request.headers.get("Content-Type", ""), body))
            if request.path.endswith("/token"):
                return web.json_response({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                          "status": {"token": "tok", "expirationTimestamp":
                                                     "2030-01-01T00:00:00Z"}}, status=201)
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            return web.json_response(status, status=201)
        if request.path == "/version":
            return web.json_response({"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "reason": "NotFound", "code": 404}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u, namespace: default}}]\n"
        "current-context: x\n")
    yield kubeconfig, posts
    await runner.cleanup()


@needs_kubectl
@pytest.mark.parametrize("args", KUBECTL_COMMANDS, ids=lambda a: "-".join(a[1:3]))
async def test_kubectl_protobuf_body_decodes_like_its_json(stub_server, tmp_path, args):
    kubeconfig, posts = stub_server
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    (tmp_path / "text.txt").write_text("plain\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    await _kubectl(kubeconfig, *args)
    assert len(posts) == 1
    _path, content_type, body = posts[0]
    assert content_type == pb.PROTOBUF_MEDIA_TYPE
    decoded = pb.decode_k8s_protobuf(body)
    cut = args.index("--") if "--" in args else len(args)  # flags must come before the command's args
    dry_run = [*args[:cut], "-o", "json", "--dry-run=client", *args[cut:]]
    expected = orjson.loads(await _kubectl(kubeconfig, *dry_run))
    assert decoded == _as_decoded(expected)


@needs_kubectl
async def test_kubectl_token_request(stub_server):
    kubeconfig, posts = stub_server
    assert await _kubectl(kubeconfig, "create", "token", "sa", "--duration=1h", "--audience=a") == b"tok"
    assert pb.decode_k8s_protobuf(posts[0][2]) == {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
        "spec": {"audiences": ["a"], "expirationSeconds": 3600}, "status": {}}
