"""Pod subresources served by the node: pods/log, pods/exec, pods/attach (and pods/portforward).

The API server does not run containers; as upstream does, it finds the pod's
node (spec.nodeName), the node's kubelet address (status.addresses, preferring
InternalIP) and port (status.daemonEndpoints.kubeletEndpoint.Port), and proxies
the request to the kubelet's streaming server (kubelet/server.py) over HTTPS
with its own client certificate (CN=kube-apiserver-kubelet-client,
O=system:masters), issued from the cluster CA.

* ``pods/{name}/log`` is a plain GET: :func:`pod_log` returns a Response whose
  ``stream`` yields the kubelet's text as it comes (``kubectl logs -f``).
* ``pods/{name}/exec|attach|portforward`` are connection upgrades: the front
  door hands the raw aiohttp request to :func:`handle_upgrade`, which checks
  the pod and container first (so errors reach kubectl as metav1.Status, for
  its WebSocket attempt and its SPDY fallback alike), then opens a WebSocket to
  the kubelet with the protocols the client offered, accepts the client's
  WebSocket with the one the kubelet chose, and relays messages both ways,
  closing each side with the other's close code. A SPDY/3.1 upgrade (older
  kubectl) is negotiated and bridged to the same kubelet WebSockets by
  spdyproxy.py.

Container defaulting and the errors follow upstream's pod REST: a pod with one
container needs no ``container`` parameter; otherwise "a container name must be
specified for pod X, choose one of: [a b]".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from ..api import errors
from ..api.errors import StatusError
from . import spdyproxy
from .request import Response

if TYPE_CHECKING:
    from .pki import PKI
    from .server import APIServer

log = logging.getLogger("kybernetes.apiserver.proxy")

KUBELET_CLIENT_CN = "kube-apiserver-kubelet-client"
KUBELET_CLIENT_ORGS = ["system:masters"]
DEFAULT_KUBELET_PORT = 10250
# Upstream's --kubelet-preferred-address-types, minus DNS names we could not resolve anyway.
ADDRESS_PREFERENCE = ("InternalIP", "ExternalIP", "Hostname")
UPGRADE_SUBRESOURCES = ("exec", "attach", "portforward")

_UPGRADE_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/(exec|attach|portforward)/?$")


class KubeletClient:
    """How the API server reaches kubelets: TLS with its client certificate, one HTTP session."""

    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        """ssl_context None talks plain HTTP (only for kubelets serving without TLS, i.e. tests)."""
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_pki(cls, pki: PKI) -> KubeletClient:
        """A client certificate from the cluster CA (kept beside it) and trust in the same CA."""
        cert, key = pki.dir / "apiserver-kubelet-client.crt", pki.dir / "apiserver-kubelet-client.key"
        if not (cert.exists() and key.exists()):
            from .pki import _write

            crt_pem, key_pem = pki.issue_client(KUBELET_CLIENT_CN, KUBELET_CLIENT_ORGS)
            _write(key, key_pem)
            _write(cert, crt_pem, 0o644)
        return cls(client_ssl_context(pki.ca_cert, cert, key))

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No total timeout: logs -f and exec sessions last as long as the user wants.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def client_ssl_context(ca_file: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """TLS to kubelets: present our certificate; trust only the cluster CA, for the address dialled.

    The kubelet's serving certificate must name the address the API server dials
    (the node's InternalIP, as upstream's --kubelet-certificate-authority checks
    it): a node's certificate, issued for its own addresses, cannot stand in for
    another node's kubelet.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


# -- finding the pod, the container and the kubelet ------------------------------


@dataclass
class Target:
    pod: dict[str, Any]
    container: str
    base_url: str | None  # https://node:port, None when the pod is not scheduled


def _kubelet_client(api: APIServer) -> KubeletClient:
    client = getattr(api, "kubelet_client", None)
    if client is None:
        raise StatusError(503, "ServiceUnavailable", "the API server has no kubelet client configured")
    return client


def choose_container(pod: dict[str, Any], container: str | None) -> str:
    """The container a request means, with upstream's defaulting and messages."""
    name = pod.get("metadata", {}).get("name", "")
    spec = pod.get("spec") or {}
    containers = [c.get("name", "") for c in spec.get("containers") or []]
    inits = [c.get("name", "") for c in spec.get("initContainers") or []]
    ephemerals = [c.get("name", "") for c in spec.get("ephemeralContainers") or []]
    if not container:
        if len(containers) == 1:
            return containers[0]
        msg = f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
        if inits:
            msg += f" or one of the init containers: [{' '.join(inits)}]"
        if ephemerals:
            msg += f" or one of the ephemeral containers: [{' '.join(ephemerals)}]"
        raise errors.bad_request(msg)
    if container not in containers and container not in inits and container not in ephemerals:
        raise errors.bad_request(f"container {container} is not valid for pod {name}")
    return container


