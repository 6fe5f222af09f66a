"""`tracecap episodes mine` and `validate` as a data team runs them: events of a real repository's
history, mined by the CLI, validated in fresh worktrees of a fresh clone with real git and pytest,
the patches applied by hand, interrupted with a real SIGINT. Also the pure parts of validate."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent.commands.episodes import EPISODE_SCHEMA
from episodes.validate import grade, restrict
from schemas.validate import EventValidator
from tests.daemon_harness import TRACECAP
from tests.episode_trace import Trace, unified
from tests.test_episodes_mine import CALC, FIXED, NEW_TEST, TEST

GIT_ENV = {"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.invalid",
           "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.invalid"}
TEST_SUB = TEST.replace("from calc import add", "from calc import add, sub") + "\n\ndef test_sub():\n    assert sub(3, 1) == 2\n"
NEW_TEST_SUB = NEW_TEST.replace("from calc import add", "from calc import add, sub") + \
    "\n\ndef test_sub():\n    assert sub(3, 1) == 2\n"
PYTEST = f"{sys.executable} -m pytest -q -p no:cacheprovider"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}, timeout=60).stdout.strip()


def tracecap(*args: str, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TRACECAP, *args], capture_output=True, text=True, cwd=cwd, input=input, timeout=300,
                          stdin=None if input is not None else subprocess.DEVNULL)


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A real repository, the events of one task in it (README edited and not committed at the
    start), the task mined by the CLI, and a fresh clone."""
    root = tmp_path_factory.mktemp("validate")
    repo = root / "app"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "calc.py").write_text(CALC)
    (repo / "test_calc.py").write_text(TEST_SUB)
    (repo / "README.md").write_text("# app\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    head = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("# app\nwip\n")
    t = Trace(repo=str(repo))
    t.files = {"calc.py": CALC, "test_calc.py": TEST_SUB}
    t.state(head, git(repo, "diff", "HEAD") + "\n", remote=None)
    t.note("add() subtracts; make it add")
    t.cmd(PYTEST, exit=1, tests=[("test_calc.py::test_add", "failed"), ("test_calc.py::test_sub", "passed")])
    t.save("calc.py", FIXED)
    (repo / "calc.py").write_text(FIXED)
    t.save("test_calc.py", NEW_TEST_SUB)
    (repo / "test_calc.py").write_text(NEW_TEST_SUB)
    t.cmd(PYTEST, exit=0, tests=[("test_calc.py::test_add", "passed"), ("test_calc.py::test_add_negative", "passed"),
                                 ("test_calc.py::test_sub", "passed")])
    git(repo, "commit", "-qam", "fix add")
    t.commit(git(repo, "rev-parse", "HEAD"), "fix add\n", head)
    events = root / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in t.events))
    r = tracecap("episodes", "mine", "--events", str(events), "--out", str(root / "tasks.jsonl"))
    assert r.returncode == 0, r.stderr
    clone = root / "clone"
    git(root, "clone", "-q", str(repo), str(clone))
    return root, clone, r.stdout


def test_mine_prints_what_it_found(mined):
    root, _, out = mined
    assert "found 1 episode: kept 1, skipped 0" in out and "wrote 1 task to" in out
    inst = json.loads((root / "tasks.jsonl").read_text())
    assert json.loads(inst["FAIL_TO_PASS"]) == ["test_calc.py::test_add"]


def test_validate_observes_and_replays(mined):
    root, clone, _ = mined
    r = tracecap("episodes", "validate", str(root / "tasks.jsonl"), "--repo", str(clone), "--runs", "2",
                 "--out", str(root / "valid.jsonl"))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "1 valid, 0 invalid, 0 error" in r.stdout and "replay against" in r.stdout
    inst = json.loads((root / "valid.jsonl").read_text())
    v = inst["validation"]
    assert (v["status"], v["runs"], v["reason"]) == ("valid", 2, None)
    # the new test fails without the patch (the engineer never saw it fail): FAIL_TO_PASS all the same
    assert json.loads(inst["FAIL_TO_PASS"]) == ["test_calc.py::test_add", "test_calc.py::test_add_negative"]
    assert json.loads(inst["PASS_TO_PASS"]) == ["test_calc.py::test_sub"]
    assert v["replay"]["status"] == "match"
    assert EventValidator(json.loads(EPISODE_SCHEMA.read_text())).errors(inst) == []
    assert git(clone, "status", "--porcelain") == "" and len(git(clone, "worktree", "list").splitlines()) == 1


