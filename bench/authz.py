"""The request chain's cost: creates/s and gets/s with RBAC on against off, and audit on against off.

Three `kyb server`s (the API server alone, as bench/api.py measures it) are started one after
another in one run, each measured with the same load over HTTPS with client certificates:

  * AlwaysAllow, as the admin (no authorizer on the path): the baseline;
  * RBAC, as a user outside system:masters whose rights come from a ClusterRole through a
    RoleBinding, so the RBAC authorizer judges every request;
  * the same with an audit policy that records every request at Metadata level to a file,
    every stage (RequestReceived and ResponseComplete: two events per request);
  * the same with `omitStages: [RequestReceived]`, as the documentation's example policies do
    (one event per request).

Rounds alternate the three so that drift of the shared machine falls on all of them; the
figures are medians over the rounds.

Usage: .venv/bin/python bench/authz.py [--pods 5000] [--gets 20000] [--rounds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api import pod, run_pool  # noqa: E402
from bench.cluster import free_port  # noqa: E402
from kybernetes.apiserver.pki import PKI  # noqa: E402

AUDIT_POLICY = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n"
AUDIT_POLICY_ONE_STAGE = ("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
                          "rules:\n- level: Metadata\n")
BENCH_ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "bench"},
              "rules": [{"apiGroups": [""], "resources": ["pods", "serviceaccounts"],
                         "verbs": ["create", "get", "list", "watch"]}]}
BENCH_BINDING = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "bench", "namespace": "default"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "bench"},
                 "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bench"}]}


def tls(pki: PKI, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def wait_ready(url: str, ctx: ssl.SSLContext, proc: subprocess.Popen, log: Path) -> None:
    while True:
        if proc.poll() is not None:
            raise SystemExit("server died: " + log.read_text())
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s, \
                    s.get(url + "/readyz") as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.05)


async def measure(mode: str, a: argparse.Namespace) -> dict[str, float]:
    data = Path(tempfile.mkdtemp())
    port = free_port()
    args = ["--authorization-mode", "AlwaysAllow" if mode == "alwaysallow" else "RBAC"]
    if mode.startswith("rbac+audit"):
        (data / "policy.yaml").write_text(AUDIT_POLICY if mode == "rbac+audit" else AUDIT_POLICY_ONE_STAGE)
        args += ["--audit-policy-file", str(data / "policy.yaml"), "--audit-log-path", str(data / "audit.log")]
    log = data / "server.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "kybernetes.cli.main", "server", "--data-dir", str(data),
                                 "--port", str(port), "--log-level", "warning",
                                 "--disable", "controllers,scheduler,kubelet", *args], stdout=logf, stderr=logf)
    url = f"https://127.0.0.1:{port}"
    pki = PKI(data / "pki")
    try:
        while not (data / "kubeconfig").exists():
            await asyncio.sleep(0.02)
        admin = tls(pki, pki.admin_cert, pki.admin_key)
        await wait_ready(url, admin, proc, log)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=admin)) as s:
            for path, body in (("/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "default"}}),
                               ("/apis/rbac.authorization.k8s.io/v1/clusterroles", BENCH_ROLE),
                               ("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
                                BENCH_BINDING)):
                async with s.post(url + path, json=body) as r:
                    if r.status not in (201, 409):
                        raise SystemExit(f"{path}: {r.status} {await r.text()}")
        ctx = admin
        if mode != "alwaysallow":
            cert, key = pki.issue_client("bench", ["bench-users"])
            (data / "bench.crt").write_bytes(cert)
            (data / "bench.key").write_bytes(key)
            ctx = tls(pki, data / "bench.crt", data / "bench.key")
        out: dict[str, float] = {}
        conn = aiohttp.TCPConnector(ssl=ctx, limit=a.concurrency)
        async with aiohttp.ClientSession(connector=conn) as s:
            base = url + "/api/v1/namespaces/default/pods"
            bodies = [orjson.dumps(pod(f"p{i:05d}")) for i in range(a.pods)]

            async def create(i: int) -> None:
                async with s.post(base, data=bodies[i], headers={"Content-Type": "application/json"}) as r:
                    if r.status != 201:
                        raise SystemExit(f"{mode}: create failed {r.status}: {await r.text()}")
                    await r.read()
            out["creates"] = await run_pool(a.pods, a.concurrency, create)
            names = [f"p{random.randrange(a.pods):05d}" for _ in range(a.gets)]

            async def get(i: int) -> None:
                async with s.get(f"{base}/{names[i]}") as r:
                    if r.status != 200:
                        raise SystemExit(f"{mode}: get failed {r.status}: {await r.text()}")
                    await r.read()
            out["gets"] = await run_pool(a.gets, a.concurrency, get)
        if mode.startswith("rbac+audit"):
            await asyncio.sleep(0.5)
            out["audit_lines"] = sum(1 for _ in open(data / "audit.log", "rb"))
        return out
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--gets", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    modes = ["alwaysallow", "rbac", "rbac+audit", "rbac+audit1"]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    t0 = time.perf_counter()
    for r in range(a.rounds):
        order = modes if r % 2 == 0 else list(reversed(modes))
        for m in order:
            runs[m].append(await measure(m, a))
    med = {m: {k: statistics.median(x[k] for x in runs[m]) for k in ("creates", "gets")} for m in modes}
    print(f"{a.rounds} rounds, {a.pods} creates and {a.gets} gets each, {a.concurrency} in flight "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'figure':10} {'AlwaysAllow':>12} {'RBAC':>8} {'+audit':>8} {'+audit 1':>9} {'RBAC/off':>9} "
          f"{'audit/off':>10} {'audit 1/off':>12}")
    for k in ("creates", "gets"):
        off, on = med["alwaysallow"][k], med["rbac"][k]
        aud, aud1 = med["rbac+audit"][k], med["rbac+audit1"][k]
        print(f"{k + '/s':10} {off:12.0f} {on:8.0f} {aud:8.0f} {aud1:9.0f} {on / off:9.2f} {aud / on:10.2f} "
              f"{aud1 / on:12.2f}")
    for m, what in (("rbac+audit", "every stage"), ("rbac+audit1", "RequestReceived omitted")):
        print(f"audit events written per run, {what}: {[x.get('audit_lines', 0) for x in runs[m]]}")


if __name__ == "__main__":
    asyncio.run(main())
