"""The journal: the durable, ordered spine every captured event passes through.

Takes redacted events (kind, source, session, data, ts) from any thread; gives them back in `seq`
order to readers (the bundler, `tracecap log`). Promises:
- `seq` is per device, strictly increasing, persisted, and never reused after a stop, crash or
  restart; readers only ever see records that are on disk and fsynced, so a seq they saw can never
  be handed out again.
- Durability is batched: records are fsynced at most `fsync_ms` after they are written, at once
  when the reorder buffer has nothing left to write after them (the end of a burst, or a lone
  event), and on `flush()`/`stop()`. `append(..., durable=True)` returns a ticket whose `wait()`
  returns the seq only once its record is fsynced (what `tracecap note` acknowledges); a batch
  holding such a ticket is fsynced as soon as it is written.
- Ordering across sources: each event is held in a reorder buffer until `reorder_ms` has passed since
  its `ts` (or since it arrived, whichever comes first), and the buffer releases in `ts` order. So
  two events whose `ts` differ and that both reach the journal within `reorder_ms` of happening get
  `seq` in `ts` order. An event that arrives later than that is sequenced on arrival: its `ts` may
  then be earlier than a lower-seq event's. The bound is `reorder_ms` (default 250 ms).
- A torn tail or corrupt record never stops the journal: it is skipped on open, counted, and
  reported in `recovery.gaps` (the daemon journals each as an `agent.gap` event). Each damage is
  reported once: once its `agent.gap` is durable, `record_reported()` notes it in `journal.meta`
  and later opens leave it out (its seqs are still never reused). Seqs removed on purpose by
  `rewrite` (tracecap forget) are not damage: once the `agent.forget` marker that explains them is
  durable, `record_forgotten()` notes them, and a later open reports no gap for them. (After a
  crash between the rewrite and that note the span is reported as damage: a span is never
  missing without an event saying why; and `rewrite` raises the floor first, so even the newest
  seqs it removes are never reused.)
- Acknowledgement of what is durable, for sources that must not erase their input before then (the
  shell spool): `mark()` gives a counter covering every event appended so far, `durable_mark` the
  highest counter whose event (and every earlier one) is fsynced, and listeners added with
  `add_listener` are called after each fsync. Counters follow append order, not seq order.
- ENOSPC: the failed write is rolled back, the batch is kept and retried every few seconds, new
  events are refused (counted in `dropped_full`) until space returns; the daemon reports the state.
  A durable ticket (a note someone waits for) is failed at once and its event withdrawn, so what is
  reported as not recorded never is; seqs are handed out only to records that reached the file.

On-disk format (the spool directory)
------------------------------------
    journal.meta          JSON {"format": 1, "floor": N, "forgotten": [[from, to], ...],
                          "reported": [[from, to], ...], "reported_records": ["<base>:<check>", ...]},
                          replaced atomically (temp, fsync, rename, fsync dir). `floor` is a lower
                          bound for the next seq, so releasing every segment never lets a seq be
                          reused. The other keys say which missing seqs are already explained:
                          `forgotten` the runs `tracecap forget` removed (its `agent.forget` event
                          explains them), `reported` the runs an `agent.gap` already reported, and
                          `reported_records` the undecodable records (segment base and check) that
                          held no seq and were reported. Ranges below the first segment are pruned
                          when segments are released. Older files without these keys read as empty.
    <base_seq:020d>.seg   segments, named by the seq of their first record; one is active (the last).

    segment  := header record*
    header   := b"TCJ1" base_seq:u64le                                           (12 bytes)
    record   := b"\\xa5\\x5a" length:u32le check:8 payload:length
    check    := blake2b(length_bytes || payload, digest_size=8)   (stronger than CRC32C)
    payload  := msgpack of the event's contract dict (schemas/events.py)

The 2-byte sync marker lets a reader resynchronise after a corrupt record by searching for the next
marker at which a record with a valid check begins; the 64-bit check makes a false resync negligible.
Resynchronisation is linear in the segment's size: the bytes checked while searching are capped at a
few times the segment's size (random damage never comes near it; bytes crafted to put a plausible
record at every offset do), and past the cap the rest of the segment is reported unreadable, its
seqs kept out of reuse by a conservative bound (one record per `MIN_RECORD` bytes).
A record whose check passes but whose body does not decode is counted in a gap; when it ends the
journal its seq is kept out of reuse.
Writes are appended in batches with O_APPEND; a segment rotates once it exceeds `segment_bytes`.
On open, the last segment is truncated after its last valid record (a torn tail is a record that was
being written when the process died and was therefore never acknowledged).
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import hashlib
import heapq
import itertools
import json
import logging
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import msgpack

from agent.durable import fsync_dir, write_atomic
from schemas.events import Event, decode_event

log = logging.getLogger("tracecap.journal")

SEG_MAGIC = b"TCJ1"
SEG_HEADER = struct.Struct("<4sQ")
REC_MARK = b"\xa5\x5a"
REC_HEAD = struct.Struct("<2sI8s")
MAX_RECORD = 64 << 20
MIN_RECORD = REC_HEAD.size + 8  # the smallest record the journal writes (an event's dict is longer)
SPACE_BACK = 256 << 10  # free bytes that end a full disk when nothing waits to be retried
RESYNC_BUDGET = 4  # bytes checked while resynchronising, in multiples of the segment's size
META = "journal.meta"


def _check(length_bytes: bytes, payload: bytes) -> bytes:
    h = hashlib.blake2b(length_bytes, digest_size=8)
    h.update(payload)
    return h.digest()


def frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return REC_MARK + length + _check(length, payload) + payload


def _seg_name(base: int) -> str:
    return f"{base:020d}.seg"


def seq_runs(seqs: Iterable[int]) -> list[list[int]]:
    """Seqs as sorted inclusive [from, to] runs of consecutive numbers."""
    runs: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return runs


def merge_ranges(ranges: Iterable[Iterable[int]]) -> list[list[int]]:
    """Inclusive [from, to] ranges, sorted, with overlapping and adjacent ones joined."""
    out: list[list[int]] = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def uncovered(lo: int, hi: int, covered: list[list[int]]) -> list[tuple[int, int]]:
    """The parts of [lo, hi] that no range of `covered` (merged, as merge_ranges gives) holds."""
    out = []
    for a, b in covered:
        if b < lo:
            continue
        if a > hi:
            break
        if a > lo:
            out.append((lo, a - 1))
        lo = b + 1
        if lo > hi:
            return out
    if lo <= hi:
        out.append((lo, hi))
    return out


def unexplained_gaps(found: list[dict[str, Any]], explained: list[list[int]],
                     reported_records: set[str]) -> tuple[list[dict[str, Any]], list[list[int]], list[str]]:
    """Of the gaps an open found, those not explained already: a gap with a seq range loses the
    parts that are forgotten or reported (what is left is reported, split where needed); a gap of
    undecodable records without seqs (`_records`: their keys) is kept for the records not
    reported; any other gap (a torn tail, a segment set aside: cleared as they are found) is kept.
    Returns the gaps to report, their seq runs and their record keys. Pure."""
    gaps: list[dict[str, Any]] = []
    runs: list[list[int]] = []
    keys: list[str] = []
    for gap in found:
        gap = dict(gap)
        records = gap.pop("_records", None)
        if "from" in gap:
            for lo, hi in uncovered(gap["from"], gap["to"], explained):
                gaps.append(gap | {"dropped": hi - lo + 1, "from": lo, "to": hi})
                runs.append([lo, hi])
        elif records is not None:
            new = [k for k in records if k not in reported_records]
            if new:
                gaps.append(gap | {"dropped": len(new)})
                keys += new
        else:
            gaps.append(gap)
    return gaps, runs, keys


@dataclasses.dataclass
class ScanResult:
    records: list[tuple[int, int, bytes]]  # (offset, end, payload)
    good_end: int  # offset just past the last valid record
    skipped: list[tuple[int, int]]  # (offset, end) byte ranges that held no valid record
    unverified_from: int | None = None  # resync gave up here: the rest was not checked


def scan_segment(buf: bytes, start: int = SEG_HEADER.size) -> ScanResult:
    """Parse a segment body (after its header), from `start` (a record boundary, such as a previous
    scan's `good_end`). Pure; never raises on bad bytes; linear in len(buf): see the module
    docstring on resynchronisation."""
    records: list[tuple[int, int, bytes]] = []
    skipped: list[tuple[int, int]] = []
    pos = max(start, SEG_HEADER.size)
    good_end = pos
    n = len(buf)
    budget = [RESYNC_BUDGET * n + (1 << 20)]
    while pos < n:
        rec = _record_at(buf, pos)
        if rec is not None:
            end, payload = rec
            records.append((pos, end, payload))
            pos = good_end = end
            continue
        nxt = pos + 1
        while True:
            nxt = buf.find(REC_MARK, nxt)
            if nxt < 0 or budget[0] < 0 or _record_at(buf, nxt, budget) is not None:
                break
            nxt += 1
        if nxt >= 0 and budget[0] < 0:
            skipped.append((pos, n))
            return ScanResult(records, good_end, skipped, unverified_from=pos)
        stop = n if nxt < 0 else nxt
        skipped.append((pos, stop))
        pos = stop
    return ScanResult(records, good_end, skipped)


def record_at(buf: bytes, pos: int) -> tuple[int, bytes] | None:
    """The record starting at `pos` as (its end, its payload), or None unless one with a valid
    check starts exactly there."""
    return _record_at(buf, pos)


def _record_at(buf: bytes, pos: int, budget: list[int] | None = None) -> tuple[int, bytes] | None:
    """The record at `pos` (its end and payload) when its check passes. `budget`, while
    resynchronising, is charged the bytes checked."""
    if pos + REC_HEAD.size > len(buf):
        return None
    mark, length, check = REC_HEAD.unpack_from(buf, pos)
    if mark != REC_MARK or length > MAX_RECORD:
        return None
    start = pos + REC_HEAD.size
    end = start + length
    if end > len(buf):
        return None
    if budget is not None:
        budget[0] -= length
        if budget[0] < 0:
            return None
    payload = bytes(buf[start:end])
    if _check(struct.pack("<I", length), payload) != check:
        return None
    return end, payload


@dataclasses.dataclass
class Recovery:
    next_seq: int
    gaps: list[dict[str, Any]]  # agent.gap data: dropped, reason, and from/to where known
    records: int
    segments: int
    reported_runs: list[list[int]] = dataclasses.field(default_factory=list)  # seqs `gaps` cover
    reported_records: list[str] = dataclasses.field(default_factory=list)  # records `gaps` cover


class Ticket:
    """Completes when its record is fsynced; `wait` gives the seq."""

    __slots__ = ("_done", "seq", "error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self.seq: int | None = None
        self.error: str | None = None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise TimeoutError("the journal did not make the event durable in time")
        if self.error:
            raise OSError(self.error)
        assert self.seq is not None
        return self.seq


class JournalFull(Exception):
    """The disk is full: the event was not journaled."""


class Journal:
    def __init__(self, directory: Path, *, fsync_ms: int = 200, reorder_ms: int = 250,
                 segment_bytes: int = 16 << 20, clock: Callable[[], int] = time.time_ns) -> None:
        self.dir = Path(directory)
        self.fsync_s = fsync_ms / 1000
        self.reorder_ns = reorder_ms * 1_000_000
        self.segment_bytes = segment_bytes
        self.clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, int, tuple, Ticket | None]] = []
        self._counter = itertools.count(1)
        self._io_lock = threading.Lock()  # held while the writer touches files; rewrite() takes it
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._force = False
        self._sync_now = False
        self._fd: int | None = None
        self._seg_base = 0
        self._seg_size = 0
        self._segments: list[int] = []  # base seqs, ascending
        self.next_seq = 1
        self.durable_seq = 0
        self._written_seq = 0
        self._pending_tickets: list[tuple[int, Ticket]] = []
        self._held: list[tuple] = []  # released, not yet written: (ts, payload, ticket, counter)
        self._rotate = False  # the next write starts a new segment
        self._writing = False  # a snapshot of _held is being written
        # Acknowledgement counters (see the module docstring): issued in append order; `_inflight`
        # holds those not yet fsynced, in order; `_landed` those fsynced (or withdrawn) whose
        # predecessors are not all; `_unsynced` those written but not yet fsynced.
        self._last_counter = 0
        self._inflight: collections.deque[int] = collections.deque()
        self._landed: set[int] = set()
        self._unsynced: list[int] = []
        self.durable_mark = 0
        self._listeners: list[Callable[[], None]] = []
        self.disk_full = False
        self.dropped_full = 0
        self._full_since = 0
        self._full_refused = 0
        self._full_periods: list[tuple[int, int, int]] = []  # (from ns, to ns, events refused)
        self.write_error: str | None = None
        self.recovery: Recovery | None = None
        self._meta: dict[str, Any] = {"floor": 1}  # journal.meta as last read or written

    # ---------------------------------------------------------------- open / recover
    def open(self, observe: Callable[[dict[str, Any]], None] | None = None) -> Recovery:
        """Scan every segment, truncate a torn tail, and find the next seq. `observe`, if given,
        is called with each decoded event dict in seq order (the daemon keeps recent shell event
        keys, so a source re-reading its input after a crash does not journal them twice)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._meta = self._read_meta()
        floor = self._meta["floor"]
        gaps: list[dict[str, Any]] = []
        bases = sorted(int(p.name[:-4]) for p in self.dir.glob("*.seg") if p.name[:-4].isdigit())
        max_seq = 0
        nrec = 0
        reserved = 0  # seqs that may have been used by records that cannot be read
        for i, base in enumerate(bases):
            path = self.dir / _seg_name(base)
            buf = path.read_bytes()
            if len(buf) < SEG_HEADER.size or SEG_HEADER.unpack_from(buf)[0] != SEG_MAGIC:
                # A segment whose header never reached the disk holds nothing acknowledged.
                gaps.append({"dropped": 0, "reason": f"unreadable journal segment {path.name} set aside"})
                path.rename(path.with_suffix(".corrupt"))
                continue
            res = scan_segment(buf)
            last = i == len(bases) - 1
            # A segment's base is the seq of its first record: what is missing at the start of
            # the first segment is found missing as well as what is missing later.
            prev = max_seq or base - 1
            undecodable = 0  # since the last record that decoded
            undecodable_keys: list[str] = []  # theirs: segment base and check, a stable identity
            for off, _, payload in res.records:
                try:
                    event = msgpack.unpackb(payload)
                    seq = event["seq"]
                    if not isinstance(seq, int) or isinstance(seq, bool):
                        raise TypeError("seq is not an integer")
                except Exception:  # a record with a valid check but an undecodable body
                    undecodable += 1
                    undecodable_keys.append(f"{base}:{buf[off + 6:off + REC_HEAD.size].hex()}")
                    continue
                if seq > prev + 1:
                    gaps.append({"dropped": seq - prev - 1, "from": prev + 1, "to": seq - 1,
                                 "reason": f"corrupt journal record in segment {path.name}"})
                elif undecodable:  # the undecodable ones cannot have held a seq: still a loss
                    gaps.append({"dropped": undecodable, "_records": undecodable_keys, "reason":
                                 f"undecodable journal record in segment {path.name}"})
                undecodable = 0
                undecodable_keys = []
                if observe is not None and seq > prev:
                    observe(event)
                prev = max(prev, seq)
                nrec += 1
            max_seq = max(max_seq, prev)
            unverified = len(buf) - res.unverified_from if res.unverified_from is not None else 0
            if last and (undecodable or unverified):
                # What ends the journal unread may have held the next seqs: never hand them out.
                reserved = undecodable + -(-unverified // MIN_RECORD)
                gaps.append({"dropped": reserved, "from": max_seq + 1, "to": max_seq + reserved,
                             "reason": f"unreadable journal records at the end of segment {path.name} "
                                       f"(at most {reserved})"})
            for start, end in res.skipped:
                torn = last and end == len(buf) and res.unverified_from is None
                if torn:
                    gaps.append({"dropped": 1, "reason":
                                 f"torn write at the end of journal segment {path.name} "
                                 f"({end - start} bytes, never acknowledged)"})
                elif not last and (not res.records or res.records[-1][0] < start or undecodable):
                    # corrupt bytes after the last record of a sealed segment: the next segment's
                    # base tells how many seqs they held.
                    nxt = bases[i + 1]
                    if nxt - max_seq - 1 > 0:
                        gaps.append({"dropped": nxt - max_seq - 1, "from": max_seq + 1, "to": nxt - 1,
                                     "reason": f"corrupt journal record in segment {path.name}"})
                    break
            if not last and not res.skipped and undecodable and bases[i + 1] - max_seq - 1 > 0:
                nxt = bases[i + 1]
                gaps.append({"dropped": nxt - max_seq - 1, "from": max_seq + 1, "to": nxt - 1,
                             "reason": f"undecodable journal record in segment {path.name}"})
            if last and res.unverified_from is not None:
                # Nothing unverified is cut away: the segment is sealed as it is and writing goes
                # on in a new one.
                self._rotate = True
            elif last and res.good_end < len(buf):
                with open(path, "r+b") as f:
                    f.truncate(res.good_end)
                    os.fsync(f.fileno())
            self._segments.append(base)
        self.next_seq = max(floor, max_seq + 1 + reserved, 1)
        if reserved:
            self._write_floor(self.next_seq)
        self.durable_seq = self._written_seq = self.next_seq - 1
        if self._segments:
            self._open_segment(self._segments[-1], create=False)
        explained = merge_ranges(self._meta["forgotten"] + self._meta["reported"])
        gaps, runs, keys = unexplained_gaps(gaps, explained, set(self._meta["reported_records"]))
        self.recovery = Recovery(self.next_seq, gaps, nrec, len(self._segments), runs, keys)
        return self.recovery

    def _read_meta(self) -> dict[str, Any]:
        """journal.meta; a missing or damaged one reads as floor 1 and nothing explained."""
        meta: dict[str, Any] = {"floor": 1, "forgotten": [], "reported": [], "reported_records": []}
        try:
            raw = json.loads((self.dir / META).read_text())
            meta["floor"] = int(raw["floor"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return meta
        try:
            for key in ("forgotten", "reported"):
                meta[key] = merge_ranges(raw.get(key) or [])
            meta["reported_records"] = [str(k) for k in raw.get("reported_records") or []]
        except (ValueError, TypeError):  # unreadable explanations: report again rather than hide
            meta.update(forgotten=[], reported=[], reported_records=[])
        return meta

    def _read_floor(self) -> int:
        return self._meta["floor"]

    def _write_floor(self, floor: int) -> None:
        self._meta["floor"] = floor
        self._write_meta()

    def _write_meta(self) -> None:
        """Prune what can no longer be found missing (seqs below the first segment, records of
        released segments), then replace journal.meta."""
        meta = self._meta
        if self._segments:
            first = self._segments[0]
            for key in ("forgotten", "reported"):
                meta[key] = [r for r in meta.get(key, []) if r[1] >= first]
            bases = {str(b) for b in self._segments}
            meta["reported_records"] = [k for k in meta.get("reported_records", [])
                                        if k.split(":", 1)[0] in bases]
        write_atomic(self.dir / META, json.dumps({"format": 1} | meta).encode())

    def record_reported(self, recovery: Recovery | None = None) -> None:
        """The gaps of `recovery` (the last open's by default) are journaled and durable: later
        opens leave them out."""
        recovery = recovery or self.recovery
        if recovery is None or not (recovery.reported_runs or recovery.reported_records):
            return
        with self._io_lock:
            self._meta["reported"] = merge_ranges(self._meta.get("reported", []) + recovery.reported_runs)
            self._meta["reported_records"] = list(dict.fromkeys(
                self._meta.get("reported_records", []) + recovery.reported_records))
            self._write_meta()

    def record_forgotten(self, seqs: Iterable[int]) -> None:
        """Seqs `rewrite` removed, whose `agent.forget` marker is durable: later opens do not
        report them as lost."""
        runs = seq_runs(seqs)
        if not runs:
            return
        with self._io_lock:
            self._meta["forgotten"] = merge_ranges(self._meta.get("forgotten", []) + runs)
            self._write_meta()

    def _open_segment(self, base: int, *, create: bool) -> None:
        path = self.dir / _seg_name(base)
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if create:
            os.write(fd, SEG_HEADER.pack(SEG_MAGIC, base))
            os.fsync(fd)
            fsync_dir(self.dir)
            self._segments.append(base)
        self._fd = fd
        self._seg_base = base
        self._seg_size = os.fstat(fd).st_size

    # ---------------------------------------------------------------- writing
    def start(self) -> None:
        if self.recovery is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    def append(self, kind: str, source: str, session: str | None, data: dict[str, Any],
               ts: int | None = None, *, durable: bool = False) -> Ticket | None:
        """Queue an already-redacted event. Thread-safe and cheap: encoding and I/O happen on the
        writer thread. Raises JournalFull while the disk is full."""
        now = self.clock()
        ticket = Ticket() if durable else None
        with self._cond:
            if self.disk_full:
                self.dropped_full += 1
                raise JournalFull("the disk holding the journal is full")
            if self._stopping:
                raise RuntimeError("the journal is stopped")
            was_empty = not self._heap
            counter = next(self._counter)
            self._last_counter = counter
            self._inflight.append(counter)
            heapq.heappush(self._heap, (ts or now, counter, time.monotonic_ns(),
                                        (kind, source, session, data), ticket))
            if was_empty or durable:
                self._cond.notify()
        return ticket

    def flush(self, timeout: float | None = 10.0) -> int:
        """Release the reorder buffer now and wait until everything appended so far is fsynced.
        Returns the durable seq."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._force = self._sync_now = True
            self._cond.notify_all()
            while self._heap or self._held or self.durable_seq < self._written_seq or self._sync_now:
                if self.write_error and not self.disk_full:
                    raise OSError(self.write_error)
                if self._thread is None:
                    raise RuntimeError("the journal writer is not running")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("the journal did not flush in time")
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
            return self.durable_seq

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        try:
            self.flush(timeout)
        except (TimeoutError, OSError) as exc:
            log.error("journal flush on stop failed: %s", exc)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        self._thread = None
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def _take_releasable(self) -> list[tuple]:
        now_ns = self.clock()
        mono = time.monotonic_ns()
        out = []
        heap = self._heap
        while heap:
            ts, counter, arrived, payload, ticket = heap[0]
            if self._force or self._stopping or ts <= now_ns - self.reorder_ns or arrived <= mono - self.reorder_ns:
                heapq.heappop(heap)
                out.append((ts, payload, ticket, counter))
            else:
                break
        if not heap:
            self._force = False
        return out

    def _next_wait(self, dirty_since: float | None) -> float | None:
        waits = []
        if self._heap:
            ts, _, arrived, _, _ = self._heap[0]
            by_ts = (ts + self.reorder_ns - self.clock()) / 1e9
            by_arrival = (arrived + self.reorder_ns - time.monotonic_ns()) / 1e9
            waits.append(max(0.0, min(by_ts, by_arrival)))
        if dirty_since is not None:
            waits.append(max(0.0, dirty_since + self.fsync_s - time.monotonic()))
        if self.disk_full:
            waits.append(2.0)
        return min(waits) if waits else None

    def _run(self) -> None:
        dirty_since: float | None = None
        while True:
            with self._cond:
                batch = self._take_releasable()
                if not batch and not self._held and not self._stopping:
                    if dirty_since is None and self._sync_now and not self._heap:
                        self._sync_now = False
                        self._cond.notify_all()
                    due = dirty_since is not None and (
                        self._sync_now or time.monotonic() - dirty_since >= self.fsync_s)
                    if not due:
                        self._cond.wait(self._next_wait(dirty_since))
                        batch = self._take_releasable()
                stopping, sync_now = self._stopping, self._sync_now
                drained = not self._heap
            try:
                with self._io_lock:
                    if batch or self._held:
                        self._write_batch(batch)
                        if dirty_since is None:
                            dirty_since = time.monotonic()
                    # A durable ticket (an acknowledgement someone waits on) is synced at once,
                    # and so is the end of a burst (nothing left waiting to be written: no later
                    # record would share the fsync); the rest waits out the batching interval.
                    if dirty_since is not None and (
                            stopping or sync_now or self._pending_tickets or (batch and drained)
                            or time.monotonic() - dirty_since >= self.fsync_s):
                        self._sync()
                        dirty_since = None
            except OSError as exc:
                self._on_write_error(exc)
                continue
            if self.disk_full and not batch and not self._held:
                self._probe_space()
            if stopping:
                with self._cond:
                    if not self._heap:
                        self._cond.notify_all()
                        return

    def _write_batch(self, batch: list[tuple]) -> None:
        """Write the batch behind any records held back by an earlier failed write. Seqs are given
        out only when the write succeeds; on failure everything stays held, in order, for the next
        attempt (or for `cancel`)."""
        with self._cond:
            self._held.extend(batch)
            held = list(self._held)
            self._writing = bool(held)
        if not held:
            return
        try:
            self._write_held(held)
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
        if self.disk_full:
            self._space_back()

    def _space_back(self) -> None:
        with self._cond:
            self.disk_full = False
            self.write_error = None
            self._full_periods.append((self._full_since, time.time_ns(),
                                       self.dropped_full - self._full_refused))
        log.warning("disk space is back; capture resumes")

    def _probe_space(self) -> None:
        """Full, with nothing held back to retry (what was held was withdrawn): whether space is
        back is told by the file system."""
        try:
            st = os.statvfs(self.dir)
        except OSError:
            return
        if st.f_bavail * st.f_frsize >= SPACE_BACK:
            self._space_back()

    def _write_held(self, held: list[tuple]) -> None:
        parts = []
        seq = self.next_seq
        for ts, (kind, source, session, data), _ticket, _counter in held:
            payload = msgpack.packb({"v": 1, "seq": seq, "ts": ts, "kind": kind, "source": source,
                                     "session": session, "data": data}, use_bin_type=True)
            parts.append(frame(payload))
            seq += 1
        self._write_bytes(b"".join(parts))
        with self._cond:
            seq = self.next_seq
            for _ts, _payload, ticket, counter in held:
                if ticket is not None:
                    ticket.seq = seq
                    self._pending_tickets.append((seq, ticket))
                self._unsynced.append(counter)
                seq += 1
            self.next_seq = seq
            self._written_seq = seq - 1
            del self._held[:len(held)]

    def _write_bytes(self, blob: bytes) -> None:
        if self._fd is None or self._seg_size >= self.segment_bytes or self._rotate:
            self._open_segment(self._next_base(), create=True)
            self._rotate = False
        start_size = self._seg_size
        view = memoryview(blob)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            # Roll back a partial write so the segment ends on a record boundary.
            try:
                os.ftruncate(self._fd, start_size)
            except OSError:
                pass
            raise
        self._seg_size = start_size + len(blob)

    def _next_base(self) -> int:
        return self._written_seq + 1  # the first seq the new segment will hold

    def _sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
        with self._cond:
            self.durable_seq = self._written_seq
            done = [t for s, t in self._pending_tickets if s <= self.durable_seq]
            self._pending_tickets = [(s, t) for s, t in self._pending_tickets if s > self.durable_seq]
            self._land(self._unsynced)
            self._unsynced = []
            if not self._heap:
                self._sync_now = False
            self._cond.notify_all()
            listeners = list(self._listeners)
        for t in done:
            t._done.set()
        for fn in listeners:
            try:
                fn()
            except Exception:  # a listener's failure is its own; the writer goes on
                log.exception("journal durability listener failed")

    def _land(self, counters: list[int]) -> None:
        """Counters whose events are fsynced or withdrawn; advances `durable_mark`. Under _cond."""
        self._landed.update(counters)
        inflight, landed = self._inflight, self._landed
        while inflight and inflight[0] in landed:
            landed.discard(inflight.popleft())
        self.durable_mark = inflight[0] - 1 if inflight else self._last_counter

    def take_full_periods(self) -> list[tuple[int, int, int]]:
        """Periods of full disk that are over, as (from ns, to ns, events refused meanwhile),
        each given once."""
        with self._cond:
            out, self._full_periods = self._full_periods, []
        return out

    # ---------------------------------------------------------------- acknowledgements
    def mark(self) -> int:
        """A counter covering every event appended so far: once `durable_mark` reaches it, all of
        them are fsynced (or were withdrawn)."""
        return self._last_counter

    def add_listener(self, fn: Callable[[], None]) -> None:
        """`fn()` is called on the writer thread after each fsync; it must be quick."""
        with self._cond:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        with self._cond:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def cancel(self, ticket: Ticket) -> bool:
        """Withdraw a durable event not yet written (the reorder buffer or a batch held back by a
        failed write). True when withdrawn: it will never be journaled; False when it was already
        written (it is then durable, or will be, with its seq)."""
        with self._cond:
            for i, entry in enumerate(self._heap):
                if entry[4] is ticket:
                    self._heap[i] = self._heap[-1]
                    self._heap.pop()
                    heapq.heapify(self._heap)
                    self._land([entry[1]])
                    return True
            while self._writing:  # the write in progress may hold it: its outcome decides
                self._cond.wait(1.0)
            for i, entry in enumerate(self._held):
                if entry[2] is ticket:
                    del self._held[i]
                    self._land([entry[3]])
                    return True
            return False

    def _on_write_error(self, exc: OSError) -> None:
        with self._cond:
            if exc.errno == errno.ENOSPC:
                if not self.disk_full:
                    log.error("the disk holding the journal is full; capture pauses until space returns")
                    self._full_since, self._full_refused = time.time_ns(), self.dropped_full
                self.disk_full = True
                self.write_error = "disk full"
                # Whoever waits for a durable event is told now, and the event is withdrawn:
                # what is reported as not recorded must never turn up later.
                kept = []
                for entry in self._held:
                    ticket = entry[2]
                    if ticket is None:
                        kept.append(entry)
                    else:
                        ticket.error = "the disk holding the journal is full"
                        ticket._done.set()
                        self._land([entry[3]])
                self._held = kept
            else:
                log.error("journal write failed: %s", exc)
                self.write_error = str(exc)
                # Hand the error to everyone waiting so nobody hangs; the records stay held.
                for _, t in self._pending_tickets:
                    t.error = f"journal write failed: {exc}"
                    t._done.set()
                self._pending_tickets = []
            self._cond.notify_all()
        # Wait a little before retrying so a full disk does not become a busy loop.
        with self._cond:
            self._cond.wait(2.0)

    # ---------------------------------------------------------------- reading
    def read(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Event]:
        """Durable events with from_seq <= seq <= to_seq, in seq order."""
        limit = self.durable_seq if to_seq is None else min(to_seq, self.durable_seq)
        yield from read_segments(self.dir, from_seq, limit)

    def stats(self) -> dict[str, Any]:
        size = 0
        for base in list(self._segments):
            try:
                size += (self.dir / _seg_name(base)).stat().st_size
            except FileNotFoundError:
                pass
        return {"segments": len(self._segments), "bytes": size, "next_seq": self.next_seq,
                "durable_seq": self.durable_seq, "first_seq": self._segments[0] if self._segments else None,
                "buffered": len(self._heap), "disk_full": self.disk_full,
                "dropped_full": self.dropped_full, "error": self.write_error,
                # records this start found lost (newly: damage reported before is not counted
                # again, and seqs removed by tracecap forget are not damage)
                "lost_at_start": sum(g["dropped"] for g in self.recovery.gaps) if self.recovery else 0}

    # ---------------------------------------------------------------- release / rewrite
    def release(self, upto_seq: int) -> int:
        """Delete sealed segments whose every record has seq <= upto_seq. Returns bytes freed."""
        freed = 0
        with self._io_lock:
            bases = list(self._segments)
            removable = [b for b, nxt in zip(bases, bases[1:]) if nxt - 1 <= upto_seq]
            if not removable:
                return 0
            # The floor (and the explanations pruned to what stays) reach the disk before any
            # segment goes.
            self._segments = [b for b in bases if b not in removable]
            try:
                self._write_floor(max(self._read_floor(), bases[bases.index(removable[-1]) + 1]))
            except OSError:
                self._segments = bases
                raise
            for base in removable:
                path = self.dir / _seg_name(base)
                try:
                    freed += path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    pass
            fsync_dir(self.dir)
        return freed

    def rewrite(self, drop: Callable[[Event], bool]) -> list[Event]:
        """Remove every durable record for which `drop(event)` is true (tracecap forget). Each
        affected segment is rewritten to a temporary file, fsynced and renamed over the original.
        Returns the removed events. Holds the writer off while it runs."""
        self.flush()
        removed: list[Event] = []
        with self._io_lock:
            for base in list(self._segments):
                path = self.dir / _seg_name(base)
                buf = path.read_bytes()
                res = scan_segment(buf)
                kept = [SEG_HEADER.pack(SEG_MAGIC, base)]
                hit = False
                for _, _, payload in res.records:
                    try:
                        ev = decode_event(payload)
                    except Exception:
                        kept.append(frame(payload))
                        continue
                    if drop(ev):
                        removed.append(ev)
                        hit = True
                    else:
                        kept.append(frame(payload))
                if not hit:
                    continue
                if self._read_floor() < self.next_seq:
                    # The removed records may be the newest: their seqs must stay unused even if
                    # nothing is written after them before a crash.
                    self._write_floor(self.next_seq)
                tmp = path.with_suffix(".tmp")
                with open(tmp, "wb") as f:
                    f.write(b"".join(kept))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                fsync_dir(self.dir)
                if base == self._seg_base and self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                    self._open_segment(base, create=False)
        return removed


def read_segments(directory: Path, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Event]:
    """Every valid record in a spool directory with from_seq <= seq <= to_seq, in seq order; corrupt
    records are skipped. Safe to call while a writer appends (a partly written tail fails its check)
    and while segments are released (a vanished segment is skipped)."""
    directory = Path(directory)
    bases = sorted(int(p.name[:-4]) for p in directory.glob("*.seg") if p.name[:-4].isdigit())
    for i, base in enumerate(bases):
        nxt = bases[i + 1] if i + 1 < len(bases) else None
        if nxt is not None and nxt <= from_seq:
            continue
        if to_seq is not None and base > to_seq:
            break
        try:
            buf = (directory / _seg_name(base)).read_bytes()
        except FileNotFoundError:
            continue
        for _, _, payload in scan_segment(buf).records:
            try:
                ev = decode_event(payload)
            except Exception:
                continue
            if ev.seq < from_seq:
                continue
            if to_seq is not None and ev.seq > to_seq:
                return
            yield ev
