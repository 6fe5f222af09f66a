"""The shell source: pure record parsing and pairing, then the real source following a spool
written by real shells, with a SourceContext whose emit appends to a list."""
from __future__ import annotations

import logging
import os
import random
import string
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.paths import StatePaths
from agent.policy import builtin_policy
from agent.sources.base import SourceContext
from agent.sources.shell import (CURSOR_FILE, Dropped, End, PairState, ShellSource, Start,
                                 decode_field, pair_records, parse_record, parse_time, split_lines)
from tests.test_shell_hooks import Tmux, records

SID = "123-456"


@pytest.mark.parametrize("line,expected", [
    (b"S1\tb\t123-456\t1\t1700000000.5\t123\t1\tbash\t/home/u\techo hi",
     Start(SID, 1, 1_700_000_000_500_000_000, 123, True, "bash", "/home/u", "echo hi")),
    (b"S1\tb\t123-456\t2\t1700000000,25\t123\t0\tzsh\t/x\\ty\ta\\nb\\\\n\\tc",
     Start(SID, 2, 1_700_000_000_250_000_000, 123, False, "zsh", "/x\ty", "a\nb\\n\tc")),
    (b"S1\tu\t123-456\t3\t\t123\t1\tfish\t/h%20s\tprintf%20%22%C3%A9%0A%22",
     Start(SID, 3, None, 123, True, "fish", "/h s", 'printf "\u00e9\n"')),
    (b"S1\tb\t123-456\t4\t1\t1\t1\tbash\t/\techo \xff", Start(SID, 4, 1_000_000_000, 1, True, "bash", "/", "echo \\xff")),
    (b"E1\tb\t123-456\t1\t1700000001.5\t130\t", End(SID, 1, 1_700_000_001_500_000_000, 130, None)),
    (b"E1\tu\t123-456\t3\t\t0\t42", End(SID, 3, None, 0, 42)),
    (b"D1\tb\t123-456\t17", Dropped(SID, 17)),
    (b"", None),
    (b"S1\tb\t123-456\t1", None),  # torn
    (b"E1\tb\t123-456\tx\t1\t0\t", None),
    (b"E1\tb\t123-456\t1\tnan\t0\t", None),
    (b"S1\tq\t123-456\t1\t1\t1\t1\tbash\t/\tls", None),  # unknown encoding
    (b"X9\tanything", None),
])
def test_parse_record(line, expected):
    assert parse_record(line) == expected


def test_decode_field_keeps_unknown_escapes_and_trailing_backslash():
    assert decode_field("b", "a\\qb\\") == "a\\qb\\"
    assert parse_time("") is None


def test_split_lines_leaves_torn_tail():
    assert split_lines(b"a\nb\nc") == ([b"a", b"b"], 4)
    assert split_lines(b"abc") == ([], 0)
    assert split_lines(b"a\n") == ([b"a"], 2)


def _s(n, t=1.0, shell="bash"):
    return Start(SID, n, None if t is None else int(t * 1e9), 123, True, shell, "/w", f"cmd{n}")


def test_pair_records_table():
    recs = [_s(1, 10.0), End(SID, 1, int(10.25e9), 0, None), _s(2, 11.0),
            Dropped(SID, 5), Dropped(SID, 5), Dropped(SID, 8)]
    events, finished, state = pair_records(PairState(), recs, now_ns=99)
    assert [(k, d.get("id"), ts) for k, d, ts, _ in events] == [
        ("shell.start", f"{SID}:1", 10_000_000_000),
        ("shell.end", f"{SID}:1", 10_250_000_000),
        ("shell.start", f"{SID}:2", 11_000_000_000),
        ("agent.gap", f"{SID}:dropped:5", 99),
        ("agent.gap", f"{SID}:dropped:8", 99),
    ]
    assert events[1][1] == {"id": f"{SID}:1", "exit": 0, "duration_ms": 250}
    assert [d["dropped"] for k, d, _, _ in events if k == "agent.gap"] == [5, 3]
    assert events[0][1] == {"id": f"{SID}:1", "cmd": "cmd1", "cwd": "/w", "shell": "bash"}
    assert finished[0].start.cmd == "cmd1" and finished[0].duration_ms == 250
    assert list(state.pending) == [(SID, 2)] and state.dropped == {SID: 8}
    # the end of command 2 arrives in a later batch; the input state is not mutated
    events2, finished2, state2 = pair_records(state, [End(SID, 2, int(12e9), 1, None)], now_ns=0)
    assert events2[0][1] == {"id": f"{SID}:2", "exit": 1, "duration_ms": 1000}
    assert list(state.pending) == [(SID, 2)] and state2.pending == {}


