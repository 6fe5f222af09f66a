"""The journal: ordering, durability, recovery from torn and corrupt segments, release, rewrite."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from agent.journal import (SEG_HEADER, Journal, frame, merge_ranges, read_segments, scan_segment,
                           seq_runs, uncovered, unexplained_gaps)


def open_journal(d: Path, **kw) -> Journal:
    j = Journal(d, **{"fsync_ms": 20, "reorder_ms": 20, **kw})
    j.open()
    j.start()
    return j


def segs(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def test_seq_strictly_increasing_and_persisted_across_restart(tmp_path):
    j = open_journal(tmp_path)
    for i in range(100):
        j.append("user.note", "user", None, {"text": str(i)})
    j.stop()
    j = open_journal(tmp_path)
    for i in range(50):
        j.append("user.note", "user", None, {"text": f"b{i}"})
    j.stop()
    seqs = [e.seq for e in read_segments(tmp_path)]
    assert seqs == list(range(1, 151))


def test_durable_ticket_returns_only_after_fsync(tmp_path):
    j = open_journal(tmp_path, fsync_ms=60000)  # batching alone would wait 60 s
    t0 = time.monotonic()
    seq = j.append("user.note", "user", None, {"text": "x"}, durable=True).wait(30)
    assert seq == 1 and time.monotonic() - t0 < 15
    assert j.durable_seq >= 1
    j.stop()


def test_reorder_window_orders_by_ts(tmp_path):
    j = open_journal(tmp_path, reorder_ms=300)
    now = time.time_ns()
    j.append("b", "s", None, {}, ts=now - 1_000_000)  # arrives first, happened later
    j.append("a", "s", None, {}, ts=now - 50_000_000)
    j.append("c", "s", None, {}, ts=now)
    j.flush()
    assert [e.kind for e in j.read()] == ["a", "b", "c"]
    j.stop()


def test_late_event_beyond_window_is_sequenced_on_arrival(tmp_path):
    j = open_journal(tmp_path, reorder_ms=50)
    now = time.time_ns()
    j.append("first", "s", None, {}, ts=now)
    j.flush()
    j.append("late", "s", None, {}, ts=now - 10_000_000_000)
    j.flush()
    evs = list(j.read())
    assert [e.kind for e in evs] == ["first", "late"]
    j.stop()


def test_readers_see_only_durable_records(tmp_path):
    # A reorder window far longer than the pause below, also on a loaded machine: `flush` ends it.
    j = open_journal(tmp_path, fsync_ms=30000, reorder_ms=10000)
    # The first is old enough to be written at once; the second, still in the reorder buffer,
    # keeps the batch open, so the first is not fsynced.
    j.append("x", "s", None, {}, time.time_ns() - 20_000_000_000)
    j.append("y", "s", None, {})
    time.sleep(0.2)
    assert list(j.read()) == []  # written maybe, but not fsynced: invisible
    j.flush()
    assert [e.seq for e in j.read()] == [1, 2]
    j.stop()


def test_the_end_of_a_burst_is_fsynced_without_waiting_out_the_batch(tmp_path):
    j = open_journal(tmp_path, fsync_ms=60000, reorder_ms=0)
    for i in range(100):
        j.append("x", "s", None, {"i": i})
    deadline = time.monotonic() + 15
    while len(list(j.read())) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.seq for e in j.read()] == list(range(1, 101))  # well before the 60 s batch is due
    j.stop()


def test_many_threads_append_concurrently(tmp_path):
    j = open_journal(tmp_path)

    def writer(n):
        for i in range(500):
            j.append("w", f"t{n}", None, {"i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    j.stop()
    evs = list(read_segments(tmp_path))
    assert [e.seq for e in evs] == list(range(1, 2001))
    for n in range(4):  # each writer's own order survives
        assert [e.data["i"] for e in evs if e.source == f"t{n}"] == list(range(500))


def test_torn_tail_is_truncated_counted_and_seq_not_reused(tmp_path):
    j = open_journal(tmp_path)
    for i in range(10):
        j.append("x", "s", None, {"i": i})
    j.stop()
    seg = segs(tmp_path)[-1]
    half = frame(b"\x81\xa1k\xa1v")[:7]  # a record cut off mid-header, as by a crash
    with open(seg, "ab") as f:
        f.write(half)
    j = Journal(tmp_path)
    rec = j.open()
    assert rec.next_seq == 11
    assert len(rec.gaps) == 1 and "torn write" in rec.gaps[0]["reason"]
    j.start()
    j.append("after", "s", None, {})
    j.stop()
    evs = list(read_segments(tmp_path))
    assert [e.seq for e in evs] == list(range(1, 12)) and evs[-1].kind == "after"


def test_corrupt_record_in_the_middle_is_skipped_and_reported(tmp_path):
    j = open_journal(tmp_path)
    for i in range(20):
        j.append("x", "s", None, {"i": i, "pad": "p" * 40})
    j.stop()
    seg = segs(tmp_path)[-1]
    buf = bytearray(seg.read_bytes())
    recs = scan_segment(bytes(buf)).records
    off, end, _ = recs[5]
    buf[end - 3] ^= 0xFF  # flip a payload byte of the sixth record (seq 6)
    seg.write_bytes(bytes(buf))
    j = Journal(tmp_path)
    rec = j.open()
    assert rec.gaps == [{"dropped": 1, "from": 6, "to": 6,
                         "reason": f"corrupt journal record in segment {seg.name}"}]
    assert rec.next_seq == 21
    assert [e.seq for e in read_segments(tmp_path)] == [s for s in range(1, 21) if s != 6]


def test_garbage_segment_and_empty_file_never_crash(tmp_path):
    j = open_journal(tmp_path)
    j.append("x", "s", None, {})
    j.stop()
    (tmp_path / f"{99:020d}.seg").write_bytes(os.urandom(3))  # header never completed
    j = Journal(tmp_path)
    rec = j.open()
    assert any("unreadable" in g["reason"] for g in rec.gaps)
    assert rec.next_seq == 2


def test_random_bytes_scan_never_raises():
    import random

    r = random.Random(7)
    for _ in range(200):
        blob = SEG_HEADER.pack(b"TCJ1", 1) + bytes(r.getrandbits(8) for _ in range(r.randint(0, 300)))
        res = scan_segment(blob)
        assert res.good_end <= len(blob)


def test_release_keeps_seq_floor_after_all_segments_go(tmp_path):
    j = open_journal(tmp_path, segment_bytes=200)
    for i in range(30):
        j.append("x", "s", None, {"i": i, "pad": "p" * 30})
        j.flush()
    before = len(segs(tmp_path))
    freed = j.release(30)
    assert freed > 0 and len(segs(tmp_path)) < before
    j.stop()
    j = Journal(tmp_path)
    assert j.open().next_seq == 31


def test_rewrite_removes_matching_records(tmp_path):
    j = open_journal(tmp_path)
    for i in range(10):
        j.append("x", "s", None, {"i": i})
    removed = j.rewrite(lambda e: e.data["i"] % 2 == 0)
    assert len(removed) == 5
    j.append("after", "s", None, {})
    j.stop()
    evs = list(read_segments(tmp_path))
    assert [e.data.get("i") for e in evs[:-1]] == [1, 3, 5, 7, 9]
    assert evs[-1].seq == 11  # removed seqs are never handed out again


def test_enospc_holds_batch_refuses_new_events_and_resumes(tmp_path, monkeypatch):
    """A full disk is simulated at the os.write boundary (a real tmpfs cannot be mounted in every
    test environment); the journal's handling above that boundary is what is under test."""
    import errno

    import agent.journal as jmod

    j = open_journal(tmp_path)
    j.append("before", "s", None, {})
    j.flush()
    real_write = os.write
    full = threading.Event()
    full.set()

    def write(fd, data):
        if full.is_set() and fd == j._fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(jmod.os, "write", write)
    j.append("during", "s", None, {})
    deadline = time.monotonic() + 5
    while not j.disk_full and time.monotonic() < deadline:
        time.sleep(0.02)
    assert j.disk_full and j.stats()["error"] == "disk full"
    with pytest.raises(jmod.JournalFull):
        j.append("refused", "s", None, {})
    full.clear()  # space returns
    deadline = time.monotonic() + 10
    while j.disk_full and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not j.disk_full
    j.stop()
    assert [e.kind for e in read_segments(tmp_path)] == ["before", "during"]


