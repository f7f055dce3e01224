"""Real containers with the OCI runtime (runc), each figure against raw runc or skopeo in the same run.

  startup:  created -> Running for N pods created one after another (each waits for the
            previous one to run) on `kyb server --runtime oci` with busybox pre-pulled
            (`kyb image import`), `imagePullPolicy: IfNotPresent`, command `sleep 3600`.
            Each pod is timed from the client just before its create call to the watch
            event whose containerStatuses show it running. Baseline: `runc run --detach`
            of one bundle holding the same image's root filesystem and command (same
            capabilities and RuntimeDefault seccomp profile as the runtime writes), N times
            with a fresh container id each; runc returns once the process has started.
  burst:    N pods created at once (concurrently) on the same kind of server: time from
            the first create to all Running; CPU seconds of the server process (API,
            controllers, scheduler and the embedded kubelet) and of the per-pod processes
            it starts (holders and container shims, with the runc calls they waited for),
            then the server's CPU per second while the N pods just run. Baseline: N
            `runc run --detach` of the same bundle started at once.
  pull:     a multi-layer image (busybox + L layers of M MB of random, incompressible data)
            pushed to Debian's docker-registry on loopback, pulled with a fresh store each
            time, R runs each, interleaved, median: `skopeo copy docker://… oci:DIR` (fetch
            and verify, no unpacking) against kyb's registry client in-process (fetch and
            verify into the content store: the figure comparable to skopeo's), the image
            service in-process (fetch, verify, unpack into snapshots, record) and the whole
            `kyb image pull --data-dir FRESH` command (plus interpreter start-up).
            Throughput = bytes of the config and layer blobs / seconds.

Usage (as root; runc, docker-registry, skopeo and busybox-static installed):
  .venv/bin/python bench/containers.py startup --pods 100
  .venv/bin/python bench/containers.py burst --pods 30
  .venv/bin/python bench/containers.py pull --runs 3 --layers 4 --layer-mb 12
  .venv/bin/python bench/containers.py all        (the three, startup and burst on one server)
  .venv/bin/python bench/containers.py --keep …   (keep the work directory: logs, data dirs)
Everything listens on and talks to loopback only. The bench, the server and its containers
share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster import free_port, wait_ready  # noqa: E402
from kybernetes.client import Client  # noqa: E402
from kybernetes.images import build  # noqa: E402

KYB = [sys.executable, "-m", "kybernetes.cli.main"]
RUNC = shutil.which("runc") or "/usr/sbin/runc"
SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
CMD = ["sleep", "3600"]
NS = "containers"
TICK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ms(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s >= 0.1 else f"{s * 1000:.1f} ms"


def proc_cpu(pid: int | str) -> tuple[float, float]:
    """(own user+sys, waited-for children's user+sys) CPU seconds of a live process."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK, (int(parts[13]) + int(parts[14])) / TICK


def node_processes(marker: str) -> dict[int, str]:
    """pid -> "shim" | "holder" for the per-pod processes whose command line names ``marker``."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if marker not in text:
            continue
        if "kybernetes.runtime.shim" in text:
            out[int(d)] = "shim"
        elif "kybernetes.runtime.pause" in text:
            out[int(d)] = "holder"
    return out


# --------------------------------------------------------------------------- raw runc


class RawRunc:
    """One OCI bundle with the busybox image's root filesystem, run directly with runc."""

    def __init__(self, work: Path, image: build.BuiltImage):
        from kybernetes.runtime import spec

        self.bundle = work / "bundle"
        self.state = work / "runc-root"
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        self.state.mkdir()
        for layer in image.layers:
            with tarfile.open(layer.tar_path) as tar:
                tar.extractall(rootfs, filter="tar")
        icfg = image.config.get("config") or {}
        caps = spec.capabilities([], [], False)
        doc = spec.build(
            args=spec.process_args(CMD, [], icfg), env=spec.process_env(icfg, {}, hostname="raw", tty=False),
            cwd="/", user=spec.resolve_user(str(rootfs), "", None, None, []), tty=False, caps=caps,
            no_new_privileges=False, readonly_rootfs=False, privileged=False, mounts=[],
            # The namespaces a pod's container has (there: joined from the pod's holder).
            namespaces=spec.Namespaces(new=["mount", "pid", "uts", "ipc", "network"]),
            cgroups_path="", limits=spec.Limits(), swap_supported=False,
            seccomp=spec.seccomp_profile("RuntimeDefault", caps, False))
        doc["hostname"] = "raw"
        self.ids: list[str] = []
        self._config = doc

    def _cmd(self, *args: str) -> list[str]:
        return [RUNC, "--root", str(self.state), *args]

    async def run(self) -> float:
        """Seconds for `runc run --detach` of a fresh container (it returns once the process runs)."""
        import orjson

        cid = "kyb-bench-" + secrets.token_hex(6)
        self.ids.append(cid)
        # A config.json per container, the same bytes but for its own cgroup; the one rootfs.
        bundle = self.bundle.parent / f"bundle-{cid}"
        bundle.mkdir()
        doc = dict(self._config, root={"path": str(self.bundle / "rootfs"), "readonly": False})
        doc["linux"] = dict(doc["linux"], cgroupsPath=f"/kyb-bench-runc/{cid}")
        (bundle / "config.json").write_bytes(orjson.dumps(doc))
        # Detached without a terminal, the container keeps runc's stdio: a file, not a pipe
        # (a pipe would stay open as long as the container runs).
        err = bundle / "runc.err"
        with open(err, "wb") as errf:
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *self._cmd("run", "--detach", "--bundle", str(bundle), cid), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=errf)
            code = await proc.wait()
            took = time.perf_counter() - t0
        if code:
            raise SystemExit(f"runc run failed: {err.read_text(errors='replace')}")
        return took

    async def run_many(self, n: int, at_once: bool) -> tuple[list[float], float, float]:
        """Per-container seconds, the wall time for all of them and runc's CPU seconds."""
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        if at_once:
            lat = list(await asyncio.gather(*(self.run() for _ in range(n))))
        else:
            lat = [await self.run() for _ in range(n)]
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return lat, wall, (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)

    def delete_all(self) -> None:
        for cid in self.ids:
            subprocess.run(self._cmd("delete", "--force", cid), capture_output=True, check=False)
        self.ids.clear()
        # runc removes each container's cgroup; their common parent is ours to remove.
        for mp in Path("/sys/fs/cgroup").iterdir():
            d = mp / "kyb-bench-runc"
            try:
                for sub in d.iterdir() if d.is_dir() else []:
                    if sub.is_dir():
                        sub.rmdir()
                if d.is_dir():
                    d.rmdir()
            except OSError:
                pass


