"""The image store: chain IDs, records and names, tag moves, removal of unshared content,
crash leftovers, and two processes sharing one root."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kybernetes.images.model import Descriptor, Image
from kybernetes.images.store import ContentVanished, ImageRecord, ImageStore, chain_ids


def _digest(s: str) -> str:
    return "sha256:" + hashlib.sha256(s.encode()).hexdigest()


def test_chain_ids_follow_the_oci_spec() -> None:
    a, b, c = _digest("a"), _digest("b"), _digest("c")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


def put(store: ImageStore, name: str, layers: list[str]) -> ImageRecord:
    """Store blobs for a fake image (config + one blob per layer name) and its snapshots."""
    config = json.dumps({"name": name}).encode()
    config_digest = store.content.write(config)
    descs, diff_ids = [], []
    for layer in layers:
        data = f"layer {layer}".encode()
        d = store.content.write(data)
        descs.append(Descriptor("application/vnd.oci.image.layer.v1.tar", d, len(data)))
        diff_ids.append(d)
    chains = chain_ids(diff_ids)
    for i, chain in enumerate(chains):
        store.create_snapshot(chain, diff_ids[i], chains[i - 1] if i else None,
                              lambda fs, i=i: Path(fs, "f").write_bytes(b"x" * (i + 1)) or i + 1)
    image = Image(id=config_digest, size=len(config), diff_ids=diff_ids, config={"Cmd": [name]})
    return ImageRecord(image, descs, [config_digest, *(d.digest for d in descs)])


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore(str(tmp_path / "images"), durable=False)
    yield s
    s.close()


def test_names_resolve(store: ImageStore) -> None:
    rec = put(store, "a", ["base", "top"])
    store.add(rec, tags=["docker.io/library/busybox:latest"],
              digests=[f"docker.io/library/busybox@{_digest('index')}"])
    for name in ["busybox", "busybox:latest", "docker.io/library/busybox:latest", "index.docker.io/busybox",
                 f"busybox@{_digest('index')}", rec.id, rec.id[7:], rec.id[7:19], "sha256:" + rec.id[7:20]]:
        assert store.resolve(name) is not None and store.resolve(name).id == rec.id, name
    for name in ["busybox:other", "alpine", rec.id[7:18], f"busybox@{_digest('nope')}", "INVALID//", ""]:
        assert store.resolve(name) is None, name


def test_tag_moves_and_old_image_stays(store: ImageStore) -> None:
    old = store.add(put(store, "old", ["l1"]), tags=["docker.io/library/app:latest", "docker.io/library/app:1"])
    new = store.add(put(store, "new", ["l2"]), tags=["docker.io/library/app:latest"])
    assert store.resolve("app").id == new.id
    assert store.get(old.id).image.repo_tags == ["docker.io/library/app:1"]
    store.add(put(store, "newer", ["l3"]), tags=["docker.io/library/app:1"])
    assert store.get(old.id).image.repo_tags == []  # untagged, still listed
    assert old.id in {r.id for r in store.records()}
    # Re-adding the same image merges names and keeps when it was first seen.
    again = store.add(put(store, "new", ["l2"]), tags=["docker.io/library/app:2"], now=time.time() + 100)
    assert again.image.repo_tags == ["docker.io/library/app:latest", "docker.io/library/app:2"]
    assert again.image.created_at == new.image.created_at


def test_remove_keeps_shared_content(store: ImageStore) -> None:
    a = store.add(put(store, "a", ["base", "a-top"]), tags=["docker.io/library/a:latest"])
    b = store.add(put(store, "b", ["base", "b-top"]), tags=["docker.io/library/b:latest"])
    base_chain = a.chain_ids[0]
    assert b.chain_ids[0] == base_chain
    freed = store.remove(a.id)
    assert store.get(a.id) is None and store.resolve("a") is None
    assert not store.content.has(a.id) and not store.content.has(a.layers[1].digest)
    assert store.content.has(a.layers[0].digest)  # b's too
    assert store.has_snapshot(base_chain) and not store.has_snapshot(a.chain_ids[1])
    assert freed == store_sizes(a) - len("layer base") - 1
    store.remove(b.id, protect={b.chain_ids[1]})  # work in progress relies on it
    assert store.has_snapshot(b.chain_ids[1]) and not store.content.has(b.layers[1].digest)
    assert not store.has_snapshot(base_chain)
    assert not [n for n in os.listdir(os.path.join(store.root, "snapshots")) if n.startswith(".tmp-")]


def store_sizes(rec: ImageRecord) -> int:
    config = len(json.dumps({"name": "a"}))
    layers = sum(d.size for d in rec.layers)
    snapshots = sum(range(1, len(rec.layers) + 1))
    return config + layers + snapshots


def test_add_refuses_vanished_content(store: ImageStore) -> None:
    rec = put(store, "a", ["l"])
    store.content.delete(rec.layers[0].digest)
    with pytest.raises(ContentVanished):
        store.add(rec, tags=["docker.io/library/a:latest"])
    assert store.records() == []


def test_untag_pin_and_last_used(tmp_path: Path, store: ImageStore) -> None:
    rec = store.add(put(store, "a", ["l"]), tags=["docker.io/library/a:1", "docker.io/library/a:2"],
                    digests=[f"docker.io/library/a@{_digest('m')}"])
    assert store.untag("a:1").image.repo_tags == ["docker.io/library/a:2"]
    assert store.untag(f"a@{_digest('m')}").image.repo_digests == []
    assert store.untag("a:nope") is None
    store.set_pinned(rec.id, True)
    store.mark_used(rec.id, 5e9)
    assert store.get(rec.id).image.last_used == 5e9  # at once in memory
    store.close()
    reopened = ImageStore(str(tmp_path / "images"), durable=False)
    got = reopened.get(rec.id).image
    assert got.pinned and got.last_used == 5e9  # flushed by close
    reopened.close()


def test_leftovers_cleaned_on_open(tmp_path: Path) -> None:
    root = tmp_path / "images"
    ImageStore(str(root), durable=False).close()
    snaps = root / "snapshots"
    # A killed unpack, a killed removal, a half-written records file...
    (snaps / ".tmp-deadbeef-0001/fs/usr").mkdir(parents=True)
    (snaps / ".tmp-del-cafe-0002/fs").mkdir(parents=True)
    (root / "images.json.tmp-123-abcd").write_bytes(b'{"half')
    # ...and an unpack in progress in another process (it holds its directory's lock).
    busy = snaps / ".tmp-0123-0003"
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        s = ImageStore(str(root), durable=False)
        assert sorted(os.listdir(snaps)) == [".tmp-0123-0003"]
        assert not (root / "images.json.tmp-123-abcd").exists()
        s.close()
    finally:
        os.close(fd)


def test_snapshot_creation_is_atomic(store: ImageStore) -> None:
    chain = _digest("c")

    def boom(fs: str) -> int:
        Path(fs, "partial").write_bytes(b"x")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        store.create_snapshot(chain, chain, None, boom)
    assert not store.has_snapshot(chain)
    assert os.listdir(os.path.join(store.root, "snapshots")) == []
    # Two writers racing: the first rename wins, the second's work is dropped.
    def inner(fs: str) -> int:
        store.create_snapshot(chain, chain, None, lambda d: Path(d, "first").write_bytes(b"1") or 1)
        Path(fs, "second").write_bytes(b"2")
        return 1

    path = store.create_snapshot(chain, chain, None, inner)
    assert os.listdir(path) == ["first"]


def test_corrupt_records_moved_aside(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "images.json").write_bytes(b"not json")
    s = ImageStore(str(root), durable=False)
    assert s.records() == []
    assert [n for n in os.listdir(root) if n.startswith("images.json.corrupt-")]
    s.close()


def test_sweep_removes_old_orphans_only(store: ImageStore) -> None:
    kept = store.add(put(store, "a", ["l"]), tags=["docker.io/library/a:latest"])
    orphan = put(store, "orphan", ["o"])  # a killed pull's content: nothing records it
    assert store.sweep() == 0  # too young: may be a pull in progress in another process
    freed = store.sweep(min_age=0, now=time.time() + 1)
    assert freed > 0
    assert not store.content.has(orphan.id) and not store.has_snapshot(orphan.chain_ids[0])
    assert store.content.has(kept.id) and store.has_snapshot(kept.chain_ids[0])


_CHILD = """
import json, sys
from kybernetes.images.store import ImageRecord, ImageStore
from kybernetes.images.model import Image
s = ImageStore(sys.argv[1], durable=False)
for i in range(int(sys.argv[2])):
    config = s.content.write(json.dumps({"child": i}).encode())
    s.add(ImageRecord(Image(id=config), [], [config]), tags=[f"docker.io/library/child:{i}",
                                                           "docker.io/library/shared:latest"])
s.close()
"""


def test_two_processes_share_a_root(tmp_path: Path) -> None:
    root = str(tmp_path / "images")
    s = ImageStore(root, durable=False)
    n = 15
    child = subprocess.Popen([sys.executable, "-c", _CHILD, root, str(n)], cwd=os.getcwd())
    for i in range(n):
        config = s.content.write(json.dumps({"parent": i}).encode())
        s.add(ImageRecord(Image(id=config), [], [config]), tags=[f"docker.io/library/parent:{i}"])
    assert child.wait(timeout=60) == 0
    records = s.records()  # re-read: the child's writes are seen
    assert len(records) == 2 * n
    tags = [t for r in records for t in r.image.repo_tags]
    assert len(tags) == len(set(tags)) == 2 * n + 1  # "shared" points at one image only
    s.close()


def test_durable_snapshot(tmp_path: Path) -> None:
    s = ImageStore(str(tmp_path / "images"))  # durable: syncfs before the rename
    chain = _digest("d")
    path = s.create_snapshot(chain, chain, None, lambda fs: Path(fs, "f").write_bytes(b"x"))
    assert s.has_snapshot(chain) and os.listdir(path) == ["f"]
    assert s.usage() == 1
    s.close()
