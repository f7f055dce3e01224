"""Secrets encrypted at rest, from outside: the store file never holds them, and keys rotate as the docs say."""

from __future__ import annotations

import base64
import os

import yaml

from .conftest import Server, free_port, needs_kubectl

pytestmark = [needs_kubectl]

MARKER = "s3cr3t-marker-7f1c"


def _on_disk(server: Server) -> bytes:
    out = b""
    for suffix in ("", "-wal"):
        p = server.data_dir / f"state.db{suffix}"
        if p.exists():
            out += p.read_bytes()
    return out


def test_secrets_are_encrypted_and_keys_rotate(tmp_path):
    s = Server(tmp_path / "kyb", free_port())
    s.data_dir.mkdir()
    s.start()
    try:
        config = s.data_dir / "encryption-config.yaml"
        assert config.exists() and (config.stat().st_mode & 0o777) == 0o600
        s.kubectl("create", "secret", "generic", "db", f"--from-literal=password={MARKER}")
        s.kubectl("create", "configmap", "plain", "--from-literal=note=plain-configmap-marker")
        got = s.kubectl("get", "secret", "db", "-o", "jsonpath={.data.password}").stdout
        assert base64.b64decode(got).decode() == MARKER
        disk = _on_disk(s)
        assert MARKER.encode() not in disk and base64.b64encode(MARKER.encode()) not in disk
        assert b"k8s:enc:aescbc:v1:key1:" in disk
        assert b"plain-configmap-marker" in disk  # only what the configuration names is encrypted

        # Rotation as the docs say: a new key first, restart, rewrite every Secret, drop the old key.
        doc = yaml.safe_load(config.read_text())
        providers = doc["resources"][0]["providers"]
        key2 = {"name": "key2", "secret": base64.b64encode(os.urandom(32)).decode()}
        providers[0]["aescbc"]["keys"].insert(0, key2)
        config.write_text(yaml.safe_dump(doc))
        s.stop(killall=False)
        s.start()
        listed = s.kubectl("get", "secrets", "-A", "-o", "json").stdout
        s.kubectl("replace", "-f", "-", input=listed)
        assert b"k8s:enc:aescbc:v1:key2:" in _on_disk(s)
        providers[0]["aescbc"]["keys"] = [key2]
        config.write_text(yaml.safe_dump(doc))
        s.stop(killall=False)
        s.start()
        got = s.kubectl("get", "secret", "db", "-o", "jsonpath={.data.password}").stdout
        assert base64.b64decode(got).decode() == MARKER
    finally:
        s.stop()
