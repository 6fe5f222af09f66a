"""Mining: task instances (SWE-bench fields, meta, trajectory) from one device's events.

Takes a device id and its events in `seq` order; gives `MineResult`: the instances, in order of
repository and `seq`, and the spans skipped with their reason. Pure and deterministic: the same
events give the same instances, byte for byte once `instance_line` serialises them.

For each span `segment.find_spans` returns:
- the repository state comes from the last `repo.state` of that repository at or before the task
  start (or, when HEAD moved between the start and the first failing run, that move's
  `repo.state`): `base_commit` is its `head`, `base_patch` its diff plus the saves up to the start;
- `patch` and `test_patch` are the changes from the start to the end (the passing run or the
  closing commit), split by `is_test_path`; a commit in between does not change the working tree
  and is followed through (a file first seen after it breaks the chain: what the commit did to it
  is unknown), any other HEAD move skips the span (`head_moved`), and so does a `repo.state` of
  the same HEAD describing another tree (`chain_restarted`);
- the problem statement is the note the task started with; else the closing commit's message;
  else one written from the failing tests and their messages;
- `FAIL_TO_PASS`: tests that failed in the span and pass in the passing run; `PASS_TO_PASS`: tests
  that passed in the first failing run and in the passing run (JSON-encoded lists, sorted);
- `difficulty` from active seconds: the time between consecutive events of the span (and input
  activity), each gap counted up to ACTIVE_GAP_S.

Skip reasons: gap, forget, paused, daemon_stopped (capture was off inside the span),
no_repo_state, head_moved, chain_restarted, chain_break:<reason> (a file the task needs could not
be rebuilt: the capture side's reason, or no_diff, diff_mismatch, unknown_base, unreadable_diff),
content_unknown (a diff would need lines no event showed), no_change_outside_tests.
"""
from __future__ import annotations

import bisect
import dataclasses
import datetime
import fnmatch
import hashlib
import json
import re
from typing import Any

from episodes import patches, segment, trajectory

ACTIVE_GAP_S = 5 * 60
DIFFICULTY = ((15 * 60, "<15 min fix"), (60 * 60, "15 min - 1 hour"), (4 * 3600, "1-4 hours"))
LONGEST = ">4 hours"
INSTANCE_KEYS = ("instance_id", "repo", "base_commit", "base_patch", "patch", "test_patch",
                 "problem_statement", "hints_text", "created_at", "FAIL_TO_PASS", "PASS_TO_PASS",
                 "test_cmd", "difficulty", "meta", "trajectory")
TEST_DIRS = {"test", "tests", "testing", "spec", "specs", "__tests__", "__test__", "t"}
TEST_GLOBS = ("test_*.py", "*_test.py", "conftest.py", "*_test.go", "*.test.[jt]s", "*.test.[jt]sx",
              "*.spec.[jt]s", "*.spec.[jt]sx", "*Test.java", "*Tests.java", "*_spec.rb", "*_test.rb",
              "test_*.rb", "*Test.php", "*Tests.cs", "*_test.exs", "*Test.kt", "*Tests.kt",
              # Node's own runner's defaults, ES and CommonJS modules among them
              "*.test.[cm][jt]s", "*.spec.[cm][jt]s", "*-test.[jt]s", "*-test.[cm][jt]s", "*_test.[jt]s",
              "*_test.[cm][jt]s", "test-*.[jt]s", "test-*.[cm][jt]s", "test.[jt]s", "test.[cm][jt]s")


# The kinds mining reads; the rest of an export (tool invocations, window focus, ...) is skipped.
MINED_KINDS = frozenset({
    "file.save", "repo.state", "shell.start", "shell.end", "test.run", "git.commit", "git.checkout",
    "git.ref", "user.note", "input.activity", "agent.gap", "agent.forget", "agent.pause", "agent.resume",
    "agent.stop", "agent.start"})


