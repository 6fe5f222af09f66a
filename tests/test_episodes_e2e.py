"""Episodes from real captured work: a real daemon, real bash with the hook in tmux, real git and
pytest. One captured session is shared by every assertion:

- repo `app`, with an uncommitted README change when the daemon starts: note, failing run, fix,
  new test, passing run, commit (task 1); note, new failing test, fix, passing run (task 2); note,
  failing run, never fixed (no episode);
- repo `lib`: the same loop with a binary file saved on the way (skipped: the chain breaks);
- repo `tool`: the loop in a bash a coding agent started (labelled agent).

Then: `tracecap log --json | tracecap episodes mine --events -`, validation on a fresh clone, the
patches applied by hand and the file loaded with `datasets`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.daemon_harness import TRACECAP, DaemonProcess
from tests.test_end_to_end import _q

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

GIT_ENV = {"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.invalid",
           "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.invalid"}
CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a ** b\n"
TESTS = "from calc import add, mul\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n"
PYTEST = "python3 -m pytest -q -p no:cacheprovider"


class Tmux:
    def __init__(self, env: dict, cwd: Path, program: str) -> None:
        self.sock = f"tc-ep-{uuid.uuid4().hex[:12]}"  # two shells at once: never the same server
        cmd = "env -i " + " ".join(f"{k}={_q(v)}" for k, v in env.items()) + " " + program
        self._tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "50", "-c", str(cwd), cmd)
        self.marks = 0

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True, capture_output=True, text=True,
                              timeout=20).stdout

    def run(self, line: str, timeout: float = 60) -> None:
        """Type `line`, then wait for it to finish (a marker echoed after it)."""
        self.marks += 1
        mark = f"done-{self.marks}-mark"
        self._tmux("send-keys", "-t", "t", "-l", line)
        self._tmux("send-keys", "-t", "t", "Enter")
        # A space-prefixed command is not recorded (HISTCONTROL=ignorespace): the marker stays out.
        self._tmux("send-keys", "-t", "t", "-l", f" echo {mark[:5]}''{mark[5:]}")
        self._tmux("send-keys", "-t", "t", "Enter")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if mark in self._tmux("capture-pane", "-p", "-J", "-S", "-2000", "-t", "t"):
                time.sleep(0.4)  # saves settle (debounce) before the next step
                return
            time.sleep(0.1)
        raise TimeoutError(self._tmux("capture-pane", "-p", "-t", "t"))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=10)


def wait_captured(d: DaemonProcess, runs: int, commits: int) -> None:
    """Until the daemon has journaled `runs` test runs, `commits` commits and the end of every
    command whose start it journaled: each source journals on its own schedule, and a loaded
    machine delays some more than others, so the log is mined only once all of it is in."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        evs = d.events()
        ended = {e["data"]["id"] for e in evs if e["kind"] == "shell.end"}
        if (sum(e["kind"] == "test.run" for e in evs) >= runs
                and sum(e["kind"] == "git.commit" for e in evs) >= commits
                and all(e["data"]["id"] in ended for e in evs if e["kind"] == "shell.start")):
            return
        time.sleep(0.3)


def wait_sources(d: DaemonProcess) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
            s.startswith("running") for n, s in d.status()["sources"].items() if n in ("files", "shell", "git")):
        time.sleep(0.2)


def shell_env(root: Path, d: DaemonProcess, policy: Path, *path: str) -> dict:
    """The environment of an engineer's shell: tracecap (and `path`) on PATH, the daemon's home."""
    return {"HOME": str(root), "PATH": ":".join([os.path.dirname(TRACECAP), *path, "/usr/bin", "/bin"]),
            "TERM": "xterm", "TRACECAP_HOME": d.env["TRACECAP_HOME"], "TRACECAP_POLICY": str(policy),
            "LANG": "C.UTF-8", "PS1": "$ ", "HISTCONTROL": "ignorespace", **GIT_ENV}


