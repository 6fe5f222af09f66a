"""Segmentation: where in one device's events a coding task starts and ends.

Takes one device's events in `seq` order; gives `Timeline` (each event assigned to the repository
it happened in) and `find_spans(timeline)`: per repository, the spans in which tests that failed
later pass. Pure: no I/O, no clock.

The rule, per repository, in `seq` order:
- A span opens at the first `test.run` with a failed test after the previous span's end, and
  closes at the first later run that fails no test and passes one that failed since it opened
  (per-test outcomes decide; runs without them: exit status and failure names). A note for the
  repository before that run starts the task over from the note (the first attempt counts as
  unfinished). A failing run never followed by such a run makes no span (counted as `unfinished`).
- Its start is the task's beginning: the last `user.note` before the failing run (a note belongs
  to the repository of the next command or save after it); else whichever came last of the last
  commit, checkout, ref move or `repo.state` of that repository and the first event after its
  last idle gap (IDLE_GAP_S without an event of that repository); never before the previous span.
- Its end is the passing run, moved to the `git.commit` of that repository that follows within
  COMMIT_WINDOW_S, before any other test run, when there is one (the closing commit).
- A span with an `agent.gap`, `agent.forget`, a pause or a daemon stop or start inside it is
  returned with that reason in `excluded` (the caller skips it).

A `test.run` belongs to the repository holding the cwd of its command (the `shell.start` of the
same session and command before it); a shell command to the one holding its cwd; saves, git events
and `repo.state` name theirs.
"""
from __future__ import annotations

import dataclasses
from typing import Any

IDLE_GAP_S = 30 * 60
COMMIT_WINDOW_S = 5 * 60
FAILED = ("failed", "error")
BARRIERS = {"agent.gap": "gap", "agent.forget": "forget"}


@dataclasses.dataclass
class Timeline:
    device: str
    events: list[dict]
    repo_of: dict[int, str]  # seq -> repository root, for events that happened in one
    start_of: dict[int, dict]  # test.run or shell.end seq -> its shell.start event
    end_of: dict[int, dict]  # shell.start seq -> its shell.end event
    by_repo: dict[str, list[dict]]
    seqs: dict[str, list[int]]  # by_repo's seqs, for bisection
    notes: list[dict]
    note_repo: dict[int, str | None]  # a note belongs to the repository the next command or save is in
    barriers: list[tuple[int, int, str]]  # (first seq, last seq, reason) of spans without capture
    activity_ts: list[int]  # input windows with some input, sorted


@dataclasses.dataclass
class Span:
    repo: str
    start: dict  # the event the task starts at
    start_kind: str  # note | commit | checkout | ref | repo_state | idle | first_event
    first_fail: dict
    runs: list[dict]  # every test.run of the repo from first_fail to the passing one
    passing: dict
    end_seq: int
    closing_commit: dict | None
    failing: set[str]
    excluded: str | None = None


def _repo_for(path: str, roots: list[str], cache: dict[str, str | None]) -> str | None:
    if path in cache:
        return cache[path]
    found = None
    for root in roots:  # longest first: a nested repository wins
        if path == root or path.startswith(root.rstrip("/") + "/"):
            found = root
            break
    cache[path] = found
    return found


