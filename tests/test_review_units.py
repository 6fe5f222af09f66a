"""The review page's pure parts: marking redactions (escaped first), diffs, the chart, and the
journal index against the journal's own reader (appends, forget's rewrite, a corrupt frame)."""
from __future__ import annotations

import datetime as dt
import time

import pytest

from agent.journal import Journal, read_segments
from agent.review import view
from agent.review.index import JournalIndex, Query, chart_source


@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("key [REDACTED:aws-access-key-id] here",
     'key <mark class="redacted" title="removed by redaction">[REDACTED:aws-access-key-id]</mark> here'),
    ("AKIA[REDACTED:aws-access-key-id]", 'AKIA<mark class="redacted" title="removed by redaction">'
                                         '[REDACTED:aws-access-key-id]</mark>'),
    ("[REDACTION-FAILED]", '<mark class="redacted" title="removed by redaction">[REDACTION-FAILED]</mark>'),
    ("user [email:1a2b3c4d]", 'user <mark class="redacted" title="removed by redaction">[email:1a2b3c4d]</mark>'),
    ("<script>alert(1)</script> [REDACTED:x]",
     '&lt;script&gt;alert(1)&lt;/script&gt; <mark class="redacted" title="removed by redaction">[REDACTED:x]</mark>'),
    ('"><img src=x onerror=alert(1)>', "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"),
    ("[not a marker] [a:xyz]", "[not a marker] [a:xyz]"),
    (None, ""),
])
def test_mark_redactions_escapes_then_marks(text, expected):
    assert str(view.mark_redactions(text)) == expected


def test_diff_lines_are_classified_and_escaped():
    diff = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old <b>\n+new [REDACTED:pw]\n same"
    got = [(c, str(m)) for c, m in view.diff_lines(diff)]
    assert [c for c, _ in got] == ["file", "file", "hunk", "del", "add", "ctx"]
    assert got[3][1] == "-old &lt;b&gt;"
    assert "<mark" in got[4][1]
    assert view.diff_lines("\n".join(["+x"] * 10), limit=4)[-1][0] == "more"


def test_chart_is_svg_with_a_titled_bar_per_source_and_hour_and_no_inline_style():
    counts = {s: [0] * 24 for s in view.SOURCE_COLOURS}
    counts["shell"][9] = 12
    counts["tests"][9] = 3
    counts["files"][14] = 1
    svg = str(view.chart_svg(counts, now_hour=14))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "09:00–10:00 shell: 12 events" in svg and "14:00–15:00 files: 1 event<" in svg
    assert "style=" not in svg and "<script" not in svg
    assert "16 in all" in svg


@pytest.mark.parametrize("kind, source, row", [
    ("shell.start", "shell", "shell"), ("test.run", "shell", "tests"), ("file.save", "files", "files"),
    ("repo.state", "git", "git"), ("git.commit", "git", "git"), ("tool.invocation", "tools", "tools"),
    ("input.activity", "input", "input"), ("app.focus", "input", "input"), ("agent.start", "agent", None),
    ("user.note", "user", None),
])
def test_chart_rows(kind, source, row):
    assert chart_source(kind, source) == row


def _journal(tmp_path, n=300, segment_bytes=16 << 20):
    j = Journal(tmp_path / "spool", reorder_ms=0, segment_bytes=segment_bytes)
    j.open()
    j.start()
    now = time.time_ns()
    for i in range(n):
        kind = ("shell.start", "file.save", "test.run", "git.commit")[i % 4]
        data = {"cmd": f"make {i}", "cwd": "/src/app"} if kind == "shell.start" else \
            {"repo": "/src/app", "path": f"f{i}.py", "diff": "+x\n" * (i % 7)}
        j.append(kind, "shell", None, data, now - (n - i) * 10**9)
    j.flush()
    return j


def _seqs(events):
    return [e.seq for e in events]


