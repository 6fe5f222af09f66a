"""The bundle codec: round trips, the header, the hash chain, and refusal of every kind of damage."""
from __future__ import annotations

import hashlib
import io

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import bundle as B
from schemas.keys import generate_org_keypair
from tests.test_bundle_support import layout, make_events, resign, seal

DEVICE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
X_PRIV, X_PUB = generate_org_keypair()
PQ_PRIV, PQ_PUB = generate_org_keypair(pq=True)


def open_all(raw: bytes, key=X_PRIV) -> list[dict]:
    return list(B.open_bundle(io.BytesIO(raw), key))


@pytest.fixture(scope="module")
def multi() -> tuple[list[dict], bytes]:
    """A bundle of several chunks (random noise defeats compression)."""
    events = make_events(400, noise=1200)
    raw = seal(events, [X_PUB], DEVICE)
    assert len(layout(raw)["chunks"]) >= 4
    return events, raw


@pytest.mark.parametrize("recipients,keys", [
    ([X_PUB], [X_PRIV]),
    ([PQ_PUB], [PQ_PRIV]),
    ([X_PUB, PQ_PUB], [X_PRIV, PQ_PRIV]),
])
def test_round_trip_for_each_recipient(recipients, keys):
    events = make_events(50, first_seq=1000)
    raw = seal(events, recipients, DEVICE)
    for k in keys:
        assert open_all(raw, k) == events
    assert open_all(raw, [generate_org_keypair()[0], keys[-1]]) == events


def test_multi_chunk_round_trip_and_chunk_sizes(multi):
    events, raw = multi
    assert open_all(raw) == events
    chunks = layout(raw)["chunks"]
    for start, end, last in chunks[:-1]:
        assert end - start == 4 + B.CHUNK_SIZE + B.TAG_SIZE and not last
    assert chunks[-1][2]


def test_header_fields_come_from_the_events_and_arguments():
    events = make_events(10, first_seq=41)
    raw = seal(events, [X_PUB, PQ_PUB], DEVICE, device_id="laptop-7", prev_digest="ab" * 32,
               created_ns=1_700_000_000_123_456_789, level=9)
    h = B.read_header(io.BytesIO(raw))
    assert (h.first_seq, h.last_seq, h.count) == (41, 50, 10)
    assert h.device_id == "laptop-7" and h.prev_digest == "ab" * 32
    assert h.device_pub == DEVICE.public_key().public_bytes_raw()
    assert h.created_ns == 1_700_000_000_123_456_789
    assert h.bundle_id.startswith(f"{1_700_000_000_123_456_789:016x}-")
    assert h.recipients == (X_PUB.key_id, PQ_PUB.key_id)
    assert h.suite == "X25519+MLKEM768-X25519"
    assert (h.version, h.schema_version, h.compression) == (1, 1, "zstd")
    j = h.to_json()
    assert j["device_pub"] == h.device_pub.hex() and j["recipients"] == list(h.recipients)


def test_sealed_digest_is_sha256_of_file_and_chains():
    buf = io.BytesIO()
    s1 = B.seal_bundle(buf, make_events(5), device_id="d", device_key=DEVICE, recipients=[X_PUB], prev_digest="")
    first = buf.getvalue()
    assert s1.digest == hashlib.sha256(first).hexdigest() and s1.size == len(first)
    assert B.verify_bundle(io.BytesIO(first)) == (s1.header, s1.digest)
    raw2 = seal(make_events(5, first_seq=6), [X_PUB], DEVICE, prev_digest=s1.digest)
    assert B.read_header(io.BytesIO(raw2)).prev_digest == s1.digest


def test_bundle_ids_sort_by_creation_time():
    ids = [B.new_bundle_id(t) for t in (5, 10**9, 10**18, 1_800_000_000_000_000_000)]
    assert ids == sorted(ids) and len(set(ids)) == 4


