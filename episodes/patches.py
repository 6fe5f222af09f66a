"""Working trees rebuilt from events, and the unified diffs between two of them.

Takes the diffs the capture side records: a `repo.state` diff (`git diff HEAD`: the uncommitted
changes to tracked files) and the `file.save` diffs that follow it in `seq` order; gives a
`TreeTrack` that knows each touched file as a sequence of lines, and `diff_trees(a, b)`: one
`git apply`-able unified diff per file from snapshot `a` to snapshot `b`.

The events never hold HEAD's whole files, only the lines the diffs show (changed lines and three
lines of context). So a file is kept as references: an `int` is line N of HEAD's version of the
file (its text known once a diff has shown it), a `str` is a line written since; after the listed
references come HEAD's lines from `tail` on (`tail` None: the file ends there). Two snapshots of
the same file are compared reference by reference, and a diff between them prints only lines the
events showed: changed lines always were (a removed HEAD line is printed by the diff that removed
it), and context is cut to the known lines around each change.

Promises: pure (no I/O, no git); `ChainBroken` when the events cannot rebuild a file (a recorded
chain break, a save without a diff, a diff that does not fit what earlier diffs showed), with the
reason; `Unrenderable` when a diff between two snapshots would need lines no event showed (e.g. the
whole content of a deleted file that was never shown). Diff parsing is `unidiff`'s.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Iterable

NO_NEWLINE = "\\ No newline at end of file\n"
CONTEXT = 3


class ChainBroken(Exception):
    """The events cannot rebuild `path`; `reason` is a short word (the capture side's, or ours)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class Unrenderable(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclasses.dataclass
class FileState:
    exists: bool
    lines: list  # int: HEAD line index of `origin`; str: a line's text, "\n" included but on the last
    tail: int | None  # HEAD lines of `origin` from this index on follow `lines`; None: nothing follows
    origin: str  # the HEAD path whose lines the ints name (differs from the path after a move)

    def copy(self) -> "FileState":
        return FileState(self.exists, list(self.lines), self.tail, self.origin)


def head_state(path: str) -> FileState:
    return FileState(True, [], 0, path)


def absent_state(path: str) -> FileState:
    return FileState(False, [], None, path)


@dataclasses.dataclass
class Tree:
    """A snapshot: the files touched since the chain began, and what each was at its start."""
    files: dict[str, FileState]
    initial: dict[str, FileState]
    head_text: dict[tuple[str, int], str]  # shared: facts about HEAD stay true
    head_len: dict[str, int]
    broken: dict[str, str]
    all_broken: str | None = None


def parse_hunks(diff: str) -> list[tuple[int, int, list[tuple[str, str]]]]:
    """(old start, old length, [(tag, text)]) per hunk of a one-file diff; "\\ No newline" folded
    into the line before it."""
    from unidiff import PatchSet
    from unidiff.errors import UnidiffParseError

    try:
        files = PatchSet(diff)
    except UnidiffParseError as exc:
        raise ValueError(f"not a unified diff: {exc}") from None
    out = []
    for pf in files:
        out.extend(_hunks(pf))
    return out


def _hunks(pf) -> list[tuple[int, int, list[tuple[str, str]]]]:
    out = []
    for h in pf:
        lines: list[tuple[str, str]] = []
        for ln in h:
            tag = ln.line_type
            if tag == "\\":
                if lines:
                    t, text = lines[-1]
                    lines[-1] = (t, text[:-1] if text.endswith("\n") else text)
                continue
            if tag in (" ", "-", "+"):
                lines.append((tag, ln.value))
        out.append((h.source_start, h.source_length, lines))
    return out


class TreeTrack:
    """One repository's working tree, followed from a `repo.state` through its saves."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.files: dict[str, FileState] = {}
        self.initial: dict[str, FileState] = {}
        self.head_text: dict[tuple[str, int], str] = {}
        self.head_len: dict[str, int] = {}
        self.broken: dict[str, str] = {}
        self.all_broken: str | None = None
        self.head_is_current = False

    def committed(self) -> None:
        """HEAD moved by a commit and the chain goes on: the working tree did not change, and a
        save's "head" (the new HEAD's blob, when the state shows no change to the file) is the
        file as it stands, for a file followed so far; a file first seen after the commit breaks
        the chain (`unknown_base`)."""
        self.head_is_current = True

    # --- building
    def _state(self, path: str) -> FileState:
        st = self.files.get(path)
        if st is None:
            st = self.initial.get(path) or head_state(path)
            self.initial.setdefault(path, st.copy())
            st = self.files[path] = st.copy()
        return st

    def _start_absent(self, path: str) -> None:
        """The file did not exist before this diff (new file)."""
        if path not in self.files:
            self.initial.setdefault(path, absent_state(path))
        self.files[path] = absent_state(path)

    def repo_state(self, diff: str | None, omitted: str | None) -> None:
        """A new chain: HEAD plus `diff` (as `git diff HEAD` prints it)."""
        self.reset()
        if diff is None:
            self.all_broken = omitted or "no_diff"
            return
        if not diff:
            return
        from unidiff import PatchSet
        from unidiff.errors import UnidiffParseError

        try:
            files = PatchSet(diff)
        except UnidiffParseError:
            self.all_broken = "unreadable_diff"
            return
        for pf in files:
            src = _strip_prefix(pf.source_file)
            dst = _strip_prefix(pf.target_file)
            if pf.is_binary_file:
                self.broken[dst or src] = "binary"
                continue
            try:
                if pf.is_added_file:
                    self._start_absent(dst)
                    self._apply(dst, _hunks(pf))
                elif pf.is_removed_file:
                    self._apply(src, _hunks(pf))
                    st = self._state(src)
                    self.head_len[st.origin] = _closed_len(st)
                    self.files[src] = absent_state(src)
                elif pf.is_rename:
                    self._move(src, dst)
                    self._apply(dst, _hunks(pf))
                else:
                    self._apply(dst, _hunks(pf))
            except ChainBroken as exc:
                self.broken[exc.path] = exc.reason

    def same_tree(self, diff: str | None, omitted: str | None) -> bool:
        """Does a new `repo.state` of the same HEAD describe the tree this track holds? (It does
        after `checkout -b`; not after a reset that changed files.) Files created since HEAD and
        never added to the index are left out of the comparison: `git diff HEAD` omits them."""
        fresh = TreeTrack()
        fresh.head_text, fresh.head_len = self.head_text, self.head_len
        fresh.repo_state(diff, omitted)
        if fresh.all_broken or fresh.broken or self.all_broken:
            return False
        tree = self.snapshot()
        for path in sorted(set(self.files) | set(fresh.files)):
            mine = self.files.get(path) or self.initial.get(path) or head_state(path)
            theirs = fresh.files.get(path)
            if theirs is None:
                if not self.initial.get(path, head_state(path)).exists:
                    continue  # untracked since it was made
                theirs = head_state(path)
            try:
                if mine != theirs and diff_file(path, mine, theirs, tree):
                    return False
            except Unrenderable:
                return False
        return True

    def save(self, data: dict) -> None:
        """One `file.save` event's data."""
        path = data.get("path")
        if not isinstance(path, str):
            return
        op = data.get("op")
        if data.get("chain_break"):
            self.broken[path] = str(data["chain_break"])
            if op == "move" and isinstance(data.get("from"), str):
                self.broken[data["from"]] = str(data["chain_break"])
            return
        if op == "delete":
            if path not in self.files:
                # Never seen in this chain: most likely a file git does not track (a tracked file
                # deleted before the state is in its diff). Taken as untracked: no change.
                self.initial.setdefault(path, absent_state(path))
            self.files[path] = absent_state(path)
            return
        if op == "move" and isinstance(data.get("from"), str):
            self._move(data["from"], path)
        diff = data.get("diff")
        if not isinstance(diff, str):
            self.broken[path] = "no_diff"
            return
        base = data.get("base", "previous")
        if self.head_is_current and base != "empty" and path not in self.files:
            # First seen after a commit the chain went through: its base is the new HEAD's blob (and
            # the new state's diff), and what the commit did to the file no event says.
            self.broken[path] = "unknown_base"
            return
        if base == "head" and self.head_is_current:
            base = "previous"
        if base == "head":
            self._state(path)
            self.files[path] = head_state(path)
        elif base == "empty":
            if path not in self.files:
                self.initial.setdefault(path, absent_state(path))
            self.files[path] = FileState(False, [], None, path)
        try:
            self._apply(path, parse_hunks(diff) if diff else [])
        except ValueError:
            self.broken[path] = "unreadable_diff"
        except ChainBroken as exc:
            self.broken[exc.path] = exc.reason

    def _move(self, src: str, dst: str) -> None:
        moved = self._state(src).copy()
        self.files[src] = absent_state(src)
        if dst not in self.files:
            self.initial.setdefault(dst, absent_state(dst))
        self.files[dst] = moved
        if src in self.broken:
            self.broken[dst] = self.broken[src]

    def _apply(self, path: str, hunks: list[tuple[int, int, list[tuple[str, str]]]]) -> None:
        st = self._state(path)
        src = st.lines
        out: list = []
        pos = 0
        for start, old_len, lines in hunks:
            begin = start - 1 if old_len else start
            if begin < pos:
                raise ChainBroken(path, "diff_mismatch")
            self._reach(st, begin + old_len)
            out.extend(src[pos:begin])
            pos = begin
            for tag, text in lines:
                if tag == "+":
                    out.append(text)
                    continue
                if pos >= len(src):
                    raise ChainBroken(path, "diff_mismatch")
                ref = src[pos]
                if isinstance(ref, int):
                    key = (st.origin, ref)
                    known = self.head_text.get(key)
                    if known is None:
                        self.head_text[key] = text
                    elif known != text:
                        raise ChainBroken(path, "diff_mismatch")
                elif ref != text:
                    raise ChainBroken(path, "diff_mismatch")
                if not text.endswith("\n") and isinstance(ref, int):
                    self.head_len[st.origin] = ref + 1  # the last line of HEAD's file
                pos += 1
                if tag == " ":
                    out.append(ref)
        out.extend(src[pos:])
        st.lines = out
        st.exists = True

    def _reach(self, st: FileState, n: int) -> None:
        """List at least `n` references, taking them from HEAD's tail."""
        need = n - len(st.lines)
        if need <= 0 or st.tail is None:
            return
        end = self.head_len.get(st.origin)
        take = need if end is None else max(0, min(need, end - st.tail))
        st.lines.extend(range(st.tail, st.tail + take))
        st.tail += take

    def snapshot(self) -> Tree:
        return Tree({p: s.copy() for p, s in self.files.items()}, dict(self.initial), self.head_text,
                    self.head_len, dict(self.broken), self.all_broken)


