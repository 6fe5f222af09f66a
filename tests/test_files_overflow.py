"""A real inotify queue overflow: the files source says saves may be lost, then captures every file
that changed while events were lost, with diffs that still replay, and nothing that did not."""
import os
import threading
import time
from pathlib import Path

import pytest

import agent.sources.files as files_mod
from agent.sources.files_diff import apply_unified_diff
from agent.sources.files_inotify import InotifyWatcher, available
from tests.test_files_helpers import (Recorder, Running, files_source, init_repo, read_tree, replay,
                                      settle)

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not available(), reason="inotify is Linux only")]

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def gated_watcher(gate: threading.Event, reads: list[list]) -> type[InotifyWatcher]:
    """The real watcher, whose reads wait while `gate` is clear (the kernel queue then fills) and
    are kept in `reads`."""

    class GatedWatcher(InotifyWatcher):
        def read(self):
            assert gate.wait(30), "the test never reopened the gate"
            events = super().read()
            reads.append(events)
            return events

    return GatedWatcher


def flood(directory: Path, count: int) -> None:
    """`count` IN_CLOSE_WRITE events on two gitignored files, alternating so that the kernel cannot
    merge one into the one before."""
    names = [str(directory / "flood-a.log"), str(directory / "flood-b.log")]
    for i in range(count):
        os.close(os.open(names[i % 2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))


def test_overflow_gives_a_gap_then_saves_of_exactly_the_files_that_changed(tmp_path, monkeypatch):
    max_queued = int(MAX_QUEUED.read_text())
    if max_queued > 200_000:
        pytest.skip(f"max_queued_events is {max_queued}; flooding it would take too long")
    head = {"app.py": "v1\n", "same.py": "same\n", "gone.py": "bye\n", "touched.py": "t1\n",
            "dirty.py": "committed\n", ".gitignore": "*.log\n"}
    repo = init_repo(tmp_path / "src" / "r", head)
    # Edited an hour before the agent started: not a save it missed.
    (repo / "dirty.py").write_text("edited earlier\n")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(repo / "dirty.py", ns=(an_hour_ago, an_hour_ago))
    gate, reads = threading.Event(), []
    gate.set()
    monkeypatch.setattr(files_mod, "InotifyWatcher", gated_watcher(gate, reads))
    rec = Recorder()
    src = files_source(tmp_path, rec)
    with Running(src) as r:
        try:
            r.wait_ready(lambda: len(src.repos) == 1)
            (repo / "app.py").write_text("v2\n")
            (repo / "touched.py").write_text("t2\n")
            (repo / "gone.py").write_text("bye now\n")
            rec.wait_for(lambda ev: len(ev) == 3)
            gate.clear()
            started = time.monotonic()
            flood(repo, max_queued + 1000)  # the queue is full from here on
            (repo / "app.py").write_text("v3\n")
            (repo / "touched.py").write_text("t2\n")  # a new mtime, the same content
            (repo / "gone.py").unlink()
            (repo / "new.py").write_text("new\n")
            (repo / "pkg").mkdir()
            (repo / "pkg" / "mod.py").write_text("mod\n")
            flood_s = time.monotonic() - started
        finally:
            gate.set()
        rec.wait_for(lambda ev: sum(k == "file.save" for k, _, _ in ev) >= 7)
        settle(rec, 0.4)
        after_recovery = list(rec.events)
        (repo / "app.py").write_text("v4\n")  # watching goes on as before
        rec.wait_for(lambda ev: ev[-1][1].get("path") == "app.py" and "v4" in ev[-1][1]["diff"])
    overflow_read = next(batch for batch in reads if any(e.kind == "overflow" for e in batch))
    print(f"flood of {max_queued + 1000} events in {flood_s:.2f} s; the read that overflowed "
          f"held {len(overflow_read)} events")
    # The kernel queues max_queued_events events, then one overflow marker, then nothing.
    assert len(overflow_read) == max_queued + 1 and overflow_read[-1].kind == "overflow"

    kinds = [k for k, _, _ in rec.events]
    assert kinds.count("agent.gap") == 1
    gap_at = kinds.index("agent.gap")
    gap = rec.events[gap_at][1]
    assert gap["dropped"] == 0 and "overflowed" in gap["reason"]
    recovered = [d for k, d, _ in after_recovery[gap_at + 1:] if k == "file.save"]
    assert sorted(d["path"] for d in recovered) == ["app.py", "gone.py", "new.py", "pkg/mod.py"]
    recovered = {d["path"]: d for d in recovered}
    assert {p: d["op"] for p, d in recovered.items()} == {
        "app.py": "modify", "gone.py": "delete", "new.py": "create", "pkg/mod.py": "create"}
    assert recovered["app.py"]["base"] == "previous"
    # What the rescan found is one save each, the versions in between lost: the chain says so.
    assert {p: d.get("chain_break") for p, d in recovered.items()} == {
        "app.py": "overflow_rescan", "gone.py": None, "new.py": "overflow_rescan",
        "pkg/mod.py": "overflow_rescan"}
    assert "chain_break" not in rec.events[-1][1]  # the next save of app.py, watched as before
    assert apply_unified_diff("v2\n", recovered["app.py"]["diff"]) == "v3\n"

    saves = [d for k, d, _ in rec.events if k == "file.save"]
    final = read_tree(repo)
    for name in ("flood-a.log", "flood-b.log"):
        final.pop(name)
    final["dirty.py"] = head["dirty.py"]  # never saved while watched, so not in the trace
    assert replay(head, head, saves) == final