@dataclasses.dataclass(frozen=True)
class Skipped:
    device: str
    repo: str
    first_seq: int
    last_seq: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class MineResult:
    instances: list[dict[str, Any]]
    skipped: list[Skipped]
    unfinished: int  # failing runs never followed by a passing one: not episodes

    @property
    def found(self) -> int:
        return len(self.instances) + len(self.skipped)


def difficulty(active_seconds: float) -> str:
    for limit, name in DIFFICULTY:
        if active_seconds < limit:
            return name
    return LONGEST


def is_test_path(path: str, test_files: set[str] = frozenset()) -> bool:
    """A test file: named by a test id of the span, in a test directory, or named like one."""
    if path in test_files:
        return True
    parts = path.split("/")
    if any(p.lower() in TEST_DIRS for p in parts[:-1]):
        return True
    return any(fnmatch.fnmatchcase(parts[-1], g) for g in TEST_GLOBS)


_REMOTE = re.compile(r"^(?:[a-z+]+://)?(?:[^@/]+@)?[^/:]+(?::\d+)?[:/](?P<path>.+?)(?:\.git)?/?$")


def repo_name(remote: str | None, path: str) -> str:
    """`owner/name` from the remote's URL where it has one, else the work tree's path."""
    if remote:
        m = _REMOTE.match(remote.strip())
        if m:
            parts = [p for p in m.group("path").split("/") if p]
            if len(parts) >= 2:
                return "/".join(parts[-2:])
    return path


