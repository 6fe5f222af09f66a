"""Regenerate the bundle test vectors in this directory (run from the repository root:
`python -m schemas.vectors.make_vectors`). The checked-in files are the reference; regenerate only
when the format version changes, and never for a released version.

Gives: org key pairs (X25519 and ML-KEM-768+X25519), a device key, `events.jsonl`, `bundle.tcb`
sealed to both org keys with a fixed file key, and `vector.json` with every input and intermediate
value (header hash, payload key, digests) that an independent implementation can check against.
HPKE's ephemeral keys cannot be fixed, so the recipient stanzas differ from one sealing to the next;
everything else is reproducible from `vector.json`.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
from pathlib import Path

import msgpack
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas import bundle as B
from schemas.keys import DEVICE_TAG, OrgPrivateKey, SUITE_MLKEM768_X25519, SUITE_X25519, format_private, format_public

HERE = Path(__file__).resolve().parent

FILE_KEY = bytes(range(0x40, 0x60))
DEVICE_SEED = hashlib.sha256(b"tracecap test vector device key").digest()
X25519_SECRET = hashlib.sha256(b"tracecap test vector org key x25519").digest()
PQ_SECRET = (hashlib.sha512(b"tracecap test vector org key mlkem768").digest()
             + hashlib.sha256(b"tracecap test vector org key pq x25519").digest())
INPUTS = {
    "device_id": "vector-device-1",
    "bundle_id": "17979cfe362a0000-00112233aabb",
    "created_ns": 1_700_000_000_000_000_000,
    "prev_digest": hashlib.sha256(b"the previous bundle").hexdigest(),
    "level": 3,
}


def vector_events() -> list[dict]:
    ts = 1_699_999_990_000_000_000
    return [
        {"v": 1, "seq": 101, "ts": ts, "kind": "shell.start", "source": "shell", "session": "s-1",
         "data": {"id": "c1", "cmd": "pytest -q", "cwd": "/home/ana/src/app", "shell": "bash", "actor": "human"}},
        {"v": 1, "seq": 102, "ts": ts + 1_500_000_000, "kind": "shell.end", "source": "shell", "session": "s-1",
         "data": {"id": "c1", "exit": 1, "duration_ms": 1500}},
        {"v": 1, "seq": 103, "ts": ts + 2_000_000_000, "kind": "file.save", "source": "files", "session": None,
         "data": {"repo": "/home/ana/src/app", "path": "app/calc.py", "op": "modify", "size": 58,
                  "diff": "--- a/app/calc.py\n+++ b/app/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
                          "-    return a - b\n+    return a + b\n"}},
        {"v": 1, "seq": 105, "ts": ts + 3_000_000_000, "kind": "user.note", "source": "cli", "session": None,
         "data": {"text": "fix the sign in add() — naïve mistake ✓"}},
    ]


def decrypt_chunks(raw: bytes, payload_key: bytes) -> bytes:
    """The compressed payload, read straight from the layout in BUNDLE.md (no codec reader)."""
    _, _, header_len = struct.unpack_from(">8sHI", raw, 0)
    pos = 14 + header_len
    count = raw[pos]
    pos += 1
    for _ in range(count):
        _, ct_len = struct.unpack_from(">BH", raw, pos)
        pos += 3 + ct_len
    aad = hashlib.sha256(raw[:14 + header_len]).digest()
    aead = AESGCM(payload_key)
    out, counter = [], 0
    while True:
        (frame,) = struct.unpack_from(">I", raw, pos)
        last, n = frame >> 31, frame & 0x7FFF_FFFF
        nonce = counter.to_bytes(11, "big") + bytes([last])
        out.append(aead.decrypt(nonce, raw[pos + 4:pos + 4 + n], aad))
        pos += 4 + n
        counter += 1
        if last:
            assert len(raw) - pos == 64
            return b"".join(out)


def build() -> dict[str, bytes]:
    """Every vector file's bytes, keyed by file name."""
    device = Ed25519PrivateKey.from_private_bytes(DEVICE_SEED)
    x_priv = OrgPrivateKey(SUITE_X25519, X25519_SECRET)
    pq_priv = OrgPrivateKey(SUITE_MLKEM768_X25519, PQ_SECRET)
    events = vector_events()
    buf = io.BytesIO()
    sealed = B.seal_bundle(buf, events, device_key=device, recipients=[x_priv.public_key(), pq_priv.public_key()],
                           random_bytes=lambda n: FILE_KEY[:n], **INPUTS)
    raw = buf.getvalue()
    header_raw = sealed.header.to_bytes()
    header_hash = hashlib.sha256(raw[:B._PREAMBLE.size + len(header_raw)]).digest()
    payload_key = B._payload_key(FILE_KEY, header_hash)
    stream = b"".join(msgpack.packb(e, use_bin_type=True) for e in events)
    compressed = decrypt_chunks(raw, payload_key)
    vector = {
        "format_version": B.FORMAT_VERSION,
        "inputs": INPUTS,
        "file_key": FILE_KEY.hex(),
        "device_public_key": device.public_key().public_bytes_raw().hex(),
        "org_keys": {"X25519": x_priv.key_id, "MLKEM768-X25519": pq_priv.key_id},
        "header": sealed.header.to_json(),
        "header_msgpack": header_raw.hex(),
        "header_hash": header_hash.hex(),
        "hpke_info": (B.HPKE_INFO_PREFIX + header_hash).hex(),
        "payload_key": payload_key.hex(),
        "msgpack_stream_sha256": hashlib.sha256(stream).hexdigest(),
        "zstd_version": zstandard.__version__,
        "compressed_payload": compressed.hex(),
        "bundle_sha256": sealed.digest,
        "bundle_size": sealed.size,
    }
    return {
        "device.key": f"{DEVICE_TAG} Ed25519\n{base64.b64encode(DEVICE_SEED).decode()}\n".encode(),
        "org-x25519.key": format_private(x_priv).encode(),
        "org-x25519.pub": format_public(x_priv.public_key()).encode(),
        "org-pq.key": format_private(pq_priv).encode(),
        "org-pq.pub": format_public(pq_priv.public_key()).encode(),
        "events.jsonl": "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n"
                                for e in events).encode(),
        "bundle.tcb": raw,
        "vector.json": (json.dumps(vector, indent=2, ensure_ascii=False) + "\n").encode(),
    }


def main() -> None:
    for name, data in build().items():
        (HERE / name).write_bytes(data)
        print(f"wrote {HERE / name} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
