"""Encryption at rest: upstream's EncryptionConfiguration and a Store that applies it.

The file format is upstream's (apiVersion apiserver.config.k8s.io/v1, kind
EncryptionConfiguration), so a file written for kube-apiserver's
--encryption-provider-config works unchanged, and so does the documented key
rotation. Values are stored in upstream's format as well:

    k8s:enc:aescbc:v1:<key name>:<16-byte IV><AES-CBC, PKCS#7 padded>
    k8s:enc:aesgcm:v1:<key name>:<12-byte nonce><AES-GCM ciphertext and tag>
    k8s:enc:secretbox:v1:<key name>:<24-byte nonce><XSalsa20-Poly1305 box>

AES-GCM authenticates the storage key (/registry/secrets/<ns>/<name>, the same
key upstream keeps in etcd), so a value copied to another key does not decrypt;
AES-CBC and secretbox, as upstream, do not. The identity provider stores plain
bytes and reads only what carries no k8s:enc: prefix.

For each resource the first provider (and its first key) writes; every provider
and key may read, which is what makes rotation work: put a new key first,
restart, rewrite the data (EncryptedStore.reencrypt), then drop the old key.
Resources no rule names are stored plain, and reading encrypted bytes for one is
an error rather than garbage handed to the JSON decoder.

This module owns the parser (parse_config, load_config), the per-resource
Transformer, EncryptedStore (a Store wrapping any other Store) and
generate_config, which writes the key a new server starts with.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kybernetes.storage.base import KV, Event, KeyNotFound, RevisionConflict, Store, StoreError, Watch

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
ENCRYPTED = b"k8s:enc:"

_AES_SIZES = (16, 24, 32)
_SECRETBOX_SIZES = (32,)


class EncryptionConfigError(ValueError):
    """The encryption configuration file is unusable; the message lists every problem."""


class DecryptionError(StoreError):
    """A stored value could not be read back with the configured providers."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"cannot decrypt {key}: {reason}")
        self.key = key
        self.reason = reason


# -- ciphers -----------------------------------------------------------------


class _Failed(Exception):
    """One key could not open one value (wrong key, tampering or truncation)."""


class _AESCBC:
    def __init__(self, key: bytes) -> None:
        self._algo = algorithms.AES(key)

    def seal(self, data: bytes, context: bytes) -> bytes:
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        enc = Cipher(self._algo, modes.CBC(iv)).encryptor()
        return iv + enc.update(padder.update(data) + padder.finalize()) + enc.finalize()

    def open(self, data: bytes, context: bytes) -> bytes:
        if len(data) < 32 or len(data) % 16:
            raise _Failed("the stored data is not a whole number of AES blocks")
        dec = Cipher(self._algo, modes.CBC(data[:16])).decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            return unpadder.update(dec.update(data[16:]) + dec.finalize()) + unpadder.finalize()
        except ValueError:
            raise _Failed("invalid padding (wrong key or corrupted data)") from None


class _AESGCM:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, data: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data, context)

    def open(self, data: bytes, context: bytes) -> bytes:
        if len(data) < 12 + 16:
            raise _Failed("the stored data is shorter than a nonce and a tag")
        try:
            return self._aead.decrypt(data[:12], data[12:], context)
        except InvalidTag:
            raise _Failed("authentication failed (wrong key, corrupted data or moved value)") from None


class _Secretbox:
    def __init__(self, key: bytes) -> None:
        from nacl.secret import SecretBox  # checked by _secretbox_available() before we get here

        self._box = SecretBox(key)

    def seal(self, data: bytes, context: bytes) -> bytes:
        # NaCl's layout is upstream's: the nonce, then the Poly1305 tag and the ciphertext.
        return bytes(self._box.encrypt(data, os.urandom(24)))

    def open(self, data: bytes, context: bytes) -> bytes:
        from nacl.exceptions import CryptoError

        if len(data) < 24 + 16:
            raise _Failed("the stored data is shorter than a nonce and a tag")
        try:
            return self._box.decrypt(data)
        except CryptoError:
            raise _Failed("authentication failed (wrong key or corrupted data)") from None


def _secretbox_available() -> bool:
    try:
        import nacl.secret  # noqa: F401
    except ImportError:
        return False
    return True


_CIPHERS: dict[str, tuple[Callable[[bytes], Any], tuple[int, ...]]] = {
    "aescbc": (_AESCBC, _AES_SIZES),
    "aesgcm": (_AESGCM, _AES_SIZES),
    "secretbox": (_Secretbox, _SECRETBOX_SIZES),
}


