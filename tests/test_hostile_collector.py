"""The real daemon against a collector that misbehaves on purpose: a 1 GiB answer, an answer dripped
a byte at a time, `Retry-After: 0` forever. The agent's memory stays flat, every request ends by its
deadline and shows in `status` while it stalls, `flush --timeout` keeps its word, SIGTERM stops the
daemon within seconds, and no retry loop spins.

The collector is a small loopback server written here (standard library `socketserver`); each test
is bounded in time.
"""
from __future__ import annotations

import os
import signal
import socketserver
import threading
import time

import pytest

from tests.daemon_harness import DaemonProcess

pytestmark = pytest.mark.slow


class Hostile(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.requests = 0
        self.sent = 0  # answer bytes written, over all connections
        self.bodies: list[bytes] = []
        self.stopping = threading.Event()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv: Hostile = self.server  # type: ignore[assignment]
        sock = self.request
        sock.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                return
            head += chunk
        headers, _, body = head.partition(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return
            body += chunk
        srv.requests += 1
        srv.bodies.append(body)
        try:
            if srv.mode == "huge":  # a 1 GiB error page, sent as fast as the agent reads it
                sock.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 1073741824\r\n\r\n")
                block = b"x" * (1 << 20)
                for _ in range(1024):
                    if srv.stopping.is_set():
                        return
                    sock.sendall(block)
                    srv.sent += len(block)
            elif srv.mode == "drip":  # a success, one byte a second, never finished in time
                answer = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
                for i in range(len(answer) + 500):
                    if srv.stopping.wait(1.0):
                        return
                    sock.sendall(answer[i:i + 1] if i < len(answer) else b" ")
                    srv.sent += 1
            elif srv.mode == "accept":
                sock.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
            elif srv.mode == "retry-now":
                sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            return  # the agent hung up: what it should do with a hostile answer


def policy(tmp_path, url: str, timeout: str = "3s"):
    p = tmp_path / "policy.toml"
    p.write_text(f'[capture]\nsources = []\n[upload]\nurl = "{url}"\ninterval = "1s"\n'
                 f'timeout = "{timeout}"\nbackoff_max = "2s"\n')
    os.chmod(p, 0o644)
    return p


@pytest.fixture
def hostile():
    servers = []

    def make(mode):
        s = Hostile(mode)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def _peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _wait_for(pred, timeout: float, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    return pred()


def _start(tmp_path, daemon_factory, url, timeout="3s") -> DaemonProcess:
    d = daemon_factory(policy=policy(tmp_path, url, timeout)).start()
    d.cli("opt-in")
    d.cli("note", "first")
    return d


def test_a_1gib_answer_does_not_grow_memory(tmp_path, daemon_factory, hostile):
    srv = hostile("huge")
    d = _start(tmp_path, daemon_factory, srv.url)
    d.cli("flush", "--timeout", "1", check=False)
    _wait_for(lambda: srv.requests >= 2, 20)
    peak = _peak_rss_mib(d.proc.pid)
    assert peak < 150, f"daemon peak RSS {peak:.0f} MiB after 1 GiB answers"
    assert srv.requests >= 2, "the agent did not retry"
    assert srv.sent < 256 << 20, f"the agent read {srv.sent >> 20} MiB of answers"
    assert "HTTP 500" in d.status()["upload"]["last_error"]
    r = d.cli("flush", "--timeout", "3", check=False)
    assert r.returncode == 1 and "pending" in r.stderr and d.proc.poll() is None


def test_a_dripped_answer_fails_by_the_deadline_and_shows_in_status(tmp_path, daemon_factory, hostile):
    srv = hostile("drip")
    d = _start(tmp_path, daemon_factory, srv.url, timeout="3s")
    d.cli("flush", "--timeout", "1", check=False)
    st = _wait_for(lambda: (s := d.status())["upload"].get("in_flight") and s, 5, 0.1)
    assert st, "the request in flight is not in status"
    begun = st["upload"]["in_flight"]["since_ns"]
    shown = d.cli("status").stdout
    assert "uploading" in shown
    st = _wait_for(lambda: "did not answer" in ((s := d.status())["upload"]["last_error"] or "") and s, 12, 0.1)
    assert st, f"no stall reported: {d.status()['upload']}"
    took = (time.time_ns() - begun) / 1e9
    assert took < 8, f"the request ended {took:.1f}s after it began, its deadline was about 3s"
    assert "stalled" in st["upload"]["last_error"]


def test_flush_timeout_and_sigterm_are_kept_mid_upload(tmp_path, daemon_factory, hostile):
    srv = hostile("drip")
    d = _start(tmp_path, daemon_factory, srv.url, timeout="30s")
    d.cli("flush", "--timeout", "1", check=False)
    assert _wait_for(lambda: d.status()["upload"].get("in_flight"), 5, 0.1)
    d.cli("note", "second")  # sealing it needs the outbox the stalled upload holds
    t0 = time.monotonic()
    r = d.cli("flush", "--timeout", "4", check=False, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 1 and "pending" in r.stderr, r.stderr
    assert took < 7, f"flush --timeout 4 took {took:.1f}s"
    assert d.status()["upload"].get("in_flight")
    t0 = time.monotonic()  # forget does not wait for the stalled upload either
    r = d.cli("forget", "--last", "1s", check=False, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0 and took < 4, (took, r.stderr)
    # Stalled again after its retry: SIGTERM meets an upload mid-way.
    assert _wait_for(lambda: d.status()["upload"].get("in_flight"), 8, 0.1)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(30)
    took = time.monotonic() - t0
    assert rc == 0 and took < 8, f"SIGTERM took {took:.1f}s (exit {rc})"
    # Nothing lost: both notes are still held (journal or outbox) and go out to a working
    # destination after a restart.
    d2 = DaemonProcess(d.home, policy=policy(tmp_path, (tmp_path / "up").as_uri())).start()
    try:
        assert {e["data"]["text"] for e in d2.events("--kind", "user.note")} == {"first", "second"}
        assert d2.cli("flush", "--timeout", "20").returncode == 0
    finally:
        d2.stop()


def test_retry_after_zero_is_not_a_spin(tmp_path, daemon_factory, hostile):
    srv = hostile("retry-now")
    d = _start(tmp_path, daemon_factory, srv.url)
    d.cli("flush", "--timeout", "1", check=False)
    assert _wait_for(lambda: srv.requests >= 1, 5)
    n0 = srv.requests
    time.sleep(4.0)
    made = srv.requests - n0
    assert made <= 6, f"{made} requests in 4 s after Retry-After: 0"


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_upload_verifies_the_collector_with_the_policy_ca_bundle(tmp_path, daemon_factory, hostile):
    import ssl

    srv = hostile("accept")
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    url = srv.url.replace("http://", "https://")
    p = policy(tmp_path, url)
    p.write_text(p.read_text() + f'ca_bundle = "{cert}"\n')
    d = daemon_factory(policy=p).start()
    d.cli("opt-in")
    d.cli("note", "over tls")
    r = d.cli("flush", "--timeout", "15", check=False)
    assert r.returncode == 0, r.stderr
    assert srv.requests >= 1 and srv.bodies and srv.bodies[0].startswith(b"TRACECAP")
    # Without the CA bundle the same collector is not trusted: the upload fails, saying why.
    before = d.status()["policy"]["digest"]
    p.write_text(p.read_text().replace(f'ca_bundle = "{cert}"\n', ""))
    sent = time.time_ns()
    d.proc.send_signal(signal.SIGHUP)  # applied at once, not at the next 2 s check
    assert _wait_for(lambda: d.status()["policy"]["digest"] != before, 15)
    # "At once" is read off the daemon's own record of the change (when it applied it), not off
    # how long `tracecap status` takes to start on a loaded machine.
    after = d.status()["policy"]["digest"]
    applied = _wait_for(lambda: [e for e in d.events("--kind", "agent.policy")
                                 if e["data"]["digest"] == after], 15)
    assert applied, "the policy change was not journaled"
    assert applied[-1]["ts"] - sent < 1.0e9, f"applied {(applied[-1]['ts'] - sent) / 1e9:.1f}s after SIGHUP"
    d.cli("note", "untrusted")
    r = d.cli("flush", "--timeout", "4", check=False)
    assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr, r.stderr
