"""The trace bundle codec: what leaves the machine, and how the org reads it back.

Takes contract event dicts, a device signing key and org recipient keys; gives one bundle file
(layout in `schemas/BUNDLE.md`): a plaintext header, one HPKE stanza per recipient wrapping a fresh
random file key, the events as msgpack → zstd → 64 KiB chunks of AES-256-GCM in a STREAM
construction (counter nonce with a last-chunk flag, the header hash as associated data), and an
Ed25519 trailer signature by the device over everything before it.

Promises:
- `seal_bundle` and `open_bundle` run in bounded memory (one chunk, one zstd window, one event)
  however large the bundle.
- `open_bundle` checks the structure, the signature and every chunk's authentication tag before it
  yields the first event, so a flipped bit, truncation, reordered or swapped chunk, wrong key or
  bad signature yields nothing at all.
- Every failure to read a bundle raises a `BundleError` subclass whose `str()` is one sentence
  saying which; no other exception escapes the readers for any input bytes.
- `read_header` and `verify_bundle` need no org key (the collector and `bundle inspect` use them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import struct
import time
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import msgpack
import zstandard
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.events import EVENT_VERSION
from schemas.keys import SUITE_MLKEM768_X25519, SUITE_X25519, OrgPrivateKey, OrgPublicKey

FORMAT_VERSION = 1
MAGIC = b"TRACECAP"
CHUNK_SIZE = 64 * 1024  # plaintext bytes per chunk; every chunk but the last is exactly this
TAG_SIZE = 16
SIGNATURE_SIZE = 64
FILE_KEY_SIZE = 32
MAX_HEADER_SIZE = 64 * 1024
MAX_RECIPIENTS = 64
MAX_EVENT_SIZE = 32 * 1024 * 1024  # one event's msgpack; larger events are refused when opening
ZSTD_MAX_WINDOW_LOG = 23  # 8 MiB: caps the decoder's memory whatever level sealed the bundle

_PREAMBLE = struct.Struct(">8sHI")  # magic, format version, header length
_FRAME = struct.Struct(">I")  # bit 31: last chunk; bits 0..30: ciphertext length
_LAST_BIT = 0x8000_0000
_STANZA = struct.Struct(">BH")  # KEM id, ciphertext length

KEM_IDS = {SUITE_X25519: 1, SUITE_MLKEM768_X25519: 2}
_KEM_BY_ID = {v: k for k, v in KEM_IDS.items()}
_HPKE_KEM = {SUITE_X25519: hpke.KEM.X25519, SUITE_MLKEM768_X25519: hpke.KEM.MLKEM768_X25519}

HPKE_INFO_PREFIX = b"tracecap bundle v1 file key\x00"
PAYLOAD_KEY_INFO = b"tracecap bundle v1 payload key"
SIGNATURE_CONTEXT = b"tracecap bundle v1 signature\x00"

_BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{12}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class BundleError(ValueError):
    """A bundle cannot be read or trusted; `str()` is one sentence saying why."""


class BundleFormatError(BundleError):
    """The bytes are not a well-formed bundle (damaged, truncated, or not a bundle at all)."""


class BundleTruncated(BundleFormatError):
    """The bundle ends before its layout says it should."""


class BundleVersionError(BundleError):
    """A bundle format version this tracecap does not read."""


class BundleSignatureError(BundleError):
    """The device signature does not verify, or the bundle is not from the expected device."""


class BundleTampered(BundleError):
    """A chunk or key stanza failed authentication."""


class BundleWrongKey(BundleError):
    """None of the given org keys is a recipient of this bundle."""


@dataclasses.dataclass(frozen=True)
class BundleHeader:
    version: int
    device_id: str
    device_pub: bytes  # Ed25519 raw public key, 32 bytes
    bundle_id: str  # 16 hex digits of created_ns, "-", 12 random hex digits: sorts by time
    first_seq: int
    last_seq: int
    count: int
    created_ns: int
    schema_version: int
    compression: str
    suite: str  # the recipients' KEM suites, distinct, in recipient order, joined by "+"
    recipients: tuple[str, ...]  # key ids, in stanza order
    prev_digest: str  # sha256 hex of this device's previous bundle file, "" for its first

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "device_id": self.device_id,
            "device_pub": self.device_pub.hex(),
            "bundle_id": self.bundle_id,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "created_ns": self.created_ns,
            "schema_version": self.schema_version,
            "compression": self.compression,
            "suite": self.suite,
            "recipients": list(self.recipients),
            "prev_digest": self.prev_digest,
        }

    def to_bytes(self) -> bytes:
        """The header's wire form: a msgpack map with the fields in declaration order."""
        d = self.to_json()
        d["device_pub"] = self.device_pub
        return msgpack.packb(d, use_bin_type=True)


