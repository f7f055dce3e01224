"""How the client reaches an API server: one interface, two ways of getting there.

`Transport` is the byte-level contract the Client is written against: a request
returns (status, headers, body) and a watch returns the raw event lines. It owns
no knowledge of resources or objects, only of moving requests.

* `HTTPTransport` speaks HTTP(S) with aiohttp over one pooled keep-alive session,
  authenticating with a client certificate or a bearer token, and can be built
  from a standard kubeconfig file.
* `InProcessTransport` hands `apiserver.request.Request` objects straight to the
  server's handler, so a component living in the server process goes through the
  same validation, admission and watch cache without sockets or HTTP framing.

Failures to reach the server surface as `TransportError` (a ConnectionError), so
callers can tell "the server said no" (a StatusError) from "we never got an
answer" and retry only the latter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import orjson
import yaml

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.request import Handler, Request, Response

# Watches may legitimately stay silent for minutes (bookmarks are only sent
# about once a minute), so only plain requests get an overall deadline.
DEFAULT_REQUEST_TIMEOUT = 60.0
_REASON_BY_CODE = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    406: "NotAcceptable", 409: "Conflict", 410: "Gone", 413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}


class TransportError(ConnectionError):
    """The server could not be reached or the connection broke mid-request."""


def status_error_from_response(status: int, body: bytes) -> StatusError:
    """Turn an error response into a StatusError, trusting a metav1.Status body when there is one."""
    decoded: Any = None
    if body:
        with contextlib.suppress(orjson.JSONDecodeError):
            decoded = orjson.loads(body)
    return status_error_from_object(decoded, status, body)


def status_error_from_object(obj: Any, status: int = 500, raw: bytes = b"") -> StatusError:
    """A StatusError from a decoded metav1.Status (also used for watch ERROR events)."""
    if isinstance(obj, dict) and obj.get("kind") == "Status":
        code = int(obj.get("code") or status)
        reason = obj.get("reason") or _REASON_BY_CODE.get(code, "Unknown")
        message = obj.get("message") or ""
        return StatusError(code, reason, message, obj.get("details"))
    # Proxies and load balancers answer with HTML or plain text; keep some of it
    # so the operator sees what actually answered.
    text = raw[:512].decode("utf-8", "replace").strip()
    reason = _REASON_BY_CODE.get(status, "Unknown")
    message = f"the server responded with status {status}" + (f": {text}" if text else "")
    return StatusError(status, reason, message)


class EventStream(ABC):
    """An open watch: iterate raw event lines (one JSON document each), then close()."""

    def __aiter__(self) -> EventStream:
        return self

    @abstractmethod
    async def __anext__(self) -> bytes: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Transport(ABC):
    """The byte-level contract between the Client and an API server."""

    @abstractmethod
    async def request(self, method: str, path: str, query: Mapping[str, str] | None = None,
                      body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send one request; header names in the result are lower-case. Raises TransportError."""

    @abstractmethod
    def stream(self, method: str, path: str, query: Mapping[str, str] | None = None,
               headers: Mapping[str, str] | None = None) -> EventStream:
        """Open a streaming (watch) request lazily: the request is sent on first iteration.

        A non-2xx answer raises StatusError from that first iteration.
        """

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---------------------------------------------------------------------------- in-process


_EOF = object()


class _InProcessStream(EventStream):
    # The server's event iterator is drained by a pump task into a queue, so
    # that close() from any task ends the watch at once: cancelling the pump
    # runs the server generator's cleanup, which a generator that is busy in
    # another task's __anext__ would refuse (aclose() cannot interrupt it).
    def __init__(self, transport: InProcessTransport, request: Request):
        self._transport = transport
        self._request = request
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        if not self._opened:
            self._opened = True
            response = await self._transport.call(self._request)
            if response.status >= 300:
                self._closed = True
                raise status_error_from_response(response.status, response.body)
            source = response.stream if response.stream is not None else _lines_of(response.body)
            if self._closed:  # closed while the handler was answering
                await _aclose(source)
                raise StopAsyncIteration
            self._pump = asyncio.get_running_loop().create_task(self._run_pump(source))
        item = await self._queue.get()
        if item is _EOF:
            self._closed = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        return item

    async def _run_pump(self, source: AsyncIterator[bytes]) -> None:
        try:
            async for item in source:
                self._queue.put_nowait(item)
            self._queue.put_nowait(_EOF)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - handed to the reader, who raises it
            self._queue.put_nowait(e)
        finally:
            await _aclose(source)

    async def close(self) -> None:
        self._closed = True
        pump, self._pump = self._pump, None
        self._queue.put_nowait(_EOF)  # wakes a reader blocked in another task
        # A cancellation can be swallowed by code racing with it inside the
        # server's stream; keep asking until the pump has really stopped.
        while pump is not None and not pump.done():
            pump.cancel()
            await asyncio.wait({pump}, timeout=0.5)
        if pump is not None and pump.done() and not pump.cancelled():
            pump.exception()  # retrieved, so it is never reported as unhandled


