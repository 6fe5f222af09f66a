"""Checks a rule can ask for after its pattern matched: pure functions of the matched text.

Takes the secret (the rule's group, quotes trimmed), the whole match, up to 64 characters of text
before the match and up to 16 after it; gives True when the match should be redacted. Promise: no
I/O, no state; each function is total (never raises on any str).
A rule names its check in its `validator` column; `VALIDATORS` maps those names to functions.
"""
from __future__ import annotations

import base64
import binascii
import math
import zlib
from collections import Counter

# Values that look assigned but are types, keywords or placeholders for "nothing", not secrets.
_NON_SECRET_WORDS = frozenset(
    "true false null none nil undefined yes no on off str string int integer bytes bool boolean "
    "optional required object any dict list tuple float number self cls this secret password "
    "token passwd pwd key value env default empty redacted hs256 hs384 hs512 rs256 rs384 rs512 es256 es384 es512 "
    "ps256 ps384 ps512 eddsa sha256 sha384 sha512 aes128 aes256".split()
)
# Key names whose value describes a secret rather than being one: `token_type`, `secret_name`, ...
_DESCRIPTIVE_SUFFIXES = (
    "type", "kind", "count", "len", "length", "size", "limit", "name", "names", "id", "ids", "url", "uri",
    "endpoint", "file", "path", "dir", "env", "var", "field", "label", "prefix", "suffix", "format",
    "header", "ttl", "expiry", "expires", "expiration", "timeout", "policy", "ref", "arn", "index",
    "pattern", "regex", "class", "cls", "mode", "version", "scope", "scopes", "location", "provider",
    "source", "audience", "aud", "issuer", "realm", "method", "algorithm", "alg", "backend", "store", "encoder",
    "hint", "strategy", "lifetime", "rotation", "host", "port", "username", "user", "email", "enabled",
    "required", "endpoint", "arn", "policy", "manager", "service", "handler", "validator", "generator",
    "help", "text", "description", "desc", "message", "msg", "title", "tooltip", "placeholder", "caption",
    "prompt", "error", "warning", "hash", "hashed", "digest", "sha", "sha1", "sha256", "sha512", "md5", "checksum",
    "fingerprint", "at", "date", "time", "timestamp", "hasher", "hashers", "permission", "permissions", "engine",
    "namespace",
)
# Words that contain a secret-bearing word without being about a secret.
_NOT_SECRET_KEY_PARTS = ("tokeniz", "secretar", "passport", "passthrough", "bypass", "compass", "passenger",
                         "keyboard", "keystroke", "keyframe", "keyword", "monkey", "turkey", "hockey", "donkey")
_REFERENCE_PREFIXES = ("%(", "%{", "{{", "{%", "<", "#{", "@{")
# Tokens that are public by their provider's design: publishable keys shipped in browser code.
_PUBLIC_PREFIXES = ("pk_live_", "pk_test_", "pk.", "phc_")
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


# Whole values that stand for a secret without being one (after trailing digits and punctuation
# are stripped): `changeme`, `test123`, `dummy!`, `my-secret`, ...
_PLACEHOLDER_WORDS = frozenset(
    "changeme changeit example examples sample dummy placeholder test testing fake mock demo secret secrets "
    "password passwd passphrase pass pwd token tokens apikey key keys value values foo bar baz foobar qux "
    "xxx xyz abc todo tbd fixme none null nil redacted hidden masked removed omitted default empty unset "
    "notset insert replace here your mine qwerty asdf asdfgh qwertyuiop zxcvbn letmein "
    "supersecret topsecret mysecret mypassword mytoken yourtoken yoursecret yourpassword guest "
    "fixture fixtures stub notsecret nosecret".split()
)
# Words that, joined by `_`/`-`/`.`, make a name rather than a secret: `super_secret_password`,
# `your-api-key-here`, `db_password`.
_NAME_WORDS = _PLACEHOLDER_WORDS | frozenset(
    "my the a an some new old super top very real app api db database access private public auth client "
    "secret_key service user admin root prod dev staging local store storage account master signing "
    "refresh session id bearer basic oauth jwt github gitlab aws azure gcp slack stripe goes put enter "
    "set get required please for tests unit ci spec only insecure hello world lorem ipsum keyboard cat".split()
)
# Fragments no generated secret contains: a marked stand-in anywhere in the value.
_PLACEHOLDER_FRAGMENTS = (
    "example", "placeholder", "changeme", "change_me", "change-me", "changeit", "dummy", "xxxx", "****",
    "***", "...", "\u2026", "redacted", "your_", "your-", "yourtoken", "yourpassword", "yoursecret", "yourkey",
    "yourapi", "<your", "insert_", "insert-", "_here", "-here", "notreal", "not_real", "not-real",
    "not-a-", "fake_", "fake-", "sample_", "sample-", "replace_me", "replaceme", "replace-me", "fixme",
    "todo_", "secret_value", "####", "____", "----", "0000000", "1234567",
)
# Last words of a name given to a secret (a Kubernetes Secret, a key in it, a vault path).
_SECRET_NOUNS = frozenset("password passwords passwd secret secrets token tokens key keys credentials creds "
                          "credential pass apikey".split())
_KEYBOARD_RUNS = ("qwerty", "asdfgh", "zxcvbn", "qwertz", "azerty")


