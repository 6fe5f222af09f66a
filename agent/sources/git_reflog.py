"""Reflog lines to git events: what happened to HEAD and to each ref, as pure functions.

Takes the bytes appended to a reflog (`logs/HEAD` or `logs/refs/...`); gives `ReflogEntry`s
(`parse_reflog`, complete lines only, so a line being written is read next time) and, per entry,
the event it means (`classify`). Pure: no I/O.

The rule: HEAD's log speaks for everything that moves HEAD (commits, checkouts, resets, merges,
pulls, cherry-picks, reverts); a branch's own log adds only what HEAD's log does not say
(branch created, renamed or force-moved, rebase and `pull --rebase` finished, fetch, push, stash),
so a commit on the checked-out branch is one event, not two. Rebase steps on HEAD are not events;
the rebased branch's finish is.

| log            | message                                         | event                         |
|----------------|-------------------------------------------------|-------------------------------|
| HEAD           | `commit: fix parser` (also initial/amend/merge) | git.commit                    |
| HEAD           | `cherry-pick: x`, `revert: x`                   | git.commit (action so named)  |
| HEAD           | `checkout: moving from main to topic`           | git.checkout from main to topic |
| HEAD           | `reset: moving to HEAD~1`                       | git.ref action reset          |
| HEAD           | `merge topic: Fast-forward`                     | git.ref action merge          |
| HEAD           | `pull: Fast-forward`                            | git.ref action pull           |
| HEAD           | `rebase (pick): x`, `rebase (start): ...`       | none                          |
| refs/heads/x   | `branch: Created from main`                     | git.ref action branch         |
| refs/heads/x   | `branch: renamed refs/heads/a to refs/heads/x`  | git.ref action rename         |
| refs/heads/x   | `branch: Reset to HEAD~2`                       | git.ref action reset          |
| refs/heads/x   | `rebase (finish): refs/heads/x onto 1a2b`       | git.ref action rebase         |
| refs/heads/x   | `pull --rebase (finish): refs/heads/x onto ...` | git.ref action pull           |
| refs/remotes/o/x | `fetch: fast-forward`, `update by push`        | git.ref action fetch / push   |
| refs/stash     | `WIP on main: ...`                              | git.ref action stash          |
| refs/heads/x   | `commit: x`, `merge ...`, `reset: ...`           | none (HEAD's log has it)      |
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

ZERO_SHA = "0" * 40
_LINE = re.compile(r"^([0-9a-f]{40,64}) ([0-9a-f]{40,64}) (.*?) (\d+) ([+-]\d{4})(?:\t(.*))?$")
_COMMIT = re.compile(r"^commit(?: \((initial|amend|merge)\))?: (.*)$", re.S)
_CHECKOUT = re.compile(r"^checkout: moving from (.*) to (.*)$")
# Messages HEAD's log carries for a move of the checked-out branch; skipped in branch logs.
_HEAD_SPOKEN = re.compile(r"^(commit|merge |reset:|pull(?!( --rebase)? \(finish\))|cherry-pick|revert|"
                          r"rebase(?! (-i |-m )?\(finish\))|rebase -i (?!\(finish\))|am:)")


@dataclasses.dataclass(frozen=True)
class ReflogEntry:
    old: str
    new: str
    ts: int  # seconds since the epoch, as git wrote it
    message: str


def parse_reflog(buf: bytes) -> tuple[list[ReflogEntry], int]:
    """The complete lines of `buf` as entries (malformed lines skipped) and the bytes consumed."""
    end = buf.rfind(b"\n") + 1
    entries = []
    for raw in buf[:end].split(b"\n"):
        entry = parse_reflog_line(raw.decode("utf-8", "replace"))
        if entry is not None:
            entries.append(entry)
    return entries, end


def parse_reflog_line(line: str) -> ReflogEntry | None:
    m = _LINE.match(line)
    if not m:
        return None
    return ReflogEntry(m.group(1), m.group(2), int(m.group(4)), m.group(6) or "")


def _action(message: str) -> str:
    """The command that wrote a reflog message: `rebase (finish): ...` -> rebase."""
    head = message.split(":", 1)[0].strip()
    if head.startswith("pull"):
        return "pull"
    if head.startswith("rebase"):
        return "rebase"
    if head.startswith("merge"):
        return "merge"
    if message.startswith("update by push"):
        return "push"
    if head.startswith(("WIP on", "On ")) or head == "stash":
        return "stash"
    word = head.split(" ", 1)[0]
    return word or "update"


def classify(log: str, entry: ReflogEntry, branch: str | None) -> tuple[str, dict[str, Any]] | None:
    """(kind, data) for one entry of the log named `log` ("HEAD" or "refs/..."), or None.
    `branch`: the branch HEAD was on when the entry was written (None if detached)."""
    msg = entry.message
    if log == "HEAD":
        m = _COMMIT.match(msg)
        if m:
            return "git.commit", {"sha": entry.new, "branch": branch, "message": m.group(2),
                                  "parent": None if entry.old == ZERO_SHA else entry.old,
                                  "action": m.group(1) or "commit"}
        for prefix in ("cherry-pick", "revert"):
            if msg.startswith(prefix + ":"):
                return "git.commit", {"sha": entry.new, "branch": branch,
                                      "message": msg[len(prefix) + 1:].strip(), "parent": entry.old,
                                      "action": prefix}
        m = _CHECKOUT.match(msg)
        if m:
            return "git.checkout", {"from": m.group(1), "to": m.group(2), "old": entry.old,
                                    "new": entry.new}
        if msg.startswith(("rebase", "pull --rebase")) or msg == "":
            return None
        return "git.ref", {"ref": f"refs/heads/{branch}" if branch else "HEAD", "old": entry.old,
                           "new": entry.new, "action": _action(msg), "message": msg}
    if _HEAD_SPOKEN.match(msg):
        return None
    lower = msg.lower()  # git writes both "branch: renamed" and "Branch: renamed"
    if lower.startswith("branch: renamed"):
        action = "rename"
    elif lower.startswith("branch: created"):
        action = "branch"
    elif lower.startswith("branch: reset"):
        action = "reset"
    else:
        action = _action(msg) if msg else "update"
    return "git.ref", {"ref": log, "old": entry.old, "new": entry.new, "action": action,
                       "message": msg}


def branch_after(entry: ReflogEntry, branch: str | None, is_branch) -> str | None:
    """The branch HEAD is on after a HEAD-log entry; `is_branch(name)` says whether a checkout
    target names a branch (anything else, a sha or a tag, detaches HEAD)."""
    m = _CHECKOUT.match(entry.message)
    if m:
        target = m.group(2)
        return target if is_branch(target) else None
    m = re.match(r"^rebase(?: -i| -m)? \(finish\): returning to refs/heads/(.*)$", entry.message)
    if m:
        return m.group(1)
    if entry.message.startswith(("rebase", "pull --rebase")) and "(start)" in entry.message:
        return None
    return branch


def commit_message(commit_object: bytes) -> str:
    """The full message of a raw commit object (everything after the header's blank line)."""
    _, _, body = commit_object.partition(b"\n\n")
    return body.decode("utf-8", "replace").rstrip("\n")
