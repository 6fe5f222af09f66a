"""`repo.state`: where a repository stands (HEAD, branch, origin, uncommitted diff), and the chain
of saves that starts from it.

Takes a work tree, the redactor and a size bound; gives the `repo.state` data (`read_repo_state`)
and a `RepoState`: what the event implies about each tracked file, which the files source diffs
its next save of that file against. `RepoStates` is the one registry both sources share: the git
source announces a state (computes it, emits it, records it) while holding the repository's
lock, and the files source holds the same lock from reading a file to emitting its save, so in
`seq` order every save falls wholly before or wholly after a state.

Promises:
- `diff` is what `git diff HEAD` gives for tracked files (submodules and untracked files left
  out, renames as a delete and an add, a/ and b/ prefixes whatever the user's git config says),
  and `git apply` takes it on a clone at `head`. It is emitted only when redaction leaves it
  unchanged, so the tree it describes is the real one; otherwise `diff_omitted` says why:
  "too_large" (over the bound), "binary" (a binary or non-UTF-8 change: a text diff cannot carry
  it), "redacted" (redaction would change it, or a changed path is one the policy never
  captures), "metadata" (content level metadata), "error" (git failed or timed out).
- `remote` is origin's URL without credentials: an http(s)/ftp URL loses its user and password,
  an ssh URL its password; scp-like `git@host:path` and local paths are kept.
- Pure helpers (`clean_remote`, `split_sections`, `redacted_lines`, `hunk_ranges`) do no I/O.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable

GIT_TIMEOUT_S = 30.0
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", re.M)
# Options that make `git diff` print the same thing whatever the user's configuration says.
_DIFF_ARGS = ("--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--no-relative",
              "--ignore-submodules=all", "--src-prefix=a/", "--dst-prefix=b/")


# --------------------------------------------------------------------------- pure helpers

def clean_remote(url: str | None) -> str | None:
    """Origin's URL with credentials removed (see the module's promises)."""
    if not url:
        return None
    url = url.strip()
    if "://" not in url:
        return url  # scp-like (git@host:path) or a local path: no password can be in it
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if parts.scheme in ("ssh", "git+ssh", "ssh+git"):
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hostport}" if user else hostport
    else:
        netloc = hostport
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def split_sections(diff: str, paths: list[str]) -> dict[str, str] | None:
    """The diff cut into one section per file (`diff --git` to the next), keyed by the paths
    `git diff --numstat -z` listed in the same order; None when they do not line up."""
    if not diff:
        return {} if not paths else None
    starts = [m.start() for m in re.finditer(r"^diff --git ", diff, re.M)]
    if len(starts) != len(paths) or starts[0] != 0:
        return None
    ends = starts[1:] + [len(diff)]
    return {p: diff[s:e] for p, s, e in zip(paths, starts, ends)}


def section_is_binary(section: str) -> bool:
    """A section git could not show as text ("Binary files a/x and b/x differ")."""
    head = section.split("\n@@", 1)[0]
    return any(line.startswith(("Binary files ", "GIT binary patch")) for line in head.split("\n"))


def section_deletes(section: str) -> bool:
    return "\ndeleted file mode " in section.split("\n@@", 1)[0]


def hunk_ranges(diff: str) -> list[tuple[int, int, int, int]]:
    """(old_start, old_end, new_start, new_end) of each hunk, 0-based, end exclusive; context
    lines included."""
    out = []
    for m in _HUNK.finditer(diff):
        a, b = int(m.group(1)), int(m.group(2) or 1)
        c, d = int(m.group(3)), int(m.group(4) or 1)
        out.append((max(a - 1, 0), max(a - 1, 0) + b, max(c - 1, 0), max(c - 1, 0) + d))
    return out


@dataclasses.dataclass(frozen=True)
class Redacted:
    """Which lines of a text redaction changed, without the text: `lines` the 0-based line
    numbers (None: a finding spanned lines, so any line may differ) and `digest` a keyed hash of
    those lines' original content, to tell whether a redacted line changed between versions."""
    lines: frozenset[int] | None
    digest: bytes

    @property
    def clean(self) -> bool:
        return self.lines is not None and not self.lines


