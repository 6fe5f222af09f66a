"""Validation: re-run each task's tests in a fresh worktree and record what is observed.

Takes mined instances and a clone holding their `base_commit`; gives each instance back with
`FAIL_TO_PASS` / `PASS_TO_PASS` replaced by what the runs observed and a `validation` object:
`status` ("valid", "invalid" or "error"), `runs`, `reason` (null when valid), `command` (the
test command run, ids appended) and `replay` (does base + base_patch + patch + test_patch equal
the tree of the commit that closed the episode).

For each instance, in a temporary `git worktree` of the clone (detached at `base_commit`, never
the clone's own work tree): apply `base_patch` and `test_patch`, run the tests; apply `patch`,
run them again; undo `patch`; all `runs` times. The tests run are the recorded ones plus every
test of the files `test_patch` touches (so a new test that passes only with the patch is found),
by the pytest command of the recorded `test_cmd` (or `--test-cmd`; in a line of several
commands, the one running pytest, from the directory its `cd`s lead to) with the pytest node ids
appended and its own paths and -k/-m selections removed; outcomes come from a small pytest plugin
(`plugin/tracecap_outcomes.py`), so ids are pytest's own. A test is FAIL_TO_PASS when it fails,
errors or is missing without the patch and passes with it, in every run; PASS_TO_PASS when it
passes both ways in every run. Valid: at least one FAIL_TO_PASS, no test that passed without the
patch fails with it, and no test changing its verdict between runs (flaky).

Other runners (any test command that is not pytest's): the command runs as recorded (or as
`--test-cmd` gives it), whole, since how to select tests differs per runner; outcomes come from
the JUnit XML reports it writes where the capture looks for them (`agent/testreports.py`:
`junit.xml` and the like in the directory it runs in, `*.xml` under target/surefire-reports,
build/test-results, ...), the reports a run wrote or rewrote, so ids are named as the capture
named them (`classname::name`). A command that writes no report there is an `error` that says so.

Promises: each run is bounded by `timeout` seconds (its whole process group is killed after it);
worktrees and temporary files are removed when the instance is done, on error, and on Ctrl-C
(KeyboardInterrupt propagates after the clean-up); the clone's own work tree is never touched.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

from agent import testreports

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
PYTEST_VALUE_OPTS = {"-c", "-o", "-p", "-W", "-n", "--rootdir", "--junitxml", "--junit-xml",
                     "--confcutdir", "--basetemp", "--deselect", "--ignore", "--ignore-glob",
                     "--maxfail", "--tb", "-r", "--durations", "--log-level", "--timeout", "--import-mode"}
SELECTING_OPTS = {"-k", "-m"}
MAX_TESTS = 100_000  # tests read from the reports of one run of another runner


class ValidateError(Exception):
    """A problem with the inputs as a whole (e.g. --repo is not a git repository); one sentence."""


class _InstanceError(Exception):
    pass


def _git(repo: Path, *args: str, input: str | None = None, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["git", "-C", str(repo), *args], input=input, capture_output=True, text=True,
                       env=env, timeout=300)
    if check and r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["failed"])[0]
        raise _InstanceError(f"git {args[0]}: {first}")
    return r


def check_repo(repo: Path) -> None:
    r = subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"], capture_output=True, text=True)
    if not repo.is_dir() or r.returncode != 0:
        raise ValidateError(f"--repo {repo} is not a git clone; pass a clone of the repository the "
                            f"tasks come from")


def is_pytest(cmd: str) -> bool:
    try:
        toks = shlex.split(cmd)
    except ValueError:
        return False
    return any(os.path.basename(t) in ("pytest", "py.test", "pytest-3") for t in toks) or \
        any(a == "-m" and b == "pytest" for a, b in zip(toks, toks[1:]))


def pytest_part(line: str) -> tuple[str, str, str]:
    """(the commands before pytest, with their operators; the directory their `cd`s lead to,
    relative; the simple command that runs pytest) of a shell line such as
    `source .venv/bin/activate && cd tests && python -m pytest -q; cd ..`. What follows pytest
    (`; cd ..`, `| tee log`) is dropped. A line of one command is ("", ".", line)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    try:
        toks = list(lex)
    except ValueError:
        return "", ".", line
    before: list[str] = []
    segment: list[str] = []
    where = "."
    for t in toks + [";"]:
        if t and all(c in "();<>|&" for c in t):
            if segment and is_pytest(shlex.join(segment)):
                return " ".join(before), where, shlex.join(segment)
            if segment and segment[0] == "cd" and len(segment) == 2:
                where = os.path.normpath(os.path.join(where, segment[1]))
            before += [shlex.join(segment), t] if segment else [t]
            segment = []
        else:
            segment.append(t)
    return "", ".", line


