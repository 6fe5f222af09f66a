"""`tracecap export` over bundles uploaded to a real collector: dedupe, order, validation, one file
per device and day, JSON lines and Parquet read back, determinism, and refusal of a bad key."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from collector.export import device_dir_name
from schemas.keys import generate_org_keypair, write_org_keypair
from tests.test_collector_support import BASE_TS, Collector, Device, make_event, run_cli

HOUR = 3600 * 10**9


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two devices' bundles uploaded over HTTP, with a repeat upload, a resealed overlapping range,
    an event invalid against the schema, and a seq range the device skipped."""
    root = tmp_path_factory.mktemp("export")
    priv, pub = generate_org_keypair()
    key_path, _ = write_org_keypair(root / "keys", priv, pub)
    a = Device("ws-a", [pub])
    b = Device("host/with space", [pub])
    uploads = []
    uploads.append(a.seal(4))                                                   # 1-4, first day
    day2 = [make_event(s, ts=BASE_TS + 2 * HOUR + s) for s in range(5, 9)]     # 5-8, next UTC day
    prev = a.prev_digest
    b2 = a.seal_events(day2)
    uploads += [b2, b2]                                                         # uploaded twice
    a.prev_digest = prev
    resealed = a.seal_events(day2)                                              # same seqs, another bundle
    a.prev_digest = b2[1].digest
    uploads.append(resealed)
    bad = make_event(10, ts=BASE_TS + 3 * HOUR)
    bad["ts"] = "yesterday"
    uploads.append(a.seal_events([make_event(9, ts=BASE_TS + 3 * HOUR), bad,
                                  make_event(11, ts=BASE_TS + 3 * HOUR + 11, kind="file.save", repo="/r",
                                             path="ü.py", op="modify", size=3, diff="+ünï\n")]))
    uploads.append(b.seal(3))
    uploads.append(b.seal(2, skip=2))                                           # 4-5 skipped
    with Collector(root / "data") as c:
        with httpx.Client(base_url=c.url, headers=c.headers(), timeout=10) as cl:
            codes = [cl.put(f"/v1/bundles/{s.header.bundle_id}", content=raw).status_code for raw, s in uploads]
    assert codes == [201, 201, 200, 201, 201, 201, 201]
    return {"root": root, "data": root / "data", "key": key_path, "pub": pub}


def export(world, out: Path, fmt: str = "jsonl", *extra: str):
    return run_cli("export", "--data", str(world["data"]), "--key", str(world["key"]), "--out", str(out),
                   "--format", fmt, *extra)


def files_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_jsonl_export_dedupes_orders_and_splits_by_day(world, tmp_path):
    out = tmp_path / "out"
    p = export(world, out, "jsonl", "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["events"] == 10 + 5 and summary["devices"] == 2
    assert summary["duplicates"] == 4 and summary["invalid"] == 1 and summary["invalid_file"] == "_invalid.jsonl"
    hashed = device_dir_name("host/with space")
    assert hashed.startswith("device-")
    assert sorted(files_of(out)) == ["_invalid.jsonl", f"{hashed}/2023-11-14.jsonl", "manifest.json",
                                     "ws-a/2023-11-14.jsonl", "ws-a/2023-11-15.jsonl"]
    day1 = (out / "ws-a/2023-11-14.jsonl").read_text().splitlines()
    day2 = (out / "ws-a/2023-11-15.jsonl").read_text(encoding="utf-8").splitlines()
    seqs = [json.loads(line)["seq"] for line in day1 + day2]
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert day1[0] == json.dumps(make_event(1), separators=(",", ":"))
    assert list(json.loads(day2[-1])) == ["v", "seq", "ts", "kind", "source", "session", "data"]
    assert "ü.py" in day2[-1]  # UTF-8 as is, not \u escapes
    invalid = [json.loads(line) for line in (out / "_invalid.jsonl").read_text().splitlines()]
    assert [(i["device"], i["seq"]) for i in invalid] == [("ws-a", 10)]
    assert invalid[0]["error"].startswith("ts ")
    per_device = {d["device_id"]: d for d in summary["per_device"]}
    assert per_device["host/with space"]["gaps"] == [{"first": 4, "last": 5}]
    assert per_device["ws-a"]["gaps"] == [] and per_device["ws-a"]["conflicts"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["per_device"][0]["directory"] == hashed


def test_human_summary_names_counts_and_the_invalid_file(world, tmp_path):
    p = export(world, tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "exported 15 events from 2 devices (6 bundles)" in p.stdout
    assert "1 events failed the event schema" in p.stdout and "_invalid.jsonl" in p.stdout
    assert "missing seq: 4-5" in p.stdout


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_is_deterministic(world, tmp_path, fmt):
    assert export(world, tmp_path / "one", fmt).returncode == 0
    assert export(world, tmp_path / "two", fmt).returncode == 0
    one, two = files_of(tmp_path / "one"), files_of(tmp_path / "two")
    assert one and one == two


def test_parquet_export_reads_back_with_a_stable_layout(world, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    p = export(world, out, "parquet")
    assert p.returncode == 0, p.stderr
    t1 = pq.read_table(out / "ws-a/2023-11-14.parquet")
    t2 = pq.read_table(out / "ws-a/2023-11-15.parquet")
    assert t1.schema.names == ["device", "v", "seq", "ts", "kind", "source", "session", "data"]
    assert [t1.schema.field(n).type for n in t1.schema.names] == [
        pa.string(), pa.int32(), pa.int64(), pa.int64(), pa.string(), pa.string(), pa.string(), pa.string()]
    rows = t1.to_pylist() + t2.to_pylist()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert {r["device"] for r in rows} == {"ws-a"}
    assert json.loads(rows[0]["data"]) == {"text": "note 1"} and rows[0]["ts"] == BASE_TS + 10**9
    assert json.loads(rows[-1]["data"])["path"] == "ü.py"


def test_parquet_export_is_queryable_with_duckdb(world, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "out"
    assert export(world, out, "parquet").returncode == 0
    con = duckdb.connect()
    rows = con.execute(
        "SELECT device, count(*), max(seq), max(data::JSON ->> 'path') FROM read_parquet(?) "
        "GROUP BY device ORDER BY device", [str(out / "*" / "*.parquet")]).fetchall()
    assert rows == [("host/with space", 5, 7, None), ("ws-a", 10, 11, "ü.py")]


def test_a_key_that_opens_nothing_is_exit_2_and_writes_nothing(world, tmp_path):
    priv, pub = generate_org_keypair()
    other, _ = write_org_keypair(tmp_path / "k", priv, pub)
    out = tmp_path / "out"
    p = run_cli("export", "--data", str(world["data"]), "--key", str(other), "--out", str(out))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "opens none of the 6 bundles" in p.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("make_key,words", [
    (lambda d: d / "missing.key", "does not exist"),
    (lambda d: (d / "junk.key").write_text("hello\n") and d / "junk.key", "not an org private key"),
])
def test_bad_key_files_are_exit_2_in_one_sentence(world, tmp_path, make_key, words):
    p = run_cli("export", "--data", str(world["data"]), "--key", str(make_key(tmp_path)),
                "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and words in p.stderr


def test_public_key_instead_of_private_is_exit_2(world, tmp_path):
    p = run_cli("export", "--data", str(world["data"]), "--key", str(world["key"].with_name("org.pub")),
                "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and "other half of the pair" in p.stderr


def test_non_empty_output_directory_is_refused(world, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    p = export(world, tmp_path / "out")
    assert p.returncode == 2 and "not an empty directory" in p.stderr
    assert files_of(tmp_path / "out") == {"keep.txt": b"mine"}
