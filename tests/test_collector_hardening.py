"""The collector against idle and hostile clients, and what it leaves on disk and on a terminal.

A real `tracecap collector serve`, started with the open-file limit a service manager commonly
gives (1,024, soft and hard): 1,100 half-open connections must not stop `/v1/health` from
answering, and a connection that never finishes its headers is closed. Its files are 0600 and its
directories 0700; `collector verify` prints a device id's control characters escaped. Loopback
only, bounded in time.
"""
from __future__ import annotations

import io
import os
import re
import resource
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from schemas.bundle import new_bundle_id, seal_bundle
from schemas.keys import generate_org_keypair
from tests.test_collector_support import REPO, Device, make_event

pytestmark = pytest.mark.slow


def _file_limit(n: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def start_collector(data: Path, log: Path, nofile: int | None = None) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "collector", "serve", "--data", str(data),
                                 "--listen", "127.0.0.1:0", "--token", "s3cret"], cwd=REPO, env=env,
                                stdout=f, stderr=f, preexec_fn=_file_limit(nofile) if nofile else None)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://[\d.]+:\d+)", log.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(log.read_text())


@pytest.fixture
def collector(tmp_path):
    procs = []

    def start(**kw):
        proc, url = start_collector(tmp_path / "data", tmp_path / "collector.log", **kw)
        procs.append(proc)
        return proc, url

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def health(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url + "/v1/health", timeout=timeout) as r:
        return r.status


def _closed_by_peer(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_half_open_connections_do_not_starve_health(collector):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"this test process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard) if hard != resource.RLIM_INFINITY else 4096, hard))
    proc, url = collector(nofile=1024)
    port = int(url.rsplit(":", 1)[1])
    socks = []
    try:
        opened = time.monotonic()
        for i in range(1100):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"PUT /v1/bundles/0000000000000000-000000000000 HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        for _ in range(3):
            t0 = time.monotonic()
            assert health(url) == 200
            assert time.monotonic() - t0 < 5
        # Those still open are closed once their headers are overdue (10 s), not held for ever.
        deadline = opened + 16
        while time.monotonic() < deadline and not all(_closed_by_peer(s) for s in socks[-50:]):
            time.sleep(0.5)
        assert all(_closed_by_peer(s) for s in socks[-50:]), "half-open connections were kept"
        assert health(url) == 200
        assert proc.poll() is None
    finally:
        for s in socks:
            s.close()


def test_files_are_private_and_verify_escapes_device_ids(collector, tmp_path):
    os.umask(0o022)  # as a shell would have it: the collector must not rely on the caller's umask
    proc, url = collector()
    _, org_pub = generate_org_keypair()
    dev = Device("dev\x1b[2J\x1b]0;pwned\x07\u202eevil", [org_pub])
    raw, sealed = dev.seal(3)
    req = urllib.request.Request(f"{url}/v1/bundles/{sealed.header.bundle_id}", data=raw, method="PUT",
                                 headers={"Authorization": "Bearer s3cret",
                                          "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for p in data.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
    assert (data / "index.sqlite3").exists()
    proc.terminate()
    proc.wait(15)
    r = subprocess.run([sys.executable, "-m", "agent.cli", "collector", "verify", "--data", str(data)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not any(c in r.stdout for c in "\x1b\x07\u202e"), repr(r.stdout)
    assert "dev\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil" in r.stdout
    for p in data.rglob("*"):  # verify's own index files too
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p


def test_a_previous_data_directory_is_tightened(collector, tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "index.sqlite3").touch()
    os.chmod(data / "index.sqlite3", 0o644)
    collector()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "index.sqlite3").stat().st_mode) == 0o600


def test_a_body_that_stops_arriving_is_answered_408_and_leaves_nothing(tmp_path, monkeypatch):
    """A client that sends its headers and part of a bundle, then nothing, gets 408 once the body
    has been idle for `BODY_IDLE_TIMEOUT` (shortened here from 30 s); the partial bytes are not
    kept and the collector goes on serving. The collector's app, in uvicorn on loopback."""
    import threading

    import uvicorn

    from collector import server
    from collector.storage import BundleStore

    monkeypatch.setattr(server, "BODY_IDLE_TIMEOUT", 1.0)
    store = BundleStore(tmp_path / "data")
    sock = server.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(server.create_app(store, "s3cret"), log_level="warning",
                                       lifespan="on", http=server._guarded_h11(64)))
    t = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uv.started
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"PUT /v1/bundles/0123456789abcdef-0123456789ab HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Authorization: Bearer s3cret\r\nContent-Length: 100000\r\n\r\n" + b"T" * 5000)
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                got = c.recv(4096)
                if not got:
                    break
                answer += got
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"stopped arriving for 1s; send it again" in answer
        assert 0.9 <= waited < 8, waited
        assert list(store.root.rglob("*.part")) == [] and not any(
            p.is_file() and p.stat().st_size == 5000 for p in store.root.rglob("*"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5) as r:
            assert r.status == 200
    finally:
        uv.should_exit = True
        t.join(15)
        store.close()
