"""TLS bootstrap of a node: from a join token to its own client and serving certificates.

What ``kyb agent --server URL --token JOIN`` does before its kubelet runs, as
kubeadm's discovery and the kubelet's TLS bootstrap do it:

1. **Discovery.** Read the kube-public ``cluster-info`` ConfigMap over a
   connection that is not trusted yet (the server serves it anonymously), and
   accept the CA in it only if the SHA-256 of its public key is the pin the
   join string carries (``K10<hex>::…`` or ``--ca-cert-hash sha256:<hex>``).
   When the server has signed cluster-info with this token (its bootstrap
   signer does), the signature must match too. Every later connection trusts
   that CA alone and checks the server's name.
2. **Client certificate.** Authenticated with the bootstrap token (user
   ``system:bootstrap:<id>``), create a CertificateSigningRequest for
   ``CN=system:node:<name>, O=system:nodes`` with signer
   ``kubernetes.io/kube-apiserver-client-kubelet``; the controller manager
   approves and signs it; write the key and certificate to
   ``<data-dir>/pki/kubelet-client-current.pem`` and ``<data-dir>/kubeconfig``
   (which points at it). A restart with a still valid certificate skips
   both steps and needs no token.
3. **Serving certificate.** Once the node is registered, ask (as the node)
   for a ``kubernetes.io/kubelet-serving`` certificate for the node's
   addresses; the kubelet's HTTPS server picks it up when it arrives (until
   then it has none and refuses handshakes).
4. **Rotation.** Each certificate is renewed, as the node itself, when 80% of
   its life has passed; the TLS contexts load the new one in place.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..api import certificates as csrs
from ..api.errors import StatusError
from ..apiserver.pki import _write, detached_jws, hash_matches, parse_join
from ..client import Client
from ..client.transport import HTTPTransport

log = logging.getLogger("kybernetes.kubelet.bootstrap")

CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
CLIENT_USAGES = ["digital signature", "client auth"]
SERVING_USAGES = ["digital signature", "server auth"]
RENEW_AT = 0.8  # of a certificate's life
RETRY_AFTER = 10.0
MAX_RETRY_AFTER = 300.0


class JoinError(Exception):
    """Why the node cannot join; the message is for the user."""


@dataclass
class NodeFiles:
    """Where a node keeps what it was issued."""

    data_dir: Path

    @property
    def pki(self) -> Path:
        return self.data_dir / "pki"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def client_pem(self) -> Path:
        return self.pki / "kubelet-client-current.pem"

    @property
    def serving_pem(self) -> Path:
        return self.pki / "kubelet-server-current.pem"

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"


# -- certificates on disk ------------------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def still_valid(cert: x509.Certificate | None, *, ca_pem: bytes | None = None) -> bool:
    if cert is None:
        return False
    now = _now()
    if not (cert.not_valid_before_utc <= now < cert.not_valid_after_utc):
        return False
    if ca_pem is not None:
        ca = x509.load_pem_x509_certificate(ca_pem)
        if cert.issuer != ca.subject:
            return False
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception):  # noqa: BLE001 - any failure: not ours
            return False
    return True


def cert_common_name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


def renew_due(cert: x509.Certificate) -> datetime.datetime:
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_before_utc + life * RENEW_AT


def write_pem(path: Path, cert_pem: bytes, key: Any) -> None:
    """Certificate and key in one file, replaced atomically (a reader never sees a mismatched pair)."""
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(path, cert_pem.rstrip(b"\n") + b"\n" + key_pem)


def write_kubeconfig(files: NodeFiles, server: str) -> None:
    cfg = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "default-cluster", "cluster": {"server": server,
                                                            "certificate-authority": str(files.ca)}}],
        "users": [{"name": "default-auth", "user": {"client-certificate": str(files.client_pem),
                                                    "client-key": str(files.client_pem)}}],
        "contexts": [{"name": "default-context", "context": {"cluster": "default-cluster",
                                                             "user": "default-auth"}}],
        "current-context": "default-context",
    }
    _write(files.kubeconfig, yaml.safe_dump(cfg, sort_keys=False).encode())


def kubeconfig_server(files: NodeFiles) -> str | None:
    try:
        cfg = yaml.safe_load(files.kubeconfig.read_text()) or {}
        return cfg["clusters"][0]["cluster"]["server"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


# -- discovery -----------------------------------------------------------------------------------------------------


async def discover_ca(server: str, ca_hash: str, token_id: str, token_secret: str) -> bytes:
    """The cluster CA (PEM) from cluster-info, accepted only if it matches the pin (and the token's signature)."""
    client = Client(HTTPTransport(server, insecure=True, timeout=30))
    try:
        cm = await client.request("GET", CLUSTER_INFO_PATH)
    except StatusError as e:
        raise JoinError(f"cannot read cluster-info from {server}: {e.message}") from None
    except Exception as e:  # noqa: BLE001 - network and TLS errors of every kind
        raise JoinError(f"cannot reach {server}: {e}") from None
    finally:
        await client.close()
    data = (cm or {}).get("data") or {} if isinstance(cm, dict) else {}
    content = data.get("kubeconfig")
    try:
        cfg = yaml.safe_load(content or "") or {}
        ca_pem = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])
        x509.load_pem_x509_certificate(ca_pem)
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        raise JoinError(f"{server} publishes no usable CA in kube-public/cluster-info") from None
    try:
        ok = hash_matches(ca_pem, ca_hash)
    except ValueError as e:
        raise JoinError(str(e)) from None
    if not ok:
        raise JoinError(f"the CA of {server} does not match the pinned hash {ca_hash}: refusing to trust it")
    sig = data.get(f"jws-kubeconfig-{token_id}")
    if sig is not None and sig != detached_jws(content, token_id, token_secret):
        raise JoinError(f"cluster-info of {server} is signed with another secret for token id {token_id}: "
                        "Unauthorized (wrong token)")
    return ca_pem


