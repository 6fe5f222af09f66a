"""Episodes from a test runner other than pytest: Node's built-in runner writing JUnit XML.

A real daemon, real bash with the hook in tmux, real git and real `node --test`: a note, a failing
run, a fix, a new test, a passing run, a commit. The capture names the tests from the report
(`classname::name`), the miner makes one task of it, and `episodes validate` re-runs the recorded
command whole on a fresh clone, reading the reports it writes. A command that writes no report is
an error that says so.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.daemon_harness import TRACECAP, DaemonProcess
from tests.test_episodes_e2e import Tmux, _append, _edit, _repo, shell_env, wait_captured, wait_sources

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

NODE = shutil.which("node")
CALC = "export function add(a, b) {\n  return a - b;\n}\n"
TESTS = ("import test from 'node:test';\nimport assert from 'node:assert';\nimport { add } from './calc.mjs';\n\n"
         "test('adds', () => assert.equal(add(2, 3), 5));\ntest('zero', () => assert.equal(add(0, 0), 0));\n")
RUN = "node --test --test-reporter=junit --test-reporter-destination=junit.xml"


def _node_has_junit() -> bool:
    if NODE is None:
        return False
    r = subprocess.run([NODE, "--test", "--test-reporter=junit", "--test-reporter-destination=/dev/null",
                        "/dev/null"], capture_output=True, text=True, timeout=60)
    return "Unknown reporter" not in r.stderr and "ERR_" not in r.stderr.split("\n", 1)[0]


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    if not _node_has_junit():
        pytest.fail("these tests need Node.js 20.13 or later (its test runner's junit reporter) on PATH")
    root = tmp_path_factory.mktemp("episodes-junit")
    src = root / "src"
    _repo(src / "js", {"calc.mjs": CALC, "calc.test.mjs": TESTS, ".gitignore": "junit.xml\n"})
    policy = root / "policy.toml"
    policy.write_text(f'[capture]\nroots = ["{src}"]\nsources = ["files", "shell", "tests", "git"]\n'
                      f'[upload]\ninterval = "1h"\n')
    d = DaemonProcess(root / "home", policy=policy)
    d.start()
    sh = None
    try:
        d.cli("opt-in")
        wait_sources(d)
        env = shell_env(root, d, policy, os.path.dirname(NODE))
        sh = Tmux(env, src / "js", "bash --norc --noprofile -i")
        sh.run('eval "$(tracecap shell-init bash)"')
        sh.run('tracecap note "add() subtracts instead of adding"')
        sh.run(RUN)
        sh.run(_edit("calc.mjs", "return a - b", "return a + b"))
        sh.run(_append("calc.test.mjs", "test(\\x27negatives\\x27, () => assert.equal(add(-1, -1), -2));\\n"))
        sh.run(RUN)
        sh.run("git commit -qam 'Fix add'")
        wait_captured(d, runs=2, commits=1)  # the commit closes the task: mined only once it is in
        log = d.cli("log", "--json").stdout
        runs = [json.loads(line) for line in log.splitlines() if '"test.run"' in line]
        mined = subprocess.run([TRACECAP, "episodes", "mine", "--events", "-", "--out", str(root / "tasks.jsonl")],
                               input=log, capture_output=True, text=True, timeout=120)
        assert mined.returncode == 0, mined.stderr
        yield root, src, runs, [json.loads(line) for line in (root / "tasks.jsonl").read_text().splitlines()]
    finally:
        if sh is not None:
            sh.close()
        d.stop()


def test_the_runs_name_their_tests_from_the_report(captured):
    _, _, runs, _ = captured
    failing, passing = [r["data"] for r in runs]
    assert failing["runner"] == "node" and passing["runner"] == "node"
    assert {t["name"]: t["outcome"] for t in failing["tests"]} == {"test::adds": "failed", "test::zero": "passed"}
    assert {t["name"]: t["outcome"] for t in passing["tests"]} == {
        "test::adds": "passed", "test::zero": "passed", "test::negatives": "passed"}


def test_one_task_mined_and_validated_on_a_fresh_clone(captured, tmp_path):
    root, src, _, tasks = captured
    (task,) = tasks
    assert task["test_cmd"] == RUN and task["problem_statement"] == "add() subtracts instead of adding"
    assert json.loads(task["FAIL_TO_PASS"]) == ["test::adds"] and json.loads(task["PASS_TO_PASS"]) == ["test::zero"]
    assert "+  return a + b;" in task["patch"] and "negatives" in task["test_patch"]
    assert "junit.xml" not in task["patch"] + task["test_patch"]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(src / "js"), str(clone)], check=True, timeout=60)
    (tmp_path / "tasks.jsonl").write_text(json.dumps(task) + "\n")
    r = subprocess.run([TRACECAP, "episodes", "validate", str(tmp_path / "tasks.jsonl"), "--repo", str(clone),
                        "--out", str(tmp_path / "valid.jsonl")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 valid, 0 invalid, 0 error" in r.stdout
    (valid,) = [json.loads(line) for line in (tmp_path / "valid.jsonl").read_text().splitlines()]
    # The new test passes only with the patch: it joins FAIL_TO_PASS though it was never seen failing.
    assert json.loads(valid["FAIL_TO_PASS"]) == ["test::adds", "test::negatives"]
    assert json.loads(valid["PASS_TO_PASS"]) == ["test::zero"]
    assert valid["validation"]["command"] == RUN and valid["validation"]["replay"]["status"] == "match"
    assert subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout == ""
    assert "tracecap-validate" not in subprocess.run(["git", "worktree", "list"], cwd=clone,
                                                     capture_output=True, text=True).stdout


def test_a_command_that_writes_no_report_is_an_error_that_says_so(captured, tmp_path):
    _, src, _, tasks = captured
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(src / "js"), str(clone)], check=True, timeout=60)
    (tmp_path / "tasks.jsonl").write_text(json.dumps(tasks[0]) + "\n")
    r = subprocess.run([TRACECAP, "episodes", "validate", str(tmp_path / "tasks.jsonl"), "--repo", str(clone),
                        "--runs", "1", "--test-cmd", "node --test", "--out", str(tmp_path / "valid.jsonl")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "0 valid, 0 invalid, 1 error" in r.stdout and "Traceback" not in r.stderr
    assert "wrote no JUnit XML report where tracecap reads them (junit.xml" in r.stdout + r.stderr