# -- transformers ------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """One entry of a rule's providers list: a cipher kind and its named keys, in order."""

    kind: str  # aescbc | aesgcm | secretbox | identity
    keys: tuple[tuple[str, Any], ...] = ()  # (name, cipher)

    @property
    def prefix(self) -> bytes:
        return b"" if self.kind == "identity" else b"k8s:enc:%s:v1:" % self.kind.encode()


@dataclass(frozen=True)
class Transformer:
    """The providers of one resource: the first writes, any may read."""

    providers: tuple[Provider, ...]

    def encrypt(self, data: bytes, key: str) -> bytes:
        p = self.providers[0]
        if p.kind == "identity":
            return data
        name, cipher = p.keys[0]
        return p.prefix + name.encode() + b":" + cipher.seal(data, key.encode())

    def decrypt(self, data: bytes, key: str) -> tuple[bytes, bool]:
        """(plain value, stale): stale when not written by the first provider and key."""
        failures: list[str] = []
        for i, p in enumerate(self.providers):
            if p.kind == "identity":
                if not data.startswith(ENCRYPTED):
                    return data, i != 0
                continue
            if not data.startswith(p.prefix):
                continue
            rest = data[len(p.prefix) :]
            for j, (name, cipher) in enumerate(p.keys):
                tag = name.encode() + b":"
                if not rest.startswith(tag):
                    continue
                try:
                    return cipher.open(rest[len(tag) :], key.encode()), i != 0 or j != 0
                except _Failed as e:
                    # The same provider may be listed twice (rotating between two
                    # aescbc entries): a failure here must not stop a later match.
                    failures.append(f"{p.kind} key {name!r}: {e}")
        if failures:
            raise DecryptionError(key, "; ".join(failures))
        raise DecryptionError(key, _no_match(data, self.providers))


def _no_match(data: bytes, providers: tuple[Provider, ...]) -> str:
    if not data.startswith(ENCRYPTED):
        return "the value is not encrypted and the identity provider is not configured to read it"
    # k8s:enc:<provider>:v1:<key name>:...
    parts = data.split(b":", 5)
    if len(parts) < 6:
        return "the value has a malformed k8s:enc: prefix"
    kind, keyname = parts[2].decode(errors="replace"), parts[4].decode(errors="replace")
    configured = [p.kind for p in providers]
    if kind not in configured:
        return f"it was written by the {kind} provider, which the encryption configuration does not list"
    return f"it was written with {kind} key {keyname!r}, which the encryption configuration does not list"


# An unconfigured resource is stored plain; encrypted bytes there are an error, as upstream.
IDENTITY = Transformer((Provider("identity"),))


# -- the configuration file --------------------------------------------------


def _parse_gr(resource: str) -> tuple[str, str]:
    """'deployments.apps' -> ('apps', 'deployments'); 'secrets' -> ('', 'secrets'); '*.*' -> ('*', '*')."""
    res, _, group = resource.partition(".")
    return group, res


@dataclass
class EncryptionConfig:
    """Parsed EncryptionConfiguration: group/resource (wildcards allowed) -> Transformer."""

    rules: dict[tuple[str, str], Transformer] = field(default_factory=dict)
    source: str = ""

    def transformer_for(self, group_resource: str) -> Transformer:
        """The transformer of 'secrets' or 'deployments.apps': exact rule, then '*.group', then '*.*'."""
        group, res = _parse_gr(group_resource)
        rules = self.rules
        return rules.get((group, res)) or rules.get((group, "*")) or rules.get(("*", "*")) or IDENTITY


def _check_fields(obj: Any, path: str, allowed: set[str], errors: list[str]) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        errors.append(f"{path}: must be a mapping")
        return {}
    for k in obj:
        if k not in allowed:
            errors.append(f"{path}: unknown field {k!r}")
    return obj


