"""The store under concurrency (group commit, trust-on-first-use races), on both back ends (a
local data directory; SeaweedFS S3 + PostgreSQL), and the serve command's refusal of bad arguments."""
from __future__ import annotations

import io
import socket
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.export import _Progress
from collector.storage import BundleStore, Refused
from collector.verify import analyse_device
from schemas.keys import generate_org_keypair
from tests.fleet_services import make_backend
from tests.test_collector_support import Device, ingest, run_cli

ORG_PRIV, ORG_PUB = generate_org_keypair()


def _race(store: BundleStore, uploads: list[tuple[bytes, str]]) -> list:
    results: list = [None] * len(uploads)
    go = threading.Barrier(len(uploads))

    def one(i: int, raw: bytes, bid: str) -> None:
        go.wait(timeout=10)
        try:
            results[i] = ingest(store, raw, bid)
        except Refused as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i, raw, bid)) for i, (raw, bid) in enumerate(uploads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


@pytest.fixture(params=["local", "fleet"])
def backend(request, tmp_path):
    return make_backend(request, request.param, tmp_path)


def test_first_uploads_racing_with_different_keys_pin_exactly_one(backend):
    with backend.open_store() as store:
        claimants = [Device("contested", [ORG_PUB], key=Ed25519PrivateKey.generate()) for _ in range(8)]
        uploads = [(raw, sealed.header.bundle_id) for raw, sealed in (d.seal(3) for d in claimants)]
        results = _race(store, uploads)
        winners = [r for r in results if not isinstance(r, Refused)]
        assert len(winners) == 1 and winners[0].created
        assert sorted(r.status for r in results if isinstance(r, Refused)) == [403] * 7
        assert store.device_pub("contested") == winners[0].header.device_pub
        assert backend.object_digests() == [winners[0].digest]


def test_concurrent_uploads_of_one_device_all_index_in_one_chain(backend):
    dev = Device("busy", [ORG_PUB])
    bundles = [dev.seal(4) for _ in range(24)]
    with backend.open_store() as store:
        uploads = [(raw, s.header.bundle_id) for raw, s in bundles]
        results = _race(store, uploads + uploads[:6])  # six sent twice at the same time
        assert all(not isinstance(r, Refused) for r in results), results
        assert sum(r.created for r in results) == 24
        report = analyse_device("busy", store.bundles("busy"))
    assert report.ok and report.last_contiguous_seq == 96 and report.bundles == 24
    assert len(backend.object_digests()) == 24


def test_progress_bar_draws_on_the_given_stream_and_ends_the_line():
    out = io.StringIO()
    bar = _Progress(out, 3)
    for n in (10, 20, 30):
        bar.step(n)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rexport [") and "3/3 bundles, 30 events" in text and text.endswith("\n")
    silent = _Progress(None, 3)
    silent.step(1)
    silent.close()


def test_serve_refuses_a_bad_listen_address(tmp_path):
    p = run_cli("collector", "serve", "--data", str(tmp_path / "d"), "--listen", "localhost", timeout=30)
    assert p.returncode == 2 and "is not HOST:PORT" in p.stderr and p.stderr.count("\n") == 1


def test_serve_refuses_a_bad_size(tmp_path):
    p = run_cli("collector", "serve", "--data", str(tmp_path / "d"), "--max-bundle-bytes", "lots", timeout=30)
    assert p.returncode == 2 and "--max-bundle-bytes" in p.stderr


def test_serve_on_a_busy_port_is_exit_1_in_one_sentence(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = run_cli("collector", "serve", "--data", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}",
                    "--token", "t", timeout=30)
    assert p.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in p.stderr
    assert "Traceback" not in p.stderr