def test_pair_records_fish_uses_its_duration_and_read_time():
    events, finished, _ = pair_records(PairState(), [_s(1, None, "fish")], now_ns=5_000_000_000)
    assert events[0][2] == 5_000_000_000
    events, finished, _ = pair_records(_, [End(SID, 1, None, 0, 1500)], now_ns=5_100_000_000)
    assert events[0][1]["duration_ms"] == 1500
    assert events[0][2] == 6_500_000_000  # start + measured duration, not the read time


def test_pair_records_end_without_start():
    events, finished, _ = pair_records(PairState(), [End(SID, 9, int(2e9), 3, None)], now_ns=0)
    assert events == [("shell.end", {"id": f"{SID}:9", "exit": 3, "duration_ms": 0}, 2_000_000_000, SID)]
    assert finished[0].start is None


# --- the real source ---------------------------------------------------------------------------

class Harness:
    def __init__(self, home: Path, *, capturing: bool = True, sources=None):
        self.paths = StatePaths.from_env({"TRACECAP_HOME": str(home)}).ensure()
        policy = builtin_policy()
        if sources is not None:
            policy.data["capture"]["sources"] = sources
        self.events: list[tuple[str, dict, int | None, str | None, str | None]] = []
        self.lock = threading.Lock()
        self.capture = capturing
        self.ctx = SourceContext(name="shell", policy=policy, paths=self.paths, emit=self.emit,
                                 capturing=lambda: self.capture, log=logging.getLogger("t"),
                                 set_state=lambda s: None)
        self.source = ShellSource(self.ctx)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(self.stop,), daemon=True)

    def emit(self, kind, data, *, ts=None, session=None, source=None):
        with self.lock:
            self.events.append((kind, data, ts, session, source))

    def start(self) -> "Harness":
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()

    def kinds(self, kind: str) -> list:
        with self.lock:
            return [e for e in self.events if e[0] == kind]

    def wait(self, cond, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; events: {self.events}")


def spooled_commands(spool: Path) -> set[str]:
    """The commands still readable in the spool (those not erased yet)."""
    return {r.cmd for r in records(spool) if isinstance(r, Start)}


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(**kw) -> Harness:
        h = Harness(tmp_path / "home", **kw)
        made.append(h)
        return h
    yield make
    for h in made:
        if h.thread.is_alive():
            h.close()


@pytest.fixture
def shell_session(tmp_path):
    made = []

    def make(shell, spool, **kw):
        # As `tracecap shell-init` renders it for this state: pytest's reports where the source
        # looks for them.
        kw.setdefault("reports", StatePaths.from_env(
            {"TRACECAP_HOME": str(spool.parent.parent)}).report_dir())
        t = Tmux(tmp_path, shell, spool, **kw)
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_source_emits_paired_events_from_a_real_shell(shell, tmp_path, harness, shell_session):
    h = harness().start()
    sh = shell_session(shell, h.paths.shell_spool)
    sh.run("echo one")
    sh.run("sleep 0.3; false")
    h.wait(lambda: len(h.kinds("shell.end")) == 2)
    starts, ends = h.kinds("shell.start"), h.kinds("shell.end")
    assert [e[1]["cmd"] for e in starts] == ["echo one", "sleep 0.3; false"]
    for kind, data, ts, session, source in starts:
        assert data["shell"] == shell and data["cwd"] == str(tmp_path)
        assert data["actor"] == "human"  # interactive, no agent among its ancestors
        assert session == data["id"].rsplit(":", 1)[0] and source is None
        assert abs(ts - time.time_ns()) < 60e9
    assert [e[1]["id"] for e in ends] == [e[1]["id"] for e in starts]
    assert [e[1]["exit"] for e in ends] == [0, 1]
    assert ends[1][1]["duration_ms"] >= 300
    assert ends[1][2] >= starts[1][2] + 300_000_000
    assert h.kinds("test.run") == []
    sh.close()
    h.close()

    def swept() -> bool:  # the shell is gone: its fully read files are deleted
        h.source.sweep()
        return [p.name for p in h.paths.shell_spool.iterdir() if p.name != CURSOR_FILE] == []
    h.wait(swept, timeout=10)


def test_source_resumes_after_restart_without_duplicates(tmp_path, harness, shell_session):
    h = harness().start()
    sh = shell_session("bash", h.paths.shell_spool)
    sh.run("echo first")
    h.wait(lambda: len(h.kinds("shell.end")) == 1)
    h.close()
    sh.run("echo while-down")
    h2 = harness().start()
    h2.wait(lambda: len(h2.kinds("shell.end")) == 1)
    sh.run("echo after")
    h2.wait(lambda: len(h2.kinds("shell.end")) == 2)
    assert [e[1]["cmd"] for e in h2.kinds("shell.start")] == ["echo while-down", "echo after"]


def test_records_are_discarded_while_capture_is_off(tmp_path, harness, shell_session):
    h = harness(capturing=False).start()
    sh = shell_session("bash", h.paths.shell_spool)
    sh.run("echo private")
    # The source reads the record while capture is off, discards it and erases it from the spool:
    # wait for that (bounded) before capture comes back, whatever the machine's load.
    deadline = time.monotonic() + 20
    while "echo private" in spooled_commands(h.paths.shell_spool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "echo private" not in spooled_commands(h.paths.shell_spool)
    assert h.events == []
    h.capture = True
    sh.run("echo public")
    h.wait(lambda: len(h.kinds("shell.end")) == 1)
    assert [e[1]["cmd"] for e in h.kinds("shell.start")] == ["echo public"]


def test_malformed_and_torn_records_are_counted_not_fatal(tmp_path, harness):
    h = harness()
    spool = h.paths.shell_spool
    sid = f"{os.getpid()}-1"
    f = spool / f"{sid}.0.rec"
    f.write_bytes(b"S2\t9\t1.0\t/\trbefore-any-header\0"  # cannot be attributed
                  + f"H2\t{sid}\t{os.getpid()}\t1\tbash\0".encode()
                  + b"garbage\0S2\t1\t1.0\t/\trls\0E2\tbroken\0")
    h.start()
    h.wait(lambda: len(h.kinds("shell.start")) == 1)
    with open(f, "ab") as fh:  # a torn tail: left alone until its NUL arrives
        fh.write(b"E2\t1\t2.5\t0\t")
    time.sleep(0.5)
    assert h.kinds("shell.end") == []
    with open(f, "ab") as fh:
        fh.write(b"\0")
    h.wait(lambda: len(h.kinds("shell.end")) == 1)
    assert h.kinds("shell.end")[0][1]["duration_ms"] == 1500
    assert h.source.malformed == 3
    # everything consumed is blanked, the header too when it does not lead the segment
    h.wait(lambda: set(f.read_bytes()) == {0})


def test_version1_segments_are_still_read_and_blanked(tmp_path, harness):
    h = harness()
    pid = os.getpid()
    f = h.paths.shell_spool / f"{pid}-1.0.rec"
    f.write_bytes(f"S1\tb\t{pid}-1\t1\t1.0\t{pid}\t1\tbash\t/\techo v1-secret\n"
                  f"E1\tb\t{pid}-1\t1\t2.0\t0\t\n".encode())
    h.start()
    h.wait(lambda: len(h.kinds("shell.end")) == 1)
    assert [e[1]["cmd"] for e in h.kinds("shell.start")] == ["echo v1-secret"]
    h.wait(lambda: set(f.read_bytes()) == {0})
    with open(f, "ab") as fh:
        fh.write(f"S1\tb\t{pid}-1\t2\t3.0\t{pid}\t1\tbash\t/\techo again\n".encode())
    h.wait(lambda: len(h.kinds("shell.start")) == 2)
    assert h.source.malformed == 0


def test_hook_drops_become_a_gap_event(tmp_path, harness, shell_session):
    h = harness()
    sh = shell_session("bash", h.paths.shell_spool, spool_max_bytes=16384)
    for i in range(120):
        sh.run(f"echo {'y' * 100}{i} >/dev/null", wait=(i % 20 == 19))
    sh.run("echo last")
    h.start()
    h.wait(lambda: any(e[1]["cmd"] == "echo last" for e in h.kinds("shell.start")))
    gaps = h.kinds("agent.gap")
    assert gaps and all(g[1]["reason"] and g[1]["dropped"] > 0 for g in gaps)
    dropped = sum(g[1]["dropped"] for g in gaps)
    starts, ends = h.kinds("shell.start"), h.kinds("shell.end")
    h.wait(lambda: len(h.kinds("shell.end")) == 121 - (dropped - (len(starts) - len(ends))) // 2 or True)
    assert len(h.kinds("shell.start")) + len(h.kinds("shell.end")) + dropped == 2 * 121


def test_failing_pytest_run_gives_test_run_with_failures(tmp_path, harness, shell_session):
    proj = tmp_path / "proj"
    (proj / "tests" / "unit").mkdir(parents=True)
    (proj / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    (proj / "tests" / "unit" / "test_calc.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert 1 + 1 == 2\n"
        "def test_bad():\n    assert 2 + 2 == 5, 'arithmetic is broken'\n"
        "@pytest.mark.skip\ndef test_later():\n    pass\n"
        "class TestCalc:\n"
        "    @pytest.mark.parametrize('n', [1, 'x.y'])\n"
        "    def test_param(self, n):\n        assert n != 1\n")
    h = harness().start()
    sh = shell_session("bash", h.paths.shell_spool)
    # Run from a directory below the rootdir: node ids stay relative to the rootdir.
    sh.run(f"cd {proj}/tests")
    sh.run(f"{sys.executable} -m pytest -q -p no:cacheprovider unit")
    h.wait(lambda: h.kinds("test.run"), timeout=60)
    (kind, data, ts, session, source), = h.kinds("test.run")
    assert source == "tests"
    assert data["runner"] == "pytest" and data["exit"] == 1
    assert (data["passed"], data["failed"], data["skipped"]) == (2, 2, 1)
    assert data["failures"][0]["name"].endswith("test_bad")
    assert "arithmetic is broken" in data["failures"][0]["message"]
    # each test as pytest names it, with its outcome
    f = "tests/unit/test_calc.py"
    assert data["tests"] == [
        {"name": f"{f}::test_ok", "outcome": "passed"},
        {"name": f"{f}::test_bad", "outcome": "failed"},
        {"name": f"{f}::test_later", "outcome": "skipped"},
        {"name": f"{f}::TestCalc::test_param[1]", "outcome": "failed"},
        {"name": f"{f}::TestCalc::test_param[x.y]", "outcome": "passed"}]
    assert "tests_truncated" not in data
    assert not list(h.paths.shell_spool.glob("*.junit.xml"))  # the report is consumed


def test_other_runners_reports_are_found_under_cwd(tmp_path, harness, shell_session):
    proj = tmp_path / "mvnproj"
    (proj / "target" / "surefire-reports").mkdir(parents=True)
    report = proj / "target" / "surefire-reports" / "TEST-x.xml"
    script = tmp_path / "mvn"
    script.write_text(f"#!/bin/sh\ncat > {report} <<'X'\n<testsuite><testcase name='a'/><testcase name='b'>"
                      "<failure message='boom'/></testcase></testsuite>\nX\nexit 1\n")
    script.chmod(0o755)
    h = harness().start()
    sh = shell_session("bash", h.paths.shell_spool)
    sh.run(f"cd {proj}")
    sh.run(f"{script} test")
    sh.run("echo not-a-test")
    h.wait(lambda: h.kinds("test.run"))
    h.wait(lambda: len(h.kinds("shell.end")) == 3)
    (kind, data, *_), = h.kinds("test.run")
    assert data["runner"] == "maven" and data["exit"] == 1
    assert (data["passed"], data["failed"]) == (1, 1)
    assert data["failures"] == [{"name": "b", "message": "boom"}]
    assert data["tests"] == [{"name": "a", "outcome": "passed"}, {"name": "b", "outcome": "failed"}]


def test_no_test_run_when_tests_source_is_off(tmp_path, harness, shell_session):
    h = harness(sources=["shell"]).start()
    sh = shell_session("bash", h.paths.shell_spool)
    sh.run("true test")
    sh.run("make check || true")
    h.wait(lambda: len(h.kinds("shell.end")) == 2)
    assert h.kinds("test.run") == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_no_raw_command_text_stays_in_the_spool(shell, tmp_path, harness, shell_session):
    token = "ghp_" + "".join(random.choices(string.ascii_letters + string.digits, k=36))
    h = harness().start()
    spool = h.paths.shell_spool
    sh = shell_session(shell, spool)
    sh.run(f"export API_TOKEN={token}")
    sh.run("echo after")
    h.wait(lambda: len(h.kinds("shell.end")) == 2)
    assert h.kinds("shell.start")[0][1]["cmd"] == f"export API_TOKEN={token}"  # it was read

    def spool_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in spool.rglob("*") if p.is_file())
    h.wait(lambda: token.encode() not in spool_bytes() and b"echo after" not in spool_bytes(),
           timeout=5)
    segments = list(spool.glob("*.rec"))
    assert segments
    for seg in segments:
        assert seg.stat().st_mode & 0o777 == 0o600, seg
        assert seg.read_bytes().startswith(b"H2\t")  # who wrote it stays; what was typed does not
    assert not list(spool.glob("*.cmd"))
