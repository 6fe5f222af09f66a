"""Test reports that are not what they seem, against the real daemon and a real bash in tmux: a FIFO
named junit.xml, a huge sparse report, a large real one. Capture must go on, the daemon's memory
must stay within its unit's MemoryMax=256M; and a source that stops making progress is shown as
stalled and replaced."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent import supervisor as supervisor_mod
from agent.supervisor import Supervisor
from tests.test_shell_hooks import PROMPT, Tmux
from tests.test_spool_durability import policy, wait_until

SHELL_AND_TESTS = '[capture]\nsources = ["shell", "tests"]\n'


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def rig(tmp_path, daemon_factory):
    d = daemon_factory(policy=policy(tmp_path, SHELL_AND_TESTS))
    d.start()
    d.cli("opt-in")
    proj = tmp_path / "proj"
    proj.mkdir()
    sh = Tmux(tmp_path, "bash", d.home / "run" / "shell")
    sh.run(f"cd {proj}")
    yield d, sh, proj
    sh.close()


def run_line(sh: Tmux, line: str, timeout: float = 30) -> None:
    sh.keys(line, "Enter")
    sh.wait_for(lambda: (lambda s: line in s and s.rstrip().endswith(PROMPT))(sh.screen()), timeout)


def test_a_fifo_named_like_a_report_does_not_stall_shell_capture(rig):
    d, sh, proj = rig
    (proj / "Makefile").write_text("test:\n\tmkfifo junit.xml\n")
    run_line(sh, "make test")
    run_line(sh, "true after-the-fifo")
    wait_until(lambda: any(e["data"]["cmd"] == "true after-the-fifo"
                           for e in d.events("--kind", "shell.start")), 15)
    assert any(e["data"]["cmd"] == "true after-the-fifo" for e in d.events("--kind", "shell.start")), \
        "shell capture stalled on the FIFO"
    (run,) = [e for e in d.events("--kind", "test.run")]
    assert run["data"]["runner"] == "make" and "passed" not in run["data"]  # no report read
    assert d.status()["sources"]["shell"] == "running"
    # After a restart the same record does not block either.
    d.stop()
    d.start()
    run_line(sh, "true after-the-restart")
    wait_until(lambda: any(e["data"]["cmd"] == "true after-the-restart"
                           for e in d.events("--kind", "shell.start")), 15)
    assert any(e["data"]["cmd"] == "true after-the-restart" for e in d.events("--kind", "shell.start"))


def test_huge_and_large_reports_keep_the_daemon_small(rig):
    d, sh, proj = rig
    # A 300 MB sparse report costs nothing to make; a 20 MB real one with 200,000 testcases.
    cases = "".join(f'<testcase classname="tests.test_module_{i // 1000}" name="test_case_{i}" '
                    f'time="0.001"/>' if i % 1000 else
                    f'<testcase classname="tests.test_module_{i // 1000}" name="test_case_{i}" '
                    f'time="0.001"><failure message="boom {i}"/></testcase>'
                    for i in range(200_000))
    big = proj / "big.xml"
    big.write_text(f"<testsuites><testsuite name='s'>{cases}</testsuite></testsuites>")
    assert big.stat().st_size > 8 << 20
    (proj / "Makefile").write_text("test:\n\ttruncate -s 300M junit.xml\n"
                                   "check:\n\trm -f junit.xml; cp big.xml junit.xml\n")
    base = peak_rss_mb(d.proc.pid)
    run_line(sh, "make test")
    run_line(sh, "make check")
    wait_until(lambda: len(d.events("--kind", "test.run")) == 2, 60)
    first, second = d.events("--kind", "test.run")
    assert "passed" not in first["data"]  # the sparse 300 MB file is not read
    assert (second["data"]["passed"], second["data"]["failed"]) == (199_800, 200)
    peak = peak_rss_mb(d.proc.pid)
    print(f"daemon peak RSS {peak:.0f} MB (at start {base:.0f} MB)")
    assert peak < 160, f"daemon peak RSS {peak:.0f} MB (at start {base:.0f} MB)"


class _Stuck:
    """A source that beats once and then blocks, as a thread stuck in a system call does."""
    made: list["_Stuck"] = []

    def __init__(self, ctx):
        self.ctx = ctx
        self.release = threading.Event()
        _Stuck.made.append(self)

    def run(self, stop):
        self.ctx.heartbeat(0.3)
        if len(_Stuck.made) == 1:
            self.release.wait(20)  # the first instance hangs
        else:
            while not stop.wait(0.05):
                self.ctx.heartbeat(0.3)


def test_a_source_that_stops_making_progress_is_shown_stalled_and_replaced(monkeypatch):
    monkeypatch.setitem(supervisor_mod.SOURCE_CLASSES, "shell", f"{__name__}:_Stuck")
    _Stuck.made.clear()

    class Ctx:
        def __init__(self, heartbeat):
            self.heartbeat = heartbeat

    sup = Supervisor(lambda name, set_state, heartbeat: Ctx(heartbeat))
    sup.start(["shell"])
    try:
        # Stalled once it has been quiet for longer than the 0.3 s it promised: counted from its
        # beat, which a loaded machine may run late; so polled (bounded), not a fixed 0.8 s.
        deadline = time.monotonic() + 10
        while not (stalled := sup.check_stalls()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stalled == ["shell"]
        assert sup.states()["shell"].startswith("stalled: no progress for")
        deadline = time.monotonic() + 10
        while len(_Stuck.made) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_Stuck.made) == 2
        time.sleep(0.8)
        assert sup.check_stalls() == []  # the fresh one beats
        assert sup.states()["shell"].startswith("running (restarted after it stalled")
    finally:
        _Stuck.made[0].release.set()
        sup.stop()


def test_pytest_reports_stay_off_the_disk_while_the_daemon_is_down(tmp_path, daemon_factory):
    """Under TRACECAP_HOME the reports pytest writes for the hook (raw failure messages) go to a
    memory-backed directory, not under TRACECAP_HOME; the daemon reads them when it is back, and
    deletes unread those it cannot use (capture paused)."""
    import sys

    from agent.paths import StatePaths
    from tests.daemon_harness import TRACECAP

    d = daemon_factory(policy=policy(tmp_path, SHELL_AND_TESTS))
    d.start()
    d.cli("opt-in")
    d.stop()
    proj = tmp_path / "proj"
    proj.mkdir()
    secret = "failure-text-kept-in-memory-only"
    (proj / "test_x.py").write_text(f"def test_bad():\n    assert 0, '{secret}'\n")
    rc = (f"export TRACECAP_HOME={d.home} TRACECAP_POLICY={d.env['TRACECAP_POLICY']}\n"
          f'eval "$({TRACECAP} shell-init bash)"\n')
    sh = Tmux(tmp_path, "bash", d.home / "run" / "shell", rc_extra=rc)
    try:
        sh.run(f"cd {proj}")
        run_line(sh, f"{sys.executable} -m pytest -q -p no:cacheprovider test_x.py", timeout=60)
        on_disk = [p for p in d.home.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert on_disk == [], f"raw failure messages under TRACECAP_HOME: {on_disk}"
        reports = StatePaths.from_env({"TRACECAP_HOME": str(d.home)}).report_dir()
        assert not str(reports).startswith(str(d.home))
        assert len(list(reports.glob("*.junit.xml"))) == 1
        d.start()
        wait_until(lambda: d.events("--kind", "test.run"), 20)
        (run,) = d.events("--kind", "test.run")
        assert run["data"]["failed"] == 1 and secret in run["data"]["failures"][0]["message"]
        wait_until(lambda: not list(reports.glob("*.junit.xml")), 10)
        assert not list(reports.glob("*.junit.xml")), "a read report is deleted"
        d.cli("pause")
        run_line(sh, f"{sys.executable} -m pytest -q -p no:cacheprovider test_x.py", timeout=60)
        wait_until(lambda: not list(reports.glob("*.junit.xml")), 10)
        assert not list(reports.glob("*.junit.xml")), "a report that cannot be used is deleted unread"
        assert len(d.events("--kind", "test.run")) == 1
    finally:
        sh.close()


def test_a_report_directory_removed_under_the_daemon_is_made_again(tmp_path, daemon_factory):
    """The hooks ask pytest for a report only into a report directory that exists. One removed
    while the daemon runs (a cleaner of /dev/shm, say) is made again, private, and the next test
    run's outcomes are read."""
    import shutil
    import sys

    from agent.paths import StatePaths
    from tests.daemon_harness import TRACECAP

    d = daemon_factory(policy=policy(tmp_path, SHELL_AND_TESTS))
    d.start()
    d.cli("opt-in")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "test_x.py").write_text("def test_ok():\n    pass\n\ndef test_bad():\n    assert 0\n")
    reports = StatePaths.from_env({"TRACECAP_HOME": str(d.home)}).report_dir()
    assert not str(reports).startswith(str(d.home)) and reports.is_dir()
    rc = (f"export TRACECAP_HOME={d.home} TRACECAP_POLICY={d.env['TRACECAP_POLICY']}\n"
          f'eval "$({TRACECAP} shell-init bash)"\n')
    sh = Tmux(tmp_path, "bash", d.home / "run" / "shell", rc_extra=rc)
    try:
        sh.run(f"cd {proj}")
        shutil.rmtree(reports)
        wait_until(reports.is_dir, 30)
        assert reports.is_dir(), "the report directory is made again"
        assert reports.stat().st_mode & 0o777 == 0o700
        run_line(sh, f"{sys.executable} -m pytest -q -p no:cacheprovider test_x.py", timeout=60)
        wait_until(lambda: d.events("--kind", "test.run"), 20)
        (run,) = d.events("--kind", "test.run")
        assert run["data"]["passed"] == 1 and run["data"]["failed"] == 1, run["data"]
    finally:
        sh.close()
