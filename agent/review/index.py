"""What the review page reads: a compact index over the journal's segments, owned by the daemon.

Takes the spool directory (the journal's segments, see `agent/journal.py`) and the durable seq;
gives, fast enough for a page with 100,000 events held, the newest events matching a filter, the
activity per hour of a day by source, the kinds, repos and days present, how many events each
Forget span would take, and the events themselves decoded only for the page shown.

Promises:
- Only what `tracecap log` would show: records with `seq <= durable_seq` whose check is valid.
  Indexing reads each record's frame and the event's seq, ts and kind without decoding its data or
  computing its check (that is what makes 100,000 events cheap); an event is shown only after its
  record's check has been verified. A frame that does not parse sends the rest of that segment to
  the checked scan every journal reader uses, which skips corrupt records. So a record whose bytes
  rotted on disk after a clean frame may be counted in the chart and totals, but is never shown.
- Never stale: every query first compares each segment's inode, size and mtime with what was
  indexed. The active segment, when it only grew, is read from where the previous read stopped
  (only the new bytes); a segment rewritten by `forget` (a new inode) is indexed again; a segment
  released after delivery drops out.
- Small: per event its seq, ts, record offset and length and a kind number, in flat arrays
  (32 bytes an event: about 3 MB for 100,000), never the event's data; per segment, the events
  per kind and quarter hour (the chart, the days and the totals come from these counts) and the
  repos named. The daemon builds it once in the background when it starts (a thread at low
  priority) and extends it when the page asks, so the page never reads the whole journal again.
  Filters on repo and text decode the data of the candidates (after a cheap look at the record's
  bytes).
"""
from __future__ import annotations

import array
import bisect
import collections
import dataclasses
import datetime as dt
import itertools
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import msgpack

from agent.forget import KEEP_KINDS  # markers that explain seq gaps: forget keeps them
from agent.journal import MAX_RECORD, REC_HEAD, REC_MARK, SEG_HEADER, record_at, scan_segment
from schemas.events import Event

log = logging.getLogger("tracecap.review")

SOURCES = ("shell", "files", "tests", "git", "tools", "input")
# Kinds whose data names a repository, decoded while indexing for the repo list (they are few).
REPO_KINDS = ("repo.state", "git.commit", "git.checkout", "git.ref")


# The chart and the day list count events in quarter-hour buckets: every time zone's offset is a
# whole number of quarter hours, so each bucket falls in one local hour and one local day.
BUCKET_NS = 15 * 60 * 10**9
# The journal is read this much at a time, for indexing and for a page's records.
READ_CHUNK = 1 << 20


class Entry(NamedTuple):
    seq: int
    ts: int
    kind: str
    base: int  # the segment it is in
    pos: int  # where its record starts in that segment
    end: int  # where it ends


@dataclasses.dataclass(frozen=True)
class Summary:
    hours: dict[str, list[int]]  # source -> events per local hour of the day
    kinds: list[str]
    days: list[dt.date]  # newest first
    forgettable: dict[str, int]  # span name -> events forget would remove


class _Segment:
    """One segment's records as parallel arrays, in seq order, and the counts kept beside them."""

    __slots__ = ("base", "key", "good_end", "seq", "ts", "pos", "size", "kind", "buckets", "repos",
                 "markers", "min_ts", "max_ts")

    def __init__(self, base: int, key: tuple[int, int, int]) -> None:
        self.base = base
        self.key = key  # (inode, size, mtime_ns) of what was indexed
        self.good_end = SEG_HEADER.size  # where the next read starts
        self.seq = array.array("q")
        self.ts = array.array("q")
        self.pos = array.array("Q")
        self.size = array.array("I")  # the whole record: frame and payload
        self.kind = array.array("I")  # a number in JournalIndex._kinds
        self.buckets: collections.Counter[tuple[int, int]] = collections.Counter()  # (kind, quarter hour)
        self.repos: set[str] = set()
        self.markers: list[int] = []  # where the KEEP_KINDS records are (forget keeps them)
        self.min_ts = self.max_ts = 0


