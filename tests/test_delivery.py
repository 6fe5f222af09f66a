"""Delivery under faults: the real daemon uploading to the real collector over loopback HTTP.

Between them sits a small TCP proxy on 127.0.0.1 that can refuse, stall, answer 503 with
Retry-After, or reset a connection mid-upload. After each fault and its recovery, `tracecap export`
must hold every acknowledged note exactly once and `tracecap collector verify` must find no gap.
Every wait is bounded; nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.delivery import backoff_delay, retry_after_seconds
from tests.daemon_harness import TRACECAP, DaemonProcess

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize("value,expected", [("3", 3.0), ("0", 0.0), (None, None), ("", None),
                                            ("soon", None)])
def test_retry_after_seconds(value, expected):
    assert retry_after_seconds(value) == expected


def test_retry_after_http_date():
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_backoff_is_full_jitter_capped_and_never_zero():
    rng = random.Random(1)
    for attempt in range(40):
        for _ in range(50):
            d = backoff_delay(attempt, 1.0, 30.0, rng)
            assert 0.1 <= d <= min(30.0, 2 ** attempt)
    # the first retry is jittered too (no synchronised stampede)
    firsts = {round(backoff_delay(0, 1.0, 30.0, rng), 3) for _ in range(50)}
    assert len(firsts) > 10


# ------------------------------------------------------------------------------- harness
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Collector:
    def __init__(self, data: Path, token: str) -> None:
        self.data, self.token, self.port = data, token, free_port()
        self.proc: subprocess.Popen | None = None
        self.started = False

    def start(self) -> "Collector":
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
        err = self.data.parent / "collector.err"
        for _ in range(3):
            self.proc = subprocess.Popen([TRACECAP, "collector", "serve", "--data", str(self.data), "--listen",
                                          f"127.0.0.1:{self.port}", "--token", self.token], env=env,
                                         stdout=subprocess.DEVNULL, stderr=open(err, "ab"))
            deadline = time.monotonic() + 20
            # Ready when this process listens on the port: a port taken by another process
            # between free_port() and the bind would answer a connection too.
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._listening():
                    self.started = True
                    return self
                time.sleep(0.1)
            if self.proc.poll() is None or "Address already in use" not in err.read_text():
                break
            if self.started:  # a restart must keep its port: the daemon's policy names it
                break
            self.port = free_port()  # taken since free_port() chose it: choose again
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)
        raise TimeoutError(f"collector did not start: {err.read_text()[-2000:]}")

    def _listening(self) -> bool:
        import psutil

        try:
            return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port
                       for c in psutil.Process(self.proc.pid).net_connections("tcp"))
        except psutil.Error:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(20)


class FaultProxy:
    """127.0.0.1 TCP proxy in front of the collector. `mode`: pass | down | stall | reset | 503."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.mode = "pass"
        self.hits: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None

    def start(self) -> "FaultProxy":
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop)
        self.server = fut.result(10)
        return self

    def stop(self) -> None:
        async def close():
            self.server.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, reader, writer):
        mode = self.mode
        self.hits[mode] = self.hits.get(mode, 0) + 1
        try:
            if mode == "down":
                writer.transport.abort()
                return
            if mode == "503":
                await reader.read(65536)
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            if mode == "stall":
                await reader.read(65536)
                await asyncio.sleep(30)  # longer than the client's timeout
                writer.transport.abort()
                return
            if mode == "reset":
                await reader.read(200)  # part of the request, then a hard reset
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.transport.abort()
                return
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)

            async def pipe(r, w):
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                finally:
                    w.close()

            await asyncio.gather(pipe(reader, uw), pipe(ur, writer), return_exceptions=True)
        except (ConnectionError, OSError):
            pass


