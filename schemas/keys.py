"""Org key pairs (who may read bundles) and the device signing key (who wrote them).

Takes key files on disk or fresh randomness; gives `OrgPrivateKey` / `OrgPublicKey` (X25519, or the
hybrid ML-KEM-768+X25519 for post-quantum protection) and the device's Ed25519 key.
Promises:
- Key objects never print key material: `repr`/`str` show the suite and the key id only.
- A key id is the first 8 bytes (16 hex digits) of SHA-256 over a domain tag, the suite name and
  the raw public key bytes, so a bundle can name its recipients without revealing anything.
- Key files are two text lines: `<tag> <suite> <key id>` and the base64 of the raw key bytes, so an
  admin can copy them through a terminal. `org.key` is created 0600, `org.pub` 0644, the device key
  0600; writing never overwrites an existing file.
- Every malformed key file raises `KeyFileError` with one sentence naming the file and the fix.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import hpke

SUITE_X25519 = "X25519"
SUITE_MLKEM768_X25519 = "MLKEM768-X25519"
SUITES = (SUITE_X25519, SUITE_MLKEM768_X25519)

PRIVATE_TAG = "tracecap-org-private-key-v1"
PUBLIC_TAG = "tracecap-org-public-key-v1"
DEVICE_TAG = "tracecap-device-key-v1"

_X25519_LEN = 32
_MLKEM768_SEED_LEN = 64
_MLKEM768_PUB_LEN = 1184
_PRIVATE_LEN = {SUITE_X25519: _X25519_LEN, SUITE_MLKEM768_X25519: _MLKEM768_SEED_LEN + _X25519_LEN}
_PUBLIC_LEN = {SUITE_X25519: _X25519_LEN, SUITE_MLKEM768_X25519: _MLKEM768_PUB_LEN + _X25519_LEN}


class KeyFileError(ValueError):
    """A key file is missing, unreadable, malformed, or would be overwritten."""


def key_id_of(suite: str, public_bytes: bytes) -> str:
    """The short public name of an org key: 16 hex digits."""
    digest = hashlib.sha256(b"tracecap org key id\x00" + suite.encode() + b"\x00" + public_bytes)
    return digest.hexdigest()[:16]


class OrgPublicKey:
    """An org recipient: bundles are encrypted to it. Safe to share."""

    __slots__ = ("_suite", "_raw", "_key_id")

    def __init__(self, suite: str, raw: bytes) -> None:
        if suite not in SUITES:
            raise ValueError(f"unknown org key suite {suite!r}; expected one of {', '.join(SUITES)}")
        if len(raw) != _PUBLIC_LEN[suite]:
            raise ValueError(f"an {suite} org public key is {_PUBLIC_LEN[suite]} bytes, not {len(raw)}")
        self._suite = suite
        self._raw = bytes(raw)
        self._hpke_public()  # reject bytes that are not a valid key now, not at seal time
        self._key_id = key_id_of(suite, self._raw)

    @property
    def suite(self) -> str:
        return self._suite

    @property
    def key_id(self) -> str:
        return self._key_id

    def public_bytes(self) -> bytes:
        return self._raw

    def _hpke_public(self):
        if self._suite == SUITE_X25519:
            return x25519.X25519PublicKey.from_public_bytes(self._raw)
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(self._raw[:_MLKEM768_PUB_LEN]),
            x25519.X25519PublicKey.from_public_bytes(self._raw[_MLKEM768_PUB_LEN:]),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrgPublicKey) and (self._suite, self._raw) == (other._suite, other._raw)

    def __hash__(self) -> int:
        return hash((self._suite, self._raw))

    def __repr__(self) -> str:
        return f"OrgPublicKey(suite={self._suite!r}, key_id={self._key_id!r})"

    __str__ = __repr__


class OrgPrivateKey:
    """The org's private key: opens bundles. Never printed, never logged."""

    __slots__ = ("_suite", "_raw", "_public")

    def __init__(self, suite: str, raw: bytes) -> None:
        if suite not in SUITES:
            raise ValueError(f"unknown org key suite {suite!r}; expected one of {', '.join(SUITES)}")
        if len(raw) != _PRIVATE_LEN[suite]:
            raise ValueError(f"an {suite} org private key is {_PRIVATE_LEN[suite]} bytes, not {len(raw)}")
        self._suite = suite
        self._raw = bytes(raw)
        hk = self._hpke_private()
        if suite == SUITE_X25519:
            pub = hk.public_key().public_bytes_raw()
        else:
            pub = (mlkem.MLKEM768PrivateKey.from_seed_bytes(self._raw[:_MLKEM768_SEED_LEN])
                   .public_key().public_bytes_raw()
                   + x25519.X25519PrivateKey.from_private_bytes(self._raw[_MLKEM768_SEED_LEN:])
                   .public_key().public_bytes_raw())
        self._public = OrgPublicKey(suite, pub)

    @property
    def suite(self) -> str:
        return self._suite

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def public_key(self) -> OrgPublicKey:
        return self._public

    def private_bytes(self) -> bytes:
        """The raw secret (X25519 scalar, or ML-KEM seed followed by X25519 scalar)."""
        return self._raw

    def _hpke_private(self):
        if self._suite == SUITE_X25519:
            return x25519.X25519PrivateKey.from_private_bytes(self._raw)
        return hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(self._raw[:_MLKEM768_SEED_LEN]),
            x25519.X25519PrivateKey.from_private_bytes(self._raw[_MLKEM768_SEED_LEN:]),
        )

    def __reduce__(self):
        raise TypeError("OrgPrivateKey cannot be pickled: private keys stay in memory")

    def __repr__(self) -> str:
        return f"OrgPrivateKey(suite={self._suite!r}, key_id={self.key_id!r})"

    __str__ = __repr__


