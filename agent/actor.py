"""Who did it: a human at a terminal or a coding agent.

Takes a process's ancestry (names and command lines, nearest first) and whether the shell is
interactive; gives "human" or "agent". Pure: the psutil walk is in `ancestry()`, the rule in
`classify()`. The rule: a process that descends from a known coding agent is "agent"; so is a
non-interactive shell (scripts and agents drive shells without a terminal); everything else "human".
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

DEFAULT_AGENTS = (
    "claude", "codex", "aider", "cursor-agent", "copilot", "goose", "gemini", "opencode",
    "amp", "cline", "devin", "openhands", "continue",
)


def _names(name: str, cmdline: Sequence[str]) -> Iterable[str]:
    yield name.lower()
    # Agents are often node or python scripts: `node /usr/lib/node_modules/@x/claude/cli.js`.
    for arg in cmdline[:3]:
        base = os.path.basename(arg.rstrip("/")).lower()
        yield base
        for suffix in (".js", ".mjs", ".py", ".exe"):
            if base.endswith(suffix):
                yield base[: -len(suffix)]
        # A package path such as node_modules/@anthropic-ai/claude-code/cli.js names the agent in a
        # directory rather than the file.
        for part in arg.lower().split("/")[-4:-1]:
            yield part


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