def restrict(cmd: str, ids: list[str]) -> str:
    """A pytest command running only `ids`: its positional paths and -k/-m selections dropped,
    ids appended."""
    toks = shlex.split(cmd)
    quoted = " ".join(shlex.quote(i) for i in ids)
    at = next((k for k, t in enumerate(toks) if os.path.basename(t) in ("pytest", "py.test", "pytest-3")), None)
    if at is None:
        at = next(k + 1 for k, (a, b) in enumerate(zip(toks, toks[1:])) if a == "-m" and b == "pytest")
    keep = toks[:at + 1]
    rest = toks[at + 1:]
    k = 0
    while k < len(rest):
        t = rest[k]
        if t in SELECTING_OPTS:
            k += 2
            continue
        if t[:2] in SELECTING_OPTS and len(t) > 2 and not t.startswith("--"):
            k += 1
            continue
        if t.startswith("-"):
            keep.append(t)
            if t in PYTEST_VALUE_OPTS and k + 1 < len(rest):
                keep.append(rest[k + 1])
                k += 1
        k += 1
    return f"{shlex.join(keep)} {quoted}".rstrip()


def patch_paths(patch: str) -> list[str]:
    """The paths a patch leaves in place (deleted files left out)."""
    return [line[6:] for line in patch.splitlines() if line.startswith("+++ b/")]


@contextlib.contextmanager
def worktree(repo: Path, commit: str) -> Iterator[Path]:
    """A detached worktree of `repo` at `commit` in a new temporary directory, removed afterwards
    (also when interrupted)."""
    tmp = Path(tempfile.mkdtemp(prefix="tracecap-validate-"))
    tree = tmp / "tree"
    try:
        _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), commit)
        yield tree
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                       capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True, timeout=120)


def run_dir(tree: Path, cwd: str, ids: set[str]) -> str:
    """Where to run the tests: the directory they ran in, or the nearest directory above it
    (up to the repository's root) that holds every test file the ids name. pytest names tests
    relative to its rootdir, which is above the working directory when an ini file says so."""
    files = {i.split("::")[0] for i in ids if "::" in i}
    parts = [] if cwd in (".", "") else cwd.strip("/").split("/")
    for k in range(len(parts), -1, -1):
        here = "/".join(parts[:k]) or "."
        if all((tree / here / f).is_file() for f in files):
            return here
    return cwd


def _apply(tree: Path, patch: str, what: str, reverse: bool = False) -> None:
    if not patch:
        return
    args = ["apply", "--whitespace=nowarn"] + (["-R"] if reverse else []) + ["-"]
    r = _git(tree, *args, input=patch, check=False)
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["failed"])[0]
        raise _InstanceError(f"{what} does not apply at base_commit ({first})")


def _run(tree: Path, cwd: str, cmd: str, env: dict[str, str], timeout: float, log_file: Path) -> int:
    """Run the shell line `cmd` in `tree/cwd`, bounded by `timeout`, its output to `log_file`;
    its exit code."""
    workdir = tree / cwd
    if not workdir.is_dir():
        raise _InstanceError(f"the test directory {cwd} does not exist at base_commit")
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise _InstanceError(f"the tests ran longer than the {timeout:g} s limit") from None
        finally:
            if proc.poll() is None:  # interrupted: the whole group goes with us
                _kill(proc)
    return proc.returncode


def _no_outcomes(code: int, log_file: Path, what: str) -> _InstanceError:
    tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["no output"]
    return _InstanceError(f"{what}; it exited {code}, its last line of output: {tail[0][:200]}")


