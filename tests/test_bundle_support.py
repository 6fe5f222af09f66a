"""Shared helpers for the bundle tests (no tests here): realistic events and a map of a bundle's
byte regions."""
from __future__ import annotations

import hashlib
import io
import random
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import bundle as B


def make_events(n: int, *, first_seq: int = 1, seed: int = 7, noise: int = 0) -> list[dict]:
    """Contract events of several kinds; `noise` adds that many random hex chars per event so the
    payload does not compress below several chunks."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        seq = first_seq + i
        ts = 1_700_000_000_000_000_000 + seq * 1_000_000
        k = i % 4
        if k == 0:
            data = {"repo": "/home/ana/src/app", "path": f"src/mod{i % 17}.py", "op": "modify", "size": 1000 + i,
                    "diff": f"@@ -{i},3 +{i},4 @@\n def f{i}():\n-    return {i}\n+    return {i} + 1\n"}
            kind, source = "file.save", "files"
        elif k == 1:
            data = {"id": f"s{i}", "cmd": f"pytest -k test_{i % 9}", "cwd": "/home/ana/src/app", "shell": "bash",
                    "actor": "human"}
            kind, source = "shell.start", "shell"
        elif k == 2:
            data = {"id": f"s{i - 1}", "exit": i % 3, "duration_ms": rng.randrange(10_000)}
            kind, source = "shell.end", "shell"
        else:
            data = {"start": ts, "end": ts + 5, "keys": rng.randrange(200), "clicks": 2, "scrolls": 0}
            kind, source = "input.activity", "input"
        if noise:
            data["noise"] = rng.randbytes(noise // 2).hex()
        out.append({"v": 1, "seq": seq, "ts": ts, "kind": kind, "source": source,
                    "session": None if k == 3 else "sess-1", "data": data})
    return out


def seal(events, recipients, device_key: Ed25519PrivateKey, **kw) -> bytes:
    buf = io.BytesIO()
    kw.setdefault("device_id", "dev-test")
    kw.setdefault("prev_digest", "")
    B.seal_bundle(buf, events, device_key=device_key, recipients=recipients, **kw)
    return buf.getvalue()


def layout(raw: bytes) -> dict:
    """Byte offsets of each region: header, stanzas, chunks [(frame_start, end, last)], signature."""
    _, _, hlen = B._PREAMBLE.unpack_from(raw, 0)
    header_end = B._PREAMBLE.size + hlen
    pos = header_end
    n = raw[pos]
    pos += 1
    for _ in range(n):
        _, ct_len = B._STANZA.unpack_from(raw, pos)
        pos += B._STANZA.size + ct_len
    stanzas_end = pos
    chunks = []
    while True:
        (frame,) = struct.unpack_from(">I", raw, pos)
        last = bool(frame & B._LAST_BIT)
        end = pos + 4 + (frame & ~B._LAST_BIT)
        chunks.append((pos, end, last))
        pos = end
        if last:
            break
    assert len(raw) - pos == B.SIGNATURE_SIZE
    return {"header": (0, header_end), "stanzas": (header_end, stanzas_end), "chunks": chunks,
            "signature": (pos, len(raw))}


def resign(body: bytes, device_key: Ed25519PrivateKey) -> bytes:
    """Sign `body` (everything before the trailer) as a device would: what a faulty or compromised
    sealer could produce, so the tests reach the AEAD checks behind the signature."""
    return body + device_key.sign(B.SIGNATURE_CONTEXT + hashlib.sha256(body).digest())
