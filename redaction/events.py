"""Event-level redaction: every string in an event's `data`, and the content level.

Takes a `Redactor`, an event kind and its `data`; gives a new `data` dict, or None when a
`drop-event` rule matched anywhere in it. Promises:
- Every string value (at any depth of lists and dicts) passes `redact_text`. A list of strings
  under `argv` is redacted as one command line (items joined by spaces), so `-u user:pass` or
  `--password SECRET` split across items is still found; each finding is cut back to its items. Dict keys that are
  plain identifiers (schema field names) are kept as they are; any other key is redacted too.
- Fail closed: if redacting a field raises, that field becomes `[REDACTION-FAILED]` and the
  failure is counted in `stats`; raw text never passes. A value of an unexpected type (bytes,
  objects) is replaced the same way.
- `file.save` whose path matches a never-capture glob loses its `diff` (metadata only).
- Content level "metadata" keeps kinds, timings, paths, exit codes and counts, and per kind:

  | kind | at "metadata" |
  |---|---|
  | file.save | `diff` dropped |
  | shell.start | `cmd` cut to the executable (leading `VAR=value` words skipped) |
  | test.run | `cmd` cut to the executable; `failures` keep `name`, lose `message` |
  | tool.invocation | `argv` cut to its first item |
  | git.commit | `message`, `subject`, `body` dropped |
  | app.focus | `title` dropped |
  | user.note | kept (redacted): a note is what the user chose to record, not captured work |
  | any other kind | free-text fields (`diff`, `message`, `title`, `text`, `body`, `subject`, `stdout`, `stderr`, `output`) dropped |
"""
from __future__ import annotations

from redaction.engine import FAILED_MARKER

_FREE_TEXT = frozenset({"diff", "message", "title", "text", "body", "subject", "stdout", "stderr", "output"})
_DROP = "drop"
_EXE_ONLY = "exe-only"
_ARGV0 = "argv0"
_NAMES_ONLY = "names-only"
METADATA_FIELDS: dict[str, dict[str, str]] = {
    "file.save": {"diff": _DROP},
    "shell.start": {"cmd": _EXE_ONLY},
    "test.run": {"cmd": _EXE_ONLY, "failures": _NAMES_ONLY},
    "tool.invocation": {"argv": _ARGV0},
    "git.commit": {"message": _DROP, "subject": _DROP, "body": _DROP},
    "app.focus": {"title": _DROP},
    "user.note": {},
}


class _Drop(Exception):
    """A drop-event rule matched."""


def executable_of(cmd: str) -> str:
    """The first word of a command line that is not a `VAR=value` assignment."""
    for word in cmd.split():
        head, eq, _ = word.partition("=")
        if eq and head.replace("_", "").isalnum() and not head[:1].isdigit():
            continue
        return word
    return ""


def apply_content_level(kind: str, data: dict) -> dict:
    """`data` cut down to what content level "metadata" keeps (a new dict; strings not yet redacted)."""
    table = METADATA_FIELDS.get(kind)
    out = {}
    for key, value in data.items():
        how = table.get(key) if table is not None else (_DROP if key in _FREE_TEXT else None)
        if how is None:
            out[key] = value
        elif how == _EXE_ONLY:
            out[key] = executable_of(value) if isinstance(value, str) else None
        elif how == _ARGV0:
            out[key] = list(value[:1]) if isinstance(value, list) else []
        elif how == _NAMES_ONLY:
            out[key] = [{"name": f.get("name")} for f in value if isinstance(f, dict)] \
                if isinstance(value, list) else []
        # _DROP: leave the key out
    return out


def redact_event_data(redactor, kind: str, data: dict) -> dict | None:
    if redactor.content == "metadata":
        data = apply_content_level(kind, data)
    if kind == "file.save" and "diff" in data and not _content_allowed(redactor, data):
        data = {k: v for k, v in data.items() if k != "diff"}
    try:
        return _walk(redactor, data)
    except _Drop:
        redactor.stats.add_dropped_event()
        return None


def _content_allowed(redactor, data: dict) -> bool:
    path = data.get("path")
    if not isinstance(path, str):
        return False
    repo = data.get("repo")
    full = f"{repo.rstrip('/')}/{path}" if isinstance(repo, str) and repo else path
    return redactor.content_allowed(path) and redactor.content_allowed(full)


def _walk(redactor, value):
    if isinstance(value, str):
        return _redact_str(redactor, value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not (isinstance(k, str) and k.isidentifier() and len(k) <= 40):
                k = _walk(redactor, k) if isinstance(k, str) else FAILED_MARKER
            if k == "argv" and isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                out[k] = _redact_argv(redactor, v)
            else:
                out[k] = _walk(redactor, v)
        return out
    if isinstance(value, (list, tuple)):
        return [_walk(redactor, v) for v in value]
    redactor.stats.add_failure()
    return FAILED_MARKER


def _redact_argv(redactor, argv: list[str]) -> list[str]:
    joined = " ".join(argv)
    try:
        result = redactor.redact_text(joined)
    except Exception:
        redactor.stats.add_failure()
        return [FAILED_MARKER] * len(argv)
    if not result.findings:
        return list(argv)
    if result.drop_event:
        raise _Drop()
    out = []
    start = 0
    for item in argv:
        end = start + len(item)
        pieces, pos = [], start
        for f in result.findings:
            s, e = max(f.start, start), min(f.end, end)
            if s < e:
                pieces.append(joined[pos:s])
                pieces.append(redactor._replacement_for(f.rule, joined[s:e]))
                pos = e
        pieces.append(joined[pos:end])
        out.append("".join(pieces))
        start = end + 1
    return out


def _redact_str(redactor, text: str) -> str:
    try:
        result = redactor.redact_text(text)
    except Exception:
        redactor.stats.add_failure()
        return FAILED_MARKER
    if result.findings and result.drop_event:
        raise _Drop()
    return result.text
