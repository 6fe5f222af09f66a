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
import operator
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import orjson

_SEQ = operator.itemgetter("seq")


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
        if kind == "parquet":
            read += _read_parquet(path, kinds, events)
        else:
            read += _read_lines(path, stdin, kinds, events)
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


def _read_lines(path: Path | None, stdin: TextIO | None, kinds: frozenset[str] | None,
                out: list[dict]) -> int:
    """Appends the file's events (those of `kinds`) to `out`; gives the number of events read."""
    name = "standard input" if path is None else str(path)
    try:
        # Bytes: orjson parses them without a decoding pass; standard input as Python hands it over.
        stream = (stdin or sys.stdin) if path is None else open(path, "rb")
    except OSError as exc:
        raise EventsError(f"cannot read {name}: {exc.strerror}; check the path and its permissions") from None
    loads, append, read = orjson.loads, out.append, 0
    wanted: frozenset | None = None
    try:
        for n, line in enumerate(stream, 1):
            if wanted is None and kinds is not None:
                wanted = frozenset(k.encode() for k in kinds) if isinstance(line, bytes) else kinds
            if wanted is not None and _skippable(line, wanted):
                read += 1
                continue
            if not line.strip():
                continue
            read += 1
            try:
                ev = loads(line)
            except orjson.JSONDecodeError:
                ev = _loads_strict(line, name, n)
            if not isinstance(ev, dict) or type(ev.get("seq")) is not int or not isinstance(ev.get("kind"), str):
                raise EventsError(f"{name} line {n} is not an event (an object with an integer `seq` "
                                  f"and a `kind`); pass events as `tracecap log --json` prints them")
            if not isinstance(ev.get("data"), dict):
                ev["data"] = {}
            if kinds is None or ev["kind"] in kinds:
                append(ev)
    except UnicodeDecodeError:
        raise EventsError(f"{name} is not UTF-8 text; pass a JSON-lines file of events") from None
    finally:
        if path is not None:
            stream.close()
    return read


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


def _skippable(line: bytes | str, kinds: frozenset) -> bool:
    """A line whose envelope (compact, keys in the contract's order, as export and `tracecap log
    --json` write it) names a kind not wanted: skipped without parsing. Anything else is parsed.
    `kinds` holds bytes for a line of bytes."""
    if isinstance(line, bytes):
        at = line.find(b'"kind":"', 0, 120)
        if at < 0:
            return False
        end = line.find(b'"', at + 8, at + 80)
        return end > 0 and line[at + 8:end] not in kinds and line.find(b'"data"', 0, at) < 0
    at = line.find('"kind":"', 0, 120)
    if at < 0:
        return False
    end = line.find('"', at + 8, at + 80)
    return end > 0 and line[at + 8:end] not in kinds and line.find('"data"', 0, at) < 0


def _read_parquet(path: Path, kinds: frozenset[str] | None, out: list[dict]) -> int:
    """Appends the file's events (those of `kinds`) to `out`, a row group at a time, the rows
    filtered on `kind` before the rest of their columns are converted; gives the rows read."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise EventsError(f"{path} is Parquet, which needs pyarrow; install it "
                          f"(pip install 'tracecap[parquet]') or export as JSON lines") from None
    names = ["seq", "ts", "kind", "source", "session", "data"]
    wanted = None if kinds is None else pa.array(sorted(kinds), pa.string())
    read = 0
    try:
        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(columns=names):
                read += batch.num_rows
                if wanted is not None:
                    batch = batch.filter(pc.is_in(batch.column("kind"), value_set=wanted))
                cols = batch.to_pydict()
                for seq, ts, kind, source, session, data in zip(*(cols[c] for c in names)):
                    out.append({"v": 1, "seq": seq, "ts": ts, "kind": kind, "source": source,
                                "session": session, "data": _loads_data(data)})
    except (EventsError, MemoryError):
        raise
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise EventsError(f"{path} is not a readable Parquet export ({exc}); export it again") from None
    return read


def _loads_data(data: str):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _ordered(events: list[dict]) -> list[dict]:
    events.sort(key=_SEQ)
    if len(set(map(_SEQ, events))) == len(events):
        return events
    out: list[dict] = []
    last = None
    for ev in events:
        if ev["seq"] != last:
            out.append(ev)
            last = ev["seq"]
    return out