def shannon_entropy(text: str) -> float:
    """Bits per character of `text` (0.0 for the empty string)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _periodic(v: str, max_period: int) -> bool:
    """`v` is a short unit repeated (`abab`, `123123`, `4f4f4f...`)."""
    for p in range(1, min(max_period, len(v) // 2) + 1):
        if all(v[i] == v[i % p] for i in range(p, len(v))):
            return True
    return False


def _sequential(v: str) -> bool:
    """Every character one above (or below) the one before: `1234`, `abcdef`, `9876`."""
    if len(v) < 4:
        return False
    steps = {ord(b) - ord(a) for a, b in zip(v, v[1:])}
    return steps in ({1}, {-1})


def _longest_run(v: str) -> int:
    best = run = 0
    prev = ""
    for c in v:
        run = run + 1 if c == prev else 1
        prev = c
        best = max(best, run)
    return best


def is_placeholder(value: str) -> bool:
    """A stand-in for a secret: `changeme`, `<your-token>`, `xxxx`, `${VAR}`, `test123`, `1234`,
    `aaaa`, `your_api_key_here`, a value made only of key-name words, or a marked example."""
    v = value.strip().strip("\"'`")
    if len(v) < 4 or is_reference(v):
        return True
    low = v.lower()
    if any(f in low for f in _PLACEHOLDER_FRAGMENTS) or any(k in low for k in _KEYBOARD_RUNS):
        return True
    core = low.rstrip("0123456789!?.#_-*@ ")
    if core in _PLACEHOLDER_WORDS or (not core and not _random_digits(v)):
        return True
    parts = [p for p in low.replace("-", "_").replace(".", "_").replace(" ", "_").split("_") if p]
    if parts and all(p.rstrip("0123456789") in _NAME_WORDS or p.isdigit() for p in parts) \
            and not all(p.isdigit() for p in parts):
        return True  # `db_password`, `api_key_123`
    if core.isalpha() and _made_of_words(core):
        return True  # `mysecretvalue`, `supersecretpassword`, `changemeplease`
    if v.startswith("eyJ") and v.count(".") == 2 and not jwt_token(v):
        return True  # the JWT of the tutorials
    if len(parts) > 1 and all(p.isalpha() for p in parts) and low == low.lower() and parts[-1] in _SECRET_NOUNS \
            and ("-" in v or "_" in v):
        return True  # the name of a secret (`db-credentials`, `postgres-password`), not its value
    if len(parts) > 1 and all(len(p) >= 3 and (_sequential(p) or len(set(p)) == 1) for p in parts):
        return True  # `1234-5678-abcd`, `xxx-xxx-xxx`
    if len(set(low)) <= 2 or _periodic(low, 4 if len(low) < 16 else 8) or _sequential(low) \
            or _longest_run(v) >= max(5, len(v) // 2):
        return True
    return v[0] in "[(" and v[-1] in "])"  # `[REDACTED]`, `(hidden)`


def _random_digits(v: str) -> bool:
    """Twelve digits or more spread like a random number, not `1234…`, `0000…` or a date."""
    return v.isdigit() and len(v) >= 12 and shannon_entropy(v) >= 2.8 and not _sequential(v) \
        and _in_runs(v, 4) < len(v) // 2


def _made_of_words(word: str) -> bool:
    """`word` splits wholly into key-name words of two letters or more."""
    ok = [True] + [False] * len(word)
    for end in range(1, len(word) + 1):
        ok[end] = any(ok[start] and word[start:end] in _NAME_WORDS
                      for start in range(max(0, end - 14), end - 1))
    return ok[-1] and len(word) >= 6


def token_body_ok(token: str) -> bool:
    """A known-format token that is not a stand-in: no placeholder marks (`xxxx`, `EXAMPLE`,
    `your`, ellipses), no run of six equal characters, not a short unit repeated, and enough
    distinct characters for its length."""
    low = token.lower()
    for f in ("xxxx", "example", "placeholder", "your", "dummy", "redacted", "****", "...", "\u2026", "<", ">"):
        if f in low:
            return False
    if _longest_run(token) >= 6:
        return False
    # the longest alphanumeric stretch carries the random part
    best = ""
    cur = []
    for c in token + " ":
        if c.isalnum():
            cur.append(c)
        else:
            if len(cur) > len(best):
                best = "".join(cur)
            cur = []
    if len(best) >= 12 and (_periodic(best, 8) or len(set(best)) < min(8, len(best) // 3)):
        return False
    return _in_runs(best) < 0.6 * len(best)  # `abcdefghijklmnop0123456789`: typed, not generated


def _in_runs(v: str, least: int = 5) -> int:
    """How many characters of `v` sit in runs of `least` or more consecutive ones (`abcde`, `12345`)."""
    total = run = 1
    covered = 0
    for a, b in zip(v, v[1:]):
        if ord(b) - ord(a) == 1:
            run += 1
        else:
            if run >= least:
                covered += run
            run = 1
        total += 1
    return covered + (run if run >= least else 0)


def known_token(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """Format rules: the token passes `token_body_ok`, or carries a valid GitHub-style checksum."""
    return github_checksum_ok(secret) or token_body_ok(secret)


_B62 = ("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _base62(n: int, alphabet: str, width: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(alphabet[r])
    return "".join(reversed(out)).rjust(width, alphabet[0])


def github_checksum_ok(token: str) -> bool:
    """GitHub's prefixed tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`) end in six base62
    characters of a CRC32 over the 30 random ones. Either common reading of the alphabet and of what
    the CRC covers is accepted; a match by chance is one in about 10^10."""
    if len(token) != 40 or token[3] != "_" or not token.startswith("gh"):
        return False
    body, tail = token[4:34], token[34:]
    for covered in (body, token[:34]):
        crc = zlib.crc32(covered.encode("ascii", "replace"))
        if any(_base62(crc, a, 6) == tail for a in _B62):
            return True
    return False


def truncated_token(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A known prefix, some of the token, an ellipsis and maybe its end (pytest's shortened
    reprs): a secret unless the visible part is a stand-in (`ghu_xxxx...`)."""
    visible = secret.replace("\u2026", " ").replace("...", " ")
    head = visible.split(" ", 1)[0]
    body = head.split("_", 1)[-1].split("-", 1)[-1]
    mixed = any(c.isdigit() for c in body) or (any(c.isupper() for c in body) and any(c.islower() for c in body))
    return len(body) >= 4 and mixed and token_body_ok(visible) and not _periodic(body.lower(), 2) and len(set(body)) >= 3