CLEAN = Redacted(frozenset(), b"")


def redacted_lines(raw: str, findings: list[Any], key: bytes) -> Redacted:
    """Which lines of `raw` its findings (spans with `start`, `end`) touch."""
    if not findings:
        return CLEAN
    lines: set[int] = set()
    for f in findings:
        if "\n" in raw[f.start:f.end]:
            return Redacted(None, b"")
        lines.add(raw.count("\n", 0, f.start))
    text = raw.split("\n")
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for i in sorted(lines):
        mac.update(text[i].encode("utf-8", "surrogatepass") + b"\n")
    return Redacted(frozenset(lines), mac.digest())


def redaction_breaks(diff: str, old: Redacted, new: Redacted) -> bool:
    """True when a diff made from redacted texts does not carry the real change: a line it shows
    (context, removed or added) was changed by redaction, or the redacted lines outside it differ
    between the two versions (a secret replaced by another looks the same once redacted)."""
    if old.clean and new.clean:
        return False
    if old.lines is None or new.lines is None:
        return True
    for a, b, c, d in hunk_ranges(diff):
        if any(a <= i < b for i in old.lines) or any(c <= i < d for i in new.lines):
            return True
    return old.digest != new.digest


# --------------------------------------------------------------------------- the state

@dataclasses.dataclass(frozen=True)
class RepoState:
    """What the last `repo.state` of a repository says its tracked files hold."""
    epoch: int  # grows with every state announced for any repo
    head: str | None
    sections: dict[str, str]  # changed path -> its section of the emitted diff
    changed: frozenset[str]  # every path with an uncommitted change, also when the diff is omitted
    omitted: str | None  # the diff_omitted reason, or None when the diff was emitted
    ts: int = 0  # the event's `ts`: a save made from this state must have a later one


