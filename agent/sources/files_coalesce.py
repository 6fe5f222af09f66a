"""From raw file-system changes to logical saves: one save is one result, whatever the editor did.

Takes `RawChange`s (create, write, delete, move; absolute paths; monotonic seconds) in the order
they happened, the time now and the debounce window; gives the saves that are due (`Touched`, one
per real path) and the changes still inside their window. Pure: no I/O, no clock.

The rule. Changes linked by a rename form one group; a group is due once `window` seconds have
passed since its last change. Replaying a due group's changes over a map "path -> which original
file's content lives there now" tells, for each real (non-junk) path touched: whether its content
came from another real path (a rename: `moved_from`), and whether the path existed before the
group (`existed`: True when the first change to it was a write, delete or a rename away; False when
it was a create; None when it was a rename onto it, which may or may not have replaced a file).
Editor scratch files (`is_editor_junk`) never come out, and a real path whose content moved to
another real path and which was not recreated comes out only as that move. The caller decides the
final op by looking at the disk and at what it knew before:

| editor                    | raw changes on `f`                                  | result                   |
|---------------------------|-----------------------------------------------------|--------------------------|
| VS Code, nano, `>>`       | write f                                             | f, existed               |
| vim (backupcopy=no)       | create 4913, delete 4913, move f->f~, create f,     | f, existed               |
|                           | write f, delete f~                                  |                          |
| emacs (first save)        | move f->f~, create f, write f                       | f, existed               |
| JetBrains safe write      | create f___jb_tmp___, write it, move f->f___jb_old___,| f, existed             |
|                           | move f___jb_tmp___->f, delete f___jb_old___         |                          |
| `sed -i`                  | create sedAbc123, write it, move sedAbc123->f       | f, existed unknown       |
| `mv a b`                  | move a->b                                           | b, moved_from a          |
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Iterable, Sequence

_JUNK_PATTERNS = re.compile(
    r"""^(?:
        .*~                           # vim / emacs backups (f~, f.~1~)
      | \..*\.sw[a-px]                # vim swap files (.f.swp, .f.swx probe)
      | .*\.swp
      | \#.*\#                        # emacs auto-save
      | \.\#.*                        # emacs lock symlink
      | .*___jb_(?:tmp|old)___        # JetBrains safe write
      | sed[A-Za-z0-9]{6}             # sed -i temp file
      | \.goutputstream-[A-Za-z0-9]+  # GTK editors (gedit)
      | \.~lock\..*\#                 # LibreOffice lock
      | .*\.kate-swp                  # Kate swap
      | \.DS_Store
    )$""",
    re.VERBOSE,
)


def is_editor_junk(path: str) -> bool:
    """Scratch files editors and tools make around a save, by base name."""
    name = os.path.basename(path)
    if _JUNK_PATTERNS.match(name):
        return True
    # vim's writability probe: 4913, then 4913 + 123k if that name is taken.
    if name.isdigit() and int(name) >= 4913 and (int(name) - 4913) % 123 == 0:
        return True
    return False


@dataclasses.dataclass(frozen=True)
class RawChange:
    t: float  # monotonic seconds
    kind: str  # create | write | delete | move
    path: str
    dest: str | None = None  # move only


@dataclasses.dataclass(frozen=True)
class Touched:
    path: str
    moved_from: str | None = None  # the real path whose content now lives at `path`
    existed: bool | None = None  # did `path` exist before these changes? None: unknown
    t: float = 0.0  # time of the last change to the group


_NEW = ("new", "")
_GONE = ("gone", "")


def coalesce(changes: Sequence[RawChange], now: float, window: float,
             is_junk: Callable[[str], bool] = is_editor_junk
             ) -> tuple[list[Touched], list[RawChange]]:
    """(due saves ordered by their last change, changes still waiting)."""
    parent: dict[str, str] = {}

    def find(p: str) -> str:
        parent.setdefault(p, p)
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for c in changes:
        find(c.path)
        if c.kind == "move" and c.dest is not None:
            a, b = find(c.path), find(c.dest)
            if a != b:
                parent[a] = b
    last: dict[str, float] = {}
    for c in changes:
        r = find(c.path)
        last[r] = max(last.get(r, c.t), c.t)
    due_roots = {r for r, t in last.items() if now - t >= window}
    due = [c for c in changes if find(c.path) in due_roots]
    waiting = [c for c in changes if find(c.path) not in due_roots]
    return _replay(due, last, find, is_junk), waiting


def _replay(due: Iterable[RawChange], last: dict[str, float], find: Callable[[str], str],
            is_junk: Callable[[str], bool]) -> list[Touched]:
    at: dict[str, tuple[str, str]] = {}  # path -> ("orig", p) | _NEW | _GONE
    existed: dict[str, bool | None] = {}
    order: list[str] = []

    def touch(p: str, first: bool | None) -> None:
        if p not in existed:
            existed[p] = first
            order.append(p)

    for c in due:
        if c.kind == "create":
            touch(c.path, False)
            at[c.path] = _NEW
        elif c.kind == "write":
            touch(c.path, True)
            at.setdefault(c.path, ("orig", c.path))
        elif c.kind == "delete":
            touch(c.path, True)
            at[c.path] = _GONE
        elif c.kind == "move" and c.dest is not None:
            touch(c.path, True)
            touch(c.dest, None)
            at[c.dest] = at.get(c.path, ("orig", c.path))
            at[c.path] = _GONE

    moved_away = {state[1] for p, state in at.items()
                  if state[0] == "orig" and state[1] != p and not is_junk(state[1])}
    out: list[Touched] = []
    for p in order:
        if is_junk(p):
            continue
        state = at.get(p, ("orig", p))
        if state == _GONE and p in moved_away:
            continue  # it lives on under its new name
        moved_from = None
        if state[0] == "orig" and state[1] != p and not is_junk(state[1]):
            moved_from = state[1]
        out.append(Touched(p, moved_from, existed[p], last[find(p)]))
    out.sort(key=lambda t: t.t)
    return out
