"""Hand-written event streams for the episodes tests, built to the capture side's event fields
(repo.state, file.save with its diff chain, test.run with per-test outcomes): a `Trace` appends
events with increasing seq and ts the way the daemon orders them."""
from __future__ import annotations

import difflib

T0 = 1_795_000_000 * 10**9


def unified(old: str, new: str, path: str) -> str:
    if old == new:
        return ""
    a = old.splitlines(keepends=True)
    b = new.splitlines(keepends=True)
    out = []
    for line in difflib.unified_diff(a, b, "/dev/null" if not old else "a/" + path, "b/" + path, n=3):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


class Trace:
    def __init__(self, repo: str = "/home/ana/src/app", session: str = "4242-abcd") -> None:
        self.repo = repo
        self.session = session
        self.seq = 0
        self.ts = T0
        self.events: list[dict] = []
        self.files: dict[str, str] = {}
        self.n = 0

    def ev(self, kind: str, source: str, data: dict, session=None, dt: float = 1.0) -> dict:
        self.seq += 1
        self.ts += int(dt * 10**9)
        e = {"v": 1, "seq": self.seq, "ts": self.ts, "kind": kind, "source": source, "session": session,
             "data": data}
        self.events.append(e)
        return e

    def state(self, head: str, diff: str = "", remote="git@github.com:acme/app.git", branch="main", **kw):
        data = {"repo": self.repo, "remote": remote, "head": head, "branch": branch}
        if diff is None:
            data["diff_omitted"] = kw.get("omitted", "too_large")
        else:
            data["diff"] = diff
        return self.ev("repo.state", "git", data)

    def note(self, text: str):
        return self.ev("user.note", "user", {"text": text})

    def cmd(self, cmd: str, exit: int = 0, tests: list | None = None, failures: list | None = None,
            actor: str = "human", cwd: str | None = None, runner: str | None = "pytest", dt: float = 2.0):
        self.n += 1
        cid = f"{self.session}:{self.n}"
        self.ev("shell.start", "shell", {"id": cid, "cmd": cmd, "cwd": cwd or self.repo, "shell": "bash",
                                         "actor": actor}, session=self.session)
        self.ev("shell.end", "shell", {"id": cid, "exit": exit, "duration_ms": 900}, session=self.session, dt=dt)
        if tests is not None:
            outcomes = [{"name": n, "outcome": o} for n, o in tests]
            fails = failures if failures is not None else [
                {"name": n, "message": "AssertionError: assert 0 == 4"} for n, o in tests if o in ("failed", "error")]
            self.ev("test.run", "tests", {"runner": runner, "cmd": cmd, "exit": exit, "duration_ms": 900,
                                          "passed": sum(o == "passed" for _, o in tests),
                                          "failed": sum(o in ("failed", "error") for _, o in tests),
                                          "skipped": sum(o == "skipped" for _, o in tests),
                                          "failures": fails, "tests": outcomes},
                    session=self.session, dt=0.01)

    def save(self, path: str, new: str, base: str | None = None, op: str | None = None, dt: float = 5.0, **extra):
        old = self.files.get(path)
        if base is None:
            base = "previous" if old is not None else "empty"
        if op is None:
            op = "modify" if old is not None else "create"
        data = {"repo": self.repo, "path": path, "op": op, "size": len(new.encode())}
        if new is not None and "no_diff" not in extra:
            data["diff"] = unified(old or "" if base != "empty" else "", new, path)
            data["base"] = base
        extra.pop("no_diff", None)
        data.update(extra)
        self.files[path] = new
        return self.ev("file.save", "files", data, dt=dt)

    def commit(self, sha: str, message: str, parent: str):
        self.ev("git.commit", "git", {"repo": self.repo, "sha": sha, "branch": "main", "parent": parent,
                                      "message": message})
        return self.state(sha, "")
