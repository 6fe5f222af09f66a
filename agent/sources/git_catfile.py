"""Read objects out of a git repository through one long-lived `git cat-file --batch` process.

Takes a work tree; gives `object(spec)` (the bytes of `HEAD:path`, a sha, any rev spec) and
`head_blob(path)`. Promise: at most one git process per `CatFile` however many lookups are made;
it starts on first use and restarts if it dies; `close()` ends it. Object names are resolved at
query time, so `HEAD:path` follows commits and checkouts. Not thread-safe: one owner thread.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


class CatFile:
    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0")
        return subprocess.Popen(
            ["git", "-C", str(self.repo), "cat-file", "--batch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, bufsize=0,
        )

    def object(self, spec: str) -> tuple[str, bytes] | None:
        """(type, content) of the object `spec` names, or None if there is none (or no git)."""
        if "\n" in spec:
            return None
        for attempt in (0, 1):
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                return self._ask(self._proc, spec)
            except (OSError, ValueError):
                self.close()
                if attempt:
                    return None
        return None

    @staticmethod
    def _ask(proc: subprocess.Popen, spec: str) -> tuple[str, bytes] | None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec.encode("utf-8", "surrogateescape") + b"\n")
        header = proc.stdout.readline()
        if not header:
            raise OSError("git cat-file ended")
        fields = header.split()
        if len(fields) != 3:  # "<spec> missing" / "ambiguous"
            return None
        kind, size = fields[1].decode(), int(fields[2])
        data = _read_exact(proc.stdout, size + 1)[:-1]  # content, then a newline
        return kind, data

    def head_blob(self, rel: str) -> bytes | None:
        """The file at `rel` in HEAD's tree, or None if HEAD does not have it."""
        found = self.object("HEAD:" + rel)
        if found is None or found[0] != "blob":
            return None
        return found[1]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=2)


def _read_exact(stream, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            raise OSError("git cat-file ended mid-object")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
