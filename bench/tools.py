"""Tools poller cost: CPU of the process-table diff with many processes running and none starting.

Run: `python -m bench.tools [--procs 500] [--tracked 50] [--seconds 20] [--interval-ms 250]`.
Starts `--procs` real idle processes (`sleep`), `--tracked` of them inside an interactive bash in
tmux so the poller is following them (re-reading each one every tick), the rest outside any shell
session. Then, in this process, measures the CPU time of (a) the baseline: the same loop waiting
on the same interval without polling, and (b) `ProcessWatcher.poll()` every interval. Prints the
poller's share of one core, its ratio to the 0.5 % budget (issue 4) and a markdown table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil

from agent.sources.tools import ProcessWatcher, ToolsSettings

BUDGET_PCT = 0.5


def _cpu_of_loop(seconds: float, interval: float, step) -> float:
    """Percent of one core this thread spends over `seconds`, calling `step` every `interval`."""
    stop = threading.Event()
    t0, c0 = time.monotonic(), time.thread_time()
    while time.monotonic() - t0 < seconds:
        step()
        stop.wait(interval)
    return 100.0 * (time.thread_time() - c0) / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=500)
    ap.add_argument("--tracked", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval-ms", type=int, default=250)
    args = ap.parse_args(argv)
    if shutil.which("tmux") is None:
        print("bench.tools needs tmux for the interactive shell; install it", file=sys.stderr)
        return 1
    interval = args.interval_ms / 1000
    sock = f"tc-bench-tools-{os.getpid()}"
    untracked = [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
                 for _ in range(args.procs - args.tracked)]
    try:
        subprocess.run(["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d",
                        "bash --norc --noprofile"], check=True, timeout=10)
        time.sleep(0.5)
        watcher = ProcessWatcher(ToolsSettings(interval_s=interval))
        watcher.baseline()
        subprocess.run(["tmux", "-L", sock, "send-keys",
                        f"for i in $(seq {args.tracked}); do sleep 3600 & done", "Enter"],
                       check=True, timeout=10)
        deadline = time.monotonic() + 20
        while len(watcher.tracked_pids) < args.tracked and time.monotonic() < deadline:
            watcher.poll()
            time.sleep(interval)
        total = len(psutil.pids())
        tracked = len(watcher.tracked_pids)
        base = _cpu_of_loop(args.seconds, interval, lambda: None)
        cost = _cpu_of_loop(args.seconds, interval, watcher.poll)
        t0 = time.perf_counter()
        for _ in range(20):
            watcher.poll()
        per_poll_ms = (time.perf_counter() - t0) / 20 * 1000
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], timeout=10)
        for p in untracked:
            p.kill()
        for p in untracked:
            p.wait(timeout=10)
    poller = max(0.0, cost - base)
    print(f"processes on the machine: {total}, tracked by the poller: {tracked}")
    print(f"poller CPU: {poller:.3f}% of a core (loop {cost:.3f}% - baseline {base:.3f}%); "
          f"ratio to the {BUDGET_PCT}% budget: {poller / BUDGET_PCT:.2f}")
    print()
    print("| processes | tracked | interval | one poll | CPU (% of a core) | budget | ratio |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {total} | {tracked} | {args.interval_ms} ms | {per_poll_ms:.2f} ms | {poller:.3f} | "
          f"{BUDGET_PCT} | {poller / BUDGET_PCT:.2f} |")
    return 0 if poller < BUDGET_PCT else 1


if __name__ == "__main__":
    sys.exit(main())
