"""Property tests of the bundle codec: arbitrary events round-trip; every single-byte change of a
bundle is refused; arbitrary or mutated bytes give only the clean `BundleError`, never a crash."""
from __future__ import annotations

import io

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import bundle as B
from schemas.keys import generate_org_keypair
from tests.test_bundle_support import make_events, seal

DEVICE = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PRIV, PUB = generate_org_keypair()
SMALL = seal(make_events(6), [PUB], DEVICE)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=200))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)


@st.composite
def event_lists(draw):
    seqs = sorted(draw(st.sets(st.integers(min_value=0, max_value=2**63), min_size=1, max_size=40)))
    return [{"v": 1, "seq": s, "ts": draw(st.integers(min_value=0, max_value=2**63)),
             "kind": draw(st.sampled_from(["file.save", "shell.start", "user.note", "x.custom"])),
             "source": draw(st.text(max_size=10)), "session": draw(st.none() | st.text(max_size=12)),
             "data": draw(st.dictionaries(st.text(max_size=12), values, max_size=6))} for s in seqs]


@SETTINGS
@given(events=event_lists(), level=st.integers(min_value=1, max_value=19))
def test_round_trip(events, level):
    raw = seal(events, [PUB], DEVICE, level=level)
    assert list(B.open_bundle(io.BytesIO(raw), PRIV)) == events
    header, digest = B.verify_bundle(io.BytesIO(raw))
    assert (header.first_seq, header.last_seq, header.count) == (events[0]["seq"], events[-1]["seq"], len(events))


def _refused(raw: bytes) -> None:
    got = []
    try:
        for ev in B.open_bundle(io.BytesIO(raw), PRIV):
            got.append(ev)
    except B.BundleError:
        assert got == []
        return
    raise AssertionError("a changed bundle was accepted")


def test_every_single_byte_change_is_refused_exhaustively():
    for pos in range(len(SMALL)):
        for delta in (0x01, 0x80, 0xFF):
            bad = bytearray(SMALL)
            bad[pos] ^= delta
            _refused(bytes(bad))


@SETTINGS
@given(data=st.data())
def test_any_single_byte_value_change_is_refused(data):
    pos = data.draw(st.integers(min_value=0, max_value=len(SMALL) - 1))
    value = data.draw(st.integers(min_value=0, max_value=255).filter(lambda v: v != SMALL[pos]))
    bad = bytearray(SMALL)
    bad[pos] = value
    _refused(bytes(bad))


def _only_bundle_errors(raw: bytes) -> None:
    for op in (lambda f: B.read_header(f), lambda f: B.verify_bundle(f), lambda f: list(B.open_bundle(f, PRIV))):
        try:
            op(io.BytesIO(raw))
        except B.BundleError as exc:
            assert str(exc) and "\n" not in str(exc)


@SETTINGS
@given(raw=st.binary(max_size=3000))
def test_fuzz_arbitrary_bytes(raw):
    _only_bundle_errors(raw)
    _only_bundle_errors(B.MAGIC + raw)
    _only_bundle_errors(B.MAGIC + b"\x00\x01" + raw)


@SETTINGS
@given(start=st.integers(min_value=0, max_value=len(SMALL)), length=st.integers(min_value=0, max_value=200),
       insert=st.binary(max_size=200))
def test_fuzz_splices_of_a_real_bundle(start, length, insert):
    raw = SMALL[:start] + insert + SMALL[start + length:]
    if raw == SMALL:
        return
    _only_bundle_errors(raw)
    _refused(raw)


@SETTINGS
@given(fields=st.dictionaries(st.sampled_from(list(B._HEADER_TYPES)), values, min_size=1, max_size=13))
def test_fuzz_header_maps(fields):
    import msgpack
    import struct
    hdr = msgpack.packb(fields, use_bin_type=True)
    raw = B.MAGIC + struct.pack(">HI", 1, len(hdr)) + hdr + SMALL[14:]
    _only_bundle_errors(raw)
