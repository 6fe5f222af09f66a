"""The admin policy: where it is, what it says, and what is in force when it says nothing.

Takes a TOML file (or none); gives `Policy`, whose `.data` is the full policy with every default
filled in. Promise: a policy that loads is valid against `schemas/policy.schema.json` and every admin
redaction rule compiles; anything else raises `PolicyError` with one sentence naming the file, the key
path and the reason. Unknown keys are errors, so a typo can never silently weaken privacy.

Signed policies (`agent/policy_signing.py`): when the policy requires a signature, or an org signing
public key lies beside it, the file must match its detached `<file>.sig`.

Tamper resistance (like sshd's StrictModes): the file must be owned by root or the current user and
writable by nobody else, or it is refused (`PolicyError`), because a policy another local user can
edit could quietly widen capture.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.paths import StatePaths
from redaction import paths as _redaction_paths

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "policy.schema.json"

DEFAULT_NEVER_CAPTURE = list(_redaction_paths.DEFAULT_NEVER_CAPTURE)

DEFAULTS: dict[str, Any] = {
    "consent": {"mode": "opt-in"},
    "capture": {
        "roots": ["~"],
        "exclude": ["**/node_modules/**"],
        "sources": ["files", "shell", "tests", "git", "tools", "input"],
        "debounce_ms": 300,
        "max_file_bytes": "1MiB",
        "diff_cache_bytes": "64MiB",
        "repo_depth": 4,
    },
    "shell": {"ignore_space": True, "pytest_junit": True, "spool_max_bytes": "16MiB"},
    "tools": {
        "interval_ms": 250,
        "allow": [],
        "deny": [],
        "agents": ["claude", "codex", "aider", "cursor-agent", "copilot", "goose", "gemini",
                   "opencode"],
    },
    "input": {"window": "10s", "idle_timeout": "120s", "titles": True},
    "redaction": {
        "content": "full",
        "rules": [],
        "never_capture": DEFAULT_NEVER_CAPTURE,
        "ip_addresses": False,
        "phone_numbers": True,
        "hmac_key": "",
        "max_scan_bytes": "256KiB",
    },
    "upload": {
        "url": "",  # "" = personal mode: file:// into the user's state (see resolve_personal)
        "recipients": [],  # [] = personal mode: the org key pair generated under the user's state
        "token": "",
        "interval": "60s",
        "hold": "0s",
        "ca_bundle": "",
        "client_cert": "",
        "client_key": "",
        "timeout": "30s",
        "backoff_max": "300s",
        "bundle_bytes": "8MiB",
        "zstd_level": 3,
    },
    "spool": {"max_bytes": "1GiB", "fsync_ms": 200, "reorder_ms": 250, "segment_bytes": "16MiB"},
    "policy": {"require_signature": False, "signing_key": ""},
}

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
               "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


class PolicyError(UsageError):
    """The policy file is missing a requirement; str() is one sentence (exit 2)."""


def parse_duration(text: str) -> float:
    """'90s' -> 90.0 seconds. Accepts ms, s, m, h, d. Raises ValueError with the accepted forms."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration; use a number and a unit such as 90s, 15m, 2h, 1d")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: int | str) -> int:
    """'64MiB' -> 67108864; ints pass through."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a size; use bytes or a unit such as 512KiB, 64MiB, 1GiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclasses.dataclass(frozen=True)
class Policy:
    data: dict[str, Any]
    origin: str  # path of the file, or "built-in default (personal mode)"
    digest: str  # sha256 of the file bytes, or of the canonical JSON of the defaults
    personal: bool  # uploads go to the user's own state and the user holds the org key

    def get(self, dotted: str) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            node = node[part]
        return node

    def duration(self, dotted: str) -> float:
        return parse_duration(self.get(dotted))

    def size(self, dotted: str) -> int:
        return parse_size(self.get(dotted))

    def summary(self) -> dict[str, Any]:
        return {"origin": self.origin, "digest": self.digest, "personal": self.personal,
                "consent_mode": self.data["consent"]["mode"],
                "sources": list(self.data["capture"]["sources"]),
                "roots": list(self.data["capture"]["roots"]),
                "content": self.data["redaction"]["content"],
                "upload_url": self.data["upload"]["url"]}


def default_policy_path(env: dict | os._Environ | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("TRACECAP_POLICY"):
        return Path(env["TRACECAP_POLICY"]).expanduser()
    if sys.platform == "darwin":
        return Path("/Library/Application Support/tracecap/policy.toml")
    if sys.platform == "win32":
        return Path(env.get("ProgramData", r"C:\ProgramData")) / "tracecap" / "policy.toml"
    return Path("/etc/tracecap/policy.toml")


def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _key_path(error: Any) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        # jsonschema reports the parent; name the offending key itself.
        extra = re.findall(r"'([^']+)' was unexpected", error.message)
        if extra:
            parts.append(extra[0])
    return ".".join(parts) or "(top level)"


def _reason(error: Any) -> str:
    if error.validator == "additionalProperties":
        return "unknown key (check its spelling against the policy schema)"
    if error.validator == "enum":
        return "must be one of " + ", ".join(json.dumps(v) for v in error.validator_value)
    if error.validator == "type":
        return f"must be of type {error.validator_value}"
    if error.validator == "pattern":
        return f"{error.instance!r} does not have the expected form"
    return error.message


def validate_document(doc: dict, origin: str) -> None:
    """Schema and rule checks; raises PolicyError naming the file, key path and reason."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        e = errors[0]
        raise PolicyError(f"policy file {origin}: key {_key_path(e)}: {_reason(e)}")
    rules = doc.get("redaction", {}).get("rules", [])
    if rules:
        try:
            from redaction import RuleError, compile_admin_rules
        except ImportError:  # the engine is part of the package; keep loading usable while it lands
            return
        try:
            compile_admin_rules(rules)
        except RuleError as exc:
            raise PolicyError(f"policy file {origin}: key redaction.rules: {exc}") from None