def test_the_patches_apply_by_hand_and_load_with_swe_bench_types(mined, tmp_path):
    root, clone, _ = mined
    inst = json.loads((root / "tasks.jsonl").read_text())
    for field in ("instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement", "hints_text",
                  "created_at", "FAIL_TO_PASS", "PASS_TO_PASS"):
        assert isinstance(inst[field], str), field
    assert all(isinstance(t, str) for t in json.loads(inst["FAIL_TO_PASS"]) + json.loads(inst["PASS_TO_PASS"]))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(clone), str(work))
    git(work, "checkout", "-q", inst["base_commit"])
    for key in ("base_patch", "patch", "test_patch"):
        r = subprocess.run(["git", "apply", "-"], input=inst[key], cwd=work, capture_output=True, text=True)
        assert r.returncode == 0, (key, r.stderr)
    assert (work / "calc.py").read_text() == FIXED and (work / "README.md").read_text() == "# app\nwip\n"
    r = subprocess.run(PYTEST.split(), cwd=work, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "3 passed" in r.stdout


def test_datasets_loads_the_file(mined, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a local file: never ask the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    root, _, _ = mined
    ds = datasets.load_dataset("json", data_files=str(root / "tasks.jsonl"), split="train",
                               cache_dir=str(root / "hf-cache"))
    row = ds[0]
    assert row["FAIL_TO_PASS"] == '["test_calc.py::test_add"]' and row["trajectory"]["format"] == "openai-messages"
    assert row["trajectory"]["messages"][1]["content"] == "add() subtracts; make it add"


def test_a_patch_that_fixes_nothing_is_invalid_and_a_missing_commit_an_error(mined, tmp_path):
    root, clone, _ = mined
    inst = json.loads((root / "tasks.jsonl").read_text())
    wrong = dict(inst, patch=inst["patch"].replace("+    return a + b", "+    return a - b  # no"))
    missing = dict(inst, base_commit="f" * 40, instance_id="app-ffffffffffff")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(wrong) + "\n" + json.dumps(missing) + "\n")
    r = tracecap("episodes", "validate", str(tasks), "--repo", str(clone), "--runs", "1", "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1, r.stderr
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert out[0]["validation"]["status"] == "invalid"
    assert out[0]["validation"]["reason"] == "no test fails without the patch and passes with it"
    assert out[1]["validation"]["status"] == "error" and "is not in" in out[1]["validation"]["reason"]
    assert "0 valid, 1 invalid, 1 error" in r.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_removes_the_worktree_and_the_tests(mined, tmp_path, sig):
    root, clone, _ = mined
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([TRACECAP, "episodes", "validate", str(root / "tasks.jsonl"), "--repo", str(clone),
                             "--test-cmd", f"sleep 97.5 && {PYTEST}", "--out", str(tmp_path / "o.jsonl")],
                            env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    def sleeps() -> list:  # this test's: another session's run of it may be going on too
        return [p for p in psutil.process_iter(["cmdline", "cwd"]) if p.info["cmdline"]
                and p.info["cmdline"][:2] == ["sleep", "97.5"] and (p.info["cwd"] or "").startswith(str(scratch))]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not sleeps():
        time.sleep(0.1)
    assert sleeps(), "the test command never started in the worktree"
    assert list(scratch.glob("tracecap-validate-*")), "no worktree was made"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; temporary worktrees removed" in err and "Traceback" not in err
    assert list(scratch.iterdir()) == [] and not (tmp_path / "o.jsonl").exists()
    assert len(git(clone, "worktree", "list").splitlines()) == 1
    assert not sleeps()


def test_a_run_over_the_time_limit_is_an_error(mined, tmp_path):
    root, clone, _ = mined
    t0 = time.monotonic()
    r = tracecap("episodes", "validate", str(root / "tasks.jsonl"), "--repo", str(clone), "--timeout", "1",
                 "--test-cmd", f"sleep 30 && {PYTEST}", "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 1 and time.monotonic() - t0 < 25
    v = json.loads((tmp_path / "o.jsonl").read_text())["validation"]
    assert (v["status"], v["reason"]) == ("error", "the tests ran longer than the 1 s limit")
    assert len(git(clone, "worktree", "list").splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["validate", "/nonexistent/tasks.jsonl", "--repo", ".", "--out", "o"], "no such file"),
    (["mine", "--events", "/nonexistent", "--out", "o"], "no such file or directory"),
    (["validate", "TASKS", "--repo", "/", "--out", "o"], "is not a git clone"),
    (["validate", "TASKS", "--repo", ".", "--runs", "0", "--out", "o"], "give at least 1"),
    (["mine", "--events", "BAD", "--out", "o"], "line 2 is not JSON"),
])
def test_bad_input_is_one_sentence_and_exit_2(mined, tmp_path, args, message):
    root, _, _ = mined
    (tmp_path / "bad.jsonl").write_text('{"seq": 1, "kind": "user.note", "data": {}}\nnot json\n')
    args = [str(root / "tasks.jsonl") if a == "TASKS" else str(tmp_path / "bad.jsonl") if a == "BAD" else a
            for a in args]
    r = tracecap("episodes", *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_mine_reads_stdin_and_an_export_directory(mined, tmp_path):
    root, _, _ = mined
    events = (root / "events.jsonl").read_text()
    r = tracecap("episodes", "mine", "--events", "-", "--out", "-", input=events)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and "kept 1" in r.stderr
    export = tmp_path / "export"
    (export / "laptop-7").mkdir(parents=True)
    lines = events.splitlines()
    (export / "laptop-7" / "2026-11-01.jsonl").write_text("\n".join(lines[:5]) + "\n")
    (export / "laptop-7" / "2026-11-02.jsonl").write_text("\n".join(lines[5:]) + "\n")
    (export / "manifest.json").write_text(json.dumps({"per_device": [{"device_id": "laptop 7", "directory": "laptop-7"}]}))
    r = tracecap("episodes", "mine", "--events", str(export), "--out", str(tmp_path / "t.jsonl"))
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "t.jsonl").read_text())
    assert a["meta"]["device"] == "laptop 7"
    b = json.loads((root / "tasks.jsonl").read_text())
    assert {k: v for k, v in a.items() if k not in ("instance_id", "meta")} == \
        {k: v for k, v in b.items() if k not in ("instance_id", "meta")}


@pytest.mark.parametrize("cmd, ids, want", [
    ("python -m pytest -q", ["t.py::a"], "python -m pytest -q t.py::a"),
    ("pytest -x tests/test_calc.py -k add", ["tests/test_calc.py::test_add"], "pytest -x tests/test_calc.py::test_add"),
    ("pytest -p no:cacheprovider tests", ["t.py::b[1 2]"], "pytest -p no:cacheprovider 't.py::b[1 2]'"),
    ("pytest -madd --tb short x.py", ["x.py::c"], "pytest --tb short x.py::c"),
])
def test_restrict(cmd, ids, want):
    assert restrict(cmd, ids) == want


@pytest.mark.parametrize("line, want", [
    ("python -m pytest -q", ("", ".", "python -m pytest -q")),
    ("cd tests && python3 -m pytest -q test_cart.py; cd ..", ("cd tests &&", "tests", "python3 -m pytest -q test_cart.py")),
    ("cd a && cd ../b && pytest -x | tee log.txt", ("cd a && cd ../b &&", "b", "pytest -x")),
    ("source '.venv/bin/activate' && pytest 'x y.py'", ("source .venv/bin/activate &&", ".", "pytest 'x y.py'")),
    ("PYTHONPATH=. pytest -q", ("", ".", "PYTHONPATH=. pytest -q")),
])
def test_the_pytest_part_of_a_line(line, want):
    from episodes.validate import pytest_part

    assert pytest_part(line) == want


@pytest.mark.parametrize("before, after, status, f2p, p2p", [
    ([{"a": "failed", "b": "passed"}], [{"a": "passed", "b": "passed"}], "valid", ["a"], ["b"]),
    ([{"b": "passed"}], [{"a": "passed", "b": "passed"}], "valid", ["a"], ["b"]),  # new test, absent before
    ([{"a": "error"}], [{"a": "passed"}], "valid", ["a"], []),
    ([{"a": "failed", "b": "passed"}], [{"a": "passed", "b": "failed"}], "invalid", ["a"], []),
    ([{"a": "failed"}], [{"a": "failed"}], "invalid", [], []),
    ([{"a": "failed"}, {"a": "failed"}], [{"a": "passed"}, {"a": "failed"}], "invalid", [], []),  # flaky
])
def test_grade(before, after, status, f2p, p2p):
    got = grade(before, after)
    assert (got[0], got[2], got[3]) == (status, f2p, p2p)


def test_mine_reads_a_parquet_export(mined, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from collector.export import parquet_schema

    root, _, _ = mined
    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    (tmp_path / "export" / "laptop-7").mkdir(parents=True)
    rows = {"device": ["laptop-7"] * len(events), "v": [1] * len(events), "seq": [e["seq"] for e in events],
            "ts": [e["ts"] for e in events], "kind": [e["kind"] for e in events],
            "source": [e["source"] for e in events], "session": [e["session"] for e in events],
            "data": [json.dumps(e["data"]) for e in events]}
    pq.write_table(pa.Table.from_pydict(rows, schema=parquet_schema()), tmp_path / "export" / "laptop-7" / "2026-11-01.parquet")
    (tmp_path / "export" / "manifest.json").write_text(json.dumps({"per_device": []}))
    r = tracecap("episodes", "mine", "--events", str(tmp_path / "export"), "--out", str(tmp_path / "t.jsonl"))
    assert r.returncode == 0 and "kept 1" in r.stdout, r.stdout + r.stderr
    a = json.loads((tmp_path / "t.jsonl").read_text())
    b = json.loads((root / "tasks.jsonl").read_text())
    assert a["meta"]["device"] == "laptop-7" and (a["patch"], a["test_patch"]) == (b["patch"], b["test_patch"])


def test_parallel_mining_writes_the_same_bytes(tmp_path):
    from bench.episodes import write_export

    write_export(tmp_path / "export", engineers=3, tasks=2)
    outs = []
    for jobs in ("1", "3"):
        out = tmp_path / f"tasks-{jobs}.jsonl"
        r = tracecap("episodes", "mine", "--events", str(tmp_path / "export"), "--jobs", jobs, "--out", str(out))
        assert r.returncode == 0 and "found 6 episodes: kept 6, skipped 0" in r.stdout, r.stdout + r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 6


@pytest.mark.parametrize("cwd, ids, want", [
    ("tests", {"tests/test_a.py::test_x"}, "."),  # rootdir above the cwd (an ini file at the root)
    ("tests", {"test_a.py::test_x"}, "tests"),
    (".", {"tests/test_a.py::test_x"}, "."),
    ("pkg/tests", {"missing.py::t"}, "pkg/tests"),  # nothing fits: where they ran
])
def test_run_dir(tmp_path, cwd, ids, want):
    from episodes.validate import run_dir

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    assert run_dir(tmp_path, cwd, ids) == want
