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
        for flag in ("--ingress-http-port", "--ingress-https-port"):
            p = _run_server(tmp_path / flag, "--port", str(free_port()), "--kubelet-port", "0", flag, str(port))
            assert p.returncode != 0
            assert p.stderr.strip().splitlines()[-1] == (
                f"kyb server: {flag} {port}: 127.0.0.1:{port} is already in use (another kyb server, agent or "
                f"kubelet?); pass another {flag}, 0 for a free one, or --disable=ingress"), p.stderr
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
            # Nor do their ingresses take ports 80 and 443: each has free ones of its own.
            logs = [s.log.read_text() for s in (first, second)]
            ports = [line.split("HTTP port ")[1].split(" (")[0] for log in logs for line in log.splitlines()
                     if "ingress on" in line]
            assert len(ports) == 2 and ports[0] != ports[1] and not any(
                p in ("80, HTTPS port 443",) for p in ports), ports
        finally:
            second.stop()
    finally:
        first.stop()
