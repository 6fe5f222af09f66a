"""Collectors at fleet scale, for real: two `collector serve` processes sharing SeaweedFS (S3) and
PostgreSQL race on a new device and on the same bundle; the object store and the database are
stopped under a collector (503 with Retry-After, nothing acknowledged is lost) and brought back
while daemon-like uploaders keep sending; `verify` and the CLI's store arguments."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.keys import generate_org_keypair
from tests.fleet_services import Backend
from tests.test_collector_support import Collector, Device, run_cli

ORG_PRIV, ORG_PUB = generate_org_keypair()


@pytest.fixture
def fleet(request, tmp_path, seaweedfs, postgres) -> Backend:
    return Backend("fleet", tmp_path, seaweedfs, postgres)


@pytest.fixture
def two_collectors(fleet):
    a, b = Collector(fleet, name="-a"), Collector(fleet, name="-b")
    with a, b:
        yield a, b


def put_all_at_once(targets: list[tuple[str, bytes, str, dict]]) -> list:
    """PUT each (url, body, bundle id, headers) from its own thread, released together."""
    results: list = [None] * len(targets)
    go = threading.Barrier(len(targets))

    def one(i: int, url: str, raw: bytes, bid: str, headers: dict) -> None:
        with httpx.Client(headers=headers, timeout=30) as cl:
            cl.get(f"{url}/v1/health")
            go.wait(timeout=20)
            results[i] = cl.put(f"{url}/v1/bundles/{bid}", content=raw)

    threads = [threading.Thread(target=one, args=(i, *t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_two_collectors_racing_on_a_new_device_pin_one_key(fleet, two_collectors):
    a, b = two_collectors
    claimants = [Device("contested-fleet", [ORG_PUB], key=Ed25519PrivateKey.generate()) for _ in range(6)]
    firsts = [d.seal(3) for d in claimants]
    results = put_all_at_once([((a, b)[i % 2].url, raw, s.header.bundle_id, a.headers())
                               for i, (raw, s) in enumerate(firsts)])
    codes = [r.status_code for r in results]
    assert sorted(codes) == [201] + [403] * 5, [r.text for r in results]
    winner = firsts[codes.index(201)][1]
    assert fleet.object_digests() == [winner.digest]
    with fleet.open_store() as store:
        assert store.device_pub("contested-fleet") == winner.header.device_pub
    # the winner's next bundle goes through either collector; the losers' are refused by both
    nxt_raw, nxt = claimants[codes.index(201)].seal(2)
    assert httpx.put(f"{b.url}/v1/bundles/{nxt.header.bundle_id}", content=nxt_raw, headers=a.headers(),
                     timeout=10).status_code == 201


def test_two_collectors_receiving_the_same_bundle_store_it_once(fleet, two_collectors):
    a, b = two_collectors
    dev = Device("twice-fleet", [ORG_PUB])
    bundles = [dev.seal(4) for _ in range(5)]
    targets = [(c.url, raw, s.header.bundle_id, a.headers()) for raw, s in bundles for c in (a, b)]
    codes = [r.status_code for r in put_all_at_once(targets)]
    for i in range(0, len(codes), 2):
        assert sorted(codes[i:i + 2]) == [200, 201], codes
    assert fleet.object_digests() == sorted(s.digest for _, s in bundles)
    assert sorted(r[0] for r in fleet.index_rows()) == sorted(s.header.bundle_id for _, s in bundles)


def _refused_for_now(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    assert "send it again" in r.json()["error"]


def test_object_store_down_is_503_with_retry_after_and_nothing_indexed(fleet, seaweedfs):
    dev = Device("s3-down", [ORG_PUB])
    first, second = dev.seal(3), dev.seal(3)
    with Collector(fleet) as c, httpx.Client(base_url=c.url, headers=c.headers(), timeout=60) as cl:
        assert cl.put(f"/v1/bundles/{first[1].header.bundle_id}", content=first[0]).status_code == 201
        seaweedfs.stop()
        try:
            t0 = time.monotonic()
            _refused_for_now(cl.put(f"/v1/bundles/{second[1].header.bundle_id}", content=second[0]))
            assert time.monotonic() - t0 < 30
            assert [r[0] for r in fleet.index_rows()] == [first[1].header.bundle_id]
        finally:
            seaweedfs.start()
        assert cl.put(f"/v1/bundles/{second[1].header.bundle_id}", content=second[0]).status_code == 201
    assert fleet.object_digests() == sorted([first[1].digest, second[1].digest])


def test_database_down_is_503_with_retry_after_and_the_retry_is_stored(fleet, postgres):
    dev = Device("pg-down", [ORG_PUB])
    first, second = dev.seal(3), dev.seal(3)
    with Collector(fleet) as c, httpx.Client(base_url=c.url, headers=c.headers(), timeout=60) as cl:
        assert cl.put(f"/v1/bundles/{first[1].header.bundle_id}", content=first[0]).status_code == 201
        postgres.stop()
        try:
            t0 = time.monotonic()
            _refused_for_now(cl.put(f"/v1/bundles/{second[1].header.bundle_id}", content=second[0]))
            assert time.monotonic() - t0 < 30
            assert cl.get(f"/v1/devices/{dev.device_id}").status_code == 503
        finally:
            postgres.start()
        deadline = time.monotonic() + 20  # as the agent does: again after Retry-After
        while (r := cl.put(f"/v1/bundles/{second[1].header.bundle_id}", content=second[0])).status_code == 503:
            assert time.monotonic() < deadline, "the collector did not recover after PostgreSQL came back"
            time.sleep(0.5)
        assert r.status_code == 201, r.text  # the object was already put: indexed now, stored once
        report = cl.get(f"/v1/devices/{dev.device_id}").json()
    assert report["ok"] and report["last_contiguous_seq"] == 6
    assert fleet.object_digests() == sorted([first[1].digest, second[1].digest])


@pytest.mark.slow
def test_outages_mid_stream_lose_and_double_nothing(fleet, seaweedfs, postgres):
    """Daemon-like uploaders (done only on 2xx; on 503 wait Retry-After, on a connection error a
    moment, then send again) through two collectors while S3, then PostgreSQL, go away and return."""
    devices = [Device(f"outage-ws-{i}", [ORG_PUB]) for i in range(4)]
    plans = {d.device_id: [d.seal(10) for _ in range(16)] for d in devices}
    acked: dict[str, int] = {}
    saw_503 = []
    errors: list[str] = []
    lock = threading.Lock()
    with Collector(fleet, name="-a") as a, Collector(fleet, name="-b") as b:
        def uploader(i: int, device_id: str) -> None:
            url = (a, b)[i % 2].url
            deadline = time.monotonic() + 150
            with httpx.Client(headers=a.headers(), timeout=30) as cl:
                for raw, sealed in plans[device_id]:
                    while time.monotonic() < deadline:
                        try:
                            r = cl.put(f"{url}/v1/bundles/{sealed.header.bundle_id}", content=raw)
                        except httpx.TransportError:
                            time.sleep(0.2)
                            continue
                        if r.status_code in (200, 201):
                            with lock:
                                acked[sealed.header.bundle_id] = acked.get(sealed.header.bundle_id, 0) + 1
                            break
                        if r.status_code == 503:
                            saw_503.append(r.headers.get("Retry-After"))
                            time.sleep(min(float(r.headers.get("Retry-After", "1")), 1.0))
                            continue
                        errors.append(f"{sealed.header.bundle_id}: {r.status_code} {r.text}")
                        return
                    else:
                        errors.append(f"{device_id} did not finish")
                        return

        threads = [threading.Thread(target=uploader, args=(i, d)) for i, d in enumerate(plans)]
        for t in threads:
            t.start()
        try:
            for service, at in ((seaweedfs, 12), (postgres, 36)):
                deadline = time.monotonic() + 60
                while len(acked) < at and time.monotonic() < deadline:
                    time.sleep(0.05)
                service.stop()
                time.sleep(2)
                service.start()
        finally:
            for t in threads:
                t.join(timeout=170)
    assert errors == []
    assert saw_503, "no upload met an outage"
    assert len(acked) == 64 and set(acked.values()) == {1}
    assert sorted(r[0] for r in fleet.index_rows()) == sorted(acked)
    assert len(fleet.object_digests()) == 64
    p = run_cli("collector", "verify", *fleet.args(), env=fleet.env(), timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "4 devices, 0 with gaps" in p.stdout
