"""SPDY/3.1 as Kubernetes uses it: frames, compressed header blocks, and a small server session.

client-go speaks SPDY (through moby/spdystream) for exec and attach before
kubectl 1.30 and for port-forward before 1.31; newer kubectl still falls back to
it, and tunnels it inside a WebSocket for port-forward. A connection carries
numbered streams that the client opens with SYN_STREAM, each named by its
headers (``streamType: stdout``, ``port: 8080`` ...); the server answers each
with SYN_REPLY, then both sides send DATA, half-closing with the FIN flag.

* Frames are small dataclasses. :class:`FrameReader` turns bytes into frames,
  however the bytes were split; :class:`FrameWriter` turns frames into bytes.
  Each owns its direction's zlib context: SPDY compresses every header block of
  a connection with one running context (primed with the SPDY/3 dictionary), so
  blocks must be decoded in order and a connection needs one reader and one writer.
* :class:`Session` is the server end of one connection over any byte transport
  (a TCP connection taken over from HTTP, or a WebSocket's binary messages): it
  answers SYN_STREAM and PING, hands each new :class:`Stream` to a callback, and
  gives streams ``read``/``write``/``close``/``reset``.

What spdystream does not do, neither does this: no flow control (WINDOW_UPDATE
and SETTINGS are read and ignored), no server push, no priorities.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

VERSION = 3

# Control frame types (DATA frames have none).
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02  # SYN_STREAM only
FLAG_SETTINGS_CLEAR = 0x01  # SETTINGS only

# RST_STREAM status codes.
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION, CANCEL, INTERNAL_ERROR = 1, 2, 3, 4, 5, 6
# GOAWAY status codes.
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, GOAWAY_INTERNAL_ERROR = 0, 1, 2

MAX_LENGTH = 0xFFFFFF  # a frame's length field is 24 bits
DATA_CHUNK = 64 * 1024  # larger writes are sent as several DATA frames
MAX_HEADER_BYTES = 1 << 20  # decompressed header block limit, against zlib bombs

HeaderBlock = dict[str, list[str]]


class ProtocolError(ValueError):
    """The peer sent bytes that are not SPDY/3: the connection cannot go on."""


def _dictionary() -> bytes:
    """SPDY/3's zlib dictionary for header blocks (spec section 2.6.10.1), rebuilt from its parts.

    Most of it is length-prefixed header names and values; the rest is raw text.
    """
    words = ("options head post put delete trace accept accept-charset accept-encoding accept-language "
             "accept-ranges age allow authorization cache-control connection content-base content-encoding "
             "content-language content-length content-location content-md5 content-range content-type date "
             "etag expect expires from host if-match if-modified-since if-none-match if-range "
             "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
             "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
             "user-agent vary via warning www-authenticate method get status").split() + [
        "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    codes = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
             "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
             "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
             "503 Service Unavailable")
    rest = ("Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, "
            "Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,"
            "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch"
            "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
    head = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    return head + codes.encode() + rest.encode()


DICTIONARY = _dictionary()


# -- frames -------------------------------------------------------------------------------


@dataclass(slots=True)
class Data:
    stream_id: int
    data: bytes = b""
    fin: bool = False


@dataclass(slots=True)
class SynStream:
    stream_id: int
    headers: HeaderBlock = field(default_factory=dict)
    fin: bool = False
    unidirectional: bool = False
    associated_to: int = 0
    priority: int = 0


@dataclass(slots=True)
class SynReply:
    stream_id: int
    headers: HeaderBlock = field(default_factory=dict)
    fin: bool = False


@dataclass(slots=True)
class RstStream:
    stream_id: int
    status: int = CANCEL


@dataclass(slots=True)
class Settings:
    entries: list[tuple[int, int, int]] = field(default_factory=list)  # (flags, id, value)
    clear: bool = False


@dataclass(slots=True)
class Ping:
    id: int


@dataclass(slots=True)
class GoAway:
    last_good_stream_id: int = 0
    status: int = GOAWAY_OK


@dataclass(slots=True)
class HeadersFrame:
    stream_id: int
    headers: HeaderBlock = field(default_factory=dict)
    fin: bool = False


@dataclass(slots=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(slots=True)
class UnknownControl:
    """A control frame of a type SPDY/3 does not define: to be ignored, as the spec says."""

    type: int
    flags: int
    payload: bytes


Frame = (Data | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate
         | UnknownControl)


def headers(values: Mapping[str, str | Sequence[str]]) -> HeaderBlock:
    """A header block from plain values (names lower-cased, as SPDY/3 requires)."""
    return {k.lower(): [v] if isinstance(v, str) else list(v) for k, v in values.items()}


class FrameReader:
    """Bytes in, frames out, for one direction of one connection."""

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._buf = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._max_header_bytes = max_header_bytes

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (possibly none); a partial frame waits for more."""
        self._buf += data
        buf, pos, out = self._buf, 0, []
        while len(buf) - pos >= 8:
            length = int.from_bytes(buf[pos + 5:pos + 8], "big")
            if len(buf) - pos < 8 + length:
                break
            head = bytes(buf[pos:pos + 8])
            payload = bytes(buf[pos + 8:pos + 8 + length])
            pos += 8 + length
            out.append(self._frame(head, payload))
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame waiting for the rest."""
        return len(self._buf)

    def _frame(self, head: bytes, payload: bytes) -> Frame:
        flags = head[4]
        if not head[0] & 0x80:
            return Data(int.from_bytes(head[0:4], "big") & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN))
        version = int.from_bytes(head[0:2], "big") & 0x7FFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")
        ftype = int.from_bytes(head[2:4], "big")
        fin = bool(flags & FLAG_FIN)
        try:
            if ftype == SYN_STREAM:
                sid, assoc = struct.unpack_from(">II", payload)
                return SynStream(sid & 0x7FFFFFFF, self._headers(payload[10:]), fin,
                                 bool(flags & FLAG_UNIDIRECTIONAL), assoc & 0x7FFFFFFF, payload[8] >> 5)
            if ftype == SYN_REPLY:
                return SynReply(_u31(payload), self._headers(payload[4:]), fin)
            if ftype == HEADERS:
                return HeadersFrame(_u31(payload), self._headers(payload[4:]), fin)
            if ftype == RST_STREAM:
                sid, st = struct.unpack_from(">II", payload)
                return RstStream(sid & 0x7FFFFFFF, st)
            if ftype == SETTINGS:
                (n,) = struct.unpack_from(">I", payload)
                if len(payload) < 4 + 8 * n:
                    raise ProtocolError("SETTINGS frame shorter than its entries")
                entries = []
                for i in range(n):
                    idf, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                    entries.append((idf >> 24, idf & 0xFFFFFF, value))
                return Settings(entries, bool(flags & FLAG_SETTINGS_CLEAR))
            if ftype == PING:
                return Ping(struct.unpack_from(">I", payload)[0])
            if ftype == GOAWAY:
                last = _u31(payload)
                status = struct.unpack_from(">I", payload, 4)[0] if len(payload) >= 8 else GOAWAY_OK
                return GoAway(last, status)
            if ftype == WINDOW_UPDATE:
                sid, delta = struct.unpack_from(">II", payload)
                return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        except (struct.error, IndexError):
            raise ProtocolError(f"control frame of type {ftype} is too short") from None
        return UnknownControl(ftype, flags, payload)

    def _headers(self, block: bytes) -> HeaderBlock:
        if not block:
            return {}
        try:
            raw = self._inflate.decompress(block, self._max_header_bytes)
        except zlib.error as e:
            raise ProtocolError(f"bad header block: {e}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError("header block too large")
        try:
            (n,) = struct.unpack_from(">I", raw)
            pos, out = 4, {}
            for _ in range(n):
                (ln,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4:pos + 4 + ln].decode("latin-1").lower()
                pos += 4 + ln
                (lv,) = struct.unpack_from(">I", raw, pos)
                value = raw[pos + 4:pos + 4 + lv]
                pos += 4 + lv
                if pos > len(raw):
                    raise struct.error
                out.setdefault(name, []).extend(v.decode("latin-1") for v in value.split(b"\x00"))
        except struct.error:
            raise ProtocolError("truncated header block") from None
        return out


def _u31(payload: bytes) -> int:
    return struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF


class FrameWriter:
    """Frames in, bytes out, for one direction of one connection."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(zdict=DICTIONARY)

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, Data):
            if len(frame.data) > MAX_LENGTH:
                raise ValueError("DATA frame too long")
            return struct.pack(">II", frame.stream_id & 0x7FFFFFFF,
                               ((FLAG_FIN if frame.fin else 0) << 24) | len(frame.data)) + frame.data
        if isinstance(frame, SynStream):
            flags = (FLAG_FIN if frame.fin else 0) | (FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            body = struct.pack(">IIBB", frame.stream_id, frame.associated_to, (frame.priority & 7) << 5, 0)
            return _control(SYN_STREAM, flags, body + self._headers(frame.headers))
        if isinstance(frame, SynReply):
            return _control(SYN_REPLY, FLAG_FIN if frame.fin else 0,
                            struct.pack(">I", frame.stream_id) + self._headers(frame.headers))
        if isinstance(frame, HeadersFrame):
            return _control(HEADERS, FLAG_FIN if frame.fin else 0,
                            struct.pack(">I", frame.stream_id) + self._headers(frame.headers))
        if isinstance(frame, RstStream):
            return _control(RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status))
        if isinstance(frame, Settings):
            body = struct.pack(">I", len(frame.entries)) + b"".join(
                struct.pack(">II", (f << 24) | (i & 0xFFFFFF), v) for f, i, v in frame.entries)
            return _control(SETTINGS, FLAG_SETTINGS_CLEAR if frame.clear else 0, body)
        if isinstance(frame, Ping):
            return _control(PING, 0, struct.pack(">I", frame.id))
        if isinstance(frame, GoAway):
            return _control(GOAWAY, 0, struct.pack(">II", frame.last_good_stream_id, frame.status))
        if isinstance(frame, WindowUpdate):
            return _control(WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta))
        if isinstance(frame, UnknownControl):
            return _control(frame.type, frame.flags, frame.payload)
        raise TypeError(f"not a SPDY frame: {frame!r}")

    def _headers(self, block: HeaderBlock) -> bytes:
        parts = [struct.pack(">I", len(block))]
        for name, values in block.items():
            n, v = name.lower().encode("latin-1"), b"\x00".join(x.encode("latin-1") for x in values)
            parts += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
        # One running context per direction: each block is flushed, never finished.
        return self._deflate.compress(b"".join(parts)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)


