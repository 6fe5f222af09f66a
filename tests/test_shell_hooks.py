"""Real bash, zsh and fish in tmux with the hook that `tracecap shell-init` prints.

Each test drives an interactive shell by keystrokes and reads the spool the hook wrote, parsed with
the reader's own `parse_record`, so the hook and the reader are tested against each other.
"""
from __future__ import annotations

import os
import sys
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agent.commands.shell import render_hook
from agent.sources.shell import End, Start, parse_segment

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
PROMPT = "READY>"


class Tmux:
    def __init__(self, tmp: Path, shell: str, spool: Path, *, rc_extra: str = "",
                 spool_max_bytes: int = 1 << 20, ignore_space: bool = True,
                 reports: Path | None = None):
        if shutil.which(shell) is None:
            pytest.skip(f"{shell} is not installed")
        self.sock = f"tc-{uuid.uuid4().hex[:8]}"
        self.shell = shell
        hook = tmp / f"hook.{shell}"
        hook.write_text(render_hook(shell, spool=str(spool), ignore_space=ignore_space,
                                    pytest_junit=True, spool_max_bytes=spool_max_bytes,
                                    **({} if reports is None else {"reports": str(reports)})))
        env = f"env -i HOME={tmp} TERM=xterm-256color PATH={os.environ['PATH']} LANG=C.UTF-8 "
        if shell == "bash":
            rc = tmp / "bashrc"
            rc.write_text(f"PS1='{PROMPT} '\nHISTCONTROL=ignoreboth\n{rc_extra}\nsource {hook}\n")
            cmd = f"{env} bash --noprofile --rcfile {rc} -i"
        elif shell == "zsh":
            (tmp / ".zshrc").write_text(f"PS1='{PROMPT} '\nsetopt histignorespace\n{rc_extra}\n"
                                        f"source {hook}\n")
            cmd = f"{env} ZDOTDIR={tmp} zsh -i"
        else:
            conf = tmp / "config.fish"
            conf.write_text(f"function fish_prompt; echo -n '{PROMPT} '; end\n"
                            f"function fish_greeting; end\n{rc_extra}\nsource {hook}\n")
            cmd = f"{env} fish --no-config -C 'source {conf}'"
        self._tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "50", "-c", str(tmp), cmd)
        self.wait_for(lambda: self.screen().rstrip().endswith(PROMPT))

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "t")

    def wait_for(self, cond, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; screen:\n{self.screen()}")

    def run(self, text: str, *, wait: bool = True) -> None:
        before = self.screen().count(PROMPT)
        self._tmux("send-keys", "-t", "t", "-l", text)
        self._tmux("send-keys", "-t", "t", "Enter")
        if wait:
            self.wait_for(lambda: self.screen().count(PROMPT) > before)

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def descendants(self) -> list[list[str]]:
        """The command lines of the processes under the pane's shell."""
        import psutil

        pane = int(self._tmux("list-panes", "-t", "t", "-F", "#{pane_pid}").split()[0])
        out = []
        try:
            for p in psutil.Process(pane).children(recursive=True):
                try:
                    out.append(p.cmdline())
                except psutil.Error:  # ended while we looked
                    pass
        except psutil.Error:
            pass
        return out

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=10)


def records(spool: Path) -> list:
    """Every complete record in the spool, in write order; each must parse."""
    out = []
    for path in sorted(spool.glob("*.rec"), key=lambda p: (p.name.split(".")[0], int(p.name.split(".")[1]))):
        recs, _used, malformed, _header = parse_segment(path.read_bytes(), None)
        assert malformed == 0, path.read_bytes()
        out.extend(recs)
    return out


def commands(spool: Path) -> list[tuple[str, int | None]]:
    """(cmd, exit) per command in order, pairing starts and ends."""
    starts: dict = {}
    result = []
    for rec in records(spool):
        if isinstance(rec, Start):
            starts[(rec.sid, rec.n)] = rec
        elif isinstance(rec, End):
            result.append((starts.pop((rec.sid, rec.n)).cmd, rec.exit))
    return result


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir(mode=0o700)  # as the daemon makes it: the hooks write into nothing else
    return d


@pytest.fixture
def shells(request):
    made: list[Tmux] = []

    def make(*args, **kw) -> Tmux:
        t = Tmux(*args, **kw)
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()


SHELLS = ["bash", "zsh", "fish"]


