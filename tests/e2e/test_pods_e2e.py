"""Pods through the real kubectl: exec with a real terminal, OOM kills, scheduling onto hollow nodes."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from .conftest import KUBECTL, Server, free_port, needs_kubectl, wait_for

pytestmark = [needs_kubectl, pytest.mark.skipif(os.geteuid() != 0, reason="the process runtime isolates as root")]

PROMPT = r"# $"  # root's shell prompt, the last thing on the terminal
SLEEPER = "trap 'exit 0' TERM; while true; do sleep 0.2; done"


def _pod(server: Server, name: str, namespace: str = "default") -> dict:
    return server.kjson("get", "pod", name, "-n", namespace)


# --------------------------------------------------------------------------- exec -it


class Terminal:
    """kubectl on the slave side of a pseudo-terminal, as when a person types at it."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24, cols: int = 80):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

        def controlling_terminal() -> None:
            # A new session (start_new_session) has no terminal until it takes one; with it,
            # kubectl puts the terminal in raw mode and gets SIGWINCH when the window changes.
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, preexec_fn=controlling_terminal)
        os.close(slave)
        self.buf = b""

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.master], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: kubectl has exited and closed the terminal
            data = b""
        self.buf += data
        return bool(data)

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match:
        """Wait for `pattern` in what the terminal showed since the last match; consume up to it."""
        rx = re.compile(pattern.encode())
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                if (m := rx.search(self.buf)) is not None:
                    self.buf = self.buf[m.end():]
                    return m
                raise AssertionError(f"terminal never showed {pattern!r}; it showed:\n{self.buf.decode(errors='replace')}")

    def command(self, line: str, output: str) -> re.Match:
        """Type a command line at the prompt; return its output's match once the next prompt is shown."""
        self.send(line + "\r")
        m = self.expect(output)
        self.expect(PROMPT)
        return m

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def test_exec_it_shell_in_a_terminal(server: Server):
    server.kubectl("run", "term", "--image=busybox", "--restart=Never", "--command", "--", "sh", "-c", SLEEPER)
    server.kubectl("wait", "--for=condition=Ready", "pod/term", "--timeout=60s")
    env = dict(os.environ, KUBECONFIG=str(server.kubeconfig), TERM="xterm")
    t = Terminal([KUBECTL, "exec", "-it", "term", "--", "sh"], env, rows=24, cols=80)
    try:
        # Type only at a prompt, as a person does: typed-ahead text is echoed by the terminal
        # at once and would interleave with the output of the command before it.
        t.expect(PROMPT)
        assert t.command("echo $((6*7))", r"\n(\d+)\r*\n").group(1) == b"42"
        # The command's stdin is a terminal, not a pipe, and the terminal has kubectl's size.
        t.command("tty", r"\r\n/dev/pts/\d+\r\n")
        assert t.command("stty size", r"\n(\d+ \d+)\r*\n").group(1) == b"24 80"
        # A window change on kubectl's terminal reaches the container's terminal.
        t.resize(50, 132)
        deadline = time.monotonic() + 20
        while (size := t.command("stty size", r"\n(\d+ \d+)\r*\n").group(1)) != b"50 132":
            assert time.monotonic() < deadline, f"the resize never arrived: still {size!r}"
            time.sleep(0.2)
        # ^C goes through the terminal to the command in the foreground, as at a local shell.
        # The line shown twice (the terminal's echo, then cat's copy) proves cat is running.
        t.send("cat\r")
        t.expect(r"cat\r\n")
        t.send("ping\r")
        t.expect(r"ping\r\nping\r\n")
        t.send("\x03")
        t.expect(PROMPT, timeout=10)
        assert t.command("echo status=$?", r"status=(\d+)\r\n").group(1) == b"130"
        t.send("exit 3\r")
        assert t.proc.wait(30) == 3, t.buf.decode(errors="replace")
        t.expect(r"command terminated with exit code 3", timeout=5)
    finally:
        t.close()
    # A command that asks for its terminal's size as it starts already sees kubectl's.
    for _ in range(3):
        t = Terminal([KUBECTL, "exec", "-it", "term", "--", "stty", "size"], env, rows=33, cols=101)
        try:
            assert t.proc.wait(30) == 0
            t.expect(r"33 101\r\n", timeout=5)
        finally:
            t.close()
    server.kubectl("delete", "pod", "term", "--timeout=30s")


# --------------------------------------------------------------------------- OOM kill


def _memory_cgroup() -> bool:
    from kybernetes.runtime.cgroups import CgroupManager
    manager, _ = CgroupManager.detect(None)
    return manager is not None


