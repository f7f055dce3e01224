"""The registry client against Debian's docker-registry and the in-process fake registry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path

import orjson
import pytest

from kybernetes.images.build import Entry, ImageConfig, build_image, busybox_image, image_index, push, web_image
from kybernetes.images.content import ContentStore
from kybernetes.images.errors import DigestMismatch, ImageNotFound, RegistryError, Unauthorized, UnsupportedImage
from kybernetes.images.model import OCI_INDEX, Platform
from kybernetes.images.reference import parse
from kybernetes.images.registries import parse_registries
from kybernetes.images.registry import (
    Credential,
    RegistryClient,
    credentials_from_dockerconfig,
    parse_challenges,
    select_manifest,
)
from tests.images.registryfixture import (
    FakeRegistry,
    cached_layout,
    dead_port,
    needs_busybox,
    needs_registry,
    poll,
    running_registry,
    start_registry,
)

AMD64 = Platform("linux", "amd64")


@pytest.fixture
async def registry(tmp_path: Path):
    async with running_registry(tmp_path) as reg:
        yield reg


@pytest.fixture
async def auth_registry(tmp_path: Path):
    async with running_registry(tmp_path, username="alice", password="s3cret") as reg:
        yield reg


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(str(tmp_path / "content"))


@pytest.fixture
async def client(store: ContentStore):
    c = RegistryClient(store, platform=AMD64, retry_backoff=0.01)
    try:
        yield c
    finally:
        await c.close()


def tiny_image(tag: str = "tiny:1", platform: Platform = AMD64, text: str = "hello", layers: int = 2):
    """A small image with ``layers`` one-file layers (content differs per platform)."""
    def noise(seed: str) -> bytes:  # incompressible, so layers are a few KiB on the wire
        return b"".join(hashlib.sha256(f"{seed}{n}".encode()).digest() for n in range(300))

    ls = [[Entry.file(f"layer{i}.bin", noise(f"{text} {platform} {i}"))] for i in range(layers)]
    return build_image(ls, ImageConfig(cmd=["true"], platform=platform), tags=[tag])


def ingest_files(store: ContentStore) -> list[str]:
    return os.listdir(os.path.join(store.root, "ingest"))


# --------------------------------------------------------------------------- pure pieces


def test_dockerconfig_shapes():
    auth = base64.b64encode(b"bob:pw:with:colons").decode()
    creds = credentials_from_dockerconfig(orjson.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": auth},
        "reg.example.com:5000": {"username": "u", "password": "p"},
        "http://127.0.0.1:5000/v2/": {"identitytoken": "tok"},
        "empty.example.com": {},
    }}))
    assert [(c.registry, c.username, c.password, c.identity_token) for c in creds] == [
        ("docker.io", "bob", "pw:with:colons", ""), ("reg.example.com:5000", "u", "p", ""),
        ("127.0.0.1:5000", "", "", "tok")]
    legacy = credentials_from_dockerconfig({"quay.io": {"auth": base64.b64encode(b"a:b").decode(), "email": "x"}})
    assert [(c.registry, c.username, c.password) for c in legacy] == [("quay.io", "a", "b")]
    assert "pw" not in repr(creds[0])
    with pytest.raises(ValueError):
        credentials_from_dockerconfig("{not json")
    with pytest.raises(ValueError):
        credentials_from_dockerconfig({"auths": {"x.io": {"auth": base64.b64encode(b"nocolon").decode()}}})


def test_parse_challenges():
    got = parse_challenges(['Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"',
                            'Basic realm="x, y"'])
    assert got == [("bearer", {"realm": "https://auth.example/token", "service": "reg",
                               "scope": "repository:a/b:pull"}), ("basic", {"realm": "x, y"})]
    assert parse_challenges(["Basic realm=plain, Bearer realm=\"r\""]) == [
        ("basic", {"realm": "plain"}), ("bearer", {"realm": "r"})]


def test_select_manifest_platforms():
    def entry(os_, arch, variant=""):
        p = {"os": os_, "architecture": arch} | ({"variant": variant} if variant else {})
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1, "platform": p,
                "digest": "sha256:" + (os_ + arch + variant).encode().hex().ljust(64, "0")[:64]}

    index = {"manifests": [entry("linux", "amd64"), entry("linux", "arm64", "v8"), entry("linux", "arm", "v6"),
                           entry("linux", "arm", "v7"), entry("unknown", "unknown")]}
    pick = lambda p: select_manifest(index, p).platform  # noqa: E731
    assert pick(Platform("linux", "amd64")) == Platform("linux", "amd64")
    assert pick(Platform("linux", "arm64")) == Platform("linux", "arm64", "v8")  # v8 matches no variant
    assert pick(Platform("linux", "arm", "v7")) == Platform("linux", "arm", "v7")
    assert pick(Platform("linux", "arm", "v8")) == Platform("linux", "arm", "v7")  # best older variant
    only_v8 = {"manifests": [entry("linux", "arm64")]}
    assert select_manifest(only_v8, Platform("linux", "arm64", "v8")).platform == Platform("linux", "arm64")
    with pytest.raises(UnsupportedImage) as e:
        select_manifest(index, Platform("linux", "s390x"))
    assert "linux/amd64" in str(e.value) and "linux/arm64/v8" in str(e.value) and "linux/s390x" in str(e.value)
    with pytest.raises(UnsupportedImage):
        select_manifest({"manifests": [entry("linux", "arm", "v7")]}, Platform("linux", "arm", "v6"))


# --------------------------------------------------------------------------- the real registry


@needs_registry
@needs_busybox
async def test_push_then_pull_by_tag_and_digest(registry, store, client):
    digest = await push(str(cached_layout("busybox")), registry.ref("library/busybox:1.35"))
    seen: list[int] = []
    res = await client.pull(parse(registry.ref("library/busybox:1.35")), progress=seen.append)
    assert res.manifest_digest == digest == res.resolved_digest
    assert store.has(digest) and store.has(res.config_digest)
    assert [layer.digest for layer in res.layers] and all(store.has(layer.digest) for layer in res.layers)
    assert res.bytes_fetched == sum(seen) > sum(layer.size for layer in res.layers)
    assert ingest_files(store) == []
    config = orjson.loads(store.read(res.config_digest))
    assert config["config"]["Cmd"] == ["sh"]

    # Everything is there: a second pull fetches nothing but a HEAD.
    again = await client.pull(parse(registry.ref("library/busybox:1.35")))
    assert again.bytes_fetched == 0 and again.manifest_digest == digest

    # By digest, into a fresh store.
    other = ContentStore(str(Path(store.root).parent / "other"))
    c2 = RegistryClient(other, platform=AMD64)
    try:
        by_digest = await c2.pull(parse(registry.ref(f"library/busybox@{digest}")))
        assert by_digest.manifest_digest == digest and other.has(by_digest.layers[0].digest)
        d, mt, data = await c2.resolve(parse(registry.ref("library/busybox:1.35")))
        assert d == digest and mt == "application/vnd.oci.image.manifest.v1+json" and orjson.loads(data)["layers"]
    finally:
        await c2.close()


@needs_registry
@needs_busybox
async def test_not_found_messages(registry, client):
    await push(str(cached_layout("busybox")), registry.ref("library/busybox:latest"))
    for name in ("library/busybox:nope", "library/missing:latest", "library/busybox@sha256:" + "1" * 64):
        ref = parse(registry.ref(name))
        with pytest.raises(ImageNotFound) as e:
            await client.pull(ref)
        assert str(e.value) == (f'failed to pull and unpack image "{ref}": failed to resolve reference '
                                f'"{ref}": {ref}: not found')


@needs_registry
@needs_busybox
async def test_basic_auth(auth_registry, store, client):
    ref = auth_registry.ref("team/busybox:latest")
    good = Credential(auth_registry.host, "alice", "s3cret")
    with pytest.raises(Unauthorized):
        await push(str(cached_layout("busybox")), ref)
    await push(str(cached_layout("busybox")), ref, username="alice", password="s3cret")
    with pytest.raises(Unauthorized) as e:
        await client.pull(parse(ref))
    assert "401" in str(e.value)
    with pytest.raises(Unauthorized):
        await client.pull(parse(ref), [Credential(auth_registry.host, "alice", "wrong")])
    # Credentials for another registry are not sent here.
    with pytest.raises(Unauthorized):
        await client.pull(parse(ref), [Credential("elsewhere.example.com", "alice", "s3cret")])
    # Several secrets: the wrong one is tried, then the right one.
    res = await client.pull(parse(ref), [Credential(auth_registry.host, "alice", "wrong"), good])
    assert store.has(res.layers[0].digest)


@needs_registry
@needs_busybox
async def test_credentials_from_registries_yaml(auth_registry, store):
    ref = auth_registry.ref("team/busybox:latest")
    await push(str(cached_layout("busybox")), ref, username="alice", password="s3cret")
    cfg = parse_registries({"configs": {auth_registry.host: {"auth": {"username": "alice", "password": "s3cret"}}}})
    c = RegistryClient(store, cfg, platform=AMD64)
    try:
        res = await c.pull(parse(ref))
        assert store.has(res.config_digest)
    finally:
        await c.close()


@needs_registry
@needs_busybox
async def test_mirror_in_front_of_dead_endpoint(registry, store):
    await push(str(cached_layout("busybox")), registry.ref("library/busybox:latest"))
    await push(str(cached_layout("busybox")), registry.ref("mirrored/busybox:latest"))
    dead = f"127.0.0.1:{dead_port()}"
    cfg = parse_registries({"mirrors": {dead: {"endpoint": [f"http://127.0.0.1:{dead_port()}", registry.url]}}})
    c = RegistryClient(store, cfg, platform=AMD64)
    try:
        res = await c.pull(parse(f"{dead}/library/busybox:latest"))
        assert store.has(res.manifest_digest)
    finally:
        await c.close()
    # docker.io through a mirror that rewrites the repository; the default endpoint is off so
    # nothing can leave loopback.
    cfg = parse_registries({"mirrors": {"docker.io": {"endpoint": [registry.url],
                                                      "rewrite": {"^library/(.*)": "mirrored/$1"}}}},
                           disable_default_endpoint=True)
    c = RegistryClient(ContentStore(str(Path(store.root).parent / "c2")), cfg, platform=AMD64)
    try:
        res = await c.pull(parse("busybox"))
        assert str(res.reference) == "docker.io/library/busybox:latest"
        with pytest.raises(ImageNotFound):
            await c.pull(parse("busybox:other"))
    finally:
        await c.close()
    # Every endpoint dead: the last one's error, a RegistryError.
    dead2 = f"127.0.0.1:{dead_port()}"
    c = RegistryClient(ContentStore(str(Path(store.root).parent / "c3")), None, platform=AMD64)
    try:
        with pytest.raises(RegistryError) as e:
            await c.pull(parse(f"{dead2}/x:latest"))
        assert "failed to do request" in str(e.value)
    finally:
        await c.close()


@needs_registry
@needs_busybox
async def test_tls_endpoint(tmp_path, store):
    reg = await start_registry(tmp_path, tls=True)
    try:
        layout = str(cached_layout("busybox"))
        await push(layout, f"https://{reg.host}/library/busybox:latest", insecure_skip_verify=True)
        name = "tls.kyb.test"  # never contacted itself: the default endpoint is off
        mirror = {"mirrors": {name: {"endpoint": [f"https://{reg.host}"]}}}
        for tls, ok in (({"ca_file": reg.tls.ca_file}, True), ({}, False), ({"insecure_skip_verify": True}, True)):
            cfg = parse_registries(mirror | {"configs": {reg.host: {"tls": tls}}}, disable_default_endpoint=True)
            c = RegistryClient(ContentStore(str(tmp_path / f"s{len(str(tls))}")), cfg, platform=AMD64)
            try:
                if ok:
                    res = await c.pull(parse(f"{name}/library/busybox:latest"))
                    assert res.layers
                else:
                    with pytest.raises(RegistryError) as e:
                        await c.pull(parse(f"{name}/library/busybox:latest"))
                    assert "certificate" in str(e.value).lower() or "tls" in str(e.value)
            finally:
                await c.close()
    finally:
        await reg.stop()


@needs_registry
async def test_multi_platform_index_through_real_registry(registry, store):
    imgs = [tiny_image(platform=p) for p in (AMD64, Platform("linux", "arm64", "v8"))]
    idx = image_index(imgs, tags=["multi:1"])
    layout = str(Path(store.root).parent / "multi")
    from kybernetes.images.build import write_oci_layout
    write_oci_layout(layout, idx)
    top = await push(layout, registry.ref("multi:1"))
    assert top == idx.index_digest
    c = RegistryClient(store, platform=Platform("linux", "arm64"))
    try:
        res = await c.pull(parse(registry.ref("multi:1")))
        assert res.manifest_digest == imgs[1].manifest_digest and res.resolved_digest == idx.index_digest
        assert store.has(idx.index_digest) and res.index is not None
    finally:
        await c.close()
    for img in imgs:
        img.close()


# --------------------------------------------------------------------------- the fake registry


async def test_bearer_token_flow(store, client):
    with tiny_image() as img:
        async with FakeRegistry(auth="bearer") as fake:
            fake.add_image("team/tiny", "1", img)
            ref = parse(fake.ref("team/tiny:1"))
            with pytest.raises(Unauthorized) as e:
                await client.pull(ref)
            assert "pull access denied" in str(e.value)
            with pytest.raises(Unauthorized) as e:
                await client.pull(ref, [Credential(fake.host, "alice", "wrong")])
            assert "failed to fetch oauth token" in str(e.value)
            res = await client.pull(ref, [Credential(fake.host, "alice", "s3cret")])
            assert all(store.has(d.digest) for d in res.layers)
            assert fake.tokens_issued == 1  # one token served the manifests and every blob
            token_req = fake.seen("token")[-1]
            assert "scope=repository%3Ateam%2Ftiny%3Apull" in token_req.path or \
                "scope=repository:team/tiny:pull" in token_req.path
            # A later pull with the same credential reuses the cached token.
            await client.resolve(ref, [Credential(fake.host, "alice", "s3cret")])
            assert fake.tokens_issued == 1
            # ... and a pull without credentials does not get to use it.
            with pytest.raises(Unauthorized):
                await client.resolve(ref)


async def test_bearer_access_token_and_public_repo(client):
    with tiny_image() as img:
        async with FakeRegistry(auth="bearer", token_field="access_token", anonymous_pull=True) as fake:
            fake.add_image("public/tiny", "1", img)
            res = await client.pull(parse(fake.ref("public/tiny:1")))
            assert res.manifest_digest == img.manifest_digest


async def test_basic_auth_on_fake(client):
    with tiny_image() as img:
        async with FakeRegistry(auth="basic") as fake:
            fake.add_image("tiny", "1", img)
            res = await client.pull(parse(fake.ref("tiny:1")), [Credential(fake.host, "alice", "s3cret")])
            assert res.layers
            # The Basic header, once accepted, is sent up front: one 401 for the whole pull.
            assert sum(1 for s in fake.seen() if "Authorization" not in s.headers) == 1


async def test_redirected_blobs_lose_authorization(store, client):
    with tiny_image() as img:
        async with FakeRegistry(auth="basic", redirect_blobs=True) as fake:
            fake.add_image("tiny", "1", img)
            await client.pull(parse(fake.ref("tiny:1")), [Credential(fake.host, "alice", "s3cret")])
            gets = fake.seen("storage", "GET")
            assert len(gets) == 3  # config and two layers
            assert all("Authorization" not in g.headers for g in gets)
            assert store.has(img.config_digest) and all(store.has(lay.digest) for lay in img.layers)


async def test_resume_after_cut(store, client):
    with tiny_image(layers=1) as img:
        layer = img.layers[0].digest
        async with FakeRegistry(cut={layer: 1}) as fake:
            fake.add_image("tiny", "1", img)
            res = await client.pull(parse(fake.ref("tiny:1")))
            assert store.has(layer)
            ranges = [g.headers.get("Range") for g in fake.seen("registry", "GET", layer)]
            half = img.layers[0].size // 2
            assert ranges == [None, f"bytes={half}-"]
            # Resumed, not restarted: the layer's bytes came over the wire once.
            manifests = len(img.manifest_bytes)
            assert res.bytes_fetched == manifests + len(img.config_bytes) + img.layers[0].size


async def test_restart_when_server_ignores_range(store, client):
    with tiny_image(layers=1) as img:
        layer = img.layers[0].digest
        async with FakeRegistry(cut={layer: 1}, ignore_range=True) as fake:
            fake.add_image("tiny", "1", img)
            await client.pull(parse(fake.ref("tiny:1")))
            assert store.has(layer) and ingest_files(store) == []


async def test_partial_from_an_earlier_run_is_resumed(store, client):
    with tiny_image(layers=1) as img:
        layer = img.layers[0]
        data = Path(layer.gz_path).read_bytes()
        ing = store.ingest(layer.digest, layer.size)
        ing.write(data[:1000])
        ing.abort()
        async with FakeRegistry() as fake:
            fake.add_image("tiny", "1", img)
            await client.pull(parse(fake.ref("tiny:1")))
            assert [g.headers.get("Range") for g in fake.seen("registry", "GET", layer.digest)] == ["bytes=1000-"]
            assert store.has(layer.digest)


async def test_retries_5xx_then_gives_up(store, client):
    with tiny_image(layers=1) as img:
        layer = img.layers[0].digest
        async with FakeRegistry(fail={layer: 2}) as fake:
            fake.add_image("tiny", "1", img)
            await client.pull(parse(fake.ref("tiny:1")))
            assert fake.blob_gets[layer] == 3
        store.delete(layer)
        async with FakeRegistry(fail={layer: 100}) as fake:
            fake.add_image("tiny", "1", img)
            with pytest.raises(RegistryError) as e:
                await client.pull(parse(fake.ref("tiny:1")))
            assert "failed to copy" in str(e.value) and "500" in str(e.value)
            assert not store.has(layer)


async def test_corrupt_blob_is_refused(store, client):
    with tiny_image(layers=1) as img:
        layer = img.layers[0].digest
        async with FakeRegistry(corrupt={layer}) as fake:
            fake.add_image("tiny", "1", img)
            with pytest.raises(DigestMismatch) as e:
                await client.pull(parse(fake.ref("tiny:1")))
            assert layer in str(e.value)
            assert not store.has(layer) and layer.split(":")[1] not in ingest_files(store)
            assert not store.has(img.manifest_digest)  # a failed pull names nothing


async def test_wrong_manifest_digest_is_refused(store, client):
    with tiny_image() as img:
        async with FakeRegistry() as fake:
            fake.add_image("tiny", "1", img)
            # A registry that serves other bytes under the pinned digest.
            other = tiny_image(text="other")
            fake.manifests[("tiny", img.manifest_digest)] = (img.media_type, other.manifest_bytes)
            with pytest.raises(DigestMismatch):
                await client.pull(parse(fake.ref(f"tiny@{img.manifest_digest}")))
            assert not store.has(img.manifest_digest) and not store.has(other.manifest_digest)
            assert list(store.digests()) == []
            other.close()
        async with FakeRegistry(wrong_digest_header=True) as fake:
            fake.add_image("tiny", "1", img)
            with pytest.raises(DigestMismatch) as e:
                await client.pull(parse(fake.ref("tiny:1")))
            assert "Docker-Content-Digest" in str(e.value)
            assert list(store.digests()) == []


async def test_platform_selection_from_index(tmp_path):
    arm = Platform("linux", "arm64", "v8")
    imgs = [tiny_image(platform=p) for p in (AMD64, arm, Platform("linux", "arm", "v7"))]
    idx = image_index(imgs)
    async with FakeRegistry() as fake:
        top = fake.add_image("multi", "latest", idx)
        assert top == idx.index_digest
        for want, got in ((Platform("linux", "arm64"), imgs[1]), (AMD64, imgs[0]),
                          (Platform("linux", "arm", "v7"), imgs[2])):
            store = ContentStore(str(tmp_path / str(want).replace("/", "-")))
            c = RegistryClient(store, platform=want)
            try:
                res = await c.pull(parse(fake.ref("multi")))
                assert res.manifest_digest == got.manifest_digest
                assert res.resolved_digest == idx.index_digest and store.has(idx.index_digest)
                assert orjson.loads(store.read(idx.index_digest))["mediaType"] == OCI_INDEX
                assert {d.digest for d in res.layers} == {lay.digest for lay in got.layers}
                # Other platforms' layers were not downloaded.
                assert not any(store.has(lay.digest) for i in imgs if i is not got for lay in i.layers)
            finally:
                await c.close()
        c = RegistryClient(ContentStore(str(tmp_path / "s390x")), platform=Platform("linux", "s390x"))
        try:
            with pytest.raises(UnsupportedImage) as e:
                await c.pull(parse(fake.ref("multi")))
            assert "linux/amd64" in str(e.value) and "linux/arm/v7" in str(e.value)
        finally:
            await c.close()
    for i in imgs:
        i.close()


async def test_not_found_on_fake(client):
    async with FakeRegistry() as fake:
        with pytest.raises(ImageNotFound):
            await client.pull(parse(fake.ref("nothing:here")))
        with pytest.raises(ImageNotFound):
            await client.resolve(parse(fake.ref("nothing:here")))


async def test_concurrent_pulls_share_a_blob(store, client):
    base = [Entry.file("base.txt", "shared base layer\n" * 500)]
    a = build_image([base, [Entry.file("a", "a")]], ImageConfig(cmd=["a"], platform=AMD64))
    b = build_image([base, [Entry.file("b", "b")]], ImageConfig(cmd=["b"], platform=AMD64))
    shared = a.layers[0].digest
    assert b.layers[0].digest == shared
    async with FakeRegistry(gate=asyncio.Event()) as fake:
        fake.add_image("a", "1", a)
        fake.add_image("b", "1", b)
        pa = asyncio.ensure_future(client.pull(parse(fake.ref("a:1"))))
        pb = asyncio.ensure_future(client.pull(parse(fake.ref("b:1"))))
        # Both pulls are waiting on the one download of the shared layer.
        await poll(lambda: shared in client._inflight and client._inflight[shared].waiters == 2,
                   what="two pulls waiting on the shared blob")
        assert fake.gate is not None
        fake.gate.set()
        ra, rb = await asyncio.gather(pa, pb)
        assert fake.blob_gets[shared] == 1
        assert ra.bytes_fetched + rb.bytes_fetched < 2 * a.layers[0].size + sum(
            lay.size for lay in a.layers[1:] + b.layers[1:]) + 10_000
    a.close()
    b.close()


async def test_cancelled_pull_stops_its_download(store, client):
    with tiny_image(layers=1) as img:
        async with FakeRegistry(gate=asyncio.Event()) as fake:
            fake.add_image("tiny", "1", img)
            task = asyncio.ensure_future(client.pull(parse(fake.ref("tiny:1"))))
            await poll(lambda: fake.blob_gets[img.layers[0].digest] == 1, what="the layer download")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await poll(lambda: not client._inflight, what="the download to stop")
            assert fake.gate is not None
            fake.gate.set()


@needs_busybox
async def test_web_image_layers_pull(store, client):
    with web_image("web:1") as img:
        async with FakeRegistry() as fake:
            fake.add_image("web", "1", img)
            res = await client.pull(parse(fake.ref("web:1")))
            assert len(res.layers) == 2
            cfg = orjson.loads(store.read(res.config_digest))["config"]
            assert cfg["Entrypoint"] == ["httpd", "-f", "-p", "8080", "-h", "/www"]


def test_busybox_fixture_image_is_cached():
    if not os.path.isfile("/usr/bin/busybox") and not os.path.isfile("/bin/busybox"):
        pytest.skip("busybox-static is not installed")
    assert cached_layout("busybox") == cached_layout("busybox")
    with busybox_image() as img:
        assert img.tags == ["docker.io/library/busybox:latest"]
