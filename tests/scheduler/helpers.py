"""Builders for the plain dicts the scheduler tests feed to plugins and the API."""

from __future__ import annotations

from typing import Any


def make_node(name: str, cpu: str = "4", memory: str = "8Gi", pods: str = "110", labels: dict | None = None,
              taints: list | None = None, unschedulable: bool = False, **extra: str) -> dict[str, Any]:
    alloc = {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "100Gi", **extra}
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": spec,
            "status": {"capacity": dict(alloc), "allocatable": alloc,
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def make_pod(name: str, cpu: str | None = None, memory: str | None = None, *, node: str | None = None,
             labels: dict | None = None, namespace: str = "default", priority: int | None = None,
             **spec: Any) -> dict[str, Any]:
    requests = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    container: dict[str, Any] = {"name": "c", "image": "pause"}
    if requests:
        container["resources"] = {"requests": requests}
    body: dict[str, Any] = {"containers": [container], **spec}
    if node:
        body["nodeName"] = node
    if priority is not None:
        body["priority"] = priority
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": labels or {}},
            "spec": body}
