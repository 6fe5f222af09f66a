"""Reading events for mining: a `tracecap export` directory, a JSON-lines file, or standard input.

Takes paths as `--events` gives them; gives each device's events in `seq` order, one device at a
time (`read_devices`), duplicates of a `seq` dropped. What is read:

- an export directory (it holds `manifest.json`): `<device>/<YYYY-MM-DD>.jsonl` or `.parquet`,
  the device id taken from the manifest (the directory name when the manifest does not list it);
- a JSON-lines file, one event per line as `tracecap log --json` and `bundle decrypt` print them
  (blank lines skipped); `-` is standard input. Such events carry no device id: a `device` key on
  the line wins, else the device is `local` for standard input and the file's name otherwise.

Promises: a path that does not exist, a line that is not a JSON object with an integer `seq`, or a
Parquet file without pyarrow raise `EventsError` naming the file, the line and the fix, before any
output is written. Memory: one device's events at a time for an export directory.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO


class EventsError(Exception):
    """Events that cannot be read; `str()` is one sentence."""


Device = tuple[str, list[dict]]


def read_devices(paths: Iterable[str], stdin: TextIO | None = None) -> Iterator[Device]:
    """(device id, events in seq order) per device, devices in a stable order."""
    plan: dict[str, list[tuple[str, Path | None]]] = {}
    order: list[str] = []
    for raw in paths:
        for device, source in _sources(raw):
            if device not in plan:
                plan[device] = []
                order.append(device)
            plan[device].append(source)
    for device in order:
        events: list[dict] = []
        for kind, path in plan[device]:
            events.extend(_read(kind, path, device, stdin))
        yield device, _ordered(events)


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


def _read(kind: str, path: Path | None, device: str, stdin: TextIO | None) -> Iterator[dict]:
    if kind == "parquet":
        yield from _read_parquet(path)
        return
    name = "standard input" if path is None else str(path)
    try:
        stream = (stdin or sys.stdin) if path is None else open(path, encoding="utf-8")
    except OSError as exc:
        raise EventsError(f"cannot read {name}: {exc.strerror}; check the path and its permissions") from None
    try:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                raise EventsError(f"{name} line {n} is not JSON; pass events as `tracecap log --json` "
                                  f"prints them, one per line") from None
            if not isinstance(ev, dict) or type(ev.get("seq")) is not int or not isinstance(ev.get("kind"), str):
                raise EventsError(f"{name} line {n} is not an event (an object with an integer `seq` "
                                  f"and a `kind`); pass events as `tracecap log --json` prints them")
            if not isinstance(ev.get("data"), dict):
                ev["data"] = {}
            yield ev
    except UnicodeDecodeError:
        raise EventsError(f"{name} is not UTF-8 text; pass a JSON-lines file of events") from None
    finally:
        if path is not None:
            stream.close()


def _read_parquet(path: Path) -> Iterator[dict]:
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