def generate_org_keypair(pq: bool = False) -> tuple[OrgPrivateKey, OrgPublicKey]:
    """A fresh org key pair: X25519, or hybrid ML-KEM-768+X25519 when `pq`."""
    x = x25519.X25519PrivateKey.generate().private_bytes_raw()
    if pq:
        seed = mlkem.MLKEM768PrivateKey.generate().private_bytes_raw()
        priv = OrgPrivateKey(SUITE_MLKEM768_X25519, seed + x)
    else:
        priv = OrgPrivateKey(SUITE_X25519, x)
    return priv, priv.public_key()


def format_private(priv: OrgPrivateKey) -> str:
    return f"{PRIVATE_TAG} {priv.suite} {priv.key_id}\n{base64.b64encode(priv.private_bytes()).decode()}\n"


def format_public(pub: OrgPublicKey) -> str:
    return f"{PUBLIC_TAG} {pub.suite} {pub.key_id}\n{base64.b64encode(pub.public_bytes()).decode()}\n"


def _write_new(path: Path, text: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; move it away or choose another --out directory") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}; choose a writable directory") from None
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what the admin expects
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_org_keypair(out_dir: Path, priv: OrgPrivateKey, pub: OrgPublicKey) -> tuple[Path, Path]:
    """Write `out_dir/org.key` (0600) and `out_dir/org.pub` (0644); never overwrites either."""
    if priv.public_key() != pub:
        raise ValueError("the public key does not belong to the private key")
    out_dir = Path(out_dir)
    key_path, pub_path = out_dir / "org.key", out_dir / "org.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists; move it away or choose another --out directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create directory {out_dir}: {exc.strerror}; choose a writable directory") from None
    _write_new(key_path, format_private(priv), 0o600)
    try:
        _write_new(pub_path, format_public(pub), 0o644)
    except KeyFileError:
        key_path.unlink()  # half a key pair is worse than none
        raise
    return key_path, pub_path


def _read_key_text(path: Path, tag: str, what: str) -> tuple[str, str, bytes]:
    """(suite, key id, raw bytes) from a two-line key file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"{what} file {path} does not exist; check the path") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not an {what} file (it is not text); "
                           f"use the file written by 'tracecap keys generate'") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} file {path}: {exc.strerror}; check the path and permissions") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 2:
        raise KeyFileError(f"{path} is not an {what} file (expected a '{tag}' line and a base64 line); "
                           f"use the file written by 'tracecap keys generate'")
    parts = lines[0].split()
    if len(parts) != 3 or parts[0] != tag:
        hint = " (this looks like the other half of the pair)" if parts and parts[0] in (PRIVATE_TAG, PUBLIC_TAG) else ""
        raise KeyFileError(f"{path} is not an {what} file{hint}; use the file written by 'tracecap keys generate'")
    suite, key_id = parts[1], parts[2]
    if suite not in SUITES:
        raise KeyFileError(f"{path} names unknown key suite {suite!r}; regenerate it with 'tracecap keys generate'")
    try:
        raw = base64.b64decode(lines[1], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path} has a damaged base64 line; copy the file again from its source") from None
    return suite, key_id, raw


def load_org_private(path: Path | str) -> OrgPrivateKey:
    suite, key_id, raw = _read_key_text(Path(path), PRIVATE_TAG, "org private key")
    try:
        priv = OrgPrivateKey(suite, raw)
    except ValueError:
        raise KeyFileError(f"{path} holds a damaged {suite} private key; copy the file again from its source") from None
    if priv.key_id != key_id:
        raise KeyFileError(f"{path} is damaged (its key id {key_id} does not match its key); copy it again")
    return priv


def load_org_public(path: Path | str) -> OrgPublicKey:
    suite, key_id, raw = _read_key_text(Path(path), PUBLIC_TAG, "org public key")
    try:
        pub = OrgPublicKey(suite, raw)
    except ValueError:
        raise KeyFileError(f"{path} holds a damaged {suite} public key; copy the file again from its source") from None
    if pub.key_id != key_id:
        raise KeyFileError(f"{path} is damaged (its key id {key_id} does not match its key); copy it again")
    return pub


def _parse_device_key(path: Path, text: str) -> Ed25519PrivateKey:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 2 or lines[0] != f"{DEVICE_TAG} Ed25519":
        raise KeyFileError(f"device key {path} is damaged; move it away and a new device key will be created")
    try:
        raw = base64.b64decode(lines[1], validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"device key {path} is damaged; move it away and a new device key will be created") from None


def load_or_create_device_key(path: Path) -> Ed25519PrivateKey:
    """The device's Ed25519 signing key, created 0600 on first use.

    Creation is atomic and race-free: the key is written to a private temporary file and linked
    into place, so two processes starting at once end up with the same key.
    """
    path = Path(path)
    try:
        return _parse_device_key(path, path.read_text(encoding="ascii"))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        raise KeyFileError(f"cannot read device key {path}; fix its permissions or move it away") from None
    key = Ed25519PrivateKey.generate()
    text = f"{DEVICE_TAG} Ed25519\n{base64.b64encode(key.private_bytes_raw()).decode()}\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_new(tmp, text, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _parse_device_key(path, path.read_text(encoding="ascii"))
        finally:
            tmp.unlink(missing_ok=True)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise KeyFileError(f"cannot create device key {path}: {exc.strerror}; make its directory writable") from None
    return key
