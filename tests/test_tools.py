"""The tools source against real processes: an interactive bash in tmux runs programs, and the
poller must report them (and only them) with the right argv, cwd, duration, CPU time and actor."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.paths import StatePaths
from agent.sources.base import SourceContext
from agent.sources.tools import ProcessWatcher, ToolsSettings, ToolsSource
from agent.sources.tools_sessions import SpoolSessions
from schemas.validate import EventValidator

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class TmuxShell:
    """An interactive shell in a detached tmux session on a private server socket."""

    def __init__(self, tmp: Path, shell: str = "bash --norc --noprofile",
                 env: dict[str, str] | None = None) -> None:
        self.sock = f"tc-tools-{os.getpid()}-{time.monotonic_ns()}"
        self.cwd = tmp
        extra = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", "new-session", "-d",
                        "-x", "120", "-y", "30", "-c", str(tmp), *extra, shell], check=True,
                       timeout=10)
        self.pid = self._pane_pid()
        self._wait_for_shell(shell.split())

    def _wait_for_shell(self, argv: list[str]) -> None:
        """Until the pane's process is the program itself: tmux starts it by way of the user's
        shell (`$SHELL -c '…'`), and with SHELL=bash the name is "bash" before the exec too; a
        baseline taken then sees a non-interactive `bash -c` and never a capture root."""
        import psutil

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if psutil.Process(self.pid).cmdline() == argv:
                    return
            except psutil.Error:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the tmux pane never became {argv}")

    def _pane_pid(self) -> int:
        out = subprocess.run(["tmux", "-L", self.sock, "list-panes", "-F", "#{pane_pid}"],
                             check=True, capture_output=True, text=True, timeout=10).stdout
        return int(out.split()[0])

    def wait_screen(self, pred, timeout: float = 10.0) -> None:
        """Until the pane's text satisfies `pred`: a program that reads the terminal is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "-L", self.sock, "capture-pane", "-p"],
                                    capture_output=True, text=True, timeout=10).stdout
            if pred(screen):
                return
            time.sleep(0.05)
        raise AssertionError(f"the pane never got ready: {screen!r}")

    def send(self, line: str, enter: bool = True) -> None:
        keys = [line, "Enter"] if enter else ["-l", line]
        subprocess.run(["tmux", "-L", self.sock, "send-keys", *keys], check=True, timeout=10)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], timeout=10)


@pytest.fixture
def shell(tmp_path):
    sh = TmuxShell(tmp_path)
    time.sleep(0.3)  # let bash reach its prompt before the baseline sees it
    yield sh
    sh.close()


VALIDATOR = EventValidator()
_SESSION_DIR: list[str] = []


@pytest.fixture(autouse=True)
def _this_session(tmp_path_factory):
    """The watcher sees every interactive shell of the user on the machine, also those of another
    test session running at the same time; tests look only at programs run under this session's
    temporary directories (every shell here starts in its test's tmp_path)."""
    _SESSION_DIR[:] = [str(tmp_path_factory.getbasetemp()) + os.sep]


def ours(data: dict) -> bool:
    return (data.get("cwd") or "").startswith(_SESSION_DIR[0])


def assert_valid(kind: str, data: dict) -> None:
    event = {"v": 1, "seq": 1, "ts": time.time_ns(), "kind": kind, "source": "tools",
             "session": data.get("session"), "data": data}
    assert VALIDATOR.errors(event) == []


def poll_until(watcher: ProcessWatcher, pred, timeout: float = 10.0) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for data in watcher.poll():
            assert_valid("tool.invocation", data)
            if ours(data):
                got.append(data)
        if pred(got):
            return got
        time.sleep(0.05)
    return got


def by_exe(events: list[dict], base: str) -> list[dict]:
    return [e for e in events if os.path.basename(e["exe"]) == base]


