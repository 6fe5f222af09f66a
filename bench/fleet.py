"""Fleet collector figures: uploads through two collectors sharing SeaweedFS (S3) and PostgreSQL
beside one collector on a local data directory, `collector verify` over thousands of devices, and
the Iceberg export.

Takes `--devices` (40), `--bundles` per device (15), `--events` per bundle (20), `--verify-devices`
(5000) and `--export-events` (300000); prints, each against a baseline measured in the same run:
- uploads: bundles/s, p50 and p99 latency, for the local back end (one collector, `--data`) and
  the fleet back end (two `collector serve` processes, `--blobs s3://… --index postgresql://…`,
  devices spread over both), every bundle verified, stored and indexed as in production;
- verify: the SQL summary over the PostgreSQL index against reading and analysing every device's
  rows one device at a time;
- Iceberg export: events/s and the data files per day partition, against the Parquet file export
  of the same store.
SeaweedFS and PostgreSQL are started for the run on loopback ports (as the tests start them) and
removed after it. Run: `python -m bench.fleet`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.collector import seal_device, start_collector, upload_all
from schemas.keys import generate_org_keypair, write_org_keypair

REPO = Path(__file__).resolve().parent.parent


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def figures(total: int, wall: float, latencies: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return total / wall, q[49] * 1000, q[98] * 1000


def bench_uploads(args, tmp: Path, s3, pg) -> list[str]:
    _, pub = generate_org_keypair()
    rows = []
    results = {}
    for name in ("local", "fleet"):
        plans = {f"{name}-ws-{i:03d}": seal_device(f"{name}-ws-{i:03d}", args.bundles, args.events, pub)
                 for i in range(args.devices)}
        total = sum(len(b) for b in plans.values())
        size = sum(len(raw) for b in plans.values() for _, raw in b) // total
        if name == "local":
            procs = [start_collector(["--data", str(tmp / "local")], tmp / "local.log", {})]
        else:
            store = ["--blobs", f"s3://traces/bench-{os.urandom(4).hex()}", "--index", pg.create_database()]
            procs = [start_collector(store, tmp / f"fleet-{i}.log", s3.env()) for i in range(2)]
        try:
            wall, lat, errors = upload_all([url for _, url in procs], plans)
        finally:
            for proc, _ in procs:
                stop(proc)
        rate, p50, p99 = figures(total, wall, lat)
        results[name] = rate
        label = ("local: 1 collector, --data (files + SQLite)" if name == "local"
                 else "fleet: 2 collectors, SeaweedFS S3 + PostgreSQL")
        rows.append(f"| {label} | {args.devices} | {total} | {size} B | {rate:.0f} | {p50:.1f} | {p99:.1f} | "
                    f"{len(errors)} |")
        for e in errors[:3]:
            print(f"  error: {e}")
    print("| back end | devices | bundles | bundle size | bundles/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"fleet/local throughput ratio: {results['fleet'] / results['local']:.2f}x")
    return rows


def bench_verify(args, pg) -> None:
    """Thousands of devices with 3 chained bundles each, one with a gap every 100 devices."""
    import psycopg

    from collector.index import PostgresIndex
    from collector.verify import analyse_device

    url = pg.create_database()
    index = PostgresIndex(url)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy("COPY tracecap_devices FROM STDIN") as copy:
            for d in range(args.verify_devices):
                copy.write_row((f"dev-{d:06d}", b"k" * 32, 0))
        with cur.copy("COPY tracecap_bundles FROM STDIN") as copy:
            for d in range(args.verify_devices):
                prev = ""
                for b in range(3):
                    first = b * 10 + 1 + (5 if d % 100 == 0 and b == 2 else 0)
                    digest = f"{d:06d}{b:02d}".ljust(64, "0")
                    copy.write_row((f"{d:016x}-{b:012x}", f"dev-{d:06d}", first, first + 9, 10, prev, digest, 1000,
                                    0, 0))
                    prev = digest
    from collector.blobs import LocalBlobs
    from collector.storage import BundleStore
    from collector.verify import verify_store

    with tempfile.TemporaryDirectory() as blobs_dir, BundleStore(blobs=LocalBlobs(blobs_dir), index=index) as store:
        t0 = time.perf_counter()
        reports = verify_store(store, check_objects=False)
        sql_s = time.perf_counter() - t0
        irregular = sum(1 for s in store.summaries() if s.irregular)
        t0 = time.perf_counter()
        baseline = [analyse_device(d, store.bundles(d)) for d in store.device_ids()]
        rows_s = time.perf_counter() - t0
    assert reports == baseline
    print(f"\nverify over PostgreSQL: {args.verify_devices} devices ({irregular} with a skipped range, "
          f"analysed row by row; {sum(not r.ok for r in reports)} not ok): SQL summary "
          f"{sql_s:.2f}s, reading every device's rows {rows_s:.2f}s ({rows_s / sql_s:.1f}x slower)")


def bench_export(args, tmp: Path) -> None:
    from collector.export import export_store
    from collector.iceberg import export_iceberg
    from collector.storage import BundleStore
    from schemas.bundle import seal_bundle
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    import io

    priv, pub = generate_org_keypair()
    devices, per_bundle = 20, 500
    bundles_per_device = max(1, args.export_events // devices // per_bundle)
    start_ts = 1_700_000_000 * 10**9
    span = 3 * 86_400 * 10**9  # three days of events
    total = devices * bundles_per_device * per_bundle
    with BundleStore(tmp / "export-store") as store:
        for d in range(devices):
            key, prev, seq = Ed25519PrivateKey.generate(), "", 1
            for _ in range(bundles_per_device):
                evs = []
                for _ in range(per_bundle):
                    ts = start_ts + span * seq // (bundles_per_device * per_bundle + 1)
                    evs.append({"v": 1, "seq": seq, "ts": ts, "kind": "shell.start", "source": "shell",
                                "session": "s1", "data": {"id": f"c{seq}", "cmd": f"pytest -k test_{seq % 17}",
                                                          "cwd": "/home/dev/src/app", "shell": "bash",
                                                          "actor": "human"}})
                    seq += 1
                buf = io.BytesIO()
                sealed = seal_bundle(buf, evs, device_id=f"ws-{d:03d}", device_key=key, recipients=[pub],
                                     prev_digest=prev)
                prev = sealed.digest
                temp = store.temp_path()
                temp.write_bytes(buf.getvalue())
                store.ingest(temp, sealed.header.bundle_id)
        t0 = time.perf_counter()
        export_store(store, [priv], tmp / "parquet-out", "parquet")
        parquet_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = export_iceberg(store, [priv], catalog=f"sqlite:///{tmp / 'catalog.db'}",
                                 warehouse=f"file://{tmp / 'warehouse'}")
        iceberg_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = export_iceberg(store, [priv], catalog=f"sqlite:///{tmp / 'catalog.db'}",
                               warehouse=f"file://{tmp / 'warehouse'}")
        rerun_s = time.perf_counter() - t0
    key_path, _ = write_org_keypair(tmp / "keys", priv, pub)
    base = ["export", "--data", str(tmp / "export-store"), "--key", str(key_path)]
    rss_iceberg = peak_rss_mb([*base, "--format", "iceberg", "--catalog", f"sqlite:///{tmp / 'catalog2.db'}",
                               "--warehouse", f"file://{tmp / 'warehouse2'}"])
    rss_parquet = peak_rss_mb([*base, "--format", "parquet", "--out", str(tmp / "parquet-out2")])
    parquet_files = list((tmp / "parquet-out").glob("*/*.parquet"))
    assert summary.events == total and again.events == 0
    print(f"\nexport of {total} events ({devices} devices, 3 days):")
    print(f"  Iceberg: {total / iceberg_s:,.0f} events/s ({iceberg_s:.1f}s); Parquet files baseline: "
          f"{total / parquet_s:,.0f} events/s ({parquet_s:.1f}s, {len(parquet_files)} files); "
          f"ratio {parquet_s / iceberg_s:.2f}x")
    print(f"  re-run with nothing new: {rerun_s:.1f}s, 0 rows added")
    print(f"  peak memory of `tracecap export`: Iceberg {rss_iceberg:.0f} MB, Parquet files {rss_parquet:.0f} MB")
    for loc, rows in sorted(summary.files.items()):
        day = loc.split("event_time_day=")[1].split("/")[0]
        print(f"  partition {day}: 1 file, {rows:,} rows, {summary.file_bytes[loc] / 1e6:.1f} MB")


def peak_rss_mb(cli_args: list[str]) -> float:
    """Peak resident memory of one `tracecap` command, measured from a wrapper process of its own."""
    wrapper = ("import resource, subprocess, sys; "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "agent.cli", *cli_args],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=900)
    return int(out.stdout.strip()) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=40)
    ap.add_argument("--bundles", type=int, default=15, help="bundles per device")
    ap.add_argument("--events", type=int, default=20, help="events per bundle")
    ap.add_argument("--verify-devices", type=int, default=5000)
    ap.add_argument("--export-events", type=int, default=300_000)
    args = ap.parse_args()
    from tests.fleet_services import PostgresCluster, SeaweedFS

    tmp = Path(tempfile.mkdtemp(prefix="tracecap-bench-fleet-"))
    s3, pg = SeaweedFS(), PostgresCluster()
    try:
        s3.start()
        pg.init().start()
        bench_uploads(args, tmp, s3, pg)
        bench_verify(args, pg)
        bench_export(args, tmp)
    finally:
        s3.close()
        pg.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n({os.cpu_count()} CPUs; collectors, SeaweedFS, PostgreSQL and clients on the same machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
