"""The revisioned key-value store: the interface (base) and the factory choosing a backend.

open_store() is how the rest of kybernetes gets a Store: from a plain path or a
"sqlite://" URL today; the etcd backend plugs in here when it lands.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from kybernetes.storage.base import (
    ADDED,
    DELETED,
    KV,
    MODIFIED,
    Compacted,
    Compactor,
    Event,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    Store,
    StoreClosed,
    StoreError,
    Watch,
    prefix_end,
)

DEFAULT_DB_NAME = "kybernetes.db"

__all__ = [
    "ADDED",
    "DELETED",
    "KV",
    "MODIFIED",
    "Compacted",
    "Compactor",
    "Event",
    "FutureRevision",
    "KeyExists",
    "KeyNotFound",
    "RevisionConflict",
    "Store",
    "StoreClosed",
    "StoreError",
    "Watch",
    "open_store",
    "prefix_end",
]


def open_store(url_or_path: str | os.PathLike[str], **options: int) -> Store:
    """Open the store named by a path or URL.

    A plain path names the SQLite file ("kybernetes.db" inside it if it is a
    directory); "sqlite:///abs/file.db" is the URL form of the same (absolute path,
    as URLs have it). Parent directories are created. Options go to the backend
    (e.g. ring_size for SQLite's in-memory window of recent events).
    """
    target = os.fspath(url_or_path)
    if "://" in target:
        parts = urlsplit(target)
        if parts.scheme != "sqlite":
            raise ValueError(f"unsupported store URL scheme {parts.scheme!r} in {target!r}")
        if parts.netloc:
            raise ValueError(f"sqlite store URL must be sqlite:///path, got {target!r}")
        target = parts.path
        if not target:
            raise ValueError(f"sqlite store URL has no path: {url_or_path!r}")
    if os.path.isdir(target):
        target = os.path.join(target, DEFAULT_DB_NAME)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    from kybernetes.storage.sqlite import SqliteStore

    return SqliteStore(target, **options)
