"""Chain and coverage analysis of a device's stored bundles, and `collector verify` over a store.

Takes the index rows of one device's bundles (`collector.storage.BundleRow`); gives a
`DeviceReport`: the last contiguous `seq`, the gaps between bundles, the hash-chain breaks, and the
events each bundle says were forgotten on the device. Pure: no I/O in `analyse_device`.
`verify_store` runs the check over a whole store: the index answers in one SQL query which devices
are contiguous and unbroken from seq 1 (nearly all), and only the others are analysed row by row;
optionally every indexed object is re-read to check it exists and still hashes to its digest.

The rules, from the bundle header alone (no org key):
- Each device seals bundles in `seq` order, and each bundle's `prev_digest` is the sha256 of the
  device's previous bundle file ("" for its first). The *predecessors* of a bundle are the stored
  bundles with the highest `last_seq` below its `first_seq` (several only when the device sealed
  the same range twice, e.g. after a crash; any of them may be the one it chained to).
- A *chain break* is a bundle whose `prev_digest` is not the digest of one of its predecessors
  (or, for the lowest bundle, is not "": an earlier bundle is not stored).
- A *gap* is a `seq` range covered by no stored bundle, from 1 to the highest stored `seq`. It is
  `missing` when the bundle right after it has a chain break (bundles the device sent are not
  here), and `skipped` when the chain is intact across it (the device sealed nothing for those
  seqs: forgotten or dropped before sealing, which its `agent.gap`/`agent.forget` events record).
- *Forgotten*: a bundle whose header `count` is less than its range (`tracecap forget` removed
  events before sealing). Not a gap: the chain covers it.
- `last_contiguous_seq`: the highest `seq` reached from 1 without a missing gap or a chain break;
  None when the lowest stored bundle already breaks the chain.
- A device is `ok` when it has no missing gap, no chain break and no damaged object.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import unicodedata
from typing import Any, Sequence

from collector.storage import BundleRow, BundleStore, DeviceSummary


@dataclasses.dataclass(frozen=True)
class Gap:
    first: int
    last: int
    kind: str  # "missing" | "skipped"

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclasses.dataclass(frozen=True)
class ChainBreak:
    bundle_id: str
    first_seq: int
    prev_digest: str
    expected: tuple[str, ...]  # digests of its predecessors; () when no stored bundle precedes it


@dataclasses.dataclass(frozen=True)
class Forgotten:
    bundle_id: str
    first_seq: int
    last_seq: int
    count: int  # events missing from inside the bundle's range


@dataclasses.dataclass(frozen=True)
class DeviceReport:
    device_id: str
    bundles: int
    events: int
    first_seq: int | None
    last_seq: int | None
    last_contiguous_seq: int | None
    gaps: tuple[Gap, ...]
    breaks: tuple[ChainBreak, ...]
    forgotten: tuple[Forgotten, ...]
    damaged: tuple[str, ...] = ()  # bundle ids whose object is missing or no longer matches

    @property
    def missing(self) -> tuple[Gap, ...]:
        return tuple(g for g in self.gaps if g.kind == "missing")

    @property
    def ok(self) -> bool:
        return not self.missing and not self.breaks and not self.damaged

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "ok": self.ok,
            "bundles": self.bundles,
            "events": self.events,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_contiguous_seq": self.last_contiguous_seq,
            "gaps": [{"first": g.first, "last": g.last, "size": g.size, "kind": g.kind} for g in self.gaps],
            "chain_breaks": [{"bundle_id": b.bundle_id, "first_seq": b.first_seq, "prev_digest": b.prev_digest,
                              "expected": list(b.expected)} for b in self.breaks],
            "forgotten": [{"bundle_id": f.bundle_id, "first_seq": f.first_seq, "last_seq": f.last_seq,
                           "count": f.count} for f in self.forgotten],
            "damaged": list(self.damaged),
        }


def analyse_device(device_id: str, rows: Sequence[BundleRow]) -> DeviceReport:
    """The report for one device's bundles (any order)."""
    rows = sorted(rows, key=lambda r: (r.first_seq, r.last_seq, r.bundle_id))
    if not rows:
        return DeviceReport(device_id, 0, 0, None, None, None, (), (), ())
    by_last = sorted((r.last_seq, r.digest) for r in rows)
    lasts = [last for last, _ in by_last]
    breaks: list[ChainBreak] = []
    broken_ids: set[str] = set()
    for row in rows:
        i = bisect.bisect_left(lasts, row.first_seq)  # rows before i end below this one's start
        expected: tuple[str, ...] = ()
        if i:
            top = lasts[i - 1]
            expected = tuple(sorted({d for last, d in by_last[bisect.bisect_left(lasts, top):i]}))
        if (row.prev_digest not in expected) if expected else (row.prev_digest != ""):
            breaks.append(ChainBreak(row.bundle_id, row.first_seq, row.prev_digest, expected))
            broken_ids.add(row.bundle_id)

    gaps: list[Gap] = []
    covered = 0  # highest seq covered by the bundles so far
    reached = 0  # highest seq reached from 1 before the first break
    stopped = False
    for row in rows:
        broken = row.bundle_id in broken_ids
        if row.first_seq > covered + 1:
            gaps.append(Gap(covered + 1, row.first_seq - 1, "missing" if broken else "skipped"))
        if broken:
            stopped = True
        elif not stopped:
            reached = max(reached, row.last_seq)
        covered = max(covered, row.last_seq)
    forgotten = tuple(Forgotten(r.bundle_id, r.first_seq, r.last_seq, r.last_seq - r.first_seq + 1 - r.count)
                      for r in rows if r.count < r.last_seq - r.first_seq + 1)
    return DeviceReport(
        device_id=device_id,
        bundles=len(rows),
        events=sum(r.count for r in rows),
        first_seq=rows[0].first_seq,
        last_seq=max(r.last_seq for r in rows),
        last_contiguous_seq=None if stopped and reached == 0 else reached,
        gaps=tuple(gaps),
        breaks=tuple(breaks),
        forgotten=forgotten,
    )


