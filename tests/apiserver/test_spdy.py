"""SPDY/3.1: the shared codec and session (streaming/spdy.py), and the API server's SPDY upgrades.

The codec tests are pure. The API-level tests run test_proxy's in-process
cluster (API server behind the aiohttp front door, a kubelet server on a
ProcessRuntime) and drive pods/exec and pods/portforward with a small SPDY
client written here on the same codec, speaking as client-go does: an HTTP/1.1
upgrade with X-Stream-Protocol-Version, then one stream per streamType.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from urllib.parse import urlencode

import orjson
import pytest

from kybernetes.streaming import spdy

from .conftest import eventually
from .test_proxy import Cluster

# -- the codec --------------------------------------------------------------------------------


def test_dictionary_is_spdy3s():
    # The spec's dictionary is 1423 bytes; zlib checks its adler32 on both ends.
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 3821447106


FRAMES = [
    spdy.SynStream(1, spdy.headers({"streamType": "error", "port": "80"}), fin=False, associated_to=0, priority=3),
    spdy.SynStream(3, {"x": ["a", "b"]}, fin=True, unidirectional=True),
    spdy.SynReply(1, {}),
    spdy.SynReply(3, {"status": ["200"]}, fin=True),
    spdy.Data(1, b"hello"),
    spdy.Data(3, b"", fin=True),
    spdy.RstStream(5, spdy.CANCEL),
    spdy.Settings([(0, 7, 65536), (1, 4, 100)], clear=True),
    spdy.Ping(7),
    spdy.GoAway(9, spdy.GOAWAY_OK),
    spdy.HeadersFrame(1, {"a": ["b"]}, fin=True),
    spdy.WindowUpdate(1, 4096),
    spdy.UnknownControl(42, 0, b"whatever"),
]


def test_frames_round_trip():
    w, r = spdy.FrameWriter(), spdy.FrameReader()
    for f in FRAMES:
        assert r.feed(w.encode(f)) == [f]
    assert r.pending == 0


def test_header_compression_runs_across_frames():
    w = spdy.FrameWriter()
    hdrs = spdy.headers({"streamtype": "stdout", "requestid": "0"})
    first, second = w.encode(spdy.SynStream(1, hdrs)), w.encode(spdy.SynStream(3, hdrs))
    # The second block refers back to the first: much smaller, and meaningless on its own.
    assert len(second) < len(first)
    with pytest.raises(spdy.ProtocolError):
        spdy.FrameReader().feed(second)
    r = spdy.FrameReader()
    assert r.feed(first) == [spdy.SynStream(1, hdrs)]
    assert r.feed(second) == [spdy.SynStream(3, hdrs)]


def test_split_reads_and_many_frames_per_read():
    w = spdy.FrameWriter()
    stream = b"".join(w.encode(f) for f in FRAMES)
    r = spdy.FrameReader()
    got = []
    for i in range(len(stream)):
        got += r.feed(stream[i:i + 1])
    assert got == FRAMES
    # All at once, and in two uneven halves.
    w, r = spdy.FrameWriter(), spdy.FrameReader()
    stream = b"".join(w.encode(f) for f in FRAMES)
    assert r.feed(stream[:13]) == []
    assert r.pending == 13
    assert r.feed(stream[13:]) == FRAMES


def test_bad_input_is_a_protocol_error():
    with pytest.raises(spdy.ProtocolError, match="version"):
        spdy.FrameReader().feed(b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01")  # a SPDY/2 PING
    with pytest.raises(spdy.ProtocolError, match="too short"):
        spdy.FrameReader().feed(b"\x80\x03\x00\x03\x00\x00\x00\x04\x00\x00\x00\x01")  # RST_STREAM of 4 bytes
    with pytest.raises(spdy.ProtocolError, match="header block"):
        spdy.FrameReader().feed(b"\x80\x03\x00\x02\x00\x00\x00\x08\x00\x00\x00\x01garb")
    with pytest.raises(ValueError):
        spdy.FrameWriter().encode(spdy.Data(1, b"x" * (spdy.MAX_LENGTH + 1)))


class Peer:
    """A client for Session tests: its own writer and reader, and what the session sent back."""

    def __init__(self) -> None:
        self.w, self.r = spdy.FrameWriter(), spdy.FrameReader()
        self.received: list = []
        self.opened: list[spdy.Stream] = []
        self.session = spdy.Session(self._recv, self.opened.append)

    async def _recv(self, data: bytes) -> None:
        self.received += self.r.feed(data)

    async def send(self, *frames) -> None:
        await self.session.feed(b"".join(self.w.encode(f) for f in frames))

    def take(self) -> list:
        out, self.received = self.received, []
        return out


async def test_session_streams_ping_reset_goaway():
    p = Peer()
    await p.send(spdy.SynStream(1, spdy.headers({"streamType": "stdin"})))
    assert p.take() == [spdy.SynReply(1, {})]
    (st,) = p.opened
    assert st.header("streamtype") == "stdin" and st.header("missing", "d") == "d"

    await p.send(spdy.Data(1, b"ab"), spdy.Data(1, b"c", fin=True))
    assert [await st.read(), await st.read(), await st.read(), await st.read()] == [b"ab", b"c", b"", b""]

    # Our half: data in chunks of at most DATA_CHUNK, then FIN once.
    await st.write(b"x" * (spdy.DATA_CHUNK + 1))
    await st.close()
    await st.close()
    sent = p.take()
    assert [len(f.data) for f in sent] == [spdy.DATA_CHUNK, 1, 0] and sent[-1].fin
    assert 1 not in p.session.streams  # both halves closed: forgotten
    await st.write(b"dropped")
    assert p.take() == []

    await p.send(spdy.Ping(1))
    assert p.take() == [spdy.Ping(1)]

    await p.send(spdy.SynStream(3, {}), spdy.RstStream(3, spdy.CANCEL))
    st3 = p.opened[1]
    assert await st3.read() == b"" and st3.local_closed and 3 not in p.session.streams
    p.take()

    # A stream id used twice is refused; SETTINGS and WINDOW_UPDATE are ignored.
    await p.send(spdy.SynStream(5, {}), spdy.SynStream(5, {}), spdy.Settings([(0, 7, 1)]), spdy.WindowUpdate(5, 9))
    assert p.take() == [spdy.SynReply(5, {}), spdy.RstStream(5, spdy.PROTOCOL_ERROR)]

    await p.send(spdy.GoAway(5))
    assert p.session.goaway_received
    await p.session.goaway()
    await p.session.goaway()
    assert p.take() == [spdy.GoAway(5)]
    # No new streams after our GOAWAY; the end of the connection ends every stream.
    await p.send(spdy.SynStream(7, {}))
    assert p.take() == [spdy.RstStream(7, spdy.REFUSED_STREAM)]
    st5 = p.opened[2]
    p.session.feed_eof()
    assert await st5.read() == b"" and p.session.streams == {}


# -- through the API server ----------------------------------------------------------------------

V5, V4, V3, V2, V1 = "v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", \
    "channel.k8s.io"
ALL = [V4, V3, V2, V1]  # what kubectl 1.27 offers


@pytest.fixture
async def cluster(tmp_path):
    c = Cluster(tmp_path)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


class Client:
    """One SPDY connection to the API server, as client-go makes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.w, self.r = spdy.FrameWriter(), spdy.FrameReader()
        self.data: dict[int, bytearray] = {}
        self.fin: set[int] = set()
        self.replied: set[int] = set()
        self.other: list = []
        self.closed = False
        self.next_id = 1
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while chunk := await self.reader.read(65536):
            for f in self.r.feed(chunk):
                if isinstance(f, spdy.Data):
                    self.data.setdefault(f.stream_id, bytearray()).extend(f.data)
                    if f.fin:
                        self.fin.add(f.stream_id)
                elif isinstance(f, spdy.SynReply):
                    self.replied.add(f.stream_id)
                else:
                    self.other.append(f)
        self.closed = True

    def send(self, *frames) -> None:
        self.writer.write(b"".join(self.w.encode(f) for f in frames))

    async def open(self, **hdrs: str) -> int:
        sid, self.next_id = self.next_id, self.next_id + 2
        self.send(spdy.SynStream(sid, spdy.headers(hdrs)))
        await eventually(lambda: sid in self.replied, what=f"SYN_REPLY for {hdrs}")
        return sid

    def out(self, sid: int) -> bytes:
        return bytes(self.data.get(sid, b""))

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()


