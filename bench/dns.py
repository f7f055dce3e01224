"""Cluster DNS benchmark: queries/s for service names against ClusterDNS, next to the ceiling
of the transport measured in the same run.

    .venv/bin/python bench/dns.py [--services 1000] [--seconds 2] [--rounds 3] [--window 64]

The baseline is a minimal asyncio UDP server on the same event loop (uvloop where
installed, as `kyb server` uses) that answers every query with one precomputed
answer (only the ID patched): what any Python DNS server on this loop can reach.
ClusterDNS runs in its own process beside an in-process API server holding
`--services` Services, fed by informers as in a cluster; the load generator is one
more process (a blocking UDP socket keeping `--window` queries in flight), so on a
2-core machine the client and the server each have about one core.

Mixes: A for ClusterIP service names (as glibc asks: no EDNS), the same with EDNS
(as dig asks), search-path expansions that must be NXDOMAIN
(`svc-7.default.svc.cluster.local.default.svc.cluster.local`), and names outside the
zone answered from the forwarding cache (the upstream is a fake on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path, and this file's
# name would hide dnspython's `dns` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import dns.message  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rrset  # noqa: E402
from bench.loops import use_uvloop  # noqa: E402


# ---------------------------------------------------------------------- servers (child processes)

async def serve_echo() -> None:
    fixed = dns.message.make_response(dns.message.make_query("svc-0.default.svc.cluster.local", "A"))
    fixed.answer.append(dns.rrset.from_text("svc-0.default.svc.cluster.local.", 5, "IN", "A", "10.96.0.20"))
    answer = fixed.to_wire()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: object) -> None:
            self.transport.sendto(data[:2] + answer[2:], addr)  # type: ignore[attr-defined]

    # The socket set up as ClusterDNS sets up its own (a large receive buffer).
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Echo, sock=sock)
    print("ready", transport.get_extra_info("sockname")[1], flush=True)
    await asyncio.Event().wait()


async def serve_upstream() -> int:
    """A fake upstream for the forwarded mix: every name has one A record."""
    class Upstream(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: object) -> None:
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.1"))
            self.transport.sendto(r.to_wire(), addr)  # type: ignore[attr-defined]

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Upstream, local_addr=("127.0.0.1", 0))
    return transport.get_extra_info("sockname")[1]


async def serve_dns(services: int) -> None:
    from kybernetes.apiserver.server import APIServer
    from kybernetes.client import Client
    from kybernetes.network.dns import ClusterDNS
    from kybernetes.storage.sqlite import SqliteStore

    tmp = Path(tempfile.mkdtemp(prefix="kyb-bench-dns-"))
    api = APIServer(SqliteStore(tmp / "state.db"))
    await api.start()
    client = Client.in_process(api.handle)
    rc = client.resource("v1", "services")
    sem = asyncio.Semaphore(32)

    async def create(i: int) -> None:
        async with sem:
            await rc.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}"},
                             "spec": {"ports": [{"name": "http", "port": 80}]}}, "default")
    await asyncio.gather(*(create(i) for i in range(services)))
    up = await serve_upstream()
    server = ClusterDNS(client, listen=[("127.0.0.1", 0)], upstreams=[("127.0.0.1", up)])
    await server.start()
    print("ready", server.addresses[0][1], flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------------- the load generator

def queries(names: list[str], edns: bool) -> list[bytes]:
    out = []
    for i, name in enumerate(names):
        q = dns.message.make_query(name, "A", use_edns=0 if edns else False)
        q.id = i & 0xFFFF
        out.append(q.to_wire())
    return out


def warm(port: int, qs: list[bytes], want: int) -> None:
    """Ask every query once and check the answers (this also fills the server's caches)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(5)
    for q in qs:
        s.send(q)
        r = dns.message.from_wire(s.recv(4096))
        if r.id != dns.message.from_wire(q).id or r.rcode() != want:
            raise SystemExit(f"unexpected answer: {r}")
    s.close()


def load(port: int, qs: list[bytes], seconds: float, window: int) -> float:
    """Answers per second with `window` queries in flight for `seconds`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect(("127.0.0.1", port))
    s.settimeout(0.2)
    n, i = len(qs), 0
    send, recv = s.send, s.recv
    for _ in range(window):
        send(qs[i % n])
        i += 1
    got = stalls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        try:
            recv(4096)
        except TimeoutError:
            stalls += 1
            for _ in range(window):  # answers were lost: fill the window again
                send(qs[i % n])
                i += 1
            continue
        got += 1
        if not got & 1023 and time.perf_counter() > deadline:
            break
        send(qs[i % n])
        i += 1
    elapsed = time.perf_counter() - start
    s.close()
    if stalls:
        print(f"# {stalls} stall(s) of 0.2s: answers lost", file=sys.stderr)
    return got / elapsed


def start_server(*args: str) -> tuple[subprocess.Popen[str], int]:
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().split()
    if not line or line[0] != "ready":
        p.kill()
        raise SystemExit(f"server {args} failed to start")
    return p, int(line[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", choices=["dns", "echo"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        loop_name = use_uvloop()
        print(f"# {args.serve} server on {loop_name}", file=sys.stderr)
        asyncio.run(serve_dns(args.services) if args.serve == "dns" else serve_echo())
        return

    svc_names = [f"svc-{i}.default.svc.cluster.local" for i in range(args.services)]
    mixes = [
        ("service A, no EDNS", queries(svc_names, False), dns.rcode.NOERROR),
        ("service A, EDNS", queries(svc_names, True), dns.rcode.NOERROR),
        ("search-path NXDOMAIN", queries([n + ".default.svc.cluster.local" for n in svc_names], False),
         dns.rcode.NXDOMAIN),
        ("forwarded, cached", queries([f"host-{i}.example.org" for i in range(min(args.services, 500))], False),
         dns.rcode.NOERROR),
    ]
    echo, echo_port = start_server("--serve", "echo")
    t0 = time.perf_counter()
    server, dns_port = start_server("--serve", "dns", "--services", str(args.services))
    print(f"ClusterDNS up with {args.services} services in {time.perf_counter() - t0:.1f}s")
    try:
        base_qs = mixes[0][1]
        warm(echo_port, base_qs[:10], dns.rcode.NOERROR)
        for _label, qs, rcode in mixes:
            warm(dns_port, qs, rcode)
        # Rounds, each with its own baseline, and medians: other work on the machine
        # moves single figures by tens of percent.
        base_runs: list[float] = []
        runs: dict[str, list[float]] = {label: [] for label, _, _ in mixes}
        for _ in range(args.rounds):
            base_runs.append(load(echo_port, base_qs, args.seconds, args.window))
            for label, qs, _rcode in mixes:
                runs[label].append(load(dns_port, qs, args.seconds, args.window))
        baseline = statistics.median(base_runs)
        print(f"{'baseline (fixed answer, same loop)':38s} {baseline:10,.0f} q/s")
        for label, figures in runs.items():
            qps = statistics.median(figures)
            print(f"{label:38s} {qps:10,.0f} q/s   {qps / baseline:5.2f}x baseline"
                  f"   (rounds: {', '.join(f'{f / 1000:.0f}k' for f in figures)})")
    finally:
        for p in (echo, server):
            p.terminate()
            p.wait(5)


if __name__ == "__main__":
    main()
