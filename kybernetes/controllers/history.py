"""ControllerRevisions: the rollout history the DaemonSet and StatefulSet controllers keep.

A ControllerRevision is an immutable snapshot of an owner's pod template. Its
``data`` is the strategic-merge patch that puts that template back on the
owner (``{"spec": {"template": {..., "$patch": "replace"}}}``), which is exactly
what ``kubectl rollout undo`` applies, and what ``kubectl rollout history``
shows. This module owns what both controllers share about revisions:

* the patch of a template and the hash of a revision (FNV-1a over the canonical
  JSON of the data, plus the collision count when there is one), encoded with
  the same "safe" alphabet upstream uses so names never spell words;
* naming (``<owner>-<hash>``), the ``controller-revision-hash`` label, ordering
  and the next revision number;
* creating a revision with hash-collision handling (an existing revision of the
  same name but different data bumps the owner's collisionCount);
* choosing which old revisions to delete under ``revisionHistoryLimit``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import orjson

from ..api.errors import StatusError
from ..client import ResourceClient
from .common import owner_reference

Obj = dict[str, Any]

CONTROLLER_REVISION_HASH_LABEL = "controller-revision-hash"

# Upstream's rand.SafeEncodeString alphabet: no vowels, no look-alike digits.
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# A revision name must stay a valid object name after the suffix is added.
_MAX_PREFIX = 223

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def _fnv32a(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def safe_encode(s: str) -> str:
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in s.encode())


def template_patch(owner: Obj) -> Obj:
    """The revision data for an owner: a patch that restores its pod template whole."""
    template = copy.deepcopy((owner.get("spec") or {}).get("template") or {})
    template["$patch"] = "replace"
    return {"spec": {"template": template}}


def template_of(revision: Obj) -> Obj:
    """The pod template a revision recorded (the inverse of template_patch)."""
    template = copy.deepcopy(((revision.get("data") or {}).get("spec") or {}).get("template") or {})
    template.pop("$patch", None)
    return template


def hash_data(data: Obj, collision_count: int | None = None) -> str:
    """The hash naming a revision; the collision count, when set, moves it to a fresh name."""
    raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    if collision_count:
        raw += str(collision_count).encode()
    return safe_encode(str(_fnv32a(raw)))


def revision_name(prefix: str, hash_: str) -> str:
    return f"{prefix[:_MAX_PREFIX]}-{hash_}"


def new_revision(owner: Obj, data: Obj, revision: int, collision_count: int | None = None) -> Obj:
    """An unsaved ControllerRevision of `owner` (its template labels, its annotations, a controller ref)."""
    meta = owner["metadata"]
    template = (owner.get("spec") or {}).get("template") or {}
    hash_ = hash_data(data, collision_count)
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels[CONTROLLER_REVISION_HASH_LABEL] = hash_
    rmeta: Obj = {"name": revision_name(meta["name"], hash_), "namespace": meta.get("namespace"),
                  "labels": labels, "ownerReferences": [owner_reference(owner)]}
    # Copied as upstream does, so `kubectl rollout history` can show kubernetes.io/change-cause.
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != "kubectl.kubernetes.io/last-applied-configuration"}
    if annotations:
        rmeta["annotations"] = annotations
    return {"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": rmeta,
            "data": data, "revision": revision}


def revision_hash(revision: Obj) -> str:
    return ((revision.get("metadata") or {}).get("labels") or {}).get(CONTROLLER_REVISION_HASH_LABEL, "")


def equal_revision(a: Obj, b: Obj) -> bool:
    """Same content: the data is compared, since equal hashes may still collide."""
    return (a.get("data") or {}) == (b.get("data") or {})


def sort_revisions(revisions: Iterable[Obj]) -> list[Obj]:
    """Oldest first: by revision number, then creation time, then name."""
    return sorted(revisions, key=lambda r: (int(r.get("revision") or 0),
                                            (r.get("metadata") or {}).get("creationTimestamp") or "",
                                            (r.get("metadata") or {}).get("name") or ""))


def next_revision(revisions: Iterable[Obj]) -> int:
    return max((int(r.get("revision") or 0) for r in revisions), default=0) + 1


def owned_revisions(revisions: Iterable[Obj], owner: Obj) -> list[Obj]:
    uid = owner["metadata"]["uid"]
    out = []
    for r in revisions:
        for ref in (r.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("controller") and ref.get("uid") == uid:
                out.append(r)
                break
    return out


async def create_revision(rc: ResourceClient, owner: Obj, data: Obj, revision: int,
                          collision_count: int) -> tuple[Obj, int]:
    """Create the revision for `data`; returns (revision, collisionCount to record).

    A name taken by a revision with the same data is that revision (an earlier
    create whose event we have not seen yet); taken by different data it is a
    hash collision, and the collision count moves the name along.
    """
    ns = owner["metadata"].get("namespace")
    while True:
        cr = new_revision(owner, data, revision, collision_count)
        try:
            return await rc.create(cr, ns), collision_count
        except StatusError as e:
            if e.code != 409 or e.reason != "AlreadyExists":
                raise
        existing = await rc.get(cr["metadata"]["name"], ns)
        if equal_revision(existing, cr):
            return existing, collision_count
        collision_count += 1


def revisions_to_prune(revisions: Iterable[Obj], live: set[str], limit: int) -> list[Obj]:
    """The oldest revisions beyond `limit` among those no live pod or status names.

    `live` holds revision names and hashes in use; a revision matching either is kept.
    """
    dead = [r for r in sort_revisions(revisions)
            if (r.get("metadata") or {}).get("name") not in live and revision_hash(r) not in live]
    excess = len(dead) - max(0, limit)
    return dead[:excess] if excess > 0 else []