# --------------------------------------------------------------------------- the kyb server


class OciServer:
    """`kyb server --runtime oci` on a free port with a temporary data dir, busybox imported."""

    def __init__(self, work: Path):
        self.data = work / "server"
        self.data.mkdir()
        self.port = free_port()
        env = dict(os.environ)
        env.pop("KYB_RUNTIME", None)
        self.log = open(work / "server.log", "wb")  # noqa: SIM115 - the server process owns it
        self.logpath = work / "server.log"
        self.proc = subprocess.Popen(
            KYB + ["server", "--data-dir", str(self.data), "--port", str(self.port), "--kubelet-port", "0",
                   "--runtime", "oci", "--log-level", "warning"], stdout=self.log, stderr=self.log, env=env)
        self.client: Client | None = None

    async def ready(self, image_tar: str) -> Client:
        client = self.client = await wait_ready(self.proc, self.data / "kubeconfig", self.logpath)
        p = subprocess.run(KYB + ["image", "import", "--data-dir", str(self.data), image_tar], capture_output=True,
                           text=True, timeout=120, check=False)
        if p.returncode:
            raise SystemExit(f"kyb image import failed: {p.stderr}")
        nodes = client.resource("v1", "nodes", False)
        deadline = time.monotonic() + 60
        while True:
            items = (await nodes.list())["items"]
            if items and any(c.get("type") == "Ready" and c.get("status") == "True"
                             for c in (items[0].get("status") or {}).get("conditions") or []):
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the node did not become Ready; log: {self.logpath}")
            await asyncio.sleep(0.1)
        await client.resource("v1", "namespaces", False).create({"metadata": {"name": NS}})
        sas = client.resource("v1", "serviceaccounts")
        while not (await sas.list(NS))["items"]:  # pods wait for the namespace's default ServiceAccount
            if time.monotonic() > deadline:
                raise SystemExit("no default ServiceAccount")
            await asyncio.sleep(0.05)
        return client

    def cpu(self) -> tuple[float, float]:
        return proc_cpu(self.proc.pid)

    async def stop(self) -> None:
        if self.client is not None:
            pods = self.client.resource("v1", "pods")
            try:
                await pods.delete_collection(NS)
            except Exception:  # noqa: BLE001 - the server may be the thing that failed
                pass
            await self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The kubelet leaves its pods running when it exits.
        subprocess.run(KYB + ["killall", "--data-dir", str(self.data)], capture_output=True, check=False)


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "containers"}},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                     "command": CMD}]}}