class Snapshot:
    """The index at one refresh: each segment with how many of its entries it then held."""

    def __init__(self, parts: list[tuple[_Segment, int]], kinds: list[str]) -> None:
        self.parts = parts
        self.kinds = kinds

    def __len__(self) -> int:
        return sum(n for _, n in self.parts)

    def __iter__(self) -> Iterator[Entry]:
        kinds = self.kinds
        for seg, n in self.parts:
            for i in range(n):
                pos = seg.pos[i]
                yield Entry(seg.seq[i], seg.ts[i], kinds[seg.kind[i]], seg.base, pos, pos + seg.size[i])

    def newest_first(self) -> Iterator[tuple[_Segment, int]]:
        for seg, n in reversed(self.parts):
            for i in range(n - 1, -1, -1):
                yield seg, i

    def entry(self, seg: _Segment, i: int) -> Entry:
        pos = seg.pos[i]
        return Entry(seg.seq[i], seg.ts[i], self.kinds[seg.kind[i]], seg.base, pos, pos + seg.size[i])


def chart_source(kind: str, source: str) -> str | None:
    """The chart's row for an event: the six sources; lifecycle events (agent.*) are not activity."""
    if kind == "test.run":
        return "tests"
    if kind.startswith("file."):
        return "files"
    if kind.startswith("git.") or kind == "repo.state":
        return "git"
    if kind.startswith("shell."):
        return "shell"
    if kind.startswith("tool."):
        return "tools"
    if kind.startswith("input.") or kind == "app.focus":
        return "input"
    return source if source in SOURCES else None


@dataclasses.dataclass(frozen=True)
class Query:
    day: dt.date | None = None  # local calendar day; None: every day held
    kinds: tuple[str, ...] = ()  # exact kinds, or prefixes ending in "."
    repo: str | None = None
    text: str | None = None  # case-insensitive, in the event's data

    def matches_kind(self, kind: str) -> bool:
        if not self.kinds:
            return True
        return any(kind.startswith(k) if k.endswith(".") else kind == k for k in self.kinds)


def day_bounds(day: dt.date) -> tuple[int, int]:
    """[start, end) of a local calendar day in ns (DST days are 23 or 25 hours long)."""
    start = dt.datetime.combine(day, dt.time()).astimezone()
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time()).astimezone()
    return int(start.timestamp() * 1e9), int(end.timestamp() * 1e9)


def in_repo(data: dict[str, Any], repo: str) -> bool:
    """An event belongs to a repo when it names it, or ran in it (cwd at or under it)."""
    if data.get("repo") == repo:
        return True
    cwd = data.get("cwd")
    return isinstance(cwd, str) and (cwd == repo or cwd.startswith(repo.rstrip("/") + "/"))