@pytest.mark.skipif(not _memory_cgroup(), reason="memory limits need cgroups")
def test_memory_hog_is_oom_killed(server: Server):
    def hog(name: str, restart: str) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": restart, "containers": [{
                    "name": "hog", "image": "perl",
                    # 200 MiB in a 32 MiB container.
                    "command": ["perl", "-e", "$x = 'a' x (200*1024*1024); print length($x)"],
                    "resources": {"limits": {"memory": "32Mi"}}}]}}
    server.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        hog("hog", "Never"), hog("hog-again", "Always")]}))

    def terminated() -> dict:
        st = _pod(server, "hog").get("status") or {}
        cs = (st.get("containerStatuses") or [{}])[0]
        return st.get("phase") == "Failed" and (cs.get("state") or {}).get("terminated")
    term = wait_for(terminated, timeout=60, interval=0.3)
    assert term["reason"] == "OOMKilled" and term["exitCode"] == 137, term
    out = server.kubectl("get", "pod", "hog", "-o",
                         "jsonpath={.status.containerStatuses[0].state.terminated.reason} "
                         "{.status.containerStatuses[0].state.terminated.exitCode}").stdout
    assert out == "OOMKilled 137"
    row = server.kubectl("get", "pod", "hog", "--no-headers").stdout.split()
    assert row[1:3] == ["0/1", "OOMKilled"], row
    assert re.search(r"Reason:\s+OOMKilled", server.kubectl("describe", "pod", "hog").stdout)

    # Restarted, the container's previous run says how it ended.
    def restarted() -> dict:
        cs = ((_pod(server, "hog-again").get("status") or {}).get("containerStatuses") or [{}])[0]
        return cs.get("restartCount", 0) >= 1 and (cs.get("lastState") or {}).get("terminated")
    last = wait_for(restarted, timeout=60, interval=0.3)
    assert last["reason"] == "OOMKilled" and last["exitCode"] == 137, last
    out = server.kubectl("get", "pod", "hog-again", "-o",
                         "jsonpath={.status.containerStatuses[0].lastState.terminated.reason}").stdout
    assert out == "OOMKilled"
    server.kubectl("delete", "pod", "hog", "hog-again", "--timeout=30s")


# --------------------------------------------------------------------------- scheduling on hollow nodes


class HollowCluster:
    """A server of its own (its embedded node and hollow nodes) so other tests' pods stay off them."""

    def __init__(self, server: Server, kubeconfig: Path):
        self.server = server
        self.kubeconfig = kubeconfig
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []

    def add_nodes(self, prefix: str, count: int, *labels: str) -> list[str]:
        log = open(self.server.data_dir / f"hollow-{prefix}log", "wb")  # noqa: SIM115 - closed by stop()
        self.logs.append(log)
        argv = [sys.executable, "-m", "kybernetes.cli.main", "hollow-nodes", "--kubeconfig", str(self.kubeconfig),
                "--count", str(count), "--prefix", prefix]
        for kv in labels:
            argv += ["--label", kv]
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log))
        names = [f"{prefix}{i}" for i in range(count)]
        for n in names:
            wait_for(lambda n=n: self.server.kubectl("get", "node", n, check=False).returncode == 0, timeout=30)
            self.server.kubectl("wait", "--for=condition=Ready", f"node/{n}", "--timeout=30s")
        return names

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()


@pytest.fixture(scope="module")
def hollow(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("kyb-hollow"), free_port())
    s.start()
    # Hollow nodes join as nodes do: with the join token, not the admin's certificate.
    admin = yaml.safe_load(s.kubeconfig.read_text())
    join = (s.data_dir / "pki" / "join.token").read_text().strip()
    # The join string is K10<CA hash>::<id>.<secret>; the bootstrap token is the part after "::".
    token = join.split("::")[-1]
    admin["users"] = [{"name": "node", "user": {"token": token}}]
    # A bootstrap token may only ask for a certificate; hollow nodes register as nodes with it
    # (as kubemark's share one credential), so it gets the nodes' role.
    s.kubectl("create", "clusterrolebinding", "hollow-nodes", "--clusterrole=system:node",
              f"--user=system:bootstrap:{token.split('.')[0]}")
    admin["contexts"][0]["context"]["user"] = "node"
    node_kubeconfig = s.data_dir / "node-kubeconfig"
    node_kubeconfig.write_text(yaml.safe_dump(admin))
    c = HollowCluster(s, node_kubeconfig)
    try:
        c.add_nodes("ssd-", 2, "disk=ssd")
        c.add_nodes("plain-", 1)
        wait_for(lambda: len(s.kjson("get", "nodes")["items"]) == 4, timeout=30)  # with the embedded node
        s.kubectl("taint", "node", "ssd-1", "dedicated=gpu:NoSchedule")
        yield c
    finally:
        c.stop()
        s.stop()


def _deployment(name: str, replicas: int, pod_spec: dict) -> str:
    return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                       "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                                "template": {"metadata": {"labels": {"app": name}},
                                             "spec": {"containers": [{"name": "c", "image": "busybox"}],
                                                      **pod_spec}}}})


