"""The review page's Tasks tab: the coding tasks `tracecap episodes mine` would make from the events
this daemon holds, so the engineer sees what training data their work would become.

Takes the daemon's journal index (`agent/review/index.py`), the durable seq and a day (or every day
held); gives a `Mined` (the instances, the spans skipped and why, what was read and whether it was
cut), and `task_view` makes one instance readable for the template. Mining is the episodes
package's pure `mine_device`, on the held events as `tracecap log --json` prints them (the device
is `local`, as for `tracecap episodes mine --events -`, so the ids are the same).

Promises:
- Runs only when the Tasks tab is asked for, never at start or on the capture path.
- Bounded: at most MAX_EVENTS events and MAX_BYTES of records, the newest of the kinds mining
  reads; `Mined.cut` says how many older ones were left out (a task that began before them is then
  not found).
- Cached: the result is kept until the journal changes (the index's generation or the durable seq
  moves) or another day is asked for; one mining at a time.
- The events are the journal's, already redacted; the template escapes every text it shows.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime as dt
import json
import threading
import time
from typing import Any

from agent.review import view
from agent.review.index import JournalIndex, SegmentReader, day_bounds

MAX_EVENTS = 20_000
MAX_BYTES = 32 << 20
DEVICE = "local"

SKIP_REASONS = {  # a skip reason of episodes.mine -> what it means, in words
    "gap": "events were lost inside it (the daemon noted a gap)",
    "forget": "you forgot events inside it",
    "paused": "capture was paused inside it",
    "daemon_stopped": "capture was off inside it (the daemon stopped or started)",
    "no_repo_state": "the repository's state when it began was not captured",
    "head_moved": "HEAD moved other than by a commit (a checkout or a rebase) inside it",
    "chain_restarted": "the repository's tree was announced again, differently, inside it",
    "content_unknown": "a change would need file lines that no event showed",
    "no_change_outside_tests": "only test files changed",
}


@dataclasses.dataclass
class Mined:
    instances: list[dict[str, Any]]
    skipped: list[Any]  # episodes.mine.Skipped
    unfinished: int
    read: int  # events mined
    cut: int  # older events of the scope left out by the bounds
    seconds: float

    def skip_summary(self) -> list[dict[str, Any]]:
        """The skip reasons, most frequent first: reason, what it means, how many, which repos."""
        by: dict[str, list[Any]] = collections.defaultdict(list)
        for s in self.skipped:
            by[s.reason].append(s)
        out = []
        for reason, spans in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            out.append({"reason": reason, "text": skip_text(reason), "count": len(spans),
                        "repos": sorted({s.repo for s in spans})})
        return out


def skip_text(reason: str) -> str:
    if reason.startswith("chain_break:"):
        return f"a file the task needs could not be rebuilt ({reason.split(':', 1)[1].replace('_', ' ')})"
    return SKIP_REASONS.get(reason, reason.replace("_", " "))


class TaskMiner:
    """Mines on request and keeps the result until the journal changes. Thread-safe."""

    def __init__(self, index: JournalIndex, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES) -> None:
        self.index = index
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._result: Mined | None = None
        self.runs = 0  # minings done (the cache's misses)

    def mined(self, durable_seq: int, day: dt.date | None) -> Mined:
        with self._lock:
            self.index.refresh()
            key = (self.index.generation, durable_seq, day)
            if key != self._key or self._result is None:
                self._result = mine_held(self.index, durable_seq, day, self.max_events, self.max_bytes)
                self._key = key
                self.runs += 1
            return self._result


def mine_held(index: JournalIndex, durable_seq: int, day: dt.date | None,
              max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES) -> Mined:
    """Mine the newest held events of `day` (None: every day held) within the bounds."""
    from episodes.mine import MINED_KINDS, mine_device

    t0 = time.monotonic()
    snap = index.refresh()
    lo, hi = day_bounds(day) if day is not None else (None, None)
    wanted = {i for i, k in enumerate(snap.kinds) if k in MINED_KINDS}
    picked: list[Any] = []
    size = 0
    cut = 0
    for seg, n in reversed(snap.parts):
        seqs, tss, kinds = seg.seq, seg.ts, seg.kind
        for i in range(bisect.bisect_right(seqs, durable_seq, 0, n) - 1, -1, -1):
            if kinds[i] not in wanted or (lo is not None and not lo <= tss[i] < hi):
                continue
            if cut or len(picked) >= max_events or size + seg.size[i] > max_bytes:
                cut += 1
                continue
            picked.append(snap.entry(seg, i))
            size += seg.size[i]
    # Decoded newest first, as picked: the reader keeps the 1 MiB of the segment that ends at the
    # record asked for, so the records before it come from memory.
    reader = SegmentReader(index.spool)
    events = []
    for e in picked:
        ev = reader.decode(e)
        if ev is not None:
            events.append(ev.to_dict())
    events.reverse()  # seq order, as mining wants
    res = mine_device(DEVICE, events)
    return Mined(res.instances, res.skipped, res.unfinished, len(events), cut, time.monotonic() - t0)


def task_view(inst: dict[str, Any]) -> dict[str, Any]:
    """What the tab shows of one instance: the fields, the patches as coloured diff lines, the
    tests as lists, the trajectory's steps counted."""
    def tests(field: str) -> list[str]:
        try:
            got = json.loads(inst.get(field) or "[]")
        except ValueError:
            return []
        return [str(t) for t in got] if isinstance(got, list) else []

    meta = inst.get("meta") or {}
    messages = (inst.get("trajectory") or {}).get("messages") or []
    calls = [c for m in messages if m.get("role") == "assistant" for c in (m.get("tool_calls") or [])]
    return {
        "id": inst.get("instance_id", ""),
        "repo": inst.get("repo", ""),
        "base_commit": inst.get("base_commit", ""),
        "base_short": view.short_sha(inst.get("base_commit")),
        "problem": inst.get("problem_statement", ""),
        "hints": inst.get("hints_text", ""),
        "created": inst.get("created_at", ""),
        "difficulty": inst.get("difficulty", ""),
        "test_cmd": inst.get("test_cmd", ""),
        "fail_to_pass": tests("FAIL_TO_PASS"),
        "pass_to_pass": tests("PASS_TO_PASS"),
        "patch": view.diff_lines(inst.get("patch") or ""),
        "test_patch": view.diff_lines(inst.get("test_patch") or ""),
        "base_patch": view.diff_lines(inst.get("base_patch") or ""),
        "steps": sum(m.get("role") == "assistant" for m in messages),
        "commands": sum(c.get("function", {}).get("name") == "shell" for c in calls),
        "edits": sum(c.get("function", {}).get("name") == "edit" for c in calls),
        "actor": meta.get("actor", "human"),
        "test_runs": meta.get("test_runs", 0),
        "active": view.period(meta.get("active_seconds", 0)) if meta.get("active_seconds") else "0 s",
        "branch": meta.get("branch"),
        "closing_commit": view.short_sha(meta.get("closing_commit")),
        "added": meta.get("patch_added", 0),
        "removed": meta.get("patch_removed", 0),
    }