def run_tests(tree: Path, cwd: str, cmd: str, timeout: float, scratch: Path) -> dict[str, str]:
    """Test id -> outcome of one run of the pytest line `cmd` in `tree/cwd`."""
    out_file = scratch / "outcomes.jsonl"
    log_file = scratch / "output.log"
    out_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["TRACECAP_OUTCOMES"] = str(out_file)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_DIR), env.get("PYTHONPATH", "")) if p)
    env["PYTEST_ADDOPTS"] = (env.get("PYTEST_ADDOPTS", "") + " -p tracecap_outcomes -p no:cacheprovider").strip()
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    code = _run(tree, cwd, cmd, env, timeout, log_file)
    outcomes: dict[str, str] = {}
    rank = {"passed": 0, "skipped": 0, "failed": 1, "error": 2}
    if out_file.exists():
        for line in out_file.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            old = outcomes.get(rec["id"])
            if old is None or rank.get(rec["outcome"], 2) >= rank.get(old, 0):
                outcomes[rec["id"]] = rec["outcome"]
    if not outcomes:
        raise _no_outcomes(code, log_file, "the test command reported no test outcomes")
    return outcomes


def _report_stats(workdir: Path) -> dict[Path, tuple[int, int, int]]:
    """Each test report in `workdir`'s usual report places (none when it is not there), by path:
    its mtime, inode and size, to tell the reports a run wrote or rewrote."""
    every = testreports.find_reports(str(workdir), 0, 2**63 - 1)
    stats = {}
    for p in every:
        with contextlib.suppress(OSError):
            st = p.stat()
            stats[p] = (st.st_mtime_ns, st.st_ino, st.st_size)
    return stats


def run_junit_tests(tree: Path, cwd: str, cmd: str, timeout: float, scratch: Path) -> dict[str, str]:
    """Test id -> outcome of one run of `cmd` (a runner other than pytest) in `tree/cwd`, from
    the JUnit XML reports the run wrote or rewrote where the capture looks for them."""
    workdir = tree / cwd
    log_file = scratch / "output.log"
    before = _report_stats(workdir)
    code = _run(tree, cwd, cmd, dict(os.environ), timeout, log_file)
    written = [p for p, st in _report_stats(workdir).items() if before.get(p) != st]
    report = testreports.read_reports(sorted(written), pytest=False, max_tests=MAX_TESTS)
    if report is None or not report.tests:
        where = ", ".join(testreports.REPORT_FILES[:2] + testreports.REPORT_DIRS[:3])
        raise _no_outcomes(code, log_file, f"the test command wrote no JUnit XML report where tracecap reads "
                                           f"them ({where}, ...), so pass --test-cmd with one that does")
    if report.tests_truncated:
        raise _InstanceError(f"the test command's reports list more than {MAX_TESTS} tests; pass --test-cmd "
                             f"running fewer")
    return dict(report.tests)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _replay(tree: Path, inst: dict[str, Any], scratch: Path) -> dict[str, Any] | None:
    commit = (inst.get("meta") or {}).get("closing_commit")
    if not commit:
        return None
    r = _git(tree, "rev-parse", "--verify", "--quiet", f"{commit}^{{tree}}", check=False)
    if r.returncode != 0:
        return {"commit": commit, "status": "missing_commit", "paths": []}
    want = r.stdout.strip()
    env = dict(os.environ, GIT_INDEX_FILE=str(scratch / "replay.index"))
    _git(tree, "read-tree", inst["base_commit"], env=env)
    for key in ("base_patch", "patch", "test_patch"):
        if inst.get(key):
            a = _git(tree, "apply", "--cached", "--whitespace=nowarn", "-", input=inst[key], env=env, check=False)
            if a.returncode != 0:
                return {"commit": commit, "status": "does_not_apply", "paths": []}
    got = _git(tree, "write-tree", env=env).stdout.strip()
    if got == want:
        return {"commit": commit, "status": "match", "paths": []}
    diff = _git(tree, "diff-tree", "-r", "--name-only", got, want).stdout.split()
    return {"commit": commit, "status": "differs", "paths": sorted(diff)}


