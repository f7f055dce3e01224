"""fieldValidation: Strict rejects unknown fields; Warn and Ignore store the object without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.client import Client
from tests.apiserver.conftest import start_api, stop_api


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labelz": {"a": "b"}},
            "spec": {"restartPolicyy": "Never", "containers": [{"name": "c", "image": "busybox", "imagee": "x"}]}}


async def test_unknown_fields_are_dropped_unless_strict(tmp_path: Path) -> None:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    pods = client.resource("v1", "pods")
    try:
        with pytest.raises(StatusError) as e:
            await pods.create(pod("strict"), "default", field_validation="Strict")
        assert e.value.code == 400 and 'unknown field "spec.restartPolicyy"' in e.value.message
        for mode in ("Warn", "Ignore"):
            created = await pods.create(pod(mode.lower()), "default", field_validation=mode)
            stored = await pods.get(mode.lower(), "default")
            for got in (created, stored):
                assert "restartPolicyy" not in got["spec"] and "labelz" not in got["metadata"]
                assert "imagee" not in got["spec"]["containers"][0]
                assert got["spec"]["restartPolicy"] == "Always"   # the real field, defaulted
        # An update and a merge patch are pruned alike.
        cur = await pods.get("warn", "default")
        cur["metadata"]["labels"] = {"x": "y"}
        cur["spec"]["bogus"] = True
        updated = await pods.update(cur, "default")
        assert "bogus" not in updated["spec"] and updated["metadata"]["labels"] == {"x": "y"}
        patched = await pods.patch("warn", {"spec": {"bogus2": 1}}, namespace="default")
        assert "bogus2" not in patched["spec"]
    finally:
        await client.close()
        await stop_api(api)