def _container_status(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    st = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in st.get(key) or []:
            if cs.get("name") == container:
                return cs
    return None


def check_started(pod: dict[str, Any], container: str) -> None:
    """Logs of a container that never ran are an error (upstream's kubelet says so; we know it here)."""
    name = pod.get("metadata", {}).get("name", "")
    cs = _container_status(pod, container)
    if cs is None:
        raise errors.bad_request(f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating')
    state, last = cs.get("state") or {}, cs.get("lastState") or {}
    if "waiting" in state and "terminated" not in last:
        reason = (state.get("waiting") or {}).get("reason") or "ContainerCreating"
        if reason == "ErrImagePull":
            reason = "image can't be pulled"
        elif reason == "ImagePullBackOff":
            reason = "trying and failing to pull image"
        raise errors.bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')


def node_address(node: dict[str, Any]) -> tuple[str, int]:
    """The kubelet's (host, port) from a Node object."""
    addrs = (node.get("status") or {}).get("addresses") or []
    host = None
    for kind in ADDRESS_PREFERENCE:
        host = next((a.get("address") for a in addrs if a.get("type") == kind and a.get("address")), None)
        if host:
            break
    if not host:
        raise errors.bad_request(f"node {node.get('metadata', {}).get('name', '')} has no address")
    ep = ((node.get("status") or {}).get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}
    return host, int(ep.get("Port") or DEFAULT_KUBELET_PORT)


def _host_for_url(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


async def resolve(api: APIServer, ns: str, name: str, container: str | None, *,
                  need_container: bool = True) -> Target:
    """The pod, its container (defaulted) and the base URL of its kubelet."""
    pods = api.registry.by_resource("", "v1", "pods")
    pod = orjson.loads(await api.rest.get(pods, ns, name))
    chosen = choose_container(pod, container) if need_container else ""
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        return Target(pod, chosen, None)
    nodes = api.registry.by_resource("", "v1", "nodes")
    try:
        node = orjson.loads(await api.rest.get(nodes, None, node_name))
    except StatusError as e:
        if e.code == 404:
            raise errors.bad_request(f'node "{node_name}" of pod "{name}" not found') from None
        raise
    host, port = node_address(node)
    return Target(pod, chosen, f"{_kubelet_client(api).scheme}://{_host_for_url(host)}:{port}")


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


async def _kubelet_error(resp: aiohttp.ClientResponse) -> StatusError:
    """The kubelet's answer as a StatusError (its metav1.Status if it sent one)."""
    body = await resp.read()
    try:
        st = orjson.loads(body)
        return StatusError(int(st.get("code") or resp.status), st.get("reason") or "InternalError",
                           st.get("message") or "")
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        text = body.decode(errors="replace").strip() or resp.reason or ""
        return StatusError(resp.status, "BadRequest" if resp.status == 400 else "InternalError", text)


# -- pods/log -----------------------------------------------------------------------

_LOG_PARAMS = ("follow", "tailLines", "sinceSeconds", "sinceTime", "timestamps", "limitBytes", "previous")


async def pod_log(api: APIServer, ns: str, name: str, query: dict[str, str]) -> Response:
    """GET pods/{name}/log: the container's log as text/plain, streamed from its kubelet."""
    target = await resolve(api, ns, name, query.get("container"))
    previous = query.get("previous", "").lower() in ("true", "1")
    if target.base_url is None:
        # Upstream answers an unscheduled pod's log with nothing at all.
        return Response(200, b"", "text/plain")
    if not previous:
        check_started(target.pod, target.container)
    client = _kubelet_client(api)
    params = {k: query[k] for k in _LOG_PARAMS if query.get(k) not in (None, "")}
    url = target.base_url + _path("containerLogs", ns, name, target.container)
    try:
        resp = await client.session.get(url, params=params, ssl=client.ssl_context or False)
    except (aiohttp.ClientError, OSError) as e:
        raise errors.internal(f"error dialing kubelet for pod {name}: {e}") from None
    if resp.status != 200:
        try:
            raise await _kubelet_error(resp)
        finally:
            resp.release()
    return Response(200, b"", "text/plain", {}, _relay_body(resp))


async def _relay_body(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    finally:
        # The user went away (or the log ended): drop the kubelet's stream too.
        resp.close()


def upgrade_required() -> StatusError:
    """exec/attach/portforward without Upgrade, as upstream answers it."""
    return errors.bad_request("Upgrade request required")


# -- exec, attach, portforward: connection upgrades ----------------------------------


def is_upgrade(request: web.Request) -> bool:
    return "upgrade" in request.headers.get("Connection", "").lower() and bool(request.headers.get("Upgrade"))


def upgrade_target(path: str) -> tuple[str, str, str] | None:
    """(namespace, pod, subresource) when ``path`` is a pod's exec, attach or portforward."""
    m = _UPGRADE_PATH.match(path)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _status_response(e: StatusError) -> web.Response:
    resp = web.Response(status=e.code, body=e.to_bytes(), content_type="application/json")
    for k, v in getattr(e, "headers", None) or ():
        resp.headers.add(k, v)  # e.g. the protocols we accept, after a failed negotiation
    return resp


def _flag(query: Any, name: str) -> bool:
    v = query.get(name)
    return v is not None and v.lower() in ("1", "true", "")


def _kubelet_query(sub: str, query: Any) -> list[tuple[str, str]]:
    """The API server's parameters in the kubelet's spelling (stdin -> input, as upstream)."""
    out: list[tuple[str, str]] = []
    if sub == "portforward":
        return [("port", p) for p in query.getall("ports", [])]
    if sub == "exec":
        out += [("command", c) for c in query.getall("command", [])]
    for ours, theirs in (("stdin", "input"), ("stdout", "output"), ("stderr", "error"), ("tty", "tty")):
        if _flag(query, ours):
            out.append((theirs, "1"))
    return out


async def handle_upgrade(api: APIServer, request: web.Request, user: str = "",
                         groups: tuple[str, ...] = ()) -> web.StreamResponse | None:
    """Serve an upgrade request for pods/exec|attach|portforward; None when it is not one.

    Call it after authentication and before reading the body.
    """
    found = upgrade_target(request.path)
    if found is None or not is_upgrade(request):
        return None
    ns, name, sub = found
    try:
        if request.method not in ("GET", "POST"):
            raise errors.method_not_allowed()
        container = request.query.get("container") if sub != "portforward" else None
        # Port forwarding is to the pod's network, not to one container.
        target = await resolve(api, ns, name, container, need_container=sub != "portforward")
        if target.base_url is None:
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if not websocket and not spdyproxy.is_spdy(request):
            raise errors.bad_request("Upgrade request required: this server speaks WebSocket and SPDY/3.1 "
                                     f"streaming protocols, not {request.headers.get('Upgrade')}")
        client = _kubelet_client(api)
        if sub == "portforward":
            url = target.base_url + _path("portForward", ns, name)
        else:
            url = target.base_url + _path(sub, ns, name, target.container)
        log.debug("%s %s/%s by %s -> %s", sub, ns, name, user, url)
        params = _kubelet_query(sub, request.query)
        if websocket:
            return await _relay_websocket(request, client, url, params)
        # SPDY (kubectl before 1.30/1.31, or a fallback): negotiated here, bridged to the kubelet's WebSocket.
        if sub == "portforward":
            protocol = spdyproxy.negotiate(request, spdyproxy.PORTFORWARD_PROTOCOLS)
            upstream = await _connect_kubelet(client, url, params, spdyproxy.KUBELET_PORTFORWARD_PROTOCOLS)
            return await spdyproxy.relay_portforward(request, upstream, protocol)
        protocol = spdyproxy.negotiate(request, spdyproxy.REMOTECOMMAND_PROTOCOLS)
        q = request.query
        return await spdyproxy.relay_remotecommand(
            request, lambda: _connect_kubelet(client, url, params, spdyproxy.KUBELET_REMOTECOMMAND_PROTOCOLS),
            protocol, stdin=_flag(q, "stdin"), stdout=_flag(q, "stdout"), stderr=_flag(q, "stderr"),
            tty=_flag(q, "tty"))
    except StatusError as e:
        return _status_response(e)


def _offered_protocols(request: web.Request) -> tuple[str, ...]:
    raw = request.headers.get("Sec-WebSocket-Protocol", "")
    return tuple(p.strip() for p in raw.split(",") if p.strip())


async def _connect_kubelet(client: KubeletClient, url: str, params: list[tuple[str, str]],
                           protocols: tuple[str, ...]) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket to the kubelet offering ``protocols``; its refusal as a StatusError."""
    try:
        return await client.session.ws_connect(
            url, params=params, protocols=protocols, ssl=client.ssl_context or False, autoping=True,
            max_msg_size=0, method="GET")
    except aiohttp.WSServerHandshakeError as e:
        msg = (e.headers or {}).get("X-Kubelet-Error") if e.headers else None
        code = e.status if 400 <= e.status < 600 else 502
        reason = {400: "BadRequest", 403: "Forbidden", 404: "NotFound"}.get(code, "InternalError")
        raise StatusError(code, reason, msg or f"error upgrading connection to the kubelet: {e.message}") from None
    except (aiohttp.ClientError, OSError) as e:
        raise errors.internal(f"error dialing backend: {e}") from None


async def _relay_websocket(request: web.Request, client: KubeletClient, url: str,
                           params: list[tuple[str, str]]) -> web.StreamResponse:
    upstream = await _connect_kubelet(client, url, params, _offered_protocols(request))
    try:
        ws = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (), autoping=True,
                                   max_msg_size=0)
        await ws.prepare(request)
        to_kubelet = asyncio.create_task(_pump(ws, upstream))
        to_client = asyncio.create_task(_pump(upstream, ws))
        done, _ = await asyncio.wait({to_kubelet, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if to_client in done:
            # The kubelet finished (normally after the exit status): pass its close code on, so the
            # client sees a normal closure, which is its EOF on every stream.
            await ws.close(code=upstream.close_code or aiohttp.WSCloseCode.OK)
        else:
            await upstream.close(code=ws.close_code or aiohttp.WSCloseCode.OK)
        for t in (to_kubelet, to_client):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await t
        return ws
    finally:
        if not upstream.closed:
            await upstream.close()


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    async for msg in src:
        if dst.closed:
            return
        if msg.type == WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await dst.send_str(msg.data)
        else:
            return
