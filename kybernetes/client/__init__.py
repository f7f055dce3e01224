"""How components talk to the API server: Client, Informer and WorkQueue.

Everything a controller, the scheduler or a kubelet needs to read and write
cluster state lives here, behind one Transport interface, so a component runs
unchanged in the server's process (InProcessTransport) or on another machine
(HTTPTransport).
"""

from .client import PATCH_CONTENT_TYPES, Client, ResourceClient, Watch
from .informer import Informer, meta_namespace_key, split_key
from .transport import (
    EventStream,
    HTTPTransport,
    InProcessTransport,
    Transport,
    TransportError,
    build_ssl_context,
    status_error_from_response,
)
from .workqueue import (
    BucketRateLimiter,
    ItemExponentialRateLimiter,
    MaxOfRateLimiter,
    QueueShutDown,
    RateLimiter,
    WorkQueue,
    default_controller_rate_limiter,
)

__all__ = [
    "PATCH_CONTENT_TYPES",
    "BucketRateLimiter",
    "Client",
    "EventStream",
    "HTTPTransport",
    "InProcessTransport",
    "Informer",
    "ItemExponentialRateLimiter",
    "MaxOfRateLimiter",
    "QueueShutDown",
    "RateLimiter",
    "ResourceClient",
    "Transport",
    "TransportError",
    "Watch",
    "WorkQueue",
    "build_ssl_context",
    "default_controller_rate_limiter",
    "meta_namespace_key",
    "split_key",
    "status_error_from_response",
]