_HEADER_TYPES: dict[str, type] = {
    "version": int, "device_id": str, "device_pub": bytes, "bundle_id": str, "first_seq": int,
    "last_seq": int, "count": int, "created_ns": int, "schema_version": int, "compression": str,
    "suite": str, "recipients": list, "prev_digest": str,
}


@dataclasses.dataclass(frozen=True)
class SealedBundle:
    header: BundleHeader
    digest: str  # sha256 hex of the whole bundle file: the next bundle's prev_digest
    size: int


def _check_header(h: BundleHeader) -> None:
    """Raise ValueError naming the first field that breaks the format's rules."""
    u64 = 1 << 64
    if h.version != FORMAT_VERSION:
        raise ValueError(f"version must be {FORMAT_VERSION}")
    if not 0 < len(h.device_id) <= 256:
        raise ValueError("device_id must be 1 to 256 characters")
    if len(h.device_pub) != 32:
        raise ValueError("device_pub must be 32 bytes")
    if not _BUNDLE_ID_RE.match(h.bundle_id):
        raise ValueError("bundle_id must be 16 hex digits, '-', 12 hex digits")
    for name in ("first_seq", "last_seq", "count", "created_ns", "schema_version"):
        v = getattr(h, name)
        if type(v) is not int or not 0 <= v < u64:
            raise ValueError(f"{name} must be an unsigned 64-bit integer")
    if h.count < 1 or h.last_seq < h.first_seq or h.last_seq - h.first_seq + 1 < h.count:
        raise ValueError("first_seq, last_seq and count are inconsistent")
    if h.compression != "zstd":
        raise ValueError("compression must be 'zstd'")
    if not 0 < len(h.recipients) <= MAX_RECIPIENTS or not all(
            isinstance(r, str) and _KEY_ID_RE.match(r) for r in h.recipients):
        raise ValueError(f"recipients must be 1 to {MAX_RECIPIENTS} key ids of 16 hex digits")
    if h.prev_digest and not _HEX64_RE.match(h.prev_digest):
        raise ValueError("prev_digest must be empty or 64 lowercase hex digits")


def _parse_header(raw: bytes) -> BundleHeader:
    try:
        d = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except Exception:  # msgpack raises a zoo of types for bad input; all mean the same here
        raise BundleFormatError("the bundle header is damaged (not valid msgpack)") from None
    if not isinstance(d, dict) or list(d) != list(_HEADER_TYPES):
        raise BundleFormatError("the bundle header is damaged (wrong or misordered fields)")
    for name, typ in _HEADER_TYPES.items():
        if type(d[name]) is not typ:
            raise BundleFormatError(f"the bundle header is damaged ({name} has the wrong type)")
    d["recipients"] = tuple(d["recipients"])
    header = BundleHeader(**d)
    try:
        _check_header(header)
    except ValueError as exc:
        raise BundleFormatError(f"the bundle header is damaged ({exc})") from None
    if header.to_bytes() != raw:
        raise BundleFormatError("the bundle header is damaged (not in canonical form)")
    return header


def _suite_of(recipients: Sequence[OrgPublicKey]) -> str:
    seen: list[str] = []
    for r in recipients:
        if r.suite not in seen:
            seen.append(r.suite)
    return "+".join(seen)


