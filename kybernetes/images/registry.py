"""The OCI distribution (registry v2) client: resolve a reference, pull its blobs into the
:class:`~kybernetes.images.content.ContentStore`.

What it owns, in the order a pull meets them:

* **Endpoints.** :class:`~kybernetes.images.registries.RegistriesConfig` says which to try
  (mirrors, then the registry itself); the first that resolves the reference serves every blob
  of that pull, as containerd does.
* **Authentication.** Requests go out anonymous; a 401's ``WWW-Authenticate`` challenge is
  answered with Basic credentials or a Bearer token fetched from the challenge's realm. What
  worked is cached per (endpoint, scope, credential) so later requests, and later pulls, send
  it straight away. Each credential that matches the host is tried in turn, as the kubelet
  does with a pod's several pull secrets.
* **Manifests.** HEAD first, so a manifest already in the store is not fetched again; an index
  is narrowed to the node's platform; every manifest is hashed and checked against the digest
  the reference pins and the registry's ``Docker-Content-Digest``. Nothing that fails a check
  is stored.
* **Blobs.** Streamed into an :class:`~kybernetes.images.content.Ingest` in chunks, resumed
  with an HTTP Range from what a previous attempt left, retried on resets and 5xx, redirects
  followed by hand so that an ``Authorization`` header never leaves the registry's origin.
  A few layers download at once; two pulls that need one blob at the same time share one
  download.

Error messages follow containerd's so a user's search for them finds answers:
``failed to pull and unpack image "docker.io/library/x:latest": failed to resolve reference
"docker.io/library/x:latest": docker.io/library/x:latest: not found``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from kybernetes.images.content import ContentStore, Ingest, sha256_digest
from kybernetes.images.errors import (
    DigestMismatch,
    ImageError,
    ImageNotFound,
    RegistryError,
    Unauthorized,
    UnsupportedImage,
)
from kybernetes.images.model import (
    DOCKER_CONFIG,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    host_platform,
)
from kybernetes.images.reference import Reference, is_digest
from kybernetes.images.registries import (
    Credential,
    Endpoint,
    RegistriesConfig,
    TLSConfig,
    host_matches,
    normalize_host,
)

__all__ = ["Credential", "PullResult", "RegistryClient", "credentials_from_dockerconfig", "select_manifest"]

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json", OCI_MANIFEST,
     "application/vnd.docker.distribution.manifest.v2+json"])
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
MAX_MANIFEST = 4 << 20  # containerd's limit: a manifest is JSON held in memory
CHUNK = 1 << 16
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
_NOT_FOUND_CODES = ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN", "NOT_FOUND")
_DENIED_CODES = ("DENIED", "UNAUTHORIZED")


# --------------------------------------------------------------------------- credentials


def credentials_from_dockerconfig(data: bytes | str | dict[str, Any]) -> list[Credential]:
    """The logins in a ``.dockerconfigjson`` (``{"auths": {host: …}}``) or legacy ``.dockercfg``
    (``{host: …}``) document. Each entry has ``auth`` (base64 of ``user:password``) or
    ``username``/``password``, optionally ``identitytoken``. Keys are reduced to host[:port]
    (``https://index.docker.io/v1/`` is ``docker.io``). Raises ValueError on a malformed document."""
    if isinstance(data, bytes | str):
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"docker config is not valid JSON: {e}") from e
    else:
        doc = data
    if not isinstance(doc, dict):
        raise ValueError("docker config must be a JSON object")
    auths = doc["auths"] if "auths" in doc else doc
    if not isinstance(auths, dict):
        raise ValueError("docker config: auths must be an object")
    out: list[Credential] = []
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise ValueError(f"docker config: entry for {key!r} must be an object")
        username = str(entry.get("username") or "")
        password = str(entry.get("password") or "")
        if entry.get("auth"):
            raw = str(entry["auth"]).strip()
            try:
                decoded = base64.b64decode(raw + "=" * (-len(raw) % 4)).decode()
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"docker config: auth for {key!r} is not base64") from e
            username, sep, password = decoded.partition(":")
            if not sep:
                raise ValueError(f"docker config: auth for {key!r} is not base64 of user:password")
        token = str(entry.get("identitytoken") or entry.get("identity_token") or "")
        if username or password or token:
            out.append(Credential(normalize_host(str(key)), username, password, token))
    return out


