"""The `kyb` command: server, agent, image, killall, hollow-nodes, version.

`kyb server` runs the control plane of a single-node cluster: the store, the
API server over HTTPS and the built-in controllers, writing a kubeconfig that
the real kubectl uses as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
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


# Young-generation collections every 50,000 net allocations instead of 700; see _tune_gc.
GC_THRESHOLDS = (50_000, 20, 10)


def _tune_gc() -> None:
    """Collect cycles less often than CPython's defaults, which are sized for small programs.

    A server holds hundreds of thousands of long-lived objects (the registry,
    the bootstrap policy, informer caches of decoded objects) and allocates
    thousands of short-lived ones per request. At the default threshold a young
    collection runs several times within one request, promoting its temporaries,
    which then pile up as long-lived garbage until a full collection walks the
    whole heap (92 ms with 10,000 pods; 0.5 s with the whole control plane).
    Measured in-process with 10,000 pods: a get 22 us instead of 26.5, a Table
    list of every pod 0.3 s instead of 0.43; see BENCHMARKS.md.
    """
    import gc
    gc.set_threshold(*GC_THRESHOLDS)


def _freeze_startup_objects() -> None:
    """Move what start-up made (modules, kinds, policy, the first lists) out of the collector's sight.

    They live as long as the process; full collections need not walk them again.
    """
    import gc
    gc.collect()
    gc.freeze()


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


async def run_server(args: argparse.Namespace) -> int:
    from ..apiserver.admissionconfig import (
        POD_SECURITY,
        AdmissionConfigError,
        pod_security_options,
        read_admission_configuration,
    )
    from ..apiserver.http import TokenAuth, serve, server_ssl_context
    from ..apiserver.pki import PKI
    from ..apiserver.server import APIServer
    from ..controllers.manager import ControllerManager
    from ..storage import open_store

    log = logging.getLogger("kybernetes.server")
    t0 = time.perf_counter()
    # The admission plugins' configuration first: a bad file stops the server before it makes anything.
    pod_security = None
    if args.admission_control_config_file:
        try:
            plugins = read_admission_configuration(args.admission_control_config_file)
            pod_security = pod_security_options(plugins.get(POD_SECURITY))
        except AdmissionConfigError as e:
            raise SystemExit(f"kyb server: --admission-control-config-file: {e}") from None
    data = Path(args.data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = PKI(data / "pki")
    hosts = sorted({"127.0.0.1", "localhost", "::1", args.bind, *(args.tls_san or [])} - {"0.0.0.0", "::"})
    pki.ensure(hosts)
    # The API server's watch cache is the store's only watcher and never lags far,
    # so a small in-memory event window is enough; older history stays on disk.
    store = open_store(args.store or str(data / "state.db"), ring_size=1000)
    # Secrets encrypted at rest: with the given EncryptionConfiguration, or one whose key is made
    # on the first start (kept beside the store, readable by root only).
    from ..storage.encryption import EncryptedStore, EncryptionConfigError, generate_config, load_config
    enc_path = Path(args.encryption_provider_config) if args.encryption_provider_config else \
        data / "encryption-config.yaml"
    if not args.encryption_provider_config and not enc_path.exists():
        generate_config(enc_path)
    try:
        store = EncryptedStore(store, load_config(enc_path))
    except (EncryptionConfigError, OSError) as e:
        raise SystemExit(f"kyb server: --encryption-provider-config: {e}") from None
    from ..apiserver import audit
    try:
        auditor = audit.options_from_args(args).build()
    except (ValueError, OSError) as e:
        raise SystemExit(f"kyb server: audit: {e}") from None
    host_for_url = "127.0.0.1" if args.bind in ("0.0.0.0", "::") else args.bind
    advertise = f"{host_for_url}:{args.port}"
    api = APIServer(store, service_cidr=args.service_cidr, advertise=advertise,
                    service_account_key=pki.sa_key.read_bytes(), service_account_admission=True,
                    authorization_mode=args.authorization_mode, audit=auditor, pod_security=pod_security)
    from ..apiserver.proxy import KubeletClient
    api.kubelet_client = KubeletClient.from_pki(pki)
    await api.start()
    tokens = TokenAuth()
    tokens.add(pki.token_file.read_text().strip(), "admin", ("system:masters", "system:authenticated"))
    try:
        runner = await serve(api, tokens, args.bind, args.port, server_ssl_context(pki))
    except OSError as e:
        await api.stop()
        raise SystemExit(port_in_use("server", "--port", args.bind, args.port, e)) from None
    url = f"https://{host_for_url}:{args.port}" if ":" not in host_for_url else f"https://[{host_for_url}]:{args.port}"
    kubeconfig = data / "kubeconfig"
    pki.write_kubeconfig(kubeconfig, url)
    # Agents join with a bootstrap token and the CA's hash (kyb agent --token $(cat pki/join.token)).
    from ..client import Client
    await publish_join_info(Client.in_process(api.handle), pki, url)
    # kubectl sends built-in objects as protobuf; load the descriptors off the hot path.
    from ..api import protobuf
    warm = asyncio.get_running_loop().run_in_executor(None, protobuf.default_pool)
    from ..network.dns import kube_dns_ip
    cluster = {"clusterCIDR": args.cluster_cidr, "serviceCIDR": api.service_cidr,
               "clusterDNS": kube_dns_ip(str(api.service_cidrs[0])), "clusterDomain": "cluster.local"}
    await publish_cluster_config(Client.in_process(api.handle), cluster)
    disabled = disabled_components(args, KNOWN_DISABLE["server"])
    manager = None
    if "controllers" not in disabled:
        manager = ControllerManager.in_process(api, node_monitor_grace_period=args.node_monitor_grace_period,
                                               root_ca=pki.ca_cert.read_text(),
                                               storage_dir=str(data / "storage"),
                                               cluster_signing_key=pki.ca_key.read_text(),
                                               service_account_key=pki.sa_key.read_text(),
                                               cluster_cidrs=args.cluster_cidr,
                                               servicelb="servicelb" not in disabled,
                                               lb_pools=args.lb_pool or None)
        await manager.start()
    scheduler = None
    if "scheduler" not in disabled:
        from ..client import Client
        from ..scheduler import Scheduler, SchedulerConfig
        # Each component as its own identity, with its bootstrap role's rights (least privilege).
        scheduler = Scheduler(Client.in_process(api.handle, user="system:kube-scheduler",
                                                groups=("system:authenticated",)), SchedulerConfig())
        await scheduler.start()
    node = None
    if "kubelet" not in disabled:
        # The embedded node, as k3s runs one: a kubelet on the node's container runtime.
        from ..client import Client
        # As a joined node: system:node:<name>, held to its own pods by the Node authorizer.
        node_client = Client.in_process(api.handle, user="system:node:" + node_name(args),
                                        groups=("system:nodes", "system:authenticated"))
        node = await start_node(node_client, data, args, embedded_serving_context(pki, data, args), cluster)
        await start_cluster_dns(node, cluster, log, Client.in_process(api.handle, user=KUBE_DNS_USER,
                                                                      groups=KUBE_DNS_GROUPS),
                                Client.in_process(api.handle))
    _freeze_startup_objects()
    log.info("kyb server %s ready at %s in %.2fs; data dir %s", __version__, url, time.perf_counter() - t0, data)
    log.info("export KUBECONFIG=%s", kubeconfig)
    log.info("join a node: kyb agent --server %s --token $(cat %s)", url, pki.join_token_file)
    log.info("  (K10<CA hash>::<id>.<secret>; or --token <id>.<secret> --ca-cert-hash %s)", pki.ca_cert_hash())
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
    if auditor is not None:
        await auditor.stop()
    await store.close()
    log.info("stopped")
    return 0


async def publish_join_info(client, pki, url: str) -> str:
    """The join token's Secret, the kube-public cluster-info ConfigMap, and pki/join.token; the join string.

    The token is made on first start, without expiry (as k3s's). Deleting its
    Secret revokes it: the next start makes a new one and rewrites join.token.
    """
    from ..api.errors import StatusError
    from ..apiserver.pki import cluster_info_kubeconfig, join_string, new_bootstrap_token, parse_join

    log = logging.getLogger("kybernetes.server")
    secrets = client.resource("v1", "secrets")
    token = None
    if pki.join_token_file.exists():
        try:
            _, tid, secret = parse_join(pki.join_token_file.read_text())
            token = f"{tid}.{secret}"
        except ValueError:
            log.warning("%s holds no join token: making a new one", pki.join_token_file)
    if token is not None:
        tid = token.split(".")[0]
        try:
            await secrets.get(f"bootstrap-token-{tid}", "kube-system")
        except StatusError as e:
            if e.code != 404:
                raise
            if pki.join_token_file.read_text().strip().startswith("K10"):
                log.warning("join token %s was deleted from the cluster: making a new one", tid)
                token = None
            else:
                # A bare token from an older kyb, never stored as a Secret: store it now.
                await _create_bootstrap_secret(secrets, token)
    if token is None:
        token = new_bootstrap_token()
        await _create_bootstrap_secret(secrets, token)
    join = join_string(pki.ca_cert_hash(), token)
    if not pki.join_token_file.exists() or pki.join_token_file.read_text().strip() != join:
        from ..apiserver.pki import _write
        _write(pki.join_token_file, join.encode())
    configmaps = client.resource("v1", "configmaps")
    content = cluster_info_kubeconfig(url, pki.ca_cert.read_bytes())
    try:
        cm = await configmaps.get("cluster-info", "kube-public")
        if (cm.get("data") or {}).get("kubeconfig") != content:
            await configmaps.update({**cm, "data": {**(cm.get("data") or {}), "kubeconfig": content}}, "kube-public")
    except StatusError as e:
        if e.code != 404:
            raise
        await configmaps.create({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "cluster-info", "namespace": "kube-public"},
                                 "data": {"kubeconfig": content}}, "kube-public")
    return join


async def _create_bootstrap_secret(secrets, token: str) -> None:
    tid, secret = token.split(".")
    await secrets.create({
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{tid}", "namespace": "kube-system"},
        "stringData": {"description": "The join token of kyb server (kyb agent --token).",
                       "token-id": tid, "token-secret": secret,
                       "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
                       "auth-extra-groups": "system:bootstrappers:kyb:default-node-token"}}, "kube-system")


class Node:
    """A kubelet, its runtime and its streaming server, started and stopped together."""

    def __init__(self, kubelet, runtime, server, client, certs=None, images=None, proxy=None, netpol=None,
                 ingress=None):
        self.kubelet, self.runtime, self.server, self.client = kubelet, runtime, server, client
        self.certs = certs
        self.images = images
        self.proxy = proxy
        self.netpol = netpol
        self.ingress = ingress
        self.dns = None

    async def stop(self) -> None:
        if self.ingress is not None:
            await self.ingress.stop()
        if self.dns is not None:
            await self.dns.stop()
        if self.netpol is not None:
            await self.netpol.stop()  # its rules stay in force, as the proxy's do
        if self.proxy is not None:
            await self.proxy.stop()  # its rules stay: traffic keeps flowing while the node restarts
        if self.certs is not None:
            await self.certs.stop()
        await self.kubelet.stop()
        await self.server.stop()
        await self.runtime.close()
        if self.images is not None:
            await self.images.close()
        await self.client.close()


def node_name(args: argparse.Namespace) -> str:
    import socket
    return args.node_name or socket.gethostname().lower()


def embedded_serving_context(pki, data: Path, args: argparse.Namespace):
    """The embedded node's serving certificate, issued directly with the CA beside it."""
    from ..kubelet.server import ensure_serving_cert, serving_ssl_context

    crt, key = data / "pki" / "kubelet.crt", data / "pki" / "kubelet.key"
    ensure_serving_cert(pki, crt, key, sorted({*node_ips(args), node_name(args), "127.0.0.1", "localhost"}))
    return serving_ssl_context(pki.ca_cert, crt, key)


RUNTIMES = ("oci", "process", "fake")
# What --disable may name, per command.
KNOWN_DISABLE = {"server": {"controllers", "scheduler", "kubelet", "servicelb", "ingress"}, "agent": {"ingress"}}


def choose_runtime(wanted: str) -> tuple[str, str]:
    """(runtime name, why): ``auto`` is oci where runc can run containers, else process."""
    if wanted != "auto":
        return wanted, "as asked"
    from ..runtime.oci import OciRuntime

    ok, why = OciRuntime.available()
    if ok:
        return "oci", "runc is available"
    return "process", f"the oci runtime is unavailable here: {why}"


def open_images(data: Path, args: argparse.Namespace):
    """The node's image service on its data dir, with its registries.yaml."""
    from ..images.registries import load_registries
    from ..images.service import ImageService

    registries = getattr(args, "private_registry", "") or str(data / "registries.yaml")
    config = load_registries(registries,
                             disable_default_endpoint=getattr(args, "disable_default_registry_endpoint", False))
    return ImageService(str(data / "images"), registries_config=config)


def make_runtime(kind: str, data: Path, images=None):
    if kind == "oci":
        from ..runtime.oci import OciRuntime
        runtime = OciRuntime(str(data / "oci"), images)
        # Holders and containers half-made when an earlier node process died mid-creation.
        runtime.kill_strays()
        return runtime
    if kind == "fake":
        from ..runtime.fake import FakeRuntime
        return FakeRuntime()
    from ..runtime.process import ProcessRuntime
    return ProcessRuntime(str(data / "runtime"))


def choose_pod_network(wanted: str, runtime: str) -> tuple[bool, str]:
    """(whether pods get their own network, why): ``auto`` is yes as root with ip and nft."""
    import shutil

    if wanted == "none":
        return False, "as asked"
    if runtime == "fake":
        return False, "the fake runtime runs nothing"
    if wanted == "bridge":
        return True, "as asked"
    if os.geteuid() != 0:
        return False, "not root"
    missing = [t for t in ("ip", "nft") if shutil.which(t) is None]
    if missing:
        return False, f"{' and '.join(missing)} not found (iproute2, nftables)"
    return True, "root, with iproute2 and nftables"


CLUSTER_CONFIG = ("kube-public", "kybernetes-config")


async def publish_cluster_config(client, config: dict[str, str]) -> None:
    """What joining nodes need to know of the cluster (pod and service CIDRs, DNS), readable by all."""
    from ..api.errors import StatusError

    ns, name = CLUSTER_CONFIG
    cms = client.resource("v1", "configmaps")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": config}
    try:
        await cms.create(body, ns)
    except StatusError as e:
        if e.code != 409:
            raise
        await cms.patch(name, {"data": config}, namespace=ns)


async def read_cluster_config(client) -> dict[str, str]:
    from ..api.errors import StatusError

    ns, name = CLUSTER_CONFIG
    try:
        return dict((await client.resource("v1", "configmaps").get(name, ns)).get("data") or {})
    except StatusError as e:
        if e.code == 404:
            return {}
        raise


KUBE_DNS_USER = "system:serviceaccount:kube-system:kube-dns"
KUBE_DNS_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated")


async def start_cluster_dns(node: Node | None, cluster: dict[str, str], log: logging.Logger, client,
                            admin) -> None:
    """The cluster DNS, on the embedded node's pod-network gateways, behind the kube-dns Service.

    client: the DNS server's own (kube-system/kube-dns); admin: what installs its Service, as an
    installer would."""
    net = node.kubelet.network if node is not None else None
    if node is None or net is None or net.network is None:
        if net is not None:
            log.warning("cluster DNS not started: %s", net.not_ready_message())
        return
    from ..network.dns import ClusterDNS, ensure_kube_dns_service

    gateways = [str(r.gateway.ip) for r in net.network.ranges]
    dns = ClusterDNS(client, domain=cluster["clusterDomain"], listen=[(gw, 53) for gw in gateways])
    await dns.start()
    node.dns = dns
    try:
        await ensure_kube_dns_service(admin, cluster["clusterDNS"], endpoints=gateways, port=53)
    finally:
        await admin.close()
    log.info("cluster DNS on %s behind kube-system/kube-dns %s", ", ".join(gateways), cluster["clusterDNS"])


def _split(value: str) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def port_in_use(cmd: str, flag: str, host: str, port: int, e: OSError) -> str:
    """The one-line error for a listener that cannot bind, naming the flag that moves it."""
    if e.errno == errno.EADDRINUSE:
        hint = {"--kubelet-port": ", or 0 for a free one",
                "--ingress-http-port": ", 0 for a free one, or --disable=ingress",
                "--ingress-https-port": ", 0 for a free one, or --disable=ingress"}.get(flag, "")
        return (f"kyb {cmd}: {flag} {port}: {host}:{port} is already in use (another kyb server, agent or "
                f"kubelet?); pass another {flag}" + hint)
    return f"kyb {cmd}: {flag} {port}: cannot listen on {host}:{port}: {e.strerror or e}"


def kubelet_port(args: argparse.Namespace) -> int:
    """--kubelet-port, or its default: 10250 (upstream's) for a node of the API server on its
    default port, else a free port, so that `--port` alone runs a second cluster beside the first."""
    if args.kubelet_port is not None:
        return int(args.kubelet_port)
    return 10250 if args.cmd == "agent" or args.port == 6443 else 0


def ingress_ports(args: argparse.Namespace) -> tuple[int, int]:
    """(HTTP, HTTPS) ports of the node's ingress: the flags, or 80 and 443 where the kubelet has its
    upstream port (see `kubelet_port`), else free ones."""
    default = args.cmd == "agent" or args.port == 6443
    http = args.ingress_http_port if args.ingress_http_port is not None else (80 if default else 0)
    https = args.ingress_https_port if args.ingress_https_port is not None else (443 if default else 0)
    return int(http), int(https)


def disabled_components(args: argparse.Namespace, known: set[str]) -> set[str]:
    disabled = {d.strip() for d in (args.disable or "").split(",") if d.strip()}
    unknown = disabled - known
    if unknown:
        raise SystemExit(f"kyb {args.cmd}: --disable: unknown component(s) {', '.join(sorted(unknown))}")
    return disabled


async def start_ingress(client, name: str, ips: list[str], args: argparse.Namespace, log: logging.Logger):
    """The node's ingress controller on its addresses, or a one-line error naming the port flag in the way."""
    from ..ingress import IngressController

    http, https = ingress_ports(args)
    ingress = IngressController(client, name, ips, http, https, bind=ips)
    try:
        await ingress.start()
    except OSError as e:
        # Which listener failed: the one whose port cannot be bound on its own now.
        flag, port, host = "--ingress-http-port", http, ips[0]
        if e.errno == errno.EADDRINUSE:
            busy = [(f, p, ip) for f, p in (("--ingress-http-port", http), ("--ingress-https-port", https))
                    for ip in ips if p and _port_busy(ip, p)]
            flag, port, host = busy[0] if busy else (flag, port, host)
        raise SystemExit(port_in_use(args.cmd, flag, host, port, e)) from None
    log.info("node %s: ingress on %s, HTTP port %s, HTTPS port %s (IngressClass %s)", name, ", ".join(ips),
             ",".join(map(str, sorted(set(ingress.http_ports)))),
             ",".join(map(str, sorted(set(ingress.https_ports)))), ingress.class_name)
    return ingress


def _port_busy(host: str, port: int) -> bool:
    import socket

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def node_ips(args: argparse.Namespace) -> list[str]:
    """--node-ip as k3s spells it: one address, or an IPv4,IPv6 pair on a dual-stack node
    (the first is the primary: the kubelet listens there and it is status.hostIP)."""
    ips = _split(args.node_ip) or ["127.0.0.1"]
    try:
        parsed = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as e:
        raise SystemExit(f"kyb: --node-ip {args.node_ip!r}: {e}") from None
    if len(parsed) > 2 or (len(parsed) == 2 and parsed[0].version == parsed[1].version):
        raise SystemExit(f"kyb: --node-ip {args.node_ip!r}: give one address or an IPv4,IPv6 pair")
    return [str(ip) for ip in parsed]


async def start_node(client, data: Path, args: argparse.Namespace, ssl_context,
                     cluster: dict[str, str] | None = None) -> Node:
    """A node: kubelet, runtime, image service, and (with a pod network) the service proxy.

    ``cluster`` says what the cluster is: clusterCIDR, serviceCIDR, clusterDNS, clusterDomain.
    """
    from ..kubelet import Kubelet, KubeletConfig
    from ..kubelet.server import KubeletServer

    log = logging.getLogger("kybernetes.node")
    cluster = cluster or {}
    name = node_name(args)
    ips = node_ips(args)
    node_ip = ips[0]
    kind, why = choose_runtime(args.runtime)
    images = open_images(data, args) if kind == "oci" else None
    runtime = make_runtime(kind, data, images)
    log.info("node %s: container runtime %s (%s)", name, kind, why)
    own_net, net_why = choose_pod_network(args.pod_network, kind)
    network = proxy = None
    cluster_cidrs = _split(cluster.get("clusterCIDR", ""))
    if own_net:
        from ..kubelet.network import NetworkManager
        network = NetworkManager(client, name, str(data / "network"), cluster_cidrs=cluster_cidrs,
                                 node_ips=ips)
    log.info("node %s: pod network %s (%s)", name, "bridge" if own_net else "none, pods use the node's", net_why)
    # The server learns the kubelet after it knows its port, which the Node object publishes.
    port = kubelet_port(args)
    server = KubeletServer(None, node_ip, port, ssl_context)
    try:
        await server.start()
    except OSError as e:
        raise SystemExit(port_in_use(args.cmd, "--kubelet-port", node_ip, port, e)) from None
    kubelet = Kubelet(client, runtime, KubeletConfig(
        node_name=name, root_dir=str(data / "kubelet"), host_ip=node_ip, host_ips=ips, port=server.port,
        static_pod_path=str(data / "manifests"),
        image_gc_high_threshold_percent=args.image_gc_high_threshold,
        image_gc_low_threshold_percent=args.image_gc_low_threshold,
        cluster_dns=_split(cluster.get("clusterDNS", "")) if own_net else [],
        cluster_domain=cluster.get("clusterDomain") or "cluster.local"), images=images, network=network)
    server.kubelet = kubelet
    netpol = None
    if own_net:
        # NetworkPolicy is enforced on every node, in place before the kubelet starts pods.
        from ..network.netpol import NetworkPolicyAgent
        netpol = NetworkPolicyAgent(client, name)
        await netpol.start()
    await kubelet.start()
    if own_net:
        # The service proxy runs beside the kubelet on every node, as k3s embeds kube-proxy.
        from ..network.proxy import ServiceProxy
        proxy = ServiceProxy(client, name, ips, cluster_cidrs=cluster_cidrs)
        await proxy.start()
    node = Node(kubelet, runtime, server, client, images=images, proxy=proxy, netpol=netpol)
    if "ingress" not in disabled_components(args, KNOWN_DISABLE[args.cmd]):
        # The ingress runs on every node, as k3s's Traefik behind servicelb answers on every node.
        try:
            node.ingress = await start_ingress(client, name, ips, args, log)
        except BaseException:
            await node.stop()
            raise
    return node


async def run_agent(args: argparse.Namespace) -> int:
    """Join a server over HTTPS with a join token (TLS bootstrap, kubelet/bootstrap.py), then run a node."""
    from ..client import Client
    from ..client.transport import HTTPTransport
    from ..kubelet import bootstrap

    log = logging.getLogger("kybernetes.agent")
    data = Path(args.data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = bootstrap.NodeFiles(data)
    name = node_name(args)
    ca_file = args.ca_file or None
    if not ca_file and args.server_data_dir:
        # An agent beside the server may trust the CA file there instead of a pinned hash.
        ca_file = str(Path(args.server_data_dir).expanduser() / "pki" / "ca.crt")
    try:
        await bootstrap.bootstrap_client(args.server, args.token, files, name, ca_hash=args.ca_cert_hash or None,
                                         ca_file=ca_file)
    except bootstrap.JoinError as e:
        raise SystemExit(f"kyb agent: cannot join {args.server}: {e}") from None
    client_ctx = bootstrap.client_ssl_context(files)
    client = Client(HTTPTransport(args.server, ssl_context=client_ctx))
    hosts = sorted({*node_ips(args), name})
    serving_ctx = bootstrap.serving_ssl_context(files, hosts)
    node = await start_node(client, data, args, serving_ctx, await read_cluster_config(client))
    node.certs = bootstrap.CertificateManager(client, files, name, hosts, client_ctx, serving_ctx)
    node.certs.start()
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
    runtimes = [ProcessRuntime(str(data / "runtime"))]
    if (data / "oci").is_dir():
        from ..runtime.oci import OciRuntime
        runtimes.append(OciRuntime(str(data / "oci"), open_images(data, args)))
    async def wipe(runtime, sandbox_id: str) -> None:
        await runtime.stop_pod_sandbox(sandbox_id)
        await runtime.remove_pod_sandbox(sandbox_id)

    for runtime in runtimes:
        # In parallel: each sandbox waits for its processes to die, and there may be many.
        await asyncio.gather(*(wipe(runtime, sb.id) for sb in await runtime.list_pod_sandboxes()))
        kill_strays = getattr(runtime, "kill_strays", None)
        if kill_strays is not None:
            kill_strays()
        await runtime.close()
    return 0


def add_node_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the node side, shared by `kyb server` (its embedded node) and `kyb agent`."""
    p.add_argument("--runtime", default=os.environ.get("KYB_RUNTIME", "auto"), choices=("auto", *RUNTIMES),
                   help="container runtime: oci (runc and OCI images), process (host processes), fake; "
                        "auto (default, or $KYB_RUNTIME) is oci where runc works, else process")
    p.add_argument("--private-registry", default="",
                   help="registries.yaml (mirrors, endpoints, TLS, auth; the k3s format); default "
                        "<data-dir>/registries.yaml")
    p.add_argument("--disable-default-registry-endpoint", action="store_true",
                   help="pull a registry's images only through its mirrors in registries.yaml, never from the "
                        "registry itself (as k3s's flag of that name)")
    p.add_argument("--pod-network", default=os.environ.get("KYB_POD_NETWORK", "auto"),
                   choices=("auto", "bridge", "none"),
                   help="bridge: every pod gets its own network namespace and addresses from the node's pod "
                        "CIDRs, and the node runs the service proxy; none: pods share the node's network; auto "
                        "(default, or $KYB_POD_NETWORK) is bridge as root with iproute2 and nftables")
    p.add_argument("--ingress-http-port", type=int, default=None,
                   help="the node's ingress controller's HTTP port (0 picks a free one); default 80 on an agent and "
                        "beside an API server on port 6443, else a free port")
    p.add_argument("--ingress-https-port", type=int, default=None,
                   help="the ingress controller's HTTPS port (0 picks a free one); default 443, as "
                        "--ingress-http-port")
    p.add_argument("--image-gc-high-threshold", type=int, default=85,
                   help="disk usage percent of the image filesystem above which unused images are removed")
    p.add_argument("--image-gc-low-threshold", type=int, default=80,
                   help="disk usage percent image garbage collection brings the image filesystem down to")


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
    s.add_argument("--service-cidr", default="10.96.0.0/12",
                   help="Service cluster IP range: one CIDR, or an IPv4,IPv6 pair for dual stack "
                        "(e.g. 10.43.0.0/16,fd43::/112; the first is the primary family)")
    s.add_argument("--cluster-cidr", default="10.42.0.0/16",
                   help="pod network, one CIDR or an IPv4,IPv6 pair for dual stack (e.g. 10.42.0.0/16,"
                        "fd42::/56): each node gets a /24 (IPv4) and a /64 (IPv6) of it as spec.podCIDRs")
    s.add_argument("--disable", default="",
                   help="comma-separated components not to run in this process: controllers, scheduler, "
                        "kubelet, servicelb (LoadBalancer addresses), ingress (the embedded node's)")
    s.add_argument("--encryption-provider-config", default="",
                   help="an EncryptionConfiguration file (upstream's format: aescbc, aesgcm, secretbox, identity) "
                        "saying how resources are encrypted at rest; default: Secrets with aescbc and a key "
                        "made on the first start, in <data-dir>/encryption-config.yaml")
    s.add_argument("--admission-control-config-file", default="",
                   help="an AdmissionConfiguration file (upstream's format); its PodSecurity plugin's "
                        "PodSecurityConfiguration sets the cluster's default Pod Security levels and exemptions")
    from ..apiserver import audit
    audit.add_flags(s)
    s.add_argument("--authorization-mode", default="RBAC", choices=["RBAC", "AlwaysAllow"],
                   help="RBAC (the default): Roles and bindings say who may do what, system:masters may do "
                        "anything; AlwaysAllow: every authenticated client may do everything")
    s.add_argument("--lb-pool", action="append", default=[],
                   help="give LoadBalancer Services addresses from this pool (a CIDR or an a-b range; repeat, "
                        "or comma-separate, for more and for IPv6) instead of the nodes' own, as MetalLB does")
    s.add_argument("--node-monitor-grace-period", type=float, default=40.0,
                   help="seconds without a lease renewal before a node is Unknown and tainted")
    s.add_argument("--node-name", default="", help="name of the embedded node (default: the host name)")
    s.add_argument("--node-ip", default="127.0.0.1",
                   help="the embedded node's address (its kubelet listens there), or an IPv4,IPv6 pair for a "
                        "dual-stack node")
    s.add_argument("--kubelet-port", type=int, default=None,
                   help="the embedded node's kubelet port (0 picks a free one); default 10250 when --port is "
                        "6443, else a free port, so that --port alone runs a second cluster on one machine")
    s.add_argument("--tls-san", action="append", help="extra host name or IP for the serving certificate")
    s.add_argument("--log-level", dest="log_level_sub", default=None,
                   choices=["debug", "info", "warning", "error"])
    add_node_flags(s)
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
    ag.add_argument("--token", default="",
                    help="the join string, as in the server's <data-dir>/pki/join.token (K10<CA hash>::<id>.<secret>),"
                         " or a bootstrap token <id>.<secret> with --ca-cert-hash; not needed once joined")
    ag.add_argument("--ca-cert-hash", default="", help="sha256:<hex> of the CA's public key, as kubeadm's "
                    "--discovery-token-ca-cert-hash (in the join string already)")
    ag.add_argument("--name", dest="node_name", default="")
    ag.add_argument("--ca-file", default="", help="trust this CA file instead of discovering the CA")
    ag.add_argument("--server-data-dir", default="",
                    help="the server's data dir on this machine: trust its pki/ca.crt (instead of a CA hash)")
    ag.add_argument("--data-dir", default=str(default_data_dir() / "agent"))
    ag.add_argument("--node-ip", default="127.0.0.1",
                    help="the node's address (its kubelet listens there), or an IPv4,IPv6 pair for a dual-stack node")
    ag.add_argument("--kubelet-port", type=int, default=None, help="the kubelet's port (default 10250; 0 picks a free one)")
    ag.add_argument("--disable", default="", help="comma-separated components not to run on this node: ingress")
    add_node_flags(ag)
    k = sub.add_parser("killall", help="stop every pod a data dir's node runs")
    k.add_argument("--data-dir", default=str(default_data_dir()))
    k.add_argument("--private-registry", default="")
    from .image import add_image_parser
    add_image_parser(sub, default_data_dir())
    sub.add_parser("version", help="print the version")
    args = p.parse_args(argv)
    level = getattr(args, "log_level_sub", None) or args.log_level
    _setup_logging(level)
    if args.cmd == "version":
        print(f"kyb {__version__} (Kubernetes API v1.32)")
        return 0
    if args.cmd == "agent":
        _tune_gc()
        return asyncio.run(run_agent(args))
    if args.cmd == "killall":
        return asyncio.run(run_killall(args))
    if args.cmd == "image":
        from .image import run_image
        return asyncio.run(run_image(args))
    if args.cmd == "hollow-nodes":
        return asyncio.run(run_hollow_nodes(args))
    if args.cmd == "server":
        _tune_malloc()
        _tune_gc()
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