def test_two_seals_of_same_events_differ():
    events = make_events(3)
    assert seal(events, [X_PUB], DEVICE) != seal(events, [X_PUB], DEVICE)


def test_verify_checks_expected_device():
    raw = seal(make_events(3), [X_PUB], DEVICE)
    B.verify_bundle(io.BytesIO(raw), expected_device_pub=DEVICE.public_key().public_bytes_raw())
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(B.BundleSignatureError, match="different device"):
        B.verify_bundle(io.BytesIO(raw), expected_device_pub=other)


def test_bundle_at_an_offset_in_a_larger_file():
    raw = seal(make_events(3), [X_PUB], DEVICE)
    f = io.BytesIO(b"prefix" + raw)
    f.seek(6)
    assert [e["seq"] for e in B.open_bundle(f, X_PRIV)] == [1, 2, 3]


@pytest.mark.parametrize("events,message", [
    ([], "empty"),
    ([{"seq": 2}, {"seq": 2}], "inconsistent|strictly increasing"),
    ([{"seq": 3}, {"seq": 1}], "last_seq|strictly increasing"),
    ([{"seq": "1"}], "unsigned|strictly"),
])
def test_seal_refuses_bad_event_lists(events, message):
    with pytest.raises(ValueError, match=message):
        seal(events, [X_PUB], DEVICE)


def test_seal_refuses_bad_arguments():
    ev = make_events(1)
    with pytest.raises(ValueError, match="recipient"):
        seal(ev, [], DEVICE)
    with pytest.raises(ValueError, match="prev_digest"):
        seal(ev, [X_PUB], DEVICE, prev_digest="xyz")
    with pytest.raises(ValueError, match="level"):
        seal(ev, [X_PUB], DEVICE, level=0)
    with pytest.raises(ValueError, match="device_id"):
        seal(ev, [X_PUB], DEVICE, device_id="")


# ---- refusal ---------------------------------------------------------------------------------


def _refused(raw: bytes, exc_type, key=X_PRIV) -> str:
    """Assert open_bundle yields nothing and raises exc_type; return the one-sentence message."""
    got = []
    with pytest.raises(exc_type) as info:
        for ev in B.open_bundle(io.BytesIO(raw), key):
            got.append(ev)
    assert got == []
    msg = str(info.value)
    assert msg and "\n" not in msg and msg.count(". ") == 0
    return msg


def test_wrong_key():
    raw = seal(make_events(3), [X_PUB], DEVICE)
    msg = _refused(raw, B.BundleWrongKey, key=generate_org_keypair()[0])
    assert X_PUB.key_id in msg


def test_every_region_bit_flip_is_refused_as_a_bad_signature(multi):
    _, raw = multi
    lay = layout(raw)
    offsets = [lay["stanzas"][0] + 5, lay["chunks"][0][0] + 10, lay["chunks"][2][0] + 500,
               lay["chunks"][-1][1] - 1]
    for off in offsets:
        bad = bytearray(raw)
        bad[off] ^= 0x01
        _refused(bytes(bad), B.BundleSignatureError)


def test_signature_byte_flip(multi):
    _, raw = multi
    bad = bytearray(raw)
    bad[-1] ^= 0x80
    _refused(bytes(bad), B.BundleSignatureError)


def test_header_flip_is_a_format_or_signature_error(multi):
    _, raw = multi
    end = layout(raw)["header"][1]
    for off in range(0, end):
        bad = bytearray(raw)
        bad[off] ^= 0x04
        with pytest.raises((B.BundleFormatError, B.BundleSignatureError, B.BundleVersionError)):
            list(B.open_bundle(io.BytesIO(bytes(bad)), X_PRIV))


@pytest.mark.parametrize("cut", [0, 5, 14, 200, 2000, 70_000, -65, -64, -1])
def test_truncation(multi, cut):
    _, raw = multi
    _refused(raw[:cut] if cut else b"", B.BundleFormatError)


