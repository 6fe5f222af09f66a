"""The reference collector over real HTTP on loopback: auth, trust on first use, idempotency,
conflicts, refusal of malformed, oversize and wrongly signed bundles, and device status. Every test
runs on both back ends: a local data directory (files + SQLite) and the fleet's (SeaweedFS S3 +
PostgreSQL)."""
from __future__ import annotations

import hashlib
import io
import os

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.bundle import seal_bundle
from schemas.keys import generate_org_keypair
from tests.fleet_services import make_backend
from tests.test_collector_support import Collector, Device, make_event

ORG_PRIV, ORG_PUB = generate_org_keypair()
BACKENDS = ["local", "fleet"]


@pytest.fixture(scope="module", params=BACKENDS)
def collector(request, tmp_path_factory):
    backend = make_backend(request, request.param, tmp_path_factory.mktemp(f"col-{request.param}"))
    c = Collector(backend)
    with c:
        yield c


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    return make_backend(request, request.param, tmp_path)


@pytest.fixture
def client(collector):
    with httpx.Client(base_url=collector.url, headers=collector.headers(), timeout=10) as cl:
        yield cl


def device(name: str) -> Device:
    return Device(name, [ORG_PUB])


def put(client: httpx.Client, raw: bytes, bundle_id: str, **kw) -> httpx.Response:
    return client.put(f"/v1/bundles/{bundle_id}", content=raw, **kw)


def objects(collector: Collector) -> list[str]:
    return collector.backend.object_digests()


def test_health_needs_no_token(collector):
    r = httpx.get(f"{collector.url}/v1/health", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "s3cret"}, 401),
    ({"Authorization": "Bearer s3cret"}, 201),
])
def test_bearer_token_is_required(collector, headers, status):
    raw, sealed = device(f"auth-{status}-{len(headers.get('Authorization', ''))}").seal()
    r = httpx.put(f"{collector.url}/v1/bundles/{sealed.header.bundle_id}", content=raw, headers=headers, timeout=10)
    assert r.status_code == status, r.text
    if status == 401:
        assert "token" in r.json()["error"]
        assert httpx.get(f"{collector.url}/v1/devices/{sealed.header.device_id}", headers=headers,
                         timeout=5).status_code == 401


def test_first_upload_creates_and_repeat_is_idempotent(collector, client):
    raw, sealed = device("idem").seal()
    before = len(objects(collector))
    r1 = put(client, raw, sealed.header.bundle_id)
    assert r1.status_code == 201, r1.text
    assert r1.json()["digest"] == sealed.digest == hashlib.sha256(raw).hexdigest()
    r2 = put(client, raw, sealed.header.bundle_id)
    assert r2.status_code == 200 and r2.json()["stored"] == "already stored"
    after = objects(collector)
    assert len(after) == before + 1 and sealed.digest in after
    assert collector.backend.object_bytes(sealed.digest) == raw
    assert collector.backend.index_rows("bundle_id=%s", (sealed.header.bundle_id,)) == [
        (sealed.header.bundle_id, sealed.digest, len(raw))]


def test_a_lost_object_is_stored_again_on_reupload(collector, client):
    raw, sealed = device("lost-object").seal()
    assert put(client, raw, sealed.header.bundle_id).status_code == 201
    collector.backend.delete_object(sealed.digest)
    r = put(client, raw, sealed.header.bundle_id)
    assert r.status_code == 201 and r.json()["stored"] == "created"
    assert collector.backend.object_bytes(sealed.digest) == raw
    assert put(client, raw, sealed.header.bundle_id).status_code == 200


def test_same_id_with_other_bytes_is_a_conflict(client):
    dev = device("conflict")
    bid = "0000018bcfe56800-aaaaaaaaaaaa"
    a, b = io.BytesIO(), io.BytesIO()
    seal_bundle(a, [make_event(1)], device_id=dev.device_id, device_key=dev.key, recipients=[ORG_PUB],
                prev_digest="", bundle_id=bid)
    seal_bundle(b, [make_event(1, text="other")], device_id=dev.device_id, device_key=dev.key,
                recipients=[ORG_PUB], prev_digest="", bundle_id=bid)
    assert put(client, a.getvalue(), bid).status_code == 201
    r = put(client, b.getvalue(), bid)
    assert r.status_code == 409 and "different contents" in r.json()["error"]
    assert put(client, a.getvalue(), bid).status_code == 200


def test_first_upload_pins_the_device_key(collector, client):
    honest = device("tofu")
    raw, sealed = honest.seal()
    assert put(client, raw, sealed.header.bundle_id).status_code == 201
    impostor = Device("tofu", [ORG_PUB], key=Ed25519PrivateKey.generate())
    raw2, sealed2 = impostor.seal()
    r = put(client, raw2, sealed2.header.bundle_id)
    assert r.status_code == 403 and "pinned" in r.json()["error"]
    assert sealed2.digest not in objects(collector)
    raw3, sealed3 = honest.seal()
    assert put(client, raw3, sealed3.header.bundle_id).status_code == 201