def iso(ts_ns: int) -> str:
    return datetime.datetime.fromtimestamp(ts_ns // 10**9, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def instance_line(inst: dict[str, Any]) -> str:
    """One JSON line: fixed key order, compact, UTF-8 kept."""
    return json.dumps({k: inst[k] for k in inst}, ensure_ascii=False, separators=(",", ":"))


def mine_sources(device: str, sources: list, stdin=None) -> tuple[MineResult, int]:
    """Read one device's files (see `episodes.events`) and mine them: (result, lines read). A
    process pool maps this over the devices of an export."""
    from episodes.events import read_device

    events, read = read_device(sources, stdin, MINED_KINDS)
    return mine_device(device, events), read


def mine_device(device: str, events: list[dict]) -> MineResult:
    tl = segment.build_timeline(device, events)
    spans, unfinished = segment.find_spans(tl)
    instances: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    walks: dict[str, _Walk] = {}
    for span in spans:
        try:
            if span.excluded:
                raise _Skip(span.excluded)
            instances.append(_instance(tl, span, walks))
        except _Skip as exc:
            skipped.append(Skipped(device, span.repo, span.start["seq"], span.end_seq, exc.reason))
    return MineResult(instances, skipped, unfinished)


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class _Walk:
    """A repository's tree followed from the `repo.state` at `state_i` up to (not including) event
    `pos`, as `_instance` leaves it. The next span from the same state goes on from there instead
    of applying every save again: tasks without a commit between them cost one pass, not one each."""
    state_i: int
    pos: int
    track: patches.TreeTrack
    last_commit: str | None
    current_head: str


def _instance(tl: segment.Timeline, span: segment.Span, walks: dict[str, _Walk] | None = None) -> dict[str, Any]:
    evs = tl.by_repo[span.repo]
    seqs = tl.seqs[span.repo]
    # The chain starts at the last repo.state at or before the start, or at a HEAD move between
    # the start and the first failing run (the task then starts there).
    first_fail = bisect.bisect_left(seqs, span.first_fail["seq"])
    state_i = None
    for k in range(first_fail - 1, -1, -1):
        if evs[k]["kind"] == "repo.state":
            state_i = k
            break
    if state_i is None:
        raise _Skip("no_repo_state")
    state = evs[state_i]
    start_seq = max(span.start["seq"], state["seq"])
    head = state["data"].get("head")
    if not isinstance(head, str):
        raise _Skip("no_repo_state")
    end_i = bisect.bisect_right(seqs, span.end_seq)
    walk = (walks or {}).pop(span.repo, None)
    if walk is not None and walk.state_i == state_i and walk.pos <= end_i \
            and (walk.pos == state_i + 1 or evs[walk.pos - 1]["seq"] < start_seq):
        # Up to `pos` the walk is the one this span would make: no event of it reaches the start.
        track, last_commit, current_head, pos = walk.track, walk.last_commit, walk.current_head, walk.pos
    else:
        track = patches.TreeTrack()
        track.repo_state(state["data"].get("diff"), state["data"].get("diff_omitted"))
        last_commit, current_head, pos = None, head, state_i + 1
    at_start = None
    for ev in evs[pos:end_i]:
        if at_start is None and ev["seq"] >= start_seq:  # the start event is the task's first step
            at_start = track.snapshot()
        kind = ev["kind"]
        if kind == "file.save":
            track.save(ev["data"])
        elif kind == "git.commit":
            last_commit = ev["data"].get("sha")
        elif kind == "repo.state":
            if ev["data"].get("head") == current_head:
                # The tree announced again: go on when it is the tree followed so far (checkout -b).
                if not track.same_tree(ev["data"].get("diff"), ev["data"].get("diff_omitted")):
                    raise _Skip("chain_restarted")
                continue
            if ev["data"].get("head") != last_commit:
                raise _Skip("head_moved")
            current_head = ev["data"]["head"]
            track.committed()
    if at_start is None:
        at_start = track.snapshot()
    at_end = track.snapshot()
    if walks is not None:
        walks[span.repo] = _Walk(state_i, end_i, track, last_commit, current_head)

    passing = span.passing
    test_cwd = "."
    start_ev = tl.start_of.get(passing["seq"])
    if start_ev is not None:
        test_cwd = trajectory.rel_cwd(span.repo, start_ev["data"].get("cwd", span.repo))
    prefix = "" if test_cwd == "." else test_cwd.rstrip("/") + "/"
    run_ids = set()
    for run in span.runs:
        run_ids |= segment.test_ids(run, ("passed", "failed", "error", "skipped"))
    # Ids are relative to pytest's rootdir: the directory the tests ran in, or the repository's root.
    test_files = {p + t.split("::")[0] for t in run_ids | span.failing for p in {prefix, ""}}
    try:
        base = patches.diff_trees(None, at_start)
        changes = patches.diff_trees(at_start, at_end)
    except patches.ChainBroken as exc:
        raise _Skip(f"chain_break:{exc.reason}") from None
    except patches.Unrenderable as exc:
        raise _Skip(exc.reason) from None
    code = {p: d for p, d in changes.items() if not is_test_path(p, test_files)}
    tests = {p: d for p, d in changes.items() if is_test_path(p, test_files)}
    if not code:
        raise _Skip("no_change_outside_tests")

    passed_now = segment.test_ids(passing, ("passed",))
    f2p = sorted(span.failing & passed_now) or sorted(span.failing)
    p2p = sorted((segment.test_ids(span.first_fail, ("passed",)) & passed_now) - span.failing)

    remote = state["data"].get("remote") if isinstance(state["data"].get("remote"), str) else None
    name = repo_name(remote, span.repo)
    commit = span.closing_commit
    commit_msg = (commit["data"].get("message") or "").strip() if commit else ""
    note = span.start["data"].get("text", "").strip() if span.start_kind == "note" else ""
    if note:
        problem, source, hints = note, "note", commit_msg
    elif commit_msg:
        problem, source, hints = commit_msg, "commit", ""
    else:
        problem, source, hints = _problem_from_tests(span), "tests", ""

    span_evs = evs[bisect.bisect_left(seqs, span.start["seq"]):end_i]
    notes = [n for n in tl.notes if span.start["seq"] <= n["seq"] <= span.end_seq
             and tl.note_repo.get(n["seq"]) == span.repo]
    steps = sorted(span_evs + notes, key=lambda e: e["seq"])
    active = _active_seconds(span_evs, tl.activity_ts, span.start["ts"], evs[end_i - 1]["ts"])
    actors = {"human": 0, "agent": 0}
    sessions = set()
    for e in span_evs:
        if e["kind"] == "shell.start":
            actors["agent" if e["data"].get("actor") == "agent" else "human"] += 1
            if e.get("session"):
                sessions.add(e["session"])
    digest = hashlib.sha256(f"{tl.device}\0{span.repo}\0{span.start['seq']}\0{span.end_seq}".encode()).hexdigest()
    meta = {
        "device": tl.device,
        "sessions": sorted(sessions),
        "seq_first": span.start["seq"],
        "seq_last": span.end_seq,
        "actor": "agent" if actors["agent"] else "human",
        "human_commands": actors["human"],
        "agent_commands": actors["agent"],
        "edits": sum(e["kind"] == "file.save" for e in span_evs),
        "test_runs": sum(e["kind"] == "test.run" for e in span_evs),
        "active_seconds": int(active),
        "wall_seconds": int((evs[end_i - 1]["ts"] - span.start["ts"]) // 10**9),
        "start": span.start_kind,
        "problem_source": source,
        "repo_path": span.repo,
        "remote": remote,
        "branch": state["data"].get("branch") if isinstance(state["data"].get("branch"), str) else None,
        "runner": passing["data"].get("runner"),
        "test_cwd": test_cwd,
        "closing_commit": commit["data"].get("sha") if commit else None,
        "files": sorted(code),
        "test_files": sorted(tests),
        "base_files": sorted(base),
        "patch_added": sum(_changed(d, "+") for d in code.values()),
        "patch_removed": sum(_changed(d, "-") for d in code.values()),
        "extensions": sorted({p.rsplit(".", 1)[1] for p in code if "." in p.rsplit("/", 1)[-1]}),
    }
    inst = {
        "instance_id": f"{name.replace('/', '__').strip('_') or 'repo'}-{digest[:12]}",
        "repo": name,
        "base_commit": head,
        "base_patch": "".join(base[p] for p in sorted(base)),
        "patch": "".join(code[p] for p in sorted(code)),
        "test_patch": "".join(tests[p] for p in sorted(tests)),
        "problem_statement": problem,
        "hints_text": hints,
        "created_at": iso(span.start["ts"]),
        "FAIL_TO_PASS": json.dumps(f2p, ensure_ascii=False),
        "PASS_TO_PASS": json.dumps(p2p, ensure_ascii=False),
        "test_cmd": passing["data"].get("cmd", ""),
        "difficulty": difficulty(active),
        "meta": meta,
        "trajectory": trajectory.build(span.repo, name, problem, steps, tl.start_of, tl.end_of,
                                       span.start["seq"] if span.start_kind == "note" else None),
    }
    return {k: inst[k] for k in INSTANCE_KEYS}


def _changed(diff: str, sign: str) -> int:
    """Lines a diff adds ("+") or removes ("-"), headers left out."""
    head = sign * 3 + " "
    return sum(1 for line in diff.splitlines() if line.startswith(sign) and not line.startswith(head))


def _problem_from_tests(span: segment.Span) -> str:
    lines = ["These tests fail and should pass, without breaking the tests that pass now:"]
    messages: dict[str, str] = {}
    for run in span.runs:
        for f in run["data"].get("failures") or []:
            if isinstance(f, dict) and isinstance(f.get("name"), str) and f.get("message"):
                messages.setdefault(f["name"], f["message"])
    for test in sorted(span.failing):
        lines.append(f"- {test}")
    shown = 0
    for name in sorted(messages):
        if shown == 10:
            break
        first = messages[name].strip().splitlines()
        lines.append(f"\n{name}:\n" + "\n".join(first[:20]))
        shown += 1
    return "\n".join(lines)


def _active_seconds(span_evs: list[dict], activity_ts: list[int], t0: int, t1: int) -> float:
    inside = activity_ts[bisect.bisect_left(activity_ts, t0):bisect.bisect_right(activity_ts, t1)]
    times = sorted([e["ts"] for e in span_evs] + inside)
    total = 0
    for a, b in zip(times, times[1:]):
        total += min(b - a, ACTIVE_GAP_S * 10**9)
    return total / 10**9