# -- asking for a certificate --------------------------------------------------------------------------------------


async def request_certificate(client: Client, key: Any, cn: str, orgs: list[str], signer: str, usages: list[str],
                              *, dns: list[str] = (), ips: list[str] = (), generate_name: str = "csr-",
                              log_every: float = 30.0) -> bytes:
    """Create a CSR, wait until it is issued, and return the certificate (PEM)."""
    req = csrs.make_request(key, cn, orgs, dns=list(dns), ips=list(ips))
    created = await client.request("POST", CSR_PATH, body=csrs.csr_object(req, signer, usages,
                                                                          generate_name=generate_name))
    name = created["metadata"]["name"]
    log.info("asked for a %s certificate for %s: CertificateSigningRequest %s", signer, cn, name)
    delay, waited, told = 0.05, 0.0, 0.0
    while True:
        obj = await client.request("GET", f"{CSR_PATH}/{name}")
        if csrs.has_certificate(obj):
            return base64.b64decode(obj["status"]["certificate"])
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") in (csrs.DENIED, csrs.FAILED) and c.get("status") == "True":
                raise JoinError(f"CertificateSigningRequest {name} was {c['type'].lower()}: "
                                f"{c.get('reason', '')} {c.get('message', '')}".rstrip())
        if waited - told >= log_every:
            told = waited
            log.info("waiting for CertificateSigningRequest %s to be approved and signed "
                     "(kubectl certificate approve %s)", name, name)
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 1.5, 1.0)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def bootstrap_client(server: str, join: str, files: NodeFiles, node_name: str, *,
                           ca_hash: str | None = None, ca_file: str | None = None) -> None:
    """Make sure ``files`` hold a valid client certificate for the node and a kubeconfig; join if they do not."""
    ca_pem = files.ca.read_bytes() if files.ca.exists() else None
    cert = load_cert(files.client_pem)
    if ca_pem and still_valid(cert, ca_pem=ca_pem) and kubeconfig_server(files) == server and \
            cert_common_name(cert) == csrs.NODE_PREFIX + node_name:
        log.info("reusing the node's credentials in %s", files.kubeconfig)
        return
    if not join:
        raise JoinError("no valid credentials in the data dir and no --token to join with")
    try:
        pinned, token_id, token_secret = parse_join(join)
    except ValueError as e:
        raise JoinError(str(e)) from None
    pinned = ca_hash or pinned
    if ca_file:
        ca_pem = Path(ca_file).read_bytes()
        if pinned and not hash_matches(ca_pem, pinned):
            raise JoinError(f"{ca_file} does not match the pinned hash {pinned}")
    elif pinned:
        ca_pem = await discover_ca(server, pinned, token_id, token_secret)
    else:
        raise JoinError("the token carries no CA hash: use the join string from the server's "
                        "<data-dir>/pki/join.token (K10<hash>::<id>.<secret>), or add --ca-cert-hash sha256:<hex> "
                        "or --ca-file")
    files.pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(files.ca, ca_pem, 0o644)
    # The cluster CA alone (not the system's trust store), and the server's name checked against it.
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    client = Client(HTTPTransport(server, ssl_context=ctx, token=f"{token_id}.{token_secret}", timeout=30))
    try:
        key = new_key()
        cert_pem = await request_certificate(client, key, csrs.NODE_PREFIX + node_name, [csrs.NODES_GROUP],
                                             csrs.KUBELET_CLIENT, CLIENT_USAGES, generate_name="node-csr-")
    except StatusError as e:
        raise JoinError(e.message) from None
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        raise JoinError(f"cannot reach {server}: {e}") from None
    finally:
        await client.close()
    write_pem(files.client_pem, cert_pem, key)
    write_kubeconfig(files, server)
    log.info("node %s joined %s: client certificate in %s", node_name, server, files.client_pem)


