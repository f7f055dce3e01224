"""The embedded node of `kyb server` driven by the real kubectl: run, logs, exec, describe, delete, cordon."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import KUBECTL, Server, needs_kubectl, wait_for

pytestmark = [needs_kubectl, pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime isolates as root")]


def _pod(server: Server, name: str) -> dict:
    return server.kjson("get", "pod", name)


def test_run_logs_exec_describe_delete(server: Server):
    server.kubectl("run", "hello", "--image=busybox", "--restart=Never", "--command", "--",
                   "sh", "-c", "echo hi; trap 'exit 0' TERM; while true; do sleep 0.2; done")
    server.kubectl("wait", "--for=condition=Ready", "pod/hello", "--timeout=60s")
    wide = server.kubectl("get", "pods", "-o", "wide").stdout
    row = next(ln.split() for ln in wide.splitlines() if ln.startswith("hello"))
    assert row[1:3] == ["1/1", "Running"] and row[5] != "<none>" and row[6] != "<none>", wide
    assert wait_for(lambda: server.kubectl("logs", "hello").stdout == "hi\n")
    assert server.kubectl("logs", "hello", "--tail=1").stdout == "hi\n"
    assert "hi" in server.kubectl("logs", "hello", "--timestamps").stdout
    assert server.kubectl("logs", "hello", "--since=1h").stdout == "hi\n"
    # "hi" was written before the pod was Ready; two seconds on it is older than --since=1s.
    __import__("time").sleep(2)
    assert server.kubectl("logs", "hello", "--since=1s").stdout == ""
    assert "bin" in server.kubectl("exec", "hello", "--", "ls", "/").stdout.split()
    p = server.kubectl("exec", "hello", "--", "sh", "-c", "exit 3", check=False)
    assert p.returncode == 3
    desc = server.kubectl("describe", "pod", "hello").stdout
    for reason in ("Scheduled", "Created", "Started"):
        assert reason in desc, desc
    # The trap makes SIGTERM end the container at once: the delete does not wait out the grace period.
    server.kubectl("delete", "pod", "hello", "--timeout=30s")
    assert server.kubectl("get", "pod", "hello", check=False).returncode != 0


def test_crashing_pod_backs_off(server: Server):
    server.kubectl("run", "crash", "--image=busybox", "--restart=Always", "--command", "--", "sh", "-c",
                   "echo crashed; exit 1")

    def backing_off() -> bool:
        st = _pod(server, "crash").get("status") or {}
        cs = (st.get("containerStatuses") or [{}])[0]
        waiting = (cs.get("state") or {}).get("waiting") or {}
        return cs.get("restartCount", 0) >= 1 and waiting.get("reason") == "CrashLoopBackOff"
    wait_for(backing_off, timeout=60)
    cs = _pod(server, "crash")["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert "CrashLoopBackOff" in server.kubectl("get", "pod", "crash").stdout
    assert server.kubectl("logs", "crash", "--previous").stdout == "crashed\n"
    server.kubectl("delete", "pod", "crash", "--timeout=30s")


def test_configmap_env_and_volume(server: Server):
    server.kubectl("create", "configmap", "cfg", "--from-literal=greeting=hello")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cfgpod"},
           "spec": {"containers": [{"name": "c", "image": "busybox",
                                    "command": ["sh", "-c", "echo $GREETING; trap 'exit 0' TERM; "
                                                "while true; do sleep 0.2; done"],
                                    "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {
                                        "name": "cfg", "key": "greeting"}}}],
                                    "volumeMounts": [{"name": "v", "mountPath": "/etc/cfg"}]}],
                    "volumes": [{"name": "v", "configMap": {"name": "cfg"}}]}}
    server.kubectl("apply", "-f", "-", input=json.dumps(pod))
    server.kubectl("wait", "--for=condition=Ready", "pod/cfgpod", "--timeout=60s")
    assert wait_for(lambda: server.kubectl("logs", "cfgpod").stdout == "hello\n")
    assert server.kubectl("exec", "cfgpod", "--", "cat", "/etc/cfg/greeting").stdout == "hello"
    server.kubectl("patch", "configmap", "cfg", "-p", '{"data":{"greeting":"bonjour"}}')
    assert wait_for(lambda: server.kubectl("exec", "cfgpod", "--", "cat", "/etc/cfg/greeting",
                                           check=False).stdout == "bonjour", timeout=60)
    server.kubectl("delete", "pod", "cfgpod", "--timeout=30s")


def test_node_ready_cordon_uncordon(server: Server):
    nodes = server.kjson("get", "nodes")["items"]
    assert len(nodes) == 1
    node = nodes[0]
    name = node["metadata"]["name"]
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert int(node["status"]["capacity"]["pods"]) == 110 and node["status"]["capacity"]["cpu"]
    assert "Ready" in server.kubectl("get", "nodes").stdout
    server.kubectl("cordon", name)
    assert "SchedulingDisabled" in server.kubectl("get", "node", name).stdout
    server.kubectl("uncordon", name)
    assert "SchedulingDisabled" not in server.kubectl("get", "node", name).stdout


def test_exec_interactive_stdin(server: Server):
    server.kubectl("run", "cat", "--image=busybox", "--restart=Never", "--command", "--",
                   "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done")
    server.kubectl("wait", "--for=condition=Ready", "pod/cat", "--timeout=60s")
    env = dict(os.environ, KUBECONFIG=str(server.kubeconfig))
    p = subprocess.run([KUBECTL, "exec", "-i", "cat", "--", "cat"], input="piped\n", capture_output=True,
                       text=True, env=env, timeout=60, check=False)
    assert p.returncode == 0 and p.stdout == "piped\n", p.stderr
    server.kubectl("delete", "pod", "cat", "--timeout=30s")


def test_agent_joins_and_goes_not_ready_when_stopped(server: Server, tmp_path):
    import sys
    import time
    url = f"https://127.0.0.1:{server.port}"
    token = (server.data_dir / "pki" / "join.token").read_text().strip()
    # Only the server's URL and the join string (CA pin + bootstrap token): no shared disk.
    base = [sys.executable, "-m", "kybernetes.cli.main", "agent", "--server", url,
            "--data-dir", str(tmp_path / "agent"), "--kubelet-port", "0", "--disable", "ingress", "--name", "agent-1"]
    wrong = token.split("::")[0] + "::abcdef.0123456789abcdef"
    bad = subprocess.run(base[:6] + ["--token", wrong] + base[6:], capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode != 0 and "Unauthorized" in bad.stderr, bad.stderr
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - the agent process owns it
    agent = subprocess.Popen(base[:6] + ["--token", token] + base[6:], stdout=log, stderr=log)
    try:
        def ready() -> bool:
            p = server.kubectl("get", "node", "agent-1", "-o", "json", check=False)
            if p.returncode != 0:
                return False
            conds = json.loads(p.stdout)["status"].get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        wait_for(ready, timeout=30)
        # Two pods of a Deployment land on the agent (the server's own node is cordoned
        # meanwhile); they tolerate an unreachable node for 0 s, so they move at once.
        own = [n["metadata"]["name"] for n in server.kjson("get", "nodes")["items"]
               if n["metadata"]["name"] != "agent-1"]
        for n in own:
            server.kubectl("cordon", n)
        server.kubectl("create", "deployment", "heal", "--image=busybox", "--replicas=2", "--", "sleep", "3600")
        server.kubectl("patch", "deployment", "heal", "--type=merge", "-p", json.dumps({"spec": {"template": {
            "spec": {"terminationGracePeriodSeconds": 1, "tolerations": [
                {"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 0} for t in ("unreachable", "not-ready")]}}}}))

        def heal_pods(node: str | None = None) -> list[dict]:
            pods = server.kjson("get", "pods", "-l", "app=heal")["items"]
            return [p for p in pods if not p["metadata"].get("deletionTimestamp")
                    and p["status"].get("phase") == "Running" and (node is None or p["spec"].get("nodeName") == node)]
        wait_for(lambda: len(heal_pods("agent-1")) == 2 and server.kjson("get", "deployment", "heal")[
            "status"].get("updatedReplicas") == 2, timeout=60)
        for n in own:
            server.kubectl("uncordon", n)
        agent.kill()
        agent.wait(10)
        t0 = time.monotonic()

        def not_ready() -> bool:
            n = server.kjson("get", "node", "agent-1")
            return any(c["type"] == "Ready" and c["status"] != "True" for c in n["status"]["conditions"])
        wait_for(not_ready, timeout=60, interval=0.5)
        assert time.monotonic() - t0 < 60
        assert "NotReady" in server.kubectl("get", "node", "agent-1").stdout
        # Self-healing: the agent's pods are evicted and replaced on the surviving node.
        wait_for(lambda: len([p for p in heal_pods() if p["spec"].get("nodeName") != "agent-1"]) == 2,
                 timeout=60, interval=0.5)
        server.kubectl("delete", "deployment", "heal")
    finally:
        if agent.poll() is None:
            agent.kill()
        subprocess.run([sys.executable, "-m", "kybernetes.cli.main", "killall", "--data-dir",
                        str(tmp_path / "agent")], capture_output=True, timeout=60, check=False)
        server.kubectl("delete", "node", "agent-1", check=False)


EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples"


def test_docs_pi_job_completes(server: Server):
    # The docs' manifest runs on the host's perl (the process runtime has no perl image);
    # Debian 12's perl 5.36 dies computing 2000 digits, so this asks for 1000.
    manifest = (EXAMPLES / "job-pi.yaml").read_text().replace("bpi(2000)", "bpi(1000)")
    server.kubectl("apply", "-f", "-", input=manifest)
    server.kubectl("wait", "--for=condition=complete", "job/pi", "--timeout=90s", timeout=120)
    assert server.kubectl("logs", "job/pi").stdout.startswith("3.14159")
    out = server.kubectl("get", "job", "pi").stdout
    assert "Complete" in out and "1/1" in out
    server.kubectl("delete", "job", "pi", "--timeout=30s")


def test_docs_daemonset_places_one_pod_per_node(server: Server):
    server.kubectl("apply", "-f", str(EXAMPLES / "daemonset-fluentd.yaml"))

    def scheduled() -> bool:
        st = server.kjson("get", "ds", "fluentd-elasticsearch", "-n", "kube-system").get("status") or {}
        return st.get("desiredNumberScheduled") == 1 and st.get("currentNumberScheduled") == 1
    wait_for(scheduled, timeout=60)
    pods = server.kjson("get", "pods", "-n", "kube-system", "-l", "name=fluentd-elasticsearch")["items"]
    assert len(pods) == 1 and pods[0]["spec"]["nodeName"]
    server.kubectl("delete", "ds", "fluentd-elasticsearch", "-n", "kube-system", "--timeout=60s")


def test_deployment_rollout_undo_scale(server: Server):
    cmd = ["--", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    server.kubectl("create", "deployment", "web", "--image=busybox:1.36", "--replicas=2", *cmd)
    server.kubectl("rollout", "status", "deployment/web", "--timeout=90s", timeout=120)
    server.kubectl("set", "image", "deployment/web", "busybox=busybox:1.37")
    out = server.kubectl("rollout", "status", "deployment/web", "--timeout=90s", timeout=120).stdout
    assert "successfully rolled out" in out
    assert "2" in server.kubectl("rollout", "history", "deployment/web").stdout
    server.kubectl("rollout", "undo", "deployment/web")
    server.kubectl("rollout", "status", "deployment/web", "--timeout=90s", timeout=120)
    d = server.kjson("get", "deploy", "web")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox:1.36"
    server.kubectl("scale", "deployment/web", "--replicas=3")
    server.kubectl("rollout", "status", "deployment/web", "--timeout=90s", timeout=120)
    assert server.kjson("get", "deploy", "web")["status"]["readyReplicas"] == 3
    server.kubectl("delete", "deployment", "web", "--timeout=60s")
    wait_for(lambda: not server.kjson("get", "pods", "-l", "app=web")["items"], timeout=60)
