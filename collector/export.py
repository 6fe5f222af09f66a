"""Export: every stored bundle, decrypted, deduplicated, ordered and schema-checked, as files.

Takes a collector store (`collector.storage.BundleStore`), org private keys and an empty output
directory; gives one file per device and UTC day of `ts`, `manifest.json` (written last: its
presence means the export is complete) and `_invalid.jsonl` for events that fail the event schema.

    OUT/<device>/<YYYY-MM-DD>.jsonl     one event per line, contract key order, `seq` order
    OUT/<device>/<YYYY-MM-DD>.parquet   the same rows in the Parquet layout below
    OUT/_invalid.jsonl                  {"device", "bundle_id", "seq", "error", "event"} per line
    OUT/manifest.json                   devices (id -> directory, files, counts, gaps), totals

`<device>` is the device id when it is a safe file name (letters, digits, `._@-`, at most 128,
not starting with a dot), else `device-` and 16 hex digits of its sha256; the manifest maps them.

Parquet layout (stable; one row per event; DuckDB reads it with `read_parquet('OUT/*/*.parquet')`):

    device  string  not null    the device id
    v       int32   not null    event format version
    seq     int64   not null    per-device sequence number
    ts      int64   not null    wall clock, ns since the Unix epoch (`make_timestamp_ns(ts)` in DuckDB)
    kind    string  not null
    source  string  not null
    session string  nullable
    data    string  not null    the `data` object as compact JSON (`data::JSON ->> 'path'`)

Promises:
- Each (device, seq) appears once: bundles whose ranges overlap are merged by `seq`, and a seq
  seen again is dropped (counted as a duplicate; as a conflict when its content differs).
- Deterministic: the same store and keys give the same bytes (no times, sorted devices, stable
  JSON, fixed Parquet options), whatever order the bundles arrived in.
- Bounded memory: one bundle stream per overlapping bundle, and at most `ROW_GROUP` buffered rows
  per open Parquet file.
- Gaps in the summary are the `seq` ranges absent from 1 to each device's last exported `seq`:
  lost, skipped and forgotten alike (the trace's `agent.gap`/`agent.forget` events say which;
  `tracecap collector verify` tells lost from skipped by the hash chain).
- A key that opens none of the store's bundles raises `ExportError` before anything is written;
  a bundle that cannot be read is skipped and listed in the summary (`unreadable`).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import heapq
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from collector.storage import BundleRow, BundleStore
from schemas.bundle import MAX_HEADER_SIZE, BundleError, open_bundle, read_header
from schemas.keys import OrgPrivateKey

ROW_GROUP = 50_000
HEADER_BYTES = MAX_HEADER_SIZE + 64  # preamble and header: all `read_header` reads
EVENT_KEYS = ("v", "seq", "ts", "kind", "source", "session", "data")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,127}$")

# Used only while `schemas/event.schema.json` does not exist: the contract's event envelope.
ENVELOPE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": list(EVENT_KEYS),
    "additionalProperties": False,
    "properties": {
        "v": {"type": "integer", "minimum": 1},
        "seq": {"type": "integer", "minimum": 1},
        "ts": {"type": "integer", "minimum": 0},
        "kind": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1},
        "session": {"type": ["string", "null"]},
        "data": {"type": "object"},
    },
}


class ExportError(Exception):
    """The export cannot start (e.g. the key opens no bundle); `str()` is one sentence."""


def device_dir_name(device_id: str) -> str:
    if _SAFE_NAME.match(device_id):
        return device_id
    return "device-" + hashlib.sha256(device_id.encode()).hexdigest()[:16]


def utc_day(ts_ns: int) -> str:
    return datetime.datetime.fromtimestamp(ts_ns // 10**9, tz=datetime.timezone.utc).strftime("%Y-%m-%d")


def event_line(ev: dict) -> str:
    """One JSON line, keys in the contract's order, compact, UTF-8 kept as is."""
    return json.dumps({k: ev[k] for k in EVENT_KEYS if k in ev} | {k: v for k, v in ev.items() if k not in EVENT_KEYS},
                      ensure_ascii=False, separators=(",", ":"))