async def upgrade(cluster: Cluster, path: str, query: list[tuple[str, str]], protocols: list[str]):
    """(status, headers, body, Client or None) for an Upgrade: SPDY/3.1 request."""
    ctx = ssl.create_default_context(cafile=str(cluster.pki.ca_cert))
    ctx.load_cert_chain(str(cluster.pki.admin_cert), str(cluster.pki.admin_key))
    port = cluster.runner.addresses[0][1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    head = [f"POST {path}?{urlencode(query)} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: Upgrade",
            "Upgrade: SPDY/3.1", "Content-Length: 0"]
    head += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    lines = raw.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers: list[tuple[str, str]] = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:] if ln]
    if status != 101:
        length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
        body = await reader.readexactly(length)
        writer.close()
        return status, headers, body, None
    return status, headers, b"", Client(reader, writer)


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


EXEC = "/api/v1/namespaces/default/pods/web/exec"


def command(*argv: str, **flags: bool) -> list[tuple[str, str]]:
    return [("command", a) for a in argv] + [(k, "true") for k, v in flags.items() if v]


async def test_exec_streams_stdin_exit_code_and_goaway(cluster: Cluster):
    await cluster.run_pod("web", "exec sleep 1000")
    status, headers, _, c = await upgrade(
        cluster, EXEC, command("sh", "-c", "cat; echo err >&2; exit 3", stdin=True, stdout=True, stderr=True),
        [V5, *ALL])
    assert status == 101
    assert header(headers, "Upgrade") == ["SPDY/3.1"]
    assert header(headers, "X-Stream-Protocol-Version") == [V5]
    try:
        # client-go's order: error, stdin, stdout, stderr; each waits for its reply.
        err = await c.open(streamType="error")
        c.send(spdy.Data(err, b"", fin=True))  # the client never writes to the error stream
        stdin = await c.open(streamType="stdin")
        stdout = await c.open(streamType="stdout")
        stderr = await c.open(streamType="stderr")
        c.send(spdy.Data(stdin, b"hello "), spdy.Data(stdin, b"world\n"), spdy.Data(stdin, b"", fin=True))
        await eventually(lambda: {err, stdout, stderr} <= c.fin, timeout=20, what="every stream's FIN")
        assert c.out(stdout) == b"hello world\n" and c.out(stderr) == b"err\n"
        st = orjson.loads(c.out(err))
        assert st["reason"] == "NonZeroExitCode"
        assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
        # Then the server says it is done.
        await eventually(lambda: any(isinstance(f, spdy.GoAway) for f in c.other), what="GOAWAY")
    finally:
        await c.close()