def _credential_id(cred: Credential | None) -> str:
    # Cached tokens are keyed by the credential that earned them, so one pod's secret never
    # authorises another pod's pull; a hash keeps the password out of the key.
    if cred is None:
        return ""
    return hashlib.sha256(f"{cred.username}\0{cred.password}\0{cred.identity_token}".encode()).hexdigest()


# --------------------------------------------------------------------------- challenges


def parse_challenges(headers: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``WWW-Authenticate`` values → [(scheme lowercased, {param: value})] (RFC 7235)."""
    out: list[tuple[str, dict[str, str]]] = []
    token = re.compile(r"[^\s=,]+")
    for h in headers:
        i, n = 0, len(h)
        while i < n:
            while i < n and h[i] in " \t,":
                i += 1
            m = token.match(h, i)
            if not m:
                break
            word, i = m.group(0), m.end()
            j = i
            while j < n and h[j] in " \t":
                j += 1
            if j < n and h[j] == "=" and out:
                i = j + 1
                while i < n and h[i] in " \t":
                    i += 1
                if i < n and h[i] == '"':
                    i += 1
                    buf = []
                    while i < n and h[i] != '"':
                        if h[i] == "\\" and i + 1 < n:
                            i += 1
                        buf.append(h[i])
                        i += 1
                    value = "".join(buf)
                    i += 1
                else:
                    m2 = re.compile(r"[^\s,]*").match(h, i)
                    assert m2 is not None
                    value, i = m2.group(0), m2.end()
                out[-1][1][word.lower()] = value
            else:
                out.append((word.lower(), {}))
    return out


# --------------------------------------------------------------------------- transport


class _Transient(RegistryError):
    """A failure worth retrying: a reset connection, a timeout, a 5xx or 429."""


def _public(e: ImageError) -> type[ImageError]:
    """The class to re-raise ``e`` as with more context: never the private retry marker."""
    return RegistryError if isinstance(e, _Transient) else type(e)


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return (url.scheme, url.host, url.port)


def _hostport(url: URL) -> str:
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return host + (f":{url.explicit_port}" if url.explicit_port else "")


class Transport:
    """The HTTP side every registry conversation shares: one aiohttp session, TLS contexts
    built from endpoint settings, and the cache of Authorization headers that worked."""

    def __init__(self, *, connect_timeout: float = 30.0, read_timeout: float = 60.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: dict[TLSConfig, ssl.SSLContext | bool] = {}
        # (endpoint url, scope, credential id) -> (Authorization value, monotonic expiry)
        self.auth_cache: dict[tuple[str, str, str], tuple[str, float]] = {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # auto_decompress off: a blob is hashed as the registry stores it, whatever
            # Content-Encoding a CDN in front of it adds.
            # Accept-Encoding identity for the same reason: a proxy that gzips a JSON manifest
            # would otherwise hand us bytes that do not hash to the manifest's digest.
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False,
                                                  headers={"User-Agent": "kybernetes/0.1",
                                                           "Accept-Encoding": "identity"})
        return self._session

    def ssl_for(self, tls: TLSConfig) -> ssl.SSLContext | bool:
        if tls == TLSConfig():
            return True
        ctx = self._ssl.get(tls)
        if ctx is None:
            try:
                c = ssl.create_default_context()
                if tls.ca_file:
                    c.load_verify_locations(cafile=tls.ca_file)
                if tls.cert_file:
                    c.load_cert_chain(tls.cert_file, tls.key_file or None)
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"failed to load TLS settings ({tls.ca_file or tls.cert_file}): {e}") from e
            if tls.insecure_skip_verify:
                c.check_hostname = False
                c.verify_mode = ssl.CERT_NONE
            ctx = self._ssl[tls] = c
        return ctx

    async def send(self, method: str, url: URL, headers: dict[str, str], *, endpoint: Endpoint | None = None,
                   data: Callable[[], Any] | None = None) -> aiohttp.ClientResponse:
        """One request, redirects followed by hand: the endpoint's TLS settings apply only on its
        own host, and the Authorization header is dropped once a redirect leaves its origin
        (blob storage elsewhere must not see registry credentials)."""
        first = url
        headers = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            if url.scheme != "https":
                sslarg: ssl.SSLContext | bool = True
            elif endpoint is not None and _hostport(url).lower() == endpoint.host:
                sslarg = self.ssl_for(endpoint.tls)
            else:
                sslarg = True
            try:
                resp = await self.session().request(method, url, headers=headers, allow_redirects=False,
                                                    ssl=sslarg, data=data() if data else None)
            except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
                raise RegistryError(f"failed to do request: {method} {url}: tls: {e}") from e
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise _Transient(f"failed to do request: {method} {url}: {str(e) or type(e).__name__}") from e
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                target = url.join(URL(resp.headers["Location"]))
                resp.release()
                if _origin(target) != _origin(first):
                    headers.pop("Authorization", None)
                if resp.status == 303:
                    method, data = "GET", None
                url = target
                continue
            return resp
        raise RegistryError(f"failed to do request: {method} {first}: stopped after {MAX_REDIRECTS} redirects")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _error_text(resp: aiohttp.ClientResponse) -> tuple[list[str], str]:
    """The registry's error codes and a readable message from an error response's body."""
    try:
        body = await resp.content.read(64 << 10)
    except (TimeoutError, aiohttp.ClientError):
        return [], ""
    try:
        doc = orjson.loads(body)
        errs = doc.get("errors") or []
        codes = [str(e.get("code", "")).upper() for e in errs if isinstance(e, dict)]
        msgs = [str(e.get("message") or e.get("code") or "") for e in errs if isinstance(e, dict)]
        return codes, "; ".join(m for m in msgs if m)
    except (orjson.JSONDecodeError, AttributeError):
        return [], body[:200].decode(errors="replace").strip()


def _status(resp: aiohttp.ClientResponse) -> str:
    return f"{resp.status} {resp.reason or ''}".strip()


class Remote:
    """One repository on one endpoint, as one set of credentials sees it.

    :meth:`request` answers 401 challenges (Basic, or a Bearer token from the realm), tries the
    next candidate credential when one is refused, and raises :class:`Unauthorized` when none is
    left. ``actions`` is the token scope's action list (``pull`` or ``pull,push``).
    """

    def __init__(self, transport: Transport, endpoint: Endpoint, path: str,
                 credentials: list[Credential | None] | None = None, actions: str = "pull") -> None:
        self.transport, self.endpoint, self.path = transport, endpoint, path
        self.scope = f"repository:{path}:{actions}"
        self._cands: list[Credential | None] = list(credentials) if credentials else [None]
        self._ci = 0
        self._why = ""

    def url(self, suffix: str) -> URL:
        return URL(f"{self.endpoint.url}/{self.path}{suffix}")

    def _key(self) -> tuple[str, str, str]:
        cand = self._cands[min(self._ci, len(self._cands) - 1)]
        return (self.endpoint.url, self.scope, _credential_id(cand))

    def _authorization(self) -> str | None:
        hit = self.transport.auth_cache.get(self._key())
        if hit is None:
            return None
        if hit[1] <= time.monotonic():
            self.transport.auth_cache.pop(self._key(), None)
            return None
        return hit[0]

    async def request(self, method: str, url: URL, headers: dict[str, str] | None = None, *,
                      data: Callable[[], Any] | None = None) -> aiohttp.ClientResponse:
        fresh = False
        while True:
            h = dict(headers or {})
            auth = self._authorization()
            if auth:
                h["Authorization"] = auth
            resp = await self.transport.send(method, url, h, endpoint=self.endpoint, data=data)
            if resp.status != 401:
                return resp
            challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
            _, detail = await _error_text(resp)
            resp.release()
            self.transport.auth_cache.pop(self._key(), None)
            self._why = f"unexpected status from {method} request to {url}: 401 Unauthorized" + (
                f": {detail}" if detail else "")
            if fresh:  # what we just obtained was refused: next credential
                self._ci += 1
                if any(s == "bearer" for s, _ in challenges):
                    self._why = ("pull access denied, repository does not exist or may require authorization"
                                 + (f": server message: {detail}" if detail else ""))
            await self._authorize(challenges)
            fresh = True

    async def _authorize(self, challenges: list[tuple[str, dict[str, str]]]) -> None:
        bearer = next((p for s, p in challenges if s == "bearer"), None)
        basic = next((p for s, p in challenges if s == "basic"), None)
        if bearer is None and basic is None:
            raise RegistryError(f"unsupported authentication challenge {challenges!r} from {self.endpoint.url}")
        while self._ci < len(self._cands):
            cand = self._cands[self._ci]
            if bearer is not None:
                got = await self._fetch_token(bearer, cand)
                if got is not None:
                    token, ttl = got
                    self.transport.auth_cache[self._key()] = (f"Bearer {token}", time.monotonic() + ttl)
                    return
            elif cand is not None and (cand.username or cand.password):
                value = base64.b64encode(f"{cand.username}:{cand.password}".encode()).decode()
                self.transport.auth_cache[self._key()] = (f"Basic {value}", float("inf"))
                return
            elif cand is None:
                self._why += " (no credentials for " + self.endpoint.host + ")"
            self._ci += 1
        self._ci = len(self._cands) - 1
        raise Unauthorized(self._why)

    async def _fetch_token(self, ch: dict[str, str], cand: Credential | None) -> tuple[str, float] | None:
        realm = ch.get("realm")
        if not realm:
            raise RegistryError(f"bearer challenge from {self.endpoint.url} has no realm")
        scopes = (ch.get("scope") or self.scope).split()
        if self.scope not in scopes:
            scopes.append(self.scope)
        service = ch.get("service", "")
        headers: dict[str, str] = {}
        if cand is not None and cand.identity_token:
            # An identity token is an OAuth2 refresh token (docker login's "identitytoken").
            method = "POST"
            url = URL(realm)
            form = {"grant_type": "refresh_token", "refresh_token": cand.identity_token, "service": service,
                    "scope": " ".join(scopes), "client_id": "kybernetes"}
            data: Callable[[], Any] | None = lambda: aiohttp.FormData(form)  # noqa: E731
            kind = "oauth"
        else:
            method = "GET"
            query: list[tuple[str, str]] = [("scope", s) for s in scopes]
            if service:
                query.insert(0, ("service", service))
            url = URL(realm).update_query(query)
            data = None
            if cand is not None and (cand.username or cand.password):
                headers["Authorization"] = "Basic " + base64.b64encode(
                    f"{cand.username}:{cand.password}".encode()).decode()
                kind = "oauth"
            else:
                kind = "anonymous"
        resp = await self.transport.send(method, url, headers, endpoint=self.endpoint, data=data)
        async with resp:
            if resp.status in (401, 403):
                _, detail = await _error_text(resp)
                self._why = (f"failed to authorize: failed to fetch {kind} token: unexpected status from "
                             f"{method} request to {url.with_query(None)}: {_status(resp)}"
                             + (f": {detail}" if detail else ""))
                return None
            if resp.status != 200:
                _, detail = await _error_text(resp)
                raise RegistryError(f"failed to authorize: failed to fetch {kind} token: unexpected status from "
                                    f"{method} request to {url.with_query(None)}: {_status(resp)} {detail}".strip())
            try:
                body = orjson.loads(await resp.read())
                token = body.get("token") or body.get("access_token")
                ttl = float(body.get("expires_in") or 60)
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
                raise RegistryError(f"failed to authorize: token server {url.with_query(None)} sent no token") from e
        if not token:
            raise RegistryError(f"failed to authorize: token server {url.with_query(None)} sent no token")
        # Renew a little early rather than have a long layer download start with a dying token.
        return str(token), max(1.0, ttl - min(10.0, ttl / 10))


# --------------------------------------------------------------------------- platforms


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm",
                 "i386": "386", "i686": "386"}
_ARM_VARIANTS = ("v5", "v6", "v7", "v8")


def _norm(p: Platform) -> tuple[str, str, str]:
    arch = _ARCH_ALIASES.get(p.architecture.lower(), p.architecture.lower())
    variant = p.variant.lower()
    if variant.isdigit():
        variant = "v" + variant
    if arch == "arm64" and variant == "":
        variant = "v8"  # arm64 images rarely say v8; containerd treats them as one
    elif arch == "arm" and variant == "":
        variant = "v7"
    elif arch == "amd64" and variant == "v1":
        variant = ""
    return p.os.lower(), arch, variant


def _platform_rank(have: Platform, want: Platform) -> int | None:
    """How well an image's platform fits the node: 0 exact, higher worse, None incompatible.
    An arm node runs older arm variants (v7 runs v6 and v5), as containerd allows."""
    hos, harch, hvar = _norm(have)
    wos, warch, wvar = _norm(want)
    if hos != wos or harch != warch:
        return None
    if hvar == wvar:
        return 0
    if warch == "arm" and hvar in _ARM_VARIANTS and wvar in _ARM_VARIANTS:
        gap = _ARM_VARIANTS.index(wvar) - _ARM_VARIANTS.index(hvar)
        return gap if gap > 0 else None
    return None


def select_manifest(index: dict[str, Any], platform: Platform) -> Descriptor:
    """The entry of an image index (or Docker manifest list) this node should run.

    An entry without a platform is taken only when it is the index's single image entry (an
    OCI layout's index often carries none). Raises UnsupportedImage naming what the index has."""
    best: tuple[int, int, Descriptor] | None = None
    plain: list[Descriptor] = []
    available: list[str] = []
    for i, m in enumerate(index.get("manifests") or []):
        try:
            d = Descriptor.from_json(m)
        except (KeyError, TypeError, ValueError):
            continue
        if d.media_type and d.media_type not in MANIFEST_TYPES + INDEX_TYPES:
            continue
        if d.platform is None:
            plain.append(d)
            continue
        if d.platform.os == "unknown":  # buildkit's attestation manifests
            continue
        available.append(str(d.platform))
        rank = _platform_rank(d.platform, platform)
        if rank is not None and (best is None or (rank, i) < best[:2]):
            best = (rank, i, d)
    if best is not None:
        return best[2]
    if not available and len(plain) == 1:
        return plain[0]
    have = ", ".join(sorted(set(available))) or "no platforms"
    raise UnsupportedImage(f"no match for platform in manifest: image is for {have}, "
                           f"this node is {platform}: not found")


# --------------------------------------------------------------------------- pulls


@dataclass
class PullResult:
    reference: Reference
    manifest_digest: str  # the platform manifest's digest
    manifest: dict[str, Any]
    config_digest: str
    layers: list[Descriptor]
    bytes_fetched: int  # bytes downloaded by this pull (manifests and blobs), not counting shared or stored ones
    # What the reference resolved to: the index's digest for a multi-platform image, else the
    # manifest's. This is the digest of RepoDigests (name@sha256:…), as containerd records it.
    resolved_digest: str = ""
    index: dict[str, Any] | None = None  # the index the manifest was picked from, if any


def _parse_manifest(data: bytes, content_type: str, what: str) -> tuple[str, dict[str, Any]]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise UnsupportedImage(f"{what}: manifest is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise UnsupportedImage(f"{what}: manifest is not a JSON object")
    header = content_type.split(";", 1)[0].strip().lower()
    mt = doc.get("mediaType") or ""
    if doc.get("schemaVersion") == 1 or header in SCHEMA1_TYPES or mt in SCHEMA1_TYPES:
        raise UnsupportedImage(f"{what}: Docker Image manifest version 2, schema 1 is not supported; "
                               "push the image again with a current client")
    if not mt:
        if header in MANIFEST_TYPES + INDEX_TYPES:
            mt = header
        elif "manifests" in doc:
            mt = OCI_INDEX
        elif "layers" in doc or "config" in doc:
            mt = OCI_MANIFEST
    if mt not in MANIFEST_TYPES + INDEX_TYPES:
        raise UnsupportedImage(f"{what}: unsupported manifest media type {mt or header!r}")
    return mt, doc


def _image_parts(doc: dict[str, Any], what: str) -> tuple[Descriptor, list[Descriptor]]:
    try:
        config = Descriptor.from_json(doc["config"])
        layers = [Descriptor.from_json(layer) for layer in doc.get("layers") or []]
    except (KeyError, TypeError, ValueError) as e:
        raise UnsupportedImage(f"{what}: malformed image manifest ({e})") from e
    if config.media_type not in (OCI_CONFIG, DOCKER_CONFIG):
        raise UnsupportedImage(f"{what}: config media type {config.media_type!r} is not a container image's")
    for d in [config, *layers]:
        if not is_digest(d.digest):
            raise UnsupportedImage(f"{what}: unsupported digest {d.digest!r} (only sha256 is supported)")
        if d.size < 0:
            raise UnsupportedImage(f"{what}: negative size for {d.digest}")
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise UnsupportedImage(f"{what}: unsupported layer media type {layer.media_type!r}")
    return config, layers


class _Shared:
    """A blob download that several pulls await. Cancelled only when nobody waits any more."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task, self.waiters = task, 0

    async def wait(self) -> None:
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        finally:
            self.waiters -= 1
            if self.waiters == 0 and not self.task.done():
                self.task.cancel()


class _Counter:
    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self.n, self.progress = 0, progress

    def add(self, n: int) -> None:
        self.n += n
        if self.progress is not None:
            self.progress(n)


class RegistryClient:
    """Pulls images into a ContentStore. One per node; safe to share between concurrent pulls."""

    def __init__(self, content: ContentStore, config: RegistriesConfig | None = None, *,
                 platform: Platform | None = None, max_concurrent_downloads: int = 3, retries: int = 3,
                 retry_backoff: float = 0.2, connect_timeout: float = 30.0, read_timeout: float = 60.0) -> None:
        self.content = content
        self.config = config or RegistriesConfig()
        self.platform = platform or host_platform()
        self.max_concurrent_downloads = max(1, max_concurrent_downloads)
        self.retries, self.retry_backoff = retries, retry_backoff
        self.transport = Transport(connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._inflight: dict[str, _Shared] = {}

    # ------------------------------------------------------------------ public

    async def pull(self, ref: Reference, credentials: list[Credential] | None = None,
                   progress: Callable[[int], None] | None = None) -> PullResult:
        """Fetch what ``ref`` names for this node's platform: manifest(s), config and layers, all
        verified and in the ContentStore when this returns. ``progress`` is called with the size
        of each chunk as it arrives."""
        try:
            return await self._pull(ref, credentials, _Counter(progress))
        except ImageError as e:
            raise _public(e)(f'failed to pull and unpack image "{ref}": {e}') from e

    async def resolve(self, ref: Reference, credentials: list[Credential] | None = None) -> tuple[str, str, bytes]:
        """(digest, media type, manifest bytes) of what the reference names; fetches no blobs
        and stores nothing."""
        _, digest, mt, data, _, _ = await self._resolve(ref, credentials, _Counter(None))
        return digest, mt, data

    async def close(self) -> None:
        tasks = [shared.task for shared in self._inflight.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        await self.transport.close()

    # ------------------------------------------------------------------ resolving

    def _candidates(self, endpoint: Endpoint, credentials: list[Credential] | None) -> list[Credential | None]:
        out: list[Credential | None] = [c for c in credentials or [] if host_matches(c.registry, endpoint.host)]
        if endpoint.credential is not None and endpoint.credential not in out:
            out.append(endpoint.credential)
        return out or [None]

    async def _resolve(self, ref: Reference, credentials: list[Credential] | None, counter: _Counter
                       ) -> tuple[Remote, str, str, bytes, dict[str, Any], bool]:
        if ref.digest and not is_digest(ref.digest):
            raise UnsupportedImage(f'failed to resolve reference "{ref}": unsupported digest {ref.digest} '
                                   "(only sha256 is supported)")
        endpoints = self.config.endpoints(ref.domain)
        if not endpoints:
            raise RegistryError(f'failed to resolve reference "{ref}": no endpoint configured for {ref.domain}')
        last: ImageError | None = None
        for ep in endpoints:
            remote = Remote(self.transport, ep, ep.repository(ref.path), self._candidates(ep, credentials))
            try:
                digest, mt, data, doc, stored = await self._manifest(remote, ref.object, ref.digest, str(ref), counter)
                return remote, digest, mt, data, doc, stored
            except UnsupportedImage as e:
                raise UnsupportedImage(f'failed to resolve reference "{ref}": {e}') from e
            except ImageError as e:
                # A mirror that is down, lacks the image or serves bad content: try the next
                # endpoint; the last one's error is the one reported, as containerd does.
                log.debug("resolving %s at %s: %s", ref, ep.url, e)
                last = e
        assert last is not None
        raise _public(last)(f'failed to resolve reference "{ref}": {last}') from last

    async def _manifest(self, remote: Remote, obj: str, pinned: str | None, name: str, counter: _Counter
                        ) -> tuple[str, str, bytes, dict[str, Any], bool]:
        """(digest, media type, bytes, parsed, already stored) of one manifest or index."""
        url = remote.url(f"/manifests/{obj}")
        accept = {"Accept": MANIFEST_ACCEPT}
        known: str | None = None
        resp = await remote.request("HEAD", url, accept)
        async with resp:
            if resp.status == 200:
                d = resp.headers.get("Docker-Content-Digest", "")
                known = d if is_digest(d) else None
            else:
                # HEAD has no body: a GET says why.
                pass
        if pinned and known and known != pinned:
            raise DigestMismatch(f"{name}: registry says the manifest is {known}, the reference pins {pinned}")
        have = pinned or known
        if have and resp.status == 200 and self.content.has(have):
            try:
                data = self.content.read(have)
            except DigestMismatch:
                data = b""
            if data:
                mt, doc = _parse_manifest(data, resp.headers.get("Content-Type", ""), name)
                return have, mt, data, doc, True
        resp = await remote.request("GET", url, accept)
        async with resp:
            if resp.status != 200:
                await self._raise_for(resp, name, url, "GET")
            length = resp.content_length
            if length is not None and length > MAX_MANIFEST:
                raise UnsupportedImage(f"{name}: manifest of {length} bytes is larger than {MAX_MANIFEST}")
            buf = bytearray()
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    buf += chunk
                    if len(buf) > MAX_MANIFEST:
                        raise UnsupportedImage(f"{name}: manifest is larger than {MAX_MANIFEST} bytes")
            except (TimeoutError, aiohttp.ClientError) as e:
                raise RegistryError(f"{name}: reading manifest from {url}: {e}") from e
            data = bytes(buf)
            header_digest = resp.headers.get("Docker-Content-Digest", "")
            content_type = resp.headers.get("Content-Type", "")
        counter.add(len(data))
        got = sha256_digest(data)
        if pinned and got != pinned:
            raise DigestMismatch(f"{name}: manifest digest mismatch: the reference pins {pinned}, "
                                 f"the registry's content hashes to {got}")
        if header_digest.startswith("sha256:") and header_digest != got:
            raise DigestMismatch(f"{name}: manifest digest mismatch: Docker-Content-Digest says {header_digest}, "
                                 f"the content hashes to {got}")
        mt, doc = _parse_manifest(data, content_type, name)
        return got, mt, data, doc, False

    async def _raise_for(self, resp: aiohttp.ClientResponse, name: str, url: URL, method: str) -> None:
        codes, detail = await _error_text(resp)
        if resp.status == 404 or any(c in _NOT_FOUND_CODES for c in codes):
            raise ImageNotFound(f"{name}: not found")
        if resp.status in (401, 403) or any(c in _DENIED_CODES for c in codes):
            raise Unauthorized(f"unexpected status from {method} request to {url}: {_status(resp)}"
                               + (f": {detail}" if detail else ""))
        cls = _Transient if resp.status >= 500 or resp.status == 429 else RegistryError
        raise cls(f"unexpected status from {method} request to {url}: {_status(resp)}"
                  + (f": {detail}" if detail else ""))

    # ------------------------------------------------------------------ pulling

    async def _pull(self, ref: Reference, credentials: list[Credential] | None, counter: _Counter) -> PullResult:
        remote, top, mt, data, doc, _ = await self._resolve(ref, credentials, counter)
        to_store: list[tuple[bytes, str]] = [(data, top)]
        index = None
        digest = top
        depth = 0
        while mt in INDEX_TYPES:
            depth += 1
            if depth > 4:
                raise UnsupportedImage(f"{ref}: image indexes nested too deep")
            index = doc
            desc = select_manifest(doc, self.platform)
            try:
                digest, mt, data, doc, _ = await self._manifest(remote, desc.digest, desc.digest, str(ref), counter)
            except ImageError as e:
                raise _public(e)(f'failed to resolve reference "{ref}": {e}') from e
            if len(data) != desc.size:
                raise DigestMismatch(f"{ref}: manifest {digest} is {len(data)} bytes, its index says {desc.size}")
            to_store.append((data, digest))
        config, layers = _image_parts(doc, str(ref))
        sem = asyncio.Semaphore(self.max_concurrent_downloads)
        blobs = [config, *layers]
        unique = list({d.digest: d for d in blobs}.values())
        tasks = [asyncio.ensure_future(self._blob(remote, d, counter, sem)) for d in unique]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        # Manifests last: a pull that fails half-way leaves only blobs, which nothing names.
        for blob, d in to_store:
            if not self.content.has(d):
                await asyncio.to_thread(self.content.write, blob, d)
        return PullResult(reference=ref, manifest_digest=digest, manifest=doc, config_digest=config.digest,
                          layers=layers, bytes_fetched=counter.n, resolved_digest=top, index=index)

    async def _blob(self, remote: Remote, desc: Descriptor, counter: _Counter, sem: asyncio.Semaphore) -> None:
        if self.content.has(desc.digest):
            return
        shared = self._inflight.get(desc.digest)
        if shared is not None:
            try:
                await shared.wait()
                return
            except ImageError:
                pass  # that pull's download failed; ours may fare better (another endpoint, a retry)
        if self.content.has(desc.digest):
            return
        task = asyncio.ensure_future(self._download(remote, desc, counter, sem))
        shared = self._inflight[desc.digest] = _Shared(task)

        def done(_: asyncio.Task[None]) -> None:
            if self._inflight.get(desc.digest) is shared:
                del self._inflight[desc.digest]
        task.add_done_callback(done)
        await shared.wait()

    async def _download(self, remote: Remote, desc: Descriptor, counter: _Counter, sem: asyncio.Semaphore) -> None:
        async with sem:
            url = remote.url(f"/blobs/{desc.digest}")
            fresh_retry = False
            attempt = 0
            while True:
                # The Ingest's lock may be held by another process pulling the same blob.
                ing = await asyncio.to_thread(self.content.ingest, desc.digest, desc.size)
                try:
                    if self.content.has(desc.digest):  # that other process finished it
                        return
                    resumed = False
                    while ing.offset < desc.size:
                        try:
                            resumed |= ing.offset > 0
                            await self._stream(remote, url, ing, desc, counter)
                        except _Transient as e:
                            attempt += 1
                            if attempt > self.retries:
                                raise RegistryError(f"failed to copy: {e}") from e
                            log.info("blob %s: %s; retrying from byte %d", desc.digest, e, ing.offset)
                            await asyncio.sleep(self.retry_backoff * (2 ** (attempt - 1)))
                    try:
                        await asyncio.to_thread(ing.commit)
                        return
                    except DigestMismatch as e:
                        # A partial left by an earlier attempt may be what is wrong: one fresh try.
                        if resumed and not fresh_retry:
                            fresh_retry = True
                            continue
                        raise DigestMismatch(f"failed to copy: {e}") from e
                finally:
                    # A partial is kept for the next attempt to resume; an empty one is litter.
                    ing.abort(keep=ing.offset > 0)

    async def _stream(self, remote: Remote, url: URL, ing: Ingest, desc: Descriptor, counter: _Counter) -> None:
        start = ing.offset
        headers = {"Range": f"bytes={start}-"} if start else {}
        resp = await remote.request("GET", url, headers)
        async with resp:
            if resp.status == 206:
                m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != start:
                    ing.reset()
                    raise _Transient(f"{url}: server answered a range other than the one asked for")
            elif resp.status == 200:
                if start:
                    ing.reset()  # the server would not resume: start again
            elif resp.status == 416:
                ing.reset()
                raise _Transient(f"{url}: range not satisfiable")
            elif resp.status == 404:
                raise ImageNotFound(f"failed to copy: content at {url} not found")
            else:
                await self._raise_for(resp, desc.digest, url, "GET")
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    ing.write(chunk)
                    counter.add(len(chunk))
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                raise _Transient(f"reading {url}: {str(e) or type(e).__name__}") from e
        if ing.offset < desc.size:
            raise _Transient(f"reading {url}: connection closed after {ing.offset} of {desc.size} bytes")