def _nodes_of(server: Server, app: str, count: int) -> list[str]:
    def placed() -> list[str]:
        pods = server.kjson("get", "pods", "-l", f"app={app}")["items"]
        nodes = [p["spec"].get("nodeName") for p in pods]
        return nodes if len(nodes) == count and all(nodes) else []
    return wait_for(placed, timeout=30, interval=0.2)


def test_node_selector_and_taints(hollow: HollowCluster):
    s = hollow.server
    # disk=ssd matches ssd-0 and ssd-1, but ssd-1's taint is not tolerated: every replica on ssd-0.
    s.kubectl("apply", "-f", "-", input=_deployment("ssd", 4, {"nodeSelector": {"disk": "ssd"}}))
    assert _nodes_of(s, "ssd", 4) == ["ssd-0"] * 4
    wide = s.kubectl("get", "pods", "-l", "app=ssd", "-o", "wide").stdout
    assert wide.count("ssd-0") == 4 and "ssd-1" not in wide, wide

    # Pinned to the tainted node: only a pod that tolerates the taint gets there.
    pinned = {"nodeSelector": {"kubernetes.io/hostname": "ssd-1"}}
    s.kubectl("apply", "-f", "-", input=_deployment("gpu", 1, {
        **pinned, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                   "effect": "NoSchedule"}]}))
    assert _nodes_of(s, "gpu", 1) == ["ssd-1"]
    s.kubectl("run", "intolerant", "--image=busybox", "--overrides", json.dumps({"spec": pinned}))

    def failed_scheduling() -> str:
        desc = s.kubectl("describe", "pod", "intolerant").stdout
        return "FailedScheduling" in desc and desc
    desc = wait_for(failed_scheduling, timeout=20)
    assert re.search(r"0/4 nodes are available: 1 node\(s\) had untolerated taint \{dedicated: gpu\}, "
                     r"3 node\(s\) didn't match Pod's node affinity/selector\.", desc), desc
    assert not _pod(s, "intolerant")["spec"].get("nodeName")
    s.kubectl("delete", "deploy", "ssd", "gpu", "--timeout=30s")
    s.kubectl("delete", "pod", "intolerant", "--timeout=30s")


def test_required_node_affinity(hollow: HollowCluster):
    s = hollow.server
    # Hollow nodes without a disk label: only plain-0 (the embedded node is not type=hollow).
    affinity = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "type", "operator": "In", "values": ["hollow"]},
                                                    {"key": "disk", "operator": "DoesNotExist"}]}]}}}}
    s.kubectl("apply", "-f", "-", input=_deployment("affine", 3, affinity))
    assert _nodes_of(s, "affine", 3) == ["plain-0"] * 3
    s.kubectl("delete", "deploy", "affine", "--timeout=30s")


def test_unschedulable_until_a_node_matches(hollow: HollowCluster):
    s = hollow.server
    s.kubectl("run", "wants-nvme", "--image=busybox", "--overrides", json.dumps({"spec": {
        "nodeSelector": {"disk": "nvme"}}}))
    s.kubectl("run", "wants-zone-c", "--image=busybox", "--overrides", json.dumps({"spec": {
        "nodeSelector": {"zone": "c"}}}))

    def failed(name: str) -> str:
        out = s.kubectl("get", "events", "--field-selector", f"involvedObject.name={name},reason=FailedScheduling",
                        "-o", "jsonpath={.items[*].message}").stdout
        return out
    msg = wait_for(lambda: failed("wants-nvme"), timeout=20)
    assert msg.startswith("0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, "
                          "3 node(s) didn't match Pod's node affinity/selector."), msg
    desc = s.kubectl("describe", "pod", "wants-nvme").stdout
    assert re.search(r"Warning\s+FailedScheduling\s+.*default-scheduler\s+0/4 nodes are available", desc), desc
    cond = next(c for c in _pod(s, "wants-nvme")["status"]["conditions"] if c["type"] == "PodScheduled")
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    wait_for(lambda: failed("wants-zone-c"), timeout=20)

    # A node that comes to match by a label change takes the pod at once, without a resync.
    t0 = time.monotonic()
    s.kubectl("label", "node", "plain-0", "disk=nvme")
    s.kubectl("wait", "--for=condition=PodScheduled", "pod/wants-nvme", "--timeout=30s")
    assert _pod(s, "wants-nvme")["spec"]["nodeName"] == "plain-0"
    assert time.monotonic() - t0 < 10
    # So does a node that joins with the label.
    hollow.add_nodes("late-", 1, "zone=c")
    s.kubectl("wait", "--for=condition=PodScheduled", "pod/wants-zone-c", "--timeout=30s")
    assert _pod(s, "wants-zone-c")["spec"]["nodeName"] == "late-0"
    s.kubectl("wait", "--for=condition=Ready", "pod/wants-zone-c", "--timeout=30s")
    s.kubectl("delete", "pod", "wants-nvme", "wants-zone-c", "--timeout=30s")
