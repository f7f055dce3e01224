"""Probe failures read as upstream's kubelet words them (Go's net package), not as aiohttp does."""

from __future__ import annotations

import asyncio
import socket

from kybernetes.kubelet.probes import FAILURE, SUCCESS, run_check


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _check(action: dict) -> tuple[str, str]:
    return await run_check(action, runtime=None, container_id="c", container={"ports": []},  # type: ignore[arg-type]
                           pod_ip="127.0.0.1", timeout=1.0)


async def test_refused_connections_read_as_upstreams() -> None:
    port = _closed_port()
    assert await _check({"tcpSocket": {"port": port}}) == (
        FAILURE, f"dial tcp 127.0.0.1:{port}: connect: connection refused")
    assert await _check({"httpGet": {"path": "/healthz", "port": port}}) == (
        FAILURE, f'Get "http://127.0.0.1:{port}/healthz": dial tcp 127.0.0.1:{port}: connect: connection refused')


async def test_a_silent_server_is_a_deadline_and_a_dropped_one_eof() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        w.close()

    async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.close()

    for handler, want in ((silent, "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"),
                          (hang_up, "EOF")):
        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            got = await _check({"httpGet": {"path": "/", "port": port}})
            assert got == (FAILURE, f'Get "http://127.0.0.1:{port}/": {want}'), got
        finally:
            srv.close()
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        assert (await _check({"tcpSocket": {"port": srv.sockets[0].getsockname()[1]}}))[0] == SUCCESS
    finally:
        srv.close()