async def test_older_protocols_and_a_tty(cluster: Cluster):
    await cluster.run_pod("web", "exec sleep 1000")
    # v2: the error stream carries the message as text; success sends nothing there.
    status, headers, _, c = await upgrade(cluster, EXEC, command("sh", "-c", "echo out; exit 4", stdout=True,
                                                                 stderr=True), [V2, V1])
    assert status == 101 and header(headers, "X-Stream-Protocol-Version") == [V2]
    try:
        err, stdout, stderr = [await c.open(streamType=t) for t in ("error", "stdout", "stderr")]
        await eventually(lambda: {err, stdout, stderr} <= c.fin, timeout=20, what="every stream's FIN")
        assert c.out(stdout) == b"out\n"
        assert c.out(err).decode().startswith("command terminated with non-zero exit code")
    finally:
        await c.close()

    # v4 with a terminal: no stderr stream, a resize stream whose JSON reaches the terminal.
    script = ('for i in $(seq 250); do [ "$(stty size)" = "45 123" ] && { echo resized; exit 0; }; '
              'sleep 0.02; done; exit 1')
    status, headers, _, c = await upgrade(cluster, EXEC, command("sh", "-c", script, stdin=True, stdout=True,
                                                                 tty=True), ALL)
    assert status == 101 and header(headers, "X-Stream-Protocol-Version") == [V4]
    try:
        err, _stdin, stdout, resize = [await c.open(streamType=t) for t in ("error", "stdin", "stdout", "resize")]
        c.send(spdy.Data(resize, b'{"Width":80,"Height":24}\n{"Width":123,'), spdy.Data(resize, b'"Height":45}\n'))
        await eventually(lambda: {err, stdout} <= c.fin, timeout=20, what="every stream's FIN")
        assert b"resized" in c.out(stdout)
        assert orjson.loads(c.out(err))["status"] == "Success"
    finally:
        await c.close()


