"""Checks a rule can ask for after its pattern matched: pure functions of the matched text.

Takes the secret (the rule's group, quotes trimmed), the whole match and up to 64 characters of
text before the match; gives True when the match should be redacted. Promise: no I/O, no state; each function is total (never raises on any str).
A rule names its check in its `validator` column; `VALIDATORS` maps those names to functions.
"""
from __future__ import annotations

import math
from collections import Counter

# Values that look assigned but are types, keywords or placeholders for "nothing", not secrets.
_NON_SECRET_WORDS = frozenset(
    "true false null none nil undefined yes no on off str string int integer bytes bool boolean "
    "optional required object any dict list tuple float number self cls this secret password "
    "token passwd pwd key value env default empty redacted".split()
)
# Key names whose value describes a secret rather than being one: `token_type`, `secret_name`, ...
_DESCRIPTIVE_SUFFIXES = (
    "type", "kind", "count", "len", "length", "size", "limit", "name", "names", "id", "ids", "url", "uri",
    "endpoint", "file", "path", "dir", "env", "var", "field", "label", "prefix", "suffix", "format",
    "header", "ttl", "expiry", "expires", "expiration", "timeout", "policy", "ref", "arn", "index",
    "pattern", "regex", "class", "cls", "mode", "version", "scope", "scopes", "location", "provider",
)
_REFERENCE_PREFIXES = ("$", "%(", "%{", "{{", "{%", "<", "#{", "@{")
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def shannon_entropy(text: str) -> float:
    """Bits per character of `text` (0.0 for the empty string)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def luhn_ok(secret: str, match: str = "", before: str = "") -> bool:
    """A payment card number: 13-19 digits passing the Luhn checksum."""
    digits = [int(c) for c in secret if c.isdigit()]
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def public_ipv4(secret: str, match: str = "", before: str = "") -> bool:
    """A dotted quad that is a routable-looking address, not loopback, unspecified or a netmask."""
    parts = secret.split(".")
    if len(parts) != 4:
        return False
    try:
        octets = [int(p) for p in parts]
    except ValueError:
        return False
    if any(o > 255 for o in octets) or any(len(p) > 1 and p[0] == "0" for p in parts):
        return False
    if octets[0] in (0, 127, 255) or octets[0] >= 224:
        return False
    if octets[:3] in ([192, 0, 2], [198, 51, 100], [203, 0, 113]):  # RFC 5737 documentation ranges
        return False
    return True


def phone_digits(secret: str, match: str = "", before: str = "") -> bool:
    """Between 10 and 15 digits, not all the same."""
    digits = [c for c in secret if c.isdigit()]
    return 10 <= len(digits) <= 15 and len(set(digits)) > 2


def is_reference(value: str) -> bool:
    """`$VAR`, `${VAR}`, `%(name)s`, `{{ secrets.X }}`, `<placeholder>` and the like."""
    v = value.strip()
    if v.startswith(_REFERENCE_PREFIXES):
        return True
    if "{" in v and "}" in v:  # format templates: "{token}", f"{self.token}"
        return True
    return False


def _is_identifier_path(v: str) -> bool:
    parts = v.split(".")
    return all(p and (p[0].isalpha() or p[0] == "_") and set(p) <= _IDENT_CHARS for p in parts)


def literal_secret(secret: str, match: str = "", before: str = "") -> bool:
    """The value of a secret-like assignment is a literal, not a reference, type or expression.

    Quoted values are literals unless they are templates or placeholders. Unquoted values must not
    be code: an identifier path such as `self.token` or `args.api_key` is accepted only when it has
    the spread of characters of a generated secret; a bare word is accepted in env style
    (`API_TOKEN=abc`) where the key is upper case and `=` has no spaces around it.
    """
    v = secret.strip()
    if len(v) < 4 or is_reference(v) or _descriptive_key(match):
        return False
    low = v.lower()
    if low in _NON_SECRET_WORDS or len(set(v)) <= 2:
        return False
    if low.startswith(("sha1-", "sha256-", "sha384-", "sha512-", "http://", "https://", "file:")):
        return False
    quoted = _quoted_in(match, secret)
    if quoted:
        return not low.startswith(("your", "my-", "my_", "xxx", "***", "...", "change"))
    if v.replace(".", "").replace("_", "").replace("-", "").isdigit():
        return False
    if v[:1] in ("*", "&") and all(c.isalpha() or c in "_-" for c in v[1:]):
        return False  # a YAML alias or anchor (`*defaults`), not a password that starts with `*`
    if any(c in v for c in "()[]"):
        return False
    if _is_identifier_path(v):
        if "." in v:
            return _looks_generated(v)
        return _env_style(match) or _looks_generated(v) or (_starts_line(before) and _has_alnum_mix(v))
    return True


def _descriptive_key(match: str) -> bool:
    key = ""
    for ch in match.lstrip("\"'`"):
        if ch.isalnum() or ch in "_.-":
            key += ch
        else:
            break
    last = key.lower().replace("-", "_").rsplit(".", 1)[-1]
    return any(last == s or last.endswith("_" + s) for s in _DESCRIPTIVE_SUFFIXES)


def _starts_line(before: str) -> bool:
    """The key begins its line (YAML, INI, .env), not the middle of an expression."""
    line = before.rsplit("\n", 1)[-1]
    return line.strip() in ("", "-", "export", "+", "-    ")


def _has_alnum_mix(v: str) -> bool:
    return len(v) >= 6 and any(c.isdigit() for c in v) and any(c.isalpha() for c in v)


def _quoted_in(match: str, secret: str) -> bool:
    i = match.rfind(secret)
    return i > 0 and match[i - 1] in "\"'`"


def _env_style(match: str) -> bool:
    key, sep, _ = match.partition("=")
    key = key.strip().strip("\"'")
    if not sep or key != key.rstrip() or match[len(key):len(key) + 1] != "=":
        return False
    name = key.split()[-1] if key.split() else key
    return name.isupper() or name.replace("_", "").isupper()


def _looks_generated(v: str) -> bool:
    """Mixed letters and digits with a high spread: a generated credential, not a code name."""
    has_digit = any(c.isdigit() for c in v)
    has_alpha = any(c.isalpha() for c in v)
    return len(v) >= 12 and has_digit and has_alpha and shannon_entropy(v) >= 3.3


def generated_secret(secret: str, match: str = "", before: str = "") -> bool:
    """A high-entropy run of mixed character classes (not a hex digest, UUID or lockfile hash)."""
    v = secret.strip()
    low = v.lower()
    if low.startswith(("sha1-", "sha256-", "sha384-", "sha512-")) or is_reference(v):
        return False
    classes = sum((any(c.islower() for c in v), any(c.isupper() for c in v),
                   any(c.isdigit() for c in v)))
    return classes == 3 and shannon_entropy(v) >= 3.6


def not_reference(secret: str, match: str = "", before: str = "") -> bool:
    """Anything but a `$VAR`/template reference or a placeholder word."""
    v = secret.strip().strip("\"'")
    return bool(v) and not is_reference(v) and v.lower() not in _NON_SECRET_WORDS


_SERVICE_USERS = frozenset({"git", "hg", "svn", "ssh", "ubuntu", "ec2-user", "root", "admin"})


def email_address(secret: str, match: str = "", before: str = "") -> bool:
    """An address, not `user@host` inside a URL or SSH/scp syntax such as `git@github.com:`."""
    words = before.split()
    if words and not before[-1:].isspace() and "://" in words[-1]:
        return False
    return secret.split("@", 1)[0].lower() not in _SERVICE_USERS


VALIDATORS = {
    "email": email_address,
    "luhn": luhn_ok,
    "ipv4": public_ipv4,
    "phone": phone_digits,
    "literal": literal_secret,
    "generated": generated_secret,
    "not-reference": not_reference,
}
