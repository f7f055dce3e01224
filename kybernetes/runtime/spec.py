"""The OCI runtime-spec ``config.json`` a container runs with, built from a CRI container
config, its image's config and its pod sandbox.

Everything here is pure (inputs in, a JSON-able dict out) except reading the image's
``/etc/passwd`` and ``/etc/group`` and the host's device list for privileged containers.
The defaults follow containerd's CRI plugin, which is what a Kubernetes user's containers
get on k3s and most clusters: the capability set, the masked and read-only /proc and
/sys paths, the standard mounts, and (for ``RuntimeDefault``) a deny-list seccomp
profile in the spirit of docker's and containerd's default, written here as data.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from dataclasses import dataclass, field
from typing import Any

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CFS_PERIOD_US = 100_000

# Linux capabilities by number (capability.h); index = capability number.
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)

# containerd's (and docker's) default set for every container, root or not.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# What a non-privileged container must not see or change in /proc and /sys (containerd's defaults).
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/sys/devices/virtual/powercap", "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# The RuntimeDefault seccomp profile: allow everything except these system calls, which
# fail with EPERM. Each group names the capability that makes its calls legitimate (the
# group is left out when the container has it) or None when nothing does. The choice
# follows what docker's and containerd's default profiles block.
SECCOMP_DENY: tuple[tuple[str | None, tuple[str, ...]], ...] = (
    # Kernel keyrings are not namespaced; obsolete or dangerous interfaces nobody in a
    # container needs; io_uring, whose bugs have been a steady source of escapes.
    (None, ("add_key", "keyctl", "request_key", "kexec_load", "kexec_file_load", "uselib", "ustat", "sysfs",
            "_sysctl", "nfsservctl", "get_kernel_syms", "query_module", "create_module", "vm86", "vm86old",
            "afs_syscall", "tuxcall", "security", "io_uring_setup", "io_uring_enter", "io_uring_register")),
    # Mounting, namespaces, tracing and BPF: the container's own root may only do these
    # when it was given CAP_SYS_ADMIN on purpose.
    ("CAP_SYS_ADMIN", ("mount", "umount", "umount2", "unshare", "setns", "pivot_root", "fsopen", "fsconfig",
                       "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr", "quotactl", "quotactl_fd",
                       "lookup_dcookie", "bpf", "perf_event_open", "fanotify_init", "name_to_handle_at",
                       "swapon", "swapoff")),
    ("CAP_SYS_MODULE", ("init_module", "finit_module", "delete_module")),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime",
                      "clock_adjtime64")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    # ptrace itself is fine on kernels since 4.8 (seccomp is checked after the tracer's changes).
    ("CAP_SYS_PTRACE", ("kcmp", "userfaultfd")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_SYS_NICE", ("migrate_pages", "move_pages")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
)
# clone() flags that create namespaces; clone3 hides its flags in memory seccomp cannot
# read, so it answers ENOSYS and the C library falls back to clone (as docker does).
_CLONE_NS_FLAGS = (0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x02000000)
EPERM, ENOSYS = 1, 38


class SpecError(Exception):
    """The container cannot be described to the OCI runtime (bad user, bad profile...)."""


# -- the process ----------------------------------------------------------------------


def process_args(command: list[str], args: list[str], image_config: dict[str, Any]) -> list[str]:
    """The argv by Kubernetes' rules: a command replaces the image's Entrypoint and Cmd,
    args alone replace only Cmd, neither runs Entrypoint + Cmd."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    if command:
        argv = list(command) + list(args)
    elif args:
        argv = entrypoint + list(args)
    else:
        argv = entrypoint + list(image_config.get("Cmd") or [])
    if not argv:
        raise SpecError("no command specified")
    return argv


def process_env(image_config: dict[str, Any], env: dict[str, str], *, hostname: str = "",
                tty: bool = False) -> list[str]:
    """The image's Env overlaid by the container's (the container wins), as K=V."""
    merged: dict[str, str] = {}
    for item in image_config.get("Env") or []:
        k, _, v = str(item).partition("=")
        if k:
            merged[k] = v
    merged.setdefault("PATH", DEFAULT_PATH)
    if hostname:
        merged["HOSTNAME"] = hostname
    if tty:
        merged.setdefault("TERM", "xterm")
    merged.update(env)
    return [f"{k}={v}" for k, v in merged.items()]


