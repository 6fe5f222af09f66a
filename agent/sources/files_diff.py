"""Unified diffs of saved files, their inverse (apply), and the bounded cache of previous versions.

Takes text (already redacted: nothing raw is ever cached); gives `unified_diff(old, new, path)`,
`apply_unified_diff(old, diff)`, `decode_text(raw)` (None for binary) and `VersionCache`.
Promises: `apply_unified_diff(a, unified_diff(a, b, p)) == b` for every pair of texts, including
missing final newlines (written as git and patch do, `\\ No newline at end of file`), CRLF and
any Unicode; lines split on "\\n" only. `VersionCache` never holds more than its byte budget
(counted as UTF-8 bytes) and evicts least recently used first.
"""
from __future__ import annotations

import collections
import difflib
import re

NO_NEWLINE = "\\ No newline at end of file\n"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def split_lines(text: str) -> list[str]:
    """Lines with their "\\n" kept; the last one may lack it. Only "\\n" ends a line (unlike
    str.splitlines, which would also split on form feeds and Unicode separators)."""
    if not text:
        return []
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def unified_diff(old: str, new: str, path: str, context: int = 3) -> str:
    """The diff from `old` to `new`, headers `a/path` and `b/path`; "" when they are equal."""
    if old == new:
        return ""
    out = []
    for line in difflib.unified_diff(split_lines(old), split_lines(new), "a/" + path, "b/" + path,
                                     n=context):
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n" + NO_NEWLINE)
    return "".join(out)


class PatchError(ValueError):
    pass


def apply_unified_diff(old: str, diff: str) -> str:
    """`old` with `diff` applied; raises PatchError when the diff does not fit `old`."""
    if not diff:
        return old
    src = split_lines(old)
    lines = split_lines(diff)
    out: list[str] = []
    pos = 0  # next unread line of src
    i = 0
    while i < len(lines) and not lines[i].startswith("@@"):
        i += 1
    while i < len(lines):
        m = _HUNK.match(lines[i])
        if not m:
            raise PatchError(f"expected a hunk header, got {lines[i]!r}")
        start = int(m.group(1))
        old_len = int(m.group(2)) if m.group(2) is not None else 1
        begin = start - 1 if old_len else start  # an empty old range names the line before it
        if begin < pos:
            raise PatchError("hunks overlap or go backwards")
        out.extend(src[pos:begin])
        pos = begin
        i += 1
        while i < len(lines) and not lines[i].startswith("@@"):
            line = lines[i]
            tag, body = line[:1], line[1:]
            if i + 1 < len(lines) and lines[i + 1] == NO_NEWLINE:
                body = body[:-1] if body.endswith("\n") else body
                i += 1
            if tag in (" ", "-"):
                if pos >= len(src) or src[pos] != body:
                    raise PatchError(f"diff does not apply at line {pos + 1}")
                pos += 1
                if tag == " ":
                    out.append(body)
            elif tag == "+":
                out.append(body)
            else:
                raise PatchError(f"unexpected diff line {line!r}")
            i += 1
    out.extend(src[pos:])
    return "".join(out)


def decode_text(raw: bytes) -> str | None:
    """The file's text, or None if it is binary (a NUL byte near the start, as git decides, or
    not UTF-8)."""
    if b"\0" in raw[:8000]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class VersionCache:
    """Last captured (redacted) text per key, with an optional small note about it (`meta`), LRU,
    bounded by `max_bytes` of UTF-8 text."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: collections.OrderedDict[object, tuple[str, int, object]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def keys(self) -> list:
        return list(self._items)

    def get(self, key: object) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def meta(self, key: object) -> object:
        item = self._items.get(key)
        return None if item is None else item[2]

    def put(self, key: object, text: str, meta: object = None) -> None:
        self.pop(key)
        size = len(text.encode("utf-8"))
        if size > self.max_bytes:
            return
        self._items[key] = (text, size, meta)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted, _) = self._items.popitem(last=False)
            self.bytes -= evicted

    def pop(self, key: object) -> str | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.bytes -= item[1]
        return item[0]
