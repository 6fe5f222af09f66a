"""Who did it: a human at a terminal or a coding agent.

Takes a process's ancestry (names and command lines, nearest first) and whether the shell is
interactive; gives "human" or "agent". Pure: the psutil walk is in `ancestry()`, the rule in
`classify()`. The rule: a process that descends from a known coding agent is "agent"; so is a
non-interactive shell (scripts and agents drive shells without a terminal); everything else "human".
A process "is" an agent by its name, its program, or, when its program is an interpreter (node,
python, npx, ...), the script or package it runs; never by an ordinary argument, so `vim
notes/claude.md` stays human.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

DEFAULT_AGENTS = (
    "claude", "codex", "aider", "cursor-agent", "copilot", "goose", "gemini", "opencode",
    "amp", "cline", "devin", "openhands", "continue",
)


# Programs that run another program named by an argument: the agent is then that argument.
INTERPRETERS = frozenset({
    "node", "nodejs", "deno", "bun", "python", "python3", "pypy", "pypy3", "ruby", "perl",
    "npx", "pnpx", "bunx", "uvx", "pipx", "uv", "env",
})
_SUFFIXES = (".js", ".mjs", ".cjs", ".ts", ".py", ".exe")


def _strip(base: str) -> Iterable[str]:
    yield base
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            yield base[: -len(suffix)]


def _interpreter(base: str) -> bool:
    return base.rstrip("0123456789.") in INTERPRETERS or base in INTERPRETERS


def _names(name: str, cmdline: Sequence[str]) -> Iterable[str]:
    """The names a process runs under: its own name, its program, and for an interpreter the
    script or package it runs. Ordinary arguments (`make claude`, `vim notes/claude/x.md`) are
    data, not programs, and never name an agent."""
    yield name.lower()
    if not cmdline:
        return
    prog = os.path.basename(cmdline[0].rstrip("/")).lower()
    yield from _strip(prog)
    if not _interpreter(prog):
        return
    args = list(cmdline[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-m", "exec", "run", "x") and i + 1 < len(args):  # python -m aider, uv run x
            i += 1
            yield from _strip(args[i].lower().split(".")[0])
            continue
        if arg.startswith("-") or ("=" in arg and prog == "env"):
            i += 1
            continue
        base = os.path.basename(arg.rstrip("/")).lower()
        yield from _strip(base)
        # A package path such as node_modules/@anthropic-ai/claude-code/cli.js names the agent in
        # a directory rather than the file.
        yield from arg.lower().split("/")[-4:-1]
        if _interpreter(base):  # env node script.js, npx node ...: look one further
            prog = base
            i += 1
            continue
        return


def is_agent_process(name: str, cmdline: Sequence[str], agents: Sequence[str]) -> bool:
    wanted = {a.lower() for a in agents}
    for n in _names(name, cmdline):
        if n in wanted or any(n.startswith(a + "-") or n == a + "-code" for a in wanted):
            return True
    return False


def classify(chain: Sequence[tuple[str, Sequence[str]]], *, interactive: bool,
             agents: Sequence[str] = DEFAULT_AGENTS) -> str:
    """`chain`: (name, cmdline) of the process and its ancestors, nearest first."""
    if any(is_agent_process(name, cmd, agents) for name, cmd in chain):
        return "agent"
    return "human" if interactive else "agent"


def ancestry(pid: int, limit: int = 32) -> list[tuple[str, list[str]]]:
    """(name, cmdline) of pid and its ancestors, nearest first; stops quietly at vanished processes."""
    import psutil

    chain: list[tuple[str, list[str]]] = []
    try:
        proc: psutil.Process | None = psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return chain
    while proc is not None and len(chain) < limit:
        try:
            chain.append((proc.name(), proc.cmdline()))
            proc = proc.parent()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            break
    return chain
