"""Chain and gap analysis (a table of pure cases) and `tracecap collector verify` on real stores."""
from __future__ import annotations

import dataclasses
import json

import pytest

from collector.storage import BundleRow, BundleStore
from collector.verify import Gap, analyse_device
from schemas.keys import generate_org_keypair
from tests.test_collector_support import Device, ingest, run_cli

ORG_PRIV, ORG_PUB = generate_org_keypair()


def row(bid: str, first: int, last: int, prev: str, count: int | None = None) -> BundleRow:
    """A bundle whose digest is 'd' + its id, so chains read naturally in the table."""
    return BundleRow(bid, "dev", first, last, last - first + 1 if count is None else count, prev,
                     f"d{bid}", 100, 0, 0)


CASES = [
    # (name, rows, gaps, break ids, last contiguous)
    ("empty chain is fine", [], [], [], None),
    ("one first bundle", [row("a", 1, 5, "")], [], [], 5),
    ("contiguous chain", [row("a", 1, 5, ""), row("b", 6, 9, "da"), row("c", 10, 10, "db")], [], [], 10),
    ("arrival order does not matter", [row("c", 10, 10, "db"), row("a", 1, 5, ""), row("b", 6, 9, "da")],
     [], [], 10),
    ("a lost bundle: gap and break", [row("a", 1, 5, ""), row("c", 10, 12, "db")],
     [Gap(6, 9, "missing")], ["c"], 5),
    ("lost first bundle", [row("b", 6, 9, "da"), row("c", 10, 12, "db")],
     [Gap(1, 5, "missing")], ["b"], None),
    ("device skipped seqs, chain intact", [row("a", 1, 5, ""), row("b", 9, 12, "da")],
     [Gap(6, 8, "skipped")], [], 12),
    ("device's first bundle starts late", [row("a", 4, 5, "")], [Gap(1, 3, "skipped")], [], 5),
    ("break without a seq gap", [row("a", 1, 5, ""), row("b", 6, 9, "dX")], [], ["b"], 5),
    ("resealed range: either copy may be chained to",
     [row("a", 1, 5, ""), row("a2", 1, 5, ""), row("b", 6, 9, "da2")], [], [], 9),
    ("later bundles after a break do not count as contiguous",
     [row("a", 1, 5, ""), row("c", 10, 12, "db"), row("d", 13, 14, "dc")], [Gap(6, 9, "missing")], ["c"], 5),
    ("forgotten holes inside a bundle are not gaps", [row("a", 1, 10, "", count=6), row("b", 11, 12, "da")],
     [], [], 12),
]


@pytest.mark.parametrize("name,rows,gaps,breaks,contiguous", CASES, ids=[c[0] for c in CASES])
def test_analyse_device(name, rows, gaps, breaks, contiguous):
    r = analyse_device("dev", rows)
    assert list(r.gaps) == gaps
    assert [b.bundle_id for b in r.breaks] == breaks
    assert r.last_contiguous_seq == contiguous
    assert r.ok == (not breaks and all(g.kind != "missing" for g in gaps))


def test_forgotten_counts():
    r = analyse_device("dev", [row("a", 1, 10, "", count=6)])
    assert [(f.bundle_id, f.count) for f in r.forgotten] == [("a", 4)]


def _store_with(tmp_path, lose_one: bool) -> tuple:
    from tests.fleet_services import Backend

    backend = Backend("local", tmp_path)
    _fill(backend, lose_one)
    return backend.data, None


def test_verify_exit_0_on_a_clean_store(tmp_path):
    data, _ = _store_with(tmp_path, lose_one=False)
    p = run_cli("collector", "verify", "--data", str(data))
    assert p.returncode == 0, p.stderr
    assert "ws-1: ok - 4 bundles, 12 events" in p.stdout
    p = run_cli("collector", "verify", "--data", str(data), "--json")
    doc = json.loads(p.stdout)
    assert doc["ok"] is True and [d["last_contiguous_seq"] for d in doc["devices"]] == [12, 8]


def test_verify_exit_1_on_a_gap_and_names_it(tmp_path):
    data, _ = _store_with(tmp_path, lose_one=True)
    p = run_cli("collector", "verify", "--data", str(data))
    assert p.returncode == 1
    assert "ws-1: NOT OK" in p.stdout and "missing seq (gaps): 7-9" in p.stdout
    assert "chain break at bundle" in p.stdout
    assert "ws-2: ok" in p.stdout
    doc = json.loads(run_cli("collector", "verify", "--data", str(data), "--json").stdout)
    ws1 = doc["devices"][0]
    assert ws1["gaps"] == [{"first": 7, "last": 9, "size": 3, "kind": "missing"}]
    assert ws1["last_contiguous_seq"] == 6


def test_verify_exit_1_on_a_damaged_object(tmp_path):
    data, _ = _store_with(tmp_path, lose_one=False)
    victim = sorted(p for p in (data / "objects").rglob("*") if p.is_file())[-1]
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    p = run_cli("collector", "verify", "--data", str(data))
    assert p.returncode == 1 and "damaged or missing objects" in p.stdout, (victim, p.stdout)


def test_verify_needs_a_collector_directory(tmp_path):
    p = run_cli("collector", "verify", "--data", str(tmp_path / "nowhere"))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "not a collector data directory" in p.stderr


# ---- the same checks on the fleet back end, and the index's SQL against the pure analysis ----

@pytest.fixture(params=["local", "fleet"])
def backend(request, tmp_path):
    from tests.fleet_services import make_backend

    return make_backend(request, request.param, tmp_path)