def _repo(path: Path, files: dict[str, str]) -> None:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=path, check=True, env={**os.environ, **GIT_ENV}, timeout=30)


def _edit(path: str, old: str, new: str) -> str:
    return f"python3 -c 'import pathlib; p = pathlib.Path(\"{path}\"); p.write_text(p.read_text().replace(\"{old}\", \"{new}\"))'"


def _append(path: str, text: str) -> str:
    return f"printf '{text}' >> {path}"


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes-e2e")
    src = root / "src"
    for name in ("app", "lib", "tool"):
        _repo(src / name, {"calc.py": CALC, "test_calc.py": TESTS, "README.md": "# calc\n"})
    (src / "app" / "README.md").write_text("# calc\nwork in progress\n")  # uncommitted at the start
    policy = root / "policy.toml"
    policy.write_text(f'[capture]\nroots = ["{src}"]\nsources = ["files", "shell", "tests", "git"]\n'
                      f'[upload]\ninterval = "1h"\n')
    d = DaemonProcess(root / "home", policy=policy)
    d.start()
    shells: list[Tmux] = []
    try:
        d.cli("opt-in")
        wait_sources(d)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        agent = bin_dir / "claude"  # a coding agent that drives a bash
        agent.write_text("#!/bin/sh\nbash --norc --noprofile -i\n")
        agent.chmod(0o755)
        env = shell_env(root, d, policy)
        human = Tmux(env, src / "app", "bash --norc --noprofile -i")
        shells.append(human)
        human.run('eval "$(tracecap shell-init bash)"')
        # task 1
        human.run('tracecap note "add() subtracts instead of adding"')
        human.run(PYTEST)
        human.run(_edit("calc.py", "return a - b", "return a + b"))
        human.run(_append("test_calc.py", "\\n\\ndef test_add_negative():\\n    assert add(-1, -1) == -2\\n"))
        human.run(PYTEST)
        human.run("git commit -qam 'Fix add'")
        # task 2: the test first
        human.run('tracecap note "mul() adds; make it multiply"')
        human.run(_append("test_calc.py", "\\n\\ndef test_mul():\\n    assert mul(2, 3) == 6\\n"))
        human.run(PYTEST)
        human.run(_edit("calc.py", "return a ** b", "return a * b"))
        human.run(PYTEST)
        # never finished
        human.run('tracecap note "div"')
        human.run(_append("test_calc.py", "\\n\\ndef test_div():\\n    assert False\\n"))
        human.run(PYTEST)
        # lib: a binary file breaks the chain
        human.run(f"cd {src / 'lib'}")
        human.run('tracecap note "lib: add() subtracts"')
        human.run(PYTEST)
        human.run("head -c 3000 /dev/urandom > blob.bin && git add blob.bin")
        human.run(_edit("calc.py", "return a - b", "return a + b"))
        human.run(PYTEST)
        # tool: an agent's session
        bot = Tmux(env, src / "tool", str(agent))
        shells.append(bot)
        bot.run('eval "$(tracecap shell-init bash)"')
        bot.run(PYTEST)
        bot.run(_edit("calc.py", "return a - b", "return a + b"))
        bot.run(PYTEST)
        wait_captured(d, runs=9, commits=1)
        log = d.cli("log", "--json").stdout
        (root / "events.jsonl").write_text(log)
        mined = subprocess.run([TRACECAP, "episodes", "mine", "--events", "-", "--out", str(root / "tasks.jsonl")],
                               input=log, capture_output=True, text=True, timeout=120)
        assert mined.returncode == 0, mined.stderr
        yield root, src, mined.stdout, [json.loads(line) for line in (root / "tasks.jsonl").read_text().splitlines()]
    finally:
        for sh in shells:
            sh.close()
        d.stop()


def _by_repo(tasks: list[dict], name: str) -> list[dict]:
    return [t for t in tasks if t["meta"]["repo_path"].endswith("/" + name)]