def write_policy(path: Path, url: str, token: str, extra: str = "") -> Path:
    path.write_text(f'[capture]\nsources = []\n[upload]\nurl = "{url}"\ntoken = "{token}"\n'
                    f'interval = "1s"\ntimeout = "3s"\nbackoff_max = "2s"\n{extra}')
    os.chmod(path, 0o644)
    return path


def notes(d: DaemonProcess, prefix: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        text = f"{prefix}-{i}"
        d.cli("note", text)
        out.append(text)
    return out


def export_and_verify(tmp_path: Path, data: Path, key: Path, acked: list[str]) -> None:
    out = tmp_path / f"export-{time.monotonic_ns()}"
    r = subprocess.run([TRACECAP, "export", "--data", str(data), "--key", str(key), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    texts = []
    seqs = []
    for f in sorted(out.glob("*/*.jsonl")):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            seqs.append(e["seq"])
            if e["kind"] == "user.note":
                texts.append(e["data"]["text"])
    for a in acked:
        assert texts.count(a) == 1, a
    assert seqs == sorted(set(seqs))
    r = subprocess.run([TRACECAP, "collector", "verify", "--data", str(data)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def rig(tmp_path, daemon_factory):
    token = "t0k3n-" + os.urandom(6).hex()
    col = Collector(tmp_path / "collector", token).start()
    proxy = FaultProxy(col.port).start()
    d = daemon_factory(policy=write_policy(tmp_path / "policy.toml", f"http://127.0.0.1:{proxy.port}", token))
    yield d, col, proxy
    col.stop()
    proxy.stop()


def flush(d: DaemonProcess, timeout: float = 20) -> subprocess.CompletedProcess:
    return d.cli("flush", "--timeout", str(timeout), check=False, timeout=timeout + 30)


def org_key(d: DaemonProcess) -> Path:
    return d.home / "keys" / "org.key"


# ------------------------------------------------------------------------------- fault tests
def test_collector_down_then_up(rig, tmp_path):
    d, col, proxy = rig
    d.start()
    d.cli("opt-in")
    proxy.mode = "down"
    acked = notes(d, "down", 5)
    r = flush(d, 3)
    assert r.returncode == 1 and "pending" in r.stderr and "cannot reach" in r.stderr
    assert "cannot reach" in d.status()["upload"]["last_error"]
    proxy.mode = "pass"
    assert flush(d).returncode == 0
    export_and_verify(tmp_path, col.data, org_key(d), acked)


def test_503_with_retry_after_is_honoured(rig, tmp_path):
    d, col, proxy = rig
    d.start()
    d.cli("opt-in")
    proxy.mode = "503"
    acked = notes(d, "busy", 3)
    r = flush(d, 2)
    assert r.returncode == 1 and "503" in r.stderr
    proxy.mode = "pass"
    assert flush(d).returncode == 0
    assert proxy.hits["503"] >= 1
    export_and_verify(tmp_path, col.data, org_key(d), acked)


def test_slow_collector_longer_than_client_timeout(rig, tmp_path):
    d, col, proxy = rig
    d.start()
    d.cli("opt-in")
    proxy.mode = "stall"
    acked = notes(d, "slow", 3)
    r = flush(d, 5)
    assert r.returncode == 1 and "did not answer" in r.stderr
    proxy.mode = "pass"
    assert flush(d, 30).returncode == 0
    export_and_verify(tmp_path, col.data, org_key(d), acked)


def test_connection_reset_mid_upload(rig, tmp_path):
    d, col, proxy = rig
    d.start()
    d.cli("opt-in")
    proxy.mode = "reset"
    acked = notes(d, "reset", 4)
    assert flush(d, 3).returncode == 1
    proxy.mode = "pass"
    assert flush(d).returncode == 0
    assert proxy.hits["reset"] >= 1
    export_and_verify(tmp_path, col.data, org_key(d), acked)


def test_refused_token_then_corrected(rig, tmp_path):
    d, col, proxy = rig
    pol = Path(d.env["TRACECAP_POLICY"])
    write_policy(pol, f"http://127.0.0.1:{proxy.port}", "wrong-token")
    d.start()
    d.cli("opt-in")
    acked = notes(d, "auth", 3)
    r = flush(d, 3)
    assert r.returncode == 1 and "refused the token" in r.stderr
    assert "401" in d.status()["upload"]["last_error"]
    before = d.status()["policy"]["digest"]
    write_policy(pol, f"http://127.0.0.1:{proxy.port}", col.token)
    deadline = time.monotonic() + 15
    while d.status()["policy"]["digest"] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    d.cli("note", "after-fix")
    assert flush(d, 30).returncode == 0
    export_and_verify(tmp_path, col.data, org_key(d), acked + ["after-fix"])


def test_daemon_kill9_during_upload(rig, tmp_path):
    d, col, proxy = rig
    d.start()
    d.cli("opt-in")
    proxy.mode = "stall"  # the upload is in flight when the daemon dies
    acked = notes(d, "k9", 5)
    threading.Thread(target=flush, args=(d, 10), daemon=True).start()
    deadline = time.monotonic() + 10
    while proxy.hits.get("stall", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.hits.get("stall", 0) >= 1
    d.kill9()
    proxy.mode = "pass"
    d.start()
    acked += notes(d, "after", 2)
    assert flush(d, 30).returncode == 0
    export_and_verify(tmp_path, col.data, org_key(d), acked)


def test_collector_kill9_during_store_and_repeated_upload(rig, tmp_path):
    d, col, proxy = rig
    d.start()
    d.cli("opt-in")
    acked = notes(d, "c9", 5)
    assert flush(d).returncode == 0
    acked += notes(d, "more", 5)
    col.stop(kill=True)  # the collector dies; the daemon keeps its bundles
    r = flush(d, 3)
    assert r.returncode == 1
    col.start()  # same data directory, same port
    assert flush(d, 30).returncode == 0
    export_and_verify(tmp_path, col.data, org_key(d), acked)


def test_quota_drops_oldest_undelivered_and_records_the_gap(tmp_path, daemon_factory):
    """Collector unreachable, spool.max_bytes tiny: the oldest undelivered bundles are dropped and
    an agent.gap says exactly which seq ranges and how many events were lost."""
    pol = write_policy(tmp_path / "policy.toml", f"http://127.0.0.1:{free_port()}", "x",
                       extra='[spool]\nmax_bytes = "6KiB"\nsegment_bytes = "2KiB"\n')
    d = daemon_factory(policy=pol)
    d.start()
    d.cli("opt-in")
    for round_ in range(6):
        notes(d, f"q{round_}", 5)
        flush(d, 1)  # seals a bundle each round; none can be delivered
    gaps = [e for e in d.events("--kind", "agent.gap")]
    assert gaps, d.status()
    dropped = 0
    for g in gaps:
        data = g["data"]
        assert "spool.max_bytes" in data["reason"]
        assert data["to"] >= data["from"] and data["dropped"] == data["to"] - data["from"] + 1
        dropped += data["dropped"]
    st = d.status()
    assert st["journal"]["bytes"] + st["outbox"]["bytes"] <= 6 * 1024 + 4096  # one active segment of slack
    # What a gap names will never leave the machine: no bundle still waiting carries it (the
    # records may linger in the active journal segment until it rotates; they are past the
    # bundler's cursor and are never sealed again).
    for b in sorted((d.home / "outbox").glob("*.tcb")):
        r = d.cli("bundle", "inspect", str(b), check=False)
        if r.returncode != 0 and not b.exists():
            continue  # dropped for the quota since the listing: it will not leave either
        h = json.loads(r.stdout)
        for g in gaps:
            assert h["last_seq"] < g["data"]["from"] or h["first_seq"] > g["data"]["to"]
    assert st["outbox"]["sealed_upto"] >= max(g["data"]["to"] for g in gaps)
