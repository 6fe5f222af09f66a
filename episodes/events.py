"""Reading events for mining: a `tracecap export` directory, a JSON-lines file, or standard input.

Takes paths as `--events` gives them; gives each device's events in `seq` order, one device at a
time (`read_devices`), duplicates of a `seq` dropped. What is read:

- an export directory (it holds `manifest.json`): `<device>/<YYYY-MM-DD>.jsonl` or `.parquet`,
  the device id taken from the manifest (the directory name when the manifest does not list it);
- a JSON-lines file, one event per line as `tracecap log --json` and `bundle decrypt` print them
  (blank lines skipped); `-` is standard input. Such events carry no device id: the device is
  `local` for standard input and the file's name (up to its first dot) otherwise.

`kinds` keeps only the events a reader needs: a line whose compact envelope names another kind is
skipped before JSON parsing, Parquet rows are filtered on their `kind` column first. Lines are
parsed by orjson; what it refuses goes to Python's json module, so both read the same events.

Promises: a path that does not exist, a line that is not a JSON object with an integer `seq`, or a
Parquet file without pyarrow raise `EventsError` naming the file, the line and the fix, before any
output is written. Memory: one device's events at a time for an export directory.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import orjson


class EventsError(Exception):
    """Events that cannot be read; `str()` is one sentence."""


Device = tuple[str, list[dict]]


Source = tuple[str, "Path | None"]  # ("jsonl" | "parquet" | "stdin", path)


def plan_devices(paths: Iterable[str]) -> list[tuple[str, list[Source]]]:
    """(device id, the files holding its events) per device, in a stable order; checks that every
    path exists and is of a known kind."""
    plan: dict[str, list[Source]] = {}
    for raw in paths:
        for device, source in _sources(raw):
            plan.setdefault(device, []).append(source)
    return list(plan.items())


def read_device(sources: list[Source], stdin: TextIO | None = None,
                kinds: frozenset[str] | None = None) -> tuple[list[dict], int]:
    """(events in seq order, events read) of one device; with `kinds`, only those kinds are kept."""
    events: list[dict] = []
    read = 0
    for kind, path in sources:
        for ev in _read(kind, path, stdin, kinds):
            read += 1
            if ev is not None:
                events.append(ev)
    return _ordered(events), read


def read_devices(paths: Iterable[str], stdin: TextIO | None = None,
                 kinds: frozenset[str] | None = None) -> Iterator[Device]:
    """(device id, events in seq order) per device, devices in a stable order."""
    for device, sources in plan_devices(paths):
        yield device, read_device(sources, stdin, kinds)[0]


def _sources(raw: str) -> list[tuple[str, tuple[str, Path | None]]]:
    if raw == "-":
        return [("local", ("stdin", None))]
    path = Path(raw)
    if path.is_dir():
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise EventsError(f"{path} is a directory without manifest.json; pass a `tracecap export` "
                              f"directory or a JSON-lines file of events")
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
            names = {d["directory"]: d["device_id"] for d in info.get("per_device", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise EventsError(f"{manifest} is not a readable export manifest; export again with "
                              f"`tracecap export`") from None
        out = []
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            files = sorted(sub.glob("*.jsonl")) + sorted(sub.glob("*.parquet"))
            device = names.get(sub.name, sub.name)
            out.extend((device, ("parquet" if f.suffix == ".parquet" else "jsonl", f)) for f in files)
        return out
    if not path.is_file():
        raise EventsError(f"--events {raw}: no such file or directory; pass a `tracecap export` "
                          f"directory, a JSON-lines file of events, or - for standard input")
    return [(path.name.split(".")[0] or "local", ("jsonl", path))]


def _read(kind: str, path: Path | None, stdin: TextIO | None,
          kinds: frozenset[str] | None) -> Iterator[dict | None]:
    """Each line's event, or None for a line skipped by `kinds`."""
    if kind == "parquet":
        yield from _read_parquet(path, kinds)
        return
    name = "standard input" if path is None else str(path)
    try:
        # Bytes: orjson parses them without a decoding pass; standard input as Python hands it over.
        stream = (stdin or sys.stdin) if path is None else open(path, "rb")
    except OSError as exc:
        raise EventsError(f"cannot read {name}: {exc.strerror}; check the path and its permissions") from None
    loads = orjson.loads
    try:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            if kinds is not None and _skippable(line, kinds):
                yield None
                continue
            try:
                ev = loads(line)
            except orjson.JSONDecodeError:
                ev = _loads_strict(line, name, n)
            if not isinstance(ev, dict) or type(ev.get("seq")) is not int or not isinstance(ev.get("kind"), str):
                raise EventsError(f"{name} line {n} is not an event (an object with an integer `seq` "
                                  f"and a `kind`); pass events as `tracecap log --json` prints them")
            if not isinstance(ev.get("data"), dict):
                ev["data"] = {}
            yield ev if kinds is None or ev["kind"] in kinds else None
    except UnicodeDecodeError:
        raise EventsError(f"{name} is not UTF-8 text; pass a JSON-lines file of events") from None
    finally:
        if path is not None:
            stream.close()


def _loads_strict(line: bytes | str, name: str, n: int):
    """What orjson refuses and Python's json reads (NaN, integers past 64 bits, lone surrogates),
    as `json.loads` reads it; anything else is not JSON."""
    try:
        return json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except ValueError as exc:
        if isinstance(exc, UnicodeDecodeError):
            raise
        raise EventsError(f"{name} line {n} is not JSON; pass events as `tracecap log --json` "
                          f"prints them, one per line") from None


def _skippable(line: bytes | str, kinds: frozenset[str]) -> bool:
    """A line whose envelope (compact, keys in the contract's order, as export and `tracecap log
    --json` write it) names a kind not wanted: skipped without parsing. Anything else is parsed."""
    if isinstance(line, bytes):
        at = line.find(b'"kind":"', 0, 120)
        if at < 0 or line.find(b'"data"', 0, at) >= 0:
            return False
        end = line.find(b'"', at + 8, at + 80)
        return end > 0 and line[at + 8:end].decode("utf-8", "replace") not in kinds
    at = line.find('"kind":"', 0, 120)
    if at < 0 or line.find('"data"', 0, at) >= 0:
        return False
    end = line.find('"', at + 8, at + 80)
    return end > 0 and line[at + 8:end] not in kinds


def _read_parquet(path: Path, kinds: frozenset[str] | None) -> Iterator[dict | None]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EventsError(f"{path} is Parquet, which needs pyarrow; install it "
                          f"(pip install 'tracecap[parquet]') or export as JSON lines") from None
    try:
        table = pq.read_table(path, columns=["seq", "ts", "kind", "source", "session", "data"])
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise EventsError(f"{path} is not a readable Parquet export ({exc}); export it again") from None
    cols = table.to_pydict()
    loads = json.loads
    for seq, ts, kind, source, session, data in zip(cols["seq"], cols["ts"], cols["kind"], cols["source"],
                                                     cols["session"], cols["data"]):
        if kinds is not None and kind not in kinds:
            yield None
            continue
        yield {"v": 1, "seq": seq, "ts": ts, "kind": kind, "source": source, "session": session,
               "data": loads(data)}


def _ordered(events: list[dict]) -> list[dict]:
    events.sort(key=lambda e: e["seq"])
    out: list[dict] = []
    last = None
    for ev in events:
        if ev["seq"] != last:
            out.append(ev)
            last = ev["seq"]
    return out
