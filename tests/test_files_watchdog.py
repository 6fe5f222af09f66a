"""The watchdog watcher on its own, and how the files source picks a watcher."""
import selectors
import time

import pytest

from agent.sources.files import BACKEND_ENV
from agent.sources.files_inotify import FsEvent, InotifyWatcher, available
from agent.sources.files_watchdog import WatchdogWatcher
from tests.test_files_helpers import Recorder, files_source, init_repo

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")]


@pytest.fixture
def watcher():
    w = WatchdogWatcher()
    yield w
    w.close()


def events_until(w: WatchdogWatcher, done, timeout: float = 5.0) -> list[FsEvent]:
    """Wait on the watcher's descriptor, as the files source does, until `done(events)`."""
    out: list[FsEvent] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(w.fileno(), selectors.EVENT_READ)
        while not done(out) and time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                out.extend(w.read())
    return out


def quiet(w: WatchdogWatcher, seconds: float = 0.5) -> list[FsEvent]:
    return events_until(w, lambda _: False, seconds)


def test_only_entries_of_added_directories_are_reported(tmp_path, watcher):
    repo = init_repo(tmp_path / "r", {"a.py": "a\n", "src/b.py": "b\n"})
    assert watcher.add(str(repo)) and watcher.add(str(repo / "src"))
    assert not watcher.add(str(repo / "a.py")) and not watcher.add(str(tmp_path / "missing"))
    (repo / "node_modules" / "pkg").mkdir(parents=True)
    for i in range(50):
        (repo / "node_modules" / "pkg" / f"{i}.js").write_text("x")
    (repo / "src" / "b.py").write_text("b2\n")
    got = events_until(watcher, lambda ev: any(e.kind == "write" for e in ev))
    got += quiet(watcher)
    assert set(got) == {FsEvent("create", str(repo / "node_modules"), True),
                        FsEvent("write", str(repo / "src" / "b.py"))}
    assert len(watcher) == 2


def test_a_renamed_directory_keeps_reporting_under_its_new_name(tmp_path, watcher):
    repo = init_repo(tmp_path / "r", {"pkg/sub/a.py": "a\n"})
    for d in ("", "pkg", "pkg/sub"):
        watcher.add(str(repo / d) if d else str(repo))
    (repo / "pkg").rename(repo / "lib")
    moved = events_until(watcher, lambda ev: any(e.kind == "move" for e in ev))
    assert FsEvent("move", str(repo / "pkg"), True, str(repo / "lib")) in moved
    (repo / "lib" / "sub" / "a.py").write_text("a2\n")
    got = events_until(watcher, lambda ev: any(e.kind == "write" for e in ev))
    assert FsEvent("write", str(repo / "lib" / "sub" / "a.py")) in got


def test_a_deleted_directory_is_a_delete_in_its_parent_and_gone(tmp_path, watcher):
    repo = init_repo(tmp_path / "r", {"a.py": "a\n"})
    (repo / "d").mkdir()
    watcher.add(str(repo))
    watcher.add(str(repo / "d"))
    (repo / "d").rmdir()
    got = events_until(watcher, lambda ev: any(e.kind == "gone" for e in ev))
    assert got[-2:] == [FsEvent("delete", str(repo / "d"), True), FsEvent("gone", str(repo / "d"), True)]
    assert len(watcher) == 1


def test_a_directory_above_repositories_is_watched_on_its_own(tmp_path, watcher):
    """Outside work trees each directory gets its own non-recursive watch; once it holds `.git`,
    adding it again makes it one recursive watch."""
    root = tmp_path / "src"
    (root / "team" / "deep").mkdir(parents=True)
    watcher.add(str(root))
    (root / "team" / "deep" / "x.txt").write_text("x")
    assert quiet(watcher) == []
    init_repo(root / "team")
    watcher.add(str(root / "team"))
    watcher.add(str(root / "team" / "deep"))
    (root / "team" / "deep" / "x.txt").write_text("x2")
    got = events_until(watcher, lambda ev: any(e.kind == "write" for e in ev))
    assert FsEvent("write", str(root / "team" / "deep" / "x.txt")) in got


def test_the_environment_picks_the_backend(tmp_path, monkeypatch):
    src = files_source(tmp_path, Recorder())
    default = InotifyWatcher if available() else WatchdogWatcher
    expected = {"watchdog": WatchdogWatcher, "": default, "kqueue": default}  # unknown: ignored
    if available():
        expected["inotify"] = InotifyWatcher
    chosen = {}
    for value in expected:
        monkeypatch.setenv(BACKEND_ENV, value)
        w = src._open_watcher()
        chosen[value] = type(w)
        w.close()
    assert chosen == expected
