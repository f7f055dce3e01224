"""Probes and lifecycle hooks: one check of a container, and the loop that repeats it.

``run_check`` performs one exec / httpGet / tcpSocket / grpc action (probes and
the postStart/preStop hooks share them, plus ``sleep`` for hooks); a grpc probe
is the standard health check RPC (grpc.health.v1.Health/Check) over cleartext
HTTP/2, healthy only when the answer is SERVING. ``ProbeWorker``
is upstream's prober worker: after initialDelaySeconds it runs the probe every
periodSeconds with timeoutSeconds, and flips its result only after
successThreshold successes or failureThreshold failures in a row. A liveness or
startup worker that reaches failure asks the pod worker to restart the container;
a readiness worker's result is the container's ``ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from kybernetes.runtime.base import Runtime, RuntimeServiceError

log = logging.getLogger(__name__)

Obj = dict[str, Any]

SUCCESS, FAILURE, UNKNOWN = "success", "failure", "unknown"


def _port(value: Any, container: Obj) -> int:
    """A probe port: a number, or the name of one of the container's ports."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"port {value!r} not found in the container's ports")


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait for it to end, cancelling again if a cancellation was lost.

    Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives just as its inner
    awaitable finishes (gh-86296): the task then runs on, and a plain ``await task``
    after one ``cancel()`` would wait for ever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


async def run_check(action: Obj, *, runtime: Runtime, container_id: str, container: Obj, pod_ip: str,
                    timeout: float) -> tuple[str, str]:
    """One probe/hook action; (SUCCESS|FAILURE|UNKNOWN, message for events)."""
    try:
        if "exec" in action:
            cmd = list((action["exec"] or {}).get("command") or [])
            res = await runtime.exec_sync(container_id, cmd, timeout=timeout)
            if res.timed_out:
                return FAILURE, f"command timed out after {timeout:g}s"
            if res.exit_code != 0:
                out = (res.stdout + res.stderr).decode(errors="replace").strip()
                return FAILURE, out or f"command {cmd!r} exited with {res.exit_code}"
            return SUCCESS, ""
        if "httpGet" in action:
            return await _http_get(action["httpGet"], container, pod_ip, timeout)
        if "tcpSocket" in action:
            src = action["tcpSocket"]
            host = src.get("host") or pod_ip
            port = _port(src.get("port"), container)
            try:
                _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            except (OSError, TimeoutError) as e:
                return FAILURE, dial_error(host, port, e)
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
            return SUCCESS, ""
        if "sleep" in action:
            await asyncio.sleep(float((action["sleep"] or {}).get("seconds", 0)))
            return SUCCESS, ""
        if "grpc" in action:
            return await _grpc_check(action["grpc"] or {}, pod_ip, timeout)
    except RuntimeServiceError as e:
        return FAILURE, str(e)
    except ValueError as e:
        return FAILURE, str(e)
    return UNKNOWN, "probe has no action"


_INSECURE = ssl.create_default_context()
_INSECURE.check_hostname = False
_INSECURE.verify_mode = ssl.CERT_NONE


async def _http_get(src: Obj, container: Obj, pod_ip: str, timeout: float) -> tuple[str, str]:
    host = src.get("host") or pod_ip
    port = _port(src.get("port"), container)
    scheme = (src.get("scheme") or "HTTP").lower()
    path = src.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"{scheme}://{hostport}{path}"
    headers = {"User-Agent": "kube-probe/1.32", "Accept": "*/*"}
    for h in src.get("httpHeaders") or []:
        headers[h.get("name", "")] = h.get("value", "")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.get(url, headers=headers, ssl=_INSECURE if scheme == "https" else None,
                      allow_redirects=True) as r:
            body = (await r.content.read(10 * 1024)).decode(errors="replace")
            if 200 <= r.status < 400:
                return SUCCESS, ""
            return FAILURE, f"HTTP probe failed with statuscode: {r.status}" + (f" body: {body}" if body else "")
    except TimeoutError:
        return FAILURE, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    except aiohttp.ClientConnectorError as e:
        return FAILURE, f'Get "{url}": {dial_error(host, port, e.os_error)}'
    except aiohttp.ServerDisconnectedError:
        return FAILURE, f'Get "{url}": EOF'
    except (aiohttp.ClientError, OSError) as e:
        return FAILURE, f'Get "{url}": {e}'


def dial_error(host: str, port: int, e: BaseException) -> str:
    """A failed connect in the words of Go's net package, as upstream's probe messages read
    ("dial tcp 10.42.0.5:8080: connect: connection refused")."""
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(e, TimeoutError) or getattr(e, "errno", None) == errno.ETIMEDOUT:
        return f"dial tcp {addr}: i/o timeout"
    code = getattr(e, "errno", None)
    if isinstance(code, int) and code > 0:
        return f"dial tcp {addr}: connect: {os.strerror(code).lower()}"
    return f"dial tcp {addr}: {e}"


HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _health_request(service: str) -> bytes:
    """HealthCheckRequest{service}: field 1, length-delimited (nothing at all for the empty string)."""
    data = service.encode()
    if not data:
        return b""
    n, length = len(data), bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        length.append(b | (0x80 if n else 0))
        if not n:
            break
    return b"\x0a" + bytes(length) + data


def _serving_status(msg: bytes) -> int:
    """HealthCheckResponse.status (field 1, varint); 0 (UNKNOWN) when absent or unreadable."""
    from kybernetes.api.protobuf import iter_fields
    status = 0
    try:
        for num, wire, value in iter_fields(msg):
            if num == 1 and wire == 0 and isinstance(value, int):
                status = value
    except Exception:  # noqa: BLE001 - a garbled answer is simply not SERVING
        return 0
    return status


async def _grpc_check(src: Obj, pod_ip: str, timeout: float) -> tuple[str, str]:
    import grpc  # loaded on the first grpc probe only: most nodes never run one

    port = src.get("port")
    if not isinstance(port, int) or isinstance(port, bool):
        return FAILURE, f"grpc probe: port must be a number, not {port!r}"
    service = src.get("service") or ""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    target = f"{host}:{port}"
    options = [("grpc.primary_user_agent", "kube-probe/1.32"), ("grpc.enable_retries", 0)]
    try:
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            check = channel.unary_unary(HEALTH_CHECK)
            try:
                answer = await check(_health_request(service), timeout=timeout)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return FAILURE, (f"error: this server does not implement the grpc health protocol "
                                     f"(grpc.health.v1.Health): {e.details()}")
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return FAILURE, f"timeout: health rpc did not complete within {timeout:g}s"
                return FAILURE, f"error: health rpc probe of {target} failed: {code.name}: {e.details()}"
    except (OSError, TimeoutError) as e:
        return FAILURE, f"error: health rpc probe of {target} failed: {e}"
    status = _serving_status(answer or b"")
    if status != 1:
        return FAILURE, f"service unhealthy (responded with {_SERVING_STATUS.get(status, str(status))!r})"
    return SUCCESS, ""


class ProbeWorker:
    """Runs one probe of one container until stopped; ``result`` is the thresholded outcome."""

    def __init__(self, kind: str, probe: Obj, *, runtime: Runtime, container_id: str, container: Obj,
                 pod_ip: str, on_change: Callable[[ProbeWorker], None],
                 on_failure: Callable[[ProbeWorker, str], None], time_scale: float = 1.0) -> None:
        self.kind = kind  # "liveness" | "readiness" | "startup"
        self.probe = probe
        self.runtime = runtime
        self.container_id = container_id
        self.container = container
        self.pod_ip = pod_ip
        self.on_change = on_change
        self.on_failure = on_failure
        self.time_scale = time_scale
        # Readiness starts failed (not ready until proven), the others start successful.
        self.result = {"readiness": FAILURE, "startup": UNKNOWN}.get(kind, SUCCESS)
        self._successes = 0
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        # Startup gates the other probes: they wait until this event is set.
        self.gate: asyncio.Event | None = None
        self.done = False  # a startup probe that succeeded stops probing

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def _seconds(self, field: str, default: float, minimum: float = 0) -> float:
        v = self.probe.get(field)
        return max(float(v if v is not None else default), minimum) * self.time_scale

    async def _run(self) -> None:
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self._seconds("initialDelaySeconds", 0))
            period = self._seconds("periodSeconds", 10, 1)
            timeout = self._seconds("timeoutSeconds", 1, 1)
            success_threshold = int(self.probe.get("successThreshold") or 1)
            failure_threshold = int(self.probe.get("failureThreshold") or 3)
            while True:
                result, message = await run_check(self.probe, runtime=self.runtime,
                                                  container_id=self.container_id, container=self.container,
                                                  pod_ip=self.pod_ip, timeout=timeout)
                if result == SUCCESS:
                    self._failures = 0
                    self._successes += 1
                    if self._successes >= success_threshold and self.result != SUCCESS:
                        self.result = SUCCESS
                        # A startup probe is done once it succeeds: the container has started.
                        self.done = self.kind == "startup"
                        self.on_change(self)
                        if self.done:
                            return
                elif result == FAILURE:
                    self._successes = 0
                    self._failures += 1
                    self.on_failure(self, message)
                    if self._failures >= failure_threshold and self.result != FAILURE:
                        self.result = FAILURE
                        self.on_change(self)
                        if self.kind in ("liveness", "startup"):
                            return  # the container gets restarted; a new worker probes the new one
                await asyncio.sleep(period)
        except asyncio.CancelledError:
            raise
        except Exception:  # a probe bug must not take the pod worker down
            log.exception("%s probe of container %s", self.kind, self.container_id[:12])