class Follower:
    """Watches the namespace's pods and records when each is first seen running."""

    def __init__(self, client: Client):
        self.pods = client.resource("v1", "pods")
        self.running: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.watch = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        rv = (await self.pods.list(NS))["metadata"]["resourceVersion"]
        self.watch = self.pods.watch(NS, resource_version=rv)

        async def follow() -> None:
            async for _typ, obj in self.watch:
                name = (obj.get("metadata") or {}).get("name")
                for cs in (obj.get("status") or {}).get("containerStatuses") or []:
                    if "running" in (cs.get("state") or {}) and name not in self.running:
                        self.running[name] = time.perf_counter()
                        self.changed.set()
        self.task = asyncio.create_task(follow())

    async def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(n in self.running for n in names):
            self.changed.clear()
            if self.task is not None and self.task.done():
                self.task.result()
                raise SystemExit("the watch ended")
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [n for n in names if n not in self.running]
                raise SystemExit(f"{len(missing)} pods not Running within {timeout:.0f} s: {missing[:5]}")
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.watch is not None:
            await self.watch.close()


async def delete_pods(client: Client, timeout: float = 120) -> None:
    pods = client.resource("v1", "pods")
    await pods.delete_collection(NS)
    deadline = time.monotonic() + timeout
    while (await pods.list(NS))["items"]:
        if time.monotonic() > deadline:
            raise SystemExit("pods were not deleted in time")
        await asyncio.sleep(0.2)


async def bench_startup(srv: OciServer, client: Client, raw: RawRunc, n: int) -> None:
    base, _, _ = await raw.run_many(n, at_once=False)
    raw.delete_all()
    f = Follower(client)
    await f.start()
    pods = client.resource("v1", "pods")
    lat: list[float] = []
    try:
        for i in range(n):
            name = f"s{i:03d}"
            t0 = time.perf_counter()
            await pods.create(pod(name), NS)
            await f.wait([name], 60)
            lat.append(f.running[name] - t0)
    finally:
        await f.stop()
    await delete_pods(client)
    print(f"pod startup (created -> Running), {n} pods one after another, OCI runtime, image pre-pulled:")
    print(f"  kyb:      p50 {ms(statistics.median(lat))}, p99 {ms(pct(lat, 99))}, max {ms(max(lat))}")
    print(f"  raw runc run --detach of the same bundle: p50 {ms(statistics.median(base))}, "
          f"p99 {ms(pct(base, 99))}, max {ms(max(base))}")
    print(f"  ratio p50 {statistics.median(lat) / statistics.median(base):.1f}x, "
          f"p99 {pct(lat, 99) / pct(base, 99):.1f}x; target p99 < 1 s "
          f"{'met' if pct(lat, 99) < 1 else 'MISSED'}")


