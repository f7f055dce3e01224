"""The kubelet's image manager: pull policy, pull secrets, pull back-off, image GC, node images.

It stands between a pod worker and the node's image service (CRI ImageService shape:
``status``, ``pull``, ``list``, ``garbage_collect``), as upstream's
``pkg/kubelet/images`` does: it decides whether a container's image must be pulled
(``imagePullPolicy``), pulls it in the background with the pod's pull secrets so a
slow pull never blocks the pod's worker (deleting the pod still works), records the
Pulling/Pulled/Failed/BackOff events with upstream's wording, and keeps the per-pod
ErrImagePull → ImagePullBackOff back-off (10 s doubling to 5 min).

Runtimes that bring their own images (the process runtime's image directories, the
fake runtime) are wrapped in :class:`RuntimeImages`; they report what they do through
runtime events instead of pull events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kybernetes.images.errors import ImageError, InvalidReference
from kybernetes.images.model import Image
from kybernetes.images.reference import parse as parse_reference
from kybernetes.runtime.base import Runtime

log = logging.getLogger(__name__)

Obj = dict[str, Any]

# Upstream's image pull back-off (pkg/kubelet: backOffPeriod and MaxContainerBackOff).
PULL_BACKOFF_BASE = 10.0
PULL_BACKOFF_MAX = 300.0
# Node status carries at most this many images, the largest first (upstream's nodeStatusMaxImages).
NODE_STATUS_MAX_IMAGES = 50


class RuntimeImages:
    """The image-service shape over a runtime that provides images itself."""

    real = False

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def status(self, image: str) -> Image | None:
        info = await self.runtime.image_status(image)
        if info is None or not info.provided:
            return None
        return Image(id=image, repo_tags=[info.ref], size=info.size)

    async def pull(self, image: str, credentials: Any = None, progress: Any = None) -> Image:
        info = await self.runtime.pull_image(image)
        return Image(id=image, repo_tags=[info.ref], size=info.size)

    async def list(self) -> list[Image]:
        return [Image(id=i.ref, repo_tags=[i.ref], size=i.size) for i in await self.runtime.list_images()]

    async def garbage_collect(self, in_use: set[str], high_percent: int = 85, low_percent: int = 80) -> int:
        return 0

    def mark_used(self, image: Image) -> None:
        pass


@dataclass
class PullOutcome:
    """What a worker learns from :meth:`ImageManager.ensure`."""

    image_ref: str = ""  # the image id to hand the runtime (set when the image is ready)
    waiting: tuple[str, str] | None = None  # (reason, message) while not ready
    image: Image | None = None


class _Pull:
    def __init__(self, task: asyncio.Task[Image]) -> None:
        self.task = task
        self.started = time.monotonic()


class ImageManager:
    def __init__(self, service: Any, *, event: Callable[..., None],
                 get_secret: Callable[[str, str], Awaitable[Obj | None]],
                 backoff_base: float = PULL_BACKOFF_BASE, backoff_max: float = PULL_BACKOFF_MAX) -> None:
        from kybernetes.kubelet.podworker import BackOff

        self.service = service
        self._event = event
        self._get_secret = get_secret
        self.backoff = BackOff(backoff_base, backoff_max)
        self._pulls: dict[str, _Pull] = {}  # "<pod uid>/<image>" -> the pull under way
        self._failed: dict[str, tuple[float, str]] = {}  # same key -> (when, message) of the last failure

    @property
    def real(self) -> bool:
        return getattr(self.service, "real", True)

    # ------------------------------------------------------------------ per container

    async def ensure(self, pod: Obj, container: Obj, wake: Callable[[], None], field_path: str) -> PullOutcome:
        """Make the container's image present per its pull policy; never waits for a pull."""
        image = container.get("image") or ""
        uid = pod["metadata"]["uid"]
        key = f"{uid}/{image}"
        if self.real:
            try:
                parse_reference(image)
            except InvalidReference as e:
                msg = f'Failed to apply default image tag "{image}": couldn\'t parse image name "{image}": {e}'
                self._event(pod, "Warning", "InspectFailed", msg, field_path)
                return PullOutcome(waiting=("InvalidImageName", msg))
        pull = self._pulls.get(key)
        if pull is not None:
            if not pull.task.done():
                return PullOutcome(waiting=("ContainerCreating", ""))
            del self._pulls[key]
            return self._finished(pod, image, key, pull, wake, field_path)
        policy = container.get("imagePullPolicy") or ("Always" if _is_latest(image) else "IfNotPresent")
        present = await self.service.status(image)
        # A runtime that brings its own images has nothing to pull them from.
        if present is not None and (policy != "Always" or not self.real):
            self._event(pod, "Normal", "Pulled", f'Container image "{image}" already present on machine',
                        field_path)
            self.service.mark_used(present)
            return PullOutcome(image_ref=present.id, image=present)
        if policy == "Never":
            msg = f'Container image "{image}" is not present with pull policy of Never'
            self._event(pod, "Warning", "ErrImageNeverPull", msg, field_path)
            return PullOutcome(waiting=("ErrImageNeverPull", msg))
        failed = self._failed.get(key)
        if failed is not None and self.backoff.in_backoff_since(key, failed[0]) > 0:
            self._event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"', field_path)
            return PullOutcome(waiting=("ImagePullBackOff", f'Back-off pulling image "{image}": ErrImagePull: '
                                                            f"{failed[1]}"))
        if self.real:
            self._event(pod, "Normal", "Pulling", f'Pulling image "{image}"', field_path)
        credentials = await self._credentials(pod, field_path)
        task = asyncio.get_running_loop().create_task(self.service.pull(image, credentials),
                                                      name=f"pull {image}")
        task.add_done_callback(lambda _t: wake())
        self._pulls[key] = _Pull(task)
        return PullOutcome(waiting=("ContainerCreating", ""))

    def _finished(self, pod: Obj, image: str, key: str, pull: _Pull, wake: Callable[[], None],
                  field_path: str) -> PullOutcome:
        try:
            img = pull.task.result()
        except asyncio.CancelledError:
            return PullOutcome(waiting=("ContainerCreating", ""))
        except Exception as e:
            msg = str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, ImageError):
                log.exception("pulling %s", image)
            self.backoff.next(key)
            self._failed[key] = (time.time(), msg)
            # Come back when the back-off ends, to pull again.
            asyncio.get_running_loop().call_later(self.backoff.current(key) + 0.01, wake)
            self._event(pod, "Warning", "Failed", f'Failed to pull image "{image}": {msg}', field_path)
            self._event(pod, "Warning", "Failed", "Error: ErrImagePull", field_path)
            return PullOutcome(waiting=("ErrImagePull", msg))
        self._failed.pop(key, None)
        if self.real:
            took = time.monotonic() - pull.started
            self._event(pod, "Normal", "Pulled", f'Successfully pulled image "{image}" in {_go_seconds(took)} '
                        f"({_go_seconds(took)} including waiting). Image size: {img.size} bytes.", field_path)
        self.service.mark_used(img)
        return PullOutcome(image_ref=img.id, image=img)

    async def _credentials(self, pod: Obj, field_path: str) -> list[Any]:
        """Logins from the pod's imagePullSecrets (the ServiceAccount's are copied in at admission)."""
        refs = (pod.get("spec") or {}).get("imagePullSecrets") or []
        if not refs or not self.real:
            return []
        from kybernetes.images.registry import credentials_from_dockerconfig

        ns = pod["metadata"].get("namespace") or "default"
        out: list[Any] = []
        missing = []
        for ref in refs:
            name = ref.get("name") or ""
            secret = await self._get_secret(ns, name) if name else None
            data = (secret or {}).get("data") or {}
            raw = data.get(".dockerconfigjson") or data.get(".dockercfg")
            if raw is None:
                missing.append(name)
                continue
            try:
                out.extend(credentials_from_dockerconfig(base64.b64decode(raw)))
            except (ValueError, TypeError) as e:
                log.warning("image pull secret %s/%s: %s", ns, name, e)
                missing.append(name)
        if missing:
            self._event(pod, "Warning", "FailedToRetrieveImagePullSecret",
                        f"Unable to retrieve some image pull secrets ({', '.join(missing)}); attempting to pull "
                        "the image may not succeed.", field_path)
        return out

    def forget_pod(self, uid: str) -> None:
        prefix = uid + "/"
        for key in [k for k in self._pulls if k.startswith(prefix)]:
            self._pulls.pop(key).task.cancel()
        for key in [k for k in self._failed if k.startswith(prefix)]:
            del self._failed[key]
        self.backoff.forget_prefix(prefix)

    # ------------------------------------------------------------------ node-wide

    async def node_images(self) -> list[Obj]:
        """``status.images`` of the Node: names (digests, then tags) and sizes, largest first."""
        out = []
        for img in await self.service.list():
            names = list(img.repo_digests) + list(img.repo_tags)
            if names:
                out.append({"names": names, "sizeBytes": img.size})
        out.sort(key=lambda i: -i["sizeBytes"])
        return out[:NODE_STATUS_MAX_IMAGES]

    async def garbage_collect(self, in_use: set[str], high: int, low: int) -> int:
        with contextlib.suppress(NotImplementedError):
            return await self.service.garbage_collect(in_use, high, low)
        return 0


def _is_latest(image: str) -> bool:
    try:
        return parse_reference(image).is_latest()
    except InvalidReference:
        return False


def _go_seconds(seconds: float) -> str:
    """A duration as Go prints time.Duration (1.234s, 450ms)."""
    if seconds < 1:
        return f"{seconds * 1000:.3f}".rstrip("0").rstrip(".") + "ms"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