def _read_db(rootfs: str, name: str) -> list[list[str]]:
    """Lines of /etc/passwd or /etc/group inside ``rootfs``, split on ':'; never outside it."""
    path = os.path.join(rootfs, "etc", name)
    real = os.path.realpath(path)
    if os.path.islink(path) or not real.startswith(os.path.realpath(rootfs) + os.sep):
        return []  # a symlink out of the image must not make us read the host's files
    try:
        with open(real, errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return []
    return [ln.split(":") for ln in text.splitlines() if ln and not ln.startswith("#")]


@dataclass
class User:
    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    name: str = ""


def resolve_user(rootfs: str, image_user: str, run_as_user: int | None, run_as_group: int | None,
                 supplemental_groups: list[int] | tuple[int, ...] = ()) -> User:
    """uid, gid and supplementary gids, as containerd's CRI plugin derives them.

    runAsUser/runAsGroup win over the image's ``User`` ("uid", "uid:gid", "name",
    "name:group"); names resolve through the image's /etc/passwd and /etc/group, a
    numeric uid takes its primary group from there when listed (else 0). The user's
    groups in /etc/group and the pod's supplementalGroups become additional gids.
    """
    passwd = [e for e in _read_db(rootfs, "passwd") if len(e) >= 4]
    groups = [e for e in _read_db(rootfs, "group") if len(e) >= 3]

    def by_uid(uid: int) -> list[str] | None:
        return next((e for e in passwd if e[2].isdigit() and int(e[2]) == uid), None)

    spec_user, _, spec_group = (image_user or "").partition(":")
    name = ""
    if run_as_user is not None:
        uid = run_as_user
        entry = by_uid(uid)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
        name = entry[0] if entry else ""
        spec_group = ""  # the image's group belongs to the image's user
    elif not spec_user:
        uid, gid = 0, 0
        entry = by_uid(0)
        name = entry[0] if entry else ""
    elif spec_user.isdigit():
        uid = int(spec_user)
        entry = by_uid(uid)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
        name = entry[0] if entry else ""
    else:
        entry = next((e for e in passwd if e[0] == spec_user), None)
        if entry is None or not entry[2].isdigit():
            raise SpecError(f"unable to find user {spec_user}: no matching entries in passwd file")
        uid, gid, name = int(entry[2]), int(entry[3]) if entry[3].isdigit() else 0, spec_user
    if spec_group:
        if spec_group.isdigit():
            gid = int(spec_group)
        else:
            g = next((e for e in groups if e[0] == spec_group), None)
            if g is None or not g[2].isdigit():
                raise SpecError(f"unable to find group {spec_group}: no matching entries in group file")
            gid = int(g[2])
    if run_as_group is not None:
        gid = run_as_group
    extra = [gid]
    if name:
        for g in groups:
            members = g[3].split(",") if len(g) > 3 else []
            if name in members and g[2].isdigit():
                extra.append(int(g[2]))
    extra.extend(int(g) for g in supplemental_groups)
    return User(uid, gid, list(dict.fromkeys(extra)), name)


def _cap_name(name: str) -> str:
    n = name.strip().upper()
    return n if n.startswith("CAP_") or n == "ALL" else "CAP_" + n


def known_capabilities() -> list[str]:
    """The capabilities a container can be given here: those this process holds itself.

    A process cannot hand out what it lacks (runc fails "unable to apply caps"), and a
    host (or the container this node runs in) may withhold some; containerd's
    "all capabilities" for privileged containers means its own set too.
    """
    try:
        with open("/proc/self/status") as f:
            eff = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    except (OSError, ValueError, StopIteration):
        return list(ALL_CAPABILITIES)
    return [name for bit, name in enumerate(ALL_CAPABILITIES) if eff >> bit & 1]


def capabilities(add: list[str], drop: list[str], privileged: bool) -> list[str]:
    """The container's capability set: the default, then drops, then adds (adds win), with
    "ALL" meaning every capability, as containerd applies a securityContext."""
    everything = known_capabilities()
    adds = [_cap_name(c) for c in add]
    drops = [_cap_name(c) for c in drop]
    if privileged or "ALL" in adds:
        caps = list(everything)
    elif "ALL" in drops:
        caps = []
    else:
        caps = [c for c in DEFAULT_CAPABILITIES if c in everything]
    caps = [c for c in caps if c not in drops]
    for c in adds:
        if c == "ALL":
            continue
        if c not in ALL_CAPABILITIES:
            raise SpecError(f"unknown capability {c!r}")
        if c not in caps and c in everything:
            caps.append(c)
    return caps


def seccomp_profile(mode: str, caps: list[str], privileged: bool) -> dict[str, Any] | None:
    """linux.seccomp for "RuntimeDefault", "Unconfined"/"" (None), or "localhost/<path>"."""
    if privileged or mode in ("", "Unconfined", "unconfined"):
        return None
    if mode in ("RuntimeDefault", "runtime/default", "docker/default"):
        return runtime_default_seccomp(caps)
    path = mode[len("localhost/"):] if mode.startswith("localhost/") else mode
    if not os.path.isabs(path):
        raise SpecError(f"seccomp profile {mode!r}: expected RuntimeDefault, Unconfined or localhost/<absolute path>")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SpecError(f"seccomp profile {path}: {e}") from e


def _seccomp_arches() -> list[str]:
    machine = os.uname().machine
    if machine == "x86_64":
        return ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    if machine == "aarch64":
        return ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    return []  # the native architecture only


def runtime_default_seccomp(caps: list[str]) -> dict[str, Any]:
    have = set(caps)
    denied = [n for cap, names in SECCOMP_DENY if cap is None or cap not in have for n in names]
    rules: list[dict[str, Any]] = [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}]
    if "CAP_SYS_ADMIN" not in have:
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
        # One rule per flag: the calls are denied when any namespace flag is set.
        for flag in _CLONE_NS_FLAGS:
            rules.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                          "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]})
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": _seccomp_arches(), "syscalls": rules}