def _git(root: Path, *args: str, limit: int | None = None) -> tuple[int, bytes]:
    """Run git in `root`; (exit status, stdout). Raises OverflowError past `limit` bytes of
    output and subprocess.TimeoutExpired after GIT_TIMEOUT_S."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    cmd = ["git", "-c", "core.quotepath=off", "-C", str(root), *args]
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env=env) as proc:
        timer = threading.Timer(GIT_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            out = proc.stdout.read(limit + 1) if limit is not None else proc.stdout.read()
            if limit is not None and len(out) > limit:
                proc.kill()
                raise OverflowError
            rc = proc.wait()
        finally:
            timer.cancel()
    if rc < 0:
        raise subprocess.TimeoutExpired(cmd, GIT_TIMEOUT_S)
    return rc, out


def _empty_tree(root: Path) -> str | None:
    rc, out = _git(root, "hash-object", "-t", "tree", "/dev/null")
    return out.decode().strip() if rc == 0 else None


def read_repo_state(root: Path, branch: str | None, redactor: Any, max_bytes: int,
                    epoch: int) -> tuple[dict[str, Any], RepoState]:
    """The `repo.state` data of the work tree at `root` and the state it implies."""
    data: dict[str, Any] = {"repo": str(root), "remote": None, "head": None, "branch": branch}
    diff, omitted, sections, changed = "", "error", {}, frozenset()
    try:
        rc, out = _git(root, "config", "--get", "remote.origin.url")
        if rc == 0:
            data["remote"] = clean_remote(out.decode("utf-8", "replace"))
        rc, out = _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
        head = out.decode().strip() if rc == 0 else None
        data["head"] = head
        against = head or _empty_tree(root)
        if against is None:
            raise OSError("no HEAD and no empty tree")
        # A file changed between the two git runs makes their lists disagree: once more, then
        # say so rather than guess.
        for _ in range(2):
            diff, omitted, sections, changed = _read_diff(root, against, redactor, max_bytes)
            if omitted != "error":
                break
    except OverflowError:
        diff, omitted = "", "too_large"
    except (OSError, ValueError, subprocess.SubprocessError):
        diff, omitted = "", "error"
    if omitted is None:
        data["diff"] = diff
    else:
        data["diff_omitted"] = omitted
    return data, RepoState(epoch, data["head"], sections, changed, omitted)


def _read_diff(root: Path, against: str, redactor: Any, max_bytes: int
               ) -> tuple[str, str | None, dict[str, str], frozenset[str]]:
    """(diff, why it is omitted or None, its sections by path, the changed paths)."""
    rc, numstat = _git(root, "diff", *_DIFF_ARGS, "--numstat", "-z", against, "--", limit=max_bytes)
    if rc != 0:
        raise OSError("git diff --numstat failed")
    paths, binary = _numstat_paths(numstat)
    changed = frozenset(paths)
    omitted = _content_omitted(redactor, root, paths, binary)
    if omitted is not None or not paths:
        return "", omitted, {}, changed
    rc, raw = _git(root, "diff", *_DIFF_ARGS, against, "--", limit=max_bytes)
    if rc != 0:
        raise OSError("git diff failed")
    diff, omitted = _check_diff(raw, redactor)
    if omitted is not None:
        return "", omitted, {}, changed
    sections = split_sections(diff, paths)
    if sections is None:
        return "", "error", {}, changed
    if any(section_is_binary(s) for s in sections.values()):
        return "", "binary", {}, changed
    return diff, None, sections, changed


def _numstat_paths(raw: bytes) -> tuple[list[str], bool]:
    """Paths of `git diff --numstat -z` (without renames: `added\\tdeleted\\tpath\\0`), and
    whether any of them is binary (`-\\t-\\t`)."""
    paths, binary = [], False
    for rec in raw.split(b"\0"):
        if not rec:
            continue
        added, deleted, path = rec.split(b"\t", 2)
        binary = binary or (added == b"-" and deleted == b"-")
        paths.append(path.decode("utf-8", "surrogateescape"))
    return paths, binary


def _content_omitted(redactor: Any, root: Path, paths: list[str], binary: bool) -> str | None:
    if redactor is None or getattr(redactor, "content", "full") == "metadata":
        return "metadata"
    if binary:
        return "binary"
    for p in paths:
        if not (redactor.content_allowed(p) and redactor.content_allowed(f"{root}/{p}")):
            return "redacted"
    return None


def _check_diff(raw: bytes, redactor: Any) -> tuple[str, str | None]:
    try:
        diff = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "", "binary"
    if "\0" in diff:
        return "", "binary"
    result = redactor.redact_text(diff)
    if result.text != diff:
        return "", "redacted"
    return diff, None


class RepoStates:
    """The last `repo.state` of each repository, and the lock that orders saves around it.
    Shared by the git and files sources of one daemon; thread-safe."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Path, threading.RLock] = {}
        self._states: dict[Path, RepoState] = {}
        self._epoch = 0
        # Keys the in-memory hashes of redacted lines: never written anywhere, new per daemon.
        self.line_key = os.urandom(32)

    def lock(self, root: Path) -> threading.RLock:
        with self._guard:
            lock = self._locks.get(root)
            if lock is None:
                lock = self._locks[root] = threading.RLock()
            return lock

    def current(self, root: Path) -> RepoState | None:
        with self._guard:
            return self._states.get(root)

    def stamp_after(self, root: Path, ts: int) -> int:
        """`ts` for an event of `root` emitted now: later than the repo's last state."""
        state = self.current(root)
        return ts if state is None or ts > state.ts else state.ts + 1

    def announce(self, root: Path, branch: str | None, redactor: Any, max_bytes: int,
                 emit: Callable[[dict[str, Any], int], bool]) -> RepoState | None:
        """Compute the state of `root`, hand it and its `ts` to `emit` (which returns whether it
        was emitted) and, when it was, make it the state later saves diff against.

        The journal orders events by `ts` (within its reorder window), so `ts` is taken after
        every save made before the state was emitted, and the files source stamps each save made
        after it later than this `ts` (`stamp_after`)."""
        with self.lock(root):
            with self._guard:
                self._epoch += 1
                epoch = self._epoch
            data, state = read_repo_state(root, branch, redactor, max_bytes, epoch)
            state = dataclasses.replace(state, ts=time.time_ns())
            if not emit(data, state.ts):
                return None
            with self._guard:
                self._states[root] = state
            return state