def _parse_keys(kind: str, spec: Any, path: str, errors: list[str]) -> tuple[tuple[str, Any], ...]:
    make, sizes = _CIPHERS[kind]
    spec = _check_fields(spec, path, {"keys"}, errors)
    keys = spec.get("keys")
    if not isinstance(keys, list) or not keys:
        errors.append(f"{path}.keys: at least one key is required")
        return ()
    out = []
    for i, k in enumerate(keys):
        kp = f"{path}.keys[{i}]"
        k = _check_fields(k, kp, {"name", "secret"}, errors)
        name, secret = k.get("name"), k.get("secret")
        if not isinstance(name, str) or not name:
            errors.append(f"{kp}.name: a key needs a name")
        if not isinstance(secret, str) or not secret:
            errors.append(f"{kp}.secret: a key needs a secret (base64)")
            continue
        try:
            raw = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            errors.append(f"{kp}.secret: not valid base64")
            continue
        if len(raw) not in sizes:
            want = ", ".join(map(str, sizes))
            errors.append(f"{kp}.secret: the key is {len(raw)} bytes; {kind} needs {want} bytes")
            continue
        if isinstance(name, str) and name:
            out.append((name, make(raw)))
    return tuple(out)


def _parse_provider(spec: Any, path: str, errors: list[str]) -> Provider | None:
    spec = _check_fields(spec, path, {"aescbc", "aesgcm", "secretbox", "identity", "kms"}, errors)
    kinds = list(spec)
    if len(kinds) != 1:
        errors.append(f"{path}: name exactly one of aescbc, aesgcm, secretbox, identity (found {len(kinds)})")
        return None
    kind = kinds[0]
    if kind == "kms":
        errors.append(f"{path}.kms: KMS providers are not supported; use aescbc, aesgcm or secretbox")
        return None
    if kind == "identity":
        _check_fields(spec[kind], f"{path}.identity", set(), errors)
        return Provider("identity")
    if kind == "secretbox" and not _secretbox_available():
        errors.append(f"{path}.secretbox: the secretbox provider needs the PyNaCl package (pip install pynacl)")
        return None
    return Provider(kind, _parse_keys(kind, spec[kind], f"{path}.{kind}", errors))


def _check_resources(resources: list[Any], path: str, errors: list[str]) -> list[str]:
    names: list[str] = []
    for i, r in enumerate(resources):
        rp = f"{path}[{i}]"
        if not isinstance(r, str) or not r:
            errors.append(f"{rp}: must be a resource name such as secrets or deployments.apps")
            continue
        group, res = _parse_gr(r)
        if r != r.lower():
            errors.append(f"{rp}: {r!r}: resource names are lower case")
        elif r == "*":
            errors.append(f"{rp}: '*': use '*.' for every core resource or '*.*' for every resource")
        elif group == "events.k8s.io":
            errors.append(f"{rp}: {r!r}: events.k8s.io events are stored as core events; use 'events'")
        elif group == "extensions":
            errors.append(f"{rp}: {r!r}: the extensions group has been removed")
        elif group == "*" and res != "*":
            errors.append(f"{rp}: {r!r}: one resource across every group is not supported")
        else:
            names.append(r)
    grs = [_parse_gr(r) for r in names]
    if len(set(grs)) != len(grs):
        errors.append(f"{path}: the same resource is listed more than once")
    wild = {g for g, r in grs if r == "*"}
    if ("*" in wild and len(grs) > 1) or any(g in wild and r != "*" for g, r in grs):
        errors.append(f"{path}: overlapping resources (such as 'secrets' and '*.') in one list would mask each other")
    return names


def parse_config(text: str | bytes, source: str = "<config>") -> EncryptionConfig:
    """Parse an EncryptionConfiguration from YAML or JSON; EncryptionConfigError lists every problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EncryptionConfigError(f"{source}: not valid YAML or JSON: {e}") from None
    errors: list[str] = []
    doc = _check_fields(doc, "(top level)", {"apiVersion", "kind", "resources"}, errors)
    if errors:
        raise EncryptionConfigError(f"{source}: " + "; ".join(errors))
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        raise EncryptionConfigError(
            f"{source}: expected apiVersion {API_VERSION} and kind {KIND}, "
            f"got {doc.get('apiVersion')!r} and {doc.get('kind')!r}"
        )
    entries = doc.get("resources")
    if not isinstance(entries, list) or not entries:
        raise EncryptionConfigError(f"{source}: resources: at least one entry is required")
    chains: dict[tuple[str, str], list[Provider]] = {}
    for i, entry in enumerate(entries):
        path = f"resources[{i}]"
        entry = _check_fields(entry, path, {"resources", "providers"}, errors)
        resources, providers = entry.get("resources"), entry.get("providers")
        if not isinstance(resources, list) or not resources:
            errors.append(f"{path}.resources: at least one resource is required")
            resources = []
        if not isinstance(providers, list) or not providers:
            errors.append(f"{path}.providers: at least one provider is required")
            providers = []
        names = _check_resources(resources, f"{path}.resources", errors)
        parsed = [_parse_provider(p, f"{path}.providers[{j}]", errors) for j, p in enumerate(providers)]
        chain = [p for p in parsed if p is not None]
        for name in names:
            group, res = _parse_gr(name)
            # A resource that an earlier '*.group' or '*.*' rule already covers would never be used.
            for mask in ((group, "*"), ("*", "*")):
                if mask in chains:
                    shown = f"{mask[1]}.{mask[0]}"
                    errors.append(f"{path}.resources: {name!r} is masked by the earlier rule {shown!r}")
                    break
            else:
                # A resource named in several rules reads with all of their providers, in order.
                chains.setdefault((group, res), []).extend(chain)
    if errors:
        raise EncryptionConfigError(f"{source}: " + "; ".join(errors))
    rules = {gr: Transformer(tuple(chain)) for gr, chain in chains.items()}
    return EncryptionConfig(rules, source)


def load_config(path: str | os.PathLike[str]) -> EncryptionConfig:
    """Read and parse an --encryption-provider-config file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise EncryptionConfigError(f"cannot read encryption provider configuration {path}: {e.strerror}") from None
    if not data.strip():
        raise EncryptionConfigError(f"{path}: the encryption provider configuration is empty")
    return parse_config(data, path)