def check_file_ownership(path: Path) -> None:
    """StrictModes: refuse a policy that someone other than root or this user could have edited."""
    st = path.stat()
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is None:
        return
    if st.st_uid not in (0, uid):
        raise PolicyError(
            f"policy file {path} is owned by uid {st.st_uid}, not root or you; "
            f"make root its owner (chown root {path})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PolicyError(
            f"policy file {path} is writable by other users; remove that (chmod go-w {path})")


def load_policy_file(path: Path, *, strict_modes: bool = True) -> Policy:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist; check the path") from None
    except OSError as exc:
        raise PolicyError(f"policy file {path} cannot be read ({exc.strerror}); check its permissions") from None
    if strict_modes:
        check_file_ownership(path)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path} is not valid TOML: {exc}; fix the syntax there") from None
    validate_document(doc, str(path))
    from agent import policy_signing

    pub = policy_signing.required_key(path, doc)
    if pub is not None:
        policy_signing.verify(path, raw, pub)
    data = _merge(DEFAULTS, doc)
    personal = not data["upload"]["url"] and not data["upload"]["recipients"]
    return Policy(data=data, origin=str(path), digest=hashlib.sha256(raw).hexdigest(), personal=personal)


def builtin_policy() -> Policy:
    canon = json.dumps(DEFAULTS, sort_keys=True).encode()
    return Policy(data=copy.deepcopy(DEFAULTS), origin="built-in default (personal mode)",
                  digest=hashlib.sha256(canon).hexdigest(), personal=True)


def load_effective_policy(env: dict | os._Environ | None = None) -> Policy:
    """The admin policy if its file exists, else the built-in default (personal mode)."""
    path = default_policy_path(env)
    if not path.exists():
        env = os.environ if env is None else env
        if env.get("TRACECAP_POLICY"):
            raise PolicyError(f"policy file {path} (from TRACECAP_POLICY) does not exist; "
                              f"fix the path or unset TRACECAP_POLICY")
        return builtin_policy()
    return load_policy_file(path)


def resolve_upload(policy: Policy, paths: StatePaths) -> tuple[str, list[Path]]:
    """The upload URL and recipient key files in force. Personal mode (neither set) uploads into
    `<state>/uploads` and encrypts to the org key pair generated under the user's keys directory."""
    url = policy.data["upload"]["url"] or (paths.outbox.parent / "uploads").as_uri()
    recipients = [Path(p).expanduser() for p in policy.data["upload"]["recipients"]]
    if not recipients:
        recipients = [paths.keys / "org.pub"]
    return url, recipients


def load_hmac_key(policy: Policy, paths: StatePaths) -> bytes:
    """The key for `hash` redactions: the policy's, or 32 random bytes kept 0600 in user state, so
    pseudonyms are stable on this machine and useless to anyone without the key."""
    if policy.data["redaction"]["hmac_key"]:
        return policy.data["redaction"]["hmac_key"].encode()
    keyfile = paths.keys / "redaction.key"
    try:
        return keyfile.read_bytes()
    except FileNotFoundError:
        pass
    paths.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key
