"""Control groups for pods and containers: limits, OOM counting, stats, cleanup.

cgroup v2 is preferred. Hosts still booted with the v1 (or "hybrid") layout, where
the controllers live in per-controller v1 hierarchies and the v2 mount has none,
get the same behaviour through the v1 files, because otherwise limits would silently
not exist there. Layout, in either version: ``<root>/<pod sandbox id>/<container id>``.

Only stdlib and plain file writes: the per-container shim imports this module too.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
CFS_PERIOD_US = 100_000


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


@dataclass
class CgroupLimits:
    cpu_millis: int | None = None
    cpu_request_millis: int | None = None
    memory_bytes: int | None = None
    pids: int | None = None


@dataclass
class Cgroup:
    """One cgroup, as directories per controller (v2: one directory under "unified")."""

    version: int
    dirs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"version": self.version, "dirs": self.dirs}

    @classmethod
    def from_json(cls, data: dict) -> Cgroup:
        return cls(version=int(data["version"]), dirs=dict(data["dirs"]))

    def _dir(self, controller: str) -> str | None:
        if self.version == 2:
            return self.dirs.get("unified")
        return self.dirs.get(controller)

    def procs_files(self) -> list[str]:
        """The files a process writes its pid to in order to join this cgroup."""
        # De-duplicate co-mounted v1 controllers (cpu,cpuacct share one directory).
        return sorted({os.path.join(d, "cgroup.procs") for d in self.dirs.values()})

    def pids(self) -> list[int]:
        out: set[int] = set()
        for p in self.procs_files():
            try:
                out.update(int(x) for x in _read(p).split())
            except OSError:
                pass
        return sorted(out)

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup so far."""
        d = self._dir("memory")
        if d is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            return _kv(_read(os.path.join(d, name))).get("oom_kill", 0)
        except OSError:
            return 0

    def apply(self, limits: CgroupLimits) -> None:
        if self.version == 2:
            self._apply_v2(limits)
        else:
            self._apply_v1(limits)

    def _apply_v2(self, lim: CgroupLimits) -> None:
        d = self.dirs["unified"]
        if lim.cpu_millis:
            quota = max(lim.cpu_millis * CFS_PERIOD_US // 1000, 1000)
            _write(os.path.join(d, "cpu.max"), f"{quota} {CFS_PERIOD_US}")
        if lim.cpu_request_millis:
            shares = max(lim.cpu_request_millis * 1024 // 1000, 2)
            weight = 1 + ((shares - 2) * 9999) // 262142  # the kubelet's shares->weight mapping
            _write(os.path.join(d, "cpu.weight"), str(min(max(weight, 1), 10000)))
        if lim.memory_bytes:
            _write(os.path.join(d, "memory.max"), str(lim.memory_bytes))
            swap = os.path.join(d, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
        if lim.pids:
            _write(os.path.join(d, "pids.max"), str(lim.pids))

    def _apply_v1(self, lim: CgroupLimits) -> None:
        cpu = self.dirs.get("cpu")
        if cpu and lim.cpu_millis:
            _write(os.path.join(cpu, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
            quota = max(lim.cpu_millis * CFS_PERIOD_US // 1000, 1000)
            _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))
        if cpu and lim.cpu_request_millis:
            _write(os.path.join(cpu, "cpu.shares"), str(max(lim.cpu_request_millis * 1024 // 1000, 2)))
        mem = self.dirs.get("memory")
        if mem and lim.memory_bytes:
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(lim.memory_bytes))
            memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                # memory+swap equal to memory: the container may not swap at all.
                _write(memsw, str(lim.memory_bytes))
        pids = self.dirs.get("pids")
        if pids and lim.pids:
            _write(os.path.join(pids, "pids.max"), str(lim.pids))

    def stats(self) -> dict[str, int | None]:
        """Cumulative CPU nanoseconds, memory usage and working set, process count."""
        cpu_ns = mem = ws = npids = None
        try:
            if self.version == 2:
                d = self.dirs["unified"]
                cpu_ns = _kv(_read(os.path.join(d, "cpu.stat"))).get("usage_usec", 0) * 1000
                mem = int(_read(os.path.join(d, "memory.current")))
                inactive = _kv(_read(os.path.join(d, "memory.stat"))).get("inactive_file", 0)
            else:
                acct = self.dirs.get("cpuacct")
                if acct:
                    cpu_ns = int(_read(os.path.join(acct, "cpuacct.usage")))
                md = self.dirs.get("memory")
                inactive = 0
                if md:
                    mem = int(_read(os.path.join(md, "memory.usage_in_bytes")))
                    inactive = _kv(_read(os.path.join(md, "memory.stat"))).get("total_inactive_file", 0)
            if mem is not None:
                # Working set as the kubelet defines it: usage minus reclaimable page cache.
                ws = max(mem - inactive, 0)
            pd = self._dir("pids")
            if pd:
                npids = int(_read(os.path.join(pd, "pids.current")))
        except (OSError, ValueError):
            pass
        return {"cpu_ns": cpu_ns, "memory_usage": mem, "working_set": ws, "pids": npids}

    def kill_all(self, deadline: float = 2.0) -> None:
        """SIGKILL every process in the cgroup and wait (bounded) until it is empty."""
        d = self._dir("memory") or next(iter(self.dirs.values()), None)
        if self.version == 2 and d and os.path.exists(os.path.join(d, "cgroup.kill")):
            try:
                _write(os.path.join(d, "cgroup.kill"), "1")
            except OSError:
                pass
        end = time.monotonic() + deadline
        while True:
            pids = self.pids()
            if not pids or time.monotonic() > end:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)

    def remove(self) -> None:
        """Remove the directories (children must be gone already); missing is fine."""
        for d in sorted(set(self.dirs.values()), key=len, reverse=True):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # EBUSY while the last killed processes are being torn down.
                    time.sleep(0.01)


@dataclass
class CgroupManager:
    """Finds the host's cgroup layout and creates cgroups beneath ``<mount>/<root>``."""

    version: int
    mounts: dict[str, str]  # controller (or "unified") -> mount point
    root: str = "kybernetes"
    # Every cgroup hierarchy mounted, used or not: an OCI runtime (runc) creates a container's
    # cgroup in all of them (devices, freezer, name=systemd, a hybrid host's empty cgroup2…).
    hierarchies: list[str] = field(default_factory=list)

    @classmethod
    def detect(cls, root: str = "kybernetes") -> tuple[CgroupManager | None, str]:
        """The manager, or None and a sentence saying why limits cannot be enforced."""
        if os.geteuid() != 0:
            return None, "not running as root: cgroups cannot be created, limits are not enforced"
        v1: dict[str, str] = {}
        v2: list[str] = []
        every: list[str] = []
        try:
            mounts = _read("/proc/self/mounts").splitlines()
        except OSError:
            return None, "cannot read /proc/self/mounts"
        for line in mounts:
            parts = line.split()
            if len(parts) < 4:
                continue
            mountpoint, fstype, opts = parts[1], parts[2], parts[3].split(",")
            if fstype in ("cgroup", "cgroup2") and mountpoint not in every:
                every.append(mountpoint)
            if fstype == "cgroup2":
                v2.append(mountpoint)
            elif fstype == "cgroup":
                for c in CONTROLLERS:
                    if c in opts:
                        v1.setdefault(c, mountpoint)
        for mp in v2:
            try:
                have = set(_read(os.path.join(mp, "cgroup.controllers")).split())
            except OSError:
                continue
            if {"memory", "cpu", "pids"} <= have:
                return cls(2, {"unified": mp}, root, [mp]), ""
        if "memory" in v1:
            missing = [c for c in ("cpu", "pids") if c not in v1]
            note = f" (missing v1 controllers: {', '.join(missing)})" if missing else ""
            return cls(1, v1, root, every), note
        return None, "no usable cgroup hierarchy with a memory controller: limits are not enforced"

    def _enable_v2(self, path_parts: list[str]) -> None:
        # Controllers must be enabled in every ancestor's subtree_control to reach a leaf.
        cur = self.mounts["unified"]
        for part in path_parts:
            ctl = os.path.join(cur, "cgroup.subtree_control")
            enabled = set(_read(ctl).split())
            available = set(_read(os.path.join(cur, "cgroup.controllers")).split())
            want = [c for c in ("cpu", "memory", "pids") if c in available and c not in enabled]
            if want:
                _write(ctl, " ".join("+" + c for c in want))
            cur = os.path.join(cur, part)
            os.makedirs(cur, exist_ok=True)

    def cgroup(self, *names: str) -> Cgroup:
        """The cgroup at ``<root>/<names...>`` without creating it."""
        rel = os.path.join(self.root, *names)
        if self.version == 2:
            return Cgroup(2, {"unified": os.path.join(self.mounts["unified"], rel)})
        return Cgroup(1, {c: os.path.join(mp, rel) for c, mp in self.mounts.items()})

    def create(self, *names: str, limits: CgroupLimits | None = None) -> Cgroup:
        cg = self.cgroup(*names)
        if self.version == 2:
            self._enable_v2([self.root, *names])
        else:
            for d in cg.dirs.values():
                os.makedirs(d, exist_ok=True)
        if limits is not None:
            cg.apply(limits)
        return cg

    def swap_limit_supported(self) -> bool:
        """Whether a memory+swap limit can be set (v1 needs the kernel's swap accounting)."""
        if self.version == 2:
            return os.path.exists(os.path.join(self.mounts["unified"], self.root, "memory.swap.max")) or \
                os.path.exists(os.path.join(self.mounts["unified"], "memory.swap.max"))
        return os.path.exists(os.path.join(self.mounts["memory"], "memory.memsw.limit_in_bytes"))

    def relative_path(self, *names: str) -> str:
        """``/<root>/<names...>``: a cgroup as an OCI runtime spec's linux.cgroupsPath names it."""
        return "/" + os.path.join(self.root, *names)

    def remove_tree(self, *names: str) -> None:
        """Remove ``<root>/<names...>`` and everything below it in every hierarchy.

        Processes must be gone; directories are removed deepest first (a cgroup directory
        only goes once it has no children).
        """
        for mp in self.hierarchies or sorted(set(self.mounts.values())):
            top = os.path.join(mp, self.root, *names)
            if not os.path.isdir(top):
                continue
            dirs = [dirpath for dirpath, _, _ in os.walk(top)]
            Cgroup(self.version, {str(i): d for i, d in enumerate(dirs)}).remove()