def _hpke_suite(kem_suite: str) -> hpke.Suite:
    return hpke.Suite(_HPKE_KEM[kem_suite], hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _stanza_ct_len(kem_suite: str) -> int:
    return _HPKE_KEM[kem_suite].enc_length() + FILE_KEY_SIZE + TAG_SIZE


def _payload_key(file_key: bytes, header_hash: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=header_hash, info=PAYLOAD_KEY_INFO).derive(file_key)


def _payload_aead(file_key: bytes, header_hash: bytes) -> AESGCM:
    return AESGCM(_payload_key(file_key, header_hash))


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    # An 8 MiB window with long-distance matching at every level: a day's events repeat themselves
    # far apart (the same files re-edited, the same commands re-run), which a level's default 1-2 MiB
    # window misses; measured 0.87x -> 0.77x of JSON lines + gzip -6 at level 3 (bench/bundle.py).
    # The window never exceeds what open_bundle's decoder accepts.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=ZSTD_MAX_WINDOW_LOG, enable_ldm=True)
    return zstandard.ZstdCompressor(compression_params=params)


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def new_bundle_id(created_ns: int, random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """Time-ordered and unique: fixed-width hex of the creation time, then 48 random bits."""
    return f"{created_ns:016x}-{random_bytes(6).hex()}"


class _HashingWriter:
    """Writes through to `out` while hashing; counts bytes."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes) -> None:
        self.h.update(b)
        self.out.write(b)
        self.size += len(b)


def seal_bundle(
    out: BinaryIO,
    events: Sequence[dict],
    *,
    device_id: str,
    device_key: Ed25519PrivateKey,
    recipients: Sequence[OrgPublicKey],
    prev_digest: str,
    level: int = 3,
    bundle_id: str | None = None,
    created_ns: int | None = None,
    random_bytes: Callable[[int], bytes] | None = None,
) -> SealedBundle:
    """Write one bundle of `events` (contract dicts, strictly increasing `seq`) to `out`.

    `random_bytes` exists only so test vectors can be reproduced; leave it None (os.urandom)
    everywhere else. HPKE's own ephemeral keys always come from the system's randomness.
    """
    rand = os.urandom if random_bytes is None else random_bytes
    if not events:
        raise ValueError("cannot seal an empty bundle")
    if not recipients:
        raise ValueError("a bundle needs at least one org recipient key")
    if len(recipients) > MAX_RECIPIENTS:
        raise ValueError(f"a bundle takes at most {MAX_RECIPIENTS} recipients")
    if not 1 <= level <= 22:
        raise ValueError("zstd level must be between 1 and 22")
    created_ns = time.time_ns() if created_ns is None else created_ns
    header = BundleHeader(
        version=FORMAT_VERSION,
        device_id=device_id,
        device_pub=device_key.public_key().public_bytes_raw(),
        bundle_id=new_bundle_id(created_ns, rand) if bundle_id is None else bundle_id,
        first_seq=events[0]["seq"],
        last_seq=events[-1]["seq"],
        count=len(events),
        created_ns=created_ns,
        schema_version=EVENT_VERSION,
        compression="zstd",
        suite=_suite_of(recipients),
        recipients=tuple(r.key_id for r in recipients),
        prev_digest=prev_digest,
    )
    _check_header(header)
    header_raw = header.to_bytes()
    w = _HashingWriter(out)
    w.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header_raw)) + header_raw)
    header_hash = w.h.digest()

    file_key = rand(FILE_KEY_SIZE)
    info = HPKE_INFO_PREFIX + header_hash
    stanzas = [struct.pack(">B", len(recipients))]
    for r in recipients:
        ct = _hpke_suite(r.suite).encrypt(file_key, r._hpke_public(), info=info)
        stanzas.append(_STANZA.pack(KEM_IDS[r.suite], len(ct)) + ct)
    w.write(b"".join(stanzas))

    aead = _payload_aead(file_key, header_hash)
    del file_key
    zobj = _zstd_compressor(level).compressobj()
    packer = msgpack.Packer(use_bin_type=True)
    pending = bytearray()  # compressed bytes not yet encrypted; always keeps the tail for the last chunk
    counter = 0
    batch: list[bytes] = []
    batch_size = 0
    prev_seq = -1

    def emit_full_chunks() -> None:
        nonlocal counter
        # Strictly more than one chunk pending: the final chunk is only known at the end.
        while len(pending) > CHUNK_SIZE:
            ct = aead.encrypt(_nonce(counter, False), bytes(pending[:CHUNK_SIZE]), header_hash)
            w.write(_FRAME.pack(len(ct)) + ct)
            del pending[:CHUNK_SIZE]
            counter += 1

    for ev in events:
        seq = ev["seq"]
        if type(seq) is not int or seq <= prev_seq:
            raise ValueError(f"event seq must be strictly increasing integers (got {seq!r} after {prev_seq})")
        prev_seq = seq
        b = packer.pack(ev)
        batch.append(b)
        batch_size += len(b)
        if batch_size >= 1 << 20:
            pending += zobj.compress(b"".join(batch))
            batch.clear()
            batch_size = 0
            emit_full_chunks()
    pending += zobj.compress(b"".join(batch))
    pending += zobj.flush()
    emit_full_chunks()
    ct = aead.encrypt(_nonce(counter, True), bytes(pending), header_hash)
    w.write(_FRAME.pack(_LAST_BIT | len(ct)) + ct)

    signature = device_key.sign(SIGNATURE_CONTEXT + w.h.digest())
    w.write(signature)
    return SealedBundle(header=header, digest=w.h.hexdigest(), size=w.size)


# ---- reading ---------------------------------------------------------------------------------


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    try:
        b = f.read(n)
    except OSError as exc:
        raise BundleFormatError(f"the bundle cannot be read ({exc.strerror})") from None
    if b is None or len(b) != n:
        raise BundleTruncated(f"the bundle is truncated (it ends inside the {what})")
    return b


@dataclasses.dataclass
class _Prefix:
    header: BundleHeader
    header_hash: bytes
    stanzas: list[tuple[str, bytes]]  # (KEM suite, HPKE ciphertext), in recipient order


def _read_preamble_and_header(f: BinaryIO, h) -> tuple[BundleHeader, bytes]:
    try:
        pre = f.read(_PREAMBLE.size) or b""
    except OSError as exc:
        raise BundleFormatError(f"the bundle cannot be read ({exc.strerror})") from None
    if pre[:len(MAGIC)] != MAGIC[:len(pre)] or not pre:
        raise BundleFormatError("the file is not a tracecap bundle (wrong magic bytes)")
    if len(pre) < _PREAMBLE.size:
        raise BundleTruncated("the bundle is truncated (it ends inside the preamble)")
    _, version, header_len = _PREAMBLE.unpack(pre)
    if version != FORMAT_VERSION:
        raise BundleVersionError(
            f"the bundle has format version {version}, which this tracecap does not read "
            f"(it reads version {FORMAT_VERSION}); upgrade tracecap")
    if not 0 < header_len <= MAX_HEADER_SIZE:
        raise BundleFormatError(f"the bundle header length {header_len} is out of range")
    raw = _read_exact(f, header_len, "header")
    h.update(pre)
    h.update(raw)
    return _parse_header(raw), h.digest()


def _read_prefix(f: BinaryIO, h) -> _Prefix:
    header, header_hash = _read_preamble_and_header(f, h)
    n_raw = _read_exact(f, 1, "recipient stanzas")
    h.update(n_raw)
    if n_raw[0] != len(header.recipients):
        raise BundleFormatError("the bundle is damaged (stanza count differs from the recipient list)")
    stanzas = []
    for _ in range(n_raw[0]):
        st = _read_exact(f, _STANZA.size, "recipient stanzas")
        kem_id, ct_len = _STANZA.unpack(st)
        suite = _KEM_BY_ID.get(kem_id)
        if suite is None or ct_len != _stanza_ct_len(suite):
            raise BundleFormatError("the bundle is damaged (a recipient stanza is malformed)")
        ct = _read_exact(f, ct_len, "recipient stanzas")
        h.update(st)
        h.update(ct)
        stanzas.append((suite, ct))
    if _suite_of_names([s for s, _ in stanzas]) != header.suite:
        raise BundleFormatError("the bundle is damaged (the suite does not match the recipient stanzas)")
    return _Prefix(header, header_hash, stanzas)


def _suite_of_names(names: list[str]) -> str:
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return "+".join(seen)


def _iter_frames(f: BinaryIO, h) -> Iterator[tuple[int, bool, bytes]]:
    """(counter, last, ciphertext) for each chunk, hashing as it goes; enforces the chunk sizes."""
    counter = 0
    while True:
        (frame,) = _FRAME.unpack(_read_exact(f, _FRAME.size, "payload"))
        last = bool(frame & _LAST_BIT)
        n = frame & ~_LAST_BIT
        if last:
            if not TAG_SIZE <= n <= CHUNK_SIZE + TAG_SIZE or (counter > 0 and n == TAG_SIZE):
                raise BundleFormatError("the bundle is damaged (the last chunk has an invalid length)")
        elif n != CHUNK_SIZE + TAG_SIZE:
            raise BundleFormatError("the bundle is damaged (a chunk has an invalid length)")
        ct = _read_exact(f, n, "payload")
        h.update(_FRAME.pack(frame))
        h.update(ct)
        yield counter, last, ct
        if last:
            return
        counter += 1


def _finish(f: BinaryIO, h, header: BundleHeader, expected_device_pub: bytes | None) -> str:
    """Read and check the trailer signature and end of file; return the file digest."""
    sig = _read_exact(f, SIGNATURE_SIZE, "signature")
    try:
        extra = f.read(1)
    except OSError as exc:
        raise BundleFormatError(f"the bundle cannot be read ({exc.strerror})") from None
    if extra:
        raise BundleFormatError("the bundle is damaged (bytes follow the signature)")
    if expected_device_pub is not None and bytes(expected_device_pub) != header.device_pub:
        raise BundleSignatureError("the bundle is signed by a different device key than expected")
    try:
        Ed25519PublicKey.from_public_bytes(header.device_pub).verify(sig, SIGNATURE_CONTEXT + h.digest())
    except (InvalidSignature, ValueError):
        raise BundleSignatureError("the bundle's device signature does not verify (it was altered after sealing)") from None
    h.update(sig)
    return h.hexdigest()


def read_header(f: BinaryIO) -> BundleHeader:
    """The header alone, parsed and checked for form; trusts nothing (no signature check)."""
    header, _ = _read_preamble_and_header(f, hashlib.sha256())
    return header


def verify_bundle(f: BinaryIO, expected_device_pub: bytes | None = None) -> tuple[BundleHeader, str]:
    """Check structure and the device signature without an org key; return (header, digest)."""
    h = hashlib.sha256()
    prefix = _read_prefix(f, h)
    for _ in _iter_frames(f, h):
        pass
    return prefix.header, _finish(f, h, prefix.header, expected_device_pub)


def _unwrap_file_key(prefix: _Prefix, keys: Sequence[OrgPrivateKey]) -> bytes:
    info = HPKE_INFO_PREFIX + prefix.header_hash
    for key in keys:
        for key_id, (suite, ct) in zip(prefix.header.recipients, prefix.stanzas):
            if key_id != key.key_id or suite != key.suite:
                continue
            try:
                return _hpke_suite(suite).decrypt(ct, key._hpke_private(), info=info)
            except Exception:  # HPKE reports a failed open with several exception types
                raise BundleTampered(
                    f"the key stanza for org key {key_id} fails authentication (the bundle was altered)") from None
    names = ", ".join(k.key_id for k in keys) or "none"
    raise BundleWrongKey(
        f"the bundle is not encrypted to the given org key ({names}); it is for "
        f"{', '.join(prefix.header.recipients)}: use the matching org.key")


class _PlaintextReader(io.RawIOBase):
    """A file-like over decrypted chunks, for zstd's stream reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf, self._pos = nxt, 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n


def open_bundle(f: BinaryIO, key: OrgPrivateKey | Sequence[OrgPrivateKey]) -> Iterator[dict]:
    """Verify the whole bundle, then stream its events in order. `f` must be seekable.

    Pass one checks structure, signature, the key stanza and every chunk's tag; pass two decrypts
    again and yields events. So any damage is raised before the first event; the only errors left
    for pass two are a correctly signed and encrypted payload that does not decode (a faulty
    sealer), which also raise `BundleFormatError`.
    """
    keys = [key] if isinstance(key, OrgPrivateKey) else list(key)
    try:
        start = f.tell()
    except (OSError, ValueError):
        raise BundleFormatError("the bundle must be opened from a seekable file") from None
    return _open_gen(f, keys, start)


def _open_gen(f: BinaryIO, keys: list[OrgPrivateKey], start: int) -> Iterator[dict]:
    h = hashlib.sha256()
    prefix = _read_prefix(f, h)
    payload_at = f.tell()
    # Failures are held until the signature is checked: "altered after sealing" is the more
    # telling report, and it comes first whenever the signature does not verify.
    failed: BundleError | None = None
    aead = None
    try:
        file_key = _unwrap_file_key(prefix, keys)
        aead = _payload_aead(file_key, prefix.header_hash)
        del file_key
    except (BundleTampered, BundleWrongKey) as exc:
        failed = exc
    for counter, last, ct in _iter_frames(f, h):
        if failed is None:
            try:
                _decrypt(aead, counter, last, ct, prefix.header_hash)
            except BundleTampered as exc:
                failed = exc
    _finish(f, h, prefix.header, None)
    if failed is not None:
        raise failed

    f.seek(payload_at)

    def chunks() -> Iterator[bytes]:
        for counter, last, ct in _iter_frames(f, hashlib.sha256()):
            yield _decrypt(aead, counter, last, ct, prefix.header_hash)

    header = prefix.header
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << ZSTD_MAX_WINDOW_LOG)
    reader = dctx.stream_reader(_PlaintextReader(chunks()), read_size=CHUNK_SIZE, read_across_frames=False)
    unpacker = msgpack.Unpacker(reader, raw=False, strict_map_key=True, read_size=CHUNK_SIZE,
                                max_buffer_size=MAX_EVENT_SIZE)
    n = 0
    prev_seq = -1
    while True:
        try:
            ev = next(unpacker)
        except StopIteration:
            break
        except BundleError:
            raise
        except Exception:  # zstd and msgpack errors: an authentic payload that does not decode
            raise BundleFormatError("the bundle payload does not decode (it was sealed by a faulty writer)") from None
        seq = ev.get("seq") if isinstance(ev, dict) else None
        if type(seq) is not int or seq <= prev_seq or not header.first_seq <= seq <= header.last_seq:
            raise BundleFormatError("the bundle payload holds an event out of the header's seq range or order")
        if n == 0 and seq != header.first_seq:
            raise BundleFormatError("the bundle payload does not start at the header's first_seq")
        prev_seq = seq
        n += 1
        yield ev
    if n != header.count or prev_seq != header.last_seq:
        raise BundleFormatError(f"the bundle payload holds {n} events but its header says {header.count}")


def _decrypt(aead: AESGCM, counter: int, last: bool, ct: bytes, aad: bytes) -> bytes:
    try:
        return aead.decrypt(_nonce(counter, last), ct, aad)
    except InvalidTag:
        raise BundleTampered(
            f"chunk {counter} of the bundle fails authentication (altered, reordered, or from another bundle)") from None
