"""The real daemon against a damaged journal and a full disk: start-up stays quick on a segment
crafted to make resynchronisation slow, and a full disk (a real, small tmpfs) leaves an `agent.gap`
for its period, while a note reported as not recorded is never recorded."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import msgpack
import pytest

from agent.journal import REC_MARK, SEG_HEADER, SEG_MAGIC, scan_segment
from tests.daemon_harness import DaemonProcess, forget_window
from tests.test_spool_durability import policy, wait_until

QUIET = "[capture]\nsources = []\n"


def crafted_segment(base: int, size: int) -> bytes:
    """A marker at every 14 bytes, each claiming a record that runs to the end of the segment:
    a naive resynchronisation checks each of them over the rest of the segment."""
    buf = bytearray(SEG_HEADER.pack(SEG_MAGIC, base))
    while len(buf) < size:
        buf += REC_MARK + struct.pack("<I", max(size - len(buf) - 14, 0)) + b"\0" * 8
    return bytes(buf[:size])


def test_start_up_is_quick_on_a_segment_crafted_against_resynchronisation(tmp_path, daemon_factory):
    d = daemon_factory(policy=policy(tmp_path, QUIET))
    d.start()
    d.cli("opt-in")
    d.cli("note", "before")
    d.stop()
    spool = d.home / "spool"
    (spool / f"{10_000:020d}.seg").write_bytes(crafted_segment(10_000, 1 << 20))
    t0 = time.monotonic()
    d.start(timeout=30)
    took = time.monotonic() - t0
    assert took < 10, f"start-up took {took:.1f} s"
    d.cli("note", "after")
    evs = d.events()
    notes = [e for e in evs if e["kind"] == "user.note"]
    assert [e["data"]["text"] for e in notes] == ["before", "after"]
    assert notes[1]["seq"] > 10_000  # the crafted segment's seqs are never handed out
    assert any(e["kind"] == "agent.gap" and "unreadable journal records" in e["data"]["reason"]
               for e in evs)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    home = tmp_path / "home"
    spool = home / "spool"
    spool.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(spool)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield home
    subprocess.run(["umount", "-l", str(spool)], capture_output=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_full_disk_leaves_a_gap_and_an_unrecorded_note_stays_unrecorded(tmp_path, small_disk,
                                                                        daemon_factory):
    d = daemon_factory(home=small_disk, policy=policy(tmp_path, QUIET))
    d.start()
    d.cli("opt-in")
    d.cli("note", "before")
    filler = fill(small_disk / "spool")
    # Longer than a page: the segment's last page may have room for a short one.
    r = d.cli("note", "during " + "x" * 8192, check=False, timeout=60)
    assert r.returncode == 1 and "not recorded" in r.stderr, r.stderr
    r = d.cli("note", "refused", check=False)
    assert r.returncode == 1, r.stderr
    st = d.status()
    assert not st["capturing"] and "full" in st["reason"]
    filler.unlink()
    wait_until(lambda: d.status()["capturing"], 15)
    wait_until(lambda: any(e["kind"] == "agent.gap" for e in d.events()), 10)
    d.cli("note", "after")
    # Visible in the log once durable (the journal's reorder window and fsync): wait for it.
    wait_until(lambda: any(e["kind"] == "user.note" and e["data"]["text"] == "after"
                           for e in d.events()), 15)
    evs = d.events()
    assert [e["data"]["text"] for e in evs if e["kind"] == "user.note"] == ["before", "after"]
    (gap,) = [e for e in evs if e["kind"] == "agent.gap"]
    assert "disk holding the journal was full from" in gap["data"]["reason"]
    assert gap["data"]["dropped"] >= 0  # the notes were refused to the user's face: not lost
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(set(seqs))


HELD = QUIET + '[upload]\nhold = "1h"\n'  # nothing leaves the machine: forget reaches every event


def gaps(d: DaemonProcess) -> list[dict]:
    return [e["data"] for e in d.events("--kind", "agent.gap")]


def test_a_forgotten_span_is_no_gap_after_restarts(tmp_path, daemon_factory):
    d = daemon_factory(policy=policy(tmp_path, HELD))
    d.start()
    d.cli("opt-in")
    d.cli("note", "kept")
    time.sleep(2.5)
    began = time.monotonic()
    for i in range(3):
        d.cli("note", f"forgotten {i}")
    r = d.cli("forget", "--last", f"{forget_window(began)}s")
    assert r.stdout.startswith("forgot 3 events"), r.stdout
    d.cli("note", "after")
    for _ in range(2):
        d.stop()
        d.start()
    evs = d.events()
    assert [e["data"]["text"] for e in evs if e["kind"] == "user.note"] == ["kept", "after"]
    (fg,) = [e for e in evs if e["kind"] == "agent.forget"]
    assert fg["data"]["count"] == 3
    assert gaps(d) == []  # the seqs the forget removed are explained by it, not reported as lost
    assert d.status()["journal"]["lost_at_start"] == 0
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(set(seqs))


def test_a_damaged_sealed_segment_is_reported_once(tmp_path, daemon_factory):
    # Held: delivery would release the sealed segments.
    d = daemon_factory(policy=policy(tmp_path, HELD + '[spool]\nsegment_bytes = "1KiB"\n'))
    d.start()
    d.cli("opt-in")
    for i in range(20):
        d.cli("note", f"note {i} " + "p" * 40)
    d.stop()
    spool = d.home / "spool"
    first = sorted(spool.glob("*.seg"))[0]
    assert len(list(spool.glob("*.seg"))) > 1
    buf = bytearray(first.read_bytes())
    _, end, payload = scan_segment(bytes(buf)).records[3]
    lost = msgpack.unpackb(payload)["seq"]
    buf[end - 3] ^= 0xFF
    first.write_bytes(bytes(buf))
    d.start()
    st = d.status()
    assert st["journal"]["lost_at_start"] == 1
    assert "1 record found lost at start" in d.cli("status").stdout
    top = st["journal"]["next_seq"]
    for _ in range(2):
        d.stop()
        d.start()
    assert d.status()["journal"]["lost_at_start"] == 0
    (gap,) = gaps(d)
    assert (gap["from"], gap["to"], gap["dropped"]) == (lost, lost, 1)
    assert "corrupt journal record" in gap["reason"]
    d.cli("note", "after")
    evs = d.events()
    assert lost not in [e["seq"] for e in evs]
    assert evs[-1]["seq"] >= top and evs[-1]["data"]["text"] == "after"
