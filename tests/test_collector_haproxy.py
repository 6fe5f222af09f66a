"""Two collectors sharing SeaweedFS (S3) and PostgreSQL behind a real HAProxy, real daemons
uploading through it, and one collector killed -9 while they do: every note each daemon
acknowledged arrives exactly once, and the chains verify."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon_harness import TRACECAP
from tests.fleet_services import Backend, free_port_block, wait_until
from tests.test_collector_support import Collector

HAPROXY_CFG = """global
  maxconn 256
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
frontend collectors_in
  bind 127.0.0.1:{port}
  default_backend collectors
backend collectors
  balance roundrobin
  option httpchk GET /v1/health
  http-check expect status 200
  default-server inter 300ms fall 2 rise 2
{servers}
"""


class HAProxy:
    def __init__(self, root: Path, servers: list[str]) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.path.exists(exe):
            if os.environ.get("CI"):
                pytest.fail("haproxy is not installed; run packaging/install-test-deps.sh")
            pytest.skip("haproxy is not installed")
        self.port = free_port_block(1)
        self.cfg = root / "haproxy.cfg"
        lines = "\n".join(f"  server c{i} {s} check" for i, s in enumerate(servers))
        self.cfg.write_text(HAPROXY_CFG.format(port=self.port, servers=lines))
        self.log = root / "haproxy.log"
        self.proc = subprocess.Popen([exe, "-f", str(self.cfg), "-db"], stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def write_policy(path: Path, url: str, token: str) -> Path:
    path.write_text(f'[capture]\nsources = []\n[upload]\nurl = "{url}"\ntoken = "{token}"\n'
                    f'interval = "1s"\ntimeout = "5s"\nbackoff_max = "1s"\n')
    os.chmod(path, 0o644)
    return path


@pytest.mark.slow
def test_two_collectors_behind_haproxy_one_killed_while_daemons_upload(tmp_path, seaweedfs, postgres,
                                                                      daemon_factory):
    fleet = Backend("fleet", tmp_path / "fleet", seaweedfs, postgres)
    token = "t0k3n-" + os.urandom(6).hex()
    a, b = Collector(fleet, token, name="-a").start(), Collector(fleet, token, name="-b").start()
    proxy = HAProxy(tmp_path, [a.url.split("//")[1], b.url.split("//")[1]])
    try:
        wait_until(proxy.ready, 20, "haproxy", proxy.proc, proxy.log)
        policy = write_policy(tmp_path / "policy.toml", proxy.url, token)
        daemons = [daemon_factory(home=tmp_path / f"home-{i}", policy=policy).start() for i in range(2)]
        acked: dict[int, list[str]] = {0: [], 1: []}
        for d in daemons:
            d.cli("opt-in")
        for batch in range(3):
            if batch == 1:
                a.kill()  # while the last batch's uploads may still be in flight
            for i, d in enumerate(daemons):
                for n in range(3):
                    text = f"ws{i}-b{batch}-n{n}"
                    d.cli("note", text)
                    acked[i].append(text)
                d.cli("flush", "--timeout", "1", check=False, timeout=30)
        for d in daemons:
            r = d.cli("flush", "--timeout", "60", check=False, timeout=90)
            assert r.returncode == 0, r.stderr + d.stderr()
        keys = [arg for d in daemons for arg in ("--key", str(d.home / "keys" / "org.key"))]
        out = tmp_path / "export"
        r = subprocess.run([TRACECAP, "export", *fleet.args(), *keys, "--out", str(out)], capture_output=True,
                           text=True, timeout=120, env={**os.environ, **fleet.env()})
        assert r.returncode == 0, r.stderr
        texts = [json.loads(line)["data"]["text"] for f in sorted(out.glob("*/*.jsonl"))
                 for line in f.read_text().splitlines() if json.loads(line)["kind"] == "user.note"]
        for i in acked:
            for text in acked[i]:
                assert texts.count(text) == 1, text
        r = subprocess.run([TRACECAP, "collector", "verify", *fleet.args()], capture_output=True, text=True,
                           timeout=60, env={**os.environ, **fleet.env()})
        assert r.returncode == 0 and "2 devices, 0 with gaps" in r.stdout, r.stdout + r.stderr
        assert b.proc.poll() is None
    finally:
        proxy.stop()
        a.stop()
        b.stop()
