"""Which captured shell session a shell process is, read from the shell hook's spool directory.

Takes the spool directory (`StatePaths.shell_spool`, format in agent/sources/shell.py: files named
`<sid>.<k>.rec` and `<sid>.cmd`, where `<sid>` is `<pid>-<unique>`, records `S1 <enc> <sid> <n>
<t> <pid> <interactive> ...`); gives, for a shell pid, `(sid, interactive)`, or `(None, None)` when
that shell has no spool files (no hook, or it has not run a command yet). Promise: read-only, one
directory listing per lookup plus at most 4 KiB of one file for the interactive flag; the sid is
the same string the shell source uses as the `session` of its events, so tool invocations join
their shell commands. Lookups happen only when a new shell (or a command under a shell with no
session yet) appears, never per tick.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

_SPOOL_FILE = re.compile(r"^(?P<pid>[0-9]+)-(?P<unique>[A-Za-z0-9]+)\.(?:[0-9]+\.rec|cmd)$")
_HEAD_BYTES = 4096


def sids_by_pid(names: Iterable[str]) -> dict[int, list[str]]:
    """Spool file names → {shell pid: [sid, ...]} (several only if a pid was reused)."""
    out: dict[int, list[str]] = {}
    for name in names:
        m = _SPOOL_FILE.match(name)
        if m:
            sid = f"{m['pid']}-{m['unique']}"
            sids = out.setdefault(int(m["pid"]), [])
            if sid not in sids:
                sids.append(sid)
    return out


def interactive_from_records(head: str, sid: str) -> bool | None:
    """The `<interactive>` field of the first complete S1 record of `sid` in `head`, if any."""
    for line in head.split("\n")[:-1]:  # the last piece may be a torn line
        fields = line.split("\t")
        if len(fields) >= 7 and fields[0] == "S1" and fields[2] == sid:
            return {"1": True, "0": False}.get(fields[6])
    return None


class SpoolSessions:
    """The lookup `ProcessWatcher` calls for each new shell pid."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = Path(spool_dir)

    def __call__(self, pid: int) -> tuple[str | None, bool | None]:
        try:
            names = os.listdir(self.spool_dir)
        except OSError:
            return None, None
        sids = sids_by_pid(names).get(pid)
        if not sids:
            return None, None
        sid = max(sids, key=self._newest_mtime) if len(sids) > 1 else sids[0]
        return sid, self._interactive(sid, names)

    def _newest_mtime(self, sid: str) -> float:
        best = 0.0
        for p in self.spool_dir.glob(f"{sid}.*"):
            try:
                best = max(best, p.stat().st_mtime)
            except OSError:
                pass
        return best

    def _interactive(self, sid: str, names: list[str]) -> bool | None:
        segments = sorted((n for n in names if n.startswith(sid + ".") and n.endswith(".rec")),
                          key=lambda n: int(n.split(".")[-2]))
        for name in segments:
            try:
                with open(self.spool_dir / name, "rb") as f:
                    head = f.read(_HEAD_BYTES).decode("utf-8", "replace")
            except OSError:
                continue
            flag = interactive_from_records(head, sid)
            if flag is not None:
                return flag
        return None