def generate_config(
    path: str | os.PathLike[str], provider: str = "aescbc", resources: tuple[str, ...] = ("secrets",)
) -> None:
    """Write a new EncryptionConfiguration with one fresh 32-byte key, readable by its owner only.

    Refuses to replace an existing file (FileExistsError): that file's key is the
    only way back into the data it encrypted. The file is durable before this
    returns, for the same reason.
    """
    if provider not in _CIPHERS:
        raise ValueError(f"unknown provider {provider!r}")
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "resources": [
            {
                "resources": list(resources),
                "providers": [
                    {provider: {"keys": [{"name": "key1", "secret": base64.b64encode(os.urandom(32)).decode()}]}},
                    # Reads what was stored before encryption was turned on.
                    {"identity": {}},
                ],
            }
        ],
    }
    text = (
        "# The keys that encrypt data at rest. Losing this file loses that data: back it up\n"
        "# with the store. To rotate, add a new key first, restart, rewrite the data, then\n"
        "# remove the old key (as the Kubernetes documentation describes).\n"
    ) + yaml.safe_dump(doc, sort_keys=False)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # atomic, and fails rather than overwrite
    finally:
        os.unlink(tmp)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- the store ---------------------------------------------------------------


def registry_resolver(registry: Any = None) -> Callable[[str], str | None]:
    """Storage key -> 'secrets' / 'deployments.apps', by the kinds registry's storage prefixes.

    Keys are /registry/<storage>/...; the group is the one objects are stored as
    (core for events.k8s.io Events, as upstream). Kinds added later (custom
    resources) are found on first use; keys of no known kind give None.
    """
    if registry is None:
        from kybernetes.api.kinds import builtin_registry

        registry = builtin_registry()
    cache: dict[str, str] = {}

    def resource_of(key: str) -> str | None:
        i = key.find("/", 10)  # len("/registry/")
        if i < 0 or not key.startswith("/registry/"):
            return None
        prefix = key[: i + 1]
        gr = cache.get(prefix)
        if gr is None:
            for k in registry.kinds:
                if k.storage_prefix == prefix:
                    group = k.stored_api_version.rpartition("/")[0]
                    gr = cache[prefix] = f"{key[10:i]}.{group}" if group else key[10:i]
                    break
        return gr

    return resource_of


