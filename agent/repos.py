"""Git repositories under the capture roots, and what inside them is ignored.

Takes root directories, a discovery depth and the policy's `capture.exclude` globs; gives
`discover_repos` (the repositories under the roots), `git_dirs` (where a work tree's git data
lives, worktrees and submodules included), `RepoIgnore` (is this repo-relative path ignored?) and
`walk_repo` (the directories of a repo worth watching, and the repos nested in it).

Promises: no git process is started (only files are read); discovery and walks never follow
symlinks, never enter `.git`, `node_modules`, virtualenvs, build or cache directories, and
discovery never enters hidden directories; discovery is bounded by `depth`. An ignored directory
is never descended into, so nothing under it is ever listed or watched.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pathspec

# Directories that never hold source worth capturing: VCS internals, dependency trees,
# virtualenvs, build outputs and tool caches. A name match anywhere in a path ignores it.
ALWAYS_IGNORED_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", "bower_components", "__pycache__", ".venv", "venv",
    ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".cache",
    ".gradle", ".next", ".nuxt", ".parcel-cache", ".turbo", ".terraform", ".eggs", ".direnv",
    ".bundle", "build", "dist", "target", "_build", "out", ".dart_tool", ".stack-work",
    ".cargo", ".rustup", ".npm", ".yarn", ".pnpm-store", ".m2", ".local", ".trash",
})
ALWAYS_IGNORED_SUFFIXES = (".egg-info",)


def is_always_ignored_dir(path: Path) -> bool:
    """True for a directory that is never watched: by name, or a virtualenv by its marker file."""
    name = path.name
    if name in ALWAYS_IGNORED_DIRS or name.endswith(ALWAYS_IGNORED_SUFFIXES):
        return True
    # A virtualenv may have any name; `pyvenv.cfg` is what makes it one.
    return (path / "pyvenv.cfg").exists()


def is_repo(path: Path) -> bool:
    """A work tree root: it has a `.git` directory, or a `.git` file (worktree, submodule)."""
    return os.path.lexists(path / ".git")


@dataclasses.dataclass(frozen=True)
class Discovery:
    repos: list[Path]  # work tree roots, absolute, in walk order
    scanned: list[tuple[Path, int]]  # non-repo directories looked into, with their depth


def discover_repos(roots: Iterable[Path | str], depth: int = 4) -> Discovery:
    """The git work trees at or under each root, at most `depth` directories down.

    A repo found is not descended into here (`walk_repo` finds the repos nested in it). Missing or
    unreadable roots are skipped: a policy root that does not exist on this machine is not an error.
    """
    repos: list[Path] = []
    scanned: list[tuple[Path, int]] = []
    seen: set[Path] = set()
    for root in roots:
        root = Path(os.path.expanduser(str(root))).absolute()
        stack = [(root, 0)]
        while stack:
            d, level = stack.pop()
            if d in seen:
                continue
            seen.add(d)
            if is_repo(d):
                repos.append(d)
                continue
            scanned.append((d, level))
            if level >= depth:
                continue
            children = []
            for child in _subdirs(d):
                if child.name.startswith(".") or is_always_ignored_dir(child):
                    continue
                children.append((child, level + 1))
            stack.extend(reversed(children))
    return Discovery(repos, scanned)


def _subdirs(d: Path) -> list[Path]:
    try:
        with os.scandir(d) as it:
            return sorted(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


@dataclasses.dataclass(frozen=True)
class GitDirs:
    git_dir: Path  # per-work-tree: HEAD, logs/HEAD, index
    common_dir: Path  # shared: refs, objects, logs/refs (same as git_dir outside worktrees)


def git_dirs(repo: Path) -> GitDirs | None:
    """Where the repo's git data is. A `.git` file (worktree, submodule) names its gitdir; a
    worktree's gitdir has a `commondir` file naming the shared one. None if it cannot be read."""
    dot = repo / ".git"
    try:
        if dot.is_dir():
            git_dir = dot
        else:
            text = dot.read_text(encoding="utf-8", errors="replace").strip()
            if not text.startswith("gitdir:"):
                return None
            git_dir = (repo / text[len("gitdir:"):].strip()).resolve()
        common = git_dir
        commondir_file = git_dir / "commondir"
        if commondir_file.exists():
            common = (git_dir / commondir_file.read_text(encoding="utf-8").strip()).resolve()
    except OSError:
        return None
    return GitDirs(git_dir, common)


