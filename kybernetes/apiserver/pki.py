"""The cluster's PKI: a CA, the API server's serving certificate, admin credentials, kubeconfig,
the key pair that signs service account tokens (sa.key, sa.pub), and the join string.

Generated on first start into <data-dir>/pki and reused afterwards, so a
kubeconfig written once keeps working across restarts. Client certificates
carry the user in CN and groups in O, as upstream's x509 authenticator reads
them.

Joining a node takes a bootstrap token (upstream's ``[a-z0-9]{6}.[a-z0-9]{16}``,
kept as a ``bootstrap.kubernetes.io/token`` Secret) and the hash of the CA's
public key, as kubeadm's ``--discovery-token-ca-cert-hash sha256:<hex>``: the
hash lets a new node trust the CA it fetches over an unverified connection.
Both travel in one join string, ``K10<hex>::<id>.<secret>`` (k3s's shape; the
hex is the SHA-256 of the CA's SubjectPublicKeyInfo, kubeadm's pin), written to
``<data-dir>/pki/join.token``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import hashlib
import hmac
import os
import re
import secrets
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from aiohttp import web


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(k) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def _cert_pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class PKI:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def token_file(self) -> Path:
        return self.dir / "admin.token"

    @property
    def join_token_file(self) -> Path:
        return self.dir / "join.token"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def ensure(self, hosts: list[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            self._make_ca()
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        if not self._server_cert_covers(hosts):
            k = _key()
            cert = self._issue(ca, ca_key, k.public_key(), "kube-apiserver", [], server=True, hosts=hosts)
            _write(self.server_key, _key_pem(k))
            _write(self.server_cert, _cert_pem(cert) + _cert_pem(ca), 0o644)
        if not (self.admin_cert.exists() and self.admin_key.exists()):
            k = _key()
            cert = self._issue(ca, ca_key, k.public_key(), "kubernetes-admin", ["system:masters"], server=False)
            _write(self.admin_key, _key_pem(k))
            _write(self.admin_cert, _cert_pem(cert), 0o644)
        if not self.token_file.exists():
            _write(self.token_file, secrets.token_hex(24).encode())
        # join.token is written by the server once the bootstrap token's Secret exists (it needs the store).
        if not self.sa_key.exists():
            # Tokens handed out stay valid across restarts only if the key that signed them does.
            k = _key()
            _write(self.sa_key, _key_pem(k))
            _write(self.sa_pub, k.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)

    def _make_ca(self) -> None:
        k = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kybernetes-ca")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(minutes=5))
                .not_valid_after(_now() + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(k, hashes.SHA256()))
        _write(self.ca_key, _key_pem(k))
        _write(self.ca_cert, _cert_pem(cert), 0o644)

    def _issue(self, ca, ca_key, pub, cn: str, orgs: list[str], *, server: bool,
               hosts: list[str] | None = None) -> x509.Certificate:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        b = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca.subject).public_key(pub)
             .serial_number(x509.random_serial_number())
             .not_valid_before(_now() - datetime.timedelta(minutes=5))
             .not_valid_after(_now() + datetime.timedelta(days=3650))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            sans: list[x509.GeneralName] = []
            for h in hosts or []:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    def _server_cert_covers(self, hosts: list[str]) -> bool:
        if not (self.server_cert.exists() and self.server_key.exists()):
            return False
        cert = x509.load_pem_x509_certificate(self.server_cert.read_bytes())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
        return all(h in have for h in hosts)

    def issue_client(self, cn: str, orgs: list[str]) -> tuple[bytes, bytes]:
        """A client certificate and key (PEM) signed by the cluster CA."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        k = _key()
        cert = self._issue(ca, ca_key, k.public_key(), cn, orgs, server=False)
        return _cert_pem(cert), _key_pem(k)

    def load_ca(self) -> tuple[x509.Certificate, object]:
        """The CA certificate and its private key."""
        return (x509.load_pem_x509_certificate(self.ca_cert.read_bytes()),
                serialization.load_pem_private_key(self.ca_key.read_bytes(), None))

    def ca_cert_hash(self) -> str:
        return ca_cert_hash(self.ca_cert.read_bytes())

    def kubeconfig(self, server_url: str, cluster: str = "kybernetes") -> str:
        def b64(p):
            return base64.b64encode(p.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": cluster, "cluster": {"server": server_url,
                                                      "certificate-authority-data": b64(self.ca_cert)}}],
            "users": [{"name": "admin", "user": {"client-certificate-data": b64(self.admin_cert),
                                                 "client-key-data": b64(self.admin_key)}}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": "admin"}}],
            "current-context": cluster,
        }
        return yaml.safe_dump(cfg, sort_keys=False)

    def write_kubeconfig(self, path: Path, server_url: str) -> None:
        _write(path, self.kubeconfig(server_url).encode())


