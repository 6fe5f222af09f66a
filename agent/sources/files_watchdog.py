"""Directory watches through watchdog, for platforms without inotify (macOS FSEvents, Windows
ReadDirectoryChangesW, BSD kqueue).

Takes and gives what `files_inotify.InotifyWatcher` does, so the files source runs on either:
`add(dir)` watches the entries directly inside one directory (False if it is not a directory),
`remove_tree(dir)` stops watching a directory and every directory below it, `fileno()` becomes
readable while events are waiting (wait on it with select/selectors), `read()` returns them as
`FsEvent`s (create, write, delete, move, gone) in the order watchdog delivered them and never
blocks, `close()` stops watchdog's threads. The files source picks this backend wherever inotify
is missing; `TRACECAP_FILES_BACKEND=watchdog` picks it on Linux too, which is how it is tested.

How. watchdog runs one thread per scheduled watch, so directories are not scheduled one by one: a
git work tree (a directory holding `.git`) gets one recursive watch when it is added, and the
directories added below it share that watch; any other directory (the levels between a capture
root and its repositories) gets a non-recursive watch of its own. Threads: one per repository
(nested ones share their outer one's) plus one per directory above repositories, which
`capture.repo_depth` bounds. An event passes only when its
parent directory was added, as with inotify; everything else below a recursive watch (`.git`,
`node_modules`, `.gitignore`d trees) is dropped in watchdog's thread before it is queued, so an
ignored tree costs the files source nothing. A renamed directory's added subdirectories are
renamed with it before later events are looked at, as inotify's watches follow inodes. Events
synthesised by watchdog for the contents of a moved or created directory are dropped: the files
source lists such a directory itself. A socket pair carries the wake-up from watchdog's threads to
the caller's select loop.

Where watchdog cannot match inotify:
- write: only watchdog's inotify observer reports a writer closing a file (IN_CLOSE_WRITE); with
  FSEvents, ReadDirectoryChangesW and kqueue every modification is a write, so a writer that
  pauses for longer than the debounce window halfway through a file can be captured half-written
  (its next event captures the rest).
- overflow: never reported. watchdog tells its handlers nothing when the platform drops events (an
  inotify queue overflow, a full ReadDirectoryChangesW buffer, FSEvents' MustScanSubDirs), so saves
  lost that way are neither announced by an `agent.gap` nor recovered by a rescan.
- ignored trees inside a work tree are still watched by the platform under the recursive watch
  (free for FSEvents, one handle either way for ReadDirectoryChangesW; kqueue keeps a descriptor
  per file, ignored ones included); only the Python side is spared.
- FSEvents reports resolved paths (/private/var for /var); they are mapped back to the path the
  directory was added as.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from typing import Callable

from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent,
                             FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent,
                             FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from agent.sources.files_inotify import FsEvent

_SHAPE_EVENTS = [FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent,
                 FileMovedEvent, DirMovedEvent]


class _Forward(FileSystemEventHandler):
    def __init__(self, on_event: Callable[[FileSystemEvent], None]) -> None:
        self._on_event = on_event

    def dispatch(self, event: FileSystemEvent) -> None:
        self._on_event(event)


class WatchdogWatcher:
    def __init__(self, observer: BaseObserver | None = None) -> None:
        self._observer = observer if observer is not None else Observer()
        closes = _reports_close(self._observer)
        # With closes reported, a modification is left out: the close that follows is the write,
        # and inotify is not asked for IN_MODIFY on every write() call.
        self._event_filter = _SHAPE_EVENTS + [FileClosedEvent if closes else FileModifiedEvent]
        self._handler = _Forward(self._on_event)
        self._lock = threading.Lock()  # never held while calling the observer (it calls us)
        self._dirs: set[str] = set()  # added directories: events for entries directly inside pass
        self._watches: dict[str, ObservedWatch] = {}  # scheduled watch roots
        self._aliases: dict[str, str] = {}  # a watch root's resolved path -> the path it was added as
        self._moved: list[tuple[str, str | None]] = []  # directory renames whose watches must follow
        self._queue: list[FsEvent] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._observer.start()

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def __len__(self) -> int:
        return len(self._dirs)

    # ---------------------------------------------------------------- what is watched
    def add(self, path: str) -> bool:
        """Watch the entries directly inside `path`. False if it vanished or is not a directory;
        OSError when the platform refuses the watch."""
        if os.path.islink(path) or not os.path.isdir(path):
            return False
        recursive = os.path.lexists(os.path.join(path, ".git"))
        with self._lock:
            self._dirs.add(path)
            if self._covered(path):
                return True
            current = self._watches.get(path)
        if current is not None and (current.is_recursive or not recursive):
            return True
        try:
            self._schedule(path, recursive)
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self._dirs.discard(path)
            return False
        return True

    def remove_tree(self, path: str) -> None:
        """Stop watching `path` and every watched directory below it."""
        with self._lock:
            self._dirs = {d for d in self._dirs if not _under(d, path)}
            gone = self._pop_watches_under(path)
        for watch in gone:
            self._unschedule(watch)

    def _covered(self, path: str) -> bool:
        """Is `path` strictly inside a recursive watch?"""
        child, parent = path, os.path.dirname(path)
        while parent != child:
            watch = self._watches.get(parent)
            if watch is not None and watch.is_recursive:
                return True
            child, parent = parent, os.path.dirname(parent)
        return False

    def _schedule(self, path: str, recursive: bool) -> None:
        watch = self._observer.schedule(self._handler, path, recursive=recursive,
                                        event_filter=self._event_filter)
        with self._lock:
            replaced = [w for p, w in self._watches.items()
                        if p == path or (recursive and _under(p, path))]
            self._watches = {p: w for p, w in self._watches.items() if w not in replaced}
            self._watches[path] = watch
            real = os.path.realpath(path)
            if real != path:
                self._aliases[real] = path
        # Scheduled before the old watches go, so nothing is missed in between (at worst an
        # event is reported twice, which coalescing absorbs).
        for old in replaced:
            if old != watch:
                self._unschedule(old)

    def _pop_watches_under(self, path: str) -> list[ObservedWatch]:
        gone = [p for p in self._watches if _under(p, path)]
        self._aliases = {r: p for r, p in self._aliases.items() if not _under(p, path)}
        return [self._watches.pop(p) for p in gone]

    def _unschedule(self, watch: ObservedWatch) -> None:
        with contextlib.suppress(KeyError):  # already gone with its directory
            self._observer.unschedule(watch)

    def _follow(self, src: str, dest: str | None) -> None:
        """A directory holding watch roots was renamed (dest) or moved out of sight (None)."""
        with self._lock:
            moved = [(p, self._watches[p]) for p in self._watches if _under(p, src)]
            self._pop_watches_under(src)
        for p, watch in moved:
            self._unschedule(watch)
            new = None if dest is None else dest + p[len(src):]
            if new is not None and os.path.isdir(new):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    self._schedule(new, watch.is_recursive)

    # ---------------------------------------------------------------- events
    def read(self) -> list[FsEvent]:
        """Every event queued now, in delivery order; [] when none."""
        with self._lock:
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(4096):
                    pass
            events, self._queue = self._queue, []
            moved, self._moved = self._moved, []
        for src, dest in moved:
            self._follow(src, dest)
        return events

    def _on_event(self, event: FileSystemEvent) -> None:
        """watchdog's thread: translate, keep the added directories in step, queue, wake."""
        if event.is_synthetic:
            return
        dest = getattr(event, "dest_path", "") or None
        with self._lock:
            src = self._unalias(os.fsdecode(event.src_path))
            if dest is not None:
                dest = self._unalias(os.fsdecode(dest))
            out = self._translate(event.event_type, src, dest, event.is_directory)
            if not out:
                return
            wake = not self._queue
            for ev in out:
                # Like the kernel, an event equal to the one queued just before it is dropped.
                if not self._queue or self._queue[-1] != ev:
                    self._queue.append(ev)
            if wake:
                self._wake_w.send(b"x")

    def _translate(self, kind: str, src: str, dest: str | None, is_dir: bool) -> list[FsEvent]:
        # Windows reports a removed or renamed directory as a file: it is gone before it is seen.
        is_dir = is_dir or src in self._dirs
        src_seen = os.path.dirname(src) in self._dirs
        if kind == "moved" and dest is not None:
            return self._translate_move(src, dest, is_dir, src_seen)
        if kind == "deleted":
            out = [FsEvent("delete", src, is_dir)] if src_seen else []
            if src in self._dirs:
                self._dirs.discard(src)
                out.append(FsEvent("gone", src, True))
            return out
        if not src_seen:
            return []
        if kind == "created":
            return [FsEvent("create", src, is_dir)]
        if kind in ("modified", "closed") and not is_dir:
            return [FsEvent("write", src)]
        return []

    def _translate_move(self, src: str, dest: str, is_dir: bool, src_seen: bool) -> list[FsEvent]:
        dest_seen = os.path.dirname(dest) in self._dirs
        if src_seen and dest_seen:
            if is_dir:
                self._rename_dirs(src, dest)
                self._moved.append((src, dest))
            return [FsEvent("move", src, is_dir, dest)]
        if src_seen:  # moved out of sight: to the files source, a delete
            if is_dir:
                self._dirs = {d for d in self._dirs if not _under(d, src)}
                self._moved.append((src, None))
            return [FsEvent("delete", src, is_dir)]
        if dest_seen:
            return [FsEvent("create", dest, is_dir)]
        return []

    def _rename_dirs(self, src: str, dest: str) -> None:
        moved = {d for d in self._dirs if _under(d, src)}
        self._dirs = (self._dirs - moved) | {dest + d[len(src):] for d in moved}

    def _unalias(self, path: str) -> str:
        for real, added in self._aliases.items():
            if _under(path, real):
                return added + path[len(real):]
        return path

    def close(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _reports_close(observer: BaseObserver) -> bool:
    """Only watchdog's inotify observer reports a writer closing a file."""
    if not sys.platform.startswith("linux"):
        return False
    from watchdog.observers.inotify import InotifyObserver

    return isinstance(observer, InotifyObserver)