def _fill(backend, lose_one: bool) -> None:
    with backend.open_store() as store:
        dev, other = Device("ws-1", [ORG_PUB]), Device("ws-2", [ORG_PUB])
        for i in range(4):
            raw, sealed = dev.seal(3)
            if not (lose_one and i == 2):
                ingest(store, raw, sealed.header.bundle_id)
            raw, sealed = other.seal(2)
            ingest(store, raw, sealed.header.bundle_id)


def test_verify_on_both_back_ends(backend):
    _fill(backend, lose_one=True)
    p = run_cli("collector", "verify", *backend.args(), "--json", env=backend.env())
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    ws1, ws2 = doc["devices"]
    assert ws1["gaps"] == [{"first": 7, "last": 9, "size": 3, "kind": "missing"}]
    assert ws1["last_contiguous_seq"] == 6 and ws1["bundles"] == 3 and ws1["events"] == 9
    assert ws2 == {"device_id": "ws-2", "ok": True, "bundles": 4, "events": 8, "first_seq": 1, "last_seq": 8,
                   "last_contiguous_seq": 8, "gaps": [], "chain_breaks": [], "forgotten": [], "damaged": []}


def test_verify_check_objects_finds_a_missing_object_on_both_back_ends(backend):
    _fill(backend, lose_one=False)
    backend.delete_object(backend.object_digests()[0])
    p = run_cli("collector", "verify", *backend.args(), "--check-objects", env=backend.env())
    assert p.returncode == 1 and "damaged or missing objects" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("kind", ["local", "fleet"])
def test_index_sql_summary_agrees_with_the_analysis(request, tmp_path, kind):
    """Every case of the table, loaded into a real index: devices the SQL calls regular get exactly
    the report the pure analysis gives, and the others are analysed from their rows."""
    from collector.blobs import LocalBlobs
    from collector.index import PostgresIndex, SQLiteIndex
    from collector.verify import verify_store

    if kind == "local":
        index = SQLiteIndex(tmp_path / "index.sqlite3")
        sql, table, devices = "?", "bundles", "devices"
    else:
        index = PostgresIndex(request.getfixturevalue("postgres").create_database())
        sql, table, devices = "%s", "tracecap_bundles", "tracecap_devices"
    cases = CASES + [("clean long chain", [row(f"b{i:03d}", 3 * i + 1, 3 * i + 3, f"db{i - 1:03d}" if i else "")
                                            for i in range(40)], [], [], 120)]
    expected = {}
    conn = index._db if kind == "local" else index.pool.getconn()
    try:
        for n, (name, rows, *_rest) in enumerate(cases):
            if not rows:
                continue
            dev = f"dev-{n:02d}"
            conn.execute(f"INSERT INTO {devices} VALUES ({sql},{sql},{sql})", (dev, b"k", 0))
            for r in rows:
                values = dataclasses.replace(r, device_id=dev, bundle_id=f"{dev}-{r.bundle_id}")
                conn.execute(f"INSERT INTO {table} VALUES ({','.join([sql] * 10)})", dataclasses.astuple(values))
            expected[dev] = analyse_device(dev, [dataclasses.replace(r, device_id=dev, bundle_id=f"{dev}-{r.bundle_id}")
                                                 for r in rows])
        conn.commit()
    finally:
        if kind == "fleet":
            index.pool.putconn(conn)
    with BundleStore(blobs=LocalBlobs(tmp_path / "blobs"), index=index) as store:
        summaries = {s.device_id: s for s in store.summaries()}
        reports = {r.device_id: r for r in verify_store(store, check_objects=False)}
    assert reports == expected
    assert summaries[f"dev-{len(cases) - 1:02d}"].irregular == 0
    assert summaries["dev-02"].irregular == 0  # "contiguous chain"
    assert all(summaries[d].irregular for d, r in expected.items() if not r.ok)


@pytest.mark.parametrize("args,words", [
    (["--data", "d", "--blobs", "s3://b/p", "--index", "sqlite:///x"], "not both"),
    (["--blobs", "s3://b/p"], "together with --index"),
    (["--blobs", "ftp://b/p", "--index", "sqlite:///x"], "neither s3://BUCKET/PREFIX nor a local directory"),
    (["--blobs", "s3://traces/p", "--index", "mysql://x"], "neither postgresql://"),
])
def test_store_arguments_are_checked_in_one_sentence(tmp_path, args, words):
    p = run_cli("collector", "verify", *args)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and words in p.stderr, p.stderr


def test_unreachable_fleet_storage_is_exit_2_in_one_sentence(seaweedfs, postgres, tmp_path):
    env = seaweedfs.env()
    p = run_cli("collector", "verify", "--blobs", "s3://no-such-bucket/p", "--index", postgres.url, env=env)
    assert p.returncode == 2 and "bucket 'no-such-bucket' does not exist" in p.stderr, p.stderr
    dead = postgres.url.replace(f":{postgres.port}/", ":1/")
    p = run_cli("collector", "verify", "--blobs", "s3://traces/p", "--index", dead, env=env)
    assert p.returncode == 2 and "PostgreSQL cannot be reached" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("collector", "serve", "--blobs", "s3://traces/p", "--index", dead, "--listen", "127.0.0.1:0",
                env=env)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr


def test_a_missing_sqlite_index_is_refused_not_made(tmp_path):
    """verify and export read an index; one that is not there is a wrong path, not an empty fleet."""
    (tmp_path / "blobs").mkdir()
    assert run_cli("keys", "generate", "--out", str(tmp_path)).returncode == 0
    missing = tmp_path / "missing.sqlite3"
    for cmd in (["collector", "verify"], ["export", "--key", str(tmp_path / "org.key"), "--out", str(tmp_path / "o")]):
        p = run_cli(*cmd, "--blobs", str(tmp_path / "blobs"), "--index", f"sqlite:///{missing}")
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no SQLite index" in p.stderr, p.stderr
        assert not missing.exists()