def test_the_summary_counts_what_was_found(captured):
    _, _, out, tasks = captured
    assert "found 4 episodes: kept 3, skipped 1 (chain_break:binary 1)" in out, out
    assert "1 failing test run never followed by a passing one" in out
    assert len(tasks) == 3


def test_task_one_from_the_note_to_the_commit(captured):
    _, src, _, tasks = captured
    first, second = _by_repo(tasks, "app")
    assert first["problem_statement"] == "add() subtracts instead of adding"
    assert first["base_commit"] == subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=src / "app",
                                                  capture_output=True, text=True).stdout.strip()
    assert "+work in progress" in first["base_patch"]
    assert "+    return a + b" in first["patch"] and "+def test_add_negative" in first["test_patch"]
    assert json.loads(first["FAIL_TO_PASS"]) == ["test_calc.py::test_add"]
    assert json.loads(first["PASS_TO_PASS"]) == ["test_calc.py::test_zero"]
    assert first["meta"]["closing_commit"] and first["hints_text"].startswith("Fix add")
    assert first["meta"]["actor"] == "human" and first["test_cmd"] == PYTEST
    assert second["problem_statement"] == "mul() adds; make it multiply"
    assert second["base_commit"] == first["meta"]["closing_commit"] and second["base_patch"] == ""
    assert "+    return a * b" in second["patch"] and "+def test_mul" in second["test_patch"]
    assert json.loads(second["FAIL_TO_PASS"]) == ["test_calc.py::test_mul"]


def test_the_agent_session_is_labelled(captured):
    _, _, _, tasks = captured
    (bot,) = _by_repo(tasks, "tool")
    assert bot["meta"]["actor"] == "agent" and bot["meta"]["human_commands"] == 0
    steps = [m for m in bot["trajectory"]["messages"] if m["role"] == "assistant"]
    assert steps and {m["name"] for m in steps} == {"agent"}


def test_validate_on_a_fresh_clone_and_apply_by_hand(captured, tmp_path):
    root, src, _, tasks = captured
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(src / "app"), str(clone)], check=True, timeout=60)
    app = root / "app-tasks.jsonl"
    app.write_text("".join(json.dumps(t) + "\n" for t in _by_repo(tasks, "app")))
    r = subprocess.run([TRACECAP, "episodes", "validate", str(app), "--repo", str(clone), "--runs", "2",
                        "--out", str(tmp_path / "valid.jsonl")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 valid, 0 invalid, 0 error" in r.stdout
    first, second = [json.loads(line) for line in (tmp_path / "valid.jsonl").read_text().splitlines()]
    assert json.loads(first["FAIL_TO_PASS"]) == ["test_calc.py::test_add", "test_calc.py::test_add_negative"]
    assert first["validation"]["replay"]["status"] == "match"
    assert json.loads(second["FAIL_TO_PASS"]) == ["test_calc.py::test_mul"] and second["validation"]["replay"] is None
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(clone), str(work)], check=True, timeout=60)
    subprocess.run(["git", "checkout", "-q", second["base_commit"]], cwd=work, check=True)
    for key in ("base_patch", "patch", "test_patch"):
        if not second[key]:
            continue
        a = subprocess.run(["git", "apply", "-"], input=second[key], cwd=work, capture_output=True, text=True)
        assert a.returncode == 0, (key, a.stderr)
    t = subprocess.run(PYTEST.split(), cwd=work, capture_output=True, text=True, timeout=120)
    assert t.returncode == 0 and "4 passed" in t.stdout, t.stdout


def test_datasets_reads_the_mined_file(captured, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a local file: never ask the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    root, _, _, _ = captured
    ds = datasets.load_dataset("json", data_files=str(root / "tasks.jsonl"), split="train",
                               cache_dir=str(root / "hf-cache"))
    assert ds.num_rows == 3 and isinstance(ds[0]["FAIL_TO_PASS"], str)
    assert ds[0]["trajectory"]["tools"][0]["function"]["name"] == "shell"
