"""Coalescing raw file-system changes into logical saves: a table of what editors really do."""
import pytest

from agent.sources.files_coalesce import RawChange as C, Touched, coalesce, is_editor_junk

F = "/r/f.py"
CASES = [
    ("vscode direct write", [C(0, "write", F)], [Touched(F, None, True)]),
    ("vim rename dance", [C(0, "create", "/r/4913"), C(0, "delete", "/r/4913"),
                          C(0, "move", F, F + "~"), C(0, "create", F), C(0, "write", F),
                          C(0, "delete", F + "~")], [Touched(F, None, True)]),
    ("vim with swap file writes", [C(0, "write", "/r/.f.py.swp"), C(0, "write", F)],
     [Touched(F, None, True)]),
    ("emacs first save", [C(0, "create", "/r/.#f.py"), C(0, "move", F, F + "~"),
                          C(0, "create", F), C(0, "write", F), C(0, "delete", "/r/#f.py#")],
     [Touched(F, None, True)]),
    ("jetbrains safe write", [C(0, "create", F + "___jb_tmp___"), C(0, "write", F + "___jb_tmp___"),
                              C(0, "move", F, F + "___jb_old___"),
                              C(0, "move", F + "___jb_tmp___", F),
                              C(0, "delete", F + "___jb_old___")], [Touched(F, None, True)]),
    ("sed -i", [C(0, "create", "/r/sedAb12Cd"), C(0, "write", "/r/sedAb12Cd"),
                C(0, "move", "/r/sedAb12Cd", F)], [Touched(F, None, None)]),
    ("atomic write via any temp name", [C(0, "create", "/r/.f.py.tmp.123"),
                                        C(0, "write", "/r/.f.py.tmp.123"),
                                        C(0, "move", "/r/.f.py.tmp.123", F)],
     [Touched("/r/.f.py.tmp.123", None, False), Touched(F, None, None)]),
    ("new file", [C(0, "create", F), C(0, "write", F)], [Touched(F, None, False)]),
    ("rename", [C(0, "move", "/r/a.py", "/r/b.py")], [Touched("/r/b.py", "/r/a.py", None)]),
    ("rename then edit", [C(0, "move", "/r/a.py", "/r/b.py"), C(0, "write", "/r/b.py")],
     [Touched("/r/b.py", "/r/a.py", None)]),
    ("rename chain", [C(0, "move", "/r/a", "/r/b"), C(0, "move", "/r/b", "/r/c")],
     [Touched("/r/b", None, None), Touched("/r/c", "/r/a", None)]),
    ("rename there and back", [C(0, "move", "/r/a", "/r/b"), C(0, "move", "/r/b", "/r/a")],
     [Touched("/r/a", None, True), Touched("/r/b", None, None)]),
    ("rename then recreate", [C(0, "move", "/r/a", "/r/b"), C(0, "create", "/r/a")],
     [Touched("/r/a", None, True), Touched("/r/b", "/r/a", None)]),
    ("delete", [C(0, "delete", F)], [Touched(F, None, True)]),
    ("junk only", [C(0, "create", "/r/.f.py.swp"), C(0, "write", "/r/4913")], []),
]


@pytest.mark.parametrize("name,changes,expected", CASES, ids=[c[0] for c in CASES])
def test_editor_sequences_are_one_save(name, changes, expected):
    due, waiting = coalesce(changes, now=1.0, window=0.3)
    assert waiting == []
    assert [(t.path, t.moved_from, t.existed) for t in due] == \
        [(t.path, t.moved_from, t.existed) for t in expected]


def test_debounce_holds_a_group_until_quiet():
    changes = [C(0.0, "write", F), C(0.25, "write", F), C(0.1, "write", "/r/g.py")]
    due, waiting = coalesce(changes, now=0.45, window=0.3)
    assert [t.path for t in due] == ["/r/g.py"]
    assert waiting == [changes[0], changes[1]]
    due, waiting = coalesce(waiting, now=0.56, window=0.3)
    assert [t.path for t in due] == [F] and waiting == []


def test_a_rename_ties_both_paths_to_one_window():
    changes = [C(0.0, "write", "/r/a"), C(0.2, "move", "/r/a", "/r/b")]
    due, waiting = coalesce(changes, now=0.35, window=0.3)
    assert due == [] and waiting == changes


def test_due_saves_come_out_in_the_order_they_settled():
    changes = [C(0.2, "write", "/r/late"), C(0.0, "write", "/r/early")]
    due, _ = coalesce(changes, now=1.0, window=0.3)
    assert [t.path for t in due] == ["/r/early", "/r/late"]


@pytest.mark.parametrize("name,junk", [
    ("f.py~", True), (".f.py.swp", True), (".f.py.swx", True), ("4913", True), ("5036", True),
    ("#f.py#", True), (".#f.py", True), ("f.py___jb_tmp___", True), ("f.py___jb_old___", True),
    ("sedX1y2Z3", True), (".goutputstream-ABC123", True), ("f.py", False), ("4914", False),
    ("sed.py", False), ("notes.md", False), ("1234", False), ("swap.py", False),
])
def test_editor_junk_names(name, junk):
    assert is_editor_junk("/r/" + name) is junk
