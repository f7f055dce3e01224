"""The transport-independent request and response of the API server.

The aiohttp front door and the client's in-process transport both speak these,
so a component running inside the server process goes through exactly the
same handlers (validation, admission, watch cache) as kubectl over HTTPS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .requestinfo import RequestInfo


@dataclass(slots=True)
class Request:
    method: str  # "GET", "POST", "PUT", "PATCH", "DELETE"
    # "/api/v1/namespaces/default/pods/nginx": the raw path, percent-encoding kept, no query string.
    path: str
    query: dict[str, str] = field(default_factory=dict)
    # Read with .get(lower-case name); the front door passes aiohttp's case-insensitive multidict.
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Reads the body when the chain gets to it (after authorization, so that nobody
    # unauthorised makes the server buffer megabytes); the front door sets it.
    read_body: Callable[[], Awaitable[bytes]] | None = None
    # Who is asking; "" until the chain's authentication step sets it from the credentials.
    user: str = "system:admin"
    groups: tuple[str, ...] = ("system:masters", "system:authenticated")
    # The TLS client certificate's (CN, O's), and the client's address, set by the front door.
    peer: tuple[str, tuple[str, ...]] | None = None
    remote: str = ""
    # What the request asks for, parsed once by the chain's first step.
    info: RequestInfo | None = None
    # For an HTTP connection upgrade (exec, attach, port-forward): serves it, given the
    # identity the chain settled on, and returns the front door's native response.
    upgrade: Callable[[str, tuple[str, ...]], Awaitable[Any]] | None = None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # For watch: each item is one complete watch event, JSON-encoded, with a
    # trailing newline. `body` is empty then.
    stream: AsyncIterator[bytes] | None = None
    # A response the front door already wrote itself (an upgraded connection); returned as is.
    native: Any = None


Handler = Callable[[Request], Awaitable[Response]]
