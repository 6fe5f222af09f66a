"""The whole product as a user meets it: a real daemon, a real bash with the hook in tmux, real vim,
pytest and git, then flush and decrypt.

1. The coding loop: a failing test, a fix saved with vim, a passing test, a commit: all in the
   journal in order, and in the decrypted bundle; the first repo.state and the saves after it,
   replayed on a fresh clone, give the tree that was committed.
2. Secrets typed in the shell, written to a watched file, and put in a note appear nowhere under
   the state directory (journal, spool, outbox, uploads, logs) nor in any decrypted bundle.
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
from tests.replay_chain import replay as replay_chain
from tests.replay_chain import tree

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None or shutil.which("vim") is None,
                                 reason="needs tmux and vim")]

# Synthetic secrets in formats the built-in detectors know (none is a real credential).
GITHUB = "ghp_" + "Zq8Lm2Xv9Rt4Yb7Nc1Kd6Wf3Hs5Jp0Ag9UeX"  # 36 characters, as GitHub issues them
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Lm2Xv9R"
STRIPE = "sk_live_" + "51HqLm2Xv9Rt4Yb7Nc1Kd6Wf"
PASSWORD = "hunter2-" + "Zq8Lm2Xv9R"


class Shell:
    def __init__(self, env: dict, cwd: Path) -> None:
        self.sock = f"tc-{uuid.uuid4().hex[:8]}"
        self.env = env
        cmd = "env -i " + " ".join(f"{k}={_q(v)}" for k, v in env.items()) + " bash --norc --noprofile -i"
        self._tmux("new-session", "-d", "-s", "t", "-x", "220", "-y", "50", "-c", str(cwd), cmd)
        time.sleep(0.5)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True, capture_output=True,
                              text=True, timeout=20).stdout

    def run(self, line: str, settle: float = 0.3) -> None:
        self._tmux("send-keys", "-t", "t", "-l", line)
        self._tmux("send-keys", "-t", "t", "Enter")
        time.sleep(settle)

    def wait_prompt_count(self, marker: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self._tmux("capture-pane", "-p", "-J", "-S", "-300", "-t", "t"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{marker!r} never appeared: " + self._tmux("capture-pane", "-p", "-t", "t"))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, timeout=10)


def _q(v: str) -> str:
    return "'" + v.replace("'", "'\\''") + "'"


@pytest.fixture
def world(tmp_path, daemon_factory):
    src = tmp_path / "src"
    repo = src / "app"
    repo.mkdir(parents=True)
    env_git = {"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.invalid",
               "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.invalid"}
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env={**os.environ, **env_git}, timeout=30)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[capture]\nroots = ["{src}"]\nsources = ["files", "shell", "tests", "git"]\n'
                      f'[upload]\ninterval = "1h"\n')
    os.chmod(policy, 0o644)
    d = daemon_factory(policy=policy)
    d.start()
    d.cli("opt-in")
    deadline = time.monotonic() + 20
    while not all(s.startswith("running") for n, s in d.status()["sources"].items()
                  if n in ("files", "shell", "git")) and time.monotonic() < deadline:
        time.sleep(0.2)
    venv_bin = os.path.dirname(TRACECAP)
    env = {"HOME": str(tmp_path), "PATH": f"{venv_bin}:/usr/bin:/bin", "TERM": "xterm",
           "TRACECAP_HOME": d.env["TRACECAP_HOME"], "TRACECAP_POLICY": str(policy), "LANG": "C.UTF-8",
           **env_git}
    sh = Shell(env, repo)
    sh.run('eval "$(tracecap shell-init bash)"')
    yield d, sh, repo
    sh.close()


def wait_for(d: DaemonProcess, pred, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = d.events()
        if pred(evs):
            return evs
        time.sleep(0.3)
    raise AssertionError(f"condition not met; events: {[e['kind'] for e in d.events()]}")


def decrypt_all(d: DaemonProcess) -> list[dict]:
    out = []
    for b in sorted((d.home / "uploads").glob("*.tcb")):
        r = subprocess.run([TRACECAP, "bundle", "decrypt", str(b), "--key", str(d.home / "keys" / "org.key")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out += [json.loads(line) for line in r.stdout.splitlines()]
    return out


def replay(events: list[dict], repo_key: str, repo: Path) -> Path:
    return replay_chain(repo, events, repo_key, repo.parent.parent / f"replay-{uuid.uuid4().hex[:6]}")


def git_show(repo: Path, rev: str, path: str) -> bytes:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True,
                          timeout=30).stdout


def test_coding_loop_from_failing_to_passing_test(world):
    d, sh, repo = world
    sh.run("python3 -m pytest -q -p no:cacheprovider", settle=0.1)
    sh.wait_prompt_count("1 failed")
    # The story's order is the order things happened in: each step waits until the daemon has
    # journaled the one before (sources journal on their own schedules; a fixed pause between
    # steps is no bound on a loaded machine).
    wait_for(d, lambda e: sum(x["kind"] == "test.run" for x in e) == 1)
    sh.run("vim -u NONE -c '%s/a - b/a + b/' -c wq calc.py", settle=0.1)
    wait_for(d, lambda e: any(x["kind"] == "file.save" and x["data"]["path"] == "calc.py" for x in e))
    sh.run("python3 -m pytest -q -p no:cacheprovider", settle=0.1)
    sh.wait_prompt_count("1 passed")
    wait_for(d, lambda e: sum(x["kind"] == "test.run" for x in e) == 2)
    sh.run("git commit -qam 'fix add'", settle=0.5)
    evs = wait_for(d, lambda e: any(x["kind"] == "git.commit" for x in e)
                   and sum(x["kind"] == "test.run" for x in e) == 2)
    story = [(e["kind"], e["data"]) for e in evs if e["kind"] in ("test.run", "file.save", "git.commit")]
    kinds = [k for k, _ in story]
    assert kinds == ["test.run", "file.save", "test.run", "git.commit"], kinds
    first, save, second, commit = (data for _, data in story)
    assert first["runner"] == "pytest" and first["exit"] != 0 and first["failed"] == 1
    assert first["failures"][0]["name"].endswith("test_add")
    assert save["path"] == "calc.py" and "-    return a - b" in save["diff"] and "+    return a + b" in save["diff"]
    assert second["exit"] == 0 and second["passed"] == 1
    assert commit["message"].startswith("fix add")
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(seqs)
    # The first repo.state and the saves after it, replayed on a fresh clone, are what was committed.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          timeout=30).stdout.strip()
    evs = wait_for(d, lambda e: any(x["kind"] == "repo.state" and x["data"]["head"] == head for x in e))
    states = [e for e in evs if e["kind"] == "repo.state"]
    commit_seq = next(e["seq"] for e in evs if e["kind"] == "git.commit")
    assert states[0]["seq"] < commit_seq < states[-1]["seq"] and states[-1]["data"]["diff"] == ""
    rebuilt = replay([e for e in evs if e["seq"] < commit_seq], states[0]["data"]["repo"], repo)
    assert tree(rebuilt) == {p: git_show(repo, head, p) for p in ("calc.py", "test_calc.py")}
    assert d.cli("flush").returncode == 0
    bundled = decrypt_all(d)
    assert [e["seq"] for e in bundled] == [e["seq"] for e in evs][: len(bundled)]
    assert {e["kind"] for e in bundled} >= {"test.run", "file.save", "git.commit", "shell.start"}


def test_secrets_never_reach_disk_or_bundles(world):
    d, sh, repo = world
    sh.run(f"export GITHUB_TOKEN={GITHUB}")
    sh.run(f"curl -s -u admin:{PASSWORD} https://example.invalid/ || true")
    sh.run(f"printf 'AWS_SECRET_ACCESS_KEY = \"{AWS_SECRET}\"\\nSTRIPE_KEY = \"{STRIPE}\"\\n' > settings.py")
    d.cli("note", f"rotating {GITHUB} today")
    wait_for(d, lambda e: any(x["kind"] == "file.save" and x["data"]["path"] == "settings.py" for x in e)
             and any("curl" in x["data"].get("cmd", "") for x in e))
    secrets = [GITHUB, AWS_SECRET, STRIPE, PASSWORD]

    def leaks() -> list[tuple[str, str]]:
        found = []
        for path in d.home.rglob("*"):
            try:
                blob = path.read_bytes() if path.is_file() else b""
            except FileNotFoundError:  # a spool file erased while we looked
                continue
            found += [(str(path), s) for s in secrets if s.encode() in blob]
        return found
    # The shell source erases the raw spool records once their events are durable: wait for that
    # (bounded) rather than a fixed pause a loaded machine can outlast.
    deadline = time.monotonic() + 20
    while leaks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.cli("flush").returncode == 0
    d.stop()
    assert leaks() == []
    bundled = json.dumps(decrypt_all(d))
    assert not [s for s in secrets if s in bundled]
    assert "[REDACTED:" in bundled
    note = [e for e in decrypt_all(d) if e["kind"] == "user.note"][0]
    assert note["data"]["text"].startswith("rotating [REDACTED:")


def test_nothing_is_captured_while_paused(world):
    d, sh, repo = world
    d.cli("pause")
    sh.run("echo paused-command-marker")
    (repo / "calc.py").write_text("def add(a, b):\n    return a * b  # paused edit\n")
    sh.run("git commit -qam 'paused commit'", settle=1.0)
    time.sleep(1.0)
    d.cli("resume")
    sh.run("echo after-resume-marker")
    evs = wait_for(d, lambda e: any("after-resume-marker" in x["data"].get("cmd", "") for x in e))
    kinds = [e["kind"] for e in evs]
    pause_at, resume_at = kinds.index("agent.pause"), kinds.index("agent.resume", 1)
    assert [(e["kind"], e["data"]) for e in evs[pause_at + 1:resume_at]] == []
    blob = json.dumps(evs)
    assert "paused-command-marker" not in blob and "paused commit" not in blob and "paused edit" not in blob