def test_index_matches_the_journal_reader_through_appends_and_forget(tmp_path):
    j = _journal(tmp_path, segment_bytes=4096)  # many segments
    ix = JournalIndex(j.dir)
    try:
        assert [e.seq for e in ix.refresh()] == _seqs(read_segments(j.dir))
        assert ix.repos() == ["/src/app"]
        for i in range(50):  # the active segment grows; rotation makes new ones
            j.append("user.note", "user", None, {"text": f"n{i}"})
        j.flush()
        assert [e.seq for e in ix.refresh()] == _seqs(read_segments(j.dir))
        removed = j.rewrite(lambda ev: ev.seq % 3 == 0)
        assert removed
        assert [e.seq for e in ix.refresh()] == _seqs(read_segments(j.dir))
        events, total = ix.page(Query(), j.durable_seq, 0, 10)
        assert total == len(ix.refresh()) and _seqs(events) == sorted(_seqs(read_segments(j.dir)))[::-1][:10]
        events, total = ix.page(Query(kinds=("git.",), text="F15.PY"), j.durable_seq, 0, 10)
        assert [e.data["path"] for e in events] == ["f15.py"] and total == 1
        _, total = ix.page(Query(repo="/src/app"), j.durable_seq, 0, 10)
        assert total == sum(1 for e in read_segments(j.dir) if e.kind != "user.note")
        _, total = ix.page(Query(day=dt.date.today() + dt.timedelta(days=2)), j.durable_seq, 0, 10)
        assert total == 0
    finally:
        j.stop()


