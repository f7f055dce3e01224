"""The image builder: deterministic OCI layouts and docker archives, busybox, push, the CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import orjson
import pytest

from kybernetes.images.build import (
    CONTAINERD_NAME,
    REF_NAME,
    Entry,
    ImageConfig,
    build_image,
    busybox_image,
    entries_from_dir,
    find_busybox,
    main,
    push,
    web_image,
    write_docker_archive,
    write_oci_layout,
)
from kybernetes.images.content import ContentStore
from kybernetes.images.model import OCI_LAYER_GZIP, OCI_MANIFEST, Platform
from kybernetes.images.reference import parse
from kybernetes.images.registry import RegistryClient
from tests.images.registryfixture import cached_layout, needs_busybox, needs_registry, running_registry

AMD64 = Platform("linux", "amd64")


@pytest.fixture
async def registry(tmp_path: Path):
    async with running_registry(tmp_path) as reg:
        yield reg


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def members(tar_bytes: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
        for m in t.getmembers():
            f = t.extractfile(m) if m.isfile() else None
            out[m.name.rstrip("/")] = (m, f.read() if f else b"")
    return out


def read_layout(path: str) -> tuple[dict, dict[str, bytes]]:
    """(index.json, blobs by digest) of an OCI layout tarball, checking every blob's digest."""
    files = members(Path(path).read_bytes())
    assert orjson.loads(files["oci-layout"][1]) == {"imageLayoutVersion": "1.0.0"}
    blobs = {}
    for name, (_, data) in files.items():
        if name.startswith("blobs/sha256/") and len(name) == len("blobs/sha256/") + 64:
            d = "sha256:" + name.rsplit("/", 1)[1]
            assert sha(data) == d
            blobs[d] = data
    return orjson.loads(files["index.json"][1]), blobs


def test_config_fields_and_determinism(tmp_path: Path):
    cfg = ImageConfig(entrypoint=["/app"], cmd=["--serve"], env=["A=1", "PATH=/bin"], working_dir="/srv",
                      user="1000:1000", exposed_ports=["8080", "53/udp"], labels={"k": "v"}, stop_signal="SIGINT",
                      volumes=["/data"], platform=Platform("linux", "arm64", "v8"))
    layers = [[Entry.file("app", "#!/bin/sh\necho hi\n", mode=0o755)], [Entry.file("srv/readme", "x")]]
    a = build_image(layers, cfg, tags=["example.com/team/app:1", "app"])
    b = build_image(layers, cfg, tags=["example.com/team/app:1", "app"])
    assert a.manifest_digest == b.manifest_digest and a.config_digest == b.config_digest
    c = a.config
    assert c["architecture"] == "arm64" and c["variant"] == "v8" and c["os"] == "linux"
    assert c["config"] == {"Entrypoint": ["/app"], "Cmd": ["--serve"], "Env": ["A=1", "PATH=/bin"],
                           "WorkingDir": "/srv", "User": "1000:1000",
                           "ExposedPorts": {"8080/tcp": {}, "53/udp": {}}, "Labels": {"k": "v"},
                           "StopSignal": "SIGINT", "Volumes": {"/data": {}}}
    assert c["rootfs"]["diff_ids"] == [lay.diff_id for lay in a.layers] and len(c["history"]) == 2
    assert a.tags == ["example.com/team/app:1", "docker.io/library/app:latest"]
    p1, p2 = write_oci_layout(str(tmp_path / "a.tar"), a), write_oci_layout(str(tmp_path / "b.tar"), b)
    assert Path(p1).read_bytes() == Path(p2).read_bytes()
    d1, d2 = write_docker_archive(str(tmp_path / "a.docker.tar"), a), write_docker_archive(str(tmp_path / "b.d.tar"), b)
    assert Path(d1).read_bytes() == Path(d2).read_bytes()
    a.close()
    b.close()


