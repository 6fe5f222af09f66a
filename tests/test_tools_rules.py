"""Table tests for the tools source's pure rules (agent/sources/tools_rules.py)."""
from __future__ import annotations

import pytest

from agent.sources.tools_rules import (
    editor_name,
    executable_selected,
    is_interactive_shell,
    is_own_process,
    is_shell_fork,
    last_pid_from_loadavg,
    nearest_root,
    parse_proc_stat,
    pid_span,
    proc_stat_tty,
)


@pytest.mark.parametrize("name, argv, tty, expected", [
    ("bash", ["bash"], True, True),
    ("bash", ["-bash"], True, True),
    ("zsh", ["-zsh"], True, True),
    ("fish", ["fish"], True, True),
    ("bash", ["bash", "--norc", "--noprofile"], True, True),
    ("bash", ["bash", "-l"], True, True),
    ("bash", ["bash", "-i", "-c", "ls"], True, True),  # -i forces an interactive shell
    ("bash", ["bash"], False, False),  # no terminal: a pipe-driven shell
    ("bash", ["bash", "-c", "make"], True, False),
    ("bash", ["bash", "-lc", "make"], True, False),
    ("zsh", ["zsh", "build.sh"], True, False),
    ("fish", ["fish", "--command", "ls"], True, False),
    ("sh", ["sh"], True, False),  # sh is a script interpreter here, not a session root
    ("python3", ["python3"], True, False),
])
def test_is_interactive_shell(name, argv, tty, expected):
    assert is_interactive_shell(name, argv, tty) is expected


@pytest.mark.parametrize("name, argv, expected", [
    ("code", ["/usr/share/code/code", "."], "code"),
    ("nvim", ["nvim", "x.py"], "nvim"),
    ("vim", ["vim"], "vim"),
    ("emacs", ["emacs", "-nw"], "emacs"),
    ("java", ["/opt/idea/jbr/bin/java", "-Didea.platform.prefix=Idea", "com.intellij.idea.Main"],
     "jetbrains"),
    ("java", ["java", "-jar", "app.jar"], None),
    ("pycharm", ["pycharm"], "pycharm"),
    ("make", ["make"], None),
    ("codex", ["codex"], None),
])
def test_editor_name(name, argv, expected):
    assert editor_name(name, argv) == expected


@pytest.mark.parametrize("pid, argv, parents, expected", [
    (50, ["tracecap", "daemon"], {}, True),
    (50, ["/usr/bin/python3", "-m", "agent.cli", "daemon"], {}, True),
    (50, ["/usr/bin/python3", "/home/u/.local/bin/tracecap", "note", "x"], {}, True),
    (50, ["git", "status"], {50: 10, 10: 1}, True),  # descends from the running agent (pid 10)
    (50, ["git", "status"], {50: 20, 20: 1}, False),
    (50, ["python3", "-m", "pytest"], {50: 20}, False),
    (50, ["systemctl", "--user"], {50: 30, 30: 1}, True),  # child of a `tracecap` command (30)
])
def test_is_own_process(pid, argv, parents, expected):
    assert is_own_process(pid, argv, {10, 30}, parents) is expected


@pytest.mark.parametrize("exe, name, allow, deny, expected", [
    ("/usr/bin/make", "make", [], [], True),
    ("/usr/bin/make", "make", [], ["make"], False),
    ("/usr/bin/make", "make", ["make", "cargo"], [], True),
    ("/usr/bin/ls", "ls", ["make", "cargo"], [], False),
    ("/usr/bin/python3.11", "python3.11", ["python3*"], [], True),
    ("/usr/bin/ssh", "ssh", ["*"], ["ssh"], False),  # deny wins
    ("/opt/secret/bin/tool", "tool", [], ["/opt/secret/*"], False),
    ("/usr/bin/tool", "tool", [], ["/opt/secret/*"], True),
    ("", "MAKE", ["make"], [], True),  # case-insensitive names, exe unknown
])
def test_executable_selected(exe, name, allow, deny, expected):
    assert executable_selected(exe, name, allow, deny) is expected


@pytest.mark.parametrize("name, argv, pname, pargv, expected", [
    ("bash", ["bash"], "bash", ["bash"], True),
    ("bash", ["bash"], "zsh", ["zsh"], False),
    ("bash", ["bash", "x.sh"], "bash", ["bash"], False),
    ("make", ["make"], "bash", ["bash"], False),
])
def test_is_shell_fork(name, argv, pname, pargv, expected):
    assert is_shell_fork(name, argv, pname, pargv) is expected


@pytest.mark.parametrize("pid, parents, roots, expected", [
    (5, {5: 4, 4: 3, 3: 1}, {3: "sh"}, 3),
    (5, {5: 4, 4: 3, 3: 1}, {3: "sh", 4: "vim"}, 4),  # the nearest wins
    (5, {5: 4, 4: 3, 3: 1}, {5: "self"}, None),  # a process is not its own root
    (5, {5: 4}, {9: "other"}, None),
    (5, {5: 5}, {}, None),  # a cycle in a stale table ends at the limit
])
def test_nearest_root(pid, parents, roots, expected):
    assert nearest_root(pid, parents, roots) == expected


_STAT = (b"4242 (%s) %s 100 4242 100 34816 4242 4194304 120 0 0 0 "
         b"%d %d 0 0 20 0 1 0 %d 2400000 250 18446744073709551615")


@pytest.mark.parametrize("raw, expected", [
    (_STAT % (b"sleep", b"S", 3, 4, 987654), ("sleep", "S", 7, 987654)),
    (_STAT % (b"my (odd) name", b"R", 10, 0, 5), ("my (odd) name", "R", 10, 5)),
    (_STAT % (b"make", b"Z", 0, 0, 1), ("make", "Z", 0, 1)),
    (b"4242 (sleep) S 1 2", None),  # truncated
    (b"garbage", None),
])
def test_parse_proc_stat(raw, expected):
    assert parse_proc_stat(raw) == expected


@pytest.mark.parametrize("text, expected", [
    ("0.52 0.58 0.59 2/1214 48211\n", 48211),
    ("0.52 0.58 0.59 2/1214", None),
    ("", None),
])
def test_last_pid_from_loadavg(text, expected):
    assert last_pid_from_loadavg(text) == expected


@pytest.mark.parametrize("prev, last, pid_max, expected", [
    (100, 100, 32768, []),
    (100, 103, 32768, [101, 102, 103]),
    (32766, 301, 32768, [32767, 300, 301]),  # wrapped
])
def test_pid_span(prev, last, pid_max, expected):
    assert pid_span(prev, last, pid_max) == expected


@pytest.mark.parametrize("raw, expected", [
    (b"77 (bash) S 76 77 77 34817 77 4194560 1", 34817),  # /dev/pts/1
    (b"77 (a) b) S 76 77 77 0 -1 4194560 1", 0),  # no terminal; comm with ") " in it
    (b"77 (bash)", None),
])
def test_proc_stat_tty(raw, expected):
    assert proc_stat_tty(raw) == expected