def load_event_validator() -> tuple[Any, str]:
    """(validator, what it checks against): `schemas/event.schema.json` through
    `schemas.validate.EventValidator` (compiled: fast enough for millions of events), or the
    built-in envelope while that file does not exist."""
    from schemas.validate import SCHEMA_FILE, EventValidator

    if SCHEMA_FILE.is_file():
        return EventValidator(), "schemas/event.schema.json"
    return EventValidator(ENVELOPE_SCHEMA), "the built-in event envelope"


def first_error(validator, ev: Any) -> str | None:
    """None if `ev` is valid, else its problems in one line, each starting with the field path."""
    if validator.is_valid(ev):
        return None
    return ("; ".join(validator.errors(ev)) or "the event does not match the event schema")[:500]


def _ranges_between(prev: int, seq: int) -> tuple[int, int] | None:
    return (prev + 1, seq - 1) if seq > prev + 1 else None


@dataclasses.dataclass
class DeviceExport:
    device_id: str
    directory: str
    events: int = 0
    invalid: int = 0
    duplicates: int = 0
    conflicts: int = 0  # duplicates whose content differs from the first copy
    first_seq: int | None = None
    last_seq: int | None = None
    gaps: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    files: dict[str, int] = dataclasses.field(default_factory=dict)  # relative path -> events

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "directory": self.directory, "events": self.events,
                "invalid": self.invalid, "duplicates": self.duplicates, "conflicts": self.conflicts,
                "first_seq": self.first_seq, "last_seq": self.last_seq,
                "gaps": [{"first": a, "last": b} for a, b in self.gaps],
                "missing_seqs": sum(b - a + 1 for a, b in self.gaps),
                "files": dict(sorted(self.files.items()))}


@dataclasses.dataclass
class ExportSummary:
    out: Path
    format: str
    devices: list[DeviceExport]
    bundles: int
    unreadable: list[tuple[str, str]]  # (bundle id, reason)
    schema: str

    @property
    def events(self) -> int:
        return sum(d.events for d in self.devices)

    @property
    def invalid(self) -> int:
        return sum(d.invalid for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "schema": self.schema,
            "bundles": self.bundles,
            "events": self.events,
            "devices": len(self.devices),
            "invalid": self.invalid,
            "invalid_file": "_invalid.jsonl" if self.invalid else None,
            "duplicates": sum(d.duplicates for d in self.devices),
            "gaps": sum(len(d.gaps) for d in self.devices),
            "unreadable": [{"bundle_id": b, "reason": r} for b, r in self.unreadable],
            "per_device": [d.to_json() for d in self.devices],
        }

    def describe(self) -> str:
        lines = [f"exported {self.events} events from {len(self.devices)} devices "
                 f"({self.bundles} bundles) to {self.out} as {self.format}"]
        for d in self.devices:
            gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in d.gaps) or "none"
            from collector.verify import printable

            lines.append(f"  {printable(d.device_id)}: {d.events} events, seq {d.first_seq}..{d.last_seq}, "
                         f"{len(d.files)} files, {d.duplicates} duplicates dropped, missing seq: {gaps}")
        if self.invalid:
            lines.append(f"{self.invalid} events failed the event schema ({self.schema}); "
                         f"they are in {self.out / '_invalid.jsonl'}")
        else:
            lines.append(f"every event is valid against {self.schema}")
        for bid, reason in self.unreadable:
            lines.append(f"unreadable bundle {bid}: {reason}")
        return "\n".join(lines)