def _strip_prefix(name: str | None) -> str:
    if not name or name == "/dev/null":
        return ""
    return name[2:] if name[:2] in ("a/", "b/") else name


def _closed_len(st: FileState) -> int:
    return len(st.lines) if st.tail is None else st.tail


# --- diffs between snapshots -------------------------------------------------------------------

def _text(tree: Tree, st: FileState, ref) -> str | None:
    return ref if isinstance(ref, str) else tree.head_text.get((st.origin, ref))


def _full_text(tree: Tree, st: FileState, path: str) -> list[str]:
    """Every line of the file, or Unrenderable when some line was never shown."""
    lines = list(st.lines)
    if st.tail is not None:
        end = tree.head_len.get(st.origin)
        if end is None:
            raise Unrenderable(path, "content_unknown")
        lines.extend(range(st.tail, end))
    out = []
    for ref in lines:
        t = _text(tree, st, ref)
        if t is None:
            raise Unrenderable(path, "content_unknown")
        out.append(t)
    return out


def _line(text: str, tag: str) -> str:
    return f"{tag}{text}" if text.endswith("\n") else f"{tag}{text}\n{NO_NEWLINE}"


def _range(lo: int, n: int) -> str:
    return f"{lo + 1 if n else lo},{n}"


def diff_file(path: str, a: FileState, b: FileState, tree: Tree) -> str:
    """The unified diff (git headers) of one file from `a` to `b`; "" when they are the same."""
    if not a.exists and not b.exists:
        return ""
    if not a.exists:
        new = _full_text(tree, b, path)
        body = f"@@ -0,0 +{_range(0, len(new))} @@\n" + "".join(_line(t, "+") for t in new) if new else ""
        return f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n{body}" \
            if new else f"diff --git a/{path} b/{path}\nnew file mode 100644\n"
    if not b.exists:
        old = _full_text(tree, a, path)
        body = f"@@ -{_range(0, len(old))} +0,0 @@\n" + "".join(_line(t, "-") for t in old) if old else ""
        return f"diff --git a/{path} b/{path}\ndeleted file mode 100644\n--- a/{path}\n+++ /dev/null\n{body}" \
            if old else f"diff --git a/{path} b/{path}\ndeleted file mode 100644\n"
    if a.origin == b.origin and (a.tail is None) == (b.tail is None):
        a_refs, b_refs = list(a.lines), list(b.lines)
        if a.tail is not None and a.tail != b.tail:  # list both up to the same HEAD line
            top = max(a.tail, b.tail)
            a_refs.extend(range(a.tail, top))
            b_refs.extend(range(b.tail, top))
        # Only the part between the common head and tail is compared; CONTEXT lines around it are
        # kept for the hunks' context.
        lo = 0
        n = min(len(a_refs), len(b_refs))
        while lo < n and a_refs[lo] == b_refs[lo]:
            lo += 1
        hi = 0
        while hi < n - lo and a_refs[-1 - hi] == b_refs[-1 - hi]:
            hi += 1
        lo = max(0, lo - CONTEXT)
        hi = max(0, hi - CONTEXT)
        a_mid, b_mid = a_refs[lo:len(a_refs) - hi], b_refs[lo:len(b_refs) - hi]
        ka = _keys(tree, a, a_mid)
        kb = _keys(tree, b, b_mid)
        ops = _anchored_opcodes(a_mid, b_mid, ka, kb)
    else:
        ka = _full_text(tree, a, path)
        kb = _full_text(tree, b, path)
        lo = 0
        ops = difflib.SequenceMatcher(None, ka, kb, autojunk=False).get_opcodes()
    hunks = _hunks_between(path, ka, kb, ops, lo)
    if not hunks:
        return ""
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n" + "".join(hunks)