def luhn_ok(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
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


# Issuer prefixes and the lengths their cards have (ISO/IEC 7812 ranges the networks publish).
_CARD_BRANDS = (
    (("4",), (13, 16, 19)),
    (("51", "52", "53", "54", "55") + tuple(str(p) for p in range(2221, 2721)), (16,)),
    (("34", "37"), (15,)),
    (("6011", "65") + tuple(str(p) for p in range(644, 650)), (16, 17, 18, 19)),
    (("36", "38", "39") + tuple(str(p) for p in range(300, 306)), (14, 15, 16, 17, 18, 19)),
    (tuple(str(p) for p in range(3528, 3590)), (16, 17, 18, 19)),
    (("62", "81"), (16, 17, 18, 19)),
    (("50", "56", "57", "58", "6"), (12, 13, 14, 15, 16, 17, 18, 19)),
    (("2200", "2201", "2202", "2203", "2204"), (16, 17, 18, 19)),
)


def payment_card(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A card number: a network's issuer prefix and length, the Luhn checksum, one kind of
    separator used consistently."""
    digits = "".join(c for c in secret if c.isdigit())
    seps = {c for c in secret if not c.isdigit()}
    if len(seps) > 1 or not luhn_ok(digits):
        return False
    return any(digits.startswith(prefixes) and len(digits) in lengths for prefixes, lengths in _CARD_BRANDS)


def public_ipv4(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
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
    words = before.lower().split()
    return not (words and words[-1] in ("version", "v", "ver", "release", "build", "firmware"))


_PHONE_REGIONS = ("US", "GB", "DE", "FR", "AU", "IN")
_PHONE_WORDS = ("tel", "phone", "mobile", "cell", "call", "fax", "sms", "whatsapp", "contact", "ring")


def phone_number(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A valid telephone number by libphonenumber: international (`+44 20 7946 0958`, `0044 ...`)
    or national in a region it is valid in; a bare run of digits only after a word such as
    `phone` or `tel`."""
    import phonenumbers

    digits = [c for c in secret if c.isdigit()]
    if not 7 <= len(digits) <= 15 or len(set(digits)) <= 2:
        return False
    if (after[:1] in ".,:/" and after[1:2].isdigit()) or before[-1:] in (".", ":", "/", "-") or before[-1:].isdigit():
        return False  # part of a decimal, a version, a time or a path
    v = secret.strip()
    if v.startswith("00"):
        v = "+" + v[2:]
    bare = v.replace("+", "").isdigit()
    if bare and not any(w in before.lower()[-40:] for w in _PHONE_WORDS):
        return False
    try:
        if v.startswith("+"):
            return phonenumbers.is_valid_number(phonenumbers.parse(v, None))
        # national: North American numbers have no trunk prefix, the others start with 0
        for region in (_PHONE_REGIONS if v.lstrip("(").startswith("0") else ("US",)):
            if phonenumbers.is_valid_number(phonenumbers.parse(v, region)):
                return True
    except phonenumbers.NumberParseException:
        return False
    return False


def iban_number(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """An IBAN with a valid country length and mod-97 check digits (python-stdnum)."""
    from stdnum import iban

    return iban.is_valid(secret)


def us_ssn(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A US Social Security number the SSA could issue (python-stdnum: area, group, serial and
    the numbers known from advertising), written `123-45-6789` or `123 45 6789`, or nine bare digits
    after `SSN`/`social security`."""
    from stdnum.us import ssn

    digits = "".join(c for c in secret if c.isdigit())
    if secret.isdigit() and not any(w in before.lower()[-40:] for w in ("ssn", "social security", "ss#")):
        return False
    return ssn.is_valid(digits)


def phone_digits(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """Between 10 and 15 digits, not all the same."""
    digits = [c for c in secret if c.isdigit()]
    return 10 <= len(digits) <= 15 and len(set(digits)) > 2


def _dollar_reference(v: str) -> bool:
    """`$VAR`, `$env:X`, `$this->x`, `$cfg['k']`, or a whole `${...}` / `$(...)`; not a secret that
    merely starts with `$` (`$(xsW4U)VQb+...`, as WordPress salts do). `$$NAME` and `$${NAME}` are
    the same, escaped for docker-compose or make."""
    if v.startswith("$$"):
        inner = v[2:]
        if inner[:1] in ("{", "("):
            v = v[1:]
        else:
            return bool(inner) and (inner[0].isalpha() or inner[0] == "_") and inner.replace("_", "").isalnum()
    if v[1:2] in ("{", "("):  # whole, or cut off at a space (`${PW:?set it}`, `$(cat pw.txt)`)
        close = "}" if v[1] == "{" else ")"
        return v.endswith(close) or close not in v
    return v[1:2].isalpha() or v[1:2] == "_"


def is_version(v: str) -> bool:
    """A version or a version range: `1.4.2`, `^9.0.2`, `~> 2.1`, `>=24.3.1`, `v2.0.0-rc.1`."""
    body = v.lstrip("^~<>=! v").strip()
    if not body or not body[0].isdigit():
        return False
    core, _, tail = body.partition("-")
    nums = core.split(".")
    return 2 <= len(nums) <= 4 and all(n.isdigit() and len(n) <= 8 for n in nums) \
        and all(c.isalnum() or c in ".-+" for c in tail)


def is_colour(v: str) -> bool:
    """A CSS colour (`#1f6feb`, `#fff`, `#1f6feb80`): a design token, not a secret."""
    return v[:1] == "#" and len(v) in (4, 5, 7, 9) and all(c in "0123456789abcdefABCDEF" for c in v[1:])


_SSH_KEY_TYPES = (b"ssh-rsa", b"ssh-dss", b"ssh-ed25519", b"ssh-ed448", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-")


def is_ssh_public_key(v: str) -> bool:
    """An SSH public key (`ssh-ed25519 AAAAC3…`), or its base64 blob alone: the blob names its key
    type (`\\0\\0\\0\\x0bssh-ed25519`), which a private key or a token does not."""
    v = v.strip().strip("\"'`")
    if v.startswith(tuple(t.decode() + " AAAA" for t in _SSH_KEY_TYPES)) or v.startswith("ecdsa-sha2-"):
        return True
    if not v.startswith("AAAA") or len(v) < 40:
        return False
    raw = b64decode(v.split()[0][:80])  # the head is enough to name the type (80: whole base64 quads)
    return raw is not None and raw[4:4 + 11].startswith(_SSH_KEY_TYPES)


def is_public_token(value: str) -> bool:
    """A publishable key (Stripe `pk_live_`, Mapbox `pk.`, PostHog `phc_`): public by design."""
    return value.strip().strip("\"'`").startswith(_PUBLIC_PREFIXES)


def is_reference(value: str) -> bool:
    """`$VAR`, `${VAR}`, `%(name)s`, `{{ secrets.X }}`, `<placeholder>` and the like."""
    v = value.strip()
    if v.startswith("$"):
        return _dollar_reference(v)
    if v.startswith(_REFERENCE_PREFIXES):
        return True
    if "{" in v and "}" in v:  # format templates: "{token}", f"{self.token}"
        inner = v[v.index("{") + 1:v.rindex("}")]
        # ... but not a secret kept in braces (Jenkins' `{AQAAAB...}`, ODBC's `{p@ss}`)
        return not (len(inner) >= 24 and inner.replace("+", "").replace("/", "").rstrip("=").isalnum()
                    and not inner.isalpha() and not inner.islower())
    if v.startswith("%") and (len(v) <= 3 or (v.endswith("%") and v[1:-1].replace("_", "").isalnum())):
        return True  # a bare `%s`, a Windows `%PASSWORD%`
    if v.startswith("%env(") and v.endswith(")%"):
        return True  # Symfony's `%env(DB_PASSWORD)%`, `%env(resolve:X)%`
    if len(v) > 4 and v[:2] == v[-2:] and v[:2] in ("##", "__", "%%") and v[2:-2].replace("_", "").replace(".", "").isalnum():
        return True  # a deploy tool's token: `##API_KEY##`, `__DB_PASSWORD__`
    inner = v.strip("@")
    if v.startswith("@") and v.endswith("@") and inner and inner.replace("_", "").replace(".", "").isalnum():
        return True  # a build tool's filter token: `@API_KEY@`, `@@TOKEN@@`, `@db.password@`
    if v[:1] == ":" and _is_identifier_path(v[1:]):
        return True  # a Ruby symbol: `api_key = :token`
    return _secret_store_reference(v)


# Where a value is kept rather than the value: 1Password, Vault, vals, cloud secret managers,
# SOPS, Doppler; `env:NAME` as openssl and others read it.
_STORE_SCHEMES = ("op", "vault", "awssm", "awsssm", "ssm", "secretsmanager", "gcpsm", "gcpsecrets", "azkv",
                  "keyvault", "akv", "sops", "secretref", "doppler", "infisical", "bw", "lpass", "gopass", "env",
                  "arn", "k8s", "kubernetes", "sm")


def _secret_store_reference(v: str) -> bool:
    """`op://vault/item/password`, `vault:secret/data/db#password`, `ref+awssecrets://db`,
    `arn:aws:secretsmanager:…`, `@Microsoft.KeyVault(SecretUri=…)`, GCP's
    `projects/p/secrets/s/versions/latest`, Jasypt's `ENC(…)` (encrypted for committing)."""
    if v.startswith(("@Microsoft.KeyVault(", "ref+")) or (v[:4] in ("ENC(", "enc(") and v.endswith(")")):
        return True
    if v.startswith("projects/") and "/secrets/" in v:
        return True
    scheme, sep, rest = v.partition(":")
    if not sep or not rest or " " in v or scheme.lower() not in _STORE_SCHEMES:
        return False
    path = rest.lstrip("/")
    return bool(path) and all(c.isalnum() or c in "_.-/#:@+" for c in path)


def _is_identifier_path(v: str) -> bool:
    parts = v.split(".")
    return all(p and (p[0].isalpha() or p[0] == "_") and set(p) <= _IDENT_CHARS for p in parts)


def literal_secret(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """The value of a secret-like assignment is a literal, not a reference, type or expression.

    Quoted values are literals unless they are templates or placeholders, and so is a value inside a
    quoted string (`"host=db password=x"`, `"Server=db;Password=x;"`) or written `key=value` with
    nothing around `=` and not followed by `,` or `)` (a keyword argument). Otherwise an unquoted value
    must not be code: an identifier path such as `self.token` or `args.api_key` is accepted only when
    it has the spread of characters of a generated secret; a bare word is accepted in env style
    (`API_TOKEN=abc`) where the key is upper case and `=` has no spaces around it.
    """
    v = secret.strip()
    if len(v) < 4 or is_reference(v) or _descriptive_key(match):
        return False
    low = v.lower()
    if low in _NON_SECRET_WORDS or is_placeholder(v) or _key_word(low, _key_of(match)) or is_public_token(v):
        return False
    if low.startswith(("sha1-", "sha256-", "sha384-", "sha512-", "http://", "https://", "file:")):
        return False
    if "://" in v and "@" not in v and " " not in v:
        return False  # a URL with no user in it (`kms://projects/…`, `vault://…`)
    if is_version(v) or is_colour(v) or is_ssh_public_key(v):
        return False  # `"jsonwebtoken": "^9.0.2"`, `--token-color-primary: #1f6feb`, `public_key = "ssh-ed25519 AAAA…"`
    if _in_template(before):
        return False  # `{{resolve:secretsmanager:db:SecretString:password}}`: inside a template expression
    if before.endswith("${") and v.startswith("?"):
        return False  # `${DB_PASSWORD:?must be set}`: the shell's message when it is not
    if " " in v and match[match.rfind(secret) - 1:match.rfind(secret)] == "`":
        return False  # TOKEN=`cat ~/.token`: a command's output
    if v[-1] in ")]}" and {")": "(", "]": "[", "}": "{"}[v[-1]] not in v and _is_identifier_path(v[:-1]) \
            and not any(c.isdigit() for c in v) and not _random_letters(v[:-1]):
        return False  # `{'token': token}`: a name, then the bracket that closes around it
    if _decodes_to_placeholder(v):
        return False  # a Kubernetes Secret's `password: cGFzc3dvcmQ=` is base64 of "password"
    if _is_path(v):
        return False  # `private_key: ~/.ssh/id_rsa`, `--from-file=password=./pw.txt`
    if _quoted_in(match, secret):
        return not _prose(v)
    if v.replace(".", "").replace("_", "").replace("-", "").isdigit():
        return v.isdigit() and len(v) >= 12 and shannon_entropy(v) >= 2.8 and _strong_key(match)  # a numeric secret
    if v.startswith("!!") or v[:1] in ("*", "&", "!") and all(c.isalpha() or c in "_-" for c in v[1:]):
        return False  # a YAML alias, anchor or tag (`*defaults`, `!vault`), not a password starting so
    if v.endswith("!") and "." in v and _is_identifier_path(v[:-1]) and not _looks_generated(v):
        return False  # TypeScript's non-null assertion: `process.env.API_KEY!`
    if any(c in v for c in "()[]") or _verb_noun(v):
        return False  # a call, or a PowerShell command (`$cred = Get-Credential`)
    if _inside_string(before) or (_tight_equals(match, secret) and after[:1] not in (",", ")", "(", ".")):
        return not (_is_identifier_path(v) and "." in v and not _looks_generated(v))
    if _is_identifier_path(v):
        if "." in v:
            return _looks_generated(v)
        return _env_style(match) or _looks_generated(v) or _random_letters(v) or (_starts_line(before)
                                                                                   and _has_alnum_mix(v))
    return True


def _in_template(before: str) -> bool:
    """The match starts inside an open `{{ … }}` of its line (not `${key:default}`, whose default is
    a literal)."""
    line = before.rsplit("\n", 1)[-1]
    return line.count("{{") > line.count("}}")


def _strong_key(match: str) -> bool:
    """The key says secret, token or password outright (not merely `key` or `auth`)."""
    key = _key_of(match).lower()
    return any(w in key for w in ("secret", "token", "passw", "pwd", "apikey", "api_key", "api-key"))


def _key_word(low: str, key: str) -> bool:
    """The value is the key's name or one word of it, digits aside: `POSTGRES_PASSWORD=postgres`,
    a service's documented default that the key itself names."""
    if not key:
        return False
    words = {w for w in _snake(key).lower().replace("-", "_").replace(".", "_").split("_") if len(w) >= 3}
    return low == key.lower() or low.rstrip("0123456789!") in words


def _is_path(v: str) -> bool:
    """A file path, not a secret: `~/`, `./`, `../`, or absolute with lower-case segments only
    (a base64 secret that starts with `/` has capitals)."""
    if " " in v:
        return False
    if v.startswith(("~/", "./", "../")):
        return True
    parts = v.split("/")
    return v.startswith("/") and len(parts) >= 3 and all(not any(c.isupper() for c in p) for p in parts)


def _decodes_to_placeholder(v: str) -> bool:
    if len(v) < 8 or len(v) % 4 or not v.rstrip("=").replace("+", "").replace("/", "").isalnum():
        return False
    raw = b64decode(v)
    if raw is None or not raw.isascii():
        return False
    text = raw.decode("ascii")
    return text.isprintable() and is_placeholder(text)


def context_value(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A value found by its place (XML element, `"key", "value"` pair, CLI flag, connection
    string): anything but a reference, a placeholder or the key's own name."""
    v = secret.strip().strip("\"'")
    if not v or is_reference(v) or is_placeholder(v) or v.lower() in _NON_SECRET_WORDS or is_public_token(v):
        return False
    if v.startswith("-") and not any(c.isdigit() for c in v):
        return False  # the next flag, not a value
    key = _key_of(match)
    return v.lower() != key.lower() and not _descriptive_key(_snake(key))


def _snake(name: str) -> str:
    """`passwordPolicy` -> `password_policy`, so camelCase keys meet the descriptive suffixes."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (name[i - 1].islower() or name[i - 1].isdigit()):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def pair_value(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """The literal beside a secret-bearing key in code (`{"AccountKey", "v"}`, `put("password",
    "v")`, `new X("token", "v")`): as `context_value`, and not words with spaces (a label), not a
    flag (`"--password", "-p"`), not a lower-case field name (`"password_hash"`)."""
    v = secret.strip()
    if " " in v or _flag_like(v) or any(w in v.lower() for w in ("password", "passwd", "secret", "token")):
        return False  # a label, the next flag, or another name (`"HTTPPasswordMgr"`, `"user:passwd"`)
    parts = v.split("_")
    if len(parts) > 1 and v.islower() and all(p.isalpha() for p in parts):
        return False
    return context_value(secret, match, before, after)


def _flag_like(v: str) -> bool:
    """`-p`, `--password`, `--db-pass`: a flag, not a password that starts with `-`."""
    body = v.lstrip("-")
    return v.startswith("-") and len(v) - len(body) <= 2 and bool(body) and body[0].isalpha() \
        and all(c.isalnum() or c == "-" for c in body) and not (any(c.isdigit() for c in body)
                                                               and any(c.isupper() for c in body))


_NOT_SETTERS = ("get", "load", "read", "fetch", "find", "lookup", "has", "is", "check", "verify", "validate",
                "hash", "encode", "encrypt", "decrypt", "prompt", "delete", "remove", "del", "clear", "require",
                "env", "ask", "input", "parse", "mask", "redact", "compare", "match", "print", "log", "describe")


def setter_value(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """`setPassword("v")`, `.apiKey("v")`: the literal given to a setter or builder (`match` is the
    function's name); not the name passed to a getter, checker or hasher (`get_password("svc")`)."""
    name = match.lower().lstrip("_.")
    if name.startswith(_NOT_SETTERS):
        return False
    return pair_value(secret, match, before, after)


_WEAK_PARAMS = frozenset(("key", "code", "sessionid", "session_id"))


def url_param(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A secret-bearing query parameter (`match` is its name). `key` and `code` also name search
    terms and status codes, so their value must look generated; the others only need to be no
    placeholder."""
    from urllib.parse import unquote

    v = unquote(secret)
    if match.lower() in _WEAK_PARAMS:
        hexlike = len(v) >= 32 and all(c in "0123456789abcdefABCDEF-" for c in v)
        return (hexlike or _looks_generated(v) or generated_secret(v)) and not is_placeholder(v)
    return context_value(v, match, before, after)


def _key_of(match: str) -> str:
    key = ""
    for ch in match.lstrip("\"'`<-"):
        if ch.isalnum() or ch in "_.-":
            key += ch
        else:
            break
    return key


def _descriptive_key(match: str) -> bool:
    key = _snake(_key_of(match))
    if any(p in key.lower() for p in _NOT_SECRET_KEY_PARTS):
        return True
    last = key.lower().replace("-", "_").rsplit(".", 1)[-1]
    if last.startswith(("existing_", "public_")) or last.endswith(("password_key", "passwords_key", "signingkey")):
        return True  # `existingSecret`, `adminPasswordKey`: which Secret, which key in it; `public_token`
    if last.endswith(("secret_id", "secretid")):
        return False  # Vault's AppRole and Consul's SecretID are the credential, not its name
    return any(last == s or last.endswith("_" + s) for s in _DESCRIPTIVE_SUFFIXES)


def _starts_line(before: str) -> bool:
    """The key begins its line (YAML, INI, .env), not the middle of an expression."""
    line = before.rsplit("\n", 1)[-1]
    return line.strip() in ("", "-", "export", "+", "-    ")


def _inside_string(before: str) -> bool:
    """The match starts inside a quoted string of its line: an odd number of `"` (or `'`) before."""
    line = before.rsplit("\n", 1)[-1].replace('\\"', '"')
    return line.count('"') % 2 == 1 or (line.count("'") % 2 == 1 and '"' not in line)


def _tight_equals(match: str, secret: str) -> bool:
    """`key=value` with nothing between key, `=` and value (shell, INI, connection strings)."""
    i = match.rfind(secret)
    return i > 1 and match[i - 1] == "=" and match[i - 2] not in " \t:=!<>"


def _verb_noun(v: str) -> bool:
    verb, sep, noun = v.partition("-")
    return bool(sep) and verb[:1].isupper() and verb[1:].islower() and noun[:1].isupper() and noun.isalpha()


_STOPWORDS = frozenset("a an the to of is are be must your you for with at in on and or not least this that "
                       "it by from as can will should please".split())


def _prose(v: str) -> bool:
    """A sentence (`Password must be at least 12 characters`): four words or more, two of them
    the small words prose is made of, which a passphrase of chosen words seldom holds."""
    words = v.split()
    return len(words) >= 4 and sum(w.lower().strip(".,!?:;") in _STOPWORDS for w in words) >= 2


def _random_letters(v: str) -> bool:
    """Letters only (a separator or two aside), but cased at random (`YBeRzUNcBBJcqipTcDkiG`), not
    camelCase words: the case flips at least at 40% of the positions."""
    letters = v.replace("_", "").replace("-", "")
    if len(v) < 16 or len(letters) < 14 or not letters.isalpha() or len(letters) < len(v) - 2:
        return False  # at most two `_`/`-` between the letters (`PQHzOh_eTBhJExRC`)
    flips = sum(a.isupper() != b.isupper() for a, b in zip(letters, letters[1:]))
    return flips >= 0.4 * len(letters) and shannon_entropy(letters) >= 3.5


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


def generated_secret(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A high-entropy run of mixed character classes (not a hex digest, UUID or lockfile hash)."""
    v = secret.strip()
    low = v.lower()
    if low.startswith(("sha1-", "sha256-", "sha384-", "sha512-", "sha1:", "sha256:", "sha512:")) or is_reference(v):
        return False
    lead = match[:match.rfind(v)].lower() if v and v in match else ""
    if lead.endswith(("sha1:", "sha256:", "sha384:", "sha512:", "md5:")) or is_public_token(v):
        return False  # an SSH or GPG fingerprint (`SHA256:...`), a digest named by its algorithm
    named = (before.rsplit("\n", 1)[-1][-12:] + lead).lower()
    if is_ssh_public_key(v) or lead.rstrip(" \t\"':").endswith(_JWK_PUBLIC) or "public" in named or "pubkey" in named:
        return False  # an SSH public key, a key named public; a JSON Web Key's public members (`"n"`, `"x"`)
    if is_placeholder(v) or _qualified_name(v) or after[:1] == "(":
        return False  # ... or a call (`key = Ed25519PrivateKey.generate()`)
    raw = b64decode(v) if len(v) >= 16 else None
    if raw is not None:
        if b"CERTIFICATE" in raw[:48] or b"PUBLIC KEY" in raw[:48]:
            return False  # a public certificate or key, base64 of its PEM
        if credentials_in_base64(v):
            return True
    classes = sum((any(c.islower() for c in v), any(c.isupper() for c in v),
                   any(c.isdigit() for c in v)))
    return classes == 3 and shannon_entropy(v) >= 3.6


def _qualified_name(v: str) -> bool:
    """A dotted name in code (`django.contrib.auth.hashers.Argon2PasswordHasher`): two parts or more
    that are lower-case words."""
    parts = v.split(".")
    return len(parts) >= 3 and _is_identifier_path(v) and sum(p.isalpha() and p.islower() and len(p) >= 3
                                                              for p in parts) >= 2


_JWK_PUBLIC = ('"n', '"e', '"x', '"y')


def password_like(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A word after a secret word with no sign between (`password Kq2-xL9!`, `the token is …`): a
    secret only when it reads like one: letters with digits or symbols, eight characters or more,
    no placeholder, reference, path or version."""
    v = secret.strip().strip("\"'").rstrip(".")
    if len(v) < 8 or is_reference(v) or is_placeholder(v) or _is_path(v) or is_version(v) or "://" in v \
            or (v.endswith(")") and "(" in v):
        return False  # ... or a call or a column type (`VARCHAR(255)`)
    has_alpha = any(c.isalpha() for c in v)
    other = any(c.isdigit() for c in v) or any(not c.isalnum() and c not in "-_." for c in v)
    return (has_alpha and other and (not _is_identifier_path(v) or _looks_generated(v))) or _random_letters(v)


def session_id(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A session id or a webhook's secret path part: 16 characters or more, letters and digits,
    spread like a random value (`q7k2m9x4v1n8b3c6…`, `9A7C3E1B5D2F…`), not a placeholder."""
    v = secret.strip().strip("\"'")
    if len(v) < 16 or is_reference(v) or is_placeholder(v) or "://" in v or "%3A%2F%2F" in v.upper():
        return False  # ... or a URL kept in a cookie (`auth_redirect=https%3A%2F%2F…`)
    return any(c.isdigit() for c in v) and any(c.isalpha() for c in v) and shannon_entropy(v) >= 3.0


def url_token_user(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A token as a URL's user name (`https://TOKEN@github.com/...`); not a Sentry DSN's public key,
    which Sentry documents as safe to publish."""
    return "sentry" not in match.lower() and session_id(secret)


def webhook_token(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A webhook URL's secret path part; a UUID there is more often the webhook's id in an API path."""
    return session_id(secret) and not _is_uuid(secret)


def _is_uuid(v: str) -> bool:
    parts = v.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(c in "0123456789abcdefABCDEF" for p in parts for c in p)


def jwt_token(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """A JSON Web Token, unless its claims are documentation's (`"name": "John Doe"`, jwt.io's `"iat":
    1516239022`, an `example.com` issuer or address): the token every JWT tutorial shows is no secret."""
    import json

    parts = secret.split(".")
    if len(parts) < 3 or not token_body_ok(parts[2]):
        return False
    raw = b64decode(parts[1])
    try:
        claims = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return True
    if not isinstance(claims, dict):
        return True
    values = [str(v).lower() for v in claims.values() if isinstance(v, (str, int))]
    return not any(v in ("john doe", "jane doe", "1516239022") or "example." in v for v in values)


def not_reference(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """Anything but a `$VAR`/template reference or a placeholder word."""
    v = secret.strip().strip("\"'")
    if not v or is_reference(v) or v.lower() in _NON_SECRET_WORDS or is_placeholder(v) or v.startswith("("):
        return False  # ... or an expression: `-Password (ConvertTo-SecureString ...)`
    return not (_is_identifier_path(v) and "." in v and not _looks_generated(v))  # `process.env.API_KEY`


def b64decode(value: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional; None when it is not base64."""
    v = value.strip().strip("\"'")
    if len(v) < 8 or len(v) % 4 == 1:
        return None
    v = v.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(v + "=" * (-len(v) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def credentials_in_base64(value: str) -> bool:
    """Base64 of `user:password` (HTTP Basic, Docker's `auths`): printable, one colon, both sides
    there, the password no placeholder."""
    raw = b64decode(value)
    if raw is None or not raw.isascii():
        return False
    text = raw.decode("ascii")
    if not text.isprintable() or ":" not in text or " " in text.strip():
        return False
    user, _, pw = text.partition(":")
    return bool(user) and len(pw) >= 3 and not is_reference(pw) and "://" not in text


def decoded_credentials(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """The value decodes from base64 to `user:password`."""
    return credentials_in_base64(secret)


def decoded_url_credentials(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """The value decodes from base64 to a URL whose userinfo holds a password that is no reference or
    placeholder (`postgres://app:pw@db/app`)."""
    raw = b64decode(secret)
    if raw is None or not raw.isascii():
        return False
    text = raw.decode("ascii")
    scheme, sep, rest = text.partition("://")
    userinfo = rest.split("/", 1)[0].rpartition("@")[0] if sep else ""
    user, colon, pw = userinfo.partition(":")
    return bool(colon and pw) and text.isprintable() and not is_reference(pw) and not is_placeholder(pw)


_JSON_SECRET_KEYS = ("password", "passwd", "secret", "token", "apikey", "api_key", "auth", "credential",
                     "private_key", "privatekey", "accountkey", "access_key")


def _json_holds_secret(value, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if isinstance(value, dict):
        for k, v in value.items():
            key = str(k).lower().replace("-", "_")
            if isinstance(v, str) and any(w in key for w in _JSON_SECRET_KEYS) and not _descriptive_key(key) \
                    and not is_placeholder(v):
                return True
            if _json_holds_secret(v, depth + 1):
                return True
    elif isinstance(value, list):
        return any(_json_holds_secret(v, depth + 1) for v in value)
    elif isinstance(value, str):
        return "PRIVATE KEY-----" in value
    return False


def decoded_json(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """Base64 of a JSON document (a `.dockerconfigjson`, a service-account key) that holds a
    secret-bearing key with a real value, or a private key."""
    import json

    raw = b64decode(secret[: len(secret) - len(secret) % 4] if len(secret) % 4 == 1 else secret)
    if raw is None:
        return False
    try:
        return _json_holds_secret(json.loads(raw))
    except (ValueError, RecursionError):
        return False


def decoded_private_key(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """Base64 of a PEM private key (a kubeconfig's `client-key-data`), not of a certificate."""
    raw = b64decode(secret[: len(secret) - len(secret) % 4] if len(secret) > 400 else secret)
    if raw is None:
        raw = b64decode(secret[:(len(secret) // 4) * 4])
    return raw is not None and b"PRIVATE KEY" in raw[:64]


_SERVICE_USERS = frozenset({"git", "hg", "svn", "ssh", "ubuntu", "ec2-user", "root", "admin"})


def email_address(secret: str, match: str = "", before: str = "", after: str = "") -> bool:
    """An address, not `user@host` inside a URL or SSH/scp syntax such as `git@github.com:`."""
    words = before.split()
    if words and not before[-1:].isspace() and "://" in words[-1]:
        return False
    return secret.split("@", 1)[0].lower() not in _SERVICE_USERS


# Validators that are given the key (the rule's `key_group`) as `match`, not the whole match.
KEYED_VALIDATORS = frozenset(("context", "pair", "call", "url-param"))

VALIDATORS = {
    "email": email_address,
    "luhn": luhn_ok,
    "card": payment_card,
    "ipv4": public_ipv4,
    "phone": phone_number,
    "phone-digits": phone_digits,
    "iban": iban_number,
    "ssn": us_ssn,
    "literal": literal_secret,
    "context": context_value,
    "pair": pair_value,
    "call": setter_value,
    "url-param": url_param,
    "generated": generated_secret,
    "session-id": session_id,
    "jwt": jwt_token,
    "url-token-user": url_token_user,
    "webhook-token": webhook_token,
    "password-like": password_like,
    "not-reference": not_reference,
    "known-token": known_token,
    "truncated": truncated_token,
    "decoded-credentials": decoded_credentials,
    "decoded-private-key": decoded_private_key,
    "decoded-json": decoded_json,
    "decoded-url-credentials": decoded_url_credentials,
}
