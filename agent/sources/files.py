"""The files source: one `file.save` event per logical save in the git repositories under the roots.

Takes the policy's `[capture]` keys (roots, repo_depth, exclude, debounce_ms, max_file_bytes,
diff_cache_bytes) and the redactor; gives `file.save` events with `repo` (absolute work-tree root),
`path` (repo-relative, '/'-separated), `op` (create | modify | delete | move, move with `from`),
`size`, and, when the content may be captured, `diff` (unified, from redacted text) with `base`
saying what the diff applies to: "previous" (the version this source last captured), "head" (the
file in HEAD) or "empty".

Watches come from inotify on Linux (files_inotify) and from watchdog elsewhere (files_watchdog:
FSEvents, ReadDirectoryChangesW, kqueue; what it cannot match is listed there). The environment
variable `TRACECAP_FILES_BACKEND` (`inotify` or `watchdog`) forces one.

Promises:
- Only directories that are not ignored are watched (with inotify: one descriptor, one watch per
  directory; with watchdog, see files_watchdog), so writes under node_modules, virtualenvs, build
  and cache directories, the policy's excludes, `.gitignore`d trees and `.git` cost nothing.
  Ignored files in watched directories are dropped on arrival. Repositories cloned or `git init`ed
  under a root later are picked up.
- When inotify's queue overflows, saves are not silently lost: one `agent.gap` says so (`dropped`
  0: how many is unknown), the watches are re-established, and every file that no longer matches
  what the trace last said about it is saved as usual (one event, its diff against that base),
  deletions included. A file is looked at when its size or mtime differ from those recorded when
  it was last captured or, never captured, when it changed after the queue was last read; it is
  saved when its content differs from its cached version, else from HEAD. Unchanged files make no
  event; the versions a file went through while events were lost are what the gap stands for.
- One logical save is one event whatever the editor did (see files_coalesce), after `debounce_ms`
  of quiet on that file. `ts` is the file's mtime (for a move, its ctime: when it moved), or just
  after the repo's last `repo.state` if that is later.
- Nothing raw is kept: the cache of previous versions (bounded by `diff_cache_bytes`, LRU) holds
  only redacted text, and every diff is made from redacted text. Binary files, files over
  `max_file_bytes`, symlinks, and paths the redactor forbids content for are metadata only. Without
  a redactor the source captures metadata only.
- HEAD's version of a file comes from one long-lived `git cat-file --batch` per repository.
- While capture is off (`ctx.capturing()` False) changes are discarded and the cached versions of
  the files they touched are dropped, so the first save after resuming diffs against HEAD (`base`
  "head"): no event ever describes an edit made while paused as a step of its own, and a receiver
  can still rebuild every file from the events.
- Replay: applying each event's diff to its base, in `seq` order, rebuilds every captured text file.
- The chain (with the git source's `repo.state`, see git_state): the first save of a file after a
  repo's state diffs against what that state implies for it (HEAD's blob at the state's head with
  the state's diff of the file applied: `base` "previous"; unchanged: "head"; untracked: "empty"),
  each later one against the version captured before it; so a clone at the state's head, its diff,
  then the repo's saves in `seq` order rebuild the working tree. Reading a file and emitting its
  save happen under the repository's lock that the state is announced under, and a save's `ts`
  is later than the state's, so the journal orders each save wholly before or after a state. A
  save after which the chain no longer holds for its file says why in `chain_break`: "binary",
  "too_large", "never_capture", "metadata" (no diff), "redacted" (redaction changed a line the
  diff shows, or a redacted line outside it changed), "overflow_rescan" (a save found by the
  rescan after lost events), "unknown_base" (the state left that file's diff out, or what it
  implies could not be rebuilt). The next state restarts the chain.
"""
from __future__ import annotations

import dataclasses
import os
import selectors
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from agent.repos import (CaptureSettings, RepoIgnore, discover_repos, is_always_ignored_dir,
                         is_repo, walk_repo)
