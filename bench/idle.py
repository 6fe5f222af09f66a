"""Daemon idle cost and the cost of typing: CPU and memory of a real `tracecap daemon`.

Run: `python -m bench.idle [--seconds 60] [--rate 20]`. Needs Xvfb and xdotool. Starts a private
Xvfb (with RECORD), a temporary TRACECAP_HOME with a policy that turns every source on (capture
roots: one empty git repository), opts in, and runs `tracecap daemon` as a user would. After a
settling period it measures the daemon's CPU time and peak RSS over `--seconds` of idleness (the
baseline), then over `--seconds` while xdotool types `--rate` keys per second. Prints CPU as a
share of one core, the ratios to the budgets (issue 4: idle < 0.5 % of a core and < 80 MB RSS;
typing adds < 0.5 % of a core) and a markdown table for the README.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.xdisplay import start_xvfb

IDLE_CPU_PCT = 0.5
IDLE_RSS_MB = 80.0
TYPING_CPU_PCT = 0.5


def _measure(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """(percent of one core, peak RSS in MB) of `proc` over `seconds`, sampled once a second."""
    c0 = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    peak = proc.memory_info().rss
    while time.monotonic() - t0 < seconds:
        time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - t0))))
        peak = max(peak, proc.memory_info().rss)
    cpu = sum(proc.cpu_times()[:2]) - c0
    return 100.0 * cpu / (time.monotonic() - t0), peak / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=20, help="key presses per second while typing")
    ap.add_argument("--settle", type=float, default=8.0)
    args = ap.parse_args(argv)
    for tool in ("Xvfb", "xdotool", "git"):
        if shutil.which(tool) is None:
            print(f"bench.idle needs {tool}; install it", file=sys.stderr)
            return 1
    tracecap = shutil.which("tracecap", path=os.path.dirname(sys.executable)) or "tracecap"
    try:
        xvfb, display = start_xvfb()
    except RuntimeError as exc:
        print(f"bench.idle: {exc}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="tracecap-bench-idle-"))
    daemon = None
    try:
        repo = tmp / "src" / "repo"
        repo.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
        policy = tmp / "policy.toml"
        policy.write_text(f'[capture]\nroots = ["{tmp / "src"}"]\n'
                          'sources = ["files", "shell", "tests", "git", "tools", "input"]\n')
        policy.chmod(0o644)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
        env.update(TRACECAP_HOME=str(tmp / "home"), TRACECAP_POLICY=str(policy), DISPLAY=display)
        env.pop("WAYLAND_DISPLAY", None)
        subprocess.run([tracecap, "opt-in"], env=env, check=True, capture_output=True, timeout=30)
        log = open(tmp / "daemon.stderr", "wb")
        daemon = subprocess.Popen([tracecap, "daemon"], env=env, stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL)
        sources: dict = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run([tracecap, "status", "--json"], env=env, capture_output=True,
                               text=True, timeout=30)
            if r.returncode == 0:
                sources = json.loads(r.stdout).get("sources", {})
                if str(sources.get("input", "")).startswith("running"):
                    break
            time.sleep(0.5)
        proc = psutil.Process(daemon.pid)
        time.sleep(args.settle)
        idle_cpu, idle_rss = _measure(proc, args.seconds)
        n = int(args.rate * args.seconds)
        typist = subprocess.Popen(["xdotool", "type", "--delay", str(1000 // args.rate),
                                   "a" * n], env=env, stdout=subprocess.DEVNULL)
        typing_cpu, typing_rss = _measure(proc, args.seconds)
        typist.wait(timeout=args.seconds + 30)
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        xvfb.terminate()
        xvfb.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    added = max(0.0, typing_cpu - idle_cpu)
    print("sources: " + ", ".join(f"{k}={v}" for k, v in sorted(sources.items())))
    print(f"idle {args.seconds:.0f} s: CPU {idle_cpu:.3f}% of a core "
          f"(ratio to the {IDLE_CPU_PCT}% budget {idle_cpu / IDLE_CPU_PCT:.2f}), "
          f"peak RSS {idle_rss:.1f} MB (ratio to {IDLE_RSS_MB:.0f} MB {idle_rss / IDLE_RSS_MB:.2f})")
    print(f"typing {args.rate} keys/s: CPU {typing_cpu:.3f}%, added {added:.3f}% of a core "
          f"(ratio to the {TYPING_CPU_PCT}% budget {added / TYPING_CPU_PCT:.2f}), "
          f"peak RSS {typing_rss:.1f} MB")
    print()
    print("| phase | seconds | CPU (% of a core) | peak RSS (MB) | budget | ratio |")
    print("|---|---|---|---|---|---|")
    print(f"| idle, every source on | {args.seconds:.0f} | {idle_cpu:.3f} | {idle_rss:.1f} | "
          f"< {IDLE_CPU_PCT}% CPU, < {IDLE_RSS_MB:.0f} MB | "
          f"{idle_cpu / IDLE_CPU_PCT:.2f} / {idle_rss / IDLE_RSS_MB:.2f} |")
    print(f"| typing {args.rate} keys/s (added) | {args.seconds:.0f} | {added:.3f} | "
          f"{typing_rss:.1f} | < {TYPING_CPU_PCT}% CPU | {added / TYPING_CPU_PCT:.2f} |")
    ok = idle_cpu < IDLE_CPU_PCT and idle_rss < IDLE_RSS_MB and added < TYPING_CPU_PCT
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