class DiskModel:
    """What a disk keeps across a crash, for the journal's files. Every fsync records how many bytes
    of the file are then safe; at a crash each file keeps those, and of the bytes written after them
    only what the disk happened to write back: none, whole 512- or 4096-byte sectors (a torn write),
    or all of it; then maybe garbage, as a sector that was being written when the power went."""

    def __init__(self, monkeypatch):
        import agent.journal as jmod
        import agent.durable as dmod

        self.synced: dict[str, int] = {}
        self.crashing = False
        real = os.fsync

        def fsync(fd):
            real(fd)
            if self.crashing:  # the machine is going down: nothing more reaches the disk
                return
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return
            if path.endswith((".seg", ".tmp")):
                self.synced[path] = os.fstat(fd).st_size

        real_replace = os.replace

        def replace(src, dst):  # a rewritten segment (tracecap forget) takes its synced size along
            real_replace(src, dst)
            if str(dst).endswith(".seg"):
                self.synced[str(dst)] = self.synced.pop(str(src), 0)

        monkeypatch.setattr(jmod.os, "fsync", fsync)
        monkeypatch.setattr(dmod.os, "fsync", fsync)
        monkeypatch.setattr(jmod.os, "replace", replace)

    # What happens to one file's unsynced tail: how much is written back, where it tears (a
    # fraction of the sectors), and the garbage after it. Drawn before the files are looked at, so
    # the draws do not depend on what the writer thread happened to write.
    FATE = st.tuples(st.sampled_from(["lost", "sector512", "sector4096", "all"]),
                     st.integers(0, 1000), st.binary(max_size=600))

    def crash(self, directory: Path, fates: list) -> None:
        for i, seg in enumerate(sorted(directory.glob("*.seg"))):
            how, where, garbage = fates[i % len(fates)]
            size = seg.stat().st_size
            safe = min(self.synced.get(str(seg), 0), size)
            if how == "all" or size == safe:
                keep = size
            elif how == "lost":
                keep = safe
            else:
                unit = 512 if how == "sector512" else 4096
                sectors = [b for b in range(0, size + 1, unit) if safe <= b <= size] or [safe]
                keep = sectors[where * (len(sectors) - 1) // 1000]
            with open(seg, "r+b") as f:
                f.truncate(keep)
                if keep < size and garbage:
                    f.seek(keep)
                    f.write(garbage)
        # What is there now is what the disk holds.
        self.synced = {str(seg): seg.stat().st_size for seg in directory.glob("*.seg")}
        self.crashing = False


class JournalModel(RuleBasedStateMachine):
    """Random appends, flushes, crashes and reopens against a simple model, the crash as a disk
    does it (DiskModel): after any sequence, every acknowledged (flushed) event is present exactly
    once, seq strictly increases, nothing is there that was not appended, and no seq that was
    durable is handed out again. Forgetting (rewrite, its marker, record_forgotten) removes events
    for good, and a reopen never reports a forgotten seq as lost."""

    monkeypatch = None  # set by the test function below

    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp())
        self.disk = DiskModel(JournalModel.monkeypatch)
        self.j = open_journal(self.dir, fsync_ms=10, reorder_ms=5, segment_bytes=600)
        self.acked: list[str] = []
        self.pending: list[str] = []
        self.appended: set[str] = set()
        self.n = 0
        self.max_durable = 0
        self.forgotten_ids: set[str] = set()
        self.forgotten_seqs: set[int] = set()

    @rule(k=st.integers(1, 5), size=st.integers(0, 300))
    def append(self, k, size):
        for _ in range(k):
            self.n += 1
            self.j.append("e", "s", None, {"id": str(self.n), "pad": "p" * size})
            self.pending.append(str(self.n))
            self.appended.add(str(self.n))

    @rule()
    def flush(self):
        self.j.flush()
        self.acked += self.pending
        self.pending = []

    @rule(pick=st.sets(st.integers(0, 40), max_size=6))
    def forget(self, pick):
        self.flush()
        doomed = {a for i, a in enumerate(self.acked) if i in pick}
        removed = self.j.rewrite(lambda e: e.data.get("id") in doomed)
        assert {e.data["id"] for e in removed} == doomed
        self.j.append("agent.forget", "agent", None, {"count": len(removed)}, durable=True).wait(10)
        self.j.record_forgotten(e.seq for e in removed)
        self.acked = [a for a in self.acked if a not in doomed]
        self.forgotten_ids |= doomed
        self.forgotten_seqs |= {e.seq for e in removed}

    @rule()
    def wait_a_little(self):
        time.sleep(0.02)  # the writer writes, and fsyncs on its own schedule

    @rule(fates=st.lists(DiskModel.FATE, min_size=1, max_size=4))
    def crash_and_reopen(self, fates):
        # kill -9: the writer stops where it is; what was not fsynced is at the disk's mercy.
        j = self.j
        self.max_durable = max(self.max_durable, j.durable_seq)
        self.disk.crashing = True
        with j._cond:
            j._heap.clear()
            j._stopping = True
            j._cond.notify_all()
        j._thread.join(60)
        assert not j._thread.is_alive()
        os.close(j._fd) if j._fd is not None else None
        self.disk.crash(self.dir, fates)
        self.pending = []
        self.j = open_journal(self.dir, fsync_ms=10, reorder_ms=5, segment_bytes=600)
        for gap in self.j.recovery.gaps:
            if "from" in gap:
                assert not self.forgotten_seqs & set(range(gap["from"], gap["to"] + 1)), gap

    @invariant()
    def acked_events_present_once_in_order(self):
        self.max_durable = max(self.max_durable, self.j.durable_seq)
        evs = list(read_segments(self.dir, to_seq=self.j.durable_seq))
        seqs = [e.seq for e in evs]
        assert seqs == sorted(set(seqs))
        ids = [e.data["id"] for e in evs if "id" in e.data]
        assert set(ids) <= self.appended
        assert not set(ids) & self.forgotten_ids
        for a in self.acked:
            assert ids.count(a) == 1, a
        assert self.j.next_seq > self.max_durable

    def teardown(self):
        self.j.stop()