@pytest.mark.parametrize("shell", SHELLS)
def test_commands_are_recorded_exactly_with_exit_codes(shell, tmp_path, spool, shells):
    sh = shells(tmp_path, shell, spool)
    sh.run("echo 'it''s' \"quoted\" héllo ✓")
    sh.run("false")
    sh.run("printf '%s\\n' 'line one\nline two'")
    sh.run("echo a  b\\\\c")
    sh.run(" echo hidden-by-space")
    sh.run("sleep 30 &")
    sh.run("ls /definitely/missing")
    cmds = commands(spool)
    assert cmds == [
        ("echo 'it''s' \"quoted\" héllo ✓", 0),
        ("false", 1),
        ("printf '%s\\n' 'line one\nline two'", 0),
        ("echo a  b\\\\c", 0),
        ("sleep 30 &", 0),
        ("ls /definitely/missing", 2),
    ]
    starts = [r for r in records(spool) if isinstance(r, Start)]
    assert {r.shell for r in starts} == {shell}
    assert {r.cwd for r in starts} == {str(tmp_path)}
    assert all(r.interactive for r in starts)
    assert len({r.sid for r in starts}) == 1
    assert "hidden-by-space" not in "".join(p.read_text() for p in spool.glob("*.rec"))


@pytest.mark.parametrize("shell", SHELLS)
def test_ctrl_c_records_interrupted_command(shell, tmp_path, spool, shells):
    sh = shells(tmp_path, shell, spool)
    sh.run("sleep 30", wait=False)
    sh.wait_for(lambda: any(isinstance(r, Start) for r in records(spool)))
    # Ctrl-C for the program, not for the hook still writing its record: wait (bounded) until the
    # shell has started it, then let it run a moment.
    sh.wait_for(lambda: ["sleep", "30"] in sh.descendants())
    time.sleep(0.3)
    before = sh.screen().count(PROMPT)
    sh.keys("C-c")
    sh.wait_for(lambda: sh.screen().count(PROMPT) > before)
    ends = [r for r in records(spool) if isinstance(r, End)]
    assert len(ends) == 1 and ends[0].exit in (130, 2)
    start = next(r for r in records(spool) if isinstance(r, Start))
    if start.t_ns is not None:
        assert ends[0].t_ns - start.t_ns >= 250_000_000
    else:
        assert ends[0].duration_ms >= 250


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_status_and_last_argument_are_preserved(shell, tmp_path, spool, shells):
    sh = shells(tmp_path, shell, spool)
    sh.run("ls /definitely/missing 2>/dev/null; echo lastword")
    sh.run("echo \"S=$? L=$_\"")
    sh.run("(exit 7)")
    sh.run("echo \"S=$?\"")
    screen = sh.screen()
    assert "S=0 L=lastword" in screen
    assert "S=7" in screen


def test_fish_status_is_preserved(tmp_path, spool, shells):
    sh = shells(tmp_path, "fish", spool)
    sh.run("false")
    sh.run("echo S=$status")
    assert "S=1" in sh.screen()


@pytest.mark.parametrize("shell", SHELLS)
def test_hook_prints_nothing(shell, tmp_path, spool, shells):
    sh = shells(tmp_path, shell, spool)
    sh.run("true")
    sh.run("true")
    lines = [ln.strip() for ln in sh.screen().splitlines() if ln.strip()]
    assert lines == [f"{PROMPT} true", f"{PROMPT} true", PROMPT]


@pytest.mark.parametrize("shell", SHELLS)
def test_missing_spool_directory_is_silent(shell, tmp_path, shells):
    missing = tmp_path / "no" / "spool"
    sh = shells(tmp_path, shell, missing)
    sh.run("echo one")
    sh.run("false")
    lines = [ln.strip() for ln in sh.screen().splitlines() if ln.strip()]
    assert lines == [f"{PROMPT} echo one", "one", f"{PROMPT} false", PROMPT]
    assert not missing.exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_nested_shell_gets_its_own_session(shell, tmp_path, spool, shells):
    sh = shells(tmp_path, shell, spool)
    sh.run("echo outer")
    if shell == "bash":
        sh.run(f"bash --noprofile --rcfile {tmp_path / 'bashrc'} -i")
    elif shell == "zsh":
        sh.run("zsh -i")
    else:
        sh.run(f"fish --no-config -C 'source {tmp_path / 'config.fish'}'")
    sh.run("echo inner")
    sh.run("exit")
    sh.run("echo outer-again")
    starts = [r for r in records(spool) if isinstance(r, Start)]
    by_cmd = {r.cmd: r for r in starts}
    assert by_cmd["echo inner"].sid != by_cmd["echo outer"].sid
    assert by_cmd["echo outer-again"].sid == by_cmd["echo outer"].sid
    assert by_cmd["echo inner"].pid != by_cmd["echo outer"].pid


