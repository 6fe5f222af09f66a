"""Shared pieces of the files and git source tests: a context that records what a source emits,
a redactor, real git repositories, and rebuilding a tree from captured saves. No tests here."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agent.paths import StatePaths
from agent.sources.base import SourceContext
from agent.sources.files import FilesSource
from agent.sources.files_diff import apply_unified_diff


@dataclasses.dataclass
class _Redacted:
    text: str


class SmallRedactor:
    """Used only where redaction.Redactor cannot be imported: masks `SECRET-...` tokens and forbids
    content of `.env` files."""

    def redact_text(self, text: str) -> _Redacted:
        return _Redacted(re.sub(r"SECRET-[A-Za-z0-9]+", "[REDACTED]", text))

    def content_allowed(self, path: str) -> bool:
        return not os.path.basename(str(path)).startswith(".env")

    def file_allowed(self, path: str, st=None, text=None) -> bool:
        return self.content_allowed(path)


def make_redactor() -> Any:
    """The real redactor with one admin rule for the tests' `SECRET-...` tokens."""
    try:
        from redaction import Redactor
    except ImportError:
        return SmallRedactor()
    return Redactor.from_policy(
        {"rules": [{"name": "test-secret", "pattern": "SECRET-[A-Za-z0-9]+", "action": "replace"}]},
        hmac_key=b"k" * 32)


class Recorder:
    def __init__(self, ignore: tuple[str, ...] = ()) -> None:
        self.ignore = ignore  # kinds not recorded
        self.events: list[tuple[str, dict, int | None]] = []
        self.cond = threading.Condition()
        self.capturing = True

    def emit(self, kind: str, data: dict, *, ts: int | None = None, session: str | None = None,
             source: str | None = None) -> None:
        with self.cond:
            if not self.capturing or kind in self.ignore:
                return
            self.events.append((kind, data, ts))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[list], bool], timeout: float = 10.0) -> list:
        with self.cond:
            ok = self.cond.wait_for(lambda: pred(self.events), timeout)
            assert ok, f"timed out; events so far: {self.events}"
            return list(self.events)

    def data(self, kind: str) -> list[dict]:
        with self.cond:
            return [d for k, d, _ in self.events if k == kind]


def make_context(tmp: Path, policy: dict, rec: Recorder, name: str,
                 redactor: Any = None) -> SourceContext:
    states: list[str] = []
    return SourceContext(
        name=name, policy=policy,
        paths=StatePaths.from_env({"TRACECAP_HOME": str(tmp / "state")}),
        emit=rec.emit, capturing=lambda: rec.capturing, log=logging.getLogger("test." + name),
        set_state=states.append, redactor=redactor if redactor is not None else make_redactor(),
    )


def files_source(tmp: Path, rec: Recorder, **capture: Any) -> FilesSource:
    """A files source watching `tmp/src`, debounced by 100 ms, recording into `rec`."""
    ctx = make_context(tmp, {"capture": {"roots": [str(tmp / "src")], "debounce_ms": 100,
                                         **capture}}, rec, "files")
    return FilesSource(ctx)


def settle(rec: Recorder, seconds: float = 0.6) -> None:
    """Wait until no new event arrived for `seconds` (bounded by 10 s)."""
    deadline = time.monotonic() + 10
    n = -1
    while time.monotonic() < deadline and n != len(rec.events):
        n = len(rec.events)
        time.sleep(seconds)


def replay(start_tree: dict[str, str], head: dict[str, str], events: list[dict]) -> dict[str, str]:
    """Rebuild the tree from `file.save` events, as a receiver of the trace would."""
    tree = dict(start_tree)
    for d in events:
        path, op = d["path"], d["op"]
        if op == "delete":
            tree.pop(path)
            continue
        old_path = d.get("from", path)
        base = {"previous": tree.get(old_path, ""), "head": head.get(old_path, ""),
                "empty": ""}[d["base"]]
        if op == "move":
            tree.pop(old_path)
        tree[path] = apply_unified_diff(base, d["diff"])
    return tree


def read_tree(repo: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, files in os.walk(repo):
        dirnames[:] = [n for n in dirnames if n != ".git"]
        for f in files:
            p = Path(dirpath) / f
            out[p.relative_to(repo).as_posix()] = p.read_bytes().decode("utf-8")
    return out


def git(repo: Path, *args: str, check: bool = True) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="T", GIT_COMMITTER_EMAIL="t@example.com",
               GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    return subprocess.run(["git", "-C", str(repo), *args], check=check, capture_output=True,
                          text=True, env=env, timeout=30).stdout


def init_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in (files or {}).items():
        f = path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    if files:
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "start")
    return path


class Running:
    """Runs a source's `run(stop)` in a thread for a `with` block; re-raises what it raised."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.source.run(self.stop)
        except BaseException as exc:  # surfaced in __exit__
            self.error = exc

    def __enter__(self) -> "Running":
        self.thread.start()
        return self

    def wait_ready(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.thread.is_alive(), f"source died: {self.error!r}"
            assert time.monotonic() < deadline, "source did not get ready"
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "source did not stop within 10 s"
        if self.error is not None and exc[0] is None:
            raise self.error