class RepoIgnore:
    """Is a repo-relative path ignored? Combines, in order: the always-ignored directories, the
    policy's exclude globs, and git's own rules (`.gitignore` in each directory, read lazily and
    cached, and `$GIT_DIR/info/exclude`), where a deeper `.gitignore` overrides a shallower one and
    nothing under an ignored directory can be re-included, as in git.

    Exclude globs use gitignore syntax; a glob starting with `/` or `~` is matched against the
    absolute path, any other against the repo-relative path.
    """

    def __init__(self, repo: Path, exclude: Sequence[str] = ()) -> None:
        self.repo = repo
        rel_globs, abs_globs = [], []
        for g in exclude:
            if g.startswith(("/", "~")):
                abs_globs.append(os.path.expanduser(g).lstrip("/"))
            else:
                rel_globs.append(g)
        self._rel_exclude = pathspec.GitIgnoreSpec.from_lines(rel_globs)
        self._abs_exclude = pathspec.GitIgnoreSpec.from_lines(abs_globs)
        self._specs: dict[str, pathspec.GitIgnoreSpec | None] = {}
        self._root_extra = self._read_info_exclude()

    def _read_info_exclude(self) -> list[str]:
        dirs = git_dirs(self.repo)
        if dirs is None:
            return []
        try:
            return (dirs.common_dir / "info" / "exclude").read_text(
                encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []

    def forget(self, dir_rel: str) -> None:
        """Drop the cached rules of one directory (its `.gitignore` changed)."""
        self._specs.pop(dir_rel, None)

    def _spec(self, dir_rel: str) -> pathspec.GitIgnoreSpec | None:
        if dir_rel in self._specs:
            return self._specs[dir_rel]
        lines: list[str] = list(self._root_extra) if dir_rel == "" else []
        try:
            lines += (self.repo / dir_rel / ".gitignore").read_text(
                encoding="utf-8", errors="replace").splitlines()
        except OSError:
            pass
        spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        self._specs[dir_rel] = spec
        return spec

    def _git_ignores(self, rel: str, is_dir: bool) -> bool:
        parts = rel.split("/")
        decision = False
        for i in range(len(parts)):
            spec = self._spec("/".join(parts[:i]))
            if spec is None:
                continue
            sub = "/".join(parts[i:]) + ("/" if is_dir else "")
            result = spec.check_file(sub)
            if result.include is not None:
                decision = result.include
        return decision

    def ignored(self, rel: str, is_dir: bool = False) -> bool:
        """`rel`: '/'-separated, relative to the repo root. Checks every ancestor directory too."""
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            sub_is_dir = is_dir or i < len(parts)
            if self.ignored_here(sub, sub_is_dir):
                return True
        return False

    def ignored_here(self, rel: str, is_dir: bool) -> bool:
        """Like `ignored`, but trusts that every ancestor directory is not ignored (the walker
        and the watcher only ever ask about children of directories they kept)."""
        return self.excluded_here(rel, is_dir) or self._git_ignores(rel, is_dir)

    def excluded_here(self, rel: str, is_dir: bool) -> bool:
        """Ignored whatever git says: always-ignored directories and the policy's excludes."""
        name = rel.rsplit("/", 1)[-1]
        if is_dir and (name in ALWAYS_IGNORED_DIRS or name.endswith(ALWAYS_IGNORED_SUFFIXES)):
            return True
        if name == ".git":
            return True
        probe = rel + "/" if is_dir else rel
        if self._rel_exclude.match_file(probe):
            return True
        return bool(self._abs_exclude.patterns) and self._abs_exclude.match_file(
            str(self.repo / rel).lstrip("/") + ("/" if is_dir else ""))


@dataclasses.dataclass(frozen=True)
class RepoWalk:
    dirs: list[Path]  # directories to watch (the repo root first), none ignored
    nested: list[Path]  # work trees inside this one (submodules, nested clones)


def walk_repo(repo: Path, ignore: RepoIgnore, start: Path | None = None) -> RepoWalk:
    """The directories of `repo` (from `start`, default the root) that are not ignored, and the
    repos nested inside; a nested repo's own files belong to it, not to `repo`."""
    dirs: list[Path] = []
    nested: list[Path] = []
    stack = [start or repo]
    while stack:
        d = stack.pop()
        dirs.append(d)
        for child in reversed(_subdirs(d)):
            rel = child.relative_to(repo).as_posix()
            # A nested work tree is its own repo even when the outer .gitignore lists it (nested
            # clones usually are), but the policy's excludes still apply to it.
            if ignore.excluded_here(rel, True) or (child / "pyvenv.cfg").exists():
                continue
            if is_repo(child):
                nested.append(child)
            elif not ignore.ignored_here(rel, True):
                stack.append(child)
    return RepoWalk(dirs, nested)


def iter_all_repos(roots: Iterable[Path | str], depth: int, exclude: Sequence[str] = ()
                   ) -> Iterator[tuple[Path, RepoIgnore, RepoWalk]]:
    """Every repo under the roots, nested ones included, with its ignore rules and its walk."""
    pending = list(discover_repos(roots, depth).repos)
    seen: set[Path] = set()
    while pending:
        repo = pending.pop(0)
        if repo in seen:
            continue
        seen.add(repo)
        ignore = RepoIgnore(repo, exclude)
        walk = walk_repo(repo, ignore)
        pending.extend(walk.nested)
        yield repo, ignore, walk


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: int | str) -> int:
    """A policy size ("64MiB", "1GB", 4096) in bytes; agent.policy.parse_size when present."""
    try:
        from agent.policy import parse_size as policy_parse_size
    except ImportError:
        policy_parse_size = None
    if policy_parse_size is not None:
        return policy_parse_size(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    digits = text.rstrip("BKMGTiIbkmgt")
    unit = text[len(digits):].upper()
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise ValueError(f"size {value!r} is not a number with a unit such as 64MiB")
    return int(digits) * _SIZE_UNITS[unit]


@dataclasses.dataclass(frozen=True)
class CaptureSettings:
    """The `[capture]` policy keys the files and git sources read, defaults filled."""
    roots: tuple[Path, ...] = (Path("~").expanduser(),)
    exclude: tuple[str, ...] = ()
    repo_depth: int = 4
    debounce_ms: int = 300
    max_file_bytes: int = 1 << 20
    diff_cache_bytes: int = 64 << 20

    @classmethod
    def from_policy(cls, policy: object) -> "CaptureSettings":
        """`policy`: an agent.policy.Policy (its `.data`) or the policy dict itself."""
        data = getattr(policy, "data", policy) or {}
        cap = data.get("capture") or {}
        roots = cap.get("roots") or ["~"]
        return cls(
            roots=tuple(Path(os.path.expanduser(r)).absolute() for r in roots),
            exclude=tuple(cap.get("exclude") or ()),
            repo_depth=int(cap.get("repo_depth", 4)),
            debounce_ms=int(cap.get("debounce_ms", 300)),
            max_file_bytes=parse_size(cap.get("max_file_bytes", "1MiB")),
            diff_cache_bytes=parse_size(cap.get("diff_cache_bytes", "64MiB")),
        )