@pytest.mark.parametrize("array", [False, True])
def test_bash_existing_prompt_command_keeps_working(array, tmp_path, spool, shells):
    rc = ("PROMPT_COMMAND=('echo \"$?\" > " + str(tmp_path / "st") + "' '__seen=$((__seen+1))')"
          if array else
          "PROMPT_COMMAND='echo \"$?\" > " + str(tmp_path / "st") + "; __seen=$((__seen+1))'")
    sh = shells(tmp_path, "bash", spool, rc_extra=rc)
    sh.run("echo $__seen")
    sh.run("(exit 3)")
    assert (tmp_path / "st").read_text().strip() == "3"  # the user's prompt command saw $? intact
    sh.run("echo $__seen")
    assert [c for c, _ in commands(spool)] == ["echo $__seen", "(exit 3)", "echo $__seen"]
    assert "\n3\n" in sh.screen() or sh.screen().count("\n3") >= 1


def test_zsh_existing_hooks_keep_working(tmp_path, spool, shells):
    rc = ("mine_pre(){ print -r -- \"$?\" > " + str(tmp_path / "st") + "; }\n"
          "precmd_functions=(mine_pre)\npreexec_functions=(mine_exec)\n"
          "mine_exec(){ __ran=$1; }\n")
    sh = shells(tmp_path, "zsh", spool, rc_extra=rc)
    sh.run("(exit 4)")
    assert (tmp_path / "st").read_text().strip() == "4"
    sh.run("echo ran=$__ran")
    assert "ran=echo ran=$__ran" in sh.screen()
    assert commands(spool) == [("(exit 4)", 4), ("echo ran=$__ran", 0)]


@pytest.mark.parametrize("shell", SHELLS)
def test_pytest_addopts_is_appended_and_restored(shell, tmp_path, spool, shells):
    rc = {"fish": "set -gx PYTEST_ADDOPTS -q", "bash": "export PYTEST_ADDOPTS=-q",
          "zsh": "export PYTEST_ADDOPTS=-q"}[shell]
    sh = shells(tmp_path, shell, spool, rc_extra=rc)
    sh.run("echo \"during=[$PYTEST_ADDOPTS]\" test")
    sh.run("echo \"after=[$PYTEST_ADDOPTS]\"")
    screen = sh.screen()
    first = next(r for r in records(spool) if isinstance(r, Start))
    # the report of command n is <sid>.<n>.junit.xml, where the reader looks for it, in the
    # xunit1 family, whose `file` attribute gives each test's node id
    assert (f"during=[-q '--junitxml={spool}/{first.sid}.{first.n}.junit.xml' "
            "-o junit_family=xunit1] test") in screen
    assert "after=[-q]" in screen


@pytest.mark.parametrize("shell", SHELLS)
def test_spool_is_bounded_and_drops_are_recorded(shell, tmp_path, spool, shells):
    # 4 segments of 4 KiB: ~60 records each; 300 commands overflow it with nobody reading.
    # Some commands are long (fish measures those on their own) and the cwd changes twice (fish
    # charges short commands by the cwd's length).
    sh = shells(tmp_path, shell, spool, spool_max_bytes=16384)
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    cwd_of = {"echo done": str(tmp_path)}  # each command's text: the cwd it ran in
    for i in range(150):
        cmd = f"echo {'x' * (300 if i % 7 == 0 else 100)}{i} > /dev/null"
        if i in (60, 120):
            cmd = "cd " + ("d" * 120 if i == 60 else "..")
        cwd_of[cmd] = str(deep if 60 < i <= 120 else tmp_path)
        sh.run(cmd, wait=(i % 25 == 24))
    sh.run("echo done")
    # A prompt on the screen may be an earlier queued command's: wait for the last one's end record.
    sh.wait_for(lambda: ("echo done", 0) in commands(spool))
    total = sum(p.stat().st_size for p in spool.glob("*.rec"))
    assert total <= 16384 + 2048
    recs = records(spool)
    dropped = max([r.count for r in recs if type(r).__name__ == "Dropped"], default=0)
    starts = [r for r in recs if isinstance(r, Start)]
    kept = len([r for r in recs if isinstance(r, (Start, End))])
    assert dropped > 0
    assert dropped + kept == 2 * 151  # every record is either still there or counted as dropped
    assert starts[-1].cmd == "echo done"
    assert [r.n for r in starts] == sorted({r.n for r in starts})  # numbers never repeat
    assert [r.cwd for r in starts] == [cwd_of[r.cmd] for r in starts]