async def bench_burst(srv: OciServer, client: Client, raw: RawRunc, n: int, idle: float) -> None:
    base, base_wall, base_cpu = await raw.run_many(n, at_once=True)
    raw.delete_all()
    f = Follower(client)
    await f.start()
    pods = client.resource("v1", "pods")
    marker = str(srv.data)
    before = set(node_processes(marker))
    own0, kids0 = srv.cpu()
    names = [f"b{i:03d}" for i in range(n)]
    try:
        t0 = time.perf_counter()
        created: dict[str, float] = {}

        async def create(name: str) -> None:
            created[name] = time.perf_counter()
            await pods.create(pod(name), NS)
        await asyncio.gather(*(create(nm) for nm in names))
        t_created = time.perf_counter() - t0
        await f.wait(names, 120)
        wall = max(f.running.values()) - t0
        own1, kids1 = srv.cpu()
        per_pod = {"shim": 0.0, "holder": 0.0}
        counts = {"shim": 0, "holder": 0}
        for pid, kind in node_processes(marker).items():
            if pid in before:
                continue
            try:
                a, b = proc_cpu(pid)
            except OSError:
                continue
            per_pod[kind] += a + b
            counts[kind] += 1
        # The kubelet with its pods settled: the server's CPU per second while they only run.
        i0, _ = srv.cpu()
        await asyncio.sleep(idle)
        i1, _ = srv.cpu()
    finally:
        await f.stop()
    lat = [f.running[nm] - created[nm] for nm in names]
    own, kids = own1 - own0, kids1 - kids0
    total = own + kids + per_pod["shim"] + per_pod["holder"]
    print(f"{n} pods created at once on one node (creates took {ms(t_created)}):")
    print(f"  kyb: all Running after {wall:.2f} s (per pod p50 {ms(statistics.median(lat))}, max {ms(max(lat))})")
    print(f"  raw: {n} `runc run --detach` of the same bundle at once: all running after {base_wall:.2f} s "
          f"(per container p50 {ms(statistics.median(base))}); ratio {wall / base_wall:.1f}x")
    print(f"  CPU: server process {own:.2f} s; per-pod processes {kids + per_pod['shim'] + per_pod['holder']:.2f} s: "
          f"holder and shim launchers until they detach {kids:.2f} s (the server's waited-for children), "
          f"{counts['shim']} detached shims with their runc calls {per_pod['shim']:.2f} s, "
          f"{counts['holder']} holders {per_pod['holder']:.2f} s")
    print(f"       total {total:.2f} s = {total / n * 1000:.0f} ms per pod; raw runc: {base_cpu:.2f} s = "
          f"{base_cpu / n * 1000:.0f} ms per container; ratio {total / base_cpu:.1f}x")
    print(f"  then, {n} pods running: server CPU {(i1 - i0) / idle * 100:.1f}% of a core over {idle:.0f} s")
    await delete_pods(client)


# --------------------------------------------------------------------------- pull


