"""Benchmark of the files source: ignored bursts cost nothing, sustained saves keep up.

Runs the real FilesSource (real inotify, real files) in this process, with writers in a separate
process so that only the source's own thread CPU time is counted
(`time.pthread_getcpuclockid`, Linux).

1. Burst: 100,000 file writes under `node_modules/` of a watched repo. Target: 0 events and
   < 2 CPU-seconds of source time. Baseline in the same run: 2,000 writes to watched files.
2. Sustained: saves at 1,000/s to 500 watched files for a few seconds. Target: the backlog (changes
   waiting plus saves emitted late) does not grow.

Usage: python bench/files.py [--burst N] [--seconds S]. Prints a markdown table for the README.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent.paths import StatePaths
from agent.sources.base import SourceContext
from agent.sources.files import FilesSource


@dataclasses.dataclass
class _Redacted:
    text: str


class _Redactor:
    def redact_text(self, text: str) -> _Redacted:
        return _Redacted(re.sub(r"SECRET-[A-Za-z0-9]+", "[REDACTED]", text))

    def content_allowed(self, path: str) -> bool:
        return True

    def file_allowed(self, path: str, st=None, text=None) -> bool:
        return self.content_allowed(path)


def _redactor():
    try:
        from redaction import Redactor
    except ImportError:
        return _Redactor()
    return Redactor.from_policy({}, hmac_key=b"bench" * 8)


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def emit(self, kind, data, *, ts=None, session=None, source=None) -> None:
        with self.lock:
            self.n += 1


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=30)


WRITER = r"""
import os, sys, time
root, count, files, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
start = time.monotonic()
for i in range(count):
    with open(os.path.join(root, f"f{i % files}.js"), "w") as f:
        f.write(f"module.exports = {i};\n")
    if rate:
        ahead = (i + 1) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
"""


def write_files(d: Path, count: int, files: int, rate: float = 0.0) -> None:
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", WRITER, str(d), str(count), str(files), str(rate)],
                   check=True, timeout=600)


class Harness:
    def __init__(self, tmp: Path, debounce_ms: int = 300) -> None:
        self.repo = tmp / "src" / "app"
        self.repo.mkdir(parents=True)
        _git(self.repo, "init", "-q")
        (self.repo / "node_modules" / "dep").mkdir(parents=True)
        (self.repo / "src").mkdir()
        self.counter = Counter()
        ctx = SourceContext(
            name="files", policy={"capture": {"roots": [str(tmp / "src")],
                                              "debounce_ms": debounce_ms}},
            paths=StatePaths.from_env({"TRACECAP_HOME": str(tmp / "state")}),
            emit=self.counter.emit, capturing=lambda: True, log=logging.getLogger("bench"),
            set_state=lambda s: None, redactor=_redactor())
        self.source = FilesSource(ctx)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> "Harness":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.source.repos and time.monotonic() < deadline:
            time.sleep(0.01)
        self.clock = time.pthread_getcpuclockid(self.thread.ident)
        return self

    def cpu(self) -> float:
        return time.clock_gettime(self.clock)

    def quiet(self, seconds: float = 1.0) -> None:
        """Wait until the source has nothing pending and emitted nothing for `seconds`."""
        deadline = time.monotonic() + 60
        last = -1
        while time.monotonic() < deadline:
            n = self.counter.n
            if n == last and not self.source.pending:
                return
            last = n
            time.sleep(seconds)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def burst(n: int, baseline_n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as h:
        cpu0, ev0 = h.cpu(), h.counter.n
        t0 = time.monotonic()
        write_files(h.repo / "node_modules" / "dep", n, n)
        wall = time.monotonic() - t0
        h.quiet()
        ignored_cpu, ignored_events = h.cpu() - cpu0, h.counter.n - ev0
        cpu1, ev1 = h.cpu(), h.counter.n
        write_files(h.repo / "src", baseline_n, 200)
        h.quiet()
        watched_cpu, watched_events = h.cpu() - cpu1, h.counter.n - ev1
        return {"writes": n, "wall_s": wall, "events": ignored_events, "cpu_s": ignored_cpu,
                "baseline_writes": baseline_n, "baseline_events": watched_events,
                "baseline_cpu_s": watched_cpu,
                "cpu_per_write_ratio": (ignored_cpu / n) / max(watched_cpu / baseline_n, 1e-9)}


def sustained(rate: float, seconds: float, files: int = 500) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as h:
        count = int(rate * seconds)
        samples: list[int] = []
        writer = threading.Thread(target=write_files, args=(h.repo / "src", count, files, rate))
        cpu0 = h.cpu()
        t0 = time.monotonic()
        writer.start()
        while writer.is_alive():
            writer.join(timeout=0.5)
            samples.append(len(h.source.pending))
        wall = time.monotonic() - t0
        h.quiet(0.5)
        drain = time.monotonic() - t0 - wall
        half = max(1, len(samples) // 2)
        return {"rate": rate, "seconds": wall, "writes": count, "events": h.counter.n,
                "cpu_s": h.cpu() - cpu0, "backlog_first_half": max(samples[:half] or [0]),
                "backlog_second_half": max(samples[half:] or [0]), "drain_s": drain}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    args = ap.parse_args()
    b = burst(args.burst, 2_000)
    s = sustained(args.rate, args.seconds)
    print(f"burst: {b}")
    print(f"sustained: {s}")
    print()
    print("| files source | figure | target |")
    print("|---|---|---|")
    print(f"| {b['writes']:,} writes in node_modules | {b['events']} events, "
          f"{b['cpu_s']:.3f} CPU-s of source time | 0 events, < 2 CPU-s |")
    print(f"| CPU per ignored write vs per watched write | {b['cpu_per_write_ratio']:.4f}x "
          f"({b['baseline_writes']:,} watched writes: {b['baseline_cpu_s']:.2f} CPU-s, "
          f"{b['baseline_events']} events) | |")
    print(f"| {s['writes']:,} saves at {s['rate']:.0f}/s asked, {s['writes'] / s['seconds']:.0f}/s "
          f"achieved by the writer, to 500 files | {s['events']:,} events, "
          f"{s['cpu_s']:.2f} CPU-s, backlog max {s['backlog_first_half']} then "
          f"{s['backlog_second_half']}, drained {s['drain_s']:.2f} s after the last write "
          f"| backlog does not grow |")
    ok = b["events"] == 0 and b["cpu_s"] < 2 and \
        s["backlog_second_half"] <= 2 * max(s["backlog_first_half"], 1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
