"""A port already in use is a one-line error naming the flag that moves it, and `--port` alone
is enough to run a second cluster beside the first (issue: fidelity, bug 6)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from .conftest import Server, free_port

KYB = [sys.executable, "-m", "kybernetes.cli.main"]


def _run_server(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KYB, "server", "--data-dir", str(data), *args], capture_output=True, text=True,
                          timeout=60)


def test_busy_ports_are_one_line_errors_naming_the_flag(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = _run_server(tmp_path / "a", "--port", str(port), "--kubelet-port", "0")
        assert p.returncode != 0
        assert p.stderr.strip().splitlines()[-1] == (
            f"kyb server: --port {port}: 127.0.0.1:{port} is already in use (another kyb server, agent or "
            "kubelet?); pass another --port"), p.stderr
        assert "Traceback" not in p.stderr
        p = _run_server(tmp_path / "b", "--port", str(free_port()), "--kubelet-port", str(port))
        assert p.returncode != 0
        assert p.stderr.strip().splitlines()[-1].startswith(f"kyb server: --kubelet-port {port}: 127.0.0.1:{port} "
                                                            "is already in use"), p.stderr
        assert "Traceback" not in p.stderr


def test_port_alone_runs_a_second_cluster(tmp_path: Path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, second = Server(tmp_path / "one", free_port()), Server(tmp_path / "two", free_port())
    # Neither names a kubelet port: off the default API port, each embedded node picks a free one.
    first.kubelet_args = second.kubelet_args = []
    first.start()
    try:
        second.start()
        try:
            for s in (first, second):
                node = s.kjson("get", "nodes")["items"][0]
                assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] not in (0, 10250)
        finally:
            second.stop()
    finally:
        first.stop()
