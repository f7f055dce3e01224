"""The kubelet's service account tokens: asked for once, reused, and renewed before they expire.

Projected ``serviceAccountToken`` volumes are refreshed on every volume sync;
asking the API server for a new token each time would rewrite the file every
few seconds. A token is kept per (pod, service account, audience, lifetime)
and renewed once 80% of its lifetime has passed (or after a day), as
upstream's token manager does, with a few seconds of jitter so many pods do
not all renew at once. If renewing fails, the old token keeps being used
while it is still valid.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kybernetes.api.times import parse_time

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# (namespace, service account name, TokenRequest body) -> the TokenRequest answered by the API server.
RequestFn = Callable[[str, str, Obj], Awaitable[Obj]]

MAX_TTL = 24 * 3600.0
MAX_JITTER = 10.0


@dataclass
class _Cached:
    token: str
    expires: float  # unix time
    ttl: float  # seconds the token was asked to live


class TokenManager:
    def __init__(self, request: RequestFn, clock: Callable[[], float] = time.time) -> None:
        self.request = request
        self.clock = clock
        self._cache: dict[tuple[str, str, str, str, int], _Cached] = {}

    def _needs_refresh(self, c: _Cached) -> bool:
        now = self.clock()
        jitter = random.uniform(0, MAX_JITTER)
        issued = c.expires - c.ttl
        if now > issued + MAX_TTL - jitter:
            return True
        return now > c.expires - c.ttl * 0.2 - jitter

    async def get(self, pod: Obj, src: Obj) -> str:
        """The token for one serviceAccountToken projection of a pod; raises what the request raises
        when there is no usable token."""
        meta = pod["metadata"]
        ns = meta.get("namespace") or "default"
        sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        audience = src.get("audience") or ""
        exp_s = int(src.get("expirationSeconds") or 3600)
        key = (meta.get("uid", ""), ns, sa, audience, exp_s)
        cached = self._cache.get(key)
        if cached is not None and not self._needs_refresh(cached):
            return cached.token
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience] if audience else [], "expirationSeconds": exp_s,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta.get("name", ""),
                                            "uid": meta.get("uid", "")}}}
        try:
            res = await self.request(ns, sa, body)
            status = (res or {}).get("status") or {}
            token = status.get("token")
            if not token:
                raise ValueError("the TokenRequest was answered without a token")
        except Exception as e:
            if cached is not None and self.clock() < cached.expires:
                log.warning("renewing the token of pod %s/%s failed, keeping the current one: %s",
                            ns, meta.get("name"), e)
                return cached.token
            raise
        expires = parse_time(status.get("expirationTimestamp")) or (self.clock() + exp_s)
        self._cache[key] = _Cached(token, expires, float(exp_s))
        return token

    def forget(self, uid: str) -> None:
        """Drop the tokens of a pod that is gone."""
        for k in [k for k in self._cache if k[0] == uid]:
            del self._cache[k]
