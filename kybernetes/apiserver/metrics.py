"""metrics.k8s.io/v1beta1: node and pod resource usage, as metrics-server serves it upstream.

The API server scrapes every kubelet's /stats/summary (nodes that advertise a
kubelet endpoint) at most once per window and answers NodeMetrics and
PodMetrics from that, for `kubectl top` and the HorizontalPodAutoscaler.
Nothing is stored: usage is a reading, not desired state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson

from ..api import errors
from ..api.selectors import LabelSelector
from ..api.times import format_time
from .request import Request, Response

log = logging.getLogger("kybernetes.metrics")

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
GV = f"{GROUP}/{VERSION}"
WINDOW = 10.0


def group_entry() -> dict[str, Any]:
    v = {"groupVersion": GV, "version": VERSION}
    return {"name": GROUP, "versions": [v], "preferredVersion": v}


def resource_list() -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GV, "resources": [
        {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics", "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics", "verbs": ["get", "list"]}]}


def _usage(cpu: dict[str, Any], mem: dict[str, Any]) -> dict[str, str]:
    return {"cpu": f"{int(cpu.get('usageNanoCores') or 0)}n",
            "memory": f"{int(mem.get('workingSetBytes') or 0) // 1024}Ki"}


class Metrics:
    def __init__(self, api) -> None:
        self.api = api
        self._summaries: dict[str, dict[str, Any]] = {}
        self._scraped_at = 0.0
        self._lock = asyncio.Lock()

    def _nodes(self) -> list[dict[str, Any]]:
        c = self.api.cache.cache("/registry/nodes/")
        return [orjson.loads(e.raw) for e in c.objects.values()]

    async def _scrape(self) -> dict[str, dict[str, Any]]:
        async with self._lock:
            if time.monotonic() - self._scraped_at < WINDOW:
                return self._summaries
            from .proxy import node_address
            client = self.api.kubelet_client
            out: dict[str, dict[str, Any]] = {}
            if client is None:
                return out

            async def one(node: dict[str, Any]) -> None:
                name = node["metadata"]["name"]
                port = (((node.get("status") or {}).get("daemonEndpoints") or {}).get("kubeletEndpoint")
                        or {}).get("Port")
                if not port:
                    return  # hollow nodes and nodes without a kubelet server report nothing
                try:
                    host, port = node_address(node)
                    url = f"{client.scheme}://{host if ':' not in host else '[' + host + ']'}:{port}/stats/summary"
                    async with client.session.get(url, ssl=client.ssl_context if client.ssl_context else False,
                                                    timeout=aiohttp.ClientTimeout(total=5)) as r:
                        if r.status == 200:
                            out[name] = orjson.loads(await r.read())
                except (TimeoutError, aiohttp.ClientError, OSError, errors.StatusError) as e:
                    log.debug("metrics: node %s: %s", name, e)
            await asyncio.gather(*(one(n) for n in self._nodes()))
            self._summaries = out
            self._scraped_at = time.monotonic()
            return out

    async def handle(self, req: Request, segs: list[str]) -> Response:
        """segs: the path after /apis/metrics.k8s.io/v1beta1."""
        if req.method != "GET":
            raise errors.method_not_allowed()
        if not segs:
            return Response(200, orjson.dumps(resource_list()))
        ns = None
        if segs[0] == "namespaces" and len(segs) >= 3:
            ns, segs = segs[1], segs[2:]
        what, name = segs[0], (segs[1] if len(segs) > 1 else None)
        try:
            sel = LabelSelector.parse(req.query.get("labelSelector", ""))
        except ValueError as e:
            raise errors.bad_request(str(e)) from None
        summaries = await self._scrape()
        now = format_time(time.time())
        if what == "nodes" and ns is None:
            items = []
            for node in self._nodes():
                n = node["metadata"]["name"]
                s = summaries.get(n)
                if s is None or (name and n != name) or not sel.matches(node["metadata"].get("labels") or {}):
                    continue
                nd = s.get("node") or {}
                items.append({"metadata": {"name": n, "creationTimestamp": now,
                                           "labels": node["metadata"].get("labels") or {}},
                              "timestamp": (nd.get("cpu") or {}).get("time", now), "window": f"{int(WINDOW)}s",
                              "usage": _usage(nd.get("cpu") or {}, nd.get("memory") or {})})
            return self._answer("NodeMetrics", items, name, "nodes")
        if what == "pods":
            labels_of = self._pod_labels()
            items = []
            for s in summaries.values():
                for p in s.get("pods") or []:
                    ref = p.get("podRef") or {}
                    key = (ref.get("namespace"), ref.get("name"))
                    if key not in labels_of or (ns and key[0] != ns) or (name and key[1] != name):
                        continue
                    if not sel.matches(labels_of[key]):
                        continue
                    items.append({"metadata": {"name": key[1], "namespace": key[0], "creationTimestamp": now,
                                               "labels": labels_of[key]},
                                  "timestamp": (p.get("cpu") or {}).get("time", now), "window": f"{int(WINDOW)}s",
                                  "containers": [{"name": c["name"],
                                                  "usage": _usage(c.get("cpu") or {}, c.get("memory") or {})}
                                                 for c in p.get("containers") or []]})
            return self._answer("PodMetrics", items, name, "pods")
        raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")

    def _pod_labels(self) -> dict[tuple[str, str], dict[str, str]]:
        c = self.api.cache.cache("/registry/pods/")
        return {(e.namespace, e.name): e.labels for e in c.objects.values()}

    def _answer(self, kind: str, items: list[dict[str, Any]], name: str | None, plural: str) -> Response:
        if name is not None:
            if not items:
                raise errors.not_found(plural, GROUP, name)
            return Response(200, orjson.dumps({"kind": kind, "apiVersion": GV, **items[0]}))
        for it in items:
            it.update(kind=kind, apiVersion=GV)
        return Response(200, orjson.dumps({"kind": kind + "List", "apiVersion": GV, "metadata": {},
                                           "items": items}))
