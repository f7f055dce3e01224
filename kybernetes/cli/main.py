"""The `kyb` command: server, version.

`kyb server` runs the control plane of a single-node cluster: the store, the
API server over HTTPS and the built-in controllers, writing a kubeconfig that
the real kubectl uses as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .. import __version__


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "kybernetes"


def _tune_malloc() -> None:
    """Keep large buffers (list responses, watch batches) out of the heap.

    glibc raises its mmap threshold after large frees, so multi-megabyte list
    bodies end up in the heap and their memory is never given back; a fixed
    threshold keeps them mmapped and returned as soon as they are freed.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 256 * 1024)
        libc.mallopt(m_trim_threshold, 1024 * 1024)
    except (OSError, AttributeError):
        pass


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


async def run_server(args: argparse.Namespace) -> int:
    from ..apiserver.http import TokenAuth, serve, server_ssl_context
    from ..apiserver.pki import PKI
    from ..apiserver.server import APIServer
    from ..controllers.manager import ControllerManager
    from ..storage import open_store

    log = logging.getLogger("kybernetes.server")
    t0 = time.perf_counter()
    data = Path(args.data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = PKI(data / "pki")
    hosts = sorted({"127.0.0.1", "localhost", "::1", args.bind, *(args.tls_san or [])} - {"0.0.0.0", "::"})
    pki.ensure(hosts)
    # The API server's watch cache is the store's only watcher and never lags far,
    # so a small in-memory event window is enough; older history stays on disk.
    store = open_store(args.store or str(data / "state.db"), ring_size=1000)
    host_for_url = "127.0.0.1" if args.bind in ("0.0.0.0", "::") else args.bind
    advertise = f"{host_for_url}:{args.port}"
    api = APIServer(store, service_cidr=args.service_cidr, advertise=advertise,
                    service_account_key=pki.sa_key.read_bytes(), service_account_admission=True)
    from ..apiserver.proxy import KubeletClient
    api.kubelet_client = KubeletClient.from_pki(pki)
    await api.start()
    tokens = TokenAuth()
    tokens.add(pki.token_file.read_text().strip(), "admin", ("system:masters", "system:authenticated"))
    # Agents join with this token (kyb agent --token); nodes act with node rights.
    tokens.add(pki.join_token_file.read_text().strip(), "system:node:agent", ("system:nodes", "system:authenticated"))
    runner = await serve(api, tokens, args.bind, args.port, server_ssl_context(pki))
    url = f"https://{host_for_url}:{args.port}" if ":" not in host_for_url else f"https://[{host_for_url}]:{args.port}"
    kubeconfig = data / "kubeconfig"
    pki.write_kubeconfig(kubeconfig, url)
    # kubectl sends built-in objects as protobuf; load the descriptors off the hot path.
    from ..api import protobuf
    warm = asyncio.get_running_loop().run_in_executor(None, protobuf.default_pool)
    disabled = {d.strip() for d in (args.disable or "").split(",") if d.strip()}
    unknown = disabled - {"controllers", "scheduler", "kubelet"}
    if unknown:
        raise SystemExit(f"kyb server: --disable: unknown component(s) {', '.join(sorted(unknown))}")
    manager = None
    if "controllers" not in disabled:
        manager = ControllerManager.in_process(api, node_monitor_grace_period=args.node_monitor_grace_period,
                                               root_ca=pki.ca_cert.read_text(),
                                               storage_dir=str(data / "storage"))
        await manager.start()
    scheduler = None
    if "scheduler" not in disabled:
        from ..client import Client
        from ..scheduler import Scheduler, SchedulerConfig
        scheduler = Scheduler(Client.in_process(api.handle), SchedulerConfig())
        await scheduler.start()
    node = None
    if "kubelet" not in disabled:
        # The embedded node, as k3s runs one: a kubelet on the process runtime.
        from ..client import Client
        node = await start_node(Client.in_process(api.handle), pki, data, args)
    log.info("kyb server %s ready at %s in %.2fs; data dir %s", __version__, url, time.perf_counter() - t0, data)
    log.info("export KUBECONFIG=%s", kubeconfig)
    log.info("join token in %s", pki.join_token_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await warm
    if node is not None:
        await node.stop()
    if scheduler is not None:
        await scheduler.stop()
    if manager is not None:
        await manager.stop()
    await api.stop()
    await runner.cleanup()
    await store.close()
    log.info("stopped")
    return 0


class Node:
    """A kubelet, its runtime and its streaming server, started and stopped together."""

    def __init__(self, kubelet, runtime, server, client):
        self.kubelet, self.runtime, self.server, self.client = kubelet, runtime, server, client

    async def stop(self) -> None:
        await self.kubelet.stop()
        await self.server.stop()
        await self.runtime.close()
        await self.client.close()


async def start_node(client, pki, data: Path, args: argparse.Namespace) -> Node:
    import socket

    from ..kubelet import Kubelet, KubeletConfig
    from ..kubelet.server import KubeletServer, ensure_serving_cert, serving_ssl_context
    from ..runtime.process import ProcessRuntime

    name = args.node_name or socket.gethostname().lower()
    node_ip = args.node_ip
    crt, key = data / "pki" / "kubelet.crt", data / "pki" / "kubelet.key"
    ensure_serving_cert(pki, crt, key, sorted({node_ip, name, "127.0.0.1", "localhost"}))
    # The server learns the kubelet after it knows its port, which the Node object publishes.
    server = KubeletServer(None, node_ip, args.kubelet_port, serving_ssl_context(pki.ca_cert, crt, key))
    await server.start()
    runtime = ProcessRuntime(str(data / "runtime"))
    kubelet = Kubelet(client, runtime, KubeletConfig(
        node_name=name, root_dir=str(data / "kubelet"), host_ip=node_ip, port=server.port,
        static_pod_path=str(data / "manifests")))
    server.kubelet = kubelet
    await kubelet.start()
    return Node(kubelet, runtime, server, client)


async def run_agent(args: argparse.Namespace) -> int:
    from ..apiserver.pki import PKI
    from ..client import Client
    from ..client.transport import HTTPTransport

    log = logging.getLogger("kybernetes.agent")
    data = Path(args.data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    client = Client(HTTPTransport(args.server, token=args.token, ca_file=args.ca_file or None,
                                  insecure=not args.ca_file))
    try:
        await client.request("GET", "/api/v1/namespaces/default")
    except Exception as e:  # noqa: BLE001 - any failure here means we cannot join
        await client.close()
        raise SystemExit(f"kyb agent: cannot join {args.server}: {e}") from None
    # The kubelet's serving certificate comes from the cluster CA; an agent on the
    # server's machine reads it from the server's data dir (--server-data-dir).
    pki = PKI(Path(args.server_data_dir).expanduser().resolve() / "pki")
    if not pki.ca_key.exists():
        await client.close()
        raise SystemExit("kyb agent: --server-data-dir must point at the server's data dir (its CA signs the "
                         "kubelet's serving certificate)")
    (data / "pki").mkdir(exist_ok=True, mode=0o700)
    node = await start_node(client, pki, data, args)
    log.info("agent: node %s joined %s", node.kubelet.node_name, args.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
    return 0


async def run_killall(args: argparse.Namespace) -> int:
    """Stop and remove every pod the node of a data dir runs (kubelets leave them running on exit)."""
    from ..runtime.process import ProcessRuntime

    data = Path(args.data_dir).expanduser().resolve()
    runtime = ProcessRuntime(str(data / "runtime"))
    for sb in await runtime.list_pod_sandboxes():
        await runtime.stop_pod_sandbox(sb.id)
        await runtime.remove_pod_sandbox(sb.id)
    runtime.kill_strays()
    await runtime.close()
    return 0


async def run_hollow_nodes(args: argparse.Namespace) -> int:
    from ..client import Client
    from ..runtime.hollow import HollowNodes

    log = logging.getLogger("kybernetes.hollow")
    client = Client.from_kubeconfig(args.kubeconfig)
    labels = dict(kv.split("=", 1) for kv in args.label or [])
    hollow = HollowNodes(client, args.count, prefix=args.prefix, cpu=args.cpu, memory=args.memory,
                         pods=args.max_pods, labels=labels, renew_interval=args.renew_interval)
    await hollow.start()
    log.info("%d hollow nodes registered (%s0 .. %s%d)", args.count, args.prefix, args.prefix, args.count - 1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await hollow.stop()
    await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kyb", description="kybernetes: a Kubernetes-compatible orchestrator")
    p.add_argument("--log-level", default=os.environ.get("KYB_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server", help="run the control plane (API server, store, controllers)")
    s.add_argument("--data-dir", default=str(default_data_dir()))
    s.add_argument("--bind", default="127.0.0.1")
    s.add_argument("--port", type=int, default=6443)
    s.add_argument("--store", default="", help="store URL (default: sqlite file in the data dir)")
    s.add_argument("--service-cidr", default="10.96.0.0/12")
    s.add_argument("--disable", default="",
                   help="comma-separated components not to run in this process: controllers, scheduler")
    s.add_argument("--node-monitor-grace-period", type=float, default=40.0,
                   help="seconds without a lease renewal before a node is Unknown and tainted")
    s.add_argument("--node-name", default="", help="name of the embedded node (default: the host name)")
    s.add_argument("--node-ip", default="127.0.0.1", help="address the embedded node's kubelet listens on")
    s.add_argument("--kubelet-port", type=int, default=10250, help="0 picks a free port")
    s.add_argument("--tls-san", action="append", help="extra host name or IP for the serving certificate")
    s.add_argument("--log-level", dest="log_level_sub", default=None,
                   choices=["debug", "info", "warning", "error"])
    h = sub.add_parser("hollow-nodes", help="register simulated nodes that run pods without running anything")
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or str(default_data_dir() / "kubeconfig"))
    h.add_argument("--prefix", default="hollow-node-")
    h.add_argument("--cpu", default="4")
    h.add_argument("--memory", default="16Gi")
    h.add_argument("--max-pods", type=int, default=110)
    h.add_argument("--label", action="append", help="KEY=VALUE label on every hollow node")
    h.add_argument("--renew-interval", type=float, default=10.0, help="seconds between lease renewals")
    ag = sub.add_parser("agent", help="run a node (kubelet) that joins a server")
    ag.add_argument("--server", required=True, help="https://HOST:PORT of the API server")
    ag.add_argument("--token", required=True, help="the join token (<server data dir>/pki/join.token)")
    ag.add_argument("--name", dest="node_name", default="")
    ag.add_argument("--ca-file", default="", help="the cluster CA (default: <server data dir>/pki/ca.crt)")
    ag.add_argument("--server-data-dir", default=str(default_data_dir()))
    ag.add_argument("--data-dir", default=str(default_data_dir() / "agent"))
    ag.add_argument("--node-ip", default="127.0.0.1")
    ag.add_argument("--kubelet-port", type=int, default=10250)
    k = sub.add_parser("killall", help="stop every pod a data dir's node runs")
    k.add_argument("--data-dir", default=str(default_data_dir()))
    sub.add_parser("version", help="print the version")
    args = p.parse_args(argv)
    level = getattr(args, "log_level_sub", None) or args.log_level
    _setup_logging(level)
    if args.cmd == "version":
        print(f"kyb {__version__} (Kubernetes API v1.32)")
        return 0
    if args.cmd == "agent":
        if not args.ca_file:
            args.ca_file = str(Path(args.server_data_dir).expanduser() / "pki" / "ca.crt")
        return asyncio.run(run_agent(args))
    if args.cmd == "killall":
        return asyncio.run(run_killall(args))
    if args.cmd == "hollow-nodes":
        return asyncio.run(run_hollow_nodes(args))
    if args.cmd == "server":
        _tune_malloc()
        if not os.environ.get("KYB_NO_UVLOOP"):
            try:
                import uvloop  # measurably faster event loop where installed
                uvloop.install()
            except ImportError:
                pass
        try:
            return asyncio.run(run_server(args))
        except KeyboardInterrupt:
            return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