# -- bootstrap tokens and the join string ----------------------------------------------

BOOTSTRAP_TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_JOIN_RE = re.compile(r"^K10([0-9a-f]{64})::([a-z0-9]{6}\.[a-z0-9]{16})$")
_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_bootstrap_token() -> str:
    """A fresh ``<id>.<secret>`` from upstream's alphabet."""
    def pick(n: int) -> str:
        return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(n))
    return f"{pick(6)}.{pick(16)}"


def spki_sha256(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def ca_cert_hash(ca_pem: bytes) -> str:
    """kubeadm's CA pin: ``sha256:`` and the hex SHA-256 of the CA's SubjectPublicKeyInfo."""
    return "sha256:" + spki_sha256(x509.load_pem_x509_certificate(ca_pem))


def join_string(ca_hash: str, token: str) -> str:
    return f"K10{ca_hash.removeprefix('sha256:')}::{token}"


def parse_join(value: str) -> tuple[str | None, str, str]:
    """(CA hash as ``sha256:<hex>`` or None, token id, token secret) of a join string or a bare token.

    ValueError when it is neither.
    """
    value = value.strip()
    ca_hash = None
    m = _JOIN_RE.match(value)
    if m:
        ca_hash, value = "sha256:" + m.group(1), m.group(2)
    t = BOOTSTRAP_TOKEN_RE.match(value)
    if not t:
        raise ValueError("not a join token: expected K10<sha256 hex>::<id>.<secret> or <id>.<secret> "
                         "with [a-z0-9]{6} and [a-z0-9]{16}")
    return ca_hash, t.group(1), t.group(2)


def hash_matches(ca_pem: bytes, pin: str) -> bool:
    """Whether the CA's public key is the one ``sha256:<hex>`` names."""
    algo, _, hexdigest = pin.strip().lower().partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ValueError(f"unsupported CA hash {pin!r}: expected sha256:<64 hex digits>")
    return hmac.compare_digest(spki_sha256(x509.load_pem_x509_certificate(ca_pem)), hexdigest)


def detached_jws(content: str, token_id: str, token_secret: str) -> str:
    """The bootstrap signer's signature of ``content`` with a token: compact JWS, HS256, payload left out.

    The key is the token secret and ``kid`` the token id, so a node holding the
    token can tell that whoever published the content knows the token too.
    """
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(b'{"alg":"HS256","kid":"' + token_id.encode() + b'"}')
    signing_input = f"{header}.{b64(content.encode())}".encode()
    sig = hmac.new(token_secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}..{b64(sig)}"


def cluster_info_kubeconfig(server_url: str, ca_pem: bytes) -> str:
    """The kubeconfig published in kube-public/cluster-info: the server and its CA, no credentials."""
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "", "cluster": {"server": server_url,
                                              "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "contexts": None, "current-context": "", "users": None}, sort_keys=True)


def peer_identity(request: web.Request) -> tuple[str, tuple[str, ...]] | None:
    """(CN, O's) of the client certificate TLS verified on this connection, or None without one.

    Upstream's x509 authentication: the user is the CN, the groups are the O's.
    """
    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    if sslobj is None:
        return None
    # One connection has one client certificate (the server refuses renegotiation), so it is read
    # once per connection rather than per request.
    try:
        return _PEERS[sslobj]
    except KeyError:
        pass
    identity = _identity(sslobj.getpeercert())
    _PEERS[sslobj] = identity
    return identity


_PEERS: weakref.WeakKeyDictionary[Any, tuple[str, tuple[str, ...]] | None] = weakref.WeakKeyDictionary()


def _identity(cert: Any) -> tuple[str, tuple[str, ...]] | None:
    if not cert:
        return None
    cn, orgs = "", []
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v
            elif k == "organizationName":
                orgs.append(v)
    return (cn, tuple(orgs)) if cn else None
