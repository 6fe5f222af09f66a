"""The git source: commits, checkouts and ref moves of the repositories under the roots.

Takes the policy's `[capture]` roots, repo_depth and exclude; gives `git.commit` (repo, sha, branch,
message: the commit's full message, redacted by emit; parent, action), `git.checkout` (repo, from,
to, old, new) and `git.ref` (repo, ref, old, new, action: merge, rebase, reset, pull, branch,
rename, fetch, push, stash, ...) and `repo.state` (see git_state) when a repository is first
seen and after the events of each batch of HEAD reflog entries, computed on a thread of its own
(`StateAnnouncer`). `repo` is the work tree's absolute root.

Promises:
- Read from the reflogs (`logs/HEAD` of each work tree, `logs/refs/...` of each repository),
  incrementally: each log's read offset is remembered, and reading is driven by inotify events on
  the logs directories, never by polling. History from before the source started is not replayed;
  a log that appears later (a new branch, a renamed one, a first commit) yields only the entries
  written since its repository was first watched.
- Linked worktrees (`.git` file naming a gitdir with a `commondir`) each report their own HEAD;
  the shared branch logs are read once. Submodules and nested clones are repositories of their own.
  See git_reflog for which log speaks for what, so that nothing is reported twice.
- One `git cat-file --batch` per repository, started on the first commit seen, reads the full
  commit message; the reflog's subject line stands in when that fails.
- While capture is off, entries are read (offsets advance) and dropped.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agent.repos import (CaptureSettings, GitDirs, RepoIgnore, discover_repos, git_dirs,
                         is_always_ignored_dir, is_repo, iter_all_repos, walk_repo)
from agent.sources.base import SourceContext
from agent.sources.files_inotify import FsEvent, InotifyError, InotifyWatcher, stop_pipe
from agent.sources.git_catfile import CatFile
from agent.sources.git_reflog import branch_after, classify, commit_message, parse_reflog
from agent.sources.git_state import RepoStates


HEAD_SETTLE_S = 2.0  # how long a state waits for HEAD to reach the reflog's last entry


class _Log:
    """One reflog file being followed."""

    def __init__(self, path: Path, repo: Path, name: str, since: float, offset: int) -> None:
        self.path = path
        self.repo = repo
        self.name = name  # "HEAD" or "refs/..."
        self.since = since  # entries older than this (seconds) predate the watch
        self.offset = offset


class _Repo:
    def __init__(self, root: Path, dirs: GitDirs) -> None:
        self.root = root
        self.dirs = dirs
        # A repo seen the moment `git init` made its .git may have no HEAD file yet.
        self.branch: str | None = read_head_branch(dirs.git_dir)
        self.branch_known = (dirs.git_dir / "HEAD").exists()
        self.catfile = CatFile(root)


class GitSource:
    name = "git"

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.settings = CaptureSettings.from_policy(ctx.policy)
        self.repos: dict[Path, _Repo] = {}
        self.by_git_dir: dict[Path, _Repo] = {}
        self.ref_owner: dict[Path, _Repo] = {}  # common dir -> the repo its branch logs report as
        self.logs: dict[str, _Log] = {}
        self.roles: dict[str, object] = {}  # watched dir -> ("discovery", level) | ("git", _Repo)
        self._watcher: InotifyWatcher | None = None
        self.states: RepoStates = ctx.repo_states if ctx.repo_states is not None else RepoStates()
        self._moved: dict[Path, str] = {}  # repo root -> where HEAD's entries read moved it, unannounced
        self.announcer = StateAnnouncer(self._announce, ctx.log)

    def run(self, stop: threading.Event) -> None:
        self._watcher = InotifyWatcher()
        self.announcer.start()
        try:
            with stop_pipe(stop, "git-waker") as wake_r:
                self._scan_roots(initial=True)
                self.ctx.set_state(f"running: {len(self.repos)} repos")
                poller = select.poll()
                poller.register(self._watcher.fileno(), select.POLLIN)
                poller.register(wake_r, select.POLLIN)
                while not stop.is_set():
                    ready = poller.poll()
                    if stop.is_set():
                        return
                    if any(fd == self._watcher.fileno() for fd, _ in ready):
                        self.ingest(self._watcher.read())
        finally:
            self.announcer.stop()
            for repo in self.repos.values():
                repo.catfile.close()
            self._watcher.close()

    # ---------------------------------------------------------------- what is followed
    def _watch(self, d: Path, role: object) -> None:
        try:
            if self._watcher.add(str(d)):
                self.roles[str(d)] = role
        except InotifyError as exc:
            self.ctx.log.warning("git: %s", exc)

    def _scan_roots(self, initial: bool) -> None:
        found = discover_repos(self.settings.roots, self.settings.repo_depth)
        for d, level in found.scanned:
            self._watch_above_repos(d, level, initial)
        for root, _, _ in iter_all_repos(found.repos, 0, self.settings.exclude):
            self._add_repo(root, initial)

    def _watch_above_repos(self, d: Path, level: int, initial: bool) -> None:
        """Watch a directory found not to be a repo, then look again: a `git init` between the
        scan and the watch made no event, so it is found now or never."""
        self._watch(d, ("discovery", level))
        if is_repo(d):
            for root, _, _ in iter_all_repos([d], 0, self.settings.exclude):
                self._add_repo(root, initial)

    def _add_repo(self, root: Path, initial: bool) -> None:
        if root in self.repos:
            return
        dirs = git_dirs(root)
        if dirs is None:
            return
        repo = self.repos[root] = _Repo(root, dirs)
        self.by_git_dir[dirs.git_dir] = repo
        owner = self.ref_owner.get(dirs.common_dir)
        if owner is None or (dirs.git_dir == dirs.common_dir and owner.dirs.git_dir != owner.dirs.common_dir):
            self.ref_owner[dirs.common_dir] = repo
        since = time.time()
        # The git dir itself is watched so that a `logs` directory made by a first commit is seen.
        self._watch(dirs.git_dir, ("git", repo))
        self._follow_tree(dirs.git_dir / "logs", since, at_end=initial)
        if dirs.common_dir != dirs.git_dir:
            self._watch(dirs.common_dir, ("git", repo))
            self._follow_tree(dirs.common_dir / "logs", since, at_end=initial)
        self.announcer.request(repo, self._moved.pop(root, None))

    def _follow_tree(self, d: Path, since: float, at_end: bool) -> None:
        """Watch a logs directory and everything below it; follow each log in it. Logs found
        after start are read at once: they may have been written before the watch existed."""
        if not d.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(d):
            self._watch(Path(dirpath), ("logs",))
            for name in filenames:
                log = self._follow(Path(dirpath) / name, since, at_end)
                if log is not None and not at_end:
                    self._read(log)

    def _follow(self, path: Path, since: float, at_end: bool) -> _Log | None:
        key = str(path)
        log = self.logs.get(key)
        if log is not None:
            return log
        where = self._log_identity(path)
        if where is None:
            return None
        repo, name = where
        try:
            size = path.stat().st_size if at_end else 0
        except OSError:
            return None
        log = self.logs[key] = _Log(path, repo.root, name, since, size)
        return log

    def _log_identity(self, path: Path) -> tuple[_Repo, str] | None:
        """Which repo a log file reports for, and the log's name ("HEAD" or "refs/...")."""
        if path.name == "HEAD" and path.parent.name == "logs":
            repo = self.by_git_dir.get(path.parent.parent)
            return (repo, "HEAD") if repo is not None else None
        for parent in path.parents:
            if parent.name == "logs" and (parent.parent in self.ref_owner):
                rel = path.relative_to(parent).as_posix()
                if rel.startswith("refs/"):
                    return self.ref_owner[parent.parent], rel
                return None
        return None

    # ---------------------------------------------------------------- events
    def ingest(self, events: list[FsEvent]) -> None:
        touched: list[_Log] = []
        for ev in events:
            if ev.kind == "overflow":
                self.ctx.log.warning("git: inotify queue overflowed; re-reading every log")
                touched.extend(self.logs.values())
                continue
            if ev.kind == "gone":
                self._watcher.remove_tree(ev.path)
                continue
            path = Path(ev.dest or ev.path) if ev.kind == "move" else Path(ev.path)
            role = self.roles.get(str(path.parent))
            if role is None:
                continue
            if role[0] == "discovery":
                self._discovery_event(ev, path, role[1])
            elif role[0] == "git":
                if path.name == "logs" and ev.is_dir and ev.kind in ("create", "move"):
                    self._follow_tree(path, time.time() - 2, at_end=False)
                elif path.name == "commondir":
                    # `git worktree add` writes the worktree's .git file before its commondir.
                    self._refresh(role[1])
            elif ev.is_dir:
                if ev.kind in ("create", "move"):
                    self._follow_tree(path, time.time() - 2, at_end=False)
            elif ev.kind == "move" and str(ev.path) in self.logs:
                # A renamed branch (git renames its log, by way of refs/.tmp-renamed-log) keeps
                # its read offset, so only what is appended after the rename is new.
                log = self.logs.pop(str(ev.path))
                where = self._log_identity(path)
                if where is not None:
                    log.path, log.name = path, where[1]
                    self.logs[str(path)] = log
                    touched.append(log)
            elif ev.kind in ("create", "write", "move"):
                # A log appearing now holds the few entries written since; a renamed branch's log
                # holds its whole history, which predates the watch and is skipped by timestamp.
                log = self._follow(path, time.time() - 2, at_end=False)
                if log is not None:
                    touched.append(log)
        seen: set[str] = set()
        for log in touched:
            if str(log.path) not in seen:
                seen.add(str(log.path))
                self._read(log)
        moved, self._moved = self._moved, {}
        for root, sha in moved.items():
            if root in self.repos:
                self.announcer.request(self.repos[root], sha)

    def _refresh(self, repo: _Repo) -> None:
        dirs = git_dirs(repo.root)
        if dirs is None or dirs == repo.dirs:
            return
        self.repos.pop(repo.root, None)
        repo.catfile.close()
        self._add_repo(repo.root, initial=False)

    def _discovery_event(self, ev: FsEvent, path: Path, level: int) -> None:
        if path.name == ".git":
            # A worktree's or submodule's .git file may be empty when created; its write counts.
            if path.parent in self.repos:
                self._refresh(self.repos[path.parent])
            else:
                self._add_new_tree(path.parent)
            return
        if ev.kind not in ("create", "move"):
            return
        if ev.is_dir and not path.name.startswith(".") and not is_always_ignored_dir(path) \
                and level < self.settings.repo_depth:
            found = discover_repos([path], self.settings.repo_depth - level - 1)
            for d, sub in found.scanned:
                self._watch_above_repos(d, level + 1 + sub, initial=False)
            for root in found.repos:
                self._add_new_tree(root)

    def _add_new_tree(self, root: Path) -> None:
        pending = [root]
        while pending:
            r = pending.pop()
            self._add_repo(r, initial=False)
            pending.extend(walk_repo(r, RepoIgnore(r, self.settings.exclude)).nested)

    def _read(self, log: _Log) -> None:
        try:
            with open(log.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < log.offset:
                    log.offset = size  # rewritten shorter (reflog expire): nothing new in it
                f.seek(log.offset)
                buf = f.read()
        except OSError:
            return
        entries, used = parse_reflog(buf)
        log.offset += used
        repo = self.repos.get(log.repo)
        if repo is None:
            return
        if any(part.startswith(".") or part.endswith(".lock") for part in log.name.split("/")):
            return  # git's scratch names (refs/.tmp-renamed-log): followed for the offset only
        moved_to = None
        for entry in entries:
            if entry.ts < int(log.since):
                continue
            self._entry(repo, log.name, entry)
            if log.name == "HEAD":
                moved_to = entry.new
        if moved_to is not None:
            # One state after the entries read together: a rebase's steps make one, not one each.
            self._moved[repo.root] = moved_to

    def _announce(self, repo: _Repo, expect: str | None = None) -> None:
        """Emit the repo's `repo.state` (after the git events that moved HEAD, if any). git
        writes a reflog entry before it moves the ref the entry is about: wait (briefly) until
        HEAD is where the entry says, so the state is not of the moment before."""
        deadline = time.monotonic() + HEAD_SETTLE_S
        while time.monotonic() < deadline:
            # A repo seen the moment `git init` made its .git is not one to git until HEAD,
            # objects and refs exist.
            common = repo.dirs.common_dir
            ready = (repo.dirs.git_dir / "HEAD").exists() and (common / "objects").is_dir() \
                and (common / "refs").is_dir()
            if ready and (expect is None or (not (repo.dirs.git_dir / "HEAD.lock").exists()
                                             and head_sha(repo.dirs) == expect)):
                break
            time.sleep(0.01)

        def emit(data: dict, ts: int) -> bool:
            if not self.ctx.capturing():
                return False
            self.ctx.emit("repo.state", data, ts=ts)
            return True

        self.states.announce(repo.root, read_head_branch(repo.dirs.git_dir), self.ctx.redactor,
                             self.settings.max_file_bytes, emit)

    def _entry(self, repo: _Repo, log_name: str, entry) -> None:
        if not repo.branch_known:
            repo.branch, repo.branch_known = read_head_branch(repo.dirs.git_dir), True
        branch = repo.branch
        if log_name == "HEAD":
            repo.branch = branch_after(entry, branch, lambda b: _is_branch(repo.dirs.common_dir, b))
        found = classify(log_name, entry, branch)
        if found is None or not self.ctx.capturing():
            return
        kind, data = found
        if kind == "git.commit":
            obj = repo.catfile.object(entry.new)
            if obj is not None and obj[0] == "commit":
                data["message"] = commit_message(obj[1])
        data = {"repo": str(repo.root), **data}
        now = time.time_ns()
        # Reflog times have one-second precision; read promptly, now is the better clock.
        ts = now if abs(now - entry.ts * 10**9) < 5 * 10**9 else entry.ts * 10**9
        self.ctx.emit(kind, data, ts=ts)


class StateAnnouncer:
    """Computes and emits `repo.state`s on a thread of its own, so that the reader keeps reading
    the reflogs promptly while git runs: entries that pile up are read log by log, not in the
    order they were written. Requests for a repo not yet served are merged (the last one wins)."""

    def __init__(self, announce: Callable[[Any, str | None], None], log: logging.Logger) -> None:
        self._announce = announce
        self._log = log
        self._cond = threading.Condition()
        self._pending: dict[Path, tuple[Any, str | None]] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="git-states", daemon=True)
        self._thread.start()

    def request(self, repo: Any, expect: str | None) -> None:
        with self._cond:
            self._pending.pop(repo.root, None)
            self._pending[repo.root] = (repo, expect)
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._pending.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                root = next(iter(self._pending))
                repo, expect = self._pending.pop(root)
            try:
                self._announce(repo, expect)
            except Exception:  # one repo's failure must not end the states of the others
                self._log.exception("git: the state of %s could not be taken", root)


def head_sha(dirs: GitDirs) -> str | None:
    """The commit HEAD names, read from the files (HEAD, the branch's ref file, packed-refs)."""
    try:
        head = (dirs.git_dir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not head.startswith("ref: "):
        return head
    ref = head[len("ref: "):]
    try:
        return (dirs.common_dir / ref).read_text(encoding="utf-8").strip()
    except OSError:
        pass
    try:
        packed = (dirs.common_dir / "packed-refs").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name == ref:
            return sha
    return None


def read_head_branch(git_dir: Path) -> str | None:
    """The branch HEAD names (`ref: refs/heads/x` -> x), None when detached or unreadable."""
    try:
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    prefix = "ref: refs/heads/"
    return head[len(prefix):] if head.startswith(prefix) else None


def _is_branch(common_dir: Path, name: str) -> bool:
    if (common_dir / "refs" / "heads" / name).is_file():
        return True
    try:
        packed = (common_dir / "packed-refs").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return f" refs/heads/{name}\n" in packed
