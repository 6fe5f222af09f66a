"""Where per-user state lives.

Takes the environment; gives `StatePaths`. Promise: with `TRACECAP_HOME` set, every file the agent
writes for this user is under that one directory; otherwise platformdirs' per-user directories.
`ensure()` creates each directory with mode 0700 and raises `StateDirError` (one sentence, exit 1) if
it cannot, or if one it finds is not private: owned by another user (who may have made it first to
plant files or read ours), a symbolic link where a directory of ours belongs, writable by anyone
else, or (for those holding captured data, keys or the control socket) readable by anyone else. The
directory that only holds ours (`TRACECAP_HOME` itself) is tightened to 0700 when it is merely
readable by others, since nothing of ours is in it directly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import sys
from pathlib import Path

import platformdirs

from agent.errors import RuntimeFailure

APP = "tracecap"


class StateDirError(RuntimeFailure):
    """A state directory cannot be created or written, or is not private (exit 1)."""


def check_private(d: Path, *, holder: bool) -> None:
    """Raise StateDirError unless `d` is a directory of this user's that no one else can write
    (nor read, unless `holder`: a directory holding only our other directories, tightened)."""
    if not hasattr(os, "getuid"):
        return
    uid = os.getuid()
    try:
        st = os.lstat(d)
        if stat.S_ISLNK(st.st_mode):
            if not holder or st.st_uid not in (0, uid):
                raise StateDirError(
                    f"state directory {d} is a symbolic link (owned by uid {st.st_uid}), where tracecap "
                    f"makes a directory of its own; remove the link and start again")
            st = os.stat(d)
    except OSError as exc:
        raise StateDirError(f"state directory {d} cannot be examined ({exc.strerror}); "
                            f"set TRACECAP_HOME to a directory of your own") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {d} is not a directory; remove it or set TRACECAP_HOME")
    if st.st_uid != uid:
        raise StateDirError(
            f"state directory {d} belongs to uid {st.st_uid}, not to you (uid {uid}), so its owner "
            f"could read what tracecap keeps there or plant files in it; remove it or set "
            f"TRACECAP_HOME to a directory you own")
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(
            f"state directory {d} can be written by other users (mode {mode:o}), so files planted there "
            f"could end up in your traces; check what is in it, then run chmod 700 {d}")
    if mode & 0o077:
        if holder:
            os.chmod(d, 0o700)
            return
        raise StateDirError(
            f"state directory {d} can be read by other users (mode {mode:o}) and holds your captured "
            f"data or keys; run chmod 700 {d}")


@dataclasses.dataclass(frozen=True)
class StatePaths:
    config: Path  # consent.json, device identity
    spool: Path  # journal segments
    outbox: Path  # sealed bundles waiting to leave
    quarantine: Path  # bundles the collector refused
    keys: Path  # device signing key, personal-mode org key pair
    logs: Path
    run: Path  # control socket, daemon lock, shell spool
    # Under TRACECAP_HOME: a memory-backed directory for the test reports the shell hooks ask
    # pytest for (see report_dir); None: the shell spool, already in the runtime directory.
    reports: Path | None = None

    @property
    def socket(self) -> Path:
        return self.run / "control.sock"

    @property
    def lock(self) -> Path:
        return self.run / "daemon.lock"

    @property
    def shell_spool(self) -> Path:
        """Directory the shell hook appends its records to (see agent/shell/)."""
        return self.run / "shell"

    def report_dir(self) -> Path:
        """Where the shell hooks have pytest write its JUnit reports, which hold raw failure
        messages until the shell source reads (or, when they cannot be used, deletes) them: a
        memory-backed directory, never the disk. Under TRACECAP_HOME, a directory named after it
        in $XDG_RUNTIME_DIR or /dev/shm, made 0700 and used only while this user owns it with no
        access for others (it may sit in a directory others can write); otherwise the spool."""
        if self.reports is None:
            return self.shell_spool
        try:
            self.reports.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(self.reports)
        except OSError:
            return self.shell_spool
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
            return self.reports
        return self.shell_spool

    @property
    def consent_file(self) -> Path:
        return self.config / "consent.json"

    @property
    def log_file(self) -> Path:
        return self.logs / "tracecap.log"

    def all_dirs(self) -> list[Path]:
        return [self.config, self.spool, self.outbox, self.quarantine, self.keys, self.logs, self.run,
                self.shell_spool]

    def ensure(self) -> "StatePaths":
        # The directories holding ours (the TRACECAP_HOME root, platformdirs' `.../tracecap`) are
        # made private too, not only the leaves.
        tops = {d.parent for d in self.all_dirs() if d.parent.name == APP} | (
            {self.spool.parent} if self.spool.parent == self.config.parent else set())
        for top in sorted(tops):
            try:
                top.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError:
                continue  # reported below, for the directory that cannot be made
            check_private(top, holder=True)
        for d in self.all_dirs():
            try:
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StateDirError(
                    f"cannot create state directory {d}: {exc.strerror}; "
                    f"set TRACECAP_HOME to a writable directory"
                ) from None
            check_private(d, holder=False)
            if not os.access(d, os.W_OK | os.X_OK):
                raise StateDirError(
                    f"state directory {d} is not writable; fix its permissions or set TRACECAP_HOME"
                )
        return self

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None) -> "StatePaths":
        env = os.environ if env is None else env
        home = env.get("TRACECAP_HOME")
        if home:
            root = Path(home).expanduser().absolute()
            return cls(
                config=root / "config",
                spool=root / "spool",
                outbox=root / "outbox",
                quarantine=root / "quarantine",
                keys=root / "keys",
                logs=root / "logs",
                run=root / "run",
                reports=_memory_dir(root),
            )
        state = Path(platformdirs.user_state_dir(APP))
        runtime = _runtime_dir()
        return cls(
            config=Path(platformdirs.user_config_dir(APP)),
            spool=state / "spool",
            outbox=state / "outbox",
            quarantine=state / "quarantine",
            keys=state / "keys",
            logs=Path(platformdirs.user_log_dir(APP)),
            run=runtime,
        )


def _memory_dir(root: Path) -> Path | None:
    """A per-user, per-TRACECAP_HOME name in a memory-backed directory, if there is one."""
    base = os.environ.get("XDG_RUNTIME_DIR") if sys.platform.startswith("linux") else None
    if not base and os.path.isdir("/dev/shm"):
        base = "/dev/shm"
    if not base:
        return None
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return Path(base) / f"tracecap-{os.getuid()}-{digest}"


def _runtime_dir() -> Path:
    # XDG_RUNTIME_DIR is per-user tmpfs on systemd machines; without it (macOS, containers) fall
    # back to the state directory so the socket never lands in a world-writable /tmp.
    if sys.platform.startswith("linux") and os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / APP
    return Path(platformdirs.user_state_dir(APP)) / "run"