def object_damage(store: BundleStore, rows: Sequence[BundleRow]) -> tuple[str, ...]:
    """Bundle ids whose stored object is missing or no longer hashes to its indexed digest."""
    damaged = []
    for row in rows:
        h = hashlib.sha256()
        try:
            with store.open_object(row.digest) as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except OSError:
            damaged.append(row.bundle_id)
            continue
        if h.hexdigest() != row.digest:
            damaged.append(row.bundle_id)
    return tuple(damaged)


def contiguous_report(summary: DeviceSummary) -> DeviceReport:
    """The report of a device whose index summary has no irregular bundle: seq 1..last, chained."""
    s = summary
    return DeviceReport(s.device_id, s.bundles, s.events, s.first_seq, s.last_seq, s.last_seq, (), (), ())


def verify_store(store: BundleStore, check_objects: bool = True) -> list[DeviceReport]:
    """One report per device in the store, by device id. The chain check is the index's SQL
    summary; only devices it flags have their rows read and analysed. `check_objects` re-reads
    and re-hashes every object (every device's rows are read then)."""
    reports = []
    for summary in store.summaries():
        if summary.irregular == 0 and not check_objects:
            reports.append(contiguous_report(summary))
            continue
        rows = store.bundles(summary.device_id)
        report = analyse_device(summary.device_id, rows) if summary.irregular else contiguous_report(summary)
        if check_objects:
            report = dataclasses.replace(report, damaged=object_damage(store, rows))
        reports.append(report)
    return reports


def _ranges(gaps: Sequence[Gap]) -> str:
    return ", ".join(f"{g.first}" if g.first == g.last else f"{g.first}-{g.last}" for g in gaps)


def printable(text: str) -> str:
    """`text` safe for a terminal: control and format characters (escape sequences, bidi
    overrides) and backslashes are shown escaped, so a device id cannot forge what is printed."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
        else:
            out.append(c)
    return "".join(out)


def format_report(report: DeviceReport) -> str:
    """A few human lines for one device (its id escaped with `printable`)."""
    r = report
    head = (f"{printable(r.device_id)}: {'ok' if r.ok else 'NOT OK'} - {r.bundles} bundles, {r.events} events, "
            f"seq {r.first_seq}..{r.last_seq}, last contiguous seq {r.last_contiguous_seq}")
    lines = [head]
    if r.missing:
        lines.append(f"  missing seq (gaps): {_ranges(r.missing)}")
    skipped = [g for g in r.gaps if g.kind == "skipped"]
    if skipped:
        lines.append(f"  skipped by the device with an intact chain: {_ranges(skipped)}")
    for b in r.breaks:
        want = ", ".join(d[:12] for d in b.expected) or "none stored"
        lines.append(f"  chain break at bundle {b.bundle_id} (seq {b.first_seq}): prev_digest "
                     f"{b.prev_digest[:12] or '(empty)'} but the previous bundle is {want}")
    if r.forgotten:
        lines.append(f"  forgotten on the device: {sum(f.count for f in r.forgotten)} events "
                     f"in {len(r.forgotten)} bundles")
    if r.damaged:
        lines.append(f"  damaged or missing objects: {', '.join(r.damaged)}")
    return "\n".join(lines)
