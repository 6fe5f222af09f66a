"""Shared helpers for the collector, verify and export tests (no tests here): simulated devices
that seal real chained bundles, and a real collector process on a free loopback port."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.bundle import SealedBundle, seal_bundle

REPO = Path(__file__).resolve().parent.parent
BASE_TS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
DAY_NS = 86_400 * 10**9


def make_event(seq: int, ts: int | None = None, kind: str = "user.note", **data) -> dict:
    return {"v": 1, "seq": seq, "ts": BASE_TS + seq * 10**9 if ts is None else ts, "kind": kind,
            "source": "cli", "session": None, "data": data or {"text": f"note {seq}"}}


class Device:
    """A workstation that seals bundles the way the daemon does: seq order, chained digests."""

    def __init__(self, device_id: str, recipients, key: Ed25519PrivateKey | None = None) -> None:
        self.device_id = device_id
        self.key = key or Ed25519PrivateKey.generate()
        self.recipients = list(recipients)
        self.prev_digest = ""
        self.next_seq = 1

    def seal_events(self, events: list[dict], chain: bool = True) -> tuple[bytes, SealedBundle]:
        buf = io.BytesIO()
        sealed = seal_bundle(buf, events, device_id=self.device_id, device_key=self.key,
                             recipients=self.recipients, prev_digest=self.prev_digest)
        if chain:
            self.prev_digest = sealed.digest
            self.next_seq = events[-1]["seq"] + 1
        return buf.getvalue(), sealed

    def seal(self, n: int = 5, skip: int = 0, **event_kw) -> tuple[bytes, SealedBundle]:
        """The next `n` events (after skipping `skip` seqs) as one bundle."""
        first = self.next_seq + skip
        return self.seal_events([make_event(s, **event_kw) for s in range(first, first + n)])


class Collector:
    """`tracecap collector serve` in a subprocess on 127.0.0.1, a free port; stderr to a file.
    `data` is a data directory, or a `tests.fleet_services.Backend` (local or S3+PostgreSQL)."""

    def __init__(self, data, token: str | None = "s3cret", extra: list[str] | None = None,
                 env: dict | None = None, name: str = "") -> None:
        if isinstance(data, Path):
            self.backend = None
            self.data = data
            self.store_args = ["--data", str(data)]
            base_env: dict = {}
            log_dir = data.parent
        else:
            self.backend = data
            self.data = data.data
            self.store_args = data.args()
            base_env = data.env()
            log_dir = data.root
        self.token = token
        self.extra = extra or []
        self.env = {**base_env, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log_path = log_dir / f"{self.data.name}{name}-collector.log"

    def start(self, timeout: float = 20.0, listen: str = "127.0.0.1:0") -> "Collector":
        args = [sys.executable, "-m", "agent.cli", "collector", "serve", *self.store_args,
                "--listen", listen, *self.extra]
        if self.token is not None:
            args += ["--token", self.token]
        env = dict(os.environ)
        env.pop("TRACECAP_COLLECTOR_TOKEN", None)
        env.update(self.env)
        self.log_path.write_text("")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=log, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on (http://[\d.]+:\d+)", self.log_path.read_text())
            if m:
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited {self.proc.returncode}: {self.log_path.read_text()}")
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"collector did not start: {self.log_path.read_text()}")

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "Collector":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_cli(*args: str, timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env} if env else None)


def ingest(store, raw: bytes, bundle_id: str):
    """Store a bundle through the same path an upload takes, without HTTP."""
    temp = store.temp_path()
    temp.write_bytes(raw)
    return store.ingest(temp, bundle_id)
