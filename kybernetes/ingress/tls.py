"""TLS for the ingress: certificates from `kubernetes.io/tls` Secrets, chosen by SNI.

`tls_hosts` reads spec.tls of the served Ingresses: each entry's hosts (exact or
`*.` wildcard; an entry without hosts covers its Ingress's rule hosts) name a
Secret in the Ingress's namespace; a host claimed by several Ingresses is the
oldest one's, as routes are.

`CertStore` holds one `ssl.SSLContext` per certificate and the listener's own
context, which carries the default certificate and an `sni_callback` that moves
each new handshake onto the context of the host it asks for (exact name first,
then the wildcard for its first label, then the default). `update` swaps the host
map in one assignment: handshakes already done keep the context they got, so
rotating a certificate never drops an open connection. Contexts are cached by the
hash of their PEM bytes, so an unchanged Secret is not reloaded on every rebuild.

The default certificate is self-signed and generated at start-up (ECDSA P-256, as
ingress-nginx's "Kubernetes Ingress Controller Fake Certificate"), unless a Secret
is named for it. Every context offers ALPN "http/1.1" only: the proxy speaks
HTTP/1.1, and a client that would like h2 must not pick it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .routing import oldest_first

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PemPair = tuple[bytes, bytes]
TLS_SECRET_TYPE = "kubernetes.io/tls"
DEFAULT_CERT_CN = "Kybernetes Ingress Controller Fake Certificate"


def generate_self_signed(common_name: str = DEFAULT_CERT_CN, hosts: Iterable[str] = ("ingress.local",),
                         days: int = 365) -> PemPair:
    """A self-signed (certificate PEM, key PEM) for `hosts`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Co"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def secret_pair(secret: Obj | None) -> PemPair | None:
    """(tls.crt, tls.key) of a kubernetes.io/tls Secret, or None if it is not one."""
    if not secret or secret.get("type") != TLS_SECRET_TYPE:
        return None
    data = secret.get("data") or {}
    try:
        crt = base64.b64decode(data.get("tls.crt") or "", validate=True)
        key = base64.b64decode(data.get("tls.key") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None
    return (crt, key) if crt and key else None


def _tmpdir() -> str | None:
    # Key material is written only for the moment OpenSSL reads it; a tmpfs keeps it off disk.
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def server_context(pair: PemPair) -> ssl.SSLContext:
    """A server context for one certificate chain and key; ssl.SSLError if they are bad or do not match."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    fd, path = tempfile.mkstemp(prefix="kyb-ingress-", suffix=".pem", dir=_tmpdir())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pair[1].rstrip(b"\n") + b"\n" + pair[0])
        ctx.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return ctx


def tls_hosts(ingresses: Iterable[Obj]) -> dict[str, str]:
    """host (lowercase, maybe "*.suffix") -> "namespace/secretName", oldest Ingress first."""
    out: dict[str, str] = {}
    for ing in oldest_first(ingresses):
        meta = ing.get("metadata") or {}
        spec = ing.get("spec") or {}
        ns = meta.get("namespace") or "default"
        for entry in spec.get("tls") or []:
            if not isinstance(entry, dict) or not entry.get("secretName"):
                continue
            hosts = entry.get("hosts") or [r.get("host") for r in spec.get("rules") or []
                                           if isinstance(r, dict) and r.get("host")]
            for h in hosts:
                out.setdefault(str(h).lower(), f"{ns}/{entry['secretName']}")
    return out


def _digest(pair: PemPair) -> str:
    return hashlib.sha256(pair[0] + b"\0" + pair[1]).hexdigest()


class CertStore:
    """SNI-selected server contexts; `context` is the one to listen with."""

    def __init__(self, default: PemPair | None = None):
        self._default_pair = default or generate_self_signed()
        self._cache: dict[str, ssl.SSLContext] = {}
        self._bad: dict[str, str] = {}      # digest -> the error, logged once
        self.context = server_context(self._default_pair)
        self.context.sni_callback = self._sni
        self._default = self.context
        self._hosts: dict[str, ssl.SSLContext] = {}

    @property
    def hosts(self) -> Mapping[str, ssl.SSLContext]:
        return self._hosts

    def _load(self, pair: PemPair, what: str) -> ssl.SSLContext | None:
        d = _digest(pair)
        ctx = self._cache.get(d)
        if ctx is None and d not in self._bad:
            try:
                ctx = self._cache[d] = server_context(pair)
            except (ssl.SSLError, ValueError, OSError) as e:
                self._bad[d] = str(e)
                log.warning("ingress: certificate %s cannot be used (%s); the default is served instead",
                            what, e)
        return ctx

    def update(self, pairs: Mapping[str, PemPair], default: PemPair | None = None) -> None:
        """Serve `pairs` (host -> PEM pair) from now on; `default` replaces the fallback if given."""
        hosts: dict[str, ssl.SSLContext] = {}
        for host, pair in pairs.items():
            ctx = self._load(pair, f"for {host}")
            if ctx is not None:
                hosts[host.lower()] = ctx
        if default is not None:
            ctx = self._load(default, "default")
            if ctx is not None and ctx is not self._default:
                # The listener's context must stay (it holds the callback): new handshakes are moved.
                self._default = ctx
        keep = {id(c) for c in hosts.values()} | {id(self._default), id(self.context)}
        self._cache = {d: c for d, c in self._cache.items() if id(c) in keep}
        self._hosts = hosts

    def lookup(self, server_name: str | None) -> ssl.SSLContext:
        """The context for an SNI name: exact, then one-label wildcard, then the default."""
        if server_name:
            name = server_name.lower().rstrip(".")
            hosts = self._hosts
            ctx = hosts.get(name)
            if ctx is not None:
                return ctx
            _first, dot, suffix = name.partition(".")
            if dot:
                ctx = hosts.get("*." + suffix)
                if ctx is not None:
                    return ctx
        return self._default

    def _sni(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
             _ctx: ssl.SSLContext) -> None:
        ctx = self.lookup(server_name)
        if ctx is not sslobj.context:
            sslobj.context = ctx
