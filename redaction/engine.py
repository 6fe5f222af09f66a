"""The redaction engine: text in, redacted text and findings out.

Takes compiled rules (built-in, admin, and the user's home directory, account and full names) and an HMAC key;
gives `Redactor.redact_text(text) -> RedactionResult`. Promises:
- Linear time: every pattern is RE2. One RE2 set pass over the text finds which rules can apply
  (their keywords, or the whole pattern for rules without keywords); only those rules then run.
- Findings are spans of the INPUT text (str offsets). Overlapping spans merge, so a secret that two
  rules see partly is removed whole; the merged span keeps the rule whose match starts first.
- Text longer than `max_scan_bytes` is scanned in windows that overlap by `OVERLAP` characters,
  so a secret on a window boundary is still found.
- `hash` gives `[rule:hmac8]`, HMAC-SHA256 keyed by the caller's key: stable per key, never unkeyed.
- A rule with a `repeat` pattern (a command's secret flags) keeps matching it right after each of
  its matches, so every secret flag of one command is found, not only the first.
- Every finding says why (`Finding.reason`): the format, the context key, or what decoding showed.
- Decode before judging: a text (up to one scan window long) holding percent-escaped syntax (`%3D`,
  `%22`, `%3A`, ...) is also scanned percent-decoded, one holding `\u0022`/`\x22` escapes or HTML
  entities (`&quot;`, `&#34;`) is also scanned with those decoded, and what is found there is
  redacted at its place in the original.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import threading
from collections import Counter

import re2

from redaction.rules import BUILTIN_RULES, Rule, RuleError, compile_admin_rules, compile_rule, quiet_options
from redaction.validators import KEYED_VALIDATORS, VALIDATORS, github_checksum_ok, shannon_entropy

OVERLAP = 16384  # characters shared by neighbouring scan windows; longer than any PEM key block
MIN_WINDOW = 4 * OVERLAP
DEFAULT_MAX_SCAN_BYTES = 1 << 20
FAILED_MARKER = "[REDACTION-FAILED]"


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    start: int
    end: int
    action: str
    reason: str = dataclasses.field(default="", compare=False)  # why: format, context key, decoded


@dataclasses.dataclass(frozen=True, slots=True)
class RedactionResult:
    text: str
    findings: list[Finding]

    @property
    def drop_event(self) -> bool:
        return any(f.action == "drop-event" for f in self.findings)


class RedactionStats:
    """Counters for `status`: findings per rule, fail-closed failures, dropped events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._findings: Counter[str] = Counter()
        self._failures = 0
        self._dropped_events = 0

    def add_findings(self, findings: list[Finding]) -> None:
        with self._lock:
            counts = self._findings
            for f in findings:
                counts[f.rule] += 1

    def add_failure(self) -> None:
        with self._lock:
            self._failures += 1

    def add_dropped_event(self) -> None:
        with self._lock:
            self._dropped_events += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"findings": dict(self._findings), "failures": self._failures,
                    "dropped_events": self._dropped_events}


@dataclasses.dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    regex: object
    check: object  # validator function or None
    keyed: bool  # the check is given the key (group `key_group`) instead of the whole match
    again: object  # the rule's `repeat` pattern compiled, or None


def _user_rules(home: str | None, username: str | None, full_names: list[str] | tuple[str, ...] = ()) -> list[Rule]:
    rules = []
    for i, name in enumerate(full_names):
        words = name.split()
        if len(words) < 2:
            continue
        # "Ada Lovelace" and "Lovelace, Ada", any case and spacing
        forward = r"\s+".join(re2.escape(w) for w in words)
        backward = re2.escape(words[-1]) + r",\s*" + r"\s+".join(re2.escape(w) for w in words[:-1])
        rules.append(Rule("own-name", r"(?i)\b(?:" + forward + "|" + backward + r")\b",
                          keywords=(words[-1].lower(),), replacement="[user]", category="pii",
                          reason="personal data: the user's own name"))
    home = (home or "").rstrip("/\\")
    if len(home) > 1:
        rules.append(Rule("home-path", "(" + re2.escape(home) + r")(?:[/\\]|\z|[^A-Za-z0-9._-])", group=1,
                          keywords=(home.lower(),), replacement="~", category="pii"))
    if username and len(username) >= 2:
        # The name as a path segment anywhere (/mnt/backup/alice, C:\\Users\\alice); inside the home
        # directory itself the home-path rule wins the overlap and gives `~`.
        rules.append(Rule("user-name", r"[/\\](" + re2.escape(username) + r")(?:[/\\]|\z|[^A-Za-z0-9._-])",
                          keywords=("/" + username.lower(), "\\" + username.lower()), group=1,
                          replacement="[user]", category="pii"))
    return rules