def build_timeline(device: str, events: list[dict]) -> Timeline:
    roots = set()
    for ev in events:
        kind = ev["kind"]
        if kind == "input.activity":  # most events: checked first
            continue
        if kind in ("file.save", "repo.state") or kind.startswith("git."):
            repo = ev["data"].get("repo")
            if isinstance(repo, str):
                roots.add(repo)
    ordered_roots = sorted(roots, key=lambda r: (-len(r), r))
    cache: dict[str, str | None] = {}
    repo_of: dict[int, str] = {}
    start_of: dict[int, dict] = {}
    end_of: dict[int, dict] = {}
    by_repo: dict[str, list[dict]] = {r: [] for r in sorted(roots)}
    starts_by_id: dict[str, dict] = {}
    last_start: dict[tuple[Any, str], dict] = {}
    notes: list[dict] = []
    activity: list[int] = []
    barriers: list[tuple[int, int, str]] = []
    paused_at: int | None = None
    stopped_at: int | None = None
    for ev in events:
        kind, data = ev["kind"], ev["data"]
        if kind == "input.activity":  # most events: checked first
            if data.get("keys") or data.get("clicks") or data.get("scrolls"):
                activity.append(ev["ts"])
            continue
        seq = ev["seq"]
        repo: str | None = None
        if kind in ("file.save", "repo.state") or kind.startswith("git."):
            repo = data.get("repo") if isinstance(data.get("repo"), str) else None
        elif kind == "shell.start":
            if isinstance(data.get("id"), str):
                starts_by_id[data["id"]] = ev
            if isinstance(data.get("cmd"), str):
                last_start[(ev.get("session"), data["cmd"])] = ev
            if isinstance(data.get("cwd"), str):
                repo = _repo_for(data["cwd"], ordered_roots, cache)
        elif kind == "shell.end":
            start = starts_by_id.get(data.get("id"))
            if start is not None:
                start_of[seq] = start
                end_of[start["seq"]] = ev
                repo = repo_of.get(start["seq"])
        elif kind == "test.run":
            start = last_start.get((ev.get("session"), data.get("cmd")))
            if start is not None:
                start_of[seq] = start
                repo = repo_of.get(start["seq"])
        elif kind == "user.note":
            notes.append(ev)
        elif kind in BARRIERS:
            barriers.append((seq, seq, BARRIERS[kind]))
        elif kind == "agent.pause":
            paused_at = seq if paused_at is None else paused_at
        elif kind == "agent.resume" and paused_at is not None:
            barriers.append((paused_at, seq, "paused"))
            paused_at = None
        elif kind == "agent.stop":
            stopped_at = seq
        elif kind == "agent.start":  # after a stop, or after a crash that wrote none
            barriers.append((seq if stopped_at is None else stopped_at, seq, "daemon_stopped"))
            stopped_at = None
        if repo is not None:
            repo_of[seq] = repo
            by_repo.setdefault(repo, []).append(ev)
    last = events[-1]["seq"] if events else 0
    if paused_at is not None:
        barriers.append((paused_at, last, "paused"))
    if stopped_at is not None:
        barriers.append((stopped_at, last, "daemon_stopped"))
    note_repo: dict[int, str | None] = {}
    following: str | None = None
    for ev in reversed(events):
        kind = ev["kind"]
        if kind == "user.note":
            note_repo[ev["seq"]] = following
        elif kind in ("shell.start", "file.save", "test.run") and ev["seq"] in repo_of:
            following = repo_of[ev["seq"]]
    seqs = {r: [e["seq"] for e in evs] for r, evs in by_repo.items()}
    return Timeline(device, events, repo_of, start_of, end_of, by_repo, seqs, notes, note_repo, barriers,
                    sorted(activity))


def test_ids(run: dict, outcomes: tuple[str, ...]) -> set[str]:
    data = run["data"]
    tests = data.get("tests")
    if isinstance(tests, list):
        return {t["name"] for t in tests if isinstance(t, dict) and t.get("outcome") in outcomes
                and isinstance(t.get("name"), str)}
    if outcomes == FAILED and isinstance(data.get("failures"), list):
        return {f["name"] for f in data["failures"] if isinstance(f, dict) and isinstance(f.get("name"), str)}
    return set()


def _failing(run: dict) -> bool:
    """Some test failed. Per-test outcomes decide, not the exit status: a line such as
    `cd tests && pytest; cd ..` exits 0 whatever pytest said."""
    if isinstance(run["data"].get("tests"), list):
        return bool(test_ids(run, FAILED))
    return run["data"].get("exit") not in (0, None) and bool(test_ids(run, FAILED))