def test_index_falls_back_to_the_checked_scan_at_a_corrupt_frame(tmp_path):
    j = _journal(tmp_path, n=100)
    j.stop()
    seg = sorted(j.dir.glob("*.seg"))[0]
    buf = bytearray(seg.read_bytes())
    # Break the sync marker of a record in the middle: its frame no longer parses.
    at = buf.find(b"\xa5\x5a", len(buf) // 2)
    buf[at:at + 2] = b"\x00\x00"
    seg.write_bytes(bytes(buf))
    expected = _seqs(read_segments(j.dir))
    assert len(expected) == 99
    ix = JournalIndex(j.dir)
    assert [e.seq for e in ix.refresh()] == expected
    events, total = ix.page(Query(), 10**9, 0, 200)
    assert total == 99 and _seqs(events) == expected[::-1]


@pytest.mark.parametrize("seconds, words", [(900, "15 minutes"), (3600, "1 hour"), (5400, "90 minutes"),
                                            (5430, "1 h 30 min"), (86400, "1 day"), (90, "1 min 30 s"),
                                            (5, "5 s")])
def test_period_in_words(seconds, words):
    assert view.period(seconds) == words


def test_totals_from_the_summary_agree_with_counting(tmp_path):
    j = _journal(tmp_path, n=400)
    try:
        ix = JournalIndex(j.dir)
        today = dt.date.today()
        queries = [Query(), Query(day=today), Query(day=today - dt.timedelta(days=1)),
                   Query(day=today, kinds=("file.save",)), Query(kinds=("git.",))]
        slow = [ix.page(q, j.durable_seq, 0, 5) for q in queries]  # no summary yet: counted
        ix.summary(today, j.durable_seq, 0, {"all": 0})
        assert ix._count(Query(), j.durable_seq) == 400
        fast = [ix.page(q, j.durable_seq, 0, 5) for q in queries]
        assert [(t, _seqs(evs)) for evs, t in fast] == [(t, _seqs(evs)) for evs, t in slow]
        assert ix.summary(today, j.durable_seq, 0, {"all": 0}).forgettable == {"all": 400}
    finally:
        j.stop()


def test_a_failing_page_says_a_fixed_sentence_and_logs_no_content(tmp_path, caplog):
    import asyncio

    import httpx

    from agent.review.app import Tokens, build_app

    class Failing:  # the daemon's state, failing the way a bug would, with content in the message
        spool = tmp_path

        def status(self):
            raise ValueError("AKIA-secret-from-an-event")

    tokens = Tokens()
    token = tokens.issue()
    app = build_app(Failing(), port=4242, tokens=tokens, session="s" * 43, csrf="c" * 64)

    async def visit():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:4242") as c:
            assert (await c.get("/?token=" + token)).status_code == 303
            return await c.get("/")

    # In a thread of its own: the session's browser may already run an event loop in this one.
    from concurrent.futures import ThreadPoolExecutor

    with caplog.at_level("ERROR", logger="tracecap.review"), ThreadPoolExecutor(1) as pool:
        r = pool.submit(lambda: asyncio.run(visit())).result(30)
    assert r.status_code == 500 and "tracecap log" in r.text
    assert "AKIA" not in r.text and "AKIA" not in caplog.text
    assert "ValueError" in caplog.text and "app.py" in caplog.text
    assert r.headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.parametrize("url, shown", [
    ("https://traces.example.com", "https://traces.example.com"),
    ("https://user:pw@traces.example.com:8443/x", "https://traces.example.com:8443/x"),
    ("https://token@traces.example.com", "https://traces.example.com"),
    ("file:///var/lib/tracecap/outbox", "file:///var/lib/tracecap/outbox"),
])
def test_the_upload_history_never_shows_credentials(url, shown):
    from agent.delivery import _public_url

    assert _public_url(url) == shown


def test_tokens_are_good_once_and_only_the_newest_are_kept():
    from agent.review.app import Tokens

    t = Tokens()
    first = t.issue()
    rest = [t.issue() for _ in range(Tokens.KEEP)]
    assert not t.take(first)  # pushed out by newer ones
    assert t.take(rest[0]) and not t.take(rest[0])
    assert not t.take(rest[1][:-1]) and not t.take("") and t.take(rest[1])


def test_index_reads_in_chunks_and_across_a_torn_tail_and_a_bad_length(tmp_path, monkeypatch):
    """Records larger than a read, records split across reads, a record still being written (a
    torn tail, indexed once it is whole) and a corrupt length pointing past the end of a sealed
    segment: the index agrees with the journal's reader at each step."""
    from agent.review import index as index_mod

    monkeypatch.setattr(index_mod, "READ_CHUNK", 700)  # many reads, and records larger than one
    j = _journal(tmp_path, n=120, segment_bytes=6000)
    j.append("file.save", "files", None, {"repo": "/src/app", "path": "big.py", "diff": "+y\n" * 2000})
    j.stop()
    ix = JournalIndex(j.dir)
    assert [e.seq for e in ix.refresh()] == _seqs(read_segments(j.dir))
    events, _ = ix.page(Query(text="big.py"), 10**9, 0, 5)
    assert [e.data["path"] for e in events] == ["big.py"]

    segs = sorted(j.dir.glob("*.seg"))
    last, sealed = segs[-1], segs[0]
    whole = last.read_bytes()
    from agent.journal import frame

    import msgpack
    extra = frame(msgpack.packb({"v": 1, "seq": 10**6, "ts": time.time_ns(), "kind": "user.note",
                                 "source": "user", "session": None, "data": {"text": "late"}}))
    last.write_bytes(whole + extra[:len(extra) // 2])  # a write in progress
    assert [e.seq for e in ix.refresh()] == _seqs(read_segments(j.dir))
    last.write_bytes(whole + extra)  # now whole
    assert [e.seq for e in ix.refresh()][-1] == 10**6 == _seqs(read_segments(j.dir))[-1]

    before = _seqs(read_segments(j.dir))
    buf = bytearray(sealed.read_bytes())
    at = buf.find(b"\xa5\x5a", len(buf) // 2)
    buf[at + 2:at + 6] = (len(buf) * 4).to_bytes(4, "little")  # a length running past the end
    sealed.write_bytes(bytes(buf))
    expected = _seqs(read_segments(j.dir))
    assert len(expected) == len(before) - 1 and expected[-1] == 10**6
    assert [e.seq for e in ix.refresh()] == expected
    assert [e.seq for e in JournalIndex(j.dir).refresh()] == expected


def test_the_index_is_small(tmp_path):
    j = _journal(tmp_path, n=2000)
    try:
        ix = JournalIndex(j.dir)
        assert len(ix.refresh()) == 2000
        assert ix.memory_bytes() <= 2000 * 40  # offsets and a few ints an event, not the events
    finally:
        j.stop()


def test_forget_counts_agree_with_what_forget_would_take(tmp_path):
    from agent.forget import _drop

    j = _journal(tmp_path, n=300, segment_bytes=5000)
    try:
        j.append("agent.gap", "agent", None, {"dropped": 1, "reason": "test"})
        j.append("user.note", "user", None, {"text": "now"})
        j.flush()
        ix = JournalIndex(j.dir)
        now = time.time_ns()
        spans = {"all": 0, "1m": now - 60 * 10**9, "2m": now - 120 * 10**9, "future": now + 10**12}
        got = {}
        for delivered in (0, 150, 280, 10**6):
            got[delivered] = ix.summary(dt.date.today(), j.durable_seq, delivered, spans).forgettable
            want = {name: sum(1 for ev in read_segments(j.dir) if _drop(t, delivered)(ev))
                    for name, t in spans.items()}
            assert got[delivered] == want, delivered
        assert got[0]["all"] == 301 and 0 < got[0]["1m"] < got[0]["2m"] < got[150]["all"] == 151
        assert got[10**6]["all"] == 0
    finally:
        j.stop()
