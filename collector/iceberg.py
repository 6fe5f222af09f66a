"""Export to an Apache Iceberg table: every stored event, once, appended through pyiceberg.

Takes a collector store, org private keys, a SQL catalog URL (`sqlite:///PATH` or
`postgresql://…`; the catalog is named `tracecap`, its tables are the ones Spark's and Trino's JDBC
catalogs read), a warehouse (`file:///DIR` or `s3://BUCKET/PREFIX`) and a table `NS.NAME`; gives
the events appended to the table, created if missing, and a summary.

Table layout: the Parquet export's columns, plus `event_time`, and partitioned by day of it:

    device string, v int, seq long, ts long (ns), event_time timestamptz (ts to the µs, UTC),
    kind string, source string, session string (optional), data string (JSON)
    partition: day(event_time)

Exactly once, at (device, seq): the table property `tracecap.exported` names a small state file
(zstd-compressed JSON, under `<warehouse>/_tracecap/<NS.NAME>/`, outside the table's own
directory so table maintenance never removes it) listing, per device, the seq ranges the table
holds; each commit also records it in its snapshot summary, for history. An export holds a lock
for the whole run, so one writer appends at a time (a PostgreSQL advisory lock on the catalog
database, or a file lock beside the SQLite catalog); it reads the state, appends only events
outside those ranges, checks just before committing that the table still names the state it
read, and commits the data files and the new state in one Iceberg commit. A commit by another
kind of writer in between (a compaction, someone's own append) does not touch tracecap's rows or
state, so pyiceberg's rebase of the append onto it is harmless. An export that crashes before its
commit leaves only unreferenced files; the next run appends the same events.

Bounded memory and few large files: events stream bundle by bundle; rows are buffered per day
partition up to `ROW_GROUP` rows and at most `MAX_BUFFERED_ROWS` in all (the largest buffer is
written out first), and each day gets one Parquet file per run, rolled over at
`TARGET_FILE_BYTES`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import urllib.parse
import uuid
from bisect import bisect_right
from typing import Any, Iterator, Sequence, TextIO

from collector.export import (DeviceExport, _Progress, checked_events, device_dir_name,
                              load_event_validator, plan_export)
from collector.storage import BundleStore
from schemas.keys import OrgPrivateKey

CATALOG_NAME = "tracecap"
STATE_PROPERTY = "tracecap.exported"
ROW_GROUP = 50_000
MAX_BUFFERED_ROWS = 200_000
TARGET_FILE_BYTES = 256 * 1024 * 1024
_LOCK_KEY = 0x7472_6163_6963_6562  # pg_advisory_lock key for "one Iceberg export at a time"


class IcebergConfigError(Exception):
    """A catalog, warehouse or table argument that cannot be used; `str()` is one sentence."""


class IcebergWriteError(Exception):
    """The export failed at run time (warehouse, catalog, a concurrent writer, a lost state file);
    nothing was appended. `str()` is one sentence."""


MAX_INVALID_LISTED = 1000  # invalid events listed in the summary; all are counted


def arrow_schema():
    import pyarrow as pa

    return pa.schema([
        pa.field("device", pa.string(), nullable=False),
        pa.field("v", pa.int32(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("session", pa.string(), nullable=True),
        pa.field("data", pa.string(), nullable=False),
    ])


def table_schema():
    from pyiceberg.schema import Schema
    from pyiceberg.types import IntegerType, LongType, NestedField, StringType, TimestamptzType

    return Schema(
        NestedField(1, "device", StringType(), required=True),
        NestedField(2, "v", IntegerType(), required=True),
        NestedField(3, "seq", LongType(), required=True),
        NestedField(4, "ts", LongType(), required=True),
        NestedField(5, "event_time", TimestamptzType(), required=True),
        NestedField(6, "kind", StringType(), required=True),
        NestedField(7, "source", StringType(), required=True),
        NestedField(8, "session", StringType(), required=False),
        NestedField(9, "data", StringType(), required=True),
    )


def partition_spec():
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform

    return PartitionSpec(PartitionField(source_id=5, field_id=1000, transform=DayTransform(), name="event_time_day"))


# ---- exported ranges: pure -----------------------------------------------------------------

def covered(ranges: Sequence[tuple[int, int]], seq: int) -> bool:
    """Whether `seq` is inside one of the sorted, disjoint, inclusive `ranges`."""
    i = bisect_right(ranges, (seq, float("inf"))) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


def covers(ranges: Sequence[tuple[int, int]], first: int, last: int) -> bool:
    """Whether one of the sorted, disjoint, inclusive `ranges` holds all of first..last."""
    i = bisect_right(ranges, (first, float("inf"))) - 1
    return i >= 0 and ranges[i][0] <= first and last <= ranges[i][1]


def union_ranges(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of two lists of inclusive ranges, sorted and disjoint, adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted([*a, *b]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


# ---- catalog, lock, state ------------------------------------------------------------------

def _sqlalchemy_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    raise IcebergConfigError(f"--catalog {url!r} is neither sqlite:///PATH nor postgresql://USER@HOST:PORT/DB")


def _warehouse_properties(warehouse: str) -> dict[str, str]:
    scheme = urllib.parse.urlsplit(warehouse).scheme
    if scheme == "file":
        path = urllib.parse.unquote(urllib.parse.urlsplit(warehouse).path)
        os.makedirs(path, exist_ok=True)
        return {"warehouse": warehouse}
    if scheme == "s3":
        props = {"warehouse": warehouse, "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO"}
        env = {"s3.endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
               "s3.access-key-id": ("AWS_ACCESS_KEY_ID",), "s3.secret-access-key": ("AWS_SECRET_ACCESS_KEY",),
               "s3.session-token": ("AWS_SESSION_TOKEN",), "s3.region": ("AWS_REGION", "AWS_DEFAULT_REGION")}
        for prop, names in env.items():
            value = next((os.environ[n] for n in names if os.environ.get(n)), None)
            if value:
                props[prop] = value
        props.setdefault("s3.region", "us-east-1")
        return props
    raise IcebergConfigError(f"--warehouse {warehouse!r} is neither file:///DIR nor s3://BUCKET/PREFIX")


@contextlib.contextmanager
def export_lock(catalog_url: str) -> Iterator[None]:
    """One Iceberg export at a time per catalog: a session advisory lock in PostgreSQL (released
    if the process dies), or an flock on a file beside the SQLite catalog."""
    if catalog_url.startswith(("postgresql://", "postgres://")):
        import psycopg

        try:
            conn = psycopg.connect(catalog_url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise IcebergConfigError(f"--catalog: PostgreSQL cannot be reached ({reason}); check the URL") from None
        with conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            yield
        return
    path = os.path.abspath(urllib.parse.unquote(catalog_url[len("sqlite:///"):]))  # SQLAlchemy's reading
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".export-lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_state(table) -> dict[str, list[tuple[int, int]]]:
    import zstandard

    location = table.properties.get(STATE_PROPERTY)
    if not location:
        return {}
    with table.io.new_input(location).open() as f:
        doc = json.loads(zstandard.ZstdDecompressor().decompress(f.read(), max_output_size=1 << 31))
    return {d: [tuple(r) for r in ranges] for d, ranges in doc["devices"].items()}


def _write_state(table, warehouse: str, table_name: str, export_id: str,
                 state: dict[str, list[tuple[int, int]]]) -> str:
    import zstandard

    location = f"{warehouse.rstrip('/')}/_tracecap/{table_name}/state-{export_id}.zjson"  # not .zst: pyarrow would compress it again
    doc = {"version": 1, "devices": {d: [list(r) for r in ranges] for d, ranges in sorted(state.items())}}
    payload = zstandard.ZstdCompressor(level=6).compress(json.dumps(doc, separators=(",", ":")).encode())
    with table.io.new_output(location).create(overwrite=True) as f:
        f.write(payload)
    return location


# ---- writing ---------------------------------------------------------------------------------

class _DayFiles:
    """One Parquet file per day partition (rolled over at TARGET_FILE_BYTES), rows buffered per
    day up to ROW_GROUP and MAX_BUFFERED_ROWS in all."""

    def __init__(self, table, export_id: str) -> None:
        self.table, self.export_id = table, export_id
        self.schema = arrow_schema()
        self.buffers: dict[str, dict[str, list]] = {}
        self.open: dict[str, tuple[Any, Any, str]] = {}  # day -> (writer, stream, location)
        self.paths: list[str] = []
        self.file_rows: dict[str, int] = {}
        self.buffered = 0
        self.counter = 0

    def add(self, device_id: str, ev: dict) -> None:
        day = datetime.datetime.fromtimestamp(ev["ts"] // 10**9, tz=datetime.timezone.utc).strftime("%Y-%m-%d")
        buf = self.buffers.get(day)
        if buf is None:
            buf = self.buffers[day] = {f.name: [] for f in self.schema}
        buf["device"].append(device_id)
        buf["v"].append(ev["v"])
        buf["seq"].append(ev["seq"])
        buf["ts"].append(ev["ts"])
        buf["event_time"].append(ev["ts"] // 1000)
        buf["kind"].append(ev["kind"])
        buf["source"].append(ev["source"])
        buf["session"].append(ev.get("session"))
        buf["data"].append(json.dumps(ev.get("data", {}), ensure_ascii=False, separators=(",", ":")))
        self.buffered += 1
        if len(buf["seq"]) >= ROW_GROUP:
            self._flush(day)
        elif self.buffered >= MAX_BUFFERED_ROWS:
            self._flush(max(self.buffers, key=lambda d: len(self.buffers[d]["seq"])))

    def _flush(self, day: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = self.buffers.pop(day)
        n = len(buf["seq"])
        self.buffered -= n
        if not n:
            return
        if day not in self.open:
            self.counter += 1
            location = (f"{self.table.location().rstrip('/')}/data/event_time_day={day}/"
                        f"{self.export_id}-{self.counter:05d}.parquet")
            stream = self.table.io.new_output(location).create(overwrite=False)
            writer = pq.ParquetWriter(stream, self.schema, compression="zstd", write_statistics=True,
                                      use_dictionary=["device", "kind", "source", "session"])
            self.open[day] = (writer, stream, location)
            self.paths.append(location)
            self.file_rows[location] = 0
        writer, stream, location = self.open[day]
        buf["event_time"] = pa.array(buf["event_time"], type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        writer.write_table(pa.Table.from_pydict(buf, schema=self.schema), row_group_size=ROW_GROUP)
        self.file_rows[location] += n
        if stream.tell() >= TARGET_FILE_BYTES:
            self._close(day)

    def _close(self, day: str) -> None:
        writer, stream, _ = self.open.pop(day)
        writer.close()
        stream.close()

    def finish(self) -> list[str]:
        for day in list(self.buffers):
            self._flush(day)
        for day in list(self.open):
            self._close(day)
        return self.paths


@dataclasses.dataclass
class IcebergSummary:
    table: str
    snapshot_id: int | None
    devices: list[DeviceExport]
    bundles: int
    unreadable: list[tuple[str, str]]
    schema: str
    already: int  # events found already in the table
    files: dict[str, int]  # data file location -> rows
    file_bytes: dict[str, int]
    invalid_records: list[dict]

    @property
    def events(self) -> int:
        return sum(d.events for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "iceberg", "table": self.table, "snapshot_id": self.snapshot_id, "schema": self.schema,
            "bundles": self.bundles, "events": self.events, "already_in_table": self.already,
            "devices": len(self.devices), "invalid": sum(d.invalid for d in self.devices),
            "invalid_events": self.invalid_records[:1000],
            "duplicates": sum(d.duplicates for d in self.devices),
            "files": [{"location": loc, "rows": rows, "bytes": self.file_bytes.get(loc)}
                      for loc, rows in self.files.items()],
            "unreadable": [{"bundle_id": b, "reason": r} for b, r in self.unreadable],
        }

    def describe(self) -> str:
        if not self.bundles:
            lines = [f"no bundles in the store; nothing appended to {self.table}"]
        elif self.events:
            sizes = sorted(self.file_bytes.values())
            lines = [f"appended {self.events} events from {sum(1 for d in self.devices if d.events)} devices to "
                     f"{self.table} (snapshot {self.snapshot_id}) in {len(self.files)} files "
                     f"({sum(sizes) / 1e6:.1f} MB); {self.already} events were already in the table"]
        else:
            lines = [f"nothing new for {self.table}: all {self.already} events of {self.bundles} bundles "
                     f"are already in the table"]
        invalid = sum(d.invalid for d in self.devices)
        if invalid:
            lines.append(f"{invalid} events failed the event schema ({self.schema}) and were not appended; "
                         f"--json lists them")
        for bid, reason in self.unreadable:
            lines.append(f"unreadable bundle {bid}: {reason}")
        return "\n".join(lines)


def export_iceberg(store: BundleStore, keys: Sequence[OrgPrivateKey], *, catalog: str, warehouse: str,
                   table: str = "traces.events", progress: TextIO | None = None) -> IcebergSummary:
    """Append every stored event not yet in `table`, exactly once (see the module docstring)."""
    try:
        import pyarrow  # noqa: F401
        from pyiceberg.catalog.sql import SqlCatalog
    except ImportError:
        raise IcebergConfigError("Iceberg export needs the fleet extra; install it with "
                                 "pip install 'tracecap[fleet]'") from None
    parts = table.split(".")
    if len(parts) != 2 or not all(parts):
        raise IcebergConfigError(f"--table {table!r} is not NAMESPACE.NAME; for example traces.events")
    uri = _sqlalchemy_url(catalog)
    props = _warehouse_properties(warehouse)
    validator, schema_name = load_event_validator()
    plan, unreadable, total, readable = plan_export(store, keys)

    with export_lock(catalog):
        try:
            cat = SqlCatalog(CATALOG_NAME, uri=uri, **props)
            cat.create_namespace_if_not_exists(parts[0])
            tbl = cat.create_table_if_not_exists(table, schema=table_schema(), partition_spec=partition_spec(),
                                                 properties={"write.parquet.compression-codec": "zstd"})
        except IcebergConfigError:
            raise
        except Exception as exc:
            raise IcebergConfigError(f"cannot open Iceberg table {table} in catalog {catalog.split('@')[-1]} "
                                     f"with warehouse {warehouse}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        try:
            state = _read_state(tbl)
        except (OSError, ValueError, KeyError) as exc:
            raise IcebergWriteError(f"the export state that {table}'s current snapshot names ({STATE_PROPERTY}) cannot "
                              f"be read ({exc}); restore it from the warehouse, as without it the export "
                              f"cannot tell which events the table holds") from None
        try:
            return _append(store, keys, plan, unreadable, total, readable, tbl, state, table, warehouse,
                           validator, schema_name, progress)
        except OSError as exc:
            raise IcebergWriteError(f"writing to {warehouse} failed ({exc}); nothing was appended to {table}, "
                                    f"run the export again") from None


def _append(store, keys, plan, unreadable, total, readable, tbl, state, table, warehouse, validator,
            schema_name, progress) -> IcebergSummary:
    """Under the export lock: write the events the table does not hold, then one commit."""
    from pyiceberg.exceptions import CommitFailedException

    export_id = uuid.uuid4().hex
    files = _DayFiles(tbl, export_id)
    devices: list[DeviceExport] = []
    invalid_records: list[dict] = []

    def keep_invalid(record: dict) -> None:
        if len(invalid_records) < MAX_INVALID_LISTED:
            invalid_records.append(record)

    already = 0
    new_state = dict(state)
    bar = _Progress(progress, readable)
    try:
        for device_id, rows in plan:
            dev = DeviceExport(device_id, device_dir_name(device_id))
            devices.append(dev)
            done = state.get(device_id, [])
            written: list[tuple[int, int]] = []
            # Bundles wholly inside what the table holds are not even opened: a re-run costs
            # one pass over the index.
            fresh = [r for r in rows if not covers(done, r.first_seq, r.last_seq)]
            for r in rows:
                if covers(done, r.first_seq, r.last_seq):
                    already += r.count
                    bar.step(dev.events)
            for ev in checked_events(store, fresh, keys, dev, validator, unreadable, bar, keep_invalid):
                if done and covered(done, ev["seq"]):
                    already += 1
                    continue
                files.add(device_id, ev)
                dev.events += 1
                if written and ev["seq"] == written[-1][1] + 1:
                    written[-1] = (written[-1][0], ev["seq"])
                else:
                    written.append((ev["seq"], ev["seq"]))
            if written:
                new_state[device_id] = union_ranges(done, written)
        paths = files.finish()
    finally:
        bar.close()
    snapshot_id = tbl.current_snapshot().snapshot_id if tbl.current_snapshot() else None
    sizes: dict[str, int] = {}
    if paths:
        for loc in paths:
            with tbl.io.new_input(loc).open() as f:
                sizes[loc] = f.seek(0, 2)
        state_location = _write_state(tbl, warehouse, table, export_id, new_state)
        summary_props = {STATE_PROPERTY: state_location, "tracecap.export-id": export_id,
                         "tracecap.events": str(sum(d.events for d in devices))}
        read_from = tbl.properties.get(STATE_PROPERTY)
        tbl.refresh()
        if tbl.properties.get(STATE_PROPERTY) != read_from:
            raise IcebergWriteError(f"another export committed to {table} while this one ran (they did not share "
                                    f"the export lock: the same --catalog URL gives them one); nothing was "
                                    f"appended, run the export again")
        try:
            with tbl.transaction() as tx:
                tx.set_properties({STATE_PROPERTY: state_location})
                tx.add_files(paths, snapshot_properties=summary_props, check_duplicate_files=False)
        except CommitFailedException as exc:
            raise IcebergWriteError(f"another writer changed {table} during this export ({exc}); nothing was "
                              f"appended, run the export again") from None
        snapshot_id = tbl.current_snapshot().snapshot_id
    return IcebergSummary(table=table, snapshot_id=snapshot_id, devices=devices, bundles=total,
                          unreadable=sorted(unreadable), schema=schema_name, already=already,
                          files=dict(files.file_rows), file_bytes=sizes, invalid_records=invalid_records)

