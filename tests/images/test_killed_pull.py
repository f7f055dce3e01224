"""A pull killed mid-download (kill -9 of the process) leaves a store the next pull completes.

`kyb image pull` runs as its own process against an in-process registry that sends half
of a layer and then hangs; the process is killed while the partial file is on disk. The
next pull resumes the layer from where the partial file ends (an HTTP Range request),
verifies it, and nothing of the killed attempt is visible as content.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from kybernetes.images import build
from kybernetes.images.content import ContentStore
from tests.images.registryfixture import FakeRegistry


async def test_killed_pull_resumes(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)  # incompressible, so the layer blob is as large
    with build.busybox_image("big:1", extra_layers=[[build.Entry.file("big.bin", payload)]]) as img:
        async with FakeRegistry() as reg:
            reg.add_image("big", "1", img)
            big = max(img.layers, key=lambda layer: layer.size).digest
            reg.stall[big] = asyncio.Event()
            data = tmp_path / "node"
            argv = [sys.executable, "-m", "kybernetes.cli.main", "image", "pull", "--data-dir", str(data),
                    reg.ref("big:1")]
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            partial = data / "images" / "content" / "ingest" / big.split(":", 1)[1]
            deadline = time.monotonic() + 30
            while not (partial.exists() and partial.stat().st_size > 0):
                assert proc.returncode is None, (await proc.stdout.read()).decode()
                assert time.monotonic() < deadline, "the pull never started writing the layer"
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            half = partial.stat().st_size
            store = ContentStore(str(data / "images" / "content"))
            assert not store.has(big), "a killed download must not be visible as content"
            reg.stall[big].set()
            again = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.STDOUT)
            out = (await asyncio.wait_for(again.communicate(), 60))[0].decode()
            assert again.returncode == 0, out
            assert store.has(big)
            store.read(big)  # raises unless the blob hashes to its digest
            assert not partial.exists()
            ranges = [s.headers.get("Range") for s in reg.seen(method="GET", contains=big)]
            assert f"bytes={half}-" in ranges, ranges
            ls = await asyncio.create_subprocess_exec(*argv[:3], "image", "ls", "--data-dir", str(data),
                                                      stdout=asyncio.subprocess.PIPE)
            assert "big" in (await ls.communicate())[0].decode()
