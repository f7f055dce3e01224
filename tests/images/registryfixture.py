"""Registries for tests, all on loopback: Debian's real ``docker-registry`` and an in-process fake.

:func:`start_registry` runs ``/usr/bin/docker-registry serve CONFIG`` on a free port with its own
config (filesystem storage in a temp dir; optional htpasswd Basic auth; optional TLS with a
generated CA) and waits until ``/v2/`` answers. The packaged /etc/docker/registry/config.yml is
never used: it turns on auth and port 5000. :func:`running_registry` is the same as an async
context manager; fixtures ``registry`` and ``auth_registry`` (alice / s3cret) wrap it for a
conftest.py to import.

:class:`FakeRegistry` is an aiohttp registry for what the real one cannot be made to do: Bearer
auth against a separate token server, blobs that redirect to a "storage" server on another port,
downloads cut half-way, wrong bytes, wrong digest headers, 5xx bursts, servers that ignore Range,
a gate that holds blob responses so a test can line up concurrent pulls. It records every request.

htpasswd needs bcrypt hashes; they come from the ``bcrypt`` package when installed, else from the
system's libcrypt (libxcrypt, in every Debian), so no extra dependency is needed.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import ctypes
import ctypes.util
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kybernetes.images.build import Built, BuiltImage, BuiltIndex, busybox_image, web_image, write_oci_layout

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HAVE_REGISTRY = os.access(REGISTRY_BIN, os.X_OK)
needs_registry = pytest.mark.skipif(not HAVE_REGISTRY,
                                    reason="docker-registry is not installed (apt-get install docker-registry)")
HAVE_BUSYBOX = any(os.path.isfile(p) for p in ("/usr/bin/busybox", "/bin/busybox"))
needs_busybox = pytest.mark.skipif(not HAVE_BUSYBOX,
                                   reason="busybox is not installed (apt-get install busybox-static)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


async def poll(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    end = time.monotonic() + timeout
    while True:
        res = cond()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return res
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- htpasswd / TLS


def bcrypt_hash(password: str, cost: int = 5) -> str:
    """A bcrypt hash for an htpasswd line (distribution accepts only bcrypt)."""
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    except ImportError:
        pass
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2y$", cost, None, 0)
    out = lib.crypt(password.encode(), salt) if salt else None
    if not out or not out.startswith(b"$2"):
        raise RuntimeError("no bcrypt: install the bcrypt package or libxcrypt")
    return out.decode()


@dataclass
class TestCA:
    ca_file: str
    cert_file: str
    key_file: str


def make_tls(directory: str, host: str = "127.0.0.1") -> TestCA:
    """A CA and a server certificate for ``host`` (an IP SAN and ``localhost``), signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kybernetes test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = TestCA(os.path.join(directory, "ca.pem"), os.path.join(directory, "server.pem"),
                   os.path.join(directory, "server-key.pem"))
    Path(paths.ca_file).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(paths.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(paths.key_file).write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return paths


# --------------------------------------------------------------------------- the real registry


@dataclass
class RealRegistry:
    host: str  # "127.0.0.1:PORT", a reference's domain
    url: str  # "http://127.0.0.1:PORT" (https with tls)
    root: str
    log: str
    username: str = ""
    password: str = ""
    tls: TestCA | None = None
    proc: asyncio.subprocess.Process | None = None

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def _registry_config(root: str, port: int, htpasswd: str | None, tls: TestCA | None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if tls:
        lines += ["  tls:", f"    certificate: {tls.cert_file}", f"    key: {tls.key_file}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: kybernetes-test", f"    path: {htpasswd}"]
    return "\n".join(lines) + "\n"


async def start_registry(workdir: str | os.PathLike[str], *, username: str = "", password: str = "",
                         tls: bool = False, timeout: float = 20.0) -> RealRegistry:
    """Start docker-registry on a free loopback port; returns once ``/v2/`` answers."""
    if not HAVE_REGISTRY:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    base = tempfile.mkdtemp(prefix="registry-", dir=str(workdir))
    root = os.path.join(base, "storage")
    os.makedirs(root)
    htpasswd = None
    if username:
        htpasswd = os.path.join(base, "htpasswd")
        Path(htpasswd).write_text(f"{username}:{bcrypt_hash(password)}\n")
    ca = make_tls(base) if tls else None
    last = ""
    for _ in range(3):  # a free port can be taken between probing and binding: try another
        port = free_port()
        cfg = os.path.join(base, "config.yml")
        Path(cfg).write_text(_registry_config(root, port, htpasswd, ca))
        log = os.path.join(base, "registry.log")
        with open(log, "ab") as logf:
            proc = await asyncio.create_subprocess_exec(REGISTRY_BIN, "serve", cfg, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=logf, stderr=logf)
        scheme = "https" if ca else "http"
        reg = RealRegistry(f"127.0.0.1:{port}", f"{scheme}://127.0.0.1:{port}", root, log, username, password,
                           ca, proc)
        deadline = time.monotonic() + timeout
        ssl_ctx: Any = False if ca else None
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline and proc.returncode is None:
                try:
                    async with s.get(f"{reg.url}/v2/", ssl=ssl_ctx) as r:
                        if r.status in (200, 401):
                            return reg
                except (aiohttp.ClientError, OSError):
                    pass
                try:
                    await asyncio.wait_for(proc.wait(), 0.02)
                except TimeoutError:
                    pass
        last = Path(log).read_text(errors="replace")
        await reg.stop()
    raise RuntimeError(f"docker-registry did not start:\n{last}")


@contextlib.asynccontextmanager
async def running_registry(workdir: str | os.PathLike[str], **kw: Any) -> AsyncIterator[RealRegistry]:
    """``async with running_registry(tmp_path) as reg:`` — start_registry's arguments."""
    reg = await start_registry(workdir, **kw)
    try:
        yield reg
    finally:
        await reg.stop()


# Fixtures for a conftest.py to import (test modules here define their own with running_registry,
# which keeps ruff's redefinition check quiet).
@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[RealRegistry]:
    async with running_registry(tmp_path) as reg:
        yield reg


@pytest.fixture
async def auth_registry(tmp_path: Path) -> AsyncIterator[RealRegistry]:
    async with running_registry(tmp_path, username="alice", password="s3cret") as reg:
        yield reg


# --------------------------------------------------------------------------- images for tests


_CACHE: dict[str, Path] = {}


def cached_layout(kind: str = "busybox") -> Path:
    """A busybox or web OCI layout tarball, built once per test session (builds are deterministic)."""
    if kind not in _CACHE:
        d = Path(tempfile.mkdtemp(prefix="kyb-images-"))
        atexit.register(shutil.rmtree, d, True)
        img = busybox_image("busybox:latest") if kind == "busybox" else web_image("web:latest")
        with img:
            _CACHE[kind] = Path(write_oci_layout(str(d / f"{kind}.tar"), img))
    return _CACHE[kind]


# --------------------------------------------------------------------------- the fake registry


@dataclass
class Seen:
    server: str  # "registry", "token" or "storage"
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeRegistry:
    """An in-process OCI registry with knobs. ``auth`` is None, "basic" or "bearer"."""

    auth: str | None = None
    username: str = "alice"
    password: str = "s3cret"
    token_ttl: int = 300
    token_field: str = "token"  # "access_token" for OAuth2-style token servers
    anonymous_pull: bool = False  # the token server's anonymous tokens are accepted (a public repo)
    redirect_blobs: bool = False  # blob GETs answer 307 to the storage server (another port)
    ignore_range: bool = False  # answer 200 with the whole blob whatever Range asks
    wrong_digest_header: bool = False  # Docker-Content-Digest on manifests lies
    cut: dict[str, int] = field(default_factory=dict)  # digest -> number of downloads to cut half-way
    corrupt: set[str] = field(default_factory=set)  # digests served with wrong bytes
    fail: dict[str, int] = field(default_factory=dict)  # digest -> number of 500s before serving
    gate: asyncio.Event | None = None  # when set(), blob responses wait for it
    # digest -> event: downloads send half the blob, then hang until the event is set
    stall: dict[str, asyncio.Event] = field(default_factory=dict)

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    blob_gets: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0
    _tokens: set[str] = field(default_factory=set)
    _runners: list[web.AppRunner] = field(default_factory=list)
    port: int = 0
    token_port: int = 0
    storage_port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    # ---------------------------------------------------------------- content

    def add_blob(self, data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[d] = data
        return d

    def add_manifest(self, repo: str, reference: str, media_type: str, data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        self.manifests[(repo, d)] = (media_type, data)
        if reference != d:
            self.manifests[(repo, reference)] = (media_type, data)
        return d

    def add_image(self, repo: str, tag: str, built: Built) -> str:
        """Serve a BuiltImage or BuiltIndex as ``repo:tag``; returns the top digest."""
        images = built.images if isinstance(built, BuiltIndex) else [built]
        for img in images:
            assert isinstance(img, BuiltImage)
            self.add_manifest(repo, img.manifest_digest, img.media_type, img.manifest_bytes)
            self.blobs[img.config_digest] = img.config_bytes
            for layer in img.layers:
                self.blobs[layer.digest] = Path(layer.gz_path).read_bytes()
        if isinstance(built, BuiltIndex):
            return self.add_manifest(repo, tag, built.media_type, built.index_bytes)
        return self.add_manifest(repo, tag, built.media_type, built.manifest_bytes)

    # ---------------------------------------------------------------- servers

    async def start(self) -> FakeRegistry:
        main = web.Application()
        main.router.add_route("*", "/v2/{tail:.*}", self._registry)
        token = web.Application()
        token.router.add_get("/token", self._token)
        storage = web.Application()
        storage.router.add_get("/blobs/{digest}", self._storage)
        ports = []
        for app in (main, token, storage):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            ports.append(runner.addresses[0][1])
        self.port, self.token_port, self.storage_port = ports
        return self

    async def stop(self) -> None:
        for r in self._runners:
            await r.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> FakeRegistry:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _record(self, server: str, request: web.Request) -> None:
        self.requests.append(Seen(server, request.method, request.path_qs, dict(request.headers)))

    def seen(self, server: str = "registry", method: str | None = None, contains: str = "") -> list[Seen]:
        return [s for s in self.requests if s.server == server and (method is None or s.method == method)
                and contains in s.path]

    def _challenge(self, repo: str) -> web.Response:
        if self.auth == "basic":
            header = 'Basic realm="fake-registry"'
        else:
            header = (f'Bearer realm="http://127.0.0.1:{self.token_port}/token",service="fake-registry",'
                      f'scope="repository:{repo}:pull"')
        return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                                 status=401, headers={"WWW-Authenticate": header})

    def _authorized(self, request: web.Request) -> bool:
        if self.auth is None:
            return True
        got = request.headers.get("Authorization", "")
        if self.auth == "basic":
            want = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return got == f"Basic {want}"
        return got.startswith("Bearer ") and got[7:] in self._tokens

    async def _token(self, request: web.Request) -> web.Response:
        self._record("token", request)
        got = request.headers.get("Authorization", "")
        want = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if got and got != f"Basic {want}":
            return web.json_response({"details": "incorrect username or password"}, status=401)
        if not got and not self.anonymous_pull:
            # An anonymous token that the registry will not accept: Docker Hub's behaviour for
            # private repositories ("insufficient_scope").
            return web.json_response({self.token_field: "anonymous", "expires_in": self.token_ttl})
        self.tokens_issued += 1
        t = secrets.token_hex(8)
        self._tokens.add(t)
        return web.json_response({self.token_field: t, "expires_in": self.token_ttl})

    async def _registry(self, request: web.Request) -> web.StreamResponse:
        self._record("registry", request)
        tail = request.match_info["tail"]
        if tail in ("", "/"):
            if not self._authorized(request):
                return self._challenge("")
            return web.json_response({})
        m = re.match(r"^(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$", tail)
        if not m:
            return web.json_response({"errors": [{"code": "UNSUPPORTED"}]}, status=404)
        repo, kind, ref = m["repo"], m["kind"], m["ref"]
        if not self._authorized(request):
            return self._challenge(repo)
        if kind == "manifests":
            hit = self.manifests.get((repo, ref))
            if hit is None:
                code = "MANIFEST_UNKNOWN" if any(r == repo for r, _ in self.manifests) else "NAME_UNKNOWN"
                return web.json_response({"errors": [{"code": code, "message": "manifest unknown"}]}, status=404)
            mt, data = hit
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if self.wrong_digest_header:
                digest = "sha256:" + "0" * 64
            headers = {"Content-Type": mt, "Docker-Content-Digest": digest}
            if request.method == "HEAD":
                return web.Response(headers=headers | {"Content-Length": str(len(data))})
            return web.Response(body=data, headers=headers)
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        if self.redirect_blobs and request.method == "GET":
            return web.Response(status=307, headers={"Location": f"http://127.0.0.1:{self.storage_port}/blobs/{ref}"})
        return await self._serve_blob(request, ref)

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        self._record("storage", request)
        return await self._serve_blob(request, request.match_info["digest"])

    async def _serve_blob(self, request: web.Request, digest: str) -> web.StreamResponse:
        data = self.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}, status=404)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data)), "Docker-Content-Digest": digest})
        self.blob_gets[digest] += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail.get(digest):
            self.fail[digest] -= 1
            return web.json_response({"errors": [{"code": "UNKNOWN", "message": "try again"}]}, status=500)
        if digest in self.corrupt:
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        start = 0
        rng = re.match(r"bytes=(\d+)-$", request.headers.get("Range", ""))
        if rng and not self.ignore_range:
            start = int(rng.group(1))
        if start > len(data):
            return web.Response(status=416)
        body = data[start:]
        headers = {"Content-Length": str(len(body)), "Docker-Content-Digest": digest,
                   "Content-Type": "application/octet-stream"}
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        if self.cut.get(digest):
            self.cut[digest] -= 1
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()  # mid-body: the client sees a truncated payload
            return resp
        if digest in self.stall and not self.stall[digest].is_set():
            await resp.write(body[: len(body) // 2])
            await self.stall[digest].wait()
            await resp.write(body[len(body) // 2:])
            await resp.write_eof()
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp


@pytest.fixture
async def fake_registry() -> AsyncIterator[FakeRegistry]:
    async with FakeRegistry() as f:
        yield f
