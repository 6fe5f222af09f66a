"""The files source end to end: real repos, real vim and sed, real editors' save dances, on both
watch backends (inotify, and watchdog as macOS and Windows use it)."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.sources.files import BACKEND_ENV
from agent.sources.files_diff import apply_unified_diff
from tests.test_files_helpers import (Recorder, Running, files_source, init_repo, read_tree, replay,
                                      settle)

pytestmark = [
    pytest.mark.timeout(60),
    # watchdog's recursive inotify watch warns when a directory fills while it is being added
    # (`git init`); it keeps the watch, and what the tests assert is what the user gets.
    pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning"),
]


@pytest.fixture(autouse=True, params=["inotify", "watchdog"])
def backend(request, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, request.param)
    return request.param


def vim(path: Path, *cmds: str) -> None:
    args = ["vim", "-u", "NONE", "-i", "NONE", "-n", "-e", "-s"]
    for c in cmds:
        args += ["-c", c]
    subprocess.run(args + ["-c", "wq", str(path)], timeout=20, check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)


def jetbrains_safe_write(path: Path, text: str) -> None:
    """IntelliJ's "safe write": the text goes to a temp file that then takes the original's place."""
    tmp = path.with_name(path.name + "___jb_tmp___")
    old = path.with_name(path.name + "___jb_old___")
    tmp.write_text(text)
    path.rename(old)
    tmp.rename(path)
    old.unlink()


def emacs_first_save(path: Path, text: str) -> None:
    """Emacs' first save of a visit: a lock symlink, the original renamed to its backup `f~`, the
    text written to a new `f`, the lock removed."""
    lock = path.with_name(".#" + path.name)
    os.symlink("user@host.1234:1700000000", lock)
    path.rename(path.with_name(path.name + "~"))
    path.write_text(text)
    lock.unlink()


EDITORS = {
    "vim": lambda p: vim(p, "%s/one/two/"),
    "sed -i": lambda p: subprocess.run(["sed", "-i", "s/one/two/", str(p)], check=True, timeout=10),
    "jetbrains": lambda p: jetbrains_safe_write(p, "two\n"),
    "emacs": lambda p: emacs_first_save(p, "two\n"),
    "direct write": lambda p: p.write_text("two\n"),
}


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_an_editor_save_is_one_modify_with_its_diff(tmp_path, editor):
    repo = init_repo(tmp_path / "src" / "r", {"f.py": "one\n"})
    rec = Recorder()
    src = files_source(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 1)
        EDITORS[editor](repo / "f.py")
        rec.wait_for(lambda ev: len(ev) >= 1)
        settle(rec, 0.4)
    events = rec.data("file.save")
    assert [(d["path"], d["op"], d["base"]) for d in events] == [("f.py", "modify", "head")]
    assert apply_unified_diff("one\n", events[0]["diff"]) == "two\n"


def test_replaying_captured_diffs_rebuilds_the_final_tree(tmp_path):
    head = {"app.py": "def f():\n    return 1\n", "README.md": "# demo\n", "old.txt": "bye\n",
            ".gitignore": "*.log\n"}
    repo = init_repo(tmp_path / "src" / "demo", head)
    rec = Recorder()
    src = files_source(tmp_path, rec)
    def saved(path: str, n: int = 1):  # the source reports `n` saves of `path`
        return lambda ev: sum(1 for k, d, _ in ev if k == "file.save" and d["path"] == path) >= n

    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 1)
        # Each step that must be a save of its own waits until the one before it was reported:
        # the source groups what it reads within one debounce window, and a loaded machine can
        # let it read two steps at once however long a fixed pause between them.
        vim(repo / "app.py", "%s/return 1/return 2/")           # vim's write-then-rename
        (repo / "new.py").write_text("import app\n")             # create
        (repo / "debug.log").write_text("ignored\n")             # gitignored
        rec.wait_for(saved("new.py"))
        vim(repo / "new.py", "normal Goprint(app.f())")
        subprocess.run(["sed", "-i", "s/demo/Demo project/", str(repo / "README.md")],
                       check=True, timeout=10)                   # sed -i temp + rename
        (repo / "old.txt").unlink()                              # delete
        (repo / "pkg").mkdir()
        rec.wait_for(saved("new.py", 2))
        (repo / "new.py").rename(repo / "pkg" / "main.py")      # move
        rec.wait_for(saved("pkg/main.py"))
        with open(repo / "pkg" / "main.py", "a") as f:         # direct write, no final newline
            f.write("# end")
        (repo / "unicode.txt").write_text("naïve café ✓\r\nline two")
        settle(rec)
    events = rec.data("file.save")
    assert all(d["repo"] == str(repo) for d in events)
    assert "debug.log" not in {d["path"] for d in events}
    assert {d["op"] for d in events} == {"create", "modify", "delete", "move"}
    saves_of_app = [d for d in events if d["path"] == "app.py"]
    assert len(saves_of_app) == 1 and saves_of_app[0]["op"] == "modify"
    assert saves_of_app[0]["base"] == "head"
    final = read_tree(repo)
    final.pop("debug.log")
    start_tree = dict(head)
    assert replay(start_tree, head, events) == final


def test_writes_in_ignored_trees_make_no_events_and_no_watches(tmp_path):
    repo = init_repo(tmp_path / "src" / "r", {"a.py": "1\n", ".gitignore": "gen/\n"})
    rec = Recorder()
    src = files_source(tmp_path, rec, exclude=["**/*.secret"])
    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 1)
        for d in ["node_modules/pkg", "gen/x", ".venv/lib", "build", "__pycache__"]:
            (repo / d).mkdir(parents=True)
            for i in range(20):
                (repo / d / f"f{i}.js").write_text("x")
        (repo / "k.secret").write_text("s")
        (repo / "a.py").write_text("2\n")
        rec.wait_for(lambda ev: any(d["path"] == "a.py" for _, d, _ in ev))
        settle(rec, 0.4)
        watched = set(src.roles)
    assert [d["path"] for d in rec.data("file.save")] == ["a.py"]
    assert not any("node_modules" in w or "/gen" in w or ".venv" in w or "/build" in w
                   for w in watched)


def test_metadata_only_for_binary_oversize_and_forbidden_files(tmp_path):
    repo = init_repo(tmp_path / "src" / "r", {"a.py": "1\n"})
    rec = Recorder()
    src = files_source(tmp_path, rec, max_file_bytes=100)
    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 1)
        (repo / "img.bin").write_bytes(b"\x89PNG\0\0data")
        (repo / "big.txt").write_text("x" * 101)
        (repo / ".env").write_text("TOKEN=SECRET-abc\n")
        (repo / "s.py").write_text("key = 'SECRET-abc123'\n")
        rec.wait_for(lambda ev: len(ev) == 4)
        settle(rec, 0.3)
    by_path = {d["path"]: d for d in rec.data("file.save")}
    assert set(by_path) == {"img.bin", "big.txt", ".env", "s.py"}
    for p in ("img.bin", "big.txt", ".env"):
        assert "diff" not in by_path[p] and by_path[p]["op"] == "create"
    assert by_path["big.txt"]["size"] == 101
    assert "SECRET-abc123" not in by_path["s.py"]["diff"] and "[REDACTED" in by_path["s.py"]["diff"]
    assert all("SECRET" not in v for v in src.cache._items.values() for v in [v[0]])


def test_paused_changes_are_dropped_and_the_next_diff_is_against_head(tmp_path):
    repo = init_repo(tmp_path / "src" / "r", {"a.py": "v1\n"})
    rec = Recorder()
    src = files_source(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 1)
        (repo / "a.py").write_text("v2\n")
        rec.wait_for(lambda ev: len(ev) == 1)
        rec.capturing = False
        (repo / "a.py").write_text("v3 private\n")
        # Capture comes back only once the source has handled the private save while it was off
        # (it drops the file's cached version), however late a loaded machine lets it get to it.
        r.wait_ready(lambda: not any(rel == "a.py" for _root, rel in src.cache.keys()))
        rec.capturing = True
        (repo / "a.py").write_text("v4\n")
        rec.wait_for(lambda ev: len(ev) == 2)
    first, second = rec.data("file.save")
    assert first["base"] == "previous" or first["base"] == "head"
    assert second["base"] == "head" and "private" not in second["diff"]
    assert apply_unified_diff("v1\n", second["diff"]) == "v4\n"


class _DropsWhatHappenedWhileOff(Recorder):
    """As the daemon's emit: an event whose time falls in a period capture was off is dropped,
    and emit says so (False), even when capture is back on by the time the source emits it."""

    def __init__(self) -> None:
        super().__init__()
        self.off: list[list] = []  # [start_ns, end_ns or None]
        self.dropped: list[dict] = []

    def pause(self) -> None:
        self.capturing = False
        self.off.append([time.time_ns(), None])

    def resume(self) -> None:
        self.off[-1][1] = time.time_ns()
        self.capturing = True

    def emit(self, kind, data, *, ts=None, session=None, source=None):
        if not self.capturing or (ts is not None and any(
                start <= ts and (end is None or ts < end) for start, end in self.off)):
            with self.cond:
                self.dropped.append(data)
                self.cond.notify_all()
            return False
        super().emit(kind, data, ts=ts, session=session, source=source)
        return True


def test_a_save_made_while_off_and_read_after_resuming_is_no_base_for_the_next(tmp_path):
    """A save made just before capture comes back is read by the source after it (its debounce
    window, or a loaded machine): its event is dropped, as it happened while capture was off, so
    the next save must diff against HEAD, not against a version no receiver has."""
    repo = init_repo(tmp_path / "src" / "r", {"a.py": "v1\n"})
    rec = _DropsWhatHappenedWhileOff()
    src = files_source(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 1)
        (repo / "a.py").write_text("v2\n")
        rec.wait_for(lambda ev: len(ev) == 1)
        rec.pause()
        time.sleep(0.05)  # the file's mtime (a coarse clock) falls inside the off period
        (repo / "a.py").write_text("v3 private\n")
        rec.resume()  # well within the source's 100 ms debounce: it reads the save only now
        deadline = time.monotonic() + 10
        while not rec.dropped and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rec.dropped and "private" in rec.dropped[0]["diff"], rec.dropped
        (repo / "a.py").write_text("v4\n")
        rec.wait_for(lambda ev: len(ev) == 2)
    first, second = rec.data("file.save")
    assert apply_unified_diff("v1\n", first["diff"]) == "v2\n"
    assert second["base"] == "head" and "private" not in second["diff"], second
    assert apply_unified_diff("v1\n", second["diff"]) == "v4\n"


def test_repos_created_later_and_nested_ones_are_watched(tmp_path):
    (tmp_path / "src").mkdir()
    rec = Recorder()
    src = files_source(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: src._watcher is not None and len(src.roles) >= 1)
        later = init_repo(tmp_path / "src" / "team" / "later")
        r.wait_ready(lambda: later in src.repos)
        (later / "x.py").write_text("x\n")
        inner = init_repo(later / "vendored")
        r.wait_ready(lambda: inner in src.repos)
        (inner / "y.py").write_text("y\n")
        rec.wait_for(lambda ev: len(ev) == 2)
        settle(rec, 0.3)
    got = {(d["repo"], d["path"]) for d in rec.data("file.save")}
    assert got == {(str(later), "x.py"), (str(inner), "y.py")}


def test_directory_rename_moves_each_file(tmp_path):
    repo = init_repo(tmp_path / "src" / "r", {"pkg/a.py": "a\n", "pkg/sub/b.py": "b\n"})
    rec = Recorder()
    src = files_source(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 1)
        (repo / "pkg").rename(repo / "lib")
        rec.wait_for(lambda ev: len(ev) == 2)
        (repo / "lib" / "sub" / "b.py").write_text("b2\n")  # the moved watch still works
        rec.wait_for(lambda ev: len(ev) == 3)
    moves = sorted((d["from"], d["path"]) for d in rec.data("file.save") if d["op"] == "move")
    assert moves == [("pkg/a.py", "lib/a.py"), ("pkg/sub/b.py", "lib/sub/b.py")]
    assert rec.data("file.save")[-1]["path"] == "lib/sub/b.py"