def test_trailing_bytes(multi):
    _, raw = multi
    assert "follow the signature" in _refused(raw + b"\x00", B.BundleFormatError)


def test_unknown_version(multi):
    _, raw = multi
    bad = bytearray(raw)
    bad[9] = 2
    msg = _refused(bytes(bad), B.BundleVersionError)
    assert "version 2" in msg and "upgrade" in msg


def test_not_a_bundle():
    assert "not a tracecap bundle" in _refused(b"PK\x03\x04" + b"\x00" * 100, B.BundleFormatError)


# Behind the signature: a device that signs bad bytes (faulty sealer, or a stolen device key) still
# cannot get reordered, truncated or transplanted chunks past the AEAD.

def _body(raw):
    return raw[:layout(raw)["signature"][0]]


def test_reordered_chunks_are_tampering_even_when_resigned(multi):
    _, raw = multi
    lay = layout(raw)
    (a0, a1, _), (b0, b1, _) = lay["chunks"][0], lay["chunks"][1]
    body = _body(raw)
    swapped = body[:a0] + body[b0:b1] + body[a0:a1] + body[b1:]
    assert "chunk 0" in _refused(resign(swapped, DEVICE), B.BundleTampered)


def test_chunk_swapped_from_another_bundle_is_tampering(multi):
    events, raw = multi
    other = seal(events, [X_PUB], DEVICE)
    la, lb = layout(raw), layout(other)
    (s, e, _), (s2, e2, _) = la["chunks"][1], lb["chunks"][1]
    body = _body(raw)
    mixed = body[:s] + other[s2:e2] + body[e:]
    assert "chunk 1" in _refused(resign(mixed, DEVICE), B.BundleTampered)


def test_truncated_at_a_chunk_boundary_with_forged_last_flag(multi):
    _, raw = multi
    lay = layout(raw)
    s, e, _ = lay["chunks"][1]
    body = bytearray(raw[:e])
    body[s] |= 0x80  # mark chunk 1 as the last one
    _refused(resign(bytes(body), DEVICE), B.BundleTampered)


def test_dropped_final_chunk_is_refused(multi):
    _, raw = multi
    lay = layout(raw)
    body = raw[:lay["chunks"][-1][0]]
    # The frames no longer end with a last chunk: the parser runs into the signature as a frame.
    with pytest.raises(B.BundleError):
        list(B.open_bundle(io.BytesIO(resign(body, DEVICE)), X_PRIV))


def test_resigned_with_another_device_key_but_original_header(multi):
    _, raw = multi
    thief = Ed25519PrivateKey.generate()
    _refused(resign(_body(raw), thief), B.BundleSignatureError)


def test_altered_stanza_behind_a_valid_signature():
    raw = seal(make_events(3), [X_PUB], DEVICE)
    lay = layout(raw)
    body = bytearray(_body(raw))
    body[lay["stanzas"][1] - 1] ^= 1
    assert "key stanza" in _refused(resign(bytes(body), DEVICE), B.BundleTampered)


def test_header_change_behind_a_valid_signature_breaks_every_chunk():
    events = make_events(3)
    raw = seal(events, [X_PUB], DEVICE, device_id="aaaa")
    body = _body(raw).replace(b"aaaa", b"bbbb", 1)
    _refused(resign(body, DEVICE), B.BundleTampered)


def test_read_header_of_damaged_header():
    raw = seal(make_events(3), [X_PUB], DEVICE)
    bad = raw.replace(b"dev-test", b"dev\xfftest", 1)
    with pytest.raises(B.BundleFormatError, match="header is damaged"):
        B.read_header(io.BytesIO(bad))


def test_bundle_error_is_a_value_error():
    assert issubclass(B.BundleError, ValueError)
    for cls in (B.BundleFormatError, B.BundleTruncated, B.BundleVersionError, B.BundleSignatureError,
                B.BundleTampered, B.BundleWrongKey):
        assert issubclass(cls, B.BundleError)