def validate_instance(inst: dict[str, Any], repo: Path, runs: int, test_cmd: str | None,
                      timeout: float) -> dict[str, Any]:
    out = dict(inst)
    cmd = test_cmd or inst.get("test_cmd") or ""
    validation: dict[str, Any] = {"status": "error", "runs": 0, "reason": None, "command": None, "replay": None}
    out["validation"] = validation
    try:
        if not cmd.strip():
            raise _InstanceError("the task has no test command; pass --test-cmd")
        base = inst.get("base_commit") or ""
        if _git(repo, "cat-file", "-e", f"{base}^{{commit}}", check=False).returncode != 0:
            raise _InstanceError(f"base_commit {base[:12]} is not in {repo}; fetch it there first")
        meta = inst.get("meta") or {}
        recorded = set(json.loads(inst.get("FAIL_TO_PASS") or "[]")) | set(json.loads(inst.get("PASS_TO_PASS") or "[]"))
        befores, afters = [], []
        with worktree(repo, base) as tree:
            scratch = tree.parent
            _apply(tree, inst.get("base_patch", ""), "base_patch")
            _apply(tree, inst.get("test_patch", ""), "test_patch")
            cwd = os.path.normpath(meta.get("test_cwd") or ".")
            if cwd.startswith(".."):
                raise _InstanceError(f"the test command runs outside the repository ({cmd!r}); pass --test-cmd")
            if is_pytest(cmd):
                before, subdir, segment = pytest_part(cmd)
                where = os.path.normpath(os.path.join(cwd, subdir))  # where pytest itself runs
                if where.startswith(".."):
                    raise _InstanceError(f"the test command runs outside the repository ({cmd!r}); pass --test-cmd")
                # Recorded ids are relative to pytest's rootdir, which may be above `where`.
                up = os.path.relpath(run_dir(tree, where, recorded), where)
                ids = {i if up == "." else f"{up}/{i}" for i in recorded}
                files = {os.path.relpath(p, where) for p in patch_paths(inst.get("test_patch", "")) if p.endswith(".py")}
                ids = sorted(files | {i for i in ids if i.split("::")[0] not in files})
                command = f"{before} {restrict(segment, ids)}".strip()
                run = run_tests
            else:
                command, run = cmd, run_junit_tests
            validation["command"] = command if cwd == "." else f"cd {shlex.quote(cwd)} && {command}"
            for _ in range(runs):
                befores.append(run(tree, cwd, command, timeout, scratch))
                _apply(tree, inst.get("patch", ""), "patch")
                afters.append(run(tree, cwd, command, timeout, scratch))
                _apply(tree, inst.get("patch", ""), "patch", reverse=True)
                validation["runs"] += 1
            validation["replay"] = _replay(tree, inst, scratch)
        status, reason, f2p, p2p = grade(befores, afters)
        validation["status"], validation["reason"] = status, reason
        out["FAIL_TO_PASS"] = json.dumps(f2p, ensure_ascii=False)
        out["PASS_TO_PASS"] = json.dumps(p2p, ensure_ascii=False)
    except _InstanceError as exc:
        validation["status"], validation["reason"] = "error", str(exc)
    except subprocess.TimeoutExpired:
        validation["status"], validation["reason"] = "error", "git took longer than 300 s"
    return out


def grade(befores: list[dict[str, str]], afters: list[dict[str, str]]) -> tuple[str, str | None, list[str], list[str]]:
    """(status, reason, FAIL_TO_PASS, PASS_TO_PASS) from the outcomes of each run without and
    with the patch. Pure."""
    f2p_runs, p2p_runs, broken = [], [], set()
    for before, after in zip(befores, afters):
        f2p_runs.append({t for t, o in after.items() if o == "passed" and before.get(t) in (None, "failed", "error")})
        p2p_runs.append({t for t, o in after.items() if o == "passed" and before.get(t) == "passed"})
        broken |= {t for t, o in before.items() if o == "passed" and after.get(t) in (None, "failed", "error")}
    f2p = set.intersection(*f2p_runs) if f2p_runs else set()
    p2p = set.intersection(*p2p_runs) if p2p_runs else set()
    flaky = (set.union(*f2p_runs) - f2p) | (set.union(*p2p_runs) - p2p) if f2p_runs else set()
    if broken:
        return "invalid", "tests that pass without the patch fail with it: " + ", ".join(sorted(broken)[:10]), \
            sorted(f2p), sorted(p2p)
    if flaky:
        return "invalid", "tests change their verdict between runs (flaky): " + ", ".join(sorted(flaky)[:10]), \
            sorted(f2p), sorted(p2p)
    if not f2p:
        return "invalid", "no test fails without the patch and passes with it", sorted(f2p), sorted(p2p)
    return "valid", None, sorted(f2p), sorted(p2p)
