"""What the review page reads: a small index over the journal's segments, kept while the page is used.

Takes the spool directory (the journal's segments, see `agent/journal.py`) and the durable seq;
gives, fast enough for a page with 100,000 events held, the newest events matching a filter, the
activity per hour of a day by source, the kinds, repos and days present, and the events themselves
decoded only for the page shown.

Promises:
- Only what `tracecap log` would show: records with `seq <= durable_seq` whose check is valid.
  Indexing reads each record's frame and the event's seq, ts, kind and source without decoding its
  data or computing its check (that is what makes 100,000 events cheap); an event is shown only
  after its record's check has been verified. A frame that does not parse sends the rest of that
  segment to the checked scan every journal reader uses, which skips corrupt records. So a record
  whose bytes rotted on disk after a clean frame may be counted in the chart and totals, but is
  never shown.
- Never stale: a segment is re-read when its inode, size or mtime changes (the writer appends,
  `forget` rewrites and renames, delivery releases). The active segment, when it only grew, is read
  from where the previous read stopped. A vanished segment drops out.
- Small: one tuple per event (seq, ts, kind, source, and where its record is), not the event's data;
  the data of a page's events is decoded when the page is drawn. Filters on repo and text decode
  the data of the candidates (after a cheap look at the record's bytes). The index is dropped when
  the review server stops.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime as dt
import itertools
import os
import threading
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import msgpack

from agent.journal import MAX_RECORD, REC_HEAD, REC_MARK, SEG_HEADER, record_at, scan_segment
from schemas.events import Event

SOURCES = ("shell", "files", "tests", "git", "tools", "input")
# Kinds whose data names a repository, decoded while indexing for the repo list (they are few).
REPO_KINDS = ("repo.state", "git.commit", "git.checkout", "git.ref")


# The chart and the day list count events in quarter-hour buckets: every time zone's offset is a
# whole number of quarter hours, so each bucket falls in one local hour and one local day.
BUCKET_NS = 15 * 60 * 10**9


class Entry(NamedTuple):
    seq: int
    ts: int
    kind: str
    source: str
    base: int  # the segment it is in
    pos: int  # where its record starts in that segment
    end: int  # where it ends


@dataclasses.dataclass(frozen=True)
class Summary:
    hours: dict[str, list[int]]  # source -> events per local hour of the day
    kinds: list[str]
    days: list[dt.date]  # newest first
    forgettable: dict[str, int]  # span name -> events forget would remove


def _seq_key(e: Entry) -> int:
    return e.seq


def _bucket_of(e: Entry) -> tuple[str, int]:
    return e.kind, e.ts // BUCKET_NS


@dataclasses.dataclass
class _Segment:
    key: tuple[int, int, int]  # (inode, size, mtime_ns)
    good_end: int
    entries: list[Entry]


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
    """See the module docstring. Thread-safe: one refresh at a time; readers get a snapshot."""

    def __init__(self, spool: Path) -> None:
        self.spool = Path(spool)
        self._segments: dict[int, _Segment] = {}
        self._lock = threading.Lock()
        self._entries: list[Entry] = []  # every indexed entry, in seq order
        self._repos: dict[int, set[str]] = {}  # segment -> repos its events name
        self.generation = 0  # bumped whenever the entries change
        self._summary_key: tuple | None = None
        self._summary: tuple | None = None

    # ------------------------------------------------------------------ refreshing
    def refresh(self) -> list[Entry]:
        """Bring the index up to date with the segments on disk; return every entry, seq order."""
        with self._lock:
            bases = sorted(int(p.name[:-4]) for p in self.spool.glob("*.seg") if p.name[:-4].isdigit())
            changed = False
            for base in bases:
                changed |= self._refresh_segment(base)
            for gone in set(self._segments) - set(bases):
                del self._segments[gone]
                self._repos.pop(gone, None)
                changed = True
            if changed:
                self._entries = [e for b in sorted(self._segments) for e in self._segments[b].entries]
                self.generation += 1
            return self._entries

    def _refresh_segment(self, base: int) -> bool:
        path = self.spool / f"{base:020d}.seg"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        seg = self._segments.get(base)
        if seg is not None and seg.key == key:
            return False
        # Appended to (same file, grown): read on from the last good record. Anything else
        # (rewritten by forget, a new file) is read from the start.
        grown = seg is not None and seg.key[0] == key[0] and key[1] > seg.key[1]
        start = seg.good_end if grown else SEG_HEADER.size
        try:
            with open(path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return False
        entries = list(seg.entries) if grown else []
        repos = self._repos.setdefault(base, set()) if grown else set()
        good_end = _index_records(buf, start, base, entries, repos)
        self._segments[base] = _Segment(key, good_end, entries)
        self._repos[base] = repos
        return True

    # ------------------------------------------------------------------ queries
    def select(self, q: Query, durable_seq: int) -> Iterator[Entry]:
        """Entries matching `q`'s day and kinds, newest first (repo and text: see `page`)."""
        entries = self.refresh()
        lo, hi = day_bounds(q.day) if q.day is not None else (None, None)
        for e in reversed(entries):
            if e.seq > durable_seq:
                continue
            if lo is not None and not lo <= e.ts < hi:
                continue
            if not q.matches_kind(e.kind):
                continue
            yield e

    def page(self, q: Query, durable_seq: int, offset: int, limit: int) -> tuple[list[Event], int]:
        """The events of one page, newest first, and how many match in all."""
        needle = q.text.casefold() if q.text else None
        raw_needle = needle.encode() if needle is not None and needle.isascii() else None
        raw_repo = q.repo.encode() if q.repo else None
        picked: list[Entry] = []
        total = 0
        reader = SegmentReader(self.spool)
        known = self._count(q, durable_seq) if needle is None and raw_repo is None else None
        if known is not None:  # day and kind only: the summary's counts give the total
            for e in itertools.islice(self.select(q, durable_seq), offset, offset + limit):
                picked.append(e)
            return [ev for ev in map(reader.decode, picked) if ev is not None], known
        for e in self.select(q, durable_seq):
            if needle is not None or raw_repo is not None:
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
        entries = self.refresh()
        reader = SegmentReader(self.spool)
        found: dict[str, dict] = {}
        lo = min(want.values())
        i = bisect.bisect_right(entries, lo, key=lambda e: e.seq)
        hi = max(want.values()) + lookahead
        for e in entries[i:]:
            if e.seq > hi or e.seq > durable_seq or len(found) == len(want):
                break
            if e.kind != "shell.end":
                continue
            data = reader.data(e)
            if isinstance(data, dict):
                sid = str(data.get("id"))
                if sid in want and sid not in found:
                    found[sid] = data
        return found

    def summary(self, day: dt.date, durable_seq: int, delivered_upto: int, since: dict[str, int]) -> Summary:
        """The chart for `day`, the kinds and days held, and how many events `forget` would take
        for each span start in `since` (not yet delivered, not a gap or forget marker: see
        agent/forget.py), from one pass over the index, reused while nothing changed."""
        from agent.forget import KEEP_KINDS

        entries = self.refresh()
        key = (self.generation, durable_seq, delivered_upto)
        if self._summary_key != key:
            seq_of = _seq_key
            hi = bisect.bisect_right(entries, durable_seq, key=seq_of)
            lo = min(hi, bisect.bisect_right(entries, delivered_upto, key=seq_of))
            counter = collections.Counter(map(_bucket_of, entries[:hi]))
            forgettable = sorted(e.ts for e in entries[lo:hi] if e.kind not in KEEP_KINDS)
            self._summary_key, self._summary = key, (counter, forgettable)
        counter, forgettable = self._summary  # type: ignore[misc]
        counts = {s: [0] * 24 for s in SOURCES}
        kinds: set[str] = set()
        days: set[dt.date] = set()
        local: dict[int, dt.datetime] = {}
        for (kind, bucket), n in counter.items():
            kinds.add(kind)
            when = local.get(bucket)
            if when is None:
                when = local[bucket] = dt.datetime.fromtimestamp(bucket * BUCKET_NS / 1e9)
            days.add(when.date())
            if when.date() == day:
                row = chart_source(kind, "")
                if row is not None:
                    counts[row][when.hour] += n
        n_forget = {name: len(forgettable) - bisect.bisect_left(forgettable, t) for name, t in since.items()}
        return Summary(counts, sorted(kinds), sorted(days, reverse=True), n_forget)

    def _count(self, q: Query, durable_seq: int) -> int | None:
        """How many events match a day-and-kind query, from the last summary's quarter-hour
        counts when it is still current (None otherwise)."""
        if self._summary is None or self._summary_key is None or \
                self._summary_key[:2] != (self.generation, durable_seq):
            return None
        counter = self._summary[0]
        if q.day is None:
            return sum(n for (kind, _), n in counter.items() if q.matches_kind(kind))
        lo, hi = day_bounds(q.day)
        lo_b, hi_b = lo // BUCKET_NS, hi // BUCKET_NS  # day edges fall on bucket edges
        return sum(n for (kind, b), n in counter.items() if lo_b <= b < hi_b and q.matches_kind(kind))

    def repos(self) -> list[str]:
        """The repos named by the repo and git events held."""
        self.refresh()
        return sorted(set().union(*self._repos.values())) if self._repos else []

    def count_seqs(self, after: int, upto: int) -> int:
        """How many events are held with after < seq <= upto."""
        entries = self.refresh()
        return max(0, bisect.bisect_right(entries, upto, key=_seq_key)
                   - bisect.bisect_right(entries, after, key=_seq_key))