async def test_errors_before_the_upgrade_are_statuses(cluster: Cluster):
    await cluster.run_pod("web", "exec sleep 1000")
    status, _, body, _ = await upgrade(cluster, "/api/v1/namespaces/default/pods/nope/exec",
                                       command("ls", stdout=True), ALL)
    assert status == 404 and orjson.loads(body)["reason"] == "NotFound"
    status, _, body, _ = await upgrade(cluster, EXEC, command("ls", stdout=True) + [("container", "x")], ALL)
    assert (status, orjson.loads(body)["message"]) == (400, "container x is not valid for pod web")

    status, headers, body, _ = await upgrade(cluster, EXEC, command("ls", stdout=True), ["v9.channel.k8s.io"])
    assert status == 403 and orjson.loads(body)["reason"] == "Forbidden"
    assert "unable to negotiate protocol" in orjson.loads(body)["message"]
    assert header(headers, "X-Accepted-Stream-Protocol-Versions") == [V5, V4, V3, V2, V1]
    status, _, body, _ = await upgrade(cluster, EXEC, command("ls", stdout=True), [])
    assert status == 400 and "X-Stream-Protocol-Version is required" in orjson.loads(body)["message"]

    # The kubelet's refusal (here: a container that never started) comes back before the upgrade too...
    await cluster.run_pod("idle", "true", start=False)
    idle = "/api/v1/namespaces/default/pods/idle/exec"
    status, _, body, _ = await upgrade(cluster, idle, command("ls", stdout=True), ALL)
    assert status >= 400 and orjson.loads(body)["kind"] == "Status"
    # ...except with a terminal, where the command starts after the streams: then on the error stream.
    status, _, _, c = await upgrade(cluster, idle, command("ls", stdin=True, stdout=True, tty=True), ALL)
    assert status == 101
    try:
        err, _stdin, stdout, resize = [await c.open(streamType=t) for t in ("error", "stdin", "stdout", "resize")]
        c.send(spdy.Data(resize, b'{"Width":80,"Height":24}'))
        await eventually(lambda: {err, stdout} <= c.fin, timeout=20, what="every stream's FIN")
        st = orjson.loads(c.out(err))
        assert st["kind"] == "Status" and st["status"] == "Failure" and st["code"] >= 400
    finally:
        await c.close()


async def test_port_forward_is_relayed_to_the_kubelets_tunnel(cluster: Cluster):
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.readline()
        w.write(b"echo:" + data)
        await w.drain()
        w.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    await cluster.run_pod("srv", "exec sleep 1000")
    try:
        status, headers, _, c = await upgrade(cluster, "/api/v1/namespaces/default/pods/srv/portforward", [],
                                              ["portforward.k8s.io"])
        assert status == 101 and header(headers, "X-Stream-Protocol-Version") == ["portforward.k8s.io"]
        try:
            # Two forwarded connections, as kubectl pairs them: an error and a data stream per requestID.
            for rid in ("0", "1"):
                err = await c.open(streamType="error", port=str(port), requestID=rid)
                c.send(spdy.Data(err, b"", fin=True))
                data = await c.open(streamType="data", port=str(port), requestID=rid)
                c.send(spdy.Data(data, f"hi {rid}\n".encode()))
                await eventually(lambda data=data: data in c.fin, what="the pod's answer")
                assert c.out(data) == f"echo:hi {rid}\n".encode()
                c.send(spdy.Data(data, b"", fin=True))
                await eventually(lambda err=err: err in c.fin, what="the error stream's end")
                assert c.out(err) == b""
            # A port nobody listens on: the message comes on the error stream.
            err = await c.open(streamType="error", port=str(dead_port), requestID="2")
            data = await c.open(streamType="data", port=str(dead_port), requestID="2")
            await eventually(lambda: err in c.fin, what="the error")
            assert c.out(err).startswith(f"error forwarding port {dead_port} to pod".encode())
        finally:
            await c.close()
        status, headers, body, _ = await upgrade(cluster, "/api/v1/namespaces/default/pods/srv/portforward", [],
                                                 [V4])
        assert status == 403 and header(headers, "X-Accepted-Stream-Protocol-Versions") == ["portforward.k8s.io"]
    finally:
        srv.close()