def test_journal_model_crashing_like_a_disk(monkeypatch):
    from hypothesis import HealthCheck

    JournalModel.monkeypatch = monkeypatch
    test = JournalModel.TestCase("runTest")
    test.settings = settings(max_examples=25, stateful_step_count=20, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])
    test.runTest()


def test_undecodable_record_at_the_end_is_a_gap_and_its_seq_is_not_reused(tmp_path):
    j = open_journal(tmp_path)
    for i in range(3):
        j.append("x", "s", None, {"i": i})
    j.stop()
    seg = segs(tmp_path)[-1]
    with open(seg, "ab") as f:
        f.write(frame(b"\xc1 not msgpack"))  # its check passes; its body does not decode
    j = Journal(tmp_path)
    rec = j.open()
    assert rec.next_seq == 5
    (gap,) = rec.gaps
    assert gap["dropped"] == 1 and (gap["from"], gap["to"]) == (4, 4) and "unreadable" in gap["reason"]
    j.start()
    j.append("after", "s", None, {})
    j.stop()
    assert [e.seq for e in read_segments(tmp_path)] == [1, 2, 3, 5]
    j = Journal(tmp_path)
    assert j.open().next_seq == 6  # the skipped seq stays skipped


def test_undecodable_record_in_the_middle_is_counted(tmp_path):
    j = open_journal(tmp_path)
    j.append("x", "s", None, {"i": 0})
    j.stop()
    seg = segs(tmp_path)[-1]
    with open(seg, "ab") as f:
        f.write(frame(b"\xc1 not msgpack"))
    j = Journal(tmp_path)
    j.open()
    j.start()
    j.append("y", "s", None, {})
    j.stop()
    rec = Journal(tmp_path).open()
    assert any(g["dropped"] == 1 for g in rec.gaps)
    assert rec.next_seq == 4