class Registry:
    def __init__(self, work: Path):
        from tests.images.registryfixture import _registry_config

        root = work / "registry"
        (root / "storage").mkdir(parents=True)
        self.port = free_port()
        cfg = root / "config.yml"
        cfg.write_text(_registry_config(str(root / "storage"), self.port, None, None))
        self.log = open(root / "registry.log", "wb")  # noqa: SIM115 - the registry owns it
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg)], stdout=self.log, stderr=self.log)
        self.host = f"127.0.0.1:{self.port}"

    async def ready(self) -> None:
        import aiohttp
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"http://{self.host}/v2/") as r:
                        if r.status in (200, 401):
                            return
                except (aiohttp.ClientError, OSError):
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("docker-registry did not start")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def bench_pull(work: Path, runs: int, layers: int, layer_mb: int) -> None:
    from kybernetes.images.content import ContentStore
    from kybernetes.images.reference import parse
    from kybernetes.images.registry import RegistryClient
    from kybernetes.images.service import ImageService

    extra = [[build.Entry.file(f"data/{i}.bin", os.urandom(layer_mb << 20))] for i in range(layers)]
    with build.busybox_image("big:1", extra_layers=extra) as img:
        blob_bytes = len(img.config_bytes) + sum(layer.size for layer in img.layers)
        layout = build.write_oci_layout(str(work / "big-layout"), img)
        unpacked = sum(layer.tar_size for layer in img.layers)
    reg = Registry(work)
    try:
        await reg.ready()
        ref = f"{reg.host}/big:1"
        await build.push(layout, ref)
        shutil.rmtree(layout)
        n = 0

        def fresh() -> Path:
            nonlocal n
            n += 1
            d = work / f"pull-{n}"
            return d

        async def skopeo() -> float:
            d = fresh()
            t0 = time.perf_counter()
            p = await asyncio.create_subprocess_exec(
                SKOPEO, "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{d}:big",
                stdout=subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await p.communicate()
            took = time.perf_counter() - t0
            if p.returncode:
                raise SystemExit(f"skopeo copy failed: {err.decode(errors='replace')}")
            shutil.rmtree(d)
            return took

        async def fetch_only() -> float:
            d = fresh()
            content = ContentStore(str(d / "content"))
            client = RegistryClient(content)
            try:
                t0 = time.perf_counter()
                res = await client.pull(parse(ref))
                took = time.perf_counter() - t0
            finally:
                await client.close()
            assert res.bytes_fetched >= blob_bytes, res.bytes_fetched
            shutil.rmtree(d)
            return took

        async def service() -> float:
            d = fresh()
            svc = ImageService(str(d / "images"))
            try:
                t0 = time.perf_counter()
                await svc.pull(ref)
                took = time.perf_counter() - t0
            finally:
                await svc.close()
            shutil.rmtree(d)
            return took

        async def cli() -> float:
            d = fresh()
            t0 = time.perf_counter()
            p = await asyncio.create_subprocess_exec(*KYB, "image", "pull", "--data-dir", str(d), ref,
                                                     stdout=subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await p.communicate()
            took = time.perf_counter() - t0
            if p.returncode:
                raise SystemExit(f"kyb image pull failed: {err.decode(errors='replace')}")
            shutil.rmtree(d)
            return took

        await skopeo()  # warm-up: the registry's blobs in the page cache for everyone
        kinds = {"skopeo": skopeo, "fetch": fetch_only, "service": service, "cli": cli}
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(runs):
            for k, fn in kinds.items():
                times[k].append(await fn())
        med = {k: statistics.median(v) for k, v in times.items()}
        mb = blob_bytes / 1e6

        def row(label: str, k: str) -> str:
            runs_s = ", ".join(f"{t:.2f}" for t in times[k])
            return (f"  {label:58} {med[k]:.2f} s = {mb / med[k]:6.1f} MB/s  ({runs_s}); "
                    f"vs skopeo {med['skopeo'] / med[k]:.2f}x")
        print(f"pull of {ref}: {1 + layers} layers, {mb:.1f} MB of blobs ({unpacked / 1e6:.1f} MB unpacked), "
              f"fresh store each run, median of {runs}:")
        print(f"  {'skopeo copy docker:// -> oci: (fetch + verify)':58} {med['skopeo']:.2f} s = "
              f"{mb / med['skopeo']:6.1f} MB/s  ({', '.join(f'{t:.2f}' for t in times['skopeo'])})")
        print(row("kyb RegistryClient.pull in-process (fetch + verify)", "fetch"))
        print(row("kyb ImageService.pull in-process (+ unpack, record)", "service"))
        print(row("`kyb image pull --data-dir FRESH` (+ interpreter start)", "cli"))
        ok = med["skopeo"] / med["fetch"] >= 0.8
        print(f"  target >= 0.8x skopeo's throughput (fetch + verify): {'met' if ok else 'MISSED'}")
    finally:
        reg.stop()


# --------------------------------------------------------------------------- main


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("startup")
    s.add_argument("--pods", type=int, default=100)
    b = sub.add_parser("burst")
    b.add_argument("--pods", type=int, default=30)
    b.add_argument("--idle", type=float, default=10.0, help="seconds of CPU sampling with the pods running")
    p = sub.add_parser("pull")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--layer-mb", type=int, default=12)
    al = sub.add_parser("all")
    al.add_argument("--pods", type=int, default=100)
    al.add_argument("--burst", type=int, default=30)
    al.add_argument("--idle", type=float, default=10.0)
    al.add_argument("--runs", type=int, default=3)
    al.add_argument("--layers", type=int, default=4)
    al.add_argument("--layer-mb", type=int, default=12)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data dirs)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: runc and the OCI runtime need it")
    work = Path(tempfile.mkdtemp(prefix="kyb-bench-containers-"))
    srv: OciServer | None = None
    raw: RawRunc | None = None
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        if a.what in ("startup", "burst", "all"):
            with build.busybox_image("busybox:latest") as img:
                tar = build.write_oci_layout(str(work / "busybox.tar"), img)
                raw = RawRunc(work / "raw", img)
            srv = OciServer(work)
            client = await srv.ready(tar)
            if a.what in ("startup", "all"):
                await bench_startup(srv, client, raw, a.pods)
            if a.what in ("burst", "all"):
                await bench_burst(srv, client, raw, a.burst if a.what == "all" else a.pods, a.idle)
            await srv.stop()
            srv = None
        if a.what in ("pull", "all"):
            await bench_pull(work, a.runs, a.layers, a.layer_mb)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if srv is not None:
            await srv.stop()
        if raw is not None:
            raw.delete_all()
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