def stop_signal(name: str) -> int:
    """A signal number from "SIGTERM", "TERM", "15" or "SIGRTMIN+3"; SIGTERM when empty."""
    text = (name or "").strip().upper()
    if not text:
        return signal.SIGTERM
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    for base, num in (("SIGRTMIN", signal.SIGRTMIN), ("SIGRTMAX", signal.SIGRTMAX)):
        if text.startswith(base) and text != base:
            return num + int(text[len(base):])
        if text == base:
            return num
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise SpecError(f"unknown stop signal {name!r}") from None


# -- mounts and devices ---------------------------------------------------------------


def default_mounts(privileged: bool) -> list[dict[str, Any]]:
    sys_opt = "rw" if privileged else "ro"
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_opt]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", sys_opt]},
    ]


def bind_mount(source: str, destination: str, readonly: bool, *extra: str) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "rprivate", "ro" if readonly else "rw", *extra]}


def host_devices() -> list[dict[str, Any]]:
    """Every device node under the host's /dev, for privileged containers (as containerd)."""
    out = []
    skip = {"/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/.lxc", "/dev/.udev"}
    for dirpath, dirnames, filenames in os.walk("/dev"):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            if path == "/dev/console":
                continue  # runc gives the container its own console when it has a terminal
            out.append({"path": path, "type": kind, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid})
    return out


# -- the whole spec -------------------------------------------------------------------


@dataclass
class Namespaces:
    """Which namespaces the container joins (a path) or gets new (None); absent ones are the host's."""

    join: dict[str, str] = field(default_factory=dict)  # OCI type ("network", "ipc", "uts", "pid") -> path
    new: list[str] = field(default_factory=lambda: ["mount"])

    def to_spec(self) -> list[dict[str, str]]:
        out = [{"type": t, "path": p} for t, p in self.join.items()]
        out += [{"type": t} for t in self.new if t not in self.join]
        return out


@dataclass
class Limits:
    cpu_millis: int | None = None
    cpu_request_millis: int | None = None
    memory_bytes: int | None = None
    pids: int | None = None


def resources(limits: Limits, *, swap_supported: bool, privileged: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": [{"allow": privileged, "access": "rwm"}]}
    cpu: dict[str, Any] = {}
    if limits.cpu_request_millis:
        cpu["shares"] = max(limits.cpu_request_millis * 1024 // 1000, 2)
    if limits.cpu_millis:
        cpu["quota"] = max(limits.cpu_millis * CFS_PERIOD_US // 1000, 1000)
        cpu["period"] = CFS_PERIOD_US
    if cpu:
        out["cpu"] = cpu
    if limits.memory_bytes:
        out["memory"] = {"limit": limits.memory_bytes}
        if swap_supported:
            out["memory"]["swap"] = limits.memory_bytes  # memory+swap = memory: no swap at all
    if limits.pids:
        out["pids"] = {"limit": limits.pids}
    return out


def build(*, args: list[str], env: list[str], cwd: str, user: User, tty: bool, caps: list[str],
          no_new_privileges: bool, readonly_rootfs: bool, privileged: bool, mounts: list[dict[str, Any]],
          namespaces: Namespaces, cgroups_path: str, limits: Limits, swap_supported: bool,
          seccomp: dict[str, Any] | None, annotations: dict[str, str] | None = None,
          rootfs: str = "rootfs") -> dict[str, Any]:
    """The runtime spec; ``mounts`` are the pod's and container's own, after the defaults."""
    linux: dict[str, Any] = {
        "namespaces": namespaces.to_spec(),
        "cgroupsPath": cgroups_path,
        "resources": resources(limits, swap_supported=swap_supported, privileged=privileged),
    }
    if privileged:
        linux["devices"] = host_devices()
    else:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": tty,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
            "args": args,
            "env": env,
            "cwd": cwd or "/",
            # Not ambient or inheritable: a non-root user keeps none of them across exec, as upstream.
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": no_new_privileges,
        },
        "root": {"path": rootfs, "readonly": readonly_rootfs},
        "mounts": default_mounts(privileged) + mounts,
        "annotations": dict(annotations or {}),
        "linux": linux,
    }
