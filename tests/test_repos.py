"""Repository discovery under the roots and ignore matching, on real directory trees."""
from pathlib import Path

import pytest

from agent.repos import (CaptureSettings, RepoIgnore, discover_repos, git_dirs, iter_all_repos,
                         parse_size, walk_repo)
from tests.test_files_helpers import git, init_repo


def test_discovery_finds_repos_within_depth_and_skips_what_it_must(tmp_path):
    init_repo(tmp_path / "a")
    init_repo(tmp_path / "x" / "y" / "b")
    init_repo(tmp_path / "1" / "2" / "3" / "4" / "deep")  # depth 5: beyond 4
    init_repo(tmp_path / ".hidden" / "c")
    init_repo(tmp_path / "node_modules" / "d")
    init_repo(tmp_path / "env" / "e")
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    init_repo(tmp_path / "a" / "inner")  # inside a repo: found by walk_repo, not discovery
    found = discover_repos([tmp_path], depth=4)
    assert found.repos == [tmp_path / "a", tmp_path / "x" / "y" / "b"]
    assert discover_repos([tmp_path], depth=5).repos[0] == tmp_path / "1" / "2" / "3" / "4" / "deep"
    assert discover_repos([tmp_path / "missing"], depth=4).repos == []


def test_ignore_rules_combine_gitignore_nested_negation_exclude_and_always(tmp_path):
    repo = init_repo(tmp_path / "r")
    (repo / ".gitignore").write_text("*.log\n!keep.log\nbuild-out/\n/top.txt\n")
    (repo / "sub").mkdir()
    (repo / "sub" / ".gitignore").write_text("local.txt\n!*.log\n")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("secret-notes.md\n")
    ign = RepoIgnore(repo, ["**/*.pem", str(tmp_path / "r" / "private") + "/**"])
    table = [
        ("a.py", False, False), ("a.log", False, True), ("keep.log", False, False),
        ("build-out", True, True), ("build-out/x.py", False, True), ("top.txt", False, True),
        ("sub/top.txt", False, False), ("sub/local.txt", False, True), ("sub/x.log", False, False),
        ("secret-notes.md", False, True), ("k/key.pem", False, True), ("private/a.py", False, True),
        ("node_modules", True, True), ("src/node_modules/x.js", False, True),
        (".venv/lib/x.py", False, True), ("__pycache__/m.pyc", False, True),
        ("pkg.egg-info/PKG-INFO", False, True), (".git/config", False, True),
        (".github/workflows/ci.yml", False, False),
    ]
    for rel, is_dir, expected in table:
        assert ign.ignored(rel, is_dir) is expected, rel


def test_walk_skips_ignored_trees_and_finds_nested_repos(tmp_path):
    repo = init_repo(tmp_path / "r")
    (repo / ".gitignore").write_text("generated/\n")
    for d in ["src/pkg", "node_modules/m/lib", "generated/x", "build", ".venv/lib", "docs"]:
        (repo / d).mkdir(parents=True)
    (repo / "myenv").mkdir()
    (repo / "myenv" / "pyvenv.cfg").write_text("")
    init_repo(repo / "vendor" / "dep")
    walk = walk_repo(repo, RepoIgnore(repo))
    rels = sorted(p.relative_to(repo).as_posix() for p in walk.dirs)
    assert rels == [".", "docs", "src", "src/pkg", "vendor"]
    assert walk.nested == [repo / "vendor" / "dep"]
    assert [r for r, _, _ in iter_all_repos([tmp_path], 4)] == [repo, repo / "vendor" / "dep"]


def test_git_dirs_for_worktree_and_submodule(tmp_path):
    main = init_repo(tmp_path / "main", {"f": "1\n"})
    git(main, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "topic")
    dirs = git_dirs(tmp_path / "wt")
    assert dirs.common_dir == (main / ".git").resolve()
    assert dirs.git_dir == (main / ".git" / "worktrees" / "wt").resolve()
    lib = init_repo(tmp_path / "lib", {"l": "1\n"})
    git(main, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    sub = git_dirs(main / "lib")
    assert sub.git_dir == (main / ".git" / "modules" / "lib").resolve() == sub.common_dir
    assert git_dirs(tmp_path / "nothing") is None


@pytest.mark.parametrize("text,expected", [
    (4096, 4096), ("64MiB", 64 << 20), ("1GiB", 1 << 30), ("10KB", 10_000), ("7", 7), ("5B", 5)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_capture_settings_defaults_and_home_expansion():
    s = CaptureSettings.from_policy({})
    assert s.roots == (Path.home(),) and s.debounce_ms == 300 and s.repo_depth == 4
    assert s.max_file_bytes == 1 << 20 and s.diff_cache_bytes == 64 << 20
    s = CaptureSettings.from_policy({"capture": {"roots": ["~/src"], "max_file_bytes": 10,
                                                 "exclude": ["*.pem"]}})
    assert s.roots == (Path.home() / "src",) and s.max_file_bytes == 10 and s.exclude == ("*.pem",)
