"""DefaultIngressClass admission: an Ingress without a class gets the default IngressClass."""

from __future__ import annotations

from pathlib import Path

from kybernetes.client import Client
from tests.apiserver.conftest import eventually, start_api, stop_api

DEFAULT = {"ingressclass.kubernetes.io/is-default-class": "true"}


def ingress_class(name: str, annotations: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": {"controller": "example.com/x"}}


def ingress(name: str, **spec_or_meta) -> dict:
    annotations = spec_or_meta.pop("annotations", None)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, **({"annotations": annotations} if annotations else {})},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}, **spec_or_meta}}


async def test_an_ingress_without_a_class_gets_the_default_one(tmp_path: Path) -> None:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    classes = client.resource("networking.k8s.io/v1", "ingressclasses", False)
    ingresses = client.resource("networking.k8s.io/v1", "ingresses")
    try:
        # No default class: nothing is set.
        await classes.create(ingress_class("plain"))
        got = await ingresses.create(ingress("before"), "default")
        assert "ingressClassName" not in got["spec"]
        await classes.create(ingress_class("main", DEFAULT))

        async def defaulted() -> bool:
            probe = await ingresses.create(ingress("probe"), "default", dry_run=True)
            return probe["spec"].get("ingressClassName") == "main"
        await eventually(defaulted, what="the default class chosen")
        assert (await ingresses.create(ingress("new"), "default"))["spec"]["ingressClassName"] == "main"
        # A class named by the field or by the deprecated annotation is kept; so is an update's.
        named = await ingresses.create(ingress("named", ingressClassName="plain"), "default")
        assert named["spec"]["ingressClassName"] == "plain"
        legacy = await ingresses.create(ingress("legacy", annotations={"kubernetes.io/ingress.class": "nginx"}),
                                        "default")
        assert "ingressClassName" not in legacy["spec"]
        before = await ingresses.get("before", "default")
        updated = await ingresses.update({**before, "spec": {**before["spec"], "rules": []}}, "default")
        assert "ingressClassName" not in updated["spec"]
    finally:
        await client.close()
        await stop_api(api)