def test_oci_layout_is_well_formed(tmp_path: Path):
    img = build_image([[Entry.file("hello.txt", "hello\n"), Entry.symlink("link", "hello.txt")]],
                      ImageConfig(cmd=["cat", "/hello.txt"], platform=AMD64), tags=["127.0.0.1:5000/hello:v1"])
    path = write_oci_layout(str(tmp_path / "hello.tar"), img)
    index, blobs = read_layout(path)
    [entry] = index["manifests"]
    assert entry["annotations"] == {REF_NAME: "v1", CONTAINERD_NAME: "127.0.0.1:5000/hello:v1"}
    assert entry["platform"] == {"os": "linux", "architecture": "amd64"} and entry["mediaType"] == OCI_MANIFEST
    manifest = orjson.loads(blobs[entry["digest"]])
    assert entry["size"] == len(blobs[entry["digest"]])
    config = orjson.loads(blobs[manifest["config"]["digest"]])
    [layer] = manifest["layers"]
    assert layer["mediaType"] == OCI_LAYER_GZIP and layer["size"] == len(blobs[layer["digest"]])
    raw = gzip.decompress(blobs[layer["digest"]])
    assert sha(raw) == config["rootfs"]["diff_ids"][0]
    files = members(raw)
    assert files["hello.txt"][1] == b"hello\n" and files["link"][0].linkname == "hello.txt"
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m, _ in files.values())
    # The directory form has the same content.
    d = write_oci_layout(str(tmp_path / "hello-dir"), img)
    assert orjson.loads(Path(d, "index.json").read_bytes()) == index
    assert {f"sha256:{n}" for n in os.listdir(Path(d, "blobs", "sha256"))} == set(blobs)
    img.close()


def test_docker_archive_is_well_formed(tmp_path: Path):
    img = build_image([[Entry.file("a", "1")], [Entry.file("b", "2")]], ImageConfig(cmd=["sh"], platform=AMD64),
                      tags=["busybox:test", "127.0.0.1:5000/x/y:z"])
    files = members(Path(write_docker_archive(str(tmp_path / "d.tar"), img)).read_bytes())
    [m] = orjson.loads(files["manifest.json"][1])
    assert m["RepoTags"] == ["busybox:test", "127.0.0.1:5000/x/y:z"]
    assert m["Config"] == img.config_digest.split(":")[1] + ".json"
    config = orjson.loads(files[m["Config"]][1])
    assert [sha(files[name][1]) for name in m["Layers"]] == config["rootfs"]["diff_ids"]
    assert members(files[m["Layers"][1]][1])["b"][1] == b"2"  # uncompressed layer.tar
    assert orjson.loads(files["repositories"][1])["busybox"] == {"test": img.layers[-1].diff_id.split(":")[1]}
    img.close()


def test_entries_from_dir_and_paths(tmp_path: Path):
    root = tmp_path / "root"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "sub" / "deep" / "f").write_text("deep")
    (root / "x.sh").write_text("#!/bin/sh\n")
    (root / "x.sh").chmod(0o750)
    os.link(root / "x.sh", root / "sub" / "hard")  # sorts before x.sh: it must become the file
    os.symlink("x.sh", root / "sym")
    entries = entries_from_dir(str(root), "/opt/app")
    kinds = {e.path: e.kind for e in entries}
    assert kinds["opt/app"] == "dir" and kinds["opt/app/sub/deep/f"] == "file"
    assert kinds["opt/app/sym"] == "symlink"
    assert (kinds["opt/app/sub/hard"], kinds["opt/app/x.sh"]) == ("file", "hardlink")
    img = build_image([str(root), entries], ImageConfig(platform=AMD64))
    layer1 = members(Path(img.layers[0].tar_path).read_bytes())
    assert layer1["sub/hard"][0].mode == 0o750 and layer1["sub/hard"][0].uid == 0
    assert layer1["x.sh"][0].islnk() and layer1["x.sh"][0].linkname == "sub/hard"
    with tarfile.open(img.layers[0].tar_path) as t:  # the link resolves: its target came first
        assert t.extractfile("x.sh").read() == b"#!/bin/sh\n"  # type: ignore[union-attr]
    layer2 = members(Path(img.layers[1].tar_path).read_bytes())
    assert "opt" in layer2 and layer2["opt"][0].isdir()  # missing parents are added
    img.close()
    for bad in ("../etc/passwd", "/", "a/../../b"):
        with pytest.raises(ValueError):
            build_image([[Entry.file(bad, "x")]])


@needs_busybox
def test_busybox_rootfs(tmp_path: Path):
    with busybox_image() as img:
        assert img.tags == ["docker.io/library/busybox:latest"]
        assert img.config["config"]["Cmd"] == ["sh"]
        assert img.config["config"]["Env"][0].startswith("PATH=")
        files = members(Path(img.layers[0].tar_path).read_bytes())
    bb, _ = files["bin/busybox"]
    assert bb.mode == 0o755 and bb.size == os.path.getsize(find_busybox())
    assert files["bin/sh"][0].issym() and files["bin/sh"][0].linkname == "busybox"
    assert files["bin/httpd"][0].issym() and "bin/linuxrc" not in files
    assert files["tmp"][0].mode == 0o1777 and files["root"][0].mode == 0o700
    assert files["home/user"][0].uid == 1000
    passwd = files["etc/passwd"][1].decode()
    assert "root:x:0:0:" in passwd and "nobody:x:65534:65534:" in passwd and ":1000:1000:" in passwd
    assert b"nobody:x:65534:" in files["etc/group"][1]
    assert b"ID=busybox" in files["etc/os-release"][1]


