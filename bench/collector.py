"""Collector throughput: simulated devices uploading real bundles concurrently over loopback.

Takes `--devices` (50), `--bundles` per device (20), `--events` per bundle (20) and `--target`
bundles/s (200); gives the measured rate, its ratio to the target, latency percentiles and a
markdown table for the README. Each device seals its chained bundles ahead of time (real HPKE,
zstd and Ed25519), then all devices upload at once (a thread and a connection each), each one bundle
at a time as the daemon's uploader does. The collector is `tracecap collector serve` in its own process with a fresh data
directory, so every bundle is verified, fsynced and indexed as in production.

Run: `python bench/collector.py` (exit 1 if any upload failed or the target was missed).
"""
from __future__ import annotations

import argparse
import io
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.bundle import seal_bundle
from schemas.keys import generate_org_keypair

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def seal_device(device_id: str, bundles: int, events: int, pub) -> list[tuple[str, bytes]]:
    key = Ed25519PrivateKey.generate()
    prev, seq, out = "", 1, []
    for _ in range(bundles):
        evs = []
        for _ in range(events):
            evs.append({"v": 1, "seq": seq, "ts": time.time_ns(), "kind": "shell.start", "source": "shell",
                        "session": "s1", "data": {"id": f"c{seq}", "cmd": f"pytest -k test_{seq % 17}",
                                                  "cwd": "/home/dev/src/app", "shell": "bash", "actor": "human"}})
            seq += 1
        buf = io.BytesIO()
        sealed = seal_bundle(buf, evs, device_id=device_id, device_key=key, recipients=[pub], prev_digest=prev)
        prev = sealed.digest
        out.append((sealed.header.bundle_id, buf.getvalue()))
    return out


def start_collector(store_args: list[str], log_path: Path,
                    env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A real `tracecap collector serve` on a free loopback port over the store `store_args` names
    (`--data DIR`, or `--blobs URL --index URL`); its process and URL."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "collector", "serve", *store_args,
                                 "--listen", "127.0.0.1:0", "--token", TOKEN], cwd=REPO, stdout=log,
                                stderr=log, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://[\d.]+:\d+)", log_path.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the collector did not start:\n{log_path.read_text()}")


def upload_all(url: str | list[str], plans: dict[str, list[tuple[str, bytes]]]) -> tuple[float, list[float], list[str]]:
    """One thread and one keep-alive connection per device, one bundle at a time (the uploader's
    pattern); with several collector URLs, device i sends to the i-th modulo their number.
    Threads with httpx's sync client: on two cores its async client spends more CPU per request
    than the collector does, and the figure would measure the client."""
    urls = [url] if isinstance(url, str) else url
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(len(plans) + 1)

    def device(url: str, bundles: list[tuple[str, bytes]]) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            client.get("/v1/health")  # connect before the clock starts
            start.wait(timeout=60)
            for bundle_id, raw in bundles:
                t0 = time.perf_counter()
                try:
                    r = client.put(f"/v1/bundles/{bundle_id}", content=raw)
                except httpx.HTTPError as exc:
                    errors.append(f"{bundle_id}: {type(exc).__name__}")
                    continue
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    errors.append(f"{bundle_id}: {r.status_code} {r.text[:100]}")

    threads = [threading.Thread(target=device, args=(urls[i % len(urls)], b)) for i, b in enumerate(plans.values())]
    for t in threads:
        t.start()
    start.wait(timeout=60)
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=600)
    return time.perf_counter() - t0, latencies, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--bundles", type=int, default=20, help="bundles per device")
    ap.add_argument("--events", type=int, default=20, help="events per bundle")
    ap.add_argument("--target", type=float, default=200.0, help="bundles per second")
    args = ap.parse_args()

    _, pub = generate_org_keypair()
    t0 = time.perf_counter()
    plans = {f"bench-ws-{i:03d}": seal_device(f"bench-ws-{i:03d}", args.bundles, args.events, pub)
             for i in range(args.devices)}
    seal_s = time.perf_counter() - t0
    total = sum(len(b) for b in plans.values())
    total_bytes = sum(len(raw) for b in plans.values() for _, raw in b)

    with tempfile.TemporaryDirectory(prefix="tracecap-bench-") as tmp:
        data, log_path = Path(tmp) / "data", Path(tmp) / "collector.log"
        proc, url = start_collector(["--data", str(data)], log_path)
        try:
            wall, latencies, errors = upload_all(url, plans)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        verify = subprocess.run([sys.executable, "-m", "agent.cli", "collector", "verify", "--data", str(data)],
                                cwd=REPO, capture_output=True, text=True, timeout=300)

    rate = total / wall
    ratio = rate / args.target
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    print(f"sealed {total} bundles for {args.devices} devices in {seal_s:.1f}s (not timed)")
    print(f"uploaded {total} bundles ({total_bytes / 1e6:.1f} MB) in {wall:.2f}s: {rate:.0f} bundles/s, "
          f"{ratio:.2f}x the target of {args.target:.0f} bundles/s; {len(errors)} errors; "
          f"verify exit {verify.returncode}")
    for e in errors[:5]:
        print(f"  error: {e}")
    print()
    print("| devices | bundles | events/bundle | bundle size | bundles/s | vs target | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.devices} | {total} | {args.events} | {total_bytes // total} B | {rate:.0f} | "
          f"{ratio:.2f}x of {args.target:.0f} | {q[49] * 1000:.1f} | {q[98] * 1000:.1f} | {len(errors)} |")
    print(f"\n({os.cpu_count()} CPUs; collector and clients on the same machine)")
    return 0 if not errors and ratio >= 1.0 and verify.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