def _flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("mutate,status,words", [
    (lambda raw: b"not a bundle at all, just text", 400, "not a tracecap bundle"),
    (lambda raw: raw[: len(raw) // 2], 400, "truncated"),
    (lambda raw: raw + b"x", 400, "follow the signature"),
    (lambda raw: _flip(raw, len(raw) - 1), 422, "signature"),
    (lambda raw: _flip(raw, len(raw) - 80), 422, "signature"),
])
def test_bad_bundles_are_refused_with_a_reason(collector, client, mutate, status, words):
    raw, sealed = device(f"bad-{status}-{words[:6]}").seal()
    before = objects(collector)
    r = put(client, mutate(raw), sealed.header.bundle_id)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert objects(collector) == before
    if collector.backend.kind == "local":
        assert list((collector.data / "tmp").iterdir()) == []


def test_empty_body_and_bad_ids_are_refused(client):
    raw, sealed = device("ids").seal()
    assert put(client, b"", sealed.header.bundle_id).status_code == 400
    r = put(client, raw, "not-an-id")
    assert r.status_code == 400 and "not a bundle id" in r.json()["error"]
    other = "0000018bcfe56800-bbbbbbbbbbbb"
    r = put(client, raw, other)
    assert r.status_code == 400 and sealed.header.bundle_id in r.json()["error"]


def test_oversize_bundles_are_refused(backend):
    dev = device("big")
    raw, sealed = dev.seal_events([make_event(s, text=os.urandom(500).hex()) for s in range(1, 40)])
    assert len(raw) > 8192
    with Collector(backend, extra=["--max-bundle-bytes", "8KiB"]) as c, \
            httpx.Client(base_url=c.url, headers=c.headers(), timeout=10) as cl:
        r = put(cl, raw, sealed.header.bundle_id)
        assert r.status_code == 413 and "limit of 8192 bytes" in r.json()["error"]

        def chunked():  # no Content-Length: the cap must hold while streaming
            for i in range(0, len(raw), 1000):
                yield raw[i:i + 1000]
        r = put(cl, chunked(), sealed.header.bundle_id)
        assert r.status_code == 413
        assert objects(c) == []
        small, sealed_small = device("small").seal()
        assert put(cl, small, sealed_small.header.bundle_id).status_code == 201


def test_device_status_reports_gaps_breaks_and_forgotten(client):
    dev = device("laptop-7")
    b1 = dev.seal(5)          # 1-5
    b2 = dev.seal(5)          # 6-10
    dev.seal(5)               # 11-15: sealed but never arrives
    b4 = dev.seal(5)          # 16-20: chain break (prev is the lost bundle)
    b5 = dev.seal(5, skip=2)  # 23-27: the device skipped 21-22, chain intact
    b6 = dev.seal_events([make_event(s) for s in (28, 29, 33)])  # 30-32 forgotten inside
    for raw, sealed in (b1, b2, b4, b5, b6):
        assert put(client, raw, sealed.header.bundle_id).status_code == 201
    r = client.get("/v1/devices/laptop-7")
    assert r.status_code == 200
    s = r.json()
    assert s["bundles"] == 5 and s["events"] == 23
    assert s["last_contiguous_seq"] == 10
    assert s["gaps"] == [{"first": 11, "last": 15, "size": 5, "kind": "missing"},
                         {"first": 21, "last": 22, "size": 2, "kind": "skipped"}]
    assert [b["bundle_id"] for b in s["chain_breaks"]] == [b4[1].header.bundle_id]
    assert s["chain_breaks"][0]["expected"] == [b2[1].digest]
    assert s["forgotten"] == [{"bundle_id": b6[1].header.bundle_id, "first_seq": 28, "last_seq": 33, "count": 3}]
    assert s["ok"] is False


def test_unknown_device_is_404(client):
    r = client.get("/v1/devices/nobody")
    assert r.status_code == 404 and "no bundles" in r.json()["error"]


def test_without_a_token_everything_is_accepted_and_a_warning_logged(backend):
    raw, sealed = device("open").seal()
    with Collector(backend, token=None) as c:
        r = httpx.put(f"{c.url}/v1/bundles/{sealed.header.bundle_id}", content=raw, timeout=10)
        assert r.status_code == 201
        assert "no token configured" in c.log()


def test_token_from_the_environment(backend):
    raw, sealed = device("envtok").seal()
    with Collector(backend, token=None, env={"TRACECAP_COLLECTOR_TOKEN": "fromenv"}) as c:
        url = f"{c.url}/v1/bundles/{sealed.header.bundle_id}"
        assert httpx.put(url, content=raw, timeout=10).status_code == 401
        assert httpx.put(url, content=raw, headers={"Authorization": "Bearer fromenv"},
                         timeout=10).status_code == 201
        assert "no token configured" not in c.log()
