"""Encryption at rest: the EncryptionConfiguration parser, the providers' formats, EncryptedStore."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from kybernetes.storage import ADDED, DELETED, KV, MODIFIED, RevisionConflict
from kybernetes.storage.encryption import (
    DecryptionError,
    EncryptedStore,
    EncryptionConfigError,
    generate_config,
    load_config,
    parse_config,
    registry_resolver,
)
from kybernetes.storage.sqlite import SqliteStore

from .test_watch import collect

SECRET = "/registry/secrets/default/db-password"
MARKER = b"hunter2-plaintext-marker"
K1 = base64.b64encode(b"1" * 32).decode()
K2 = base64.b64encode(b"2" * 32).decode()


def config(*providers: str, resources: str = "[secrets]") -> str:
    return f"""
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: {resources}
  providers: [{", ".join(providers)}]
"""


def aes(kind: str, *keys: tuple[str, str]) -> str:
    return f"{{{kind}: {{keys: [{', '.join(f'{{name: {n}, secret: {s}}}' for n, s in keys)}]}}}}"


IDENTITY = "{identity: {}}"


@pytest.fixture
async def inner(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    yield s
    await s.close()


def enc(inner: SqliteStore, text: str) -> EncryptedStore:
    return EncryptedStore(inner, parse_config(text))


@pytest.mark.parametrize("kind", ["aescbc", "aesgcm", "secretbox"])
async def test_round_trip_each_provider(inner: SqliteStore, kind: str) -> None:
    s = enc(inner, config(aes(kind, ("key1", K1)), IDENTITY))
    kv = await s.create(SECRET, MARKER)
    assert kv == KV(SECRET, MARKER, 1, 1)
    raw = (await inner.get(SECRET)).value
    assert raw.startswith(f"k8s:enc:{kind}:v1:key1:".encode()) and MARKER not in raw
    assert (await s.get(SECRET)).value == MARKER
    for size in (0, 1, 15, 16, 17, 4096):  # around the AES block size
        await s.update(SECRET, b"x" * size, 0)
        assert (await s.get(SECRET)).value == b"x" * size
    # Fresh randomness per write: the same value never encrypts the same way twice.
    await s.update(SECRET, MARKER, 0)
    first = (await inner.get(SECRET)).value
    await s.update(SECRET, MARKER, 0)
    assert (await inner.get(SECRET)).value != first


async def test_identity_first_stores_plain(inner: SqliteStore) -> None:
    s = enc(inner, config(IDENTITY, aes("aescbc", ("key1", K1))))
    await s.create(SECRET, MARKER)
    assert (await inner.get(SECRET)).value == MARKER


async def test_aesgcm_binds_the_value_to_its_key(inner: SqliteStore) -> None:
    s = enc(inner, config(aes("aesgcm", ("key1", K1))))
    await s.create(SECRET, MARKER)
    # An attacker with write access moves the ciphertext to a key they can read.
    await inner.create("/registry/secrets/default/copy", (await inner.get(SECRET)).value)
    with pytest.raises(DecryptionError, match="authentication failed"):
        await s.get("/registry/secrets/default/copy")


async def test_sqlite_files_hold_no_plaintext(tmp_path: Path) -> None:
    inner = SqliteStore(tmp_path / "state.db")
    s = enc(inner, config(aes("aescbc", ("key1", K1)), IDENTITY))
    await s.create(SECRET, b'{"data":{"password":"' + MARKER + b'"}}')
    await s.update(SECRET, b'{"data":{"password":"' + MARKER + b'-v2"}}', 0)
    await s.create("/registry/configmaps/default/plain", b"configmap-plain-marker")

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("state.db"))

    assert (tmp_path / "state.db-wal").exists()
    seen = files()
    assert b"configmap-plain-marker" in seen  # the scan does see stored values
    assert MARKER not in seen
    await s.delete(SECRET)
    await s.close()  # checkpoints the WAL into the main file
    seen = files()
    assert b"configmap-plain-marker" in seen and MARKER not in seen


async def test_legacy_plain_values_read_then_encrypted_when_rewritten(inner: SqliteStore) -> None:
    await inner.create(SECRET, MARKER)  # written before encryption was turned on
    s = enc(inner, config(aes("aescbc", ("key1", K1)), IDENTITY))
    assert (await s.get(SECRET)).value == MARKER
    assert await s.stale(SECRET)
    await s.update(SECRET, MARKER, 0)
    assert (await inner.get(SECRET)).value.startswith(b"k8s:enc:aescbc:v1:key1:")
    assert not await s.stale(SECRET)
    # Without identity in the list, plain data is refused, as upstream.
    await inner.create("/registry/secrets/default/old", MARKER)
    strict = enc(inner, config(aes("aescbc", ("key1", K1))))
    with pytest.raises(DecryptionError, match="not encrypted and the identity provider"):
        await strict.get("/registry/secrets/default/old")


async def test_rotation(inner: SqliteStore) -> None:
    old = enc(inner, config(aes("aescbc", ("key1", K1)), IDENTITY))
    names = [f"/registry/secrets/ns/s{i}" for i in range(7)]
    for n in names:
        await old.create(n, n.encode() + MARKER)
    await inner.create("/registry/secrets/ns/legacy", b"legacy")

    # Step 1: the new key goes first, the old one stays to read with; restart.
    both = enc(inner, config(aes("aescbc", ("key2", K2), ("key1", K1)), IDENTITY))
    for n in names:
        assert (await both.get(n)).value == n.encode() + MARKER
        assert await both.stale(n)
    # Step 2: rewrite everything (paged, to cross page boundaries).
    before = await inner.current_revision()
    assert await both.reencrypt("/registry/secrets/", page=3) == len(names) + 1
    assert await inner.current_revision() == before + len(names) + 1
    assert await both.reencrypt("/registry/secrets/") == 0
    for n in names:
        assert (await inner.get(n)).value.startswith(b"k8s:enc:aescbc:v1:key2:")
    # Step 3: drop the old key; everything still reads.
    new = enc(inner, config(aes("aescbc", ("key2", K2))))
    kvs, _, _ = await new.list("/registry/secrets/")
    assert sorted(kv.value for kv in kvs) == sorted([n.encode() + MARKER for n in names] + [b"legacy"])
    # The old configuration cannot read what the new key wrote, and says which key it lacks.
    with pytest.raises(DecryptionError, match=r"aescbc key 'key2'.*does not list"):
        await old.get(names[0])


async def test_rotation_across_provider_entries(inner: SqliteStore) -> None:
    old = enc(inner, config(aes("aescbc", ("key1", K1))))
    await old.create(SECRET, MARKER)
    s = enc(inner, config(aes("secretbox", ("key2", K2)), aes("aescbc", ("key1", K1))))
    assert (await s.get(SECRET)).value == MARKER
    assert await s.reencrypt() == 1
    assert (await inner.get(SECRET)).value.startswith(b"k8s:enc:secretbox:v1:key2:")


@pytest.mark.parametrize("kind,reason", [("aescbc", "invalid padding"), ("aesgcm", "authentication failed"),
                                          ("secretbox", "authentication failed")])
async def test_wrong_key_is_a_clear_error(inner: SqliteStore, kind: str, reason: str) -> None:
    await enc(inner, config(aes(kind, ("key1", K1)))).create(SECRET, MARKER * 4)
    wrong = enc(inner, config(aes(kind, ("key1", K2))))
    with pytest.raises(DecryptionError, match=f"cannot decrypt {SECRET}: {kind} key 'key1': {reason}") as e:
        await wrong.get(SECRET)
    assert e.value.key == SECRET
    with pytest.raises(DecryptionError):
        await wrong.list("/registry/")


async def test_watch_events_are_decrypted(inner: SqliteStore) -> None:
    s = enc(inner, config(aes("aesgcm", ("key1", K1))))
    w = s.watch("/registry/", 0)
    await s.create(SECRET, b"v1")
    await s.update(SECRET, b"v2", 1)
    await s.create("/registry/configmaps/default/c", b"plain")
    await s.delete(SECRET, 2)
    evs = await collect(w, 4)
    assert [(e.type, e.kv.value, e.prev and e.prev.value) for e in evs] == [
        (ADDED, b"v1", None), (MODIFIED, b"v2", b"v1"), (ADDED, b"plain", None), (DELETED, b"v2", b"v2")]
    assert [e.kv.mod_revision for e in evs] == [1, 2, 3, 4]
    w.close()
    assert w.closed
    # Replayed history (from the inner store's log) is decrypted the same way.
    async with s.watch("/registry/secrets/", 1) as again:
        assert [e.kv.value for e in await collect(again, 2)] == [b"v2", b"v2"]


async def test_unconfigured_keys_pass_through(inner: SqliteStore) -> None:
    s = enc(inner, config(aes("aescbc", ("key1", K1))))
    for key in ("/registry/configmaps/default/c", "/registry/pods/default/p", "/not-a-resource"):
        await s.create(key, MARKER)
        assert (await inner.get(key)).value == MARKER
    assert await s.count("/registry/") == 2
    # Encrypted bytes where no rule applies (a resource dropped from the config) fail loudly.
    await enc(inner, config(aes("aescbc", ("key1", K1)), resources="[configmaps]")).create(
        "/registry/configmaps/default/was-encrypted", MARKER)
    with pytest.raises(DecryptionError, match="does not list"):
        await s.get("/registry/configmaps/default/was-encrypted")


async def test_store_results_carry_plaintext(inner: SqliteStore) -> None:
    s = enc(inner, config(aes("aescbc", ("key1", K1))))
    await s.create(SECRET, b"a")
    kv = await s.update(SECRET, b"b", 1)
    assert kv == KV(SECRET, b"b", 2, 1)
    with pytest.raises(RevisionConflict) as e:
        await s.update(SECRET, b"c", 1)
    assert e.value.current == KV(SECRET, b"b", 2, 1)
    with pytest.raises(RevisionConflict) as e:
        await s.delete(SECRET, 1)
    assert e.value.current.value == b"b"
    assert await s.delete(SECRET) == KV(SECRET, b"b", 3, 1)
    assert await s.check() == []  # backend extras reach the inner store


async def test_wildcard_rules(inner: SqliteStore) -> None:
    text = """
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers: [{aesgcm: {keys: [{name: s, secret: %s}]}}]
- resources: ["*.apps"]
  providers: [{aescbc: {keys: [{name: apps, secret: %s}]}}]