async def _aclose(source: AsyncIterator[bytes]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def _lines_of(body: bytes) -> AsyncIterator[bytes]:
    for line in body.splitlines():
        if line.strip():
            yield line


class InProcessTransport(Transport):
    """Calls the API server's handler directly, as `user` in `groups`."""

    def __init__(self, handler: Handler, *, user: str = "system:admin",
                 groups: tuple[str, ...] = ("system:masters", "system:authenticated")):
        self.handler = handler
        self.user = user
        self.groups = tuple(groups)

    def _build(self, method: str, path: str, query: Mapping[str, str] | None, body: bytes | None,
               headers: Mapping[str, str] | None) -> Request:
        return Request(method=method.upper(), path=path, query=dict(query or {}),
                       headers={k.lower(): v for k, v in (headers or {}).items()},
                       body=body or b"", user=self.user, groups=self.groups)

    async def call(self, request: Request) -> Response:
        try:
            return await self.handler(request)
        except StatusError as e:
            # A handler that raises instead of rendering: answer as the HTTP front door would.
            return Response(e.code, e.to_bytes())

    async def request(self, method: str, path: str, query: Mapping[str, str] | None = None,
                      body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        response = await self.call(self._build(method, path, query, body, headers))
        out_headers = {k.lower(): v for k, v in response.headers.items()}
        out_headers.setdefault("content-type", response.content_type)
        body_out = response.body
        if response.stream is not None:
            # Not a watch from our side, but the server chose to stream: collect it.
            chunks = [chunk async for chunk in response.stream]
            body_out = b"".join(chunks)
        return response.status, out_headers, body_out

    def stream(self, method: str, path: str, query: Mapping[str, str] | None = None,
               headers: Mapping[str, str] | None = None) -> EventStream:
        return _InProcessStream(self, self._build(method, path, query, None, headers))

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------------------- HTTP


class _HTTPStream(EventStream):
    def __init__(self, transport: HTTPTransport, method: str, path: str,
                 query: Mapping[str, str] | None, headers: Mapping[str, str] | None):
        self._transport = transport
        self._args = (method, path, query, headers)
        self._response: aiohttp.ClientResponse | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._buffer = bytearray()
        self._closed = False

    async def _open(self) -> None:
        method, path, query, headers = self._args
        session = self._transport._get_session()
        # The server must end a watch by timeoutSeconds; silence well beyond that
        # means the connection died without a FIN, and only a read deadline notices.
        sock_read = None
        if query and query.get("timeoutSeconds"):
            sock_read = float(query["timeoutSeconds"]) + 30.0
        try:
            response = await session.request(
                method, self._transport._url(path), params=dict(query or {}),
                headers=self._transport._headers(headers),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._transport.timeout,
                                              sock_read=sock_read))
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self._closed = True
            raise TransportError(f"watch {path}: {e}") from e
        if response.status >= 300:
            try:
                body = await response.read()
            except (aiohttp.ClientError, OSError) as e:
                raise TransportError(f"watch {path}: {e}") from e
            finally:
                response.release()
                self._closed = True
            raise status_error_from_response(response.status, body)
        self._response = response
        # Our own line splitting, because StreamReader.readline refuses lines
        # longer than its buffer limit and objects in events can be large.
        self._chunks = response.content.iter_any().__aiter__()

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        if self._response is None:
            await self._open()
        assert self._chunks is not None
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
                if line.strip():
                    return line
                continue
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                tail = bytes(self._buffer).strip()
                self._buffer.clear()
                await self.close()
                if tail:
                    return tail
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                await self.close()
                raise TransportError(f"watch stream broke: {e}") from e
            self._buffer += chunk

    async def close(self) -> None:
        self._closed = True
        response, self._response = self._response, None
        if response is not None:
            # close(), not release(): an unfinished chunked body cannot go back to the pool.
            response.close()


class HTTPTransport(Transport):
    """HTTP(S) to an API server over one keep-alive aiohttp session."""

    def __init__(self, base_url: str, *, ca_file: str | None = None, ca_data: bytes | str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 cert_data: bytes | str | None = None, key_data: bytes | str | None = None,
                 token: str | None = None, token_file: str | None = None,
                 username: str | None = None, password: str | None = None,
                 insecure: bool = False, timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None, connection_limit: int = 100):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.namespace = "default"  # set by from_kubeconfig from the context
        self._token = token
        self._token_file = token_file
        self._basic = aiohttp.BasicAuth(username, password or "") if username else None
        self._connection_limit = connection_limit
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool | None = None
        if urlsplit(self.base_url).scheme == "https":
            self._ssl = ssl_context or build_ssl_context(
                ca_file=ca_file, ca_data=ca_data, cert_file=cert_file, key_file=key_file,
                cert_data=cert_data, key_data=key_data, insecure=insecure)
        elif ssl_context is not None:
            self._ssl = ssl_context

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str] | None = None, context: str | None = None,
                        **kwargs: Any) -> HTTPTransport:
        """Build a transport from a kubeconfig (default: $KUBECONFIG or ~/.kube/config)."""
        if path is None:
            env = os.environ.get("KUBECONFIG", "")
            path = env.split(os.pathsep)[0] if env else os.path.expanduser("~/.kube/config")
        path = os.fspath(path)
        with open(path, "rb") as f:
            config = yaml.safe_load(f) or {}
        base = os.path.dirname(os.path.abspath(path))
        context_name = context or config.get("current-context")
        if not context_name:
            raise ValueError(f"{path}: no context given and no current-context set")
        ctx = _named(config, "contexts", context_name, "context")
        cluster = _named(config, "clusters", ctx.get("cluster"), "cluster")
        user = _named(config, "users", ctx.get("user"), "user") if ctx.get("user") else {}
        if not cluster.get("server"):
            raise ValueError(f"{path}: cluster {ctx.get('cluster')!r} has no server")

        def file_opt(key: str) -> str | None:
            value = cluster.get(key) if key == "certificate-authority" else user.get(key)
            return os.path.join(base, value) if value else None

        def data_opt(source: dict[str, Any], key: str) -> bytes | None:
            value = source.get(key)
            return base64.b64decode(value) if value else None

        options: dict[str, Any] = {
            "ca_file": file_opt("certificate-authority"),
            "ca_data": data_opt(cluster, "certificate-authority-data"),
            "cert_file": file_opt("client-certificate"),
            "key_file": file_opt("client-key"),
            "cert_data": data_opt(user, "client-certificate-data"),
            "key_data": data_opt(user, "client-key-data"),
            "token": user.get("token"),
            "token_file": file_opt("tokenFile"),
            "username": user.get("username"),
            "password": user.get("password"),
            "insecure": bool(cluster.get("insecure-skip-tls-verify")),
        }
        options.update(kwargs)
        transport = cls(cluster["server"], **options)
        transport.namespace = ctx.get("namespace") or "default"
        return transport

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connection_limit, ssl=self._ssl,
                                             keepalive_timeout=60)
            # No cookie jar: the API is stateless and cookies would only cost lookups.
            self._session = aiohttp.ClientSession(connector=connector,
                                                  cookie_jar=aiohttp.DummyCookieJar(),
                                                  auth=self._basic)
        return self._session

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        out = {"Accept": "application/json", "User-Agent": "kybernetes-client"}
        token = self._token
        if self._token_file:
            # Re-read each time: projected service-account tokens are rotated on disk.
            with open(self._token_file) as f:
                token = f.read().strip()
        if token:
            out["Authorization"] = f"Bearer {token}"
        if headers:
            out.update(headers)
        return out

    async def request(self, method: str, path: str, query: Mapping[str, str] | None = None,
                      body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        session = self._get_session()
        try:
            async with session.request(method, self._url(path), params=dict(query or {}), data=body,
                                       headers=self._headers(headers),
                                       timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                data = await response.read()
                return response.status, {k.lower(): v for k, v in response.headers.items()}, data
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise TransportError(f"{method} {path}: {e}") from e

    def stream(self, method: str, path: str, query: Mapping[str, str] | None = None,
               headers: Mapping[str, str] | None = None) -> EventStream:
        return _HTTPStream(self, method, path, query, headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _named(config: dict[str, Any], section: str, name: str | None, inner: str) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if entry.get("name") == name:
            return entry.get(inner) or {}
    raise ValueError(f"kubeconfig has no {section[:-1]} named {name!r}")


def build_ssl_context(*, ca_file: str | None = None, ca_data: bytes | str | None = None,
                      cert_file: str | None = None, key_file: str | None = None,
                      cert_data: bytes | str | None = None, key_data: bytes | str | None = None,
                      insecure: bool = False) -> ssl.SSLContext:
    """A client TLS context trusting the given CA and presenting the given client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if ca_data:
        ctx.load_verify_locations(cadata=ca_data.decode() if isinstance(ca_data, bytes) else ca_data)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file or cert_data:
        if cert_data is not None or key_data is not None:
            _load_cert_chain_from_memory(ctx, cert_data, key_data, cert_file, key_file)
        else:
            ctx.load_cert_chain(cert_file, key_file)  # type: ignore[arg-type]
    return ctx


def _load_cert_chain_from_memory(ctx: ssl.SSLContext, cert_data: bytes | str | None,
                                 key_data: bytes | str | None, cert_file: str | None,
                                 key_file: str | None) -> None:
    # The ssl module only loads certificate chains from files: write them to a
    # private directory for the duration of the call and remove them at once.
    def as_bytes(value: bytes | str) -> bytes:
        return value.encode() if isinstance(value, str) else value

    with tempfile.TemporaryDirectory(prefix="kyb-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path = cert_file
        key_path = key_file
        if cert_data is not None:
            cert_path = os.path.join(tmp, "cert.pem")
            with open(os.open(cert_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(as_bytes(cert_data))
        if key_data is not None:
            key_path = os.path.join(tmp, "key.pem")
            with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(as_bytes(key_data))
        if cert_path is None:
            raise ValueError("a client key was given without a client certificate")
        ctx.load_cert_chain(cert_path, key_path)