def damage(seg: Path, index: int) -> None:
    """Flip a payload byte of the segment's record number `index` (its check then fails)."""
    buf = bytearray(seg.read_bytes())
    _, end, _ = scan_segment(bytes(buf)).records[index]
    buf[end - 3] ^= 0xFF
    seg.write_bytes(bytes(buf))


def test_forgotten_seqs_are_no_gap_after_a_restart_but_damage_beside_them_is(tmp_path):
    j = open_journal(tmp_path)
    for i in range(20):
        j.append("x", "s", None, {"i": i, "pad": "p" * 40})
    removed = j.rewrite(lambda e: 8 <= e.seq <= 12)
    j.append("agent.forget", "agent", None, {"count": len(removed)}, durable=True).wait(5)
    j.record_forgotten(e.seq for e in removed)
    j.stop()
    assert Journal(tmp_path).open().gaps == []  # the agent.forget says why 8..12 are missing
    seg = segs(tmp_path)[-1]
    recs = [e.seq for e in read_segments(tmp_path)]
    damage(seg, recs.index(13))  # right after the forgotten run
    damage(seg, recs.index(3))
    rec = Journal(tmp_path).open()
    assert [(g["from"], g["to"], g["dropped"]) for g in rec.gaps] == [(3, 3, 1), (13, 13, 1)]
    assert all("corrupt journal record" in g["reason"] for g in rec.gaps)
    assert rec.next_seq == 22


def test_a_forget_not_yet_noted_is_still_reported_rather_than_left_unexplained(tmp_path):
    j = open_journal(tmp_path)
    for i in range(10):
        j.append("x", "s", None, {"i": i})
    j.rewrite(lambda e: e.seq in (4, 5))  # a crash before its marker was durable
    j.stop()
    (gap,) = Journal(tmp_path).open().gaps
    assert (gap["from"], gap["to"]) == (4, 5)


