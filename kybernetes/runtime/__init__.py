"""Container runtimes behind one CRI-shaped interface (see base.py).

``ProcessRuntime`` runs containers as host process trees (namespaces and cgroups when
root), ``FakeRuntime`` runs nothing and reports pods Running (hollow nodes). Imports
are lazy so the small helper programs (pod holder, container shim) stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ProcessRuntime": "kybernetes.runtime.process",
    "FakeRuntime": "kybernetes.runtime.fake",
    "LogOptions": "kybernetes.runtime.logs",
    "LogWriter": "kybernetes.runtime.logs",
    "read_logs": "kybernetes.runtime.logs",
}
_BASE = (
    "Runtime ContainerConfig ContainerFilter ContainerMetadata ContainerState ContainerStats "
    "ContainerStatus CreateContainerError ExecResult ImageInfo Mount NamespaceMode NamespaceOptions "
    "NotFoundError Notice PodSandboxConfig PodSandboxMetadata PodSandboxStatus Resources RuntimeEvent "
    "RuntimeServiceError SandboxFilter SandboxState StartError StreamHandle"
).split()
_EXPORTS.update({name: "kybernetes.runtime.base" for name in _BASE})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kybernetes.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