def test_records_programs_run_in_an_interactive_shell(shell, tmp_path):
    w = ProcessWatcher(ToolsSettings(interval_s=0.05))
    w.baseline()
    assert shell.pid in w.root_pids
    shell.send("sleep 0.8")
    shell.send(f"{sys.executable} -c 'import time; t=time.process_time()\nwhile time.process_time()-t<0.4: pass'")
    got = poll_until(w, lambda g: by_exe(g, "sleep") and
                     [e for e in g if "python3" in os.path.basename(e["exe"])])
    sleep = by_exe(got, "sleep")
    assert len(sleep) == 1, got
    e = sleep[0]
    assert e["argv"] == ["sleep", "0.8"]
    assert e["cwd"] == str(tmp_path)
    assert e["ppid"] == shell.pid
    assert e["actor"] == "human" and e["via"] == "bash"
    assert 700 <= e["duration_ms"] <= 1500
    assert e["cpu_ms"] < 200
    assert e["exit"] is None
    py = [x for x in got if "python3" in os.path.basename(x["exe"])][0]
    assert py["cpu_ms"] >= 250, py  # a busy loop of 0.4 s CPU, sampled while it ran
    # The shell itself is never an invocation.
    assert not [x for x in got if x["pid"] == shell.pid]


@pytest.mark.skipif(shutil.which("vim") is None, reason="vim is not installed")
def test_programs_run_from_an_editor_are_recorded(tmp_path):
    # vim is the pane's own process: no shell session above it, so vim itself is the root.
    ed = TmuxShell(tmp_path, shell="vim -u NONE -N -n")
    try:
        # vim drops keys typed while it sets the terminal up: send once it has drawn its screen.
        ed.wait_screen(lambda s: any(line.startswith("~") for line in s.splitlines()))
        w = ProcessWatcher(ToolsSettings(interval_s=0.05))
        w.baseline()
        assert ed.pid in w.root_pids
        # A loaded machine can still lose keys vim reads while it asks the terminal about itself:
        # press Enter only once the command line shows the command.
        ed.send(":!sleep 0.5", enter=False)
        ed.wait_screen(lambda s: ":!sleep 0.5" in s)
        ed.send("")
        got = poll_until(w, lambda g: by_exe(g, "sleep"))
    finally:
        ed.close()
    sleep = by_exe(got, "sleep")
    assert sleep and sleep[0]["via"] == "vim" and sleep[0]["actor"] == "human", got
    assert sleep[0]["session"] is None
    assert not [e for e in got if os.path.basename(e["exe"]).startswith("vim")]


def test_deny_list_and_allow_list(shell):
    w = ProcessWatcher(ToolsSettings(interval_s=0.05, deny=("sleep",)))
    w.baseline()
    shell.send("sleep 0.5; cat /dev/null; sleep 0.4 | cat")
    got = poll_until(w, lambda g: len(by_exe(g, "cat")) >= 1, timeout=6)
    time.sleep(0.6)
    got += [e for e in w.poll() if ours(e)]
    assert by_exe(got, "cat"), got
    assert not by_exe(got, "sleep"), got

    w2 = ProcessWatcher(ToolsSettings(interval_s=0.05, allow=("sleep",)))
    w2.baseline()
    shell.send("sleep 0.5 | cat")
    got2 = poll_until(w2, lambda g: by_exe(g, "sleep"), timeout=6)
    time.sleep(0.3)
    got2 += [e for e in w2.poll() if ours(e)]
    assert by_exe(got2, "sleep") and not by_exe(got2, "cat"), got2


def test_programs_under_a_coding_agent_are_marked_agent(shell, tmp_path):
    agent = tmp_path / "claude"
    agent.write_text("#!/bin/bash\nsleep 0.6\n")
    agent.chmod(0o755)
    w = ProcessWatcher(ToolsSettings(interval_s=0.05))
    w.baseline()
    shell.send(f"{agent}; sleep 0.5")
    got = poll_until(w, lambda g: len(by_exe(g, "sleep")) == 2)
    sleeps = sorted(by_exe(got, "sleep"), key=lambda e: e["start"])
    assert [e["actor"] for e in sleeps] == ["agent", "human"], got
    claude = [e for e in got if os.path.basename(e["exe"]) in ("bash", "claude")
              and "claude" in " ".join(e["argv"])]
    assert claude and claude[0]["actor"] == "agent"


