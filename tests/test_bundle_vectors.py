"""The checked-in test vectors in schemas/vectors/ (described in schemas/BUNDLE.md) still hold.

The bundle there was sealed once; these tests open it with the checked-in keys, recompute every
intermediate value from the document's constructions without the codec's reader, and re-seal the
same inputs to show the codec still writes the same header and payload bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

import msgpack
import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas import bundle as B
from schemas.keys import load_or_create_device_key, load_org_private, load_org_public
from schemas.vectors import make_vectors

VECTORS = Path(B.__file__).resolve().parent / "vectors"


@pytest.fixture(scope="module")
def v():
    vector = json.loads((VECTORS / "vector.json").read_text())
    events = [json.loads(line) for line in (VECTORS / "events.jsonl").read_text(encoding="utf-8").split("\n") if line]
    return vector, events, (VECTORS / "bundle.tcb").read_bytes()


def test_keys_match_their_ids(v):
    vector, _, _ = v
    for suite, name in (("X25519", "org-x25519"), ("MLKEM768-X25519", "org-pq")):
        priv = load_org_private(VECTORS / f"{name}.key")
        pub = load_org_public(VECTORS / f"{name}.pub")
        assert priv.public_key() == pub and pub.suite == suite and pub.key_id == vector["org_keys"][suite]
    device = load_or_create_device_key(VECTORS / "device.key")
    assert device.public_key().public_bytes_raw().hex() == vector["device_public_key"]


def test_bundle_verifies_and_opens_with_each_key(v):
    vector, events, raw = v
    assert hashlib.sha256(raw).hexdigest() == vector["bundle_sha256"] and len(raw) == vector["bundle_size"]
    header, digest = B.verify_bundle(io.BytesIO(raw), bytes.fromhex(vector["device_public_key"]))
    assert digest == vector["bundle_sha256"] and header.to_json() == vector["header"]
    for name in ("org-x25519", "org-pq"):
        assert list(B.open_bundle(io.BytesIO(raw), load_org_private(VECTORS / f"{name}.key"))) == events


def test_intermediates_follow_the_document(v):
    """Re-derive everything from BUNDLE.md's text with plain primitives, not the codec's reader."""
    vector, events, raw = v
    magic, version, hlen = struct.unpack_from(">8sHI", raw, 0)
    assert (magic, version) == (b"TRACECAP", 1)
    header_raw = raw[14:14 + hlen]
    assert header_raw.hex() == vector["header_msgpack"]
    assert list(msgpack.unpackb(header_raw)) == list(vector["header"])
    header_hash = hashlib.sha256(raw[:14 + hlen]).digest()
    assert header_hash.hex() == vector["header_hash"]
    payload_key = HKDF(hashes.SHA256(), 32, salt=header_hash, info=b"tracecap bundle v1 payload key").derive(
        bytes.fromhex(vector["file_key"]))
    assert payload_key.hex() == vector["payload_key"]
    compressed = make_vectors.decrypt_chunks(raw, payload_key)
    assert compressed.hex() == vector["compressed_payload"]
    stream = zstandard.ZstdDecompressor().decompressobj().decompress(compressed)
    assert hashlib.sha256(stream).hexdigest() == vector["msgpack_stream_sha256"]
    assert list(msgpack.Unpacker(io.BytesIO(stream), raw=False)) == events
    signed = raw[:-64]
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(vector["device_public_key"])).verify(
        raw[-64:], b"tracecap bundle v1 signature\x00" + hashlib.sha256(signed).digest())


def test_each_stanza_unwraps_the_file_key(v):
    vector, _, raw = v
    from cryptography.hazmat.primitives import hpke
    hlen = struct.unpack_from(">I", raw, 10)[0]
    pos = 14 + hlen
    assert raw[pos] == 2
    pos += 1
    info = bytes.fromhex(vector["hpke_info"])
    for name, kem in (("org-x25519", hpke.KEM.X25519), ("org-pq", hpke.KEM.MLKEM768_X25519)):
        kem_id, n = struct.unpack_from(">BH", raw, pos)
        ct = raw[pos + 3:pos + 3 + n]
        pos += 3 + n
        suite = hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
        key = load_org_private(VECTORS / f"{name}.key")._hpke_private()
        assert suite.decrypt(ct, key, info=info).hex() == vector["file_key"]


def test_resealing_reproduces_header_and_payload(v):
    """Everything but the stanzas (HPKE's ephemeral keys are the library's own randomness) and the
    signature over them is reproduced byte for byte."""
    vector, _, raw = v
    fresh = make_vectors.build()["bundle.tcb"]
    hlen = struct.unpack_from(">I", raw, 10)[0]
    assert fresh[:14 + hlen] == raw[:14 + hlen]
    if zstandard.__version__ != vector["zstd_version"]:
        pytest.skip(f"zstandard {zstandard.__version__} may compress differently from {vector['zstd_version']}")

    def payload(b):
        pos = 14 + hlen + 1
        for _ in range(b[14 + hlen]):
            pos += 3 + struct.unpack_from(">BH", b, pos)[1]
        return b[pos:-64]
    assert payload(fresh) == payload(raw)
    assert fresh != raw  # the stanzas do differ: HPKE encapsulation stays randomized


def test_format_document_quotes_the_vector(v):
    vector, _, _ = v
    doc = (VECTORS.parent / "BUNDLE.md").read_text(encoding="utf-8")
    for value in (vector["header_hash"], vector["payload_key"], vector["device_public_key"],
                  vector["header"]["bundle_id"], *vector["org_keys"].values()):
        assert value in doc