class EncryptedStore(Store):
    """A Store that encrypts values on the way into `inner` and decrypts them on the way out.

    `resource_of` maps a storage key to the resource the configuration names
    ('secrets', 'deployments.apps') or None; the default reads the built-in kinds
    registry. Revisions, compaction and keys are the inner store's, untouched.
    """

    def __init__(
        self, inner: Store, config: EncryptionConfig, resource_of: Callable[[str], str | None] | None = None
    ) -> None:
        self.inner = inner
        self.config = config
        self.resource_of = resource_of or registry_resolver()
        self._by_resource: dict[str | None, Transformer] = {None: IDENTITY}
        # Storage prefix ("/registry/pods/") -> its transformer: one dict lookup per read or write.
        self._by_prefix: dict[str, Transformer] = {}

    def __getattr__(self, name: str) -> Any:
        # Backend extras (SqliteStore.check, .path) stay reachable through the wrapper.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def transformer(self, key: str) -> Transformer:
        i = key.find("/", 10)  # the storage prefix: "/registry/<resource>/"
        prefix = key[: i + 1] if i > 0 else key
        t = self._by_prefix.get(prefix)
        if t is None:
            gr = self.resource_of(key)
            t = self._by_resource.get(gr)
            if t is None:
                t = self._by_resource[gr] = self.config.transformer_for(gr)  # type: ignore[arg-type]
            if gr is not None:  # a kind not known yet (a custom resource to come) is looked up again
                self._by_prefix[prefix] = t
        return t

    def _open(self, kv: KV) -> KV:
        t = self.transformer(kv.key)
        if t is IDENTITY and not kv.value.startswith(ENCRYPTED):
            return kv
        value, _ = t.decrypt(kv.value, kv.key)
        return KV(kv.key, value, kv.mod_revision, kv.create_revision)

    def _event(self, ev: Event) -> Event:
        return Event(ev.type, self._open(ev.kv), self._open(ev.prev) if ev.prev is not None else None)

    # -- reads ---------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        kv = await self.inner.get(key)
        return None if kv is None else self._open(kv)

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_key: str = ""
    ) -> tuple[list[KV], int, bool]:
        kvs, rev, more = await self.inner.list(prefix, revision=revision, limit=limit, start_key=start_key)
        return [self._open(kv) for kv in kvs], rev, more

    async def count(self, prefix: str) -> int:
        return await self.inner.count(prefix)

    def watch(self, prefix: str, after_revision: int) -> Watch:
        return EncryptedWatch(self, self.inner.watch(prefix, after_revision))

    async def current_revision(self) -> int:
        return await self.inner.current_revision()

    async def compacted_revision(self) -> int:
        return await self.inner.compacted_revision()

    # -- writes --------------------------------------------------------------

    async def create(self, key: str, value: bytes) -> KV:
        kv = await self.inner.create(key, self.transformer(key).encrypt(value, key))
        return KV(key, value, kv.mod_revision, kv.create_revision)

    async def update(self, key: str, value: bytes, expected_revision: int) -> KV:
        try:
            kv = await self.inner.update(key, self.transformer(key).encrypt(value, key), expected_revision)
        except RevisionConflict as e:
            raise self._conflict(e) from None
        return KV(key, value, kv.mod_revision, kv.create_revision)

    async def delete(self, key: str, expected_revision: int = 0) -> KV:
        try:
            return self._open(await self.inner.delete(key, expected_revision))
        except RevisionConflict as e:
            raise self._conflict(e) from None

    def _conflict(self, e: RevisionConflict) -> RevisionConflict:
        return RevisionConflict(e.key, e.expected, self._open(e.current) if e.current is not None else None)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def close(self) -> None:
        await self.inner.close()

    # -- rotation ------------------------------------------------------------

    async def stale(self, key: str) -> bool:
        """Whether key's stored value was written by other than the current first provider and key.

        The API server skips no-op updates; upstream still writes a stale value, which
        is what lets `kubectl replace` of unchanged objects re-encrypt them.
        """
        kv = await self.inner.get(key)
        return kv is not None and self.transformer(key).decrypt(kv.value, key)[1]

    async def reencrypt(self, prefix: str = "/registry/", page: int = 500) -> int:
        """Rewrite every stale value under prefix with the current first provider; how many were rewritten.

        A value written concurrently is skipped: that write already used the current
        provider. Each rewrite is a MODIFIED event with an unchanged object, as upstream.
        """
        done, start = 0, ""
        while True:
            kvs, _, more = await self.inner.list(prefix, limit=page, start_key=start)
            for kv in kvs:
                t = self.transformer(kv.key)
                value, stale = t.decrypt(kv.value, kv.key)
                if not stale:
                    continue
                try:
                    await self.inner.update(kv.key, t.encrypt(value, kv.key), kv.mod_revision)
                except (RevisionConflict, KeyNotFound):
                    continue
                done += 1
            if not more:
                return done
            start = kvs[-1].key + "\x00"


class EncryptedWatch(Watch):
    """The inner store's watch, with values (and previous values) decrypted batch by batch."""

    def __init__(self, store: EncryptedStore, inner: Watch) -> None:
        super().__init__()
        self._store = store
        self._inner = inner

    async def _fetch(self) -> list[Event]:
        return [self._store._event(ev) for ev in await self._inner.next_batch()]

    def close(self) -> None:
        self._inner.close()

    @property
    def closed(self) -> bool:
        return self._inner.closed
