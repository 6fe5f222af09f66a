"""`repo.state` and the `file.save` chain with a real daemon and real git: the state's diff applies
on a fresh clone at its head, and the saves that follow, applied in order, rebuild the working tree
exactly; where they cannot, the save says why (`chain_break`) and the state says why its diff is
left out (`diff_omitted`)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.sources.files_diff import unified_diff
from agent.sources.git_state import (Redacted, clean_remote, hunk_ranges, redaction_breaks,
                                     split_sections)
from tests.replay_chain import ChainBroken, replay, tree

pytestmark = pytest.mark.timeout(120)

GIT_ENV = {"GIT_AUTHOR_NAME": "Ana", "GIT_AUTHOR_EMAIL": "ana@example.com",
           "GIT_COMMITTER_NAME": "Ana", "GIT_COMMITTER_EMAIL": "ana@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                          capture_output=True, text=True, timeout=30).stdout


# --- pure helpers ---------------------------------------------------------------------------

@pytest.mark.parametrize("url,expected", [
    ("https://ana:ghp_x@github.com/acme/app.git", "https://github.com/acme/app.git"),
    ("https://oauth2@gitlab.example.com:8443/a/b.git", "https://gitlab.example.com:8443/a/b.git"),
    ("ssh://git:pw@host.example.com/srv/app.git", "ssh://git@host.example.com/srv/app.git"),
    ("ssh://git@host.example.com/srv/app.git", "ssh://git@host.example.com/srv/app.git"),
    ("git@github.com:acme/app.git", "git@github.com:acme/app.git"),
    ("/srv/git/app.git", "/srv/git/app.git"),
    ("https://github.com/acme/app.git\n", "https://github.com/acme/app.git"),
    ("", None),
    (None, None),
])
def test_remote_loses_its_credentials(url, expected):
    assert clean_remote(url) == expected


def test_sections_line_up_with_the_paths_or_say_they_do_not():
    diff = ("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-1\n+2\n"
            "diff --git a/y z b/y z\n--- a/y z\n+++ b/y z\n@@ -1 +1 @@\n-1\n+2\n")
    sections = split_sections(diff, ["x", "y z"])
    assert list(sections) == ["x", "y z"] and sections["y z"].startswith("diff --git a/y z")
    assert split_sections(diff, ["x"]) is None
    assert split_sections("", []) == {}


def test_redaction_breaks_only_where_the_diff_cannot_carry_the_real_change():
    old = "\n".join(f"line {i}" for i in range(20)) + "\n"
    new = old.replace("line 18", "line eighteen")
    diff = unified_diff(old, new, "f")
    assert hunk_ranges(diff) == [(15, 20, 15, 20)]
    secret_far = Redacted(frozenset({1}), b"same")
    assert not redaction_breaks(diff, secret_far, secret_far)  # outside the hunk, unchanged
    assert redaction_breaks(diff, secret_far, Redacted(frozenset({1}), b"rotated"))
    assert redaction_breaks(diff, Redacted(frozenset({16}), b"a"), Redacted(frozenset({16}), b"a"))
    assert redaction_breaks(diff, Redacted(None, b""), Redacted(None, b""))  # spans lines


# --- with the daemon ------------------------------------------------------------------------

A_PY = "TOKEN = 'SECRET-abc123'\n" + "".join(f"x{i} = {i}\n" for i in range(10))


@pytest.fixture
def world(request, tmp_path, daemon_factory):
    """A repo under the roots and a daemon to start; `request.param`: the files backend."""
    src = tmp_path / "src"
    repo = src / "app"
    (repo / "tests").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text(A_PY)
    (repo / "b.py").write_text("b = 1\n")
    (repo / "tests" / "test_a.py").write_text("def test_a():\n    assert True\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    git(repo, "branch", "old")
    (repo / "b.py").write_text("b = 2\n")
    git(repo, "commit", "-qam", "b two")
    git(repo, "remote", "add", "origin", "https://ana:hunter2@git.example.com/acme/app.git")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[capture]\nroots = ["{src}"]\nsources = ["files", "git"]\n'
                      'max_file_bytes = "4KiB"\n'
                      '[redaction]\nrules = [{ name = "test-secret", pattern = "SECRET-[A-Za-z0-9]+", '
                      'action = "replace" }]\n[upload]\ninterval = "1h"\n')
    backend = getattr(request, "param", "inotify")
    d = daemon_factory(policy=policy, extra_env={"TRACECAP_FILES_BACKEND": backend})

    def start():
        d.start()
        d.cli("opt-in")
        deadline = time.monotonic() + 20
        while not all(d.status()["sources"].get(n, "").startswith("running") for n in ("files", "git")):
            assert time.monotonic() < deadline, d.status()["sources"]
            time.sleep(0.2)
        return d

    return start, repo, tmp_path


def wait_for(d, pred, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        evs = d.events()
        if pred(evs):
            return evs
        assert time.monotonic() < deadline, (
            "\n".join(str((e["seq"], e["kind"], e["data"])) for e in evs[-12:]) + d.stderr()[-3000:])
        time.sleep(0.25)


def states(evs, repo):
    return [e for e in evs if e["kind"] == "repo.state" and e["data"]["repo"] == str(repo)]


def saved(evs, path, marker=None):
    return any(e["kind"] == "file.save" and e["data"]["path"] == path
               and (marker is None or marker in e["data"].get("diff", "")) for e in evs)


def assert_rebuilds(d, repo: Path, tmp: Path, name: str) -> list[dict]:
    """Let the files source settle, then rebuild the tree from the events and compare. A second
    of quiet is no proof that every save is in (a loaded machine can pause a source longer): until
    the rebuilt tree matches, settle again, bounded."""
    deadline = time.monotonic() + 30
    attempt = 0
    while True:
        evs = settle(d)
        try:
            rebuilt = replay(repo, evs, str(repo), tmp / f"{name}-{attempt}")
        except ChainBroken:
            if time.monotonic() > deadline:
                raise
        else:
            if tree(rebuilt) == tree(repo) or time.monotonic() > deadline:
                break
        attempt += 1
    assert tree(rebuilt) == tree(repo)
    return evs


def settle(d, quiet: float = 1.0) -> list[dict]:
    last, since = None, time.monotonic()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        evs = d.events()
        if evs and evs[-1]["seq"] != last:
            last, since = evs[-1]["seq"], time.monotonic()
        elif time.monotonic() - since >= quiet:
            return evs
        time.sleep(0.2)
    return d.events()


@pytest.mark.parametrize("world", ["inotify", "watchdog"], indirect=True)
def test_states_and_saves_rebuild_the_working_tree(world):
    start, repo, tmp = world
    # Uncommitted work before the daemon starts: a tracked change and a staged new file.
    with open(repo / "a.py", "a") as f:
        f.write("y = 'uncommitted'\n")
    (repo / "n.py").write_text("n = 1\n")
    git(repo, "add", "n.py")
    d = start()

    evs = wait_for(d, lambda e: states(e, repo))
    first = states(evs, repo)[0]["data"]
    assert first["head"] == git(repo, "rev-parse", "HEAD").strip()
    assert first["branch"] == "main"
    assert first["remote"] == "https://git.example.com/acme/app.git"
    assert "+y = 'uncommitted'" in first["diff"] and "+n = 1" in first["diff"]
    assert "SECRET" not in first["diff"]  # the committed secret is four lines above the change
    assert_rebuilds(d, repo, tmp, "r1")

    # Edits: a tracked file, a new file, a rename of the staged one.
    with open(repo / "a.py", "a") as f:
        f.write("z = 'edit one'\n")
    (repo / "c.py").write_text("c = 1\n")
    os.rename(repo / "n.py", repo / "m.py")
    wait_for(d, lambda e: saved(e, "a.py", "edit one") and saved(e, "c.py") and saved(e, "m.py"))
    assert_rebuilds(d, repo, tmp, "r2")

    # A commit that leaves a.py's change uncommitted: a new state after the commit.
    git(repo, "add", "c.py", "m.py", "n.py")
    git(repo, "commit", "-qm", "add c and m")  # the index: a.py stays uncommitted
    head = git(repo, "rev-parse", "HEAD").strip()
    evs = wait_for(d, lambda e: any(s["data"]["head"] == head for s in states(e, repo)))
    commit = next(e for e in evs if e["kind"] == "git.commit" and e["data"]["sha"] == head)
    state = next(s for s in states(evs, repo) if s["data"]["head"] == head)
    assert state["seq"] > commit["seq"]
    assert "diff --git a/a.py b/a.py" in state["data"]["diff"] and "c.py" not in state["data"]["diff"]
    with open(repo / "a.py", "a") as f:
        f.write("w = 'edit two'\n")
    wait_for(d, lambda e: saved(e, "a.py", "edit two"))
    assert_rebuilds(d, repo, tmp, "r3")

    # A checkout that rewrites and deletes files around the uncommitted change.
    git(repo, "checkout", "-q", "old")
    old = git(repo, "rev-parse", "HEAD").strip()
    evs = wait_for(d, lambda e: any(s["data"]["head"] == old for s in states(e, repo)))
    checkout = next(e for e in evs if e["kind"] == "git.checkout")
    state = next(s for s in states(evs, repo) if s["data"]["head"] == old)
    assert state["seq"] > checkout["seq"] and state["data"]["branch"] == "old"
    (repo / "tests" / "test_a.py").write_text("def test_a():\n    assert 1 + 1 == 2\n")
    wait_for(d, lambda e: saved(e, "tests/test_a.py", "1 + 1"))
    evs = assert_rebuilds(d, repo, tmp, "r4")
    assert not [e for e in evs if e["kind"] == "file.save" and e["data"].get("chain_break")]


def test_chain_breaks_and_omitted_diffs_say_why(world):
    start, repo, tmp = world
    (repo / "blob.bin").write_bytes(b"\0\1\2")
    (repo / "big.txt").write_text("small\n")
    git(repo, "add", "blob.bin", "big.txt")
    git(repo, "commit", "-qm", "blob and big")
    d = start()
    wait_for(d, lambda e: states(e, repo))

    (repo / "blob.bin").write_bytes(b"\0\1\2\3")
    (repo / "big.txt").write_text("x" * 10_000 + "\n")
    with open(repo / "b.py", "a") as f:
        f.write("key = 'SECRET-zzz999'\n")
    (repo / ".env").write_text("A=1\n")
    evs = wait_for(d, lambda e: all(saved(e, p) for p in ("blob.bin", "big.txt", "b.py", ".env")))
    breaks = {e["data"]["path"]: e["data"].get("chain_break") for e in evs if e["kind"] == "file.save"}
    assert breaks == {"blob.bin": "binary", "big.txt": "too_large", "b.py": "redacted",
                      ".env": "never_capture"}
    with pytest.raises(ChainBroken):
        replay(repo, evs, str(repo), tmp / "broken")

    # A state with a binary change in its tree leaves its diff out; so does one with a secret.
    git(repo, "checkout", "-q", "--", "big.txt", "b.py")
    git(repo, "commit", "-qm", "nothing much", "--allow-empty")
    evs = wait_for(d, lambda e: len(states(e, repo)) == 2)
    assert states(evs, repo)[1]["data"]["diff_omitted"] == "binary"
    git(repo, "checkout", "-q", "--", "blob.bin")
    with open(repo / "b.py", "a") as f:
        f.write("key = 'SECRET-zzz999'\n")
    git(repo, "commit", "-qm", "again", "--allow-empty")
    evs = wait_for(d, lambda e: len(states(e, repo)) == 3)
    assert states(evs, repo)[2]["data"]["diff_omitted"] == "redacted"
    # A save of a file whose change that state left out: its base is unknown to a replay.
    with open(repo / "b.py", "a") as f:
        f.write("c = 3\n")
    evs = wait_for(d, lambda e: saved(e, "b.py", "c = 3"))
    after = states(evs, repo)[2]["seq"]
    first_b = next(e["data"] for e in evs if e["kind"] == "file.save" and e["seq"] > after
                   and e["data"]["path"] == "b.py")
    assert first_b["chain_break"] == "unknown_base"
    (repo / "big.txt").write_text("y" * 10_000 + "\n")
    git(repo, "checkout", "-q", "--", "b.py")
    git(repo, "commit", "-qm", "third", "--allow-empty")
    evs = wait_for(d, lambda e: len(states(e, repo)) == 4)
    assert states(evs, repo)[3]["data"]["diff_omitted"] == "too_large"
    # Nothing raw reached the journal.
    assert not any("SECRET-zzz999" in str(e["data"]) for e in evs)
    # The next state restarts the chain: clean tree, then an edit, rebuilt exactly.
    git(repo, "checkout", "-q", "--", "big.txt")
    git(repo, "commit", "-qm", "clean", "--allow-empty")
    evs = wait_for(d, lambda e: len(states(e, repo)) == 5)
    assert states(evs, repo)[4]["data"]["diff"] == ""
    (repo / ".env").unlink()
    with open(repo / "a.py", "a") as f:
        f.write("after = 1\n")
    wait_for(d, lambda e: saved(e, "a.py", "after = 1"))
    rebuilt = replay(repo, settle(d), str(repo), tmp / "again")
    assert tree(rebuilt) == tree(repo)


def test_at_content_level_metadata_states_and_saves_carry_no_content(tmp_path):
    from redaction import Redactor

    from agent.sources.files import FilesSource
    from agent.sources.git import GitSource
    from agent.sources.git_state import RepoStates
    from tests.test_files_helpers import Recorder, Running, init_repo, make_context

    repo = init_repo(tmp_path / "src" / "app", {"a.py": "a = 1\n"})
    (repo / "a.py").write_text("a = 2\n")
    redactor = Redactor.from_policy({"content": "metadata"}, hmac_key=b"k" * 32)
    shared, rec = RepoStates(), Recorder()
    policy = {"capture": {"roots": [str(tmp_path / "src")], "debounce_ms": 100}}
    sources = []
    for name, cls in (("git", GitSource), ("files", FilesSource)):
        ctx = make_context(tmp_path, policy, rec, name, redactor=redactor)
        ctx.repo_states = shared
        sources.append(cls(ctx))
    with Running(sources[0]) as g, Running(sources[1]) as f:
        g.wait_ready(lambda: shared.current(repo) is not None)
        f.wait_ready(lambda: repo in sources[1].repos)
        (repo / "a.py").write_text("a = 3\n")
        rec.wait_for(lambda ev: any(k == "file.save" for k, _, _ in ev))
    (state,) = rec.data("repo.state")
    assert state["diff_omitted"] == "metadata" and "diff" not in state
    (save,) = rec.data("file.save")
    assert save["chain_break"] == "metadata" and "diff" not in save


def test_before_the_first_commit_the_index_is_diffed_against_the_empty_tree(tmp_path):
    from agent.sources.git_state import read_repo_state
    from tests.test_files_helpers import make_redactor

    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("a = 1\n")
    (repo / "untracked.py").write_text("u = 1\n")
    git(repo, "add", "a.py")
    data, state = read_repo_state(repo, "main", make_redactor(), 1 << 20, 1)
    assert data["head"] is None and data["branch"] == "main"
    assert "+a = 1" in data["diff"] and "untracked" not in data["diff"]
    assert list(state.sections) == ["a.py"]
    data, _ = read_repo_state(tmp_path / "not-a-repo", None, make_redactor(), 1 << 20, 1)
    assert data["diff_omitted"] == "error" and "diff" not in data


def test_a_version_gone_from_the_cache_is_replaced_by_heads_blob_not_the_state(tmp_path):
    from agent.sources.files import FilesSource
    from agent.sources.git import GitSource
    from agent.sources.git_state import RepoStates
    from tests.test_files_helpers import Recorder, Running, init_repo, make_context

    body = "".join(f"line {i}\n" for i in range(40))  # over the cache's 64 bytes
    repo = init_repo(tmp_path / "src" / "app", {"a.py": body})
    (repo / "a.py").write_text(body + "uncommitted\n")
    shared, rec = RepoStates(), Recorder()
    policy = {"capture": {"roots": [str(tmp_path / "src")], "debounce_ms": 100,
                          "diff_cache_bytes": 64}}
    sources = []
    for name, cls in (("git", GitSource), ("files", FilesSource)):
        ctx = make_context(tmp_path, policy, rec, name)
        ctx.repo_states = shared
        sources.append(cls(ctx))
    with Running(sources[0]) as g, Running(sources[1]) as f:
        g.wait_ready(lambda: shared.current(repo) is not None)
        f.wait_ready(lambda: repo in sources[1].repos)
        for n in (1, 2):
            with open(repo / "a.py", "a") as fh:
                fh.write(f"edit {n}\n")
            rec.wait_for(lambda ev: sum(k == "file.save" for k, _, _ in ev) == n)
    saves = rec.data("file.save")
    assert [s["base"] for s in saves] == ["previous", "head"]  # the first from the state's tree
    added = [ln for ln in saves[0]["diff"].splitlines() if ln[:1] == "+" and ln[:3] != "+++"]
    assert added == ["+edit 1"]  # the step, not the whole uncommitted change
    events = [{"seq": i + 1, "kind": k, "data": d} for i, (k, d, _) in enumerate(rec.events)]
    rebuilt = replay(repo, events, str(repo), tmp_path / "rebuilt")
    assert tree(rebuilt) == tree(repo)


def test_a_repo_that_appears_under_the_roots_gets_a_state_and_another_after_its_first_commit(tmp_path):
    from agent.sources.git import GitSource
    from tests.test_files_helpers import Recorder, Running, make_context

    (tmp_path / "src").mkdir()
    rec = Recorder()
    src = GitSource(make_context(tmp_path, {"capture": {"roots": [str(tmp_path / "src")]}}, rec, "git"))
    with Running(src) as r:
        r.wait_ready(lambda: src._watcher is not None and src.roles)
        repo = tmp_path / "src" / "late"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        rec.wait_for(lambda ev: any(k == "repo.state" for k, _, _ in ev))
        (repo / "a.py").write_text("a = 1\n")
        git(repo, "add", "a.py")
        git(repo, "commit", "-qm", "first")
        head = git(repo, "rev-parse", "HEAD").strip()
        rec.wait_for(lambda ev: any(k == "repo.state" and d["head"] == head for k, d, _ in ev))
    kinds = [k for k, _, _ in rec.events]
    assert kinds.index("git.commit") < len(kinds) - 1 - kinds[::-1].index("repo.state")
    first = rec.data("repo.state")[0]
    assert first["repo"] == str(repo) and first["head"] is None and first["diff"] == ""