from agent.sources.base import SourceContext
from agent.sources.files_coalesce import RawChange, Touched, coalesce, is_editor_junk
from agent.sources.files_diff import (PatchError, VersionCache, apply_unified_diff, decode_text,
                                     unified_diff)
from agent.sources.files_inotify import FsEvent, InotifyError, InotifyWatcher, stop_pipe
from agent.sources.files_inotify import available as inotify_available
from agent.sources.git_catfile import CatFile
from agent.sources.git_state import (CLEAN, Redacted, RepoState, RepoStates, redacted_lines,
                                     redaction_breaks, section_deletes)

if TYPE_CHECKING:
    from agent.sources.files_watchdog import WatchdogWatcher

BACKEND_ENV = "TRACECAP_FILES_BACKEND"
# File systems stamp mtimes from a coarse clock that can lag the one read here by a tick; the
# slack only costs a content comparison for files saved just before the queue was last read.
_MTIME_SLACK_NS = 2_000_000_000
_MAX_STAMPS = 1 << 16  # size and mtime of the files last captured, kept for this many files


class _Repo:
    def __init__(self, root: Path, exclude: tuple[str, ...]) -> None:
        self.root = root
        self.ignore = RepoIgnore(root, exclude)
        self.catfile = CatFile(root)


class FilesSource:
    name = "files"

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.settings = CaptureSettings.from_policy(ctx.policy)
        self.cache = VersionCache(self.settings.diff_cache_bytes)
        self.repos: dict[Path, _Repo] = {}
        self.roles: dict[str, Path | int] = {}  # watched dir -> its repo, or discovery depth
        self.stamps: dict[tuple[Path, str], tuple[int, int]] = {}  # (size, mtime_ns) at capture
        self.pending: list[RawChange] = []
        self.watch_error: str | None = None
        self.emitted = 0
        self._watcher: InotifyWatcher | WatchdogWatcher | None = None
        self._drained_ns = 0  # wall clock when the event queue was last read empty
        self.states: RepoStates | None = ctx.repo_states
        self._line_key = self.states.line_key if self.states is not None else os.urandom(32)
        self._rescanned: set[str] = set()  # paths queued by an overflow rescan, not yet saved
        # The state epoch of each file's last save (oldest dropped past _MAX_STAMPS; the floor is
        # the newest epoch dropped): a file saved since a state, whose version has left the cache,
        # must not diff against what the state implies, which the trace has moved past.
        self._saved_in: dict[tuple[Path, str], int] = {}
        self._saved_floor = 0

    # ---------------------------------------------------------------- lifecycle
    def run(self, stop: threading.Event) -> None:
        self._watcher = self._open_watcher()
        self._drained_ns = time.time_ns()
        try:
            with stop_pipe(stop, "files-waker") as wake_r:
                self._scan_roots()
                self.ctx.set_state(self._state())
                self._loop(stop, wake_r)
        finally:
            for repo in self.repos.values():
                repo.catfile.close()
            self._watcher.close()

    def _open_watcher(self) -> InotifyWatcher | WatchdogWatcher:
        backend = os.environ.get(BACKEND_ENV, "")
        if backend not in ("", "inotify", "watchdog"):
            self.ctx.log.warning("files: %s=%s is neither inotify nor watchdog; ignored",
                                 BACKEND_ENV, backend)
            backend = ""
        if backend == "watchdog" or (not backend and not inotify_available()):
            # Imported here so that a Linux daemon never starts watchdog's machinery.
            from agent.sources.files_watchdog import WatchdogWatcher

            return WatchdogWatcher()
        return InotifyWatcher()

    def _loop(self, stop: threading.Event, wake_r: int) -> None:
        watcher_fd = self._watcher.fileno()
        last_check = 0.0
        with selectors.DefaultSelector() as selector:
            selector.register(watcher_fd, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
            while not stop.is_set():
                ready = selector.select(self._timeout(last_check))
                if stop.is_set():
                    return
                if any(key.fd == watcher_fd for key, _ in ready):
                    self._drain()
                last_check = self._save_due(last_check)

    def _timeout(self, last_check: float) -> float | None:
        """Seconds until pending changes may be due; None (wait for events) when none are."""
        if not self.pending:
            return None
        window = self.settings.debounce_ms / 1000
        # Coalescing re-reads the pending list, so under a sustained stream of saves it runs at
        # most every quarter window instead of on every kernel event.
        due = max(self.pending[0].t + window, last_check + window / 4)
        return max(0.0, due - time.monotonic()) + 0.001

    def _drain(self) -> None:
        """Take in every queued event. Every change made before `_drained_ns` has then come as
        an event, which is what a rescan after lost events relies on."""
        drained = time.time_ns()
        self.ingest(self._watcher.read(), time.monotonic())
        self._drained_ns = drained

    def _save_due(self, last_check: float) -> float:
        """Save the groups of changes that are due; gives when coalescing last ran."""
        window = self.settings.debounce_ms / 1000
        now = time.monotonic()
        if not self.pending or now < self.pending[0].t + window or now < last_check + window / 4:
            return last_check
        saves, self.pending = coalesce(self.pending, now, window)
        for touched in saves:
            self.save(touched)
        return now

    def _state(self) -> str:
        state = f"running: {len(self.repos)} repos, {len(self._watcher or ())} directories watched"
        if self.watch_error:
            state += "; " + self.watch_error
        return state

    # ---------------------------------------------------------------- what is watched
    def _watch(self, d: Path, role: Path | int) -> bool:
        try:
            ok = self._watcher.add(str(d))
        except OSError as exc:
            if self.watch_error is None:
                self.ctx.log.warning("files: %s", exc)
                self.watch_error = (
                    "inotify watch limit reached, raise fs.inotify.max_user_watches"
                    if isinstance(exc, InotifyError) else f"some directories are not watched: {exc}")
            return False
        if ok:
            self.roles[str(d)] = role
        return ok

    def _scan_roots(self) -> None:
        found = discover_repos(self.settings.roots, self.settings.repo_depth)
        for d, level in found.scanned:
            self._watch_above_repos(d, level)
        for root in found.repos:
            self._add_repo(root)

    def _add_repo(self, root: Path, announce_files: bool = False) -> None:
        if root in self.repos:
            return
        repo = self.repos[root] = _Repo(root, self.settings.exclude)
        self._add_tree(repo, root, announce_files)

    def _add_tree(self, repo: _Repo, start: Path, announce_files: bool) -> None:
        walk = walk_repo(repo.root, repo.ignore, start)
        now = time.monotonic()
        for d in walk.dirs:
            self._watch(d, repo.root)
            if announce_files:
                # A directory that appeared (mkdir -p, cp -r, a checkout) may hold files written
                # before its watch existed; they are creations all the same.
                for f in _files_in(d):
                    rel = f.relative_to(repo.root).as_posix()
                    if not repo.ignore.ignored_here(rel, False):
                        self.pending.append(RawChange(now, "create", str(f)))
        for nested in walk.nested:
            self._add_repo(nested, announce_files)

    def _discover_under(self, d: Path, level: int) -> None:
        if level > self.settings.repo_depth:
            return
        found = discover_repos([d], self.settings.repo_depth - level)
        for sub, sub_level in found.scanned:
            self._watch_above_repos(sub, level + sub_level)
        for root in found.repos:
            self._add_repo(root, announce_files=False)

    def _watch_above_repos(self, d: Path, level: int) -> None:
        """Watch a directory found not to be a repo, then look again: a `git init` between the
        scan and the watch made no event, so it is found now or never."""
        if self._watch(d, level) and is_repo(d):
            self._forget_roles(str(d))
            self._add_repo(d)

    def _repo_of(self, path: str) -> _Repo | None:
        p = Path(path).parent
        while True:
            repo = self.repos.get(p)
            if repo is not None:
                return repo
            if p.parent == p:
                return None
            p = p.parent

    # ---------------------------------------------------------------- raw events
    def ingest(self, events: list[FsEvent], now: float) -> None:
        """Turn kernel events into RawChanges for non-ignored files; keep watches in step."""
        for ev in events:
            if ev.kind == "overflow":
                self._recover_lost_events(now)
                continue
            if ev.kind == "gone":
                self._watcher.remove_tree(ev.path)
                self._forget_roles(ev.path)
                continue
            parent_role = self.roles.get(os.path.dirname(ev.path))
            if ev.kind == "move" and ev.is_dir and ev.dest is not None:
                dest_role = self.roles.get(os.path.dirname(ev.dest))
                if isinstance(dest_role, int) or isinstance(parent_role, int):
                    # A directory renamed among the roots (not inside a repo): forget it and
                    # look at its new place afresh.
                    self._watcher.remove_tree(ev.dest)
                    self._forget_roles(ev.path)
                    if isinstance(dest_role, int):
                        self._discovery_event(FsEvent("create", ev.dest, True), dest_role)
                    elif dest_role is not None:
                        self._dir_event(FsEvent("create", ev.dest, True), now)
                    continue
            if isinstance(parent_role, int):
                if ev.kind != "move":
                    self._discovery_event(ev, parent_role)
                continue
            if not ev.is_dir and os.path.basename(ev.dest or ev.path) == ".git":
                # A worktree or submodule added inside a repo: its .git file makes it a repo.
                parent = Path(ev.dest or ev.path).parent
                if parent not in self.repos and ev.kind in ("create", "write", "move"):
                    self._forget_roles(str(parent))
                    self._add_repo(parent, announce_files=True)
                continue
            if ev.is_dir:
                self._dir_event(ev, now)
            else:
                self._file_event(ev, now)

    def _discovery_event(self, ev: FsEvent, level: int) -> None:
        p = Path(ev.path)
        if ev.kind == "create" and p.name == ".git":
            self._forget_roles(str(p.parent))
            self._add_repo(p.parent)
        elif ev.kind == "create" and ev.is_dir and not p.name.startswith(".") \
                and not is_always_ignored_dir(p):
            self._discover_under(p, level + 1)

    def _forget_roles(self, path: str) -> None:
        prefix = path + "/"
        for d in [d for d in self.roles if d == path or d.startswith(prefix)]:
            del self.roles[d]
        for root in [r for r in self.repos if str(r) == path or str(r).startswith(prefix)]:
            self.repos.pop(root).catfile.close()

    # ---------------------------------------------------------------- lost events
    def _recover_lost_events(self, now: float) -> None:
        """The kernel dropped events: say so, watch what appeared meanwhile, and queue a change
        for every file that no longer matches what the trace last said about it."""
        self.ctx.log.warning("files: inotify queue overflowed; rescanning the watched repositories")
        self._rescan()
        changes = [RawChange(now, kind, path)
                   for kind, path in self._drifted(self._drained_ns - _MTIME_SLACK_NS)]
        self.pending.extend(changes)
        if len(self._rescanned) > _MAX_STAMPS:
            self._rescanned.clear()
        self._rescanned.update(c.path for c in changes)
        self.ctx.emit("agent.gap", {
            "dropped": 0,
            "reason": "the file watcher's kernel event queue overflowed: saves made meanwhile may "
                      f"have been missed (how many is unknown); the {len(changes)} files found "
                      "changed on the rescan are captured as one save each, without the versions "
                      "in between"})

    def _rescan(self) -> None:
        # Directories deleted while events were lost never said so.
        for d in [d for d in self.roles if not os.path.isdir(d)]:
            self._watcher.remove_tree(d)
            self._forget_roles(d)
        self._scan_roots()
        for repo in list(self.repos.values()):
            self._add_tree(repo, repo.root, announce_files=False)

    def _drifted(self, since_ns: int) -> Iterator[tuple[str, str]]:
        """(create | write | delete, path) for each file in the watched directories of the
        repositories that differs from its last capture, or from HEAD when never captured."""
        for d, role in list(self.roles.items()):
            repo = self.repos.get(role) if isinstance(role, Path) else None
            if repo is None:
                continue
            for f in _files_in(Path(d)):
                rel = f.relative_to(repo.root).as_posix()
                if is_editor_junk(rel) or repo.ignore.ignored_here(rel, False):
                    continue
                kind = self._drift(repo, rel, str(f), since_ns)
                if kind is not None:
                    yield kind, str(f)
        for root, rel in set(self.stamps) | set(self.cache.keys()):
            path = os.path.join(root, rel)
            if root in self.repos and not os.path.lexists(path):
                yield "delete", path

    def _drift(self, repo: _Repo, rel: str, path: str, since_ns: int) -> str | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        key = (repo.root, rel)
        stamp = self.stamps.get(key)
        if stamp == (st.st_size, st.st_mtime_ns):
            return None
        if stamp is None and st.st_mtime_ns < since_ns:
            return None  # untouched since the queue was last read: earlier changes came as events
        if key in self.cache:
            return None if self._content(path, rel, st) == self.cache.get(key) else "write"
        if stamp is not None:
            return "write"  # captured as metadata only, or its text left the cache
        blob = repo.catfile.head_blob(rel)
        if blob is None:
            return "create"
        return None if _same_bytes(path, st.st_size, blob) else "write"

    def _ignored(self, path: str, is_dir: bool) -> tuple[_Repo | None, bool]:
        repo = self._repo_of(path)
        if repo is None:
            return None, True
        rel = Path(path).relative_to(repo.root).as_posix()
        return repo, repo.ignore.ignored_here(rel, is_dir)

    def _dir_event(self, ev: FsEvent, now: float) -> None:
        if ev.kind == "create":
            p = Path(ev.path)
            if p.name == ".git":  # `git init` inside a repo: a nested repo from now on
                self._forget_roles(str(p.parent))
                self._add_repo(p.parent)
                return
            repo, ignored = self._ignored(ev.path, True)
            if repo is not None and not ignored:
                if is_repo(p):
                    self._add_repo(p, announce_files=True)
                else:
                    self._add_tree(repo, p, announce_files=True)
        elif ev.kind == "delete":
            self._watcher.remove_tree(ev.path)
            self._forget_roles(ev.path)
            self._forget_cached_under(ev.path, now)
        elif ev.kind == "move" and ev.dest is not None:
            self._forget_roles(ev.path)
            repo, ignored = self._ignored(ev.dest, True)
            if repo is None or ignored:
                self._watcher.remove_tree(ev.dest)
                self._forget_cached_under(ev.path, now)
                return
            self._add_tree(repo, Path(ev.dest), announce_files=False)
            for f in _files_under(Path(ev.dest)):
                rel = f.relative_to(ev.dest).as_posix()
                self.pending.append(RawChange(now, "move", os.path.join(ev.path, rel), str(f)))

    def _forget_cached_under(self, path: str, now: float) -> None:
        """A directory went away (or out of sight): each file we held a version of is deleted."""
        prefix = path + "/"
        for key in self.cache.keys():
            full = os.path.join(key[0], key[1])
            if full.startswith(prefix):
                self.pending.append(RawChange(now, "delete", full))

    def _file_event(self, ev: FsEvent, now: float) -> None:
        if ".gitignore" in (os.path.basename(ev.path), os.path.basename(ev.dest or "")):
            for changed in (ev.path, ev.dest):
                repo = self._repo_of(changed) if changed else None
                if repo is not None:
                    rel_dir = Path(changed).parent.relative_to(repo.root).as_posix()
                    repo.ignore.forget("" if rel_dir == "." else rel_dir)
        if ev.kind == "move" and ev.dest is not None:
            _, src_ignored = self._ignored(ev.path, False)
            _, dest_ignored = self._ignored(ev.dest, False)
            if src_ignored and dest_ignored:
                return
            if dest_ignored:
                self.pending.append(RawChange(now, "delete", ev.path))
            elif src_ignored:
                self.pending.append(RawChange(now, "create", ev.dest))
            else:
                self.pending.append(RawChange(now, "move", ev.path, ev.dest))
            return
        _, ignored = self._ignored(ev.path, False)
        if not ignored:
            self.pending.append(RawChange(now, ev.kind, ev.path))

    # ---------------------------------------------------------------- one logical save
    def save(self, touched: Touched) -> None:
        """Decide the op from the disk and what was known, build the event, emit it; from reading
        the file to emitting, under the repository's lock, so no `repo.state` falls in between."""
        repo = self._repo_of(touched.path)
        if repo is None:
            return
        if self.states is None:
            self._save(repo, touched)
            return
        with self.states.lock(repo.root):
            self._save(repo, touched)

    def _save(self, repo: _Repo, touched: Touched) -> None:
        rel = Path(touched.path).relative_to(repo.root).as_posix()
        if not self.ctx.capturing():
            self._forget_version((repo.root, rel))
            if touched.moved_from:
                src_repo = self._repo_of(touched.moved_from)
                if src_repo is not None:
                    self._forget_version((src_repo.root, Path(touched.moved_from)
                                          .relative_to(src_repo.root).as_posix()))
            return
        try:
            st = os.lstat(touched.path)
        except FileNotFoundError:
            st = None
        if st is None:
            self._deleted(repo, rel, touched)
            return
        if stat.S_ISDIR(st.st_mode):
            return
        src = self._move_source(repo, touched)
        if src is not None:
            op = "move"
        elif (repo.root, rel) in self.cache or touched.existed or \
                repo.catfile.head_blob(rel) is not None:
            op = "modify"
        else:
            op = "create"
        data: dict[str, Any] = {"repo": str(repo.root), "path": rel, "op": op, "size": st.st_size}
        if src is not None:
            data["from"] = src
        new = self._read_content(touched.path, rel, st)
        base_rel = src if src is not None else rel
        state = self.states.current(repo.root) if self.states is not None else None
        chain_break = new.reason
        if new.text is None:
            self.cache.pop((repo.root, rel))
        else:
            base = self._base(repo, base_rel, state)
            diff = unified_diff(base.text, new.text, rel)
            data["diff"] = diff
            data["base"] = base.kind
            chain_break = base.chain_break or (
                "redacted" if redaction_breaks(diff, base.redacted, new.redacted) else None)
            self.cache.put((repo.root, rel), new.text,
                           _Version(state.epoch if state is not None else 0, new.redacted))
        if touched.path in self._rescanned:
            self._rescanned.discard(touched.path)
            chain_break = chain_break or "overflow_rescan"
        if chain_break is not None:
            data["chain_break"] = chain_break
        if src is not None:
            self._forget_version((repo.root, src))
        # A rename keeps the file's mtime, which may predate capture (and be dropped as having
        # happened while capture was off); its ctime is when it moved.
        ts = max(st.st_mtime_ns, st.st_ctime_ns) if src is not None else st.st_mtime_ns
        if self.states is not None:
            # A file written before the last repo.state but saved after it (the debounce window)
            # still sorts after the state, which its diff chains from; an mtime in the future
            # (`touch -d`, an unpacked archive) must not sort a save after a later state.
            ts = self.states.stamp_after(repo.root, min(ts, time.time_ns()))
        if self.ctx.emit("file.save", data, ts=ts) is False:
            # Dropped: the save happened while capture was off and was read only once it was back
            # on (within the debounce window of a resume, or late on a loaded machine). As for a
            # save seen while off, its version is no base: the next diff is against HEAD.
            self._forget_version((repo.root, rel))
            return
        self._note_saved((repo.root, rel), state)
        self._stamp((repo.root, rel), st)
        self.emitted += 1

    def _note_saved(self, key: tuple[Path, str], state: RepoState | None) -> None:
        self._saved_in.pop(key, None)
        self._saved_in[key] = state.epoch if state is not None else 0
        if len(self._saved_in) > _MAX_STAMPS:
            oldest = next(iter(self._saved_in))
            self._saved_floor = max(self._saved_floor, self._saved_in.pop(oldest))

    def _saved_since(self, key: tuple[Path, str], state: RepoState) -> bool:
        epoch = self._saved_in.get(key)
        return epoch >= state.epoch if epoch is not None else self._saved_floor >= state.epoch

    def _stamp(self, key: tuple[Path, str], st: os.stat_result) -> None:
        """Remember size and mtime as captured, so a rescan can skip the file cheaply; the
        oldest go first past _MAX_STAMPS (a rescan then compares content)."""
        self.stamps.pop(key, None)
        self.stamps[key] = (st.st_size, st.st_mtime_ns)
        if len(self.stamps) > _MAX_STAMPS:
            del self.stamps[next(iter(self.stamps))]

    def _forget_version(self, key: tuple[Path, str]) -> None:
        self.cache.pop(key)
        self.stamps.pop(key, None)

    def _move_source(self, repo: _Repo, touched: Touched) -> str | None:
        """The repo-relative source of a rename within the same repo, if this is one."""
        if not touched.moved_from or os.path.lexists(touched.moved_from):
            return None
        if self._repo_of(touched.moved_from) is not repo:
            # Moved across repositories: the old repo sees a delete, this one a create.
            self._deleted_elsewhere(touched.moved_from)
            return None
        return Path(touched.moved_from).relative_to(repo.root).as_posix()

    def _deleted_elsewhere(self, path: str) -> None:
        other = self._repo_of(path)
        if other is not None:
            rel = Path(path).relative_to(other.root).as_posix()
            self._deleted(other, rel, Touched(path, existed=True))

    def _deleted(self, repo: _Repo, rel: str, touched: Touched) -> None:
        known = (repo.root, rel) in self.cache or touched.existed is True
        if not known and touched.existed is None:
            known = repo.catfile.head_blob(rel) is not None
        self._forget_version((repo.root, rel))
        if not known:
            return  # made and removed within the window: a scratch file, not a save
        if self.states is not None:
            self._note_saved((repo.root, rel), self.states.current(repo.root))
        self.emitted += 1
        self.ctx.emit("file.save", {"repo": str(repo.root), "path": rel, "op": "delete", "size": 0})

    def _content(self, path: str, rel: str, st: os.stat_result) -> str | None:
        """The redacted text of the file, or None when only metadata may be captured."""
        return self._read_content(path, rel, st).text

    def _read_content(self, path: str, rel: str, st: os.stat_result) -> _Content:
        """The redacted text of the file and which lines redaction changed; or, when only
        metadata may be captured, why (the save's `chain_break`)."""
        redactor = self.ctx.redactor
        if redactor is None or getattr(redactor, "content", "full") == "metadata":
            return _Content(None, CLEAN, "metadata")
        if not stat.S_ISREG(st.st_mode) or is_editor_junk(path):
            return _Content(None, CLEAN, "binary")  # a symlink or special file: no text to diff
        if st.st_size > self.settings.max_file_bytes:
            return _Content(None, CLEAN, "too_large")
        # The same two checks emit makes before it keeps a save's diff.
        if not (redactor.content_allowed(path) and redactor.content_allowed(rel)):
            return _Content(None, CLEAN, "never_capture")
        try:
            with open(path, "rb") as f:
                raw = f.read(self.settings.max_file_bytes + 1)
        except OSError:
            return _Content(None, CLEAN, "unknown_base")
        if len(raw) > self.settings.max_file_bytes:
            return _Content(None, CLEAN, "too_large")
        text = decode_text(raw)
        if text is None:
            return _Content(None, CLEAN, "binary")
        # by identity (a hard link to a never-capture file) and content (mostly KEY=value secrets)
        if not redactor.file_allowed(path, st, text):
            return _Content(None, CLEAN, "never_capture")
        return self._redact(text)

    def _redact(self, text: str) -> _Content:
        result = self.ctx.redactor.redact_text(text)
        findings = getattr(result, "findings", None)
        if findings is None:  # a redactor that does not say where: any line may have changed
            return _Content(result.text, CLEAN if result.text == text else Redacted(None, b""), None)
        return _Content(result.text, redacted_lines(text, findings, self._line_key), None)

    def _base(self, repo: _Repo, rel: str, state: RepoState | None) -> _Base:
        """What the save of `rel` diffs against. Within a state's chain: the version captured
        since the state, else what the state implies (HEAD's blob at the state's head, with the
        state's diff of that file applied). With no state: the cached version, else HEAD now."""
        key = (repo.root, rel)
        cached = self.cache.get(key)
        meta = self.cache.meta(key)
        if cached is not None and (state is None or (isinstance(meta, _Version)
                                                     and meta.epoch == state.epoch)):
            return _Base("previous", cached, meta.redacted if isinstance(meta, _Version) else CLEAN)
        if state is None:
            return self._text_base("head", repo.catfile.head_blob(rel), None)
        if state.omitted is not None and rel in state.changed:
            # The state does not say what this file held: diff against the best guess, and say so.
            if cached is not None:
                return _Base("previous", cached, CLEAN, "unknown_base")
            return dataclasses.replace(self._text_base("head", repo.catfile.head_blob(rel), None),
                                       chain_break="unknown_base")
        blob = self._blob_at(repo, state.head, rel)
        if self._saved_since(key, state):
            # Saved since the state, and that version is gone (evicted, or not text): HEAD's blob
            # is a base a replay can find whatever its tree holds.
            return self._text_base("head", blob, "unknown_base")
        section = state.sections.get(rel)
        if section is None:
            return self._text_base("head", blob, "unknown_base")
        if section_deletes(section):
            return _Base("empty", "", CLEAN)
        old = "" if blob is None else decode_text(blob)
        try:
            if old is None:
                raise PatchError("HEAD's version is binary")
            implied = apply_unified_diff(old, section)
        except PatchError:
            return _Base("empty", "", CLEAN, "unknown_base")
        content = self._redact(implied)
        return _Base("previous", content.text or "", content.redacted)

    def _text_base(self, kind: str, blob: bytes | None, binary_break: str | None) -> _Base:
        """HEAD's blob as a base ("empty" when there is none)."""
        if blob is None:
            return _Base("empty", "", CLEAN)
        text = decode_text(blob)
        if text is None:
            return _Base("empty", "", CLEAN, binary_break)
        content = self._redact(text)
        return _Base(kind, content.text or "", content.redacted)

    @staticmethod
    def _blob_at(repo: _Repo, head: str | None, rel: str) -> bytes | None:
        if head is None:
            return None
        found = repo.catfile.object(f"{head}:{rel}")
        return found[1] if found is not None and found[0] == "blob" else None


@dataclasses.dataclass(frozen=True)
class _Content:
    text: str | None  # redacted; None: metadata only
    redacted: Redacted
    reason: str | None  # why there is no text (a chain_break reason)


@dataclasses.dataclass(frozen=True)
class _Base:
    kind: str  # "previous" | "head" | "empty"
    text: str  # redacted
    redacted: Redacted
    chain_break: str | None = None


@dataclasses.dataclass(frozen=True)
class _Version:
    """What the cache notes beside a captured version: the state it chains from, and which of
    its lines redaction changed."""
    epoch: int
    redacted: Redacted


def _files_in(d: Path) -> list[Path]:
    try:
        with os.scandir(d) as it:
            return [Path(e.path) for e in it if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _same_bytes(path: str, size: int, blob: bytes) -> bool:
    if size != len(blob):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(size + 1) == blob
    except OSError:
        return False


def _files_under(d: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [n for n in dirnames if n != ".git"]
        out.extend(Path(dirpath) / n for n in filenames)
    return out