class _Progress:
    """A one-line bar on a terminal stream, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream, self.total, self.done, self.last = stream, total, 0, 0.0

    def step(self, events: int) -> None:
        self.done += 1
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and self.done < self.total:
            return
        self.last = now
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\rexport [{bar:<30}] {self.done}/{self.total} bundles, {events} events")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.total:
            self.stream.write("\n")
            self.stream.flush()


class _JsonlDay:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "w", encoding="utf-8", newline="\n")

    def add(self, device_id: str, ev: dict) -> None:
        self.f.write(event_line(ev))
        self.f.write("\n")

    def close(self) -> None:
        self.f.close()


def parquet_schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("device", pa.string(), nullable=False),
        pa.field("v", pa.int32(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("session", pa.string(), nullable=True),
        pa.field("data", pa.string(), nullable=False),
    ])


class _ParquetDay:
    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.schema = parquet_schema()
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd", version="2.6",
                                       write_statistics=True, use_dictionary=["device", "kind", "source", "session"])
        self.rows: dict[str, list] = {f.name: [] for f in self.schema}

    def add(self, device_id: str, ev: dict) -> None:
        r = self.rows
        r["device"].append(device_id)
        r["v"].append(ev["v"])
        r["seq"].append(ev["seq"])
        r["ts"].append(ev["ts"])
        r["kind"].append(ev["kind"])
        r["source"].append(ev["source"])
        r["session"].append(ev.get("session"))
        r["data"].append(json.dumps(ev.get("data", {}), ensure_ascii=False, separators=(",", ":")))
        if len(r["seq"]) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows["seq"]:
            self.writer.write_table(pa.Table.from_pydict(self.rows, schema=self.schema))
            for col in self.rows.values():
                col.clear()

    def close(self) -> None:
        self._flush()
        self.writer.close()


def _clusters(rows: Sequence[BundleRow]) -> Iterator[list[BundleRow]]:
    """Runs of bundles (in seq order) whose seq ranges overlap, to be merged by seq."""
    cluster: list[BundleRow] = []
    top = -1
    for row in rows:
        if cluster and row.first_seq > top:
            yield cluster
            cluster = []
        cluster.append(row)
        top = max(top, row.last_seq)
    if cluster:
        yield cluster


def export_store(store: BundleStore, keys: Sequence[OrgPrivateKey], out: Path, fmt: str = "jsonl",
                 progress: TextIO | None = None) -> ExportSummary:
    """Write the export into `out` (created if missing; expected empty) and return its summary."""
    if fmt not in ("jsonl", "parquet"):
        raise ExportError(f"unknown export format {fmt!r}; use jsonl or parquet")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportError("Parquet export needs pyarrow; install it (pip install 'tracecap[parquet]') "
                              "or use --format jsonl") from None
    validator, schema_name = load_event_validator()
    plan, unreadable, total, readable = plan_export(store, keys)

    out.mkdir(parents=True, exist_ok=True)
    bar = _Progress(progress, readable)
    devices: list[DeviceExport] = []
    invalid_f: TextIO | None = None

    def on_invalid(record: dict) -> None:
        nonlocal invalid_f
        if invalid_f is None:
            invalid_f = open(out / "_invalid.jsonl", "w", encoding="utf-8", newline="\n")
        invalid_f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

    try:
        for device_id, rows in plan:
            dev = DeviceExport(device_id, device_dir_name(device_id))
            devices.append(dev)
            if not rows:
                continue
            (out / dev.directory).mkdir(exist_ok=True)
            writers: dict[str, Any] = {}
            try:
                for ev in checked_events(store, rows, keys, dev, validator, unreadable, bar, on_invalid):
                    day = utc_day(ev["ts"])
                    rel = f"{dev.directory}/{day}.{fmt}"
                    w = writers.get(rel)
                    if w is None:
                        w = writers[rel] = (_JsonlDay if fmt == "jsonl" else _ParquetDay)(out / rel)
                    w.add(device_id, ev)
                    dev.files[rel] = dev.files.get(rel, 0) + 1
                    dev.events += 1
            finally:
                for w in writers.values():
                    w.close()
    finally:
        if invalid_f is not None:
            invalid_f.close()
        bar.close()
    summary = ExportSummary(out=out, format=fmt, devices=devices, bundles=total,
                            unreadable=sorted(unreadable), schema=schema_name)
    manifest = json.dumps(summary.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (out / "manifest.json").write_text(manifest, encoding="utf-8")
    return summary


def plan_export(store: BundleStore, keys: Sequence[OrgPrivateKey]
                ) -> tuple[list[tuple[str, list[BundleRow]]], list[tuple[str, str]], int, int]:
    """(each device's bundles the keys can open, the unreadable ones with why, bundles in all,
    readable bundles); `ExportError` if the keys open none."""
    key_ids = {k.key_id for k in keys}
    plan: list[tuple[str, list[BundleRow]]] = []
    unreadable: list[tuple[str, str]] = []
    readable = total = 0
    for device_id in store.device_ids():
        rows = []
        for row in store.bundles(device_id):
            total += 1
            reason = _precheck(store, row, key_ids)
            if reason:
                unreadable.append((row.bundle_id, reason))
            else:
                rows.append(row)
                readable += 1
        plan.append((device_id, rows))
    if total and not readable:
        names = ", ".join(sorted(key_ids))
        raise ExportError(f"the org key ({names}) opens none of the {total} bundles in {store.describe()}; "
                          f"use the org.key whose org.pub the devices encrypt to")
    return plan, unreadable, total, readable


def checked_events(store: BundleStore, rows: Sequence[BundleRow], keys: Sequence[OrgPrivateKey],
                   dev: DeviceExport, validator, unreadable: list[tuple[str, str]], bar: "_Progress",
                   on_invalid: Callable[[dict], None]) -> Iterator[dict]:
    """The device's events once each, in seq order, valid against the event schema. Counts
    duplicates, conflicts, gaps, the seq range and invalid events into `dev` (the caller counts
    what it writes); each invalid event goes to `on_invalid` as an `_invalid.jsonl` record."""
    prev_seq = 0
    prev_ev: dict | None = None
    for bundle_id, ev in _device_events(store, rows, keys, unreadable, bar, lambda: dev.events):
        seq = ev.get("seq") if isinstance(ev, dict) else None
        if seq == prev_seq:
            dev.duplicates += 1
            dev.conflicts += ev != prev_ev
            continue
        gap = _ranges_between(prev_seq, seq)
        if gap:
            dev.gaps.append(gap)
        prev_seq, prev_ev = seq, ev
        if dev.first_seq is None:
            dev.first_seq = seq
        dev.last_seq = seq
        error = first_error(validator, ev)
        if error is None and type(ev.get("ts")) is not int:
            error = "ts: not an integer"  # the day file needs it, whatever the schema says
        if error is not None:
            on_invalid({"device": dev.device_id, "bundle_id": bundle_id, "seq": seq, "error": error, "event": ev})
            dev.invalid += 1
            continue
        yield ev


def _precheck(store: BundleStore, row: BundleRow, key_ids: set[str]) -> str | None:
    """Why the bundle cannot be exported with these keys (header only), or None."""
    try:
        with store.open_object(row.digest, limit=HEADER_BYTES) as f:
            header = read_header(f)
    except OSError as exc:
        return f"its stored object cannot be read ({exc.strerror})"
    except BundleError as exc:
        return str(exc)
    if not key_ids & set(header.recipients):
        return f"it is encrypted to org keys {', '.join(header.recipients)}, not the given ones"
    return None


def _device_events(store: BundleStore, rows: Sequence[BundleRow], keys: Sequence[OrgPrivateKey],
                   unreadable: list[tuple[str, str]], bar: _Progress,
                   exported: Callable[[], int]) -> Iterator[tuple[str, dict]]:
    """(bundle id, event) for the device in seq order; equal seqs adjacent, the earlier bundle first."""

    def stream(row: BundleRow) -> Iterator[tuple[str, dict]]:
        try:
            with store.open_object(row.digest) as f:
                for ev in open_bundle(f, keys):
                    yield row.bundle_id, ev
        except OSError as exc:
            unreadable.append((row.bundle_id, f"its stored object cannot be read ({exc.strerror})"))
        except BundleError as exc:
            unreadable.append((row.bundle_id, str(exc)))
        bar.step(exported())

    for cluster in _clusters(rows):
        if len(cluster) == 1:
            yield from stream(cluster[0])
        else:
            yield from heapq.merge(*(stream(r) for r in cluster), key=lambda item: item[1]["seq"])
