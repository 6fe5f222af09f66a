"""Directory watches with one inotify descriptor: only the directories asked for are watched.

Takes directories to watch, one at a time, non-recursively; gives `FsEvent`s for the entries directly
inside them: create, write (a writer closed the file), delete, move (the two halves of a rename,
paired by cookie), gone (the watched directory itself went away) and overflow (the kernel queue
overflowed: events were lost). Promise: one file descriptor and no thread; `read()` never blocks
(wait on `fileno()` with poll/select); a directory that is never added costs nothing, which is how
ignored trees such as `node_modules` stay free. Linux only (`available()` says whether it works).

Watches follow inodes, so when a watched directory is renamed `read()` rewrites the paths of it and
everything below before reporting the move.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import os
import socket
import struct
import sys
import threading
from typing import Iterator

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # absent on Windows, where this module only defines names
IN_CLOEXEC = 0o2000000

WATCH_MASK = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
              | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
_HEADER = struct.Struct("iIII")


@dataclasses.dataclass(frozen=True)
class FsEvent:
    kind: str  # create | write | delete | move | gone | overflow
    path: str  # absolute; for move, the source
    is_dir: bool = False
    dest: str | None = None  # move only


def available() -> bool:
    return sys.platform.startswith("linux") and ctypes.util.find_library("c") is not None


class InotifyError(OSError):
    pass


class InotifyWatcher:
    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise InotifyError(err, f"inotify_init1 failed: {os.strerror(err)}")
        self._fd = fd
        self._paths: dict[int, str] = {}  # wd -> directory path
        self._wds: dict[str, int] = {}

    def fileno(self) -> int:
        return self._fd

    def __len__(self) -> int:
        return len(self._wds)

    def watching(self, path: str) -> bool:
        return path in self._wds

    def add(self, path: str, mask: int = WATCH_MASK) -> bool:
        """Watch one directory (not its subdirectories) for the events of `mask`. False if it
        vanished or is not a directory; raises InotifyError when the watch limit is reached
        (ENOSPC), so the caller can say so rather than silently miss saves."""
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return False
            raise InotifyError(err, f"cannot watch {path}: {os.strerror(err)}")
        old = self._paths.get(wd)
        if old is not None and old != path:
            self._wds.pop(old, None)
        self._paths[wd] = path
        self._wds[path] = wd
        return True

    def remove_tree(self, path: str) -> None:
        """Stop watching `path` and every watched directory below it."""
        prefix = path + "/"
        for p in [p for p in self._wds if p == path or p.startswith(prefix)]:
            wd = self._wds.pop(p)
            self._paths.pop(wd, None)
            self._libc.inotify_rm_watch(self._fd, wd)

    def _rename_tree(self, src: str, dest: str) -> None:
        prefix = src + "/"
        for p in [p for p in self._wds if p == src or p.startswith(prefix)]:
            wd = self._wds.pop(p)
            new = dest + p[len(src):]
            self._paths[wd] = new
            self._wds[new] = wd

    def discard(self) -> None:
        """Drop every queued event unread: for a caller that only needs to know that something
        changed, which the descriptor becoming readable already told."""
        while True:
            try:
                if not os.read(self._fd, 1 << 16):
                    return
            except BlockingIOError:
                return

    def read(self) -> list[FsEvent]:
        """Every event queued now, in kernel order; [] when none."""
        chunks = []
        while True:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return self._parse(b"".join(chunks))

    def _parse(self, buf: bytes) -> list[FsEvent]:
        out: list[FsEvent] = []
        pending_from: dict[int, int] = {}  # cookie -> index in out of a provisional delete
        pos = 0
        while pos + _HEADER.size <= len(buf):
            wd, mask, cookie, length = _HEADER.unpack_from(buf, pos)
            raw_name = buf[pos + _HEADER.size: pos + _HEADER.size + length].rstrip(b"\0")
            pos += _HEADER.size + length
            if mask & IN_Q_OVERFLOW:
                out.append(FsEvent("overflow", ""))
                continue
            base = self._paths.get(wd)
            if base is None:
                continue
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_UNMOUNT):
                if mask & IN_IGNORED:
                    self._paths.pop(wd, None)
                    if self._wds.get(base) == wd:
                        self._wds.pop(base, None)
                out.append(FsEvent("gone", base, True))
                continue
            path = os.path.join(base, os.fsdecode(raw_name)) if raw_name else base
            is_dir = bool(mask & IN_ISDIR)
            if mask & IN_MOVED_FROM:
                pending_from[cookie] = len(out)
                out.append(FsEvent("delete", path, is_dir))
            elif mask & IN_MOVED_TO:
                i = pending_from.pop(cookie, None)
                if i is None:
                    out.append(FsEvent("create", path, is_dir))
                else:
                    src = out[i].path
                    out[i] = FsEvent("move", src, is_dir, path)
                    if is_dir:
                        self._rename_tree(src, path)
            elif mask & IN_CREATE:
                out.append(FsEvent("create", path, is_dir))
            elif mask & IN_CLOSE_WRITE:
                out.append(FsEvent("write", path, is_dir))
            elif mask & IN_DELETE:
                out.append(FsEvent("delete", path, is_dir))
        # A directory moved out of the watched tree takes its watches with it.
        for i in pending_from.values():
            if out[i].is_dir:
                self.remove_tree(out[i].path)
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._paths.clear()
            self._wds.clear()


@contextlib.contextmanager
def stop_pipe(stop: threading.Event, name: str) -> Iterator[int]:
    """A descriptor that becomes readable once `stop` is set, so a poll()/select() loop over
    watchers wakes at once on stop without polling. A socket pair rather than a pipe because
    Windows can select() only on sockets. The helper thread ends with the block."""
    r, w = socket.socketpair()
    done = threading.Event()

    def wake_on_stop() -> None:
        while not done.is_set():
            if stop.wait(1.0):
                w.send(b"x")
                return

    waker = threading.Thread(target=wake_on_stop, daemon=True, name=name)
    waker.start()
    try:
        yield r.fileno()
    finally:
        done.set()
        waker.join(timeout=2)
        r.close()
        w.close()
