"""Signed policies: a detached Ed25519 signature over the policy file's exact bytes.

Takes a policy file and `<file>.sig`; gives acceptance or `PolicyError`. A signature is required when
the policy sets `policy.require_signature`, or when an org signing public key
(`policy-signing.pub`) lies beside the policy file: the second rule means deleting the requirement
from the file cannot turn the check off, since the file's bytes are then no longer signed.

Key files are two lines of text, so admins can copy them: a tag line and base64 of the raw key.
    tracecap-policy-signing-key Ed25519 / tracecap-policy-signing-pub Ed25519
The signature file is one line: base64 of the 64-byte signature over
`b"tracecap policy v1\\x00" + file bytes` (a context prefix, so a policy signature can never be
replayed as any other tracecap signature).
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.policy import PolicyError

PRIV_TAG = "tracecap-policy-signing-key Ed25519"
PUB_TAG = "tracecap-policy-signing-pub Ed25519"
CONTEXT = b"tracecap policy v1\x00"
PUB_NAME = "policy-signing.pub"


class PolicySignatureError(PolicyError):
    pass


def _read_key(path: Path, tag: str, what: str) -> bytes:
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise PolicySignatureError(f"{what} {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError):
        raise PolicySignatureError(f"{what} {path} cannot be read; check its permissions") from None
    if len(lines) != 2 or lines[0] != tag:
        raise PolicySignatureError(f"{path} is not a {what} (expected a '{tag}' file)")
    try:
        raw = base64.b64decode(lines[1], validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise PolicySignatureError(f"{what} {path} is damaged; generate it again")
    return raw


def generate(out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / "policy-signing.key", out_dir / PUB_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise PolicySignatureError(f"{p} already exists; move it away or choose another --out")
    key = Ed25519PrivateKey.generate()
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{PRIV_TAG}\n{base64.b64encode(key.private_bytes_raw()).decode()}\n")
    pub_path.write_text(f"{PUB_TAG}\n{base64.b64encode(key.public_key().public_bytes_raw()).decode()}\n")
    os.chmod(pub_path, 0o644)
    return priv_path, pub_path


def sign(policy_file: Path, key_file: Path) -> Path:
    key = Ed25519PrivateKey.from_private_bytes(_read_key(key_file, PRIV_TAG, "policy signing key"))
    data = Path(policy_file).read_bytes()
    sig_path = Path(str(policy_file) + ".sig")
    sig_path.write_text(base64.b64encode(key.sign(CONTEXT + data)).decode() + "\n")
    return sig_path


def required_key(policy_file: Path, doc: dict) -> Path | None:
    """The public key a signature must verify against, or None when none is required."""
    beside = Path(policy_file).parent / PUB_NAME
    named = doc.get("policy", {}).get("signing_key")
    if doc.get("policy", {}).get("require_signature"):
        if not named and not beside.exists():
            raise PolicySignatureError(
                f"policy file {policy_file}: key policy.require_signature is true but no signing key "
                f"is named (set policy.signing_key or place {PUB_NAME} beside the policy)")
        return Path(named).expanduser() if named else beside
    if beside.exists():
        return beside
    return None


def verify(policy_file: Path, raw: bytes, pub_file: Path) -> None:
    pub = Ed25519PublicKey.from_public_bytes(_read_key(pub_file, PUB_TAG, "policy signing public key"))
    sig_path = Path(str(policy_file) + ".sig")
    try:
        sig = base64.b64decode(sig_path.read_text().strip(), validate=True)
    except FileNotFoundError:
        raise PolicySignatureError(
            f"policy file {policy_file} must be signed but {sig_path} is missing; "
            f"sign it with `tracecap policy sign {policy_file} --key KEYFILE`") from None
    except (binascii.Error, ValueError, OSError):
        sig = b""
    try:
        pub.verify(sig, CONTEXT + raw)
    except (InvalidSignature, ValueError):
        raise PolicySignatureError(
            f"policy file {policy_file} does not match its signature {sig_path} (edited after signing, "
            f"or signed with another key); sign it again with the org policy signing key") from None
