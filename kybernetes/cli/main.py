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
    api = APIServer(store, service_cidr=args.service_cidr, advertise=advertise)
    from ..apiserver.proxy import KubeletClient
    api.kubelet_client = KubeletClient.from_pki(pki)
    await api.start()
    tokens = TokenAuth()
    tokens.add(pki.token_file.read_text().strip(), "admin", ("system:masters", "system:authenticated"))
    runner = await serve(api, tokens, args.bind, args.port, server_ssl_context(pki))
    url = f"https://{host_for_url}:{args.port}" if ":" not in host_for_url else f"https://[{host_for_url}]:{args.port}"
    kubeconfig = data / "kubeconfig"
    pki.write_kubeconfig(kubeconfig, url)
    # kubectl sends built-in objects as protobuf; load the descriptors off the hot path.
    from ..api import protobuf
    warm = asyncio.get_running_loop().run_in_executor(None, protobuf.default_pool)
    disabled = {d.strip() for d in (args.disable or "").split(",") if d.strip()}
    unknown = disabled - {"controllers", "scheduler"}
    if unknown:
        raise SystemExit(f"kyb server: --disable: unknown component(s) {', '.join(sorted(unknown))}")
    manager = None
    if "controllers" not in disabled:
        manager = ControllerManager.in_process(api, node_monitor_grace_period=args.node_monitor_grace_period)
        await manager.start()
    scheduler = None
    if "scheduler" not in disabled:
        from ..client import Client
        from ..scheduler import Scheduler, SchedulerConfig
        scheduler = Scheduler(Client.in_process(api.handle), SchedulerConfig())
        await scheduler.start()
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
    if scheduler is not None:
        await scheduler.stop()
    if manager is not None:
        await manager.stop()
    await api.stop()
    await runner.cleanup()
    await store.close()
    log.info("stopped")
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
    sub.add_parser("version", help="print the version")
    args = p.parse_args(argv)
    level = getattr(args, "log_level_sub", None) or args.log_level
    _setup_logging(level)
    if args.cmd == "version":
        print(f"kyb {__version__} (Kubernetes API v1.32)")
        return 0
    if args.cmd == "hollow-nodes":
        return asyncio.run(run_hollow_nodes(args))
    if args.cmd == "server":
        _tune_malloc()
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
