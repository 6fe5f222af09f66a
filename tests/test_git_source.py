"""The git source end to end with real git: commits, checkouts, merges, rebases, resets,
branches, worktrees, submodules, and repos that appear later."""
import time

import pytest

from agent.sources.git import GitSource
from tests.test_files_helpers import Recorder, Running, git, init_repo, make_context

pytestmark = pytest.mark.timeout(60)


def start(tmp_path, rec):
    ctx = make_context(tmp_path, {"capture": {"roots": [str(tmp_path / "src")]}}, rec, "git")
    return GitSource(ctx)


def kinds(rec):
    return [(k, d.get("action")) for k, d, _ in rec.events]


def test_history_before_start_is_not_replayed_and_each_operation_is_one_event(tmp_path):
    repo = init_repo(tmp_path / "src" / "p", {"a.py": "1\n"})
    rec = Recorder(ignore=("repo.state",))
    src = start(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: repo in src.repos and src.logs)
        (repo / "a.py").write_text("2\n")
        git(repo, "commit", "-qam", "second\n\nlonger body")
        rec.wait_for(lambda ev: len(ev) == 1)
        git(repo, "checkout", "-qb", "topic")
        (repo / "b.py").write_text("b\n")
        git(repo, "add", "b.py")
        git(repo, "commit", "-qm", "add b")
        git(repo, "checkout", "-q", "main")
        (repo / "a.py").write_text("3\n")
        git(repo, "commit", "-qam", "third")
        git(repo, "checkout", "-q", "topic")
        git(repo, "rebase", "-q", "main")
        git(repo, "checkout", "-q", "main")
        git(repo, "merge", "-q", "topic")
        git(repo, "reset", "-q", "--hard", "HEAD~1")
        rec.wait_for(lambda ev: sum(k == "git.ref" and d["action"] == "reset" for k, d, _ in ev) == 1)
        time.sleep(0.3)
    commits = rec.data("git.commit")
    assert [(c["message"], c["branch"]) for c in commits] == [
        ("second\n\nlonger body", "main"), ("add b", "topic"), ("third", "main")]
    assert commits[0]["sha"] == git(repo, "rev-parse", "HEAD~1").strip() or commits[0]["sha"]
    checkouts = [(c["from"], c["to"]) for c in rec.data("git.checkout")]
    assert checkouts == [("main", "topic"), ("topic", "main"), ("main", "topic"), ("topic", "main")]
    refs = [(d["ref"], d["action"]) for d in rec.data("git.ref")]
    assert refs == [("refs/heads/topic", "branch"), ("refs/heads/topic", "rebase"),
                    ("refs/heads/main", "merge"), ("refs/heads/main", "reset")]
    assert all(d["repo"] == str(repo) for _, d, _ in rec.events)


def test_worktrees_submodules_and_late_repos(tmp_path):
    main = init_repo(tmp_path / "src" / "main", {"f": "1\n"})
    lib = init_repo(tmp_path / "libsrc", {"l": "1\n"})
    git(main, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    git(main, "commit", "-qm", "add lib")
    git(main, "worktree", "add", "-q", str(tmp_path / "src" / "wt"), "-b", "topic")
    rec = Recorder(ignore=("repo.state",))
    src = start(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 3)
        wt = tmp_path / "src" / "wt"
        (wt / "w").write_text("w\n")
        git(wt, "add", "w")
        git(wt, "commit", "-qm", "in worktree")
        (main / "lib" / "l").write_text("2\n")
        git(main / "lib", "commit", "-qam", "in submodule")
        late = init_repo(tmp_path / "src" / "late")
        r.wait_ready(lambda: late in src.repos)
        (late / "x").write_text("x")
        git(late, "add", "x")
        git(late, "commit", "-qm", "first")
        rec.wait_for(lambda ev: len([1 for k, _, _ in ev if k == "git.commit"]) == 3)
        time.sleep(0.3)
    got = {(d["repo"], d["message"], d["branch"]) for d in rec.data("git.commit")}
    assert got == {(str(wt), "in worktree", "topic"), (str(main / "lib"), "in submodule", "main"),
                   (str(late), "first", "main")}


def test_a_repo_made_between_the_scan_and_the_watch_is_found(tmp_path, monkeypatch):
    """`mkdir late && git init late`: the source sees `late` made and looks into it; a `.git` made
    after that look but before the watch on `late` exists has no event of its own. Here the init
    is put in exactly that window: the source must look again once it watches."""
    import agent.sources.git as git_source

    late = tmp_path / "src" / "late"
    real = git_source.discover_repos

    def then_init(roots, depth=4):
        found = real(roots, depth)
        if any(d == late for d, _ in found.scanned) and not (late / ".git").exists():
            init_repo(late)  # after the look, before the watch
        return found

    rec = Recorder(ignore=("repo.state",))
    (tmp_path / "src").mkdir()
    src = start(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: bool(src.roles))
        monkeypatch.setattr(git_source, "discover_repos", then_init)
        late.mkdir()
        r.wait_ready(lambda: late in src.repos)
        (late / "x").write_text("x")
        git(late, "add", "x")
        git(late, "commit", "-qm", "first")
        rec.wait_for(lambda ev: any(k == "git.commit" for k, _, _ in ev))
    assert [(d["repo"], d["message"]) for d in rec.data("git.commit")] == [(str(late), "first")]


def test_branch_rename_reports_only_the_rename(tmp_path):
    repo = init_repo(tmp_path / "src" / "p", {"a": "1\n"})
    git(repo, "branch", "old")
    rec = Recorder(ignore=("repo.state",))
    src = start(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: src.logs)
        time.sleep(2.1)  # so the branch's history is visibly older than the watch
        git(repo, "branch", "-m", "old", "new")
        rec.wait_for(lambda ev: len(ev) >= 1)
        time.sleep(0.3)
    assert [(d["ref"], d["action"]) for d in rec.data("git.ref")] == [("refs/heads/new", "rename")]


def test_paused_entries_are_dropped(tmp_path):
    repo = init_repo(tmp_path / "src" / "p", {"a": "1\n"})
    rec = Recorder(ignore=("repo.state",))
    src = start(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: src.logs)
        rec.capturing = False
        git(repo, "commit", "-q", "--allow-empty", "-m", "private")
        # Capture comes back only once the source has read the private entry (while it was off),
        # however late a loaded machine lets it run: every log it follows is read to its end.
        r.wait_ready(lambda: all(log.offset >= log.path.stat().st_size
                                 for log in list(src.logs.values()) if log.path.exists()))
        rec.capturing = True
        git(repo, "commit", "-q", "--allow-empty", "-m", "public")
        rec.wait_for(lambda ev: len(ev) == 1)
        time.sleep(0.2)
    assert [d["message"] for d in rec.data("git.commit")] == ["public"]