def _index_records(buf: bytes, start: int, base: int, entries: list[Entry], repos: set[str]) -> int:
    """Append an Entry for each record from `start`; return the offset after the last good one.
    The fast path reads frames and the event's head fields in the order `Event.to_dict` writes
    them; anything else (another layout, a frame that does not parse) falls back to the checked
    scan for the rest of the segment."""
    mv = memoryview(buf)
    n = len(buf)
    pos = start
    head_size = REC_HEAD.size
    unpack_head = REC_HEAD.unpack_from
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
    feed, key, value, skip = unpacker.feed, unpacker.unpack, unpacker.unpack, unpacker.skip
    new = tuple.__new__  # a C call: Entry(...) would run NamedTuple's Python-level __new__
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
            if key() != "source":
                raise ValueError("not the event layout this reader knows")
            source = value()
            skip(), skip(), skip()  # session, and the key of data
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
            entries.append(new(Entry, (seq, ts, kind, source, base, pos, end)))
            pos = end
        return pos
    except Exception:
        del mv
        unpacker = None  # releases the buffer view
        res = scan_segment(buf, pos)
        for rpos, rend, payload in res.records:
            try:
                d = msgpack.unpackb(payload, raw=False, strict_map_key=True)
                entries.append(Entry(d["seq"], d["ts"], d["kind"], d["source"], base, rpos, rend))
                repo = (d.get("data") or {}).get("repo")
                if d["kind"] in REPO_KINDS and isinstance(repo, str):
                    repos.add(repo)
            except Exception:
                continue
        return res.good_end


class SegmentReader:
    """Reads each segment at most once per page and decodes single records from it, each only
    after its check is verified."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self._bufs: dict[int, bytes | None] = {}

    def _payload(self, e: Entry) -> bytes | None:
        if e.base not in self._bufs:
            try:
                self._bufs[e.base] = (self.spool / f"{e.base:020d}.seg").read_bytes()
            except FileNotFoundError:
                self._bufs[e.base] = None
        buf = self._bufs[e.base]
        if buf is None:
            return None
        rec = record_at(buf, e.pos)
        if rec is None or rec[0] != e.end:
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