def _keys(tree: Tree, st: FileState, refs: list) -> list:
    """Each line's text where known, else (origin, HEAD line index)."""
    get, origin = tree.head_text.get, st.origin
    return [r if isinstance(r, str) else t if (t := get((origin, r))) is not None else (origin, r) for r in refs]


def _anchored_opcodes(a_refs: list, b_refs: list, ka: list, kb: list) -> list[tuple]:
    """difflib-style opcodes from `a_refs` to `b_refs`. HEAD lines (ints) kept on both sides are
    anchors: edits never reorder them, so they pair up in order; only the stretches between two
    anchors are matched by difflib, on their keys (text where known)."""
    common = {r for r in a_refs if isinstance(r, int)} & {r for r in b_refs if isinstance(r, int)}
    a_at = [k for k, r in enumerate(a_refs) if r in common] if common else []
    b_at = [k for k, r in enumerate(b_refs) if r in common] if common else []
    ops: list[tuple] = []
    pa = pb = 0
    for ia, jb in zip(a_at + [len(a_refs)], b_at + [len(b_refs)]):
        if ia > pa or jb > pb:
            sm = difflib.SequenceMatcher(None, ka[pa:ia], kb[pb:jb], autojunk=False)
            ops.extend((t, i1 + pa, i2 + pa, j1 + pb, j2 + pb) for t, i1, i2, j1, j2 in sm.get_opcodes())
        if ia < len(a_refs):
            ops.append(("equal", ia, ia + 1, jb, jb + 1))
        pa, pb = ia + 1, jb + 1
    return ops


