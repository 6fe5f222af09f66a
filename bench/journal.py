"""Journal benchmark: durable appends/s and read-back rate, against plain write+fsync.

Run: python -m bench.journal [--events N]
Pinned to one core. The journal runs with its defaults (fsync batched at 200 ms, reorder window
250 ms); an append counts once the final flush says it is fsynced. The baseline, measured in the
same run on the same events, is what a minimal durable log costs: msgpack-encode, one os.write and
one fsync per batch of 1,000 events, no framing, no checksums, no ordering. Target: >= 50,000 events/s.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import msgpack

from agent.journal import Journal

TARGET = 50_000


def sample_events(n: int) -> list[tuple]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(("shell.start", "shell", "s1", {"id": f"c{i}", "cmd": f"pytest -x tests/test_{i % 50}.py",
                                                       "cwd": "~/src/app", "shell": "bash", "actor": "human"}))
        elif i % 3 == 1:
            out.append(("shell.end", "shell", "s1", {"id": f"c{i - 1}", "exit": i % 2, "duration_ms": 1234}))
        else:
            out.append(("file.save", "files", None, {"repo": "~/src/app", "path": f"src/mod{i % 40}.py",
                                                     "op": "modify", "size": 4096,
                                                     "diff": "@@ -1,3 +1,3 @@\n-x = 1\n+x = 2\n y = 3\n"}))
    return out


def bench_journal(events: list[tuple], d: Path) -> tuple[float, float]:
    j = Journal(d)
    j.open()
    j.start()
    t0 = time.perf_counter()
    for kind, source, session, data in events:
        j.append(kind, source, session, data)
    j.flush(timeout=None)
    t_append = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in j.read())
    t_read = time.perf_counter() - t0
    j.stop()
    assert n == len(events)
    return len(events) / t_append, n / t_read


def bench_baseline(events: list[tuple], d: Path, batch: int = 1000) -> float:
    path = d / "plain.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t0 = time.perf_counter()
    ts = time.time_ns()
    for start in range(0, len(events), batch):
        blob = b"".join(msgpack.packb({"v": 1, "seq": start + k + 1, "ts": ts, "kind": kind, "source": source,
                                       "session": session, "data": data})
                        for k, (kind, source, session, data) in enumerate(events[start:start + batch]))
        os.write(fd, blob)
        os.fsync(fd)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return len(events) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    events = sample_events(args.events)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        base = bench_baseline(events, Path(b))
        append, read = bench_journal(events, Path(a))
    print(f"journal durable appends: {append:,.0f} events/s  ({append / TARGET:.2f}x the {TARGET:,} target)")
    print(f"baseline write+fsync per 1,000-event batch: {base:,.0f} events/s")
    print(f"journal / baseline: {append / base:.2f}x")
    print(f"read-back: {read:,.0f} events/s")
    print()
    print("| measure | events/s | ratio |")
    print("|---|---|---|")
    print(f"| journal durable appends (1 core, default batching) | {append:,.0f} | {append / TARGET:.2f}x target, {append / base:.2f}x baseline |")
    print(f"| baseline: msgpack + write + fsync per 1,000 events | {base:,.0f} | 1.00x |")
    print(f"| journal read-back | {read:,.0f} | |")


if __name__ == "__main__":
    main()
