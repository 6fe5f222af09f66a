"""The review page's Tasks tab without a browser: mining the journal's held events through the
index (bounds, the cache, skip reasons) and what the tab shows of a task, escaped."""
from __future__ import annotations

import datetime as dt

from agent.journal import Journal
from agent.review import tasks
from agent.review.app import page_environment
from agent.review.index import JournalIndex
from tests.episode_trace import Trace
from tests.test_episodes_mine import HEAD, loop, started


def _journal(tmp_path, events: list[dict]) -> Journal:
    j = Journal(tmp_path / "spool", reorder_ms=0)
    j.open()
    j.start()
    for e in events:
        j.append(e["kind"], e["source"], e["session"], e["data"], e["ts"])
    j.flush()
    return j


def _two_loops() -> Trace:
    """A task, then a span with a pause inside it (skipped), in one repository."""
    t = started()
    loop(t, note="fix add: it subtracts <b>now</b>")
    t.note("make sub handle floats")
    t.cmd("python -m pytest -q", exit=1, tests=[("test_calc.py::test_sub", "failed")])
    t.ev("agent.pause", "agent", {"until": None})
    t.ev("agent.resume", "agent", {})
    t.save("calc.py", t.files["calc.py"] + "\n# floats\n")
    t.cmd("python -m pytest -q", exit=0, tests=[("test_calc.py::test_sub", "passed")])
    return t


def test_mining_the_held_events_finds_the_task_and_says_why_a_span_was_skipped(tmp_path):
    j = _journal(tmp_path, _two_loops().events)
    try:
        miner = tasks.TaskMiner(JournalIndex(j.dir))
        got = miner.mined(j.durable_seq, None)
        assert len(got.instances) == 1 and got.cut == 0 and got.read > 0
        inst = got.instances[0]
        assert inst["repo"] == "acme/app" and inst["base_commit"] == HEAD
        assert [s.reason for s in got.skipped] == ["paused"]
        assert got.skip_summary() == [{"reason": "paused", "text": "capture was paused inside it",
                                       "count": 1, "repos": ["/home/ana/src/app"]}]
        # Cached until the journal changes; the day asked for is part of the key.
        assert miner.mined(j.durable_seq, None) is got and miner.runs == 1
        j.append("user.note", "user", None, {"text": "later"})
        j.flush()
        assert miner.mined(j.durable_seq, None) is not got and miner.runs == 2
        miner.mined(j.durable_seq, dt.date(2000, 1, 1))
        assert miner.runs == 3 and miner.mined(j.durable_seq, dt.date(2000, 1, 1)).read == 0
        # Nothing past the durable seq is read.
        assert len(miner.mined(0, None).instances) == 0
    finally:
        j.stop()


def test_the_bounds_keep_the_newest_events_and_count_the_rest(tmp_path):
    t = _two_loops()
    j = _journal(tmp_path, t.events)
    try:
        ix = JournalIndex(j.dir)
        full = tasks.mine_held(ix, j.durable_seq, None)
        small = tasks.mine_held(ix, j.durable_seq, None, max_events=5)
        assert small.read == 5 and small.cut == full.read - 5
        assert not small.instances  # the task began before the newest five
        html = page_environment().get_template("tasks.html").render(
            st={"sources": {}, "consent": "opted-in", "version": "x"}, state_word="off", csrf="c", flash=None,
            paused_until=None, tab="tasks", mined=small, tasks=[], skips=[], took="1 ms", max_events="5",
            max_size="32 MiB", day=None, today=dt.date.today(), days=[], day_label="")
        assert f"Only the newest 5 events were mined; {small.cut} older ones were left" in " ".join(html.split())
        assert "No task in these events" in html
        by_size = tasks.mine_held(ix, j.durable_seq, None, max_bytes=2000)
        assert by_size.cut > 0 and by_size.read + by_size.cut == full.read
    finally:
        j.stop()


def test_task_view_and_the_template_escape_and_colour(tmp_path):
    j = _journal(tmp_path, _two_loops().events)
    try:
        mined = tasks.mine_held(JournalIndex(j.dir), j.durable_seq, None)
    finally:
        j.stop()
    v = tasks.task_view(mined.instances[0])
    assert v["fail_to_pass"] == ["test_calc.py::test_add"] and v["pass_to_pass"] == ["test_calc.py::test_sub"]
    assert v["difficulty"] == "<15 min fix" and v["base_short"] == HEAD[:10]
    assert ("add", "+    return a + b") in [(c, str(m)) for c, m in v["patch"]]
    assert any(c == "add" and "def test_add_negative" in str(m) for c, m in v["test_patch"])
    assert v["steps"] >= 5 and v["commands"] == 3 and v["edits"] == 2
    env = page_environment()
    html = env.get_template("tasks.html").render(
        st={"sources": {}, "consent": "opted-in", "version": "x"}, state_word="off", csrf="c", flash=None,
        paused_until=None, tab="tasks", mined=mined, tasks=[v], skips=mined.skip_summary(), took="1 ms",
        max_events="20,000", max_size="32 MiB", day=None, today=dt.date.today(), days=[], day_label="")
    assert "fix add: it subtracts &lt;b&gt;now&lt;/b&gt;" in html and "<b>now" not in html
    assert '<span class="d-add">+    return a + b</span>' in html
    assert "<code>test_calc.py::test_add</code>" in html and "capture was paused inside it" in html
    assert "<script>" not in html and "style=" not in html


def test_skip_reasons_in_words():
    assert tasks.skip_text("chain_break:no_diff") == "a file the task needs could not be rebuilt (no diff)"
    assert tasks.skip_text("something_new") == "something new"
