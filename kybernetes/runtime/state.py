"""What the runtimes that keep their state in files share: the state directory and its records.

The process and OCI runtimes both keep every sandbox and container as a directory under
their root (``sandboxes/<id>/sandbox.json``, ``containers/<id>/config.json`` plus the
shim's files), so a restarted kubelet finds everything an earlier one started. This
module owns that layout, the (de)serialisation of the records, listing, and the
environment their helper processes (holders, shims) start with.
"""

from __future__ import annotations

import os

from kybernetes.runtime.base import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerStatus,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    NotFoundError,
    Notice,
    PodSandboxConfig,
    PodSandboxMetadata,
    PodSandboxStatus,
    Resources,
    Runtime,
    SandboxFilter,
)
from kybernetes.runtime.shim import read_json

# The directory that holds the kybernetes package: helper processes import it from there.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def notices_from(raw: list[dict]) -> list[Notice]:
    return [Notice(**n) for n in raw]


def sandbox_config_from(d: dict) -> PodSandboxConfig:
    d = dict(d)
    d["metadata"] = PodSandboxMetadata(**d["metadata"])
    ns = d.get("namespace_options") or {}
    d["namespace_options"] = NamespaceOptions(**{k: NamespaceMode(v) for k, v in ns.items()})
    return PodSandboxConfig(**d)


def container_config_from(d: dict) -> ContainerConfig:
    d = dict(d)
    d["metadata"] = ContainerMetadata(**d["metadata"])
    d["mounts"] = [Mount(**m) for m in d.get("mounts", [])]
    d["resources"] = Resources(**(d.get("resources") or {}))
    return ContainerConfig(**d)


class StateDirRuntime(Runtime):
    """A runtime whose sandboxes and containers are directories under ``self.root``."""

    root: str

    def _make_state_dirs(self) -> None:
        for sub in ("sandboxes", "containers"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    def _sdir(self, sid: str) -> str:
        return os.path.join(self.root, "sandboxes", sid)

    def _cdir(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid)

    def _sandbox(self, sid: str) -> dict:
        rec = read_json(os.path.join(self._sdir(os.path.basename(sid)), "sandbox.json")) if sid else None
        if rec is None:
            raise NotFoundError(f"pod sandbox {sid!r} not found")
        return rec

    def _container(self, cid: str) -> dict:
        rec = read_json(os.path.join(self._cdir(os.path.basename(cid)), "config.json")) if cid else None
        if rec is None:
            raise NotFoundError(f"container {cid!r} not found")
        return rec

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    async def list_pod_sandboxes(self, filter: SandboxFilter | None = None) -> list[PodSandboxStatus]:
        out = []
        for sid in sorted(os.listdir(os.path.join(self.root, "sandboxes"))):
            if filter and filter.id and not sid.startswith(filter.id):
                continue
            try:
                st = await self.pod_sandbox_status(sid)
            except NotFoundError:
                continue  # removed while listing, or half made
            if filter is None or filter.matches(st):
                out.append(st)
        return sorted(out, key=lambda s: s.created_at)

    async def list_containers(self, filter: ContainerFilter | None = None) -> list[ContainerStatus]:
        out = []
        for cid in os.listdir(os.path.join(self.root, "containers")):
            if filter and filter.id and not cid.startswith(filter.id):
                continue
            try:
                st = await self.container_status(cid)
            except NotFoundError:
                continue  # removed while listing
            if filter is None or filter.matches(st):
                out.append(st)
        return sorted(out, key=lambda s: s.created_at)
