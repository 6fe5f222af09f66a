"""The admin policy: where it is, what it says, and what is in force when it says nothing.

Takes a TOML file (or none); gives `Policy`, whose `.data` is the full policy with every default
filled in. Promise: a policy that loads is valid against `schemas/policy.schema.json` and every admin
redaction rule compiles; anything else raises `PolicyError` with one sentence naming the file, the key
path and the reason. Unknown keys are errors, so a typo can never silently weaken privacy.

Signed policies (`agent/policy_signing.py`): when the policy requires a signature, or an org signing
public key lies beside it, the file must match its detached `<file>.sig`.

Tamper resistance (like sshd's StrictModes): the file must be owned by root or the current user and
writable by nobody else, and so must every directory above it (the one holding it may not be
writable by others even with the sticky bit, since they could create files there; higher up the
sticky bit suffices), or it is refused (`PolicyError`), because a policy another local user can
edit or replace could quietly widen capture. The file is opened once without following a symbolic
link, its owner and mode are checked on the open descriptor and its bytes read from that same
descriptor, so a rename between check and read cannot slip another file in.

Applicable, not only valid: a policy that loads has every recipient key loaded, its TLS files read,
its redaction and capture settings built, no NUL in any string, no duration or size below its
lower bound (`MIN_DURATIONS`, `MIN_SIZES`), and nesting no deeper than `MAX_DEPTH`; so
`policy check` refuses exactly what the daemon could not run with.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
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


# Lower bounds: below these a wait becomes a spin (a zero interval or timeout) or a size makes
# every record its own bundle or segment. `upload.hold` may be 0s (no review window).
MIN_DURATIONS = {"upload.interval": 1.0, "upload.timeout": 1.0, "upload.backoff_max": 1.0,
                 "input.window": 1.0, "input.idle_timeout": 1.0}
MIN_SIZES = {"upload.bundle_bytes": 1 << 10, "spool.max_bytes": 4 << 10, "spool.segment_bytes": 1 << 10,
             "shell.spool_max_bytes": 4 << 10, "redaction.max_scan_bytes": 1 << 10}
MIN_INTEGERS = {"capture.debounce_ms": 10}
MAX_DEPTH = 16  # tables and arrays inside one another; the schema needs 4
MAX_POLICY_BYTES = 1 << 20


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


def check_file_ownership(path: Path, st: os.stat_result | None = None) -> None:
    """StrictModes: refuse a policy that someone other than root or this user could have edited.
    `st`: the open descriptor's fstat (the file actually read), else the path is stat'ed."""
    st = path.stat() if st is None else st
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


def check_directories(path: Path) -> None:
    """Every directory above the policy is owned by root or this user and not writable by others
    (higher up, the sticky bit is enough; the policy's own directory must not be writable by
    others at all). Checked along the path as given and along the resolved path."""
    if not hasattr(os, "getuid"):
        return
    uid = os.getuid()
    given = Path(os.path.abspath(path)).parent
    real = Path(os.path.realpath(given))
    seen: set[Path] = set()
    for chain in ([given, *given.parents], [real, *real.parents]):
        for i, d in enumerate(chain):
            if d in seen:
                continue
            seen.add(d)
            try:
                st = d.stat()
            except OSError as exc:
                raise PolicyError(f"policy file {path}: its directory {d} cannot be examined "
                                  f"({exc.strerror}); check its permissions") from None
            if st.st_uid not in (0, uid):
                raise PolicyError(
                    f"policy file {path} is under {d}, which is owned by uid {st.st_uid}, not root or "
                    f"you, so its owner could replace the policy; keep the policy in a directory "
                    f"owned by root such as /etc/tracecap")
            if not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                continue
            if i == 0:
                why = (" (the sticky bit, as on /tmp, still lets them create files there)"
                       if st.st_mode & stat.S_ISVTX else "")
                raise PolicyError(
                    f"policy file {path} is in {d}, which other users can write{why}, so they "
                    f"could replace the policy; move it into a directory only root can write, "
                    f"such as /etc/tracecap")
            if not st.st_mode & stat.S_ISVTX:
                raise PolicyError(
                    f"policy file {path} is under {d}, which other users can write, so they could "
                    f"replace the directories above the policy; remove that (chmod go-w {d})")


def _read_policy_bytes(path: Path, strict_modes: bool) -> bytes:
    """Open once (no symlink followed, no blocking on a FIFO), check what was opened, read it."""
    # First: where others can write, nothing else about the file matters. Asked of the directory,
    # not of the file, which a swap loop may have renamed away at this instant and back by the open.
    if strict_modes and os.path.isdir(os.path.dirname(os.path.abspath(path))):
        check_directories(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist; check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PolicyError(f"policy file {path} is a symbolic link, which is not followed (its "
                              f"target could be swapped); point to the file itself") from None
        raise PolicyError(f"policy file {path} cannot be read ({exc.strerror}); "
                          f"check its permissions") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(f"policy file {path} is not a regular file; point to a TOML file")
        if strict_modes:
            check_file_ownership(path, st)
        if st.st_size > MAX_POLICY_BYTES:
            raise PolicyError(f"policy file {path} is larger than {MAX_POLICY_BYTES >> 20} MiB; "
                              f"a policy is a few kilobytes, check the path")
        chunks, total = [], 0
        while total <= MAX_POLICY_BYTES:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError as exc:
                raise PolicyError(f"policy file {path} cannot be read ({exc.strerror}); "
                                  f"check the file") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_POLICY_BYTES:
            raise PolicyError(f"policy file {path} is larger than {MAX_POLICY_BYTES >> 20} MiB; "
                              f"a policy is a few kilobytes, check the path")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _depth_and_strings(doc: Any) -> tuple[int, list[tuple[str, str]]]:
    """(deepest nesting, [(key path, string)]) without recursion, so a deep document cannot
    exhaust the stack."""
    deepest, strings = 0, []
    todo: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while todo:
        node, where, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(node, dict):
            todo.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            todo.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, str):
            strings.append((where, node))
    return deepest, strings


def _check_bounds(doc: dict, origin: str) -> None:
    def given(dotted: str) -> Any:
        node: Any = doc
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    for key, low in MIN_DURATIONS.items():
        value = given(key)
        if value is not None and parse_duration(value) < low:
            raise PolicyError(f"policy file {origin}: key {key}: {value!r} is below the lowest "
                              f"allowed value {low:g}s; use at least {low:g}s")
    for key, low in MIN_SIZES.items():
        value = given(key)
        if value is not None and parse_size(value) < low:
            raise PolicyError(f"policy file {origin}: key {key}: {value!r} is below the lowest "
                              f"allowed size {low >> 10}KiB; use at least {low >> 10}KiB")
    for key, low in MIN_INTEGERS.items():
        value = given(key)
        if value is not None and value < low:
            raise PolicyError(f"policy file {origin}: key {key}: {value} is below the lowest "
                              f"allowed value {low}; use at least {low}")


def _check_regular_file(origin: str, key: str, value: str) -> Path:
    p = Path(value).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise PolicyError(f"policy file {origin}: key {key}: {value} does not exist; "
                          f"check the path") from None
    except OSError as exc:
        raise PolicyError(f"policy file {origin}: key {key}: {value} cannot be read "
                          f"({exc.strerror}); check its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise PolicyError(f"policy file {origin}: key {key}: {value} is not a regular file; "
                          f"check the path")
    return p


def check_applicable(data: dict, origin: str, *, strict_modes: bool = True) -> None:
    """Load and build everything the daemon would from this policy (defaults filled in), so a
    policy that passes cannot fail once applied. Raises PolicyError naming key and reason."""
    from schemas.keys import KeyFileError, load_org_public

    up = data["upload"]
    for i, r in enumerate(up["recipients"]):
        key = f"upload.recipients[{i}]"
        p = _check_regular_file(origin, key, r)
        if strict_modes:
            try:
                check_file_ownership(p)
            except PolicyError as exc:
                raise PolicyError(f"policy file {origin}: key {key}: the org public key "
                                  f"{str(exc).removeprefix('policy file ')}") from None
        try:
            load_org_public(p)
        except (KeyFileError, OSError) as exc:
            raise PolicyError(f"policy file {origin}: key {key}: {exc}") from None
    tls = {k: up[k] for k in ("ca_bundle", "client_cert", "client_key") if up[k]}
    for k, v in tls.items():
        _check_regular_file(origin, f"upload.{k}", v)
    if tls and up["url"].startswith("https://"):
        import ssl

        try:
            ctx = ssl.create_default_context(cafile=str(Path(tls["ca_bundle"]).expanduser())
                                             if "ca_bundle" in tls else None)
            if "client_cert" in tls:
                ctx.load_cert_chain(str(Path(tls["client_cert"]).expanduser()),
                                    str(Path(tls["client_key"]).expanduser()) if "client_key" in tls else None)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise PolicyError(f"policy file {origin}: key upload.{'/'.join(tls)}: the TLS files "
                              f"cannot be loaded ({exc}); check them with openssl") from None
    from agent.repos import CaptureSettings
    from agent.sources.tools import ToolsSettings

    for section, build in (("capture", CaptureSettings.from_policy), ("tools", ToolsSettings.from_policy)):
        try:
            build(data)
        except (ValueError, TypeError, OSError) as exc:
            raise PolicyError(f"policy file {origin}: key {section}: {exc}") from None
    try:
        from redaction import Redactor

        Redactor.from_policy(data["redaction"], hmac_key=b"\0" * 32, home=str(Path.home()),
                             username=None)
    except ImportError:
        pass
    except Exception as exc:  # whatever the engine cannot build, the daemon could not either
        raise PolicyError(f"policy file {origin}: key redaction: {exc}") from None


def load_policy_file(path: Path, *, strict_modes: bool = True) -> Policy:
    path = Path(path)
    raw = _read_policy_bytes(path, strict_modes)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path} is not valid TOML: {exc}; fix the syntax there") from None
    except RecursionError:
        doc = None
    depth, strings = _depth_and_strings(doc) if doc is not None else (MAX_DEPTH + 1, [])
    if depth > MAX_DEPTH:
        raise PolicyError(f"policy file {path} nests tables or arrays more than {MAX_DEPTH} deep; "
                          f"a policy needs no more than 4 levels, flatten it")
    for where, text in strings:
        if "\0" in text:
            raise PolicyError(f"policy file {path}: key {where}: contains a NUL character; "
                              f"remove it")
    validate_document(doc, str(path))
    try:
        _check_bounds(doc, str(path))
    except ValueError as exc:  # the schema's pattern passed, so this is unreachable in practice
        raise PolicyError(f"policy file {path}: {exc}") from None
    from agent import policy_signing

    pub = policy_signing.required_key(path, doc)
    if pub is not None:
        policy_signing.verify(path, raw, pub)
    data = _merge(DEFAULTS, doc)
    check_applicable(data, str(path), strict_modes=strict_modes)
    personal = not data["upload"]["url"] and not data["upload"]["recipients"]
    return Policy(data=data, origin=str(path), digest=hashlib.sha256(raw).hexdigest(), personal=personal)


def builtin_policy() -> Policy:
    canon = json.dumps(DEFAULTS, sort_keys=True).encode()
    return Policy(data=copy.deepcopy(DEFAULTS), origin="built-in default (personal mode)",
                  digest=hashlib.sha256(canon).hexdigest(), personal=True)


def load_effective_policy(env: dict | os._Environ | None = None) -> Policy:
    """The admin policy if its file exists, else the built-in default (personal mode)."""
    path = default_policy_path(env)
    # Where others can write, a missing policy proves nothing (it may be renamed away this instant,
    # to fall back on the default): the directory is judged before the file's absence is.
    if os.path.isdir(os.path.dirname(os.path.abspath(path))):
        check_directories(path)
    if not os.path.lexists(path):
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