- resources: ["*."]
  providers: [{secretbox: {keys: [{name: core, secret: %s}]}}]
""" % (K1, K1, K2)
    s = enc(inner, text)
    expect = {
        "/registry/secrets/ns/a": b"k8s:enc:aesgcm:v1:s:",
        "/registry/deployments/ns/a": b"k8s:enc:aescbc:v1:apps:",
        "/registry/configmaps/ns/a": b"k8s:enc:secretbox:v1:core:",
        "/registry/jobs/ns/a": b"{",  # batch: no rule
        "/registry/events/ns/a": b"k8s:enc:secretbox:v1:core:",  # events are core events
    }
    for key, prefix in expect.items():
        await s.create(key, b"{}")
        assert (await inner.get(key)).value.startswith(prefix), key
    kvs, _, _ = await s.list("/registry/")
    assert {kv.value for kv in kvs} == {b"{}"}

    everything = enc(inner, config(aes("aescbc", ("k", K1)), resources='["*.*"]'))
    await everything.create("/registry/leases/ns/l", b"{}")
    assert (await inner.get("/registry/leases/ns/l")).value.startswith(b"k8s:enc:aescbc:v1:k:")


def test_registry_resolver() -> None:
    of = registry_resolver()
    assert of("/registry/secrets/ns/x") == "secrets"
    assert of("/registry/deployments/ns/x") == "deployments.apps"
    assert of("/registry/horizontalpodautoscalers/ns/x") == "horizontalpodautoscalers.autoscaling"
    assert of("/registry/events/ns/x") == "events"
    assert of("/registry/clusterroles/admin") == "clusterroles.rbac.authorization.k8s.io"
    assert of("/registry/nosuchthing/x") is None
    assert of("/elsewhere/secrets/x") is None


def test_json_config_and_repeated_resources() -> None:
    doc = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration", "resources": [
        {"resources": ["secrets"], "providers": [{"aescbc": {"keys": [{"name": "a", "secret": K1}]}}]},
        {"resources": ["secrets", "configmaps"], "providers": [{"identity": {}}]},
    ]}
    cfg = parse_config(json.dumps(doc))
    # A resource named twice reads with both rules' providers, the first rule's first writing.
    assert [p.kind for p in cfg.transformer_for("secrets").providers] == ["aescbc", "identity"]
    assert [p.kind for p in cfg.transformer_for("configmaps").providers] == ["identity"]


@pytest.mark.parametrize("text,message", [
    ("", "expected apiVersion apiserver.config.k8s.io/v1 and kind EncryptionConfiguration"),
    ("[1, 2", "not valid YAML or JSON"),
    ("apiVersion: v1\nkind: EncryptionConfiguration\nresources: []", "expected apiVersion"),
    ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration", "at least one entry"),
    (config(aes("aescbc", ("key1", base64.b64encode(b"x" * 20).decode()))),
     r"providers\[0\].aescbc.keys\[0\].secret: the key is 20 bytes; aescbc needs 16, 24, 32 bytes"),
    (config(aes("aesgcm", ("key1", base64.b64encode(b"x" * 8).decode()))), "aesgcm needs 16, 24, 32 bytes"),
    (config(aes("secretbox", ("key1", base64.b64encode(b"x" * 16).decode()))), "secretbox needs 32 bytes"),
    (config(aes("aescbc", ("key1", "not*base64")), IDENTITY), "keys\\[0\\].secret: not valid base64"),
    (config("{aescbc: {keys: [{name: key1}]}}"), "a key needs a secret"),
    (config(f"{{aescbc: {{keys: [{{secret: {K1}}}]}}}}"), "a key needs a name"),
    (config("{aescbc: {keys: []}}"), "aescbc.keys: at least one key is required"),
    (config("{aescbc: {}}"), "aescbc.keys: at least one key is required"),
    (config(f"{{aescbc: {{keys: [{{name: a, secret: {K1}, typo: 1}}]}}}}"), "unknown field 'typo'"),
    (config("{}"), "name exactly one of"),
    (config(f"{{identity: {{}}, aescbc: {{keys: [{{name: a, secret: {K1}}}]}}}}"), "name exactly one of"),
    (config("{kms: {name: x, endpoint: 'unix:///tmp/k.sock'}}"), "KMS providers are not supported"),
    (config(IDENTITY, resources="[]"), "at least one resource is required"),
    (config(IDENTITY, resources="[Secrets]"), "lower case"),
    (config(IDENTITY, resources='["*"]'), "use '\\*.' for every core resource"),
    (config(IDENTITY, resources='["events.events.k8s.io"]'), "use 'events'"),
    (config(IDENTITY, resources='["secrets.*"]'), "across every group"),
    (config(IDENTITY, resources='[secrets, secrets]'), "listed more than once"),
    (config(IDENTITY, resources='[secrets, "*."]'), "overlapping resources"),
    (config(IDENTITY, resources='["*.*", "*.apps"]'), "overlapping resources"),
    (config(IDENTITY).replace("providers: [{identity: {}}]", "providers: []"), "at least one provider"),
    (config(IDENTITY, resources='["*."]') + "- resources: [configmaps]\n  providers: [{identity: {}}]\n",
     "resources\\[1\\].resources: 'configmaps' is masked by the earlier rule '\\*.'"),
    ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: []\nextra: 1",
     "unknown field 'extra'"),
])
def test_bad_configs_are_refused(text: str, message: str) -> None:
    with pytest.raises(EncryptionConfigError, match=message):
        parse_config(text, "enc.yaml")


def test_every_problem_is_reported_at_once() -> None:
    text = config("{aescbc: {keys: [{name: a, secret: 'QUJD'}]}}", "{}", resources="[Secrets]")
    with pytest.raises(EncryptionConfigError) as e:
        parse_config(text, "enc.yaml")
    msg = str(e.value)
    assert msg.startswith("enc.yaml: ")
    assert "lower case" in msg and "the key is 3 bytes" in msg and "name exactly one of" in msg
    assert "QUJD" not in msg  # secrets never end up in error messages


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(EncryptionConfigError, match="cannot read encryption provider configuration"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("\n")
    with pytest.raises(EncryptionConfigError, match="is empty"):
        load_config(tmp_path / "empty.yaml")


@pytest.mark.parametrize("provider", ["aescbc", "aesgcm", "secretbox"])
async def test_generate_config(tmp_path: Path, provider: str) -> None:
    path = tmp_path / "encryption-config.yaml"
    generate_config(path, provider)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["encryption-config.yaml"]
    cfg = load_config(path)
    assert [p.kind for p in cfg.transformer_for("secrets").providers] == [provider, "identity"]
    key = cfg.transformer_for("secrets").providers[0].keys[0]
    assert key[0] == "key1"
    with pytest.raises(FileExistsError):
        generate_config(path)
    inner = SqliteStore(tmp_path / "state.db")
    s = EncryptedStore(inner, cfg)
    try:
        await s.create(SECRET, MARKER)
        assert (await inner.get(SECRET)).value.startswith(f"k8s:enc:{provider}:v1:key1:".encode())
        await s.create("/registry/configmaps/ns/c", b"plain")
        assert (await inner.get("/registry/configmaps/ns/c")).value == b"plain"
    finally:
        await s.close()
    # Two generated files never share a key.
    generate_config(tmp_path / "other.yaml", provider)
    secrets = [yaml.safe_load(p.read_text())["resources"][0]["providers"][0][provider]["keys"][0]["secret"]
               for p in (path, tmp_path / "other.yaml")]
    assert len(base64.b64decode(secrets[0])) == 32 and secrets[0] != secrets[1]
