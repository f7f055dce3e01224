"""Raw store throughput: creates/s, gets/s and list-10k latency, the baseline the API benchmark compares to.

Usage: .venv/bin/python bench/store_bench.py [--objects N] [--value-bytes B] [--concurrency C] [--dir D]
Not a test; prints figures (and the group-commit gain as a ratio against sequential creates).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from kybernetes.storage import open_store


def _value(i: int, size: int) -> bytes:
    head = b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pod-%d","namespace":"default"},"spec":"' % i
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def bench(objects: int, value_bytes: int, concurrency: int, directory: str) -> None:
    path = os.path.join(directory, "bench.db")
    store = open_store(path)
    try:
        # Sequential creates: one transaction per write, the worst case for commit cost.
        seq_n = min(objects, 3000)
        t0 = time.perf_counter()
        for i in range(seq_n):
            await store.create(f"/registry/seq/default/pod-{i:06d}", _value(i, value_bytes))
        seq_rate = seq_n / (time.perf_counter() - t0)

        # Concurrent creates, as the API server issues them: writers share group commits.
        keys = [f"/registry/pods/default/pod-{i:06d}" for i in range(objects)]
        queue = iter(range(objects))

        async def writer() -> None:
            for i in queue:
                await store.create(keys[i], _value(i, value_bytes))

        t0 = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(concurrency)))
        create_rate = objects / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        n_gets = 0
        while n_gets < 3 * objects:
            for k in keys:
                await store.get(k)
            n_gets += len(keys)
        get_rate = n_gets / (time.perf_counter() - t0)

        rev = await store.current_revision()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            kvs, _, _ = await store.list("/registry/pods/")
            times.append(time.perf_counter() - t0)
        assert len(kvs) == objects
        list_ms = min(times) * 1000

        # A snapshot read at an older revision (the continue-token path), paged by 500.
        for k in keys[: objects // 10]:
            await store.update(k, _value(0, value_bytes), 0)
        t0 = time.perf_counter()
        start, total = "", 0
        while True:
            kvs, _, more = await store.list("/registry/pods/", revision=rev, limit=500, start_key=start)
            total += len(kvs)
            if not more:
                break
            start = kvs[-1].key + "\x00"
        paged_ms = (time.perf_counter() - t0) * 1000
        assert total == objects

        print(f"objects={objects} value_bytes={value_bytes} concurrency={concurrency}")
        print(f"creates/s sequential   {seq_rate:10.0f}")
        print(f"creates/s concurrent   {create_rate:10.0f}   ({create_rate / seq_rate:.1f}x sequential)")
        print(f"gets/s                 {get_rate:10.0f}")
        print(f"list {objects} ms         {list_ms:10.1f}")
        print(f"list {objects} @rev paged ms {paged_ms:8.1f}   ({paged_ms / list_ms:.1f}x unpaged current list)")
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--value-bytes", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--dir", default=None, help="directory for the database (default: a temporary one)")
    args = ap.parse_args()
    if args.dir:
        asyncio.run(bench(args.objects, args.value_bytes, args.concurrency, args.dir))
    else:
        with tempfile.TemporaryDirectory() as d:
            asyncio.run(bench(args.objects, args.value_bytes, args.concurrency, d))


if __name__ == "__main__":
    main()