def _control(ftype: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError("control frame too long")
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload


# -- a server session -------------------------------------------------------------------------


class Stream:
    """A stream the peer opened: its headers, what it sends (read) and our half of it (write, close)."""

    def __init__(self, session: Session, stream_id: int, headers: HeaderBlock) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self.remote_closed = False  # the peer sent FIN, or the stream was reset
        self.local_closed = False  # we sent FIN, or the stream was reset
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    def header(self, name: str, default: str = "") -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else default

    async def read(self) -> bytes:
        """The next bytes the peer sent; b"" once it has half-closed (or reset) the stream."""
        if self._inbox.empty() and self.remote_closed:
            return b""
        data = await self._inbox.get()
        if data is None:
            self._inbox.put_nowait(None)  # every later read sees the end too
            return b""
        return data

    async def write(self, data: bytes, fin: bool = False) -> None:
        """Send ``data`` (dropped once our half is closed: the peer no longer reads it)."""
        if self.local_closed:
            return
        view = memoryview(data)
        for i in range(0, len(view), DATA_CHUNK):
            last = i + DATA_CHUNK >= len(view)
            await self.session.send(Data(self.id, bytes(view[i:i + DATA_CHUNK]), fin and last))
        if fin:
            self._close_local()
            if not data:
                await self.session.send(Data(self.id, b"", True))

    async def close(self) -> None:
        """Half-close: FIN on our side; the peer may still write."""
        if not self.local_closed:
            self._close_local()
            await self.session.send(Data(self.id, b"", True))

    async def reset(self, status: int = CANCEL) -> None:
        """Abort both directions."""
        closed = self.local_closed and self.remote_closed
        self._end_remote()
        self._close_local()
        if not closed:
            await self.session.send(RstStream(self.id, status))

    def _end_remote(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._inbox.put_nowait(None)
        self._forget_if_done()

    def _close_local(self) -> None:
        self.local_closed = True
        self._forget_if_done()

    def _forget_if_done(self) -> None:
        if self.local_closed and self.remote_closed:
            self.session.streams.pop(self.id, None)


class Session:
    """The server end of one SPDY/3.1 connection, over whatever carries its bytes.

    The owner feeds received bytes to :meth:`feed` (and :meth:`feed_eof` at the
    end) and gives a ``send`` coroutine that writes bytes out. ``on_stream`` is
    called with each stream the peer opens, after its SYN_REPLY is sent.
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]],
                 on_stream: Callable[[Stream], object] | None = None) -> None:
        self._send = send
        self.on_stream = on_stream
        self._reader = FrameReader()
        self._writer = FrameWriter()
        # Frames leave in the order their header blocks were compressed, one at a time.
        self._lock = asyncio.Lock()
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.goaway_received = False
        self.goaway_sent = False
        self.eof = False

    async def send(self, frame: Frame) -> None:
        """Send one frame; a peer that went away is noticed by the reader, so errors are dropped."""
        async with self._lock:
            data = self._writer.encode(frame)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(data)

    async def feed(self, data: bytes) -> None:
        """Handle the frames ``data`` completes. Raises ProtocolError on bytes that are not SPDY."""
        for frame in self._reader.feed(data):
            await self._handle(frame)

    def feed_eof(self) -> None:
        """The connection ended: every stream reads its end."""
        self.eof = True
        for st in list(self.streams.values()):
            st.local_closed = True
            st._end_remote()
        self.streams.clear()

    async def goaway(self, status: int = GOAWAY_OK) -> None:
        """Tell the peer we are done (no new streams); sent once."""
        if not self.goaway_sent:
            self.goaway_sent = True
            await self.send(GoAway(self.last_stream_id, status))

    async def _handle(self, frame: Frame) -> None:
        if isinstance(frame, Data):
            st = self.streams.get(frame.stream_id)
            if st is None or st.remote_closed:
                return  # a stream already reset or finished: what is in flight is dropped
            if frame.data:
                st._inbox.put_nowait(frame.data)
            if frame.fin:
                st._end_remote()
        elif isinstance(frame, SynStream):
            sid = frame.stream_id
            if sid in self.streams or sid == 0 or self.goaway_sent:
                await self.send(RstStream(sid, PROTOCOL_ERROR if sid in self.streams else REFUSED_STREAM))
                return
            st = Stream(self, sid, frame.headers)
            self.streams[sid] = st
            self.last_stream_id = max(self.last_stream_id, sid)
            await self.send(SynReply(sid, {}))
            if frame.fin:
                st._end_remote()
            if frame.unidirectional:
                st._close_local()
            if self.on_stream is not None:
                self.on_stream(st)
        elif isinstance(frame, RstStream):
            st = self.streams.pop(frame.stream_id, None)
            if st is not None:
                st.local_closed = True
                st._end_remote()
        elif isinstance(frame, Ping):
            await self.send(frame)  # answered by echoing it
        elif isinstance(frame, GoAway):
            self.goaway_received = True
        # SYN_REPLY (we open no streams), HEADERS, SETTINGS, WINDOW_UPDATE: nothing to do;
        # their header blocks were still decoded, which keeps the zlib context in step.
