"""A real `tracecap daemon` process in a temporary TRACECAP_HOME, for integration tests.

Not a mock: the daemon is started with the installed console script exactly as a user would, the
CLI is run as separate processes, and stop sends SIGTERM (or SIGKILL for crash tests).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TRACECAP = shutil.which("tracecap", path=os.path.dirname(sys.executable)) or "tracecap"


class DaemonProcess:
    def __init__(self, home: Path, *, policy: Path | None = None, sources: str | None = None,
                 extra_env: dict | None = None) -> None:
        self.home = Path(home)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
        self.env["TRACECAP_HOME"] = str(self.home)
        self.env.pop("DISPLAY", None)
        if policy is not None:
            self.env["TRACECAP_POLICY"] = str(policy)
        else:
            # Tests never pick up a machine-wide policy by accident.
            self.env["TRACECAP_POLICY"] = str(self.home / "no-policy.toml")
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.home / "run" / "control.sock"

    def start(self, timeout: float = 20.0) -> "DaemonProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "daemon.stderr", "ab")
        self.proc = subprocess.Popen([TRACECAP, "daemon"], env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            r = self.cli("status", "--json", check=False)
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"daemon did not come up: {self.stderr()}")

    def stderr(self) -> str:
        try:
            return (self.home / "daemon.stderr").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run([TRACECAP, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"tracecap {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def events(self, *extra: str) -> list[dict]:
        out = self.cli("log", "--json", *extra).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def forget_window(began: float) -> int:
    """Whole seconds for `forget --last` that reach back to `began` (just before the events to
    forget were made) with a second to spare for the forget command to start, and not to an event
    made at least 2.5 s before `began`: a window that follows the CLI calls in between, however
    long a loaded machine makes them, instead of a fixed 2 s they may outlast."""
    return max(2, math.ceil(time.monotonic() - began) + 1)
