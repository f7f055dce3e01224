"""Fixtures for end-to-end tests: a real `kyb server` process and the real kubectl."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kubectl import KUBECTL, needs_kubectl  # noqa: F401 - re-exported for the e2e modules


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, port: int, extra_args: list[str] | None = None):
        self.data_dir = data_dir
        self.port = port
        self.extra_args = list(extra_args or [])
        self.kubelet_args = ["--kubelet-port", "0"]  # [] leaves the embedded node's port to the server
        self.proc: subprocess.Popen | None = None
        self.kubeconfig = data_dir / "kubeconfig"
        self.log = data_dir / "server.log"

    def start(self, timeout: float = 20.0) -> float:
        t0 = time.monotonic()
        offset = self.log.stat().st_size if self.log.exists() else 0
        logf = open(self.log, "ab")  # noqa: SIM115 - the server process owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kybernetes.cli.main", "server", "--data-dir", str(self.data_dir),
             "--port", str(self.port), *self.kubelet_args,
             "--log-level", os.environ.get("KYB_TEST_LOG_LEVEL", "info"), *self.extra_args],
            stdout=logf, stderr=logf)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.log.read_text())
            if b"ready at" in self.log.read_bytes()[offset:]:
                return time.monotonic() - t0
            time.sleep(0.02)
        raise RuntimeError("server not ready:\n" + self.log.read_text())

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0, killall: bool = True) -> int | None:
        """Stop the server; with ``killall`` (the default) also every pod its node left running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        if not killall:
            return rc
        # Kubelets leave pods running when they exit; a test leaves nothing behind.
        subprocess.run([sys.executable, "-m", "kybernetes.cli.main", "killall", "--data-dir", str(self.data_dir)],
                       capture_output=True, timeout=60, check=False)
        return rc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        p = subprocess.run([KUBECTL, *args], input=input, capture_output=True, text=True, env=env,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def kjson(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("kyb"), free_port())
    s.start()
    yield s
    s.stop()


def wait_for(fn, timeout: float = 20.0, interval: float = 0.05):
    """Poll fn until it returns something truthy; return it, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


