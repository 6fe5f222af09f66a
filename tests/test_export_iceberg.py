"""`tracecap export --format iceberg`: appended once through a pyiceberg SQL catalog named
`tracecap`, partitioned by day, read back with pyiceberg and DuckDB; re-runs, late bundles, an
export killed half-way and two exports at once add no row twice; on SQLite + a file warehouse and
on PostgreSQL + an S3 warehouse (SeaweedFS), with the bundles in S3 + PostgreSQL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from collector.iceberg import covered, covers, union_ranges
from schemas.keys import generate_org_keypair, write_org_keypair
from tests.fleet_services import S3_BUCKET, Backend
from tests.test_collector_support import BASE_TS, DAY_NS, REPO, Device, ingest, make_event, run_cli


@pytest.mark.parametrize("ranges,seq,inside", [
    ([], 1, False), ([(1, 5)], 1, True), ([(1, 5)], 5, True), ([(1, 5)], 6, False),
    ([(1, 5), (9, 9)], 9, True), ([(1, 5), (9, 9)], 7, False), ([(3, 5)], 2, False),
])
def test_covered(ranges, seq, inside):
    assert covered(ranges, seq) is inside


@pytest.mark.parametrize("ranges,first,last,inside", [
    ([], 1, 1, False), ([(1, 5)], 1, 5, True), ([(1, 5)], 2, 6, False), ([(1, 5), (7, 9)], 4, 8, False),
    ([(1, 5), (7, 9)], 7, 9, True),
])
def test_covers(ranges, first, last, inside):
    assert covers(ranges, first, last) is inside


@pytest.mark.parametrize("a,b,union", [
    ([], [(1, 3)], [(1, 3)]), ([(1, 3)], [(4, 6)], [(1, 6)]), ([(1, 3)], [(5, 6)], [(1, 3), (5, 6)]),
    ([(1, 3), (7, 9)], [(4, 6)], [(1, 9)]), ([(5, 9)], [(1, 2), (3, 4)], [(1, 9)]),
])
def test_union_ranges(a, b, union):
    assert union_ranges(a, b) == union


class World:
    """A store (local or fleet), an org key, and where the table goes."""

    def __init__(self, backend: Backend, tmp_path, catalog: str, warehouse: str) -> None:
        self.backend = backend
        priv, pub = generate_org_keypair()
        self.priv, self.pub = priv, pub
        self.key, _ = write_org_keypair(tmp_path / "keys", priv, pub)
        self.catalog, self.warehouse = catalog, warehouse

    def args(self, *extra: str) -> list[str]:
        return ["export", *self.backend.args(), "--key", str(self.key), "--format", "iceberg",
                "--catalog", self.catalog, "--warehouse", self.warehouse, *extra]

    def export(self, *extra: str, timeout: float = 180):
        return run_cli(*self.args(*extra), timeout=timeout, env=self.backend.env())

    def export_here(self):
        """The same export in this process (what the CLI runs), to spare a process start."""
        from collector.iceberg import export_iceberg

        old = dict(os.environ)
        os.environ.update(self.backend.env())
        try:
            with self.backend.open_store() as store:
                return export_iceberg(store, [self.priv], catalog=self.catalog, warehouse=self.warehouse)
        finally:
            os.environ.clear()
            os.environ.update(old)

    def upload(self, bundles) -> None:
        with self.backend.open_store() as store:
            for raw, sealed in bundles:
                ingest(store, raw, sealed.header.bundle_id)

    def rows(self, table: str = "traces.events"):
        from collector.iceberg import CATALOG_NAME, _sqlalchemy_url, _warehouse_properties
        from pyiceberg.catalog.sql import SqlCatalog

        old = dict(os.environ)
        os.environ.update(self.backend.env())
        try:
            cat = SqlCatalog(CATALOG_NAME, uri=_sqlalchemy_url(self.catalog), **_warehouse_properties(self.warehouse))
            tbl = cat.load_table(table)
            return tbl, tbl.scan().to_arrow()
        finally:
            os.environ.clear()
            os.environ.update(old)


@pytest.fixture(params=["local", "fleet"])
def world(request, tmp_path):
    if request.param == "local":
        backend = Backend("local", tmp_path / "store")
        return World(backend, tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", f"file://{tmp_path / 'warehouse'}")
    s3, pg = request.getfixturevalue("seaweedfs"), request.getfixturevalue("postgres")
    backend = Backend("fleet", tmp_path / "store", s3, pg)
    return World(backend, tmp_path, pg.create_database(), f"s3://{S3_BUCKET}/wh-{uuid.uuid4().hex[:8]}")


def test_append_once_partitioned_by_day_and_readable(world):
    a, b = Device("ws-a", [world.pub]), Device("ws-b", [world.pub])
    world.upload([a.seal(5), a.seal_events([make_event(s, ts=BASE_TS + DAY_NS + s) for s in range(6, 9)]),
                  b.seal(4)])
    p = world.export("--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["events"] == 12 and doc["already_in_table"] == 0 and doc["table"] == "traces.events"
    assert len(doc["files"]) == 2  # one per day partition
    tbl, rows = world.rows()
    assert rows.num_rows == 12
    assert rows.schema.names == ["device", "v", "seq", "ts", "event_time", "kind", "source", "session", "data"]
    got = sorted(zip(rows["device"].to_pylist(), rows["seq"].to_pylist()))
    assert got == [("ws-a", s) for s in range(1, 9)] + [("ws-b", s) for s in range(1, 5)]
    assert str(tbl.spec().fields[0].transform) == "day" and tbl.spec().fields[0].name == "event_time_day"
    partitions = sorted({str(t.file.partition[0]) for t in tbl.scan().plan_files()})
    assert len(partitions) == 2
    one = [r for r in rows.to_pylist() if r["device"] == "ws-a" and r["seq"] == 1][0]
    assert one["ts"] == BASE_TS + 10**9 and json.loads(one["data"]) == {"text": "note 1"}
    assert int(one["event_time"].timestamp() * 1e6) == one["ts"] // 1000

    again = world.export()
    assert again.returncode == 0 and "nothing new" in again.stdout, again.stdout + again.stderr
    assert world.rows()[1].num_rows == 12

    # new bundles, and a late one that fills a range the device sealed earlier but sent later
    late_dev = Device("ws-c", [world.pub])
    first_c, late, third_c = late_dev.seal(3), late_dev.seal(3), late_dev.seal(3)
    world.upload([a.seal(2), first_c, third_c])
    assert world.export_here().events == 2 + 6
    world.upload([late])
    assert world.export_here().events == 3
    rows = world.rows()[1]
    keys = list(zip(rows["device"].to_pylist(), rows["seq"].to_pylist()))
    assert len(keys) == len(set(keys)) == 12 + 2 + 9
    assert sorted(s for d, s in keys if d == "ws-c") == list(range(1, 10))


def test_iceberg_arguments_are_checked_in_one_sentence(tmp_path):
    world = World(Backend("local", tmp_path / "store"), tmp_path, f"sqlite:///{tmp_path / 'c.db'}",
                  f"file://{tmp_path / 'wh'}")
    world.upload([Device("ws", [world.pub]).seal(2)])
    cases = [
        (["--format", "iceberg", "--catalog", "x"], "needs --catalog"),
        (world.args("--out", str(tmp_path / "o")), "not --out"),
        (world.args("--table", "nodots"), "not NAMESPACE.NAME"),
        (["export", *world.backend.args(), "--key", str(world.key), "--format", "iceberg",
          "--catalog", "mysql://x", "--warehouse", "file:///tmp"], "neither sqlite:///PATH"),
        (["export", *world.backend.args(), "--key", str(world.key), "--out", str(tmp_path / "o"),
          "--catalog", "sqlite:///x"], "go with --format iceberg"),
    ]
    for args, words in cases:
        if args[0] != "export":
            args = ["export", *world.backend.args(), "--key", str(world.key), *args]
        p = run_cli(*args)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and words in p.stderr, (args, p.stderr)


def _big_world(tmp_path) -> tuple[World, int]:
    world = World(Backend("local", tmp_path / "store"), tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}",
                  f"file://{tmp_path / 'warehouse'}")
    bundles = []
    for name in ("big-a", "big-b"):
        dev = Device(name, [world.pub])
        for b in range(30):  # 30,000 events a device, a millisecond apart: one day partition
            bundles.append(dev.seal_events([make_event(s, ts=BASE_TS + s * 10**6)
                                            for s in range(b * 1000 + 1, b * 1000 + 1001)]))
    world.upload(bundles)
    return world, 60_000


def _no_row_twice(world: World, expected: int) -> None:
    rows = world.rows()[1]
    keys = set(zip(rows["device"].to_pylist(), rows["seq"].to_pylist()))
    assert rows.num_rows == len(keys) == expected


@pytest.mark.slow
def test_an_export_killed_half_way_and_run_again_adds_each_row_once(tmp_path):
    world, total = _big_world(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *world.args()], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = tmp_path / "warehouse" / "traces" / "events" / "data"
    deadline = time.monotonic() + 120
    while not (data.exists() and any(data.rglob("*.parquet"))):
        assert proc.poll() is None, "the export finished before it could be killed"
        assert time.monotonic() < deadline, "no data file appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    try:
        assert world.rows()[0].current_snapshot() is None  # killed before its commit: nothing appended
    except Exception as exc:  # the table may not even be in the catalog yet
        assert "does not exist" in str(exc) or "NoSuchTable" in type(exc).__name__, exc
    p = world.export("--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["events"] == total
    _no_row_twice(world, total)
    files = json.loads(p.stdout)["files"]
    days = {f["location"].split("event_time_day=")[1].split("/")[0] for f in files}
    assert len(days) == len(files) == 1  # one file for the day partition, not one per batch
    assert sum(f["rows"] for f in files) == total


@pytest.mark.slow
def test_two_exports_at_once_add_each_row_once(tmp_path):
    world, total = _big_world(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "agent.cli", *world.args("--json")], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    events = sorted(json.loads(out)["events"] for out, _ in outs)
    assert events == [0, total]
    _no_row_twice(world, total)


def test_commits_by_other_writers_in_between_neither_double_nor_block(tmp_path, monkeypatch):
    """Between this export's reading of the state and its commit, first another kind of writer
    appends (its row is kept and ours land once), then another export that did not share the lock
    commits (this commit is refused: nothing of it lands)."""
    import pyarrow.parquet as pq

    import collector.iceberg as iceberg

    world = World(Backend("local", tmp_path / "store"), tmp_path, f"sqlite:///{tmp_path / 'c.db'}",
                  f"file://{tmp_path / 'wh'}")
    dev = Device("ws", [world.pub])
    world.upload([dev.seal(3)])
    assert world.export_here().events == 3
    real_write_state = iceberg._write_state

    def foreign_append_first(table, *args):
        tbl, rows = world.rows()  # one row appended straight through pyiceberg
        pq.write_table(rows.slice(0, 1).cast(iceberg.arrow_schema()), tmp_path / "foreign.parquet")
        tbl.add_files([f"file://{tmp_path / 'foreign.parquet'}"])
        return real_write_state(table, *args)

    world.upload([dev.seal(3)])
    monkeypatch.setattr(iceberg, "_write_state", foreign_append_first)
    assert world.export_here().events == 3
    assert sorted(world.rows()[1]["seq"].to_pylist()) == [1, 1, 2, 3, 4, 5, 6]

    def unlocked_export_first(table, *args):
        world.rows()[0].transaction().set_properties({iceberg.STATE_PROPERTY: "s3://elsewhere"}).commit_transaction()
        return real_write_state(table, *args)

    world.upload([dev.seal(3)])
    monkeypatch.setattr(iceberg, "_write_state", unlocked_export_first)
    with pytest.raises(iceberg.IcebergWriteError, match="another export committed to traces.events"):
        world.export_here()
    assert sorted(world.rows()[1]["seq"].to_pylist()) == [1, 1, 2, 3, 4, 5, 6]