@needs_busybox
def test_web_image():
    with web_image() as img:
        assert len(img.layers) == 2
        c = img.config["config"]
        assert c["Entrypoint"] == ["httpd", "-f", "-p", "8080", "-h", "/www"] and "Cmd" not in c
        assert c["ExposedPorts"] == {"8080/tcp": {}}
        www = members(Path(img.layers[1].tar_path).read_bytes())
        assert b"hello" in www["www/index.html"][1]


def test_busybox_missing_or_dynamic(tmp_path: Path):
    with pytest.raises(RuntimeError, match="busybox-static"):
        find_busybox(str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="dynamically linked.*busybox-static"):
        find_busybox(sys.executable if os.path.isfile(sys.executable) else "/bin/ls")


@needs_busybox
def test_cli(tmp_path: Path, capsys):
    out = tmp_path / "bb.tar"
    assert main(["busybox", "--tag", "busybox:cli", "--format", "docker", "-o", str(out)]) == 0
    [m] = orjson.loads(members(out.read_bytes())["manifest.json"][1])
    assert m["RepoTags"] == ["busybox:cli"]
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "f").write_text("x")
    out2 = tmp_path / "dir.tar"
    assert main(["dir", str(rootfs), "-t", "app:1", "--entrypoint", '["/f"]', "--cmd", "a b", "-e", "X=1",
                 "--expose", "80", "--label", "a=b", "--user", "65534", "--workdir", "/w", "-o", str(out2)]) == 0
    index, blobs = read_layout(str(out2))
    manifest = orjson.loads(blobs[index["manifests"][0]["digest"]])
    cfg = orjson.loads(blobs[manifest["config"]["digest"]])["config"]
    assert cfg == {"Entrypoint": ["/f"], "Cmd": ["a", "b"], "Env": ["X=1"], "ExposedPorts": {"80/tcp": {}},
                   "Labels": {"a": "b"}, "User": "65534", "WorkingDir": "/w"}
    assert main(["busybox", "--busybox", str(tmp_path / "none"), "-o", str(tmp_path / "x.tar")]) == 1
    assert "busybox-static" in capsys.readouterr().err
    # The module runs as a program too.
    r = subprocess.run([sys.executable, "-m", "kybernetes.images.build", "web", "-o", str(tmp_path / "w.tar")],
                       capture_output=True, text=True, cwd=str(Path(__file__).parents[2]))
    assert r.returncode == 0, r.stderr
    assert "docker.io/library/web:latest" in r.stdout


@needs_registry
@needs_busybox
async def test_skopeo_accepts_our_layout(registry, tmp_path: Path):
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    layout = cached_layout("web")
    r = subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{layout}",
                        f"docker://{registry.host}/skopeo/web:1", "--dest-tls-verify=false"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    store = ContentStore(str(tmp_path / "content"))
    c = RegistryClient(store, platform=AMD64)
    try:
        res = await c.pull(parse(registry.ref("skopeo/web:1")))
    finally:
        await c.close()
    index, blobs = read_layout(str(layout))
    ours = orjson.loads(blobs[index["manifests"][0]["digest"]])
    assert [lay.digest for lay in res.layers] == [lay["digest"] for lay in ours["layers"]]
    assert res.config_digest == ours["config"]["digest"]


@needs_registry
@needs_busybox
async def test_push_docker_archive(registry, tmp_path: Path):
    with busybox_image("busybox:docker") as img:
        archive = write_docker_archive(str(tmp_path / "bb.docker.tar"), img)
        digest = await push(archive, registry.ref("library/busybox:docker"))
        again = await push(archive, registry.ref("library/busybox:docker"))  # blobs already there
        assert again == digest
        store = ContentStore(str(tmp_path / "content"))
        c = RegistryClient(store, platform=AMD64)
        try:
            res = await c.pull(parse(registry.ref("library/busybox:docker")))
        finally:
            await c.close()
        assert res.config_digest == img.config_digest
        assert [sha(Path(lay.tar_path).read_bytes()) for lay in img.layers] == [d.digest for d in res.layers]


@needs_registry
@needs_busybox
async def test_umoci_unpacks_our_layout(tmp_path: Path):
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    with tarfile.open(cached_layout("busybox")) as t:
        t.extractall(tmp_path / "layout", filter="data")
    r = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'layout'}:latest",
                        str(tmp_path / "bundle")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert os.path.islink(tmp_path / "bundle" / "rootfs" / "bin" / "sh")
    assert (tmp_path / "bundle" / "rootfs" / "etc" / "passwd").read_text().startswith("root:")
