"""Validate events against `event.schema.json`, with errors a person can act on.

Takes event dicts in the contract form (`Event.to_dict()`, a line of `tracecap log --json`, a
decoded bundle record); gives `is_valid(event) -> bool` and `errors(event) -> list[str]`, one
sentence per problem, each starting with the field path (`seq`, `data.op`,
`data.failures[0].name`; `event` for the whole thing) and saying what was expected.

Promises:
- The schema is read and compiled once per `EventValidator`; `is_valid` takes the validator's
  short-circuiting path and builds no messages, so a validator can be reused across millions of
  events (export). `errors(e) == []` exactly when `is_valid(e)`.
- "integer" means a Python int, not a float with no fraction and not a bool: a `duration_ms` of
  `1500.0` is a source bug that a JSON round trip would hide, so it is reported here.
- Pure: no I/O except reading the schema file, no module-level state. Imports only jsonschema and
  the standard library, so the collector and the export can use it without the daemon.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
from jsonschema import Draft202012Validator

SCHEMA_FILE = Path(__file__).resolve().with_name("event.schema.json")
_VALUE_CHARS = 60  # how much of an offending value an error shows


def load_event_schema() -> dict[str, Any]:
    """The event JSON Schema (draft 2020-12) as a dict."""
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        return json.load(f)


def _strict_integer(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _strict_validator_class() -> type:
    checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer)
    return jsonschema.validators.extend(Draft202012Validator, type_checker=checker)


class EventValidator:
    """A compiled event schema. Thread-safe: validation keeps no state between calls."""

    def __init__(self, schema: Mapping[str, Any] | None = None) -> None:
        schema = dict(schema) if schema is not None else load_event_schema()
        Draft202012Validator.check_schema(schema)
        self._validator = _strict_validator_class()(schema)

    def is_valid(self, event: Any) -> bool:
        return self._validator.is_valid(event)

    def errors(self, event: Any) -> list[str]:
        """Every problem with `event`, one sentence each, in a stable order; [] when valid."""
        kind = event.get("kind") if isinstance(event, dict) else None
        out: list[str] = []
        seen: set[str] = set()
        for err in self._validator.iter_errors(event):
            for sentence in _describe(err, kind if isinstance(kind, str) else None):
                if sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
        return out

    def invalid(self, events: Iterable[Any]) -> Iterable[tuple[int, list[str]]]:
        """(index, errors) of each invalid event of `events`, lazily; valid events cost one
        `is_valid` call."""
        for i, event in enumerate(events):
            if not self._validator.is_valid(event):
                yield i, self.errors(event)


# --- messages ----------------------------------------------------------------------------------

def field_path(parts: Iterable[Any]) -> str:
    """['data', 'failures', 0, 'name'] -> 'data.failures[0].name'; [] -> 'event'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "event"


def _child(path: str, name: str) -> str:
    return name if path == "event" else f"{path}.{name}"


def _show(value: Any) -> str:
    """A short description of an offending value: its type and, for scalars, the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (str, int, float)) else repr(value)
    if len(text) > _VALUE_CHARS:
        text = text[: _VALUE_CHARS - 1] + "…"
    if isinstance(value, str):
        return f"the string {text}"
    if isinstance(value, float):
        return f"the number {text}"
    if isinstance(value, int):
        return text
    return f"a {type(value).__name__}"


_TYPE_NAMES = {"integer": "an integer", "string": "a string", "object": "an object",
               "array": "a list", "null": "null", "number": "a number", "boolean": "true or false"}


def _expected_types(types: Any) -> str:
    names = [_TYPE_NAMES.get(t, t) for t in ([types] if isinstance(types, str) else types)]
    return " or ".join(names)


def _where(kind: str | None, path: str) -> str:
    if path == "event":
        return "an event"
    if path == "data" and kind:
        return f"{kind} data"
    return path


def _describe(err: jsonschema.ValidationError, kind: str | None) -> list[str]:
    path = field_path(err.absolute_path)
    key, value, inst, schema = err.validator, err.validator_value, err.instance, err.schema
    if key == "required":
        allowed = ", ".join(value)
        return [f"{_child(path, name)} is missing; {_where(kind, path)} requires {allowed}."
                for name in value if isinstance(inst, dict) and name not in inst]
    if key == "additionalProperties" and value is False:
        known = list(schema.get("properties", {}))
        extras = [k for k in inst if k not in known] if isinstance(inst, dict) else []
        if path == "data" and kind and kind.startswith("input."):
            return [f"{_child(path, str(k))} is not allowed: {kind} carries counts and times only "
                    f"({', '.join(known)}), never which key or what was typed." for k in extras]
        return [f"{_child(path, str(k))} is not allowed; {_where(kind, path)} has exactly "
                f"{', '.join(known)}." for k in extras]
    if key == "type":
        return [f"{path} is {_show(inst)}, expected {_expected_types(value)}."]
    if key == "enum":
        return [f"{path} is {_show(inst)}, expected one of {', '.join(map(str, value))}."]
    if key == "const":
        return [f"{path} is {_show(inst)}, expected {json.dumps(value)}."]
    if key == "minimum":
        return [f"{path} is {_show(inst)}, expected at least {value}."]
    if key == "minLength":
        return [f"{path} is empty, expected a non-empty string."]
    if key == "pattern":
        if path == "kind":
            return [f"kind is {_show(inst)}, expected a lowercase `family.name` such as file.save."]
        desc = schema.get("description")
        what = f" ({desc.rstrip('.')})" if desc else ""
        return [f"{path} is {_show(inst)}, which does not match {value}{what}."]
    if key == "dependentRequired":
        group = list(dict.fromkeys([*value, *(d for needs in value.values() for d in needs)]))
        present = set(inst) if isinstance(inst, dict) else set()
        missing = [d for dep, needs in value.items() if dep in present for d in needs if d not in present]
        return [f"{_child(path, d)} is missing; {_where(kind, path)} has all of {', '.join(group)} "
                f"or none of them." for d in dict.fromkeys(missing)]
    return [f"{path}: {err.message}."]
