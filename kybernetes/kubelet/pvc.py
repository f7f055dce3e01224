"""persistentVolumeClaim volumes on the node: claim → bound PersistentVolume → a directory here.

The kubelet mounts what the volume says: a ``hostPath`` volume (the type checks
and the OrCreate kinds' creation as for a pod's own hostPath volume; the
local-path provisioner's volumes are DirectoryOrCreate, so a node makes its
directory on first use) or a ``local`` volume (its path must exist, as
upstream). The directory is then bind-mounted like any hostPath volume.

Until the claim is bound the volume cannot be set up: the pod waits in
ContainerCreating with a FailedMount event saying why, and the pod worker
tries again on its next sync.
"""

from __future__ import annotations

import os
from typing import Any

from kybernetes.api.errors import StatusError
from kybernetes.kubelet.volumes import VolumeError, check_host_path

Obj = dict[str, Any]


class ClaimResolver:
    """Finds the host directory behind a pod's claim, through the API."""

    def __init__(self, client: Any) -> None:
        self.claims = client.resource("v1", "persistentvolumeclaims")
        self.volumes = client.resource("v1", "persistentvolumes", namespaced=False)

    async def host_path(self, namespace: str, src: Obj) -> str:
        """The directory to mount for the volume source ``src`` ({claimName, readOnly})."""
        name = src.get("claimName") or ""
        try:
            claim = await self.claims.get(name, namespace)
        except StatusError as e:
            if e.code == 404:
                raise VolumeError(f'failed to fetch PVC from API server: persistentvolumeclaims "{name}" '
                                  f"not found") from None
            raise
        return await self.claim_host_path(claim)

    async def claim_host_path(self, claim: Obj) -> str:
        meta = claim.get("metadata") or {}
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        if meta.get("deletionTimestamp"):
            raise VolumeError(f"error processing PVC {ns}/{name}: can't start pod because PVC is being deleted")
        phase = (claim.get("status") or {}).get("phase") or ""
        volume_name = (claim.get("spec") or {}).get("volumeName") or ""
        if phase != "Bound" or not volume_name:
            raise VolumeError(f'PVC {ns}/{name} has non-bound phase ("{phase}") or empty pvc.Spec.VolumeName '
                              f'("{volume_name}")')
        try:
            pv = await self.volumes.get(volume_name)
        except StatusError as e:
            if e.code == 404:
                raise VolumeError(f'failed to fetch PV {volume_name} from API server: persistentvolumes '
                                  f'"{volume_name}" not found') from None
            raise
        return volume_host_path(pv, claim)


def volume_host_path(pv: Obj, claim: Obj) -> str:
    """The host directory of a PersistentVolume bound to `claim` (creating a DirectoryOrCreate one)."""
    spec = pv.get("spec") or {}
    pv_name = (pv.get("metadata") or {}).get("name") or ""
    ref = spec.get("claimRef") or {}
    if ref.get("uid") and ref.get("uid") != (claim.get("metadata") or {}).get("uid"):
        raise VolumeError(f"PV {pv_name} is bound to another claim ({ref.get('namespace')}/{ref.get('name')})")
    if spec.get("hostPath") is not None:
        check_host_path(spec["hostPath"])
        return spec["hostPath"].get("path") or ""
    if spec.get("local") is not None:
        path = spec["local"].get("path") or ""
        if not os.path.exists(path):
            raise VolumeError(f'local volume {pv_name}: path "{path}" does not exist')
        return path
    raise VolumeError(f"PV {pv_name}: only hostPath and local persistent volumes can be mounted on this node")
