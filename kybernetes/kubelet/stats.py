"""The kubelet's resource usage summary (GET /stats/summary), the source of metrics.k8s.io.

Node CPU and memory come from /proc (CPU as a rate between two samples),
container usage from the runtime's cgroup statistics; containers are grouped
into pods by their sandbox's metadata. The shape follows the kubelet's
summary API (node, pods[].podRef, containers[].cpu.usageNanoCores,
memory.workingSetBytes), which is what metrics-server reads upstream.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..api.times import format_time
from ..runtime.base import ContainerState, Runtime


def _proc_cpu_ns() -> int:
    """Busy CPU time of the whole machine, in nanoseconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    vals = [int(v) for v in fields]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    busy = sum(vals[:8]) - idle
    return busy * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


class StatsProvider:
    def __init__(self, runtime: Runtime, node_name: str):
        self.runtime = runtime
        self.node_name = node_name
        self._last: tuple[float, int] | None = None

    def _node_cpu(self, now: float) -> dict[str, Any]:
        total = _proc_cpu_ns()
        out: dict[str, Any] = {"time": format_time(now), "usageCoreNanoSeconds": total}
        if self._last is not None and now > self._last[0]:
            out["usageNanoCores"] = int((total - self._last[1]) / (now - self._last[0]))
        else:
            # First sample: average since boot, better than nothing.
            with open("/proc/uptime") as f:
                up = float(f.read().split()[0])
            out["usageNanoCores"] = int(total / max(up, 1.0))
        self._last = (now, total)
        return out

    async def summary(self) -> dict[str, Any]:
        now = time.time()
        mem = _meminfo()
        node = {"nodeName": self.node_name, "startTime": format_time(now), "cpu": self._node_cpu(now),
                "memory": {"time": format_time(now), "availableBytes": mem.get("MemAvailable", 0),
                           "usageBytes": mem.get("MemTotal", 0) - mem.get("MemFree", 0),
                           "workingSetBytes": mem.get("MemTotal", 0) - mem.get("MemAvailable", 0)}}
        sandboxes = {s.id: s for s in await self.runtime.list_pod_sandboxes()}
        pods: dict[str, dict[str, Any]] = {}
        for c in await self.runtime.list_containers():
            if c.state != ContainerState.RUNNING:
                continue
            sb = sandboxes.get(c.sandbox_id)
            if sb is None:
                continue
            try:
                st = await self.runtime.container_stats(c.id)
            except Exception:  # noqa: BLE001 - a container that just exited has no stats; skip it
                continue
            cpu = {"time": format_time(st.timestamp), "usageNanoCores": st.cpu_usage_nano_cores or 0,
                   "usageCoreNanoSeconds": st.cpu_usage_core_nano_seconds or 0}
            memory = {"time": format_time(st.timestamp), "workingSetBytes": st.memory_working_set_bytes or 0,
                      "usageBytes": st.memory_usage_bytes or 0}
            md = sb.metadata
            pod = pods.setdefault(sb.id, {
                "podRef": {"name": md.name, "namespace": md.namespace, "uid": md.uid},
                "startTime": format_time(sb.created_at), "containers": [],
                "cpu": {"time": format_time(now), "usageNanoCores": 0, "usageCoreNanoSeconds": 0},
                "memory": {"time": format_time(now), "workingSetBytes": 0, "usageBytes": 0}})
            pod["containers"].append({"name": c.metadata.name, "startTime": format_time(c.started_at or c.created_at),
                                      "cpu": cpu, "memory": memory})
            pod["cpu"]["usageNanoCores"] += cpu["usageNanoCores"]
            pod["cpu"]["usageCoreNanoSeconds"] += cpu["usageCoreNanoSeconds"]
            pod["memory"]["workingSetBytes"] += memory["workingSetBytes"]
            pod["memory"]["usageBytes"] += memory["usageBytes"]
        return {"node": node, "pods": list(pods.values())}
