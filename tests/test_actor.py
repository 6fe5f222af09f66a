"""Human or agent (agent/actor.py): the rule as a table, and the ancestry walk on real processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

import pytest

from agent.actor import DEFAULT_AGENTS, ancestry, classify, is_agent_process

AGENTS = ("claude", "codex", "aider", "cursor-agent", "copilot", "goose", "gemini", "opencode")


@pytest.mark.parametrize("name, cmdline, expected", [
    ("claude", ["claude"], True),
    ("node", ["node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"], True),
    ("node", ["node", "/home/u/.npm/bin/codex"], True),
    ("python3", ["python3", "/home/u/.local/bin/aider", "--model", "x"], True),
    ("cursor-agent", ["cursor-agent"], True),
    ("goose", ["goose", "session"], True),
    ("gemini", ["gemini"], True),
    ("opencode", ["opencode"], True),
    ("node", ["node", "server.js"], False),
    ("bash", ["bash"], False),
    ("make", ["make", "claude"], False),  # an argument past the first three is not a program
    ("claudette", ["claudette"], False),  # a prefix is not a match
    ("vim", ["vim", "notes/claude/plan.md"], False),
])
def test_is_agent_process(name, cmdline, expected):
    assert is_agent_process(name, cmdline, AGENTS) is expected


@pytest.mark.parametrize("chain, interactive, agents, expected", [
    ([("make", ["make"]), ("bash", ["bash"])], True, AGENTS, "human"),
    ([("make", ["make"]), ("bash", ["bash"])], False, AGENTS, "agent"),  # scripted shell
    ([("make", ["make"]), ("bash", ["bash", "-c", "make"]), ("claude", ["claude"]),
      ("bash", ["bash"])], True, AGENTS, "agent"),
    ([("pytest", ["pytest"]), ("mybot", ["mybot"])], True, AGENTS, "human"),
    ([("pytest", ["pytest"]), ("mybot", ["mybot"])], True, ("mybot",), "agent"),  # policy list
    ([], True, AGENTS, "human"),
])
def test_classify(chain, interactive, agents, expected):
    assert classify(chain, interactive=interactive, agents=agents) == expected


def test_default_agents_cover_the_policy_defaults():
    assert set(AGENTS) <= set(DEFAULT_AGENTS)


def test_ancestry_walks_real_processes_nearest_first(tmp_path):
    agent = tmp_path / "claude"
    agent.write_text("#!/bin/sh\nexec sleep 5\n")
    agent.chmod(0o755)
    # `sh -c` forks the script, which execs sleep in place: the chain is sleep, sh, this process.
    wrapper = subprocess.Popen(["sh", "-c", f"{agent}; true"])
    try:
        deadline = time.monotonic() + 5
        child = None
        while child is None and time.monotonic() < deadline:
            kids = psutil.Process(wrapper.pid).children()
            child = kids[0].pid if kids and kids[0].name() == "sleep" else None
            time.sleep(0.02)
        assert child is not None
        chain = ancestry(child)
        names = [n for n, _ in chain]
        assert names[:2] == ["sleep", "sh"]
        assert os.getpid() in [p.pid for p in psutil.Process(child).parents()]
        assert any(os.path.basename(cmd[0]) == os.path.basename(sys.executable)
                   or "pytest" in " ".join(cmd) for _, cmd in chain[2:])
        assert classify(chain, interactive=True) == "human"  # the agent exec'd away: not in chain
    finally:
        wrapper.kill()
        wrapper.wait(timeout=5)
        for p in psutil.Process().children(recursive=True):
            p.kill()


def test_ancestry_of_a_vanished_process_is_empty():
    p = subprocess.Popen(["true"])
    p.wait(timeout=5)
    assert ancestry(p.pid) == []


@pytest.mark.parametrize("name, cmdline, expected", [
    ("python3", ["python3", "-m", "aider", "--yes"], True),
    ("npx", ["npx", "@anthropic-ai/claude-code"], True),
    ("node", ["/usr/bin/env", "node", "/opt/codex/bin/codex.js"], True),
    ("python3.12", ["python3.12", "-u", "/srv/tools/gemini.py"], True),
    ("node", ["node", "--inspect", "app/server.js", "claude"], False),  # args after the script
    ("python3", ["python3", "-m", "pytest", "tests/claude"], False),
    ("cat", ["cat", "codex.js"], False),  # not an interpreter: its argument is data
])
def test_is_agent_process_through_interpreters(name, cmdline, expected):
    assert is_agent_process(name, cmdline, AGENTS) is expected
