"""Opening a bundle streams: a child process decrypting a bundle many times larger than its memory
budget stays under 64 MiB peak RSS (bench/bundle.py runs the full 1 GiB case)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bundle import PEAK_RSS_SRC, LazyEvents
from schemas.bundle import seal_bundle
from schemas.keys import generate_org_keypair, write_org_keypair

REPO = Path(__file__).resolve().parent.parent
UNCOMPRESSED_TARGET = 160 << 20  # 2.5x the RSS budget, still a few seconds on one core


def test_open_large_bundle_under_64_mib(tmp_path):
    priv, pub = generate_org_keypair()
    key_path, _ = write_org_keypair(tmp_path, priv, pub)
    import msgpack
    pool = LazyEvents(4096)
    avg = sum(len(msgpack.packb(pool[i])) for i in range(4096)) / 4096
    n = int(UNCOMPRESSED_TARGET / avg)
    path = tmp_path / "big.tcb"
    with open(path, "wb") as f:
        seal_bundle(f, LazyEvents(n), device_id="d", device_key=Ed25519PrivateKey.generate(), recipients=[pub],
                    prev_digest="")
    code = (f"{PEAK_RSS_SRC}\nimport sys\nfrom schemas.bundle import open_bundle\n"
            "from schemas.keys import load_org_private\nn = 0\n"
            "with open(sys.argv[1], 'rb') as f:\n"
            "    for ev in open_bundle(f, load_org_private(sys.argv[2])):\n        n += 1\n"
            "print(n, peak_rss_kib())\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(key_path)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    count, peak_kib = (int(x) for x in proc.stdout.split())
    assert count == n
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib / 1024:.1f} MiB"