def test_bash_history_timestamps_do_not_reach_the_record(tmp_path, spool, shells):
    sh = shells(tmp_path, "bash", spool, rc_extra="HISTTIMEFORMAT='%F %T '")
    sh.run("echo stamped; true")
    sh.run("history 1 | grep -c ' echo '")  # the user's own history still has its timestamps
    assert commands(spool)[0] == ("echo stamped; true", 0)
    assert "1\n" in sh.screen()


def test_bash_later_pytest_in_a_line_gets_its_report(tmp_path, spool, shells):
    sub = tmp_path / "proj"
    sub.mkdir()
    (sub / "test_one.py").write_text("def test_ok():\n    pass\n\ndef test_bad():\n    assert 0\n")
    sh = shells(tmp_path, "bash", spool)
    sh.run(f"cd {sub} && {sys.executable} -m pytest -q -p no:cacheprovider test_one.py; cd {tmp_path}")
    sh.run("echo \"after=[${PYTEST_ADDOPTS-unset}]\"")
    sid = next(r for r in records(spool) if isinstance(r, Start)).sid
    report = spool / f"{sid}.1.junit.xml"
    assert report.exists(), sh.screen()
    assert 'failures="1"' in report.read_text()
    assert "after=[unset]" in sh.screen()


def test_bash_closed_descriptor_is_silent_and_capture_goes_on(tmp_path, spool, shells):
    sh = shells(tmp_path, "bash", spool)
    sh.run("echo one")
    sh.run("exec {__tc_fd}>&-")
    sh.run("echo two")
    sh.run("echo three")
    lines = [ln.strip() for ln in sh.screen().splitlines() if ln.strip()]
    assert lines == [f"{PROMPT} echo one", "one", f"{PROMPT} exec {{__tc_fd}}>&-",
                     f"{PROMPT} echo two", "two", f"{PROMPT} echo three", "three", PROMPT]
    assert ("echo three", 0) in commands(spool)


@pytest.mark.parametrize("rc", ["shopt -u promptvars", "PS0_LATER"])
def test_bash_arms_without_promptvars_and_after_ps0_is_replaced(rc, tmp_path, spool, shells):
    sh = shells(tmp_path, "bash", spool, rc_extra=rc if rc != "PS0_LATER" else "")
    if rc == "PS0_LATER":
        sh.run("PS0='[ps0]'")
    sh.run("echo one")
    sh.run("echo two")
    screen = sh.screen()
    assert "${" not in screen and "__tc" not in screen
    if rc == "PS0_LATER":
        assert "[ps0]one" in screen.replace("\n", "")  # the user's PS0 still prints
    assert [c for c, _ in commands(spool)][-2:] == ["echo one", "echo two"]


def test_bash_children_do_not_see_the_spool_descriptor_where_fdflags_exists(tmp_path, spool,
                                                                            shells):
    loadable = any(Path(d, "fdflags").exists() for d in ("/usr/lib/bash", "/usr/local/lib/bash",
                                                         "/usr/lib64/bash"))
    sh = shells(tmp_path, "bash", spool)
    sh.run("echo warm")
    sh.run("ls -l /proc/self/fd/ > fds.txt")
    leaked = str(spool) in (tmp_path / "fds.txt").read_text()
    assert leaked is not loadable


def test_zsh_children_do_not_see_the_spool_descriptor(tmp_path, spool, shells):
    sh = shells(tmp_path, "zsh", spool)
    sh.run("echo warm")
    sh.run("ls -l /proc/self/fd/ > fds.txt")
    assert str(spool) not in (tmp_path / "fds.txt").read_text()
    assert commands(spool)[:2] == [("echo warm", 0), ("ls -l /proc/self/fd/ > fds.txt", 0)]