class JournalIndex:
    """See the module docstring. Thread-safe: one refresh at a time; a query works on the
    snapshot its refresh returned."""

    def __init__(self, spool: Path) -> None:
        self.spool = Path(spool)
        self._segments: dict[int, _Segment] = {}
        self._lock = threading.Lock()
        self._kinds: list[str] = []
        self._kind_ids: dict[str, int] = {}
        self._snapshot = Snapshot([], self._kinds)
        self.generation = 0  # bumped whenever the entries change
        self._counts_key: tuple[int, int] | None = None
        self._counts: collections.Counter[tuple[int, int]] = collections.Counter()

    def build_in_background(self) -> threading.Thread:
        """Index the journal now, in a thread at low priority (the daemon calls this at start)."""
        def run() -> None:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # this thread only
            except (AttributeError, OSError):
                pass
            try:
                self.refresh()
            except Exception:  # the page's first request will try again, and report
                log.exception("indexing the journal for the review page failed")

        t = threading.Thread(target=run, name="review-index", daemon=True)
        t.start()
        return t

    # ------------------------------------------------------------------ refreshing
    def refresh(self) -> Snapshot:
        """Bring the index up to date with the segments on disk; return a snapshot of it."""
        with self._lock:
            bases = sorted(int(p.name[:-4]) for p in self.spool.glob("*.seg") if p.name[:-4].isdigit())
            changed = False
            for base in bases:
                changed |= self._refresh_segment(base)
            for gone in set(self._segments) - set(bases):
                del self._segments[gone]
                changed = True
            if changed:
                self.generation += 1
                self._snapshot = Snapshot([(s, len(s.seq)) for _, s in sorted(self._segments.items())],
                                          self._kinds)
            return self._snapshot

    def _refresh_segment(self, base: int) -> bool:
        path = self.spool / f"{base:020d}.seg"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            seg = self._segments.get(base)
            if seg is not None and seg.key == key:
                return False
            # Appended to (same file, grown): read on from the last good record, only the new
            # bytes. Anything else (rewritten by forget, a new file) is read from the start.
            if not (seg is not None and seg.key[0] == key[0] and key[1] > seg.key[1]):
                seg = _Segment(base, key)
            first = len(seg.seq)
            seg.good_end = self._index_from(fd, seg, st.st_size)
            if len(seg.seq) > first:
                tail = seg.ts[first:]
                lo, hi = min(tail), max(tail)
                seg.min_ts, seg.max_ts = (lo, hi) if first == 0 else (min(lo, seg.min_ts), max(hi, seg.max_ts))
            seg.key = key
            self._segments[base] = seg
            return True
        finally:
            os.close(fd)

    def _index_from(self, fd: int, seg: _Segment, size: int) -> int:
        """Index the segment's records from `seg.good_end` up to `size` (what fstat just said: a
        writer appending meanwhile is seen next time), reading a chunk at a time so that memory
        stays flat however large the segment; return where the next read starts."""
        pos = seg.good_end
        while pos < size:
            buf = os.pread(fd, min(READ_CHUNK, size - pos), pos)
            try:
                end = self._index_fast(buf, pos, seg)
                if end == pos and len(buf) >= REC_HEAD.size:  # one record larger than a chunk
                    length = REC_HEAD.unpack_from(buf)[1]
                    if pos + REC_HEAD.size + length <= size:
                        end = self._index_fast(os.pread(fd, REC_HEAD.size + length, pos), pos, seg)
                if end == pos:
                    # A record running past the end: one being written (the checked scan finds
                    # nothing after it and the next read starts here again) or a corrupt length.
                    raise _NotFast(pos)
            except _NotFast as slow:
                # A frame that does not parse: the checked scan resynchronises, over the whole segment.
                return self._index_checked(os.pread(fd, size, 0), slow.pos, seg)
            pos = end
        return pos

    def _kind_id(self, kind: str) -> int:
        kid = self._kind_ids.get(kind)
        if kid is None:
            kid = self._kind_ids[kind] = len(self._kinds)
            self._kinds.append(kind)
        return kid

    def _index_fast(self, buf: bytes, offset: int, seg: _Segment) -> int:
        """Index the records in `buf` (the segment's bytes from `offset`); return the offset after
        the last whole record. Reads frames and the event's head fields in the order
        `Event.to_dict` writes them; anything else (another layout, a frame that does not parse)
        raises _NotFast with the offset of that record, for the checked scan."""
        mv = memoryview(buf)
        n = len(buf)
        pos = 0
        head_size = REC_HEAD.size
        unpack_head = REC_HEAD.unpack_from
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
        feed, key, value, skip = unpacker.feed, unpacker.unpack, unpacker.unpack, unpacker.skip
        kind_ids, kind_id = self._kind_ids, self._kind_id
        a_seq, a_ts, a_pos, a_size, a_kind = (seg.seq.append, seg.ts.append, seg.pos.append,
                                              seg.size.append, seg.kind.append)
        buckets, repos, markers = seg.buckets, seg.repos, seg.markers
        try:
            while pos + head_size <= n:
                mark, length, _check = unpack_head(buf, pos)
                end = pos + head_size + length
                if mark != REC_MARK or length > MAX_RECORD:
                    raise ValueError("not a record boundary")
                if end > n:
                    break  # a torn tail: not durable, so never shown
                feed(mv[pos + head_size:end])
                if unpacker.read_map_header() != 7 or key() != "v":
                    raise ValueError("not the event layout this reader knows")
                skip()
                if key() != "seq":
                    raise ValueError("not the event layout this reader knows")
                seq = value()
                if key() != "ts":
                    raise ValueError("not the event layout this reader knows")
                ts = value()
                if key() != "kind":
                    raise ValueError("not the event layout this reader knows")
                kind = value()
                if type(seq) is not int or type(ts) is not int or type(kind) is not str \
                        or not 0 < seq < 1 << 63 or not -(1 << 63) <= ts < 1 << 63:
                    raise ValueError("not the event layout this reader knows")
                if key() != "source":
                    raise ValueError("not the event layout this reader knows")
                skip(), skip(), skip(), skip()  # source, session's key and value, data's key
                if kind in REPO_KINDS:  # only its repo is read
                    for _ in range(unpacker.read_map_header()):
                        if key() == "repo":
                            repo = value()
                            if isinstance(repo, str):
                                repos.add(repo)
                        else:
                            skip()
                else:
                    skip()  # data: not decoded
                kid = kind_ids.get(kind)
                if kid is None:
                    kid = kind_id(kind)
                if kind in KEEP_KINDS:
                    markers.append(len(seg.seq))
                a_seq(seq), a_ts(ts), a_pos(offset + pos), a_size(end - pos), a_kind(kid)
                buckets[kid, ts // BUCKET_NS] += 1
                pos = end
            return offset + pos
        except Exception:
            raise _NotFast(offset + pos) from None

    def _index_checked(self, buf: bytes, start: int, seg: _Segment) -> int:
        """The checked scan from `start` (a record boundary) of the whole segment in `buf`."""
        res = scan_segment(buf, start)
        for rpos, rend, payload in res.records:
            try:
                d = msgpack.unpackb(payload, raw=False, strict_map_key=True)
                seq, ts, kind = d["seq"], d["ts"], d["kind"]
                if type(seq) is not int or type(ts) is not int or type(kind) is not str \
                        or not 0 < seq < 1 << 63 or not -(1 << 63) <= ts < 1 << 63:
                    continue
                repo = (d.get("data") or {}).get("repo") if kind in REPO_KINDS else None
            except Exception:
                continue
            if isinstance(repo, str):
                seg.repos.add(repo)
            kid = self._kind_id(kind)
            if kind in KEEP_KINDS:
                seg.markers.append(len(seg.seq))
            seg.seq.append(seq), seg.ts.append(ts), seg.pos.append(rpos), seg.size.append(rend - rpos)
            seg.kind.append(kid)
            seg.buckets[kid, ts // BUCKET_NS] += 1
        return res.good_end

    # ------------------------------------------------------------------ queries
    def select(self, q: Query, durable_seq: int) -> Iterator[Entry]:
        """Entries matching `q`'s day and kinds, newest first (repo and text: see `page`)."""
        snap = self.refresh()
        lo, hi = day_bounds(q.day) if q.day is not None else (None, None)
        wanted = None if not q.kinds else {i for i, k in enumerate(snap.kinds) if q.matches_kind(k)}
        for seg, n in reversed(snap.parts):
            seqs, tss, kinds = seg.seq, seg.ts, seg.kind
            for i in range(bisect.bisect_right(seqs, durable_seq, 0, n) - 1, -1, -1):
                if lo is not None and not lo <= tss[i] < hi:
                    continue
                if wanted is not None and kinds[i] not in wanted:
                    continue
                yield snap.entry(seg, i)

    def page(self, q: Query, durable_seq: int, offset: int, limit: int) -> tuple[list[Event], int]:
        """The events of one page, newest first, and how many match in all."""
        needle = q.text.casefold() if q.text else None
        raw_needle = needle.encode() if needle is not None and needle.isascii() else None
        raw_repo = q.repo.encode() if q.repo else None
        picked: list[Entry] = []
        total = 0
        reader = SegmentReader(self.spool)
        if needle is None and raw_repo is None:  # day and kind only: the counts give the total
            picked = list(itertools.islice(self.select(q, durable_seq), offset, offset + limit))
            return [ev for ev in map(reader.decode, picked) if ev is not None], self._count(q, durable_seq)
        for e in self.select(q, durable_seq):
            raw = reader.raw(e)
            # Cheap first: what is absent from the record's bytes cannot be in its data.
            if raw_repo is not None and raw_repo not in raw:
                continue
            if raw_needle is not None and raw_needle not in raw.lower():
                continue
            data = reader.data(e)
            if not isinstance(data, dict):
                continue
            if q.repo and not in_repo(data, q.repo):
                continue
            if needle is not None and not _has_text(data, needle):
                continue
            if offset <= total < offset + limit:
                picked.append(e)
            total += 1
        events = [ev for ev in map(reader.decode, picked) if ev is not None]
        return events, total

    def shell_ends(self, starts: list[Event], durable_seq: int, lookahead: int = 2000) -> dict[str, dict]:
        """For each shell.start, its shell.end's data (exit, duration_ms) where it is held."""
        want = {str(e.data.get("id")): e.seq for e in starts if e.kind == "shell.start"}
        if not want:
            return {}
        snap = self.refresh()
        end_kind = self._kind_ids.get("shell.end")
        if end_kind is None:
            return {}
        reader = SegmentReader(self.spool)
        found: dict[str, dict] = {}
        lo = min(want.values())
        hi = min(max(want.values()) + lookahead, durable_seq)
        for seg, n in snap.parts:
            if n == 0 or seg.seq[n - 1] <= lo:
                continue
            for i in range(bisect.bisect_right(seg.seq, lo, 0, n), n):
                if seg.seq[i] > hi or len(found) == len(want):
                    return found
                if seg.kind[i] != end_kind:
                    continue
                data = reader.data(snap.entry(seg, i))
                if isinstance(data, dict):
                    sid = str(data.get("id"))
                    if sid in want and sid not in found:
                        found[sid] = data
        return found

    def _durable_counts(self, snap: Snapshot, durable_seq: int) -> collections.Counter[tuple[int, int]]:
        """Events per (kind, quarter hour) with seq <= durable_seq, from the segments' counts less
        the records written but not yet fsynced (the active segment's last few)."""
        key = (self.generation, durable_seq)
        if self._counts_key != key:
            counts: collections.Counter[tuple[int, int]] = collections.Counter()
            for seg, _ in snap.parts:
                counts.update(seg.buckets)
            for seg, n in reversed(snap.parts):
                i = n - 1
                while i >= 0 and seg.seq[i] > durable_seq:
                    counts[seg.kind[i], seg.ts[i] // BUCKET_NS] -= 1
                    i -= 1
                if i >= 0:
                    break
            for k in [k for k, v in counts.items() if v <= 0]:
                del counts[k]
            self._counts_key, self._counts = key, counts
        return self._counts

    def summary(self, day: dt.date, durable_seq: int, delivered_upto: int, since: dict[str, int]) -> Summary:
        """The chart for `day`, the kinds and days held, and how many events `forget` would take
        for each span start in `since` (not yet delivered, not a gap or forget marker: see
        agent/forget.py), from the counts kept beside the index."""
        snap = self.refresh()
        counter = self._durable_counts(snap, durable_seq)
        counts = {s: [0] * 24 for s in SOURCES}
        kinds: set[str] = set()
        days: set[dt.date] = set()
        local: dict[int, dt.datetime] = {}
        rows: dict[int, str | None] = {}
        for (kid, bucket), n in counter.items():
            if kid not in rows:
                kinds.add(snap.kinds[kid])
                rows[kid] = chart_source(snap.kinds[kid], "")
            when = local.get(bucket)
            if when is None:
                when = local[bucket] = dt.datetime.fromtimestamp(bucket * BUCKET_NS / 1e9)
                days.add(when.date())
            row = rows[kid]
            if row is not None and when.date() == day:
                counts[row][when.hour] += n
        n_forget = {name: self._forgettable(snap, delivered_upto, durable_seq, t) for name, t in since.items()}
        return Summary(counts, sorted(kinds), sorted(days, reverse=True), n_forget)

    @staticmethod
    def _forgettable(snap: Snapshot, after: int, upto: int, since_ns: int) -> int:
        """Events with after < seq <= upto and ts >= since_ns, markers aside (what forget takes)."""
        total = 0
        for seg, n in snap.parts:
            if n == 0 or seg.max_ts < since_ns:
                continue
            i = bisect.bisect_right(seg.seq, after, 0, n)
            j = bisect.bisect_right(seg.seq, upto, 0, n)
            if i >= j:
                continue
            if seg.min_ts >= since_ns:
                total += j - i
            else:
                total += sum(map(since_ns.__le__, seg.ts[i:j]))
            total -= sum(1 for m in seg.markers if i <= m < j and seg.ts[m] >= since_ns)
        return total

    def _count(self, q: Query, durable_seq: int) -> int:
        """How many events match a day-and-kind query, from the quarter-hour counts."""
        snap = self.refresh()
        counter = self._durable_counts(snap, durable_seq)
        wanted = {i for i, k in enumerate(snap.kinds) if q.matches_kind(k)}
        if q.day is None:
            return sum(n for (kid, _), n in counter.items() if kid in wanted)
        lo, hi = day_bounds(q.day)
        lo_b, hi_b = lo // BUCKET_NS, hi // BUCKET_NS  # day edges fall on bucket edges
        return sum(n for (kid, b), n in counter.items() if lo_b <= b < hi_b and kid in wanted)

    def repos(self) -> list[str]:
        """The repos named by the repo and git events held."""
        snap = self.refresh()
        return sorted(set().union(*(seg.repos for seg, _ in snap.parts)))

    def count_seqs(self, after: int, upto: int) -> int:
        """How many events are held with after < seq <= upto."""
        snap = self.refresh()
        return sum(max(0, bisect.bisect_right(seg.seq, upto, 0, n) - bisect.bisect_right(seg.seq, after, 0, n))
                   for seg, n in snap.parts)

    def memory_bytes(self) -> int:
        """What the arrays hold (the counts and repo sets aside)."""
        snap = self.refresh()
        return sum(a.itemsize * len(a) for seg, _ in snap.parts
                   for a in (seg.seq, seg.ts, seg.pos, seg.size, seg.kind))


class _NotFast(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


class SegmentReader:
    """Decodes single records, each only after its check is verified. It reads a window of the
    segment (READ_CHUNK bytes ending at the record asked for) and keeps it: a page's records and
    a filter's candidates come newest first, so most are in the window already."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self._window: tuple[int, int, bytes] | None = None  # (base, where it starts, bytes)

    def _payload(self, e: Entry) -> bytes | None:
        w = self._window
        if w is None or w[0] != e.base or not (w[1] <= e.pos and e.end <= w[1] + len(w[2])):
            start = max(0, min(e.pos, e.end - READ_CHUNK))
            try:
                with open(self.spool / f"{e.base:020d}.seg", "rb") as f:
                    f.seek(start)
                    w = self._window = (e.base, start, f.read(e.end - start))
            except FileNotFoundError:
                return None
        rec = record_at(w[2], e.pos - w[1])
        if rec is None or rec[0] + w[1] != e.end:
            return None  # rewritten since it was indexed, or corrupt
        return rec[1]

    def raw(self, e: Entry) -> bytes:
        return self._payload(e) or b""

    def data(self, e: Entry) -> Any:
        payload = self._payload(e)
        if payload is None:
            return None
        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=True).get("data")
        except Exception:
            return None

    def decode(self, e: Entry) -> Event | None:
        payload = self._payload(e)
        if payload is None:
            return None
        try:
            ev = Event.from_dict(msgpack.unpackb(payload, raw=False, strict_map_key=True))
        except Exception:
            return None
        return ev if ev.seq == e.seq else None


def _has_text(data: Any, needle: str) -> bool:
    if isinstance(data, str):
        return needle in data.casefold()
    if isinstance(data, dict):  # values only: every command has a "cmd" key
        return any(_has_text(v, needle) for v in data.values())
    if isinstance(data, (list, tuple)):
        return any(_has_text(v, needle) for v in data)
    if data is None or isinstance(data, bool):
        return False
    return needle in str(data)
