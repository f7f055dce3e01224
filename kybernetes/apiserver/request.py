"""The transport-independent request and response of the API server.

The aiohttp front door and the client's in-process transport both speak these,
so a component running inside the server process goes through exactly the
same handlers (validation, admission, watch cache) as kubectl over HTTPS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Request:
    method: str  # "GET", "POST", "PUT", "PATCH", "DELETE"
    path: str  # "/api/v1/namespaces/default/pods/nginx" (no query string)
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # keys lower-cased
    body: bytes = b""
    user: str = "system:admin"
    groups: tuple[str, ...] = ("system:masters", "system:authenticated")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # For watch: each item is one complete watch event, JSON-encoded, with a
    # trailing newline. `body` is empty then.
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Request], Awaitable[Response]]