def _hunks_between(path: str, ka: list, kb: list, ops: list[tuple], offset: int = 0) -> list[str]:
    """Hunks from `ka` to `kb` (str: known text; tuple: a HEAD line never shown, same on both
    sides) by the opcodes `ops`, both starting at line `offset` of the file. Context is up to
    CONTEXT known lines; an unknown line cuts it."""
    changes = [op for op in ops if op[0] != "equal"]
    if not changes:
        return []
    for tag, i1, i2, j1, j2 in changes:
        if any(not isinstance(k, str) for k in ka[i1:i2]) or any(not isinstance(k, str) for k in kb[j1:j2]):
            raise Unrenderable(path, "content_unknown")
    groups: list[list[tuple]] = [[changes[0]]]
    for op in changes[1:]:
        prev = groups[-1][-1]
        between = ka[prev[2]:op[1]]
        if len(between) <= 2 * CONTEXT and all(isinstance(k, str) for k in between):
            groups[-1].append(op)
        else:
            groups.append([op])
    out = []
    for g in groups:
        i1, j1 = g[0][1], g[0][3]
        i2, j2 = g[-1][2], g[-1][4]
        lead = 0
        while lead < CONTEXT and i1 - lead - 1 >= 0 and isinstance(ka[i1 - lead - 1], str):
            lead += 1
        trail = 0
        while trail < CONTEXT and i2 + trail < len(ka) and isinstance(ka[i2 + trail], str):
            trail += 1
        a_lo, b_lo = i1 - lead, j1 - lead
        a_hi, b_hi = i2 + trail, j2 + trail
        body = [_line(k, " ") for k in ka[a_lo:i1]]
        pos = i1
        for tag, x1, x2, y1, y2 in g:
            body.extend(_line(k, " ") for k in ka[pos:x1])
            body.extend(_line(k, "-") for k in ka[x1:x2])
            body.extend(_line(k, "+") for k in kb[y1:y2])
            pos = x2
        body.extend(_line(k, " ") for k in ka[i2:a_hi])
        out.append(f"@@ -{_range(offset + a_lo, a_hi - a_lo)} +{_range(offset + b_lo, b_hi - b_lo)} @@\n"
                   + "".join(body))
    return out


def diff_trees(a: Tree | None, b: Tree, paths: Iterable[str] | None = None) -> dict[str, str]:
    """path -> diff from snapshot `a` (None: HEAD, as `b`'s chain began) to `b`, for every path
    that differs. Raises ChainBroken for a broken path that changed, Unrenderable as above."""
    if b.all_broken:
        raise ChainBroken("*", b.all_broken)
    out: dict[str, str] = {}
    names = set(b.files) | set(b.broken) | (set(a.files) if a is not None else set())
    for path in sorted(names if paths is None else set(paths) & names):
        if path in b.broken:
            raise ChainBroken(path, b.broken[path])
        before = (a.files.get(path) if a is not None else None) or b.initial.get(path) or head_state(path)
        after = b.files.get(path) or before
        if before == after:
            continue
        d = diff_file(path, before, after, b)
        if d:
            out[path] = d
    return out