def test_forgetting_the_newest_records_never_frees_their_seqs(tmp_path):
    j = open_journal(tmp_path)
    for i in range(10):
        j.append("x", "s", None, {"i": i})
    j.rewrite(lambda e: e.seq >= 8)  # and a crash before anything else is written
    j.stop()
    assert Journal(tmp_path).open().next_seq == 11


def test_damage_is_reported_once_and_its_seqs_are_never_reused(tmp_path):
    j = open_journal(tmp_path, segment_bytes=300)
    for i in range(30):
        j.append("x", "s", None, {"i": i, "pad": "p" * 40})
        j.flush()  # a segment rotates between batches
    j.stop()
    sealed = segs(tmp_path)[1]
    lost = [e.seq for e in read_segments(tmp_path) if e.seq >= int(sealed.name[:-4])][1]
    damage(sealed, 1)
    j = Journal(tmp_path)
    rec = j.open()
    assert [(g["from"], g["to"]) for g in rec.gaps] == [(lost, lost)]
    j.start()
    j.record_reported()
    assert j.stats()["lost_at_start"] == 1
    j.stop()
    for _ in range(2):  # later starts: nothing new to say
        j = Journal(tmp_path)
        rec = j.open()
        assert rec.gaps == [] and rec.next_seq == 31
        assert j.stats()["lost_at_start"] == 0
    damage(segs(tmp_path)[0], 0)  # new damage elsewhere is reported, once more only it
    rec = Journal(tmp_path).open()
    assert [(g["from"], g["to"]) for g in rec.gaps] == [(1, 1)]
    j = open_journal(tmp_path)
    j.append("after", "s", None, {})
    j.stop()
    assert [e.seq for e in read_segments(tmp_path)][-1] == 31


def test_unreported_damage_is_reported_again(tmp_path):
    """Nothing is noted until the gap is durable: a start that dies before reporting it leaves
    it to the next."""
    j = open_journal(tmp_path)
    for i in range(5):
        j.append("x", "s", None, {"i": i})
    j.stop()
    damage(segs(tmp_path)[0], 1)
    assert len(Journal(tmp_path).open().gaps) == 1
    assert len(Journal(tmp_path).open().gaps) == 1


def test_released_segments_take_their_explanations_with_them(tmp_path):
    j = open_journal(tmp_path, segment_bytes=200)
    for i in range(30):
        j.append("x", "s", None, {"i": i, "pad": "p" * 30})
        j.flush()
    removed = j.rewrite(lambda e: e.seq in (2, 3, 25))
    j.record_forgotten(e.seq for e in removed)
    j.release(20)
    j.stop()
    meta = json.loads((tmp_path / "journal.meta").read_text())
    assert meta["forgotten"] == [[25, 25]] and meta["floor"] > 20
    assert Journal(tmp_path).open().gaps == []


@pytest.mark.parametrize("lo,hi,covered,expect", [
    (5, 9, [], [(5, 9)]),
    (5, 9, [[5, 9]], []),
    (5, 9, [[1, 20]], []),
    (5, 9, [[6, 7]], [(5, 5), (8, 9)]),
    (5, 9, [[1, 5], [9, 12]], [(6, 8)]),
    (5, 9, [[1, 2], [11, 12]], [(5, 9)]),
    (5, 5, [[4, 4], [6, 6]], [(5, 5)]),
])
def test_uncovered(lo, hi, covered, expect):
    assert uncovered(lo, hi, covered) == expect


def test_merge_ranges_and_seq_runs():
    assert merge_ranges([[7, 9], [1, 2], [3, 4], [8, 12]]) == [[1, 4], [7, 12]]
    assert seq_runs([5, 3, 4, 9, 11, 10, 5]) == [[3, 5], [9, 11]]


def test_unexplained_gaps_keeps_what_is_new():
    found = [{"dropped": 4, "from": 10, "to": 13, "reason": "corrupt"},
             {"dropped": 2, "_records": ["1:aa", "1:bb"], "reason": "undecodable"},
             {"dropped": 1, "reason": "torn write"}]
    gaps, runs, keys = unexplained_gaps(found, [[11, 12]], {"1:aa"})
    assert gaps == [{"dropped": 1, "from": 10, "to": 10, "reason": "corrupt"},
                    {"dropped": 1, "from": 13, "to": 13, "reason": "corrupt"},
                    {"dropped": 1, "reason": "undecodable"},
                    {"dropped": 1, "reason": "torn write"}]
    assert runs == [[10, 10], [13, 13]] and keys == ["1:bb"]
    assert unexplained_gaps(found[:2], [[10, 13]], {"1:aa", "1:bb"})[0] == []
