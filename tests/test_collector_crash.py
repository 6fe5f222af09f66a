"""The collector kill -9'd while storing: after a restart no half-written object is visible, the
index matches the objects, every acknowledged bundle is there, and re-uploads succeed; on a local
data directory and on SeaweedFS S3 + PostgreSQL."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from schemas.keys import generate_org_keypair
from tests.fleet_services import Backend, make_backend
from tests.test_collector_support import Collector, Device, make_event, run_cli

ORG_PRIV, ORG_PUB = generate_org_keypair()


def assert_consistent(store: Backend | Path) -> set[str]:
    """Checks the store (collector stopped or killed); returns the indexed bundle ids."""
    backend = store if isinstance(store, Backend) else Backend("local", store.parent)
    objects = {d: backend.object_bytes(d) for d in backend.object_digests()}
    for digest, raw in objects.items():
        assert hashlib.sha256(raw).hexdigest() == digest, f"torn object {digest}"
    if backend.kind == "local":
        with sqlite3.connect(backend.data / "index.sqlite3") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = backend.index_rows()
    for bundle_id, digest, size in rows:
        assert digest in objects and len(objects[digest]) == size, f"indexed {bundle_id} has no whole object"
    return {r[0] for r in rows}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def test_kill_during_a_body_leaves_no_trace_and_reupload_works(tmp_path):
    dev = Device("crash-1", [ORG_PUB])
    raw, sealed = dev.seal_events([make_event(s, text=os.urandom(4000).hex()) for s in range(1, 200)])
    assert len(raw) > 500_000
    release = threading.Event()
    outcome: list = []

    def body():
        yield raw[: len(raw) // 2]
        release.wait(timeout=20)
        yield raw[len(raw) // 2:]

    c = Collector(tmp_path / "data").start()
    url = f"{c.url}/v1/bundles/{sealed.header.bundle_id}"

    def upload():
        try:
            outcome.append(httpx.put(url, content=body(), headers=c.headers(), timeout=20).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    t = threading.Thread(target=upload)
    t.start()
    try:
        tmp = tmp_path / "data" / "tmp"
        wait_for(lambda: any(p.stat().st_size > 0 for p in tmp.iterdir()), 20, "upload never reached the disk")
        c.kill()
    finally:
        release.set()
        t.join(timeout=20)
    assert outcome and isinstance(outcome[0], httpx.HTTPError)
    assert assert_consistent(tmp_path / "data") == set()
    with Collector(tmp_path / "data") as c2:
        assert list((tmp_path / "data" / "tmp").iterdir()) == []  # leftovers cleared on start
        r = httpx.put(f"{c2.url}/v1/bundles/{sealed.header.bundle_id}", content=raw, headers=c2.headers(),
                      timeout=20)
        assert r.status_code == 201
    assert assert_consistent(tmp_path / "data") == {sealed.header.bundle_id}
    assert run_cli("collector", "verify", "--data", str(tmp_path / "data")).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "fleet"])
def test_kill_during_concurrent_stores_keeps_every_acknowledged_bundle(request, tmp_path, kind):
    """Uploaders that behave like the daemon's (a bundle is done only after a 2xx; on a connection
    error, wait for the collector and send it again) against a collector killed twice mid-stream."""
    backend = make_backend(request, kind, tmp_path)
    devices = [Device(f"crash-ws-{i}", [ORG_PUB]) for i in range(4)]
    plans = {d.device_id: [d.seal(20) for _ in range(40)] for d in devices}
    acked: set[str] = set()
    lock = threading.Lock()
    up = threading.Event()
    state = {"url": "", "stop": False}
    errors: list = []
    c = Collector(backend)

    def uploader(device_id: str) -> None:
        with httpx.Client(headers=c.headers(), timeout=10) as cl:
            for raw, sealed in plans[device_id]:
                while not state["stop"]:
                    if not up.wait(timeout=30):
                        errors.append("collector did not come back")
                        return
                    try:
                        r = cl.put(f"{state['url']}/v1/bundles/{sealed.header.bundle_id}", content=raw)
                    except httpx.TransportError:
                        time.sleep(0.02)
                        continue
                    if r.status_code in (200, 201):
                        with lock:
                            acked.add(sealed.header.bundle_id)
                        break
                    errors.append(f"{sealed.header.bundle_id}: {r.status_code} {r.text}")
                    return

    c.start()
    state["url"] = c.url
    up.set()
    threads = [threading.Thread(target=uploader, args=(d.device_id,)) for d in devices]
    for t in threads:
        t.start()
    try:
        for target in (30, 90):
            wait_for(lambda: len(acked) >= target, 60, f"{target} acknowledgements")
            up.clear()
            c.kill()
            with lock:
                acked_at_kill = set(acked)
            indexed = assert_consistent(backend)
            assert acked_at_kill <= indexed, "an acknowledged bundle is not in the index"
            c.start()
            state["url"] = c.url
            up.set()
        for t in threads:
            t.join(timeout=90)
        assert not any(t.is_alive() for t in threads)
    finally:
        state["stop"] = True
        up.set()
        c.stop()
    assert errors == []
    assert len(acked) == 160
    assert assert_consistent(backend) == acked
    assert len(backend.object_digests()) == 160
    p = run_cli("collector", "verify", *backend.args(), env=backend.env())
    assert p.returncode == 0, p.stdout
    assert "4 devices, 0 with gaps" in p.stdout