def client_ssl_context(files: NodeFiles) -> ssl.SSLContext:
    """TLS to the API server: trust the cluster CA, present the node's certificate (reloadable in place)."""
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.client_pem))
    return ctx


def serving_ssl_context(files: NodeFiles, hosts: list[str]) -> ssl.SSLContext:
    """TLS for the kubelet's server: client certificates from the CA required; its own certificate once it has one."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_verify_locations(cafile=str(files.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    if serving_cert_ok(files, hosts):
        ctx.load_cert_chain(str(files.serving_pem))
    return ctx


def serving_cert_ok(files: NodeFiles, hosts: list[str]) -> bool:
    cert = load_cert(files.serving_pem)
    ca_pem = files.ca.read_bytes() if files.ca.exists() else None
    if not still_valid(cert, ca_pem=ca_pem):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return all(h in have for h in hosts)


def split_hosts(hosts: list[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IPs) of a host list."""
    import ipaddress

    dns, ips = [], []
    for h in hosts:
        try:
            ips.append(str(ipaddress.ip_address(h)))
        except ValueError:
            dns.append(h)
    return dns, ips


# -- keeping certificates fresh ------------------------------------------------------------------------------------


class CertificateManager:
    """Keeps the node's client and serving certificates issued and fresh, reloading the TLS contexts."""

    def __init__(self, client: Client, files: NodeFiles, node_name: str, hosts: list[str],
                 client_ctx: ssl.SSLContext, serving_ctx: ssl.SSLContext, *,
                 retry_after: float = RETRY_AFTER) -> None:
        self.client = client
        self.files = files
        self.node_name = node_name
        self.hosts = hosts
        self.client_ctx = client_ctx
        self.serving_ctx = serving_ctx
        self.retry_after = retry_after
        self._tasks: list[asyncio.Task] = []
        self.serving_ready = asyncio.Event()
        if serving_cert_ok(files, hosts):
            self.serving_ready.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep(self.renew_client, self._client_due), name="client-cert"),
                       asyncio.create_task(self._keep(self.renew_serving, self._serving_due), name="serving-cert")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping
                pass
        self._tasks.clear()

    def _client_due(self) -> float:
        cert = load_cert(self.files.client_pem)
        return 0.0 if cert is None else (renew_due(cert) - _now()).total_seconds()

    def _serving_due(self) -> float:
        if not serving_cert_ok(self.files, self.hosts):
            return 0.0
        cert = load_cert(self.files.serving_pem)
        return (renew_due(cert) - _now()).total_seconds()

    async def _keep(self, renew: Callable[[], Awaitable[None]], due: Callable[[], float]) -> None:
        backoff = self.retry_after
        while True:
            wait = due()
            if wait > 0:
                # Sleep in bounded steps: a suspended machine's clock jumps.
                await asyncio.sleep(min(wait, 3600))
                continue
            try:
                await renew()
                backoff = self.retry_after
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - retried; the current certificate keeps working meanwhile
                log.warning("certificate request failed, retrying in %.0fs: %s", backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RETRY_AFTER)

    async def renew_client(self) -> None:
        key = new_key()
        cert_pem = await request_certificate(self.client, key, csrs.NODE_PREFIX + self.node_name,
                                             [csrs.NODES_GROUP], csrs.KUBELET_CLIENT, CLIENT_USAGES)
        write_pem(self.files.client_pem, cert_pem, key)
        self.client_ctx.load_cert_chain(str(self.files.client_pem))
        log.info("renewed the node's client certificate")

    async def renew_serving(self) -> None:
        key = new_key()
        dns, ips = split_hosts(self.hosts)
        cert_pem = await request_certificate(self.client, key, csrs.NODE_PREFIX + self.node_name,
                                             [csrs.NODES_GROUP], csrs.KUBELET_SERVING, SERVING_USAGES,
                                             dns=dns, ips=ips)
        write_pem(self.files.serving_pem, cert_pem, key)
        self.serving_ctx.load_cert_chain(str(self.files.serving_pem))
        self.serving_ready.set()
        log.info("kubelet serving certificate issued for %s", ", ".join(self.hosts))