CLEAN_MEMO_ITEMS = 4096  # short texts last found clean, skipped on sight (cwd, shell names, ids)
USER_RULES = frozenset(("home-path", "user-name", "own-name"))  # findings that are never secrets
CLEAN_MEMO_CHARS = 512


class Redactor:
    """Applies a fixed rule set; safe to share between threads (no mutable state but `stats` and
    two memos of short texts: those no rule matched, and those where only the user's own home
    directory or name was found, such as a working directory; neither ever holds a secret)."""

    def __init__(self, rules: list[Rule], *, hmac_key: bytes, max_scan_bytes: int = DEFAULT_MAX_SCAN_BYTES,
                 content: str = "full", never_capture: list[str] | None = None) -> None:
        if not hmac_key:
            raise ValueError("Redactor needs a non-empty HMAC key for the hash action")
        self._key = bytes(hmac_key)
        self._clean: set[str] = set()
        self._own: dict[str, RedactionResult] = {}
        self._window = max(int(max_scan_bytes), MIN_WINDOW)
        self.content = content
        self.stats = RedactionStats()
        self._rules = [_Compiled(r, compile_rule(r), VALIDATORS.get(r.validator) if r.validator else None,
                                 bool(r.key_group) and r.validator in KEYED_VALIDATORS,
                                 compile_rule(r, r.repeat) if r.repeat else None)
                       for r in rules]
        self._set, self._set_owner, self._always = self._build_prefilter()
        from redaction.events import redact_event_data  # local: events imports this module
        from redaction.paths import PathRules

        self._paths = PathRules(never_capture)
        self._redact_event_data = redact_event_data

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_policy(cls, redaction: dict, *, hmac_key: bytes, home: str | None = None,
                    username: str | None = None, full_names: list[str] | tuple[str, ...] = ()) -> "Redactor":
        """From the policy's [redaction] table (defaults filled in); raises RuleError on bad rules."""
        from redaction.paths import DEFAULT_NEVER_CAPTURE

        redaction = redaction or {}
        admin = compile_admin_rules(list(redaction.get("rules") or []))
        admin_names = {r.name for r in admin}
        rules: list[Rule] = list(admin)
        for r in BUILTIN_RULES:
            if r.name in admin_names:  # an admin rule of the same name replaces the built-in
                continue
            if r.policy_flag and not redaction.get(r.policy_flag, True):
                continue
            rules.append(r)
        rules.extend(_user_rules(home, username, full_names))
        never = redaction.get("never_capture")
        return cls(rules, hmac_key=hmac_key,
                   max_scan_bytes=_size(redaction.get("max_scan_bytes", DEFAULT_MAX_SCAN_BYTES)),
                   content=redaction.get("content", "full"),
                   never_capture=list(DEFAULT_NEVER_CAPTURE if never is None else never))

    def _build_prefilter(self):
        opts = quiet_options()
        opts.case_sensitive = False
        opts.max_mem = 64 << 20
        rset = re2.Set.SearchSet(opts)
        owner: list[int] = []
        always: list[int] = []
        for i, c in enumerate(self._rules):
            entries = [re2.escape(k) for k in c.rule.keywords] or [c.rule.pattern]
            for entry in entries:
                try:
                    rset.Add(entry)
                except re2.error:
                    always.append(i)  # cannot prefilter this one: run it on every text
                    break
                owner.append(i)
        rset.Compile()
        return rset, owner, sorted(set(always))

    @property
    def rules(self) -> list[Rule]:
        return [c.rule for c in self._rules]

    # -- scanning -----------------------------------------------------------------------------------
    def redact_text(self, text: str) -> RedactionResult:
        """Redacted text and findings (spans of `text`). Raises only on internal errors."""
        if text in self._clean:
            return RedactionResult(text, [])
        known = self._own.get(text)
        if known is not None:
            self.stats.add_findings(known.findings)
            return known
        spans = self._scan(text)
        if not spans:
            if len(text) <= CLEAN_MEMO_CHARS:
                if len(self._clean) >= CLEAN_MEMO_ITEMS:
                    self._clean = set()
                self._clean.add(text)
            return RedactionResult(text, [])
        out = []
        findings = []
        pos = 0
        for start, end, idx, detail in spans:
            rule = self._rules[idx].rule
            out.append(text[pos:start])
            out.append(self._replacement(rule, text[start:end]))
            findings.append(Finding(rule.name, start, end, rule.action, _reason(rule, detail)))
            pos = end
        out.append(text[pos:])
        self.stats.add_findings(findings)
        result = RedactionResult("".join(out), findings)
        if len(text) <= CLEAN_MEMO_CHARS and all(f.rule in USER_RULES for f in findings):
            # A working directory under home: only the user's own path or name, no secret, in it.
            if len(self._own) >= CLEAN_MEMO_ITEMS:
                self._own = {}
            self._own[text] = result
        return result

    def _scan(self, text: str) -> list[tuple[int, int, int, str]]:
        if len(text) <= self._window:
            found = self._scan_window(text, 0)
            if "%" in text and _PERCENT_SYNTAX.search(text):
                found += self._scan_decoded(percent_decoded(text), _PCT)
            if (("\\" in text and ("\\u00" in text or "\\x" in text or ":\\/\\/" in text))
                    or ("&" in text and ";" in text and ("&quot;" in text or "&#" in text or "&apos;" in text))) \
                    and _ESCAPED_SYNTAX.search(text):
                found += self._scan_decoded(escape_decoded(text, _CHAR_ESCAPE, _char_of), _ESC)
            return _merge(found)
        raw = []
        step = self._window - OVERLAP
        start = 0
        while True:
            raw.extend(self._scan_window(text[start:start + self._window], start))
            if start + self._window >= len(text):
                break
            start += step
        return _merge(raw)

    def _scan_window(self, text: str, base: int) -> list[tuple[int, int, int, str]]:
        ascii_text = text.isascii()
        data = text.encode("ascii" if ascii_text else "utf-8", "surrogatepass")
        hits = self._set.Match(data)
        if not hits and not self._always:
            return []
        owner = self._set_owner
        todo = {owner[h] for h in hits} if hits else set()
        todo.update(self._always)
        found = []
        for idx in sorted(todo):
            c = self._rules[idx]
            for m in c.regex.finditer(data):
                hit = self._judge(c, m, c.rule.group, data)
                if hit is not None:
                    found.append((hit[0], hit[1], idx, hit[2]))
                if c.again is not None:  # the same command's further secret flags
                    pos = m.end()
                    while (m2 := c.again.match(data, pos)) is not None and m2.end() > pos:
                        hit = self._judge(c, m2, 1, data)
                        if hit is not None:
                            found.append((hit[0], hit[1], idx, hit[2]))
                        pos = m2.end()
        if found and not ascii_text:
            found = _bytes_to_chars(data, found)
        if base:
            found = [(s + base, e + base, i, d) for s, e, i, d in found]
        return found

    def _scan_decoded(self, decoded: tuple[str, list[int]], mark: str) -> list[tuple[int, int, int, str]]:
        """Findings in a decoded view of the text (`percent_decoded`, `escape_decoded`: the view and
        where each of its characters starts in the text), as spans of the text, their detail
        marked with `mark` for `--explain`: a secret is judged once its syntax can be read."""
        view, starts = decoded
        return [(starts[s], starts[e], i, d + mark if d else mark) for s, e, i, d in self._scan_window(view, 0)]

    def _judge(self, c: _Compiled, m, group: int, data: bytes) -> tuple[int, int, str] | None:
        """The span to redact for match `m` (quotes trimmed) and the detail for `--explain`, or
        None when the rule's entropy floor or check rejects it."""
        rule = c.rule
        s, e = m.span(group)
        if s < 0 or e <= s:
            return None
        if data[s:s + 1] in b"bBrRuU" and e - s >= 4 and data[s + 1:s + 2] in (b'"', b"'") \
                and data[e - 1:e] == data[s + 1:s + 2]:
            s += 1  # a bytes or raw literal (`b"..."`): the quotes inside are trimmed next
        if data[s:s + 3] in (b'"""', b"'''") and e - s >= 7 and data[e - 3:e] == data[s:s + 3]:
            s, e = s + 3, e - 3  # a triple-quoted string (Python, Kotlin, TOML)
        elif data[s:s + 1] in (b'"', b"'", b"`") and e - s >= 2 and data[e - 1:e] == data[s:s + 1]:
            s, e = s + 1, e - 1  # a quoted value: redact inside the quotes
        elif data[s:s + 2] == b'\\"' and e - s >= 5 and data[e - 2:e] == b'\\"':
            s, e = s + 2, e - 2  # the same inside an escaped string (JSON in JSON, diffs)
        elif rule.category == "context" and data[e:e + 1] == b"&":
            e = _through_ampersands(data, e)
        if c.check is not None or rule.entropy is not None:
            secret = data[s:e].decode("utf-8", "replace")
            if rule.entropy is not None and shannon_entropy(secret) < rule.entropy:
                return None
            if c.check is not None:
                ms, me = m.span()
                before = data[max(0, ms - 64):ms].decode("utf-8", "replace")
                after = data[me:me + 16].decode("utf-8", "replace")
                keyed = c.keyed and group == rule.group
                told = m.group(rule.key_group if keyed else 0).decode("utf-8", "replace")
                if not c.check(secret, told, before, after):
                    return None
        detail = ""
        if rule.validator == "known-token" and github_checksum_ok(data[s:e].decode("ascii", "replace")):
            detail = "checksum verified"
        if rule.key_group and group == rule.group:
            detail = m.group(rule.key_group).decode("utf-8", "replace").strip("\"'<>: ")
        return s, e, detail

    def _replacement_for(self, rule_name: str, secret: str) -> str:
        """The replacement the named rule gives `secret` (argv pieces use this)."""
        for c in self._rules:
            if c.rule.name == rule_name:
                return self._replacement(c.rule, secret)
        return FAILED_MARKER

    def _replacement(self, rule: Rule, secret: str) -> str:
        if rule.action == "hash":
            digest = hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
            return f"[{rule.name}:{digest[:8]}]"
        if rule.replacement is not None:
            return rule.replacement
        if rule.action == "mask":
            keep = min(4, len(secret) // 5)
            return f"{secret[:keep]}[REDACTED:{rule.name}]"
        return f"[REDACTED:{rule.name}]"

    # -- events and paths ---------------------------------------------------------------------------
    def redact_event(self, kind: str, data: dict) -> dict | None:
        """A new `data` with every string redacted; None when a drop-event rule matched."""
        return self._redact_event_data(self, kind, data)

    def content_allowed(self, path: str) -> bool:
        """False when `path` matches a never-capture glob: its content must not be captured."""
        return self._paths.content_allowed(path)

    def file_allowed(self, path: str, st=None, text: str | None = None) -> bool:
        """False when the file is a never-capture file by name, by identity (a hard link to one;
        `st` is its stat) or by content (`text`: mostly `KEY=value` secrets)."""
        return self._paths.file_allowed(path, st, text)


_PCT = "\x00%"  # marks a detail found in the percent-decoded text
_PERCENT_SYNTAX = re2.compile(r"%(?:3[DdAa]|22|27|26|2[Cc]|7[BbDd])")  # = : " ' & , { }
_PERCENT_ESCAPE = re2.compile(r"%[0-7][0-9A-Fa-f]")


_ESC = "\x00\\"  # marks a detail found with character escapes decoded
# `\u0022`, `\x22` (printable ASCII only) and the HTML character references that quote or separate.
_CHAR_ESCAPE = re2.compile(r"\\/|\\u00[2-7][0-9A-Fa-f]|\\x[2-7][0-9A-Fa-f]|&(?:quot|apos|amp|lt|gt);|&#(?:x[2-7][0-9A-Fa-f]|[3-9][0-9]|1[01][0-9]|12[0-6]);")
# Escaped quotes and separators: only a text holding one of these is scanned again decoded.
_ESCAPED_SYNTAX = re2.compile(r":\\/\\/|\\u00(?:22|27|3[AaDd])|\\x(?:22|27|3[AaDd])|&(?:quot|apos|#34|#39|#x22|#x27);")
_ENTITIES = {"&quot;": '"', "&apos;": "'", "&amp;": "&", "&lt;": "<", "&gt;": ">"}


def _char_of(escape: str) -> str:
    if escape == "\\/":
        return "/"  # JSON's escaped solidus: `https:\\/\\/u:pw@host`
    if escape[0] == "\\":
        return chr(int(escape[-2:], 16))
    if escape.startswith("&#x"):
        return chr(int(escape[3:-1], 16))
    if escape.startswith("&#"):
        return chr(int(escape[2:-1]))
    return _ENTITIES[escape]


def percent_decoded(text: str) -> tuple[str, list[int]]:
    """`text` with ASCII percent-escapes decoded, and for each character of the result the offset in
    `text` where it starts (one more entry: `len(text)`), so spans map back."""
    return escape_decoded(text, _PERCENT_ESCAPE, lambda esc: chr(int(esc[1:], 16)))


def escape_decoded(text: str, pattern, decode) -> tuple[str, list[int]]:
    """`text` with each match of `pattern` replaced by `decode(match)`, and for each character of the
    result the offset in `text` where it starts (one more entry: `len(text)`)."""
    out: list[str] = []
    starts: list[int] = []
    pos = 0
    for m in pattern.finditer(text):
        s, e = m.span()
        out.append(text[pos:s])
        starts.extend(range(pos, s))
        out.append(decode(text[s:e]))
        starts.append(s)
        pos = e
    out.append(text[pos:])
    starts.extend(range(pos, len(text)))
    starts.append(len(text))
    return "".join(out), starts


_VALUE_END = frozenset(b" \t\r\n\"'`,;<>")


def _through_ampersands(data: bytes, e: int) -> int:
    """An unquoted value stops at `&` because a URL's next parameter starts there; when no `=`
    follows before the value's end (`pass: Tundra&6854saffron`), the `&` is part of the value."""
    end = e
    while end < len(data) and data[end] not in _VALUE_END:
        if data[end] == 0x3D:  # `=`: `&name=` is the next parameter
            return e
        end += 1
    return end


def _merge(found: list[tuple[int, int, int, str]]) -> list[tuple[int, int, int, str]]:
    """Sorted, non-overlapping spans; overlapping spans merge into their union, attributed to the
    rule of highest priority (lowest index) among them."""
    if not found:
        return []
    found.sort(key=lambda f: (f[0], -f[1], f[2]))
    merged = [list(found[0])]
    for s, e, i, d in found[1:]:
        last = merged[-1]
        if s < last[1]:
            last[1] = max(last[1], e)
            if i < last[2]:
                last[2], last[3] = i, d
        else:
            merged.append([s, e, i, d])
    return [tuple(m) for m in merged]


def _reason(rule: Rule, detail: str) -> str:
    """One phrase for `--explain`: why this rule redacted this span."""
    if detail.endswith(_PCT):
        return _reason(rule, detail[:-len(_PCT)]) + ", after percent-decoding"
    if detail.endswith(_ESC):
        return _reason(rule, detail[:-len(_ESC)]) + ", after decoding character escapes"
    if rule.key_group and detail:
        return f"context: key {detail!r}" + (f" ({rule.reason})" if rule.reason else "")
    reason = rule.reason or {"known": f"format: {rule.name}", "context": "context", "pii": "personal data",
                             "admin": "admin rule"}.get(rule.category, rule.category)
    return f"{reason} ({detail})" if detail else reason


def _bytes_to_chars(data: bytes, found: list[tuple[int, int, int, str]]) -> list[tuple[int, int, int, str]]:
    cache: dict[int, int] = {}

    def conv(off: int) -> int:
        if off not in cache:
            cache[off] = len(data[:off].decode("utf-8", "surrogatepass"))
        return cache[off]

    return [(conv(s), conv(e), i, d) for s, e, i, d in found]


_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "TB": 1000 ** 4,
          "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4}


def _size(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    s = str(value).strip().upper()
    digits = s.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = s[len(digits):]
    if not digits.isdigit() or unit not in _UNITS:
        raise RuleError(f"redaction.max_scan_bytes {value!r} is not a size; use e.g. 1048576 or \"1MiB\"")
    return int(digits) * _UNITS[unit]