def _passes(run: dict, failing: set[str], first: dict) -> set[str]:
    """The tests of `failing` this run passes, when it fails none (else the empty set)."""
    data = run["data"]
    if isinstance(data.get("tests"), list):
        if test_ids(run, FAILED):
            return set()
        if data.get("tests_truncated"):
            # Over the listing's bound: a clean run (no failure counted, exit 0) passed the ones it
            # lists, or, when none of them is listed, is taken to have passed them all.
            if data.get("failed", 1) or data.get("exit") != 0:
                return set()
            return (failing & test_ids(run, ("passed",))) or set(failing)
        return failing & test_ids(run, ("passed",))
    if data.get("exit") != 0:
        return set()
    # No per-test outcomes (an older agent): a clean rerun of the same command passed them.
    if data.get("failed", 0) == 0 and data.get("cmd") == first["data"].get("cmd"):
        return set(failing)
    return set()


def find_spans(tl: Timeline) -> tuple[list[Span], int]:
    """(spans in seq order of their end, per repository; failing runs never made to pass)."""
    spans: list[Span] = []
    unfinished = 0
    for repo in sorted(tl.by_repo):
        evs = tl.by_repo[repo]
        runs = [e for e in evs if e["kind"] == "test.run"]
        notes = [n["seq"] for n in tl.notes if tl.note_repo.get(n["seq"]) == repo]
        floor = 0
        i = 0
        while i < len(runs):
            if runs[i]["seq"] <= floor or not _failing(runs[i]):
                i += 1
                continue
            first = runs[i]
            failing = test_ids(first, FAILED)
            passing = None
            restart = None
            j = i + 1
            while j < len(runs):
                r = runs[j]
                # A new note for this repository before this run: the task starts over there.
                note = next((n for n in notes if runs[j - 1]["seq"] < n < r["seq"]), None)
                if note is not None:
                    restart = note
                    break
                if _passes(r, failing, first):
                    passing = r
                    break
                if _failing(r):
                    failing |= test_ids(r, FAILED)
                j += 1
            if passing is None:
                unfinished += 1
                if restart is None:
                    break
                floor, i = restart - 1, j
                continue
            start, start_kind = _task_start(tl, evs, first, floor)
            commit = _closing_commit(evs, passing, runs[j + 1]["seq"] if j + 1 < len(runs) else None)
            end_seq = commit["seq"] if commit else passing["seq"]
            span = Span(repo, start, start_kind, first, runs[i:j + 1], passing, end_seq, commit, failing)
            for lo, hi, reason in tl.barriers:
                if lo <= end_seq and hi > start["seq"]:
                    span.excluded = reason
                    break
            spans.append(span)
            floor = end_seq
            i = j + 1
    return spans, unfinished


def _task_start(tl: Timeline, evs: list[dict], first: dict, floor: int) -> tuple[dict, str]:
    note = None
    first_repo = tl.repo_of.get(first["seq"])
    for n in tl.notes:
        if n["seq"] >= first["seq"]:
            break
        if n["seq"] > floor and tl.note_repo.get(n["seq"]) == first_repo:
            note = n
    if note is not None:
        return note, "note"
    before = [e for e in evs if floor < e["seq"] < first["seq"]] + [first]
    found: tuple[dict, str] | None = None
    for e in reversed(before[:-1]):
        kind = e["kind"]
        if kind == "repo.state":
            found = e, "repo_state"
            break
        if kind in ("git.commit", "git.checkout", "git.ref"):
            found = e, kind.split(".")[1]
            break
    # Whichever came last: that HEAD event, or the first event after the last idle gap.
    for a, b in zip(reversed(before[:-1]), reversed(before)):
        if b["ts"] - a["ts"] > IDLE_GAP_S * 10**9:
            if found is None or b["seq"] > found[0]["seq"]:
                found = b, "idle"
            break
    return found or (before[0], "first_event")


def _closing_commit(evs: list[dict], passing: dict, next_run_seq: int | None) -> dict | None:
    limit = passing["ts"] + COMMIT_WINDOW_S * 10**9
    for e in evs:
        if e["seq"] <= passing["seq"]:
            continue
        if (next_run_seq is not None and e["seq"] >= next_run_seq) or e["ts"] > limit:
            return None
        if e["kind"] == "git.commit":
            return e
    return None