def _child_running(parent: int, argv: list[str], timeout: float = 10.0) -> None:
    """Until `parent` has a child running `argv`: the shell has read the line and started it."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(c.cmdline() == argv for c in psutil.Process(parent).children()):
                return
        except psutil.Error:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{argv} never started under pid {parent}")


def test_processes_that_started_before_the_baseline_are_not_recorded(shell):
    shell.send("sleep 1.2")
    # The baseline must come after the program started: on a loaded machine the shell can take
    # longer than any fixed pause to read the line and fork.
    _child_running(shell.pid, ["sleep", "1.2"])
    w = ProcessWatcher(ToolsSettings(interval_s=0.05))
    w.baseline()
    got = poll_until(w, lambda g: False, timeout=1.5)
    assert not by_exe(got, "sleep")


def test_processes_outside_any_shell_session_are_ignored(tmp_path):
    # A program whose parent chain has no interactive shell or editor: tmux's server runs it
    # through `sh -c` (not an interactive session) with no terminal-attached shell above.
    sock = f"tc-tools-bare-{os.getpid()}"
    subprocess.run(["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-c", str(tmp_path),
                    "sleep 30"], check=True, timeout=10)
    try:
        time.sleep(0.3)  # the server has daemonized: its parent is init, not this test
        w = ProcessWatcher(ToolsSettings(interval_s=0.05))
        w.baseline()
        subprocess.run(["tmux", "-L", sock, "new-window", "-c", str(tmp_path), "sleep 0.5; sleep 0.4"],
                       check=True, timeout=10)
        got = poll_until(w, lambda g: False, timeout=1.5)
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], timeout=10, capture_output=True)
    assert not by_exe(got, "sleep"), got


def test_tracecap_commands_are_never_recorded(shell, tmp_path):
    fake = tmp_path / "tracecap"
    fake.write_text(f"#!{sys.executable}\nimport subprocess\nsubprocess.run(['sleep', '0.5'])\n")
    fake.chmod(0o755)
    w = ProcessWatcher(ToolsSettings(interval_s=0.05))
    w.baseline()
    shell.send(f"{fake} note hello; sleep 0.3")
    got = poll_until(w, lambda g: by_exe(g, "sleep"))
    time.sleep(0.3)
    got += [e for e in w.poll() if ours(e)]
    assert [e["argv"] for e in by_exe(got, "sleep")] == [["sleep", "0.3"]], got  # not its child
    assert not [e for e in got if "tracecap" in " ".join(e["argv"])], got


def test_descendants_of_the_agent_itself_are_never_recorded(shell):
    # As if the interactive shell were tracecap's own child: nothing under it is recorded.
    w = ProcessWatcher(ToolsSettings(interval_s=0.05), own_pid=shell.pid)
    w.baseline()
    shell.send("sleep 0.3")
    got = poll_until(w, lambda g: False, timeout=1.2)
    assert not got


def test_invocations_carry_the_shell_hook_session(tmp_path):
    home = tmp_path / "state"
    paths = StatePaths.from_env({"TRACECAP_HOME": str(home)}).ensure()
    tracecap = Path(sys.executable).with_name("tracecap")
    sh = TmuxShell(tmp_path, env={"TRACECAP_HOME": str(home)})
    try:
        sh.send(f'eval "$({tracecap} shell-init bash)"')
        time.sleep(0.8)  # the hook loads; a session's spool file appears at its first command
        w = ProcessWatcher(ToolsSettings(interval_s=0.05),
                           sessions=SpoolSessions(paths.shell_spool))
        w.baseline()
        sh.send("sleep 0.4")
        got = poll_until(w, lambda g: by_exe(g, "sleep"))
    finally:
        sh.close()
    sleep = by_exe(got, "sleep")
    assert sleep, got
    sid = sleep[0]["session"]
    assert sid and sid.startswith(f"{sh.pid}-"), sleep
    records = "".join(p.read_text() for p in paths.shell_spool.glob(f"{sid}.*.rec"))
    assert f"\t{sid}\t" in records and "sleep 0.4" in records


def _ctx(tmp_path, policy: dict, events: list, capturing, set_state=lambda s: None) -> SourceContext:
    def emit(kind, data, *, ts=None, session=None, source=None):
        if ours(data):
            events.append((kind, dict(data), session))

    return SourceContext(name="tools", policy=policy, paths=StatePaths.from_env(
        {"TRACECAP_HOME": str(tmp_path / "state")}), emit=emit, capturing=capturing,
        log=logging.getLogger("test.tools"), set_state=set_state)


def test_source_emits_while_capturing_and_not_while_paused(shell, tmp_path):
    events: list = []
    on = threading.Event()
    on.set()
    states: list[str] = []
    ctx = _ctx(tmp_path, {"tools": {"interval_ms": 50}}, events, on.is_set, states.append)
    src = ToolsSource(ctx)
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(stop,), daemon=True)
    t.start()
    try:
        # Programs started before the source's baseline are never recorded: send only once the
        # source says it took it ("running"), however long that takes on a loaded machine.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "running" not in states:
            time.sleep(0.02)
        assert "running" in states, states
        shell.send("sleep 0.3")
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and not events:
            time.sleep(0.05)
        assert [k for k, _, _ in events] == ["tool.invocation"]
        on.clear()
        ctx.changed.set()
        time.sleep(0.3)
        shell.send("sleep 0.3")
        time.sleep(1.0)
        assert len(events) == 1  # nothing while capture is off
    finally:
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive(), "run() must return promptly once stop is set"


def test_real_daemon_records_tools_joined_to_shell_commands(tmp_path, daemon_factory):
    """`tracecap daemon` with the tools and shell sources, a hooked interactive bash in tmux: the
    tool event carries the same session as the shell command that ran it, and a secret on the
    command line is redacted before `tracecap log` can show it."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[capture]\nsources = ["shell", "tools"]\n[tools]\ninterval_ms = 100\n')
    policy.chmod(0o644)
    home = tmp_path / "home"
    d = daemon_factory(home, policy=policy)
    home.mkdir(parents=True, exist_ok=True)
    d.cli("opt-in")
    d.start()
    # Programs that exist when the tools source takes its baseline are never recorded: wait until
    # status says it has (bounded), so a slow start on a loaded machine cannot hide the program.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (
            d.status()["sources"]["tools"] == "running" and d.status()["sources"]["shell"] == "running"):
        time.sleep(0.1)
    assert d.status()["sources"]["tools"] == "running", d.status()["sources"]
    tracecap = Path(sys.executable).with_name("tracecap")
    token = "ghp_" + "Z9q8Lm2Xv4Rt6Yb1Nc3Kd5Wf7Hs0Jp2Ag9Ue"  # random-looking: a repeated unit is a placeholder
    sh = TmuxShell(tmp_path, env={"TRACECAP_HOME": str(home)})
    try:
        sh.send(f'eval "$({tracecap} shell-init bash)"')
        time.sleep(0.8)
        sh.send(f"{sys.executable} -c 'import time; time.sleep(0.6)' {token}")

        def seen() -> bool:  # both sources journal on their own schedule: wait for each
            return bool(d.events("--kind", "tool.invocation")) and any(
                "time.sleep" in e["data"]["cmd"] for e in d.events("--kind", "shell.start"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not seen():
            time.sleep(0.2)
    finally:
        sh.close()
        assert d.stop() == 0
    tools = [e for e in d.events("--kind", "tool.invocation")
             if "time.sleep(0.6)" in " ".join(e["data"]["argv"])]
    assert len(tools) == 1, d.events()
    ev = tools[0]
    assert ev["source"] == "tools" and ev["data"]["actor"] == "human"
    assert token not in json.dumps(ev)
    starts = [e for e in d.events("--kind", "shell.start") if "time.sleep" in e["data"]["cmd"]]
    assert starts and ev["session"] == starts[0]["session"] == ev["data"]["session"]
    assert ev["session"].startswith(f"{sh.pid}-")
    for e in d.events():
        assert VALIDATOR.errors(e) == [], e
