"""The rules of the tools source, as pure functions over names and command lines.

Takes what the process table says about a process (name, argv, exe, whether it has a terminal) and
the policy's lists; gives decisions: is this an interactive shell (a capture root), an editor (a
capture root), one of tracecap's own processes, an executable the policy allows, a bare shell fork
that never ran anything. Promise: no I/O and no psutil here, so each rule is a table-driven test.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Container, Mapping, Sequence

# Shells whose interactive sessions are capture roots. sh/dash are script interpreters in practice.
ROOT_SHELLS = frozenset({"bash", "zsh", "fish"})
SHELLS = ROOT_SHELLS | frozenset({"sh", "dash", "ksh", "mksh", "tcsh", "csh"})

# Editor executables by process name. VS Code and its forks run as Electron binaries named after the
# product; JetBrains IDEs run as their launcher name or as `java` with an idea.* class path.
EDITOR_NAMES = frozenset({
    "code", "code-insiders", "codium", "vscodium", "code-oss", "cursor", "windsurf",
    "idea", "pycharm", "webstorm", "goland", "clion", "rider", "phpstorm", "rubymine",
    "datagrip", "rustrover", "studio", "fleet",
    "vim", "nvim", "vi", "gvim", "view", "vimx",
    "emacs", "emacs-nox", "emacs-gtk", "emacs-x11", "emacs-lucid", "emacsclient",
})
_JETBRAINS_MARKERS = ("jetbrains", "idea.platform", "com.intellij.idea.main")


def _base(path: str) -> str:
    return os.path.basename(path.rstrip("/")).lower()


def is_interactive_shell(name: str, argv: Sequence[str], has_tty: bool) -> bool:
    """A bash/zsh/fish with a terminal that is not running a script or a `-c` string."""
    if name.lower().lstrip("-") not in ROOT_SHELLS or not has_tty:
        return False
    args = list(argv[1:])
    if "-i" in args or "--interactive" in args:
        return True
    for arg in args:
        if arg == "-c" or arg == "--command" or (arg.startswith("-") and not arg.startswith("--")
                                                   and "c" in arg[1:] and arg[1:].isalpha()):
            return False
        if not arg.startswith("-"):
            return False  # `bash script.sh`: a script, not a session
    return True


def editor_name(name: str, argv: Sequence[str]) -> str | None:
    """The editor a process is, by its name (or a JetBrains JVM's command line), else None."""
    low = name.lower()
    if low in EDITOR_NAMES:
        return low
    if argv and _base(argv[0]) in EDITOR_NAMES:
        return _base(argv[0])
    if low == "java" and any(m in " ".join(argv).lower() for m in _JETBRAINS_MARKERS):
        return "jetbrains"
    return None


def is_own_process(pid: int, argv: Sequence[str], own_pids: Container[int],
                   parents: Mapping[int, int], limit: int = 64) -> bool:
    """tracecap itself, any `tracecap ...` command, or a descendant of one of them (`own_pids`:
    the running agent and the tracecap commands seen so far)."""
    if argv:
        if _base(argv[0]) == "tracecap":
            return True
        if len(argv) >= 3 and argv[1] == "-m" and argv[2].split(".")[0] == "agent":
            return True
        if len(argv) >= 2 and _base(argv[1]) == "tracecap":  # python /usr/bin/tracecap ...
            return True
    p, steps = pid, 0
    while p and steps < limit:
        if p in own_pids:
            return True
        p, steps = parents.get(p, 0), steps + 1
    return False


def _matches(patterns: Sequence[str], exe: str, name: str) -> bool:
    base = _base(exe) if exe else ""
    for pat in patterns:
        if "/" in pat or os.sep in pat:
            if exe and fnmatch.fnmatchcase(exe, os.path.expanduser(pat)):
                return True
        elif fnmatch.fnmatchcase(base, pat.lower()) or fnmatch.fnmatchcase(name.lower(), pat.lower()):
            return True
    return False


def executable_selected(exe: str, name: str, allow: Sequence[str], deny: Sequence[str]) -> bool:
    """Policy `tools.allow` / `tools.deny`: entries are basenames or paths, shell globs allowed.
    Deny wins; an empty allow list allows everything."""
    if deny and _matches(deny, exe, name):
        return False
    return not allow or _matches(allow, exe, name)


def is_shell_fork(name: str, argv: Sequence[str], parent_name: str,
                  parent_argv: Sequence[str]) -> bool:
    """A shell's own fork (subshell, pipeline stage, `$(...)`) that never exec'd: the shell itself."""
    return (name.lower() in SHELLS and name.lower() == parent_name.lower()
            and list(argv) == list(parent_argv))


def nearest_root(pid: int, parents: Mapping[int, int], roots: Mapping[int, object],
                 limit: int = 64) -> int | None:
    """The closest strict ancestor of `pid` that is a capture root, walking the ppid map."""
    p, steps = parents.get(pid, 0), 0
    while p and steps < limit:
        if p in roots:
            return p
        p, steps = parents.get(p, 0), steps + 1
    return None


def parse_proc_stat(raw: bytes) -> tuple[str, str, int, int] | None:
    """Linux `/proc/<pid>/stat` → (comm, state, utime + stime in clock ticks, starttime in ticks).
    `comm` may itself hold spaces and parentheses, so it ends at the last ')'."""
    left, right = raw.find(b"("), raw.rfind(b")")
    if left < 0 or right < left:
        return None
    fields = raw[right + 2:].split()
    if len(fields) < 20:
        return None
    try:
        return (raw[left + 1:right].decode("utf-8", "replace"), fields[0].decode("ascii", "replace"),
                int(fields[11]) + int(fields[12]), int(fields[19]))
    except ValueError:
        return None


def last_pid_from_loadavg(text: str) -> int | None:
    """Linux `/proc/loadavg` ends with the most recently allocated pid (processes and threads)."""
    parts = text.split()
    try:
        return int(parts[4]) if len(parts) >= 5 else None
    except ValueError:
        return None


def pid_span(prev: int, last: int, pid_max: int) -> list[int]:
    """The pids allocated after `prev` up to `last`, wrapping at `pid_max` (Linux allocates pids in
    increasing order and wraps to 300 after pid_max - 1)."""
    if last == prev:
        return []
    if last > prev:
        return list(range(prev + 1, last + 1))
    return list(range(prev + 1, pid_max)) + list(range(300, last + 1))


def proc_stat_tty(raw: bytes) -> int | None:
    """Linux `/proc/<pid>/stat` → the controlling terminal's device number (0: none)."""
    right = raw.rfind(b")")
    fields = raw[right + 2:].split() if right >= 0 else []
    try:
        return int(fields[4]) if len(fields) > 4 else None
    except ValueError:
        return None
