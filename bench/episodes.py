"""Episode mining benchmark: events/s over a synthetic day of a fleet's export, against reading the
same export alone.

Run: python -m bench.episodes [--engineers 100] [--tasks 8]
Writes an export directory (manifest.json, <device>/<day>.jsonl, as `tracecap export` lays it out)
holding one working day per engineer: input activity every 10 s, window focus changes, shell
commands and the tools they start, saves across a repository, commits with their repo.state, and
`--tasks` test-driven tasks (note, failing run, edits, new test, passing run, commit) among them.
Then times, in the same process and on the same files: reading every event (`episodes.events`,
what any reader of the export does; and, for reference, with the standard library's json
module line by line), mining on one core (`episodes.mine.mine_sources`: reading
the kinds it needs, then mining), and mining with one process per CPU as `tracecap episodes mine`
does; prints the rates and their ratios to reading. Last, one engineer's day of 32 tasks with no
commit between them (every task rebuilt from the same repo.state), mined on one core. Target: a day of a 100-engineer fleet in
seconds.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from episodes.events import plan_devices, read_devices
from episodes.mine import mine_device, mine_sources

DAY0 = 1_796_000_000 * 10**9


def _diff(old: str, new: str, path: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a/" + path, "b/" + path))


class Day:
    def __init__(self, n: int, rnd: random.Random) -> None:
        self.rnd = rnd
        self.repo = f"/home/eng{n}/src/service"
        self.session = f"{1000 + n}-s{n}"
        self.seq = 0
        self.ts = DAY0 + n * 10**9
        self.lines: list[str] = []
        self.cmds = 0
        self.head = "%040x" % rnd.getrandbits(160)
        self.files = {f"src/mod{i}.py": "".join(f"def f{j}(x):\n    return x + {j}\n\n\n" for j in range(40))
                      for i in range(6)}
        self.files["tests/test_mod.py"] = "from src.mod0 import f1\n\n\ndef test_f1():\n    assert f1(1) == 2\n"

    def ev(self, kind: str, source: str, data: dict, session=None, dt: float = 1.0) -> None:
        self.seq += 1
        self.ts += int(dt * 10**9)
        self.lines.append(json.dumps({"v": 1, "seq": self.seq, "ts": self.ts, "kind": kind, "source": source,
                                      "session": session, "data": data}, separators=(",", ":")))

    def noise(self, seconds: int) -> None:
        for _ in range(seconds // 10):
            self.ev("input.activity", "input", {"start": self.ts, "end": self.ts + 10**10, "keys": self.rnd.randint(0, 90),
                                                "clicks": self.rnd.randint(0, 5), "scrolls": 0}, dt=10)
            r = self.rnd.random()
            if r < 0.1:
                self.ev("app.focus", "input", {"app": "code", "title": "service — mod.py"})
            elif r < 0.3:
                self.cmd(self.rnd.choice(["git status", "ls -la", "git diff", "rg TODO", "make lint"]))
            elif r < 0.4:
                self.save(f"src/mod{self.rnd.randint(1, 5)}.py")

    def cmd(self, cmd: str, tests: list | None = None, exit: int = 0) -> None:
        self.cmds += 1
        cid = f"{self.session}:{self.cmds}"
        self.ev("shell.start", "shell", {"id": cid, "cmd": cmd, "cwd": self.repo, "shell": "bash", "actor": "human"},
                session=self.session)
        self.ev("tool.invocation", "tools", {"exe": "/usr/bin/" + cmd.split()[0], "argv": cmd.split(), "cwd": self.repo,
                                             "pid": 5000 + self.cmds, "ppid": 1000, "duration_ms": 300, "actor": "human"},
                session=self.session)
        self.ev("shell.end", "shell", {"id": cid, "exit": exit, "duration_ms": 800}, session=self.session, dt=2)
        if tests is not None:
            self.ev("test.run", "tests", {
                "runner": "pytest", "cmd": cmd, "exit": exit, "duration_ms": 800,
                "passed": sum(o == "passed" for _, o in tests), "failed": sum(o == "failed" for _, o in tests),
                "skipped": 0, "failures": [{"name": n, "message": "assert 1 == 2"} for n, o in tests if o == "failed"],
                "tests": [{"name": n, "outcome": o} for n, o in tests]}, session=self.session, dt=0.01)

    def save(self, path: str, new: str | None = None) -> None:
        old = self.files.get(path, "")
        if new is None:
            lines = old.splitlines(True)
            k = self.rnd.randrange(len(lines)) if lines else 0
            lines[k:k + 1] = [f"    # note {self.rnd.randint(0, 10**6)}\n"]
            new = "".join(lines)
        self.files[path] = new
        self.ev("file.save", "files", {"repo": self.repo, "path": path, "op": "modify" if old else "create",
                                       "size": len(new), "diff": _diff(old, new, path),
                                       "base": "previous" if old else "empty"}, dt=4)

    def commit(self, message: str) -> None:
        sha = "%040x" % self.rnd.getrandbits(160)
        self.ev("git.commit", "git", {"repo": self.repo, "sha": sha, "branch": "main", "parent": self.head,
                                      "message": message})
        self.head = sha
        self.ev("repo.state", "git", {"repo": self.repo, "remote": "git@github.com:acme/service.git",
                                      "head": sha, "branch": "main", "diff": ""})

    def task(self, k: int, commit: bool = True) -> None:
        name = f"tests/test_mod.py::test_task{k}"
        self.ev("user.note", "user", {"text": f"task {k}: f{k} is off by one"})
        self.cmd("python -m pytest -q", [(name, "failed"), ("tests/test_mod.py::test_f1", "passed")], exit=1)
        self.noise(120)
        self.save("src/mod0.py")
        self.save("tests/test_mod.py", self.files["tests/test_mod.py"] + f"\n\ndef test_task{k}():\n    assert f1(1) == 2\n")
        self.noise(60)
        self.cmd("python -m pytest -q", [(name, "passed"), ("tests/test_mod.py::test_f1", "passed")])
        if commit:
            self.cmd(f"git commit -qam 'task {k}'")
            self.commit(f"task {k}")


def uncommitted_day(tasks: int, seed: int = 7) -> list[dict]:
    """One engineer's day of `tasks` tasks and no commit: every task follows the morning's
    repo.state, so rebuilding each one from it alone would apply the day's saves once per task."""
    day = Day(0, random.Random(seed))
    day.ev("repo.state", "git", {"repo": day.repo, "remote": "git@github.com:acme/service.git", "head": day.head,
                                 "branch": "main", "diff": ""})
    for k in range(tasks):
        day.noise(8 * 3600 // tasks - 240)
        day.task(k, commit=False)
    return [json.loads(line) for line in day.lines]


def write_export(out: Path, engineers: int, tasks: int, seed: int = 7) -> int:
    rnd = random.Random(seed)
    total = 0
    per_device = []
    for n in range(engineers):
        day = Day(n, rnd)
        day.ev("agent.start", "agent", {"version": "0.1.0"})
        day.ev("repo.state", "git", {"repo": day.repo, "remote": "git@github.com:acme/service.git", "head": day.head,
                                     "branch": "main", "diff": ""})
        for k in range(tasks):
            day.noise(8 * 3600 // tasks - 240)
            day.task(k)
        device = f"dev-{n:03d}"
        (out / device).mkdir(parents=True)
        (out / device / "2026-12-01.jsonl").write_text("\n".join(day.lines) + "\n")
        per_device.append({"device_id": device, "directory": device, "events": len(day.lines)})
        total += len(day.lines)
    (out / "manifest.json").write_text(json.dumps({"per_device": per_device, "events": total}))
    return total


def _read_json(path: Path) -> int:
    """Every event of a JSON-lines file parsed by the standard library's json: the reference
    for what reading an export costs without a faster parser."""
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                json.loads(line)
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engineers", type=int, default=100)
    ap.add_argument("--tasks", type=int, default=8, help="tasks per engineer and day")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tracecap-bench-episodes-") as tmp:
        out = Path(tmp) / "export"
        total = write_export(out, args.engineers, args.tasks)
        size = sum(p.stat().st_size for p in out.rglob("*.jsonl"))
        t0, c0 = time.perf_counter(), time.process_time()
        read = sum(len(evs) for _, evs in read_devices([str(out)]))
        t_read, c_read = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        read_json = sum(_read_json(f) for f in sorted(out.rglob("*.jsonl")))
        t_json, c_json = time.perf_counter() - t0, time.process_time() - c0
        plan = plan_devices([str(out)])
        t0, c0 = time.perf_counter(), time.process_time()
        results = [mine_sources(device, sources) for device, sources in plan]
        t_mine, c_mine = time.perf_counter() - t0, time.process_time() - c0
        jobs = os.cpu_count() or 1
        t0 = time.perf_counter()
        with ProcessPoolExecutor(jobs) as pool:
            parallel = list(pool.map(mine_sources, [d for d, _ in plan], [s for _, s in plan]))
        t_par = time.perf_counter() - t0
    assert read == read_json == total == sum(n for _, n in results)
    kept = sum(len(r.instances) for r, _ in results)
    skipped = sum(len(r.skipped) for r, _ in results)
    assert [r.instances for r, _ in parallel] == [r.instances for r, _ in results]
    print(f"export: {args.engineers} engineers, {total:,} events, {size / 2**20:.1f} MiB of JSON lines")
    # CPU seconds beside wall seconds: on a shared machine the wall clock also counts waiting.
    print(f"read alone: {t_read:.2f} s (CPU {c_read:.2f} s), {total / t_read:,.0f} events/s")
    print(f"read alone with the standard library's json, line by line: {t_json:.2f} s (CPU {c_json:.2f} s), "
          f"{total / t_json:,.0f} events/s")
    print(f"mine, one core: {t_mine:.2f} s (CPU {c_mine:.2f} s), {total / t_mine:,.0f} events/s "
          f"({t_mine / t_read:.2f}x the time of reading alone, CPU {c_mine / c_read:.2f}x), "
          f"{kept} tasks kept, {skipped} skipped")
    print(f"mine, {jobs} processes: {t_par:.2f} s, {total / t_par:,.0f} events/s "
          f"({t_par / t_read:.2f}x the time of reading alone)")
    evs = uncommitted_day(32)
    t0 = time.perf_counter()
    kept_u = len(mine_device("dev-000", evs).instances)
    t_u = time.perf_counter() - t0
    print(f"one engineer, 32 tasks and no commit ({len(evs):,} events): {t_u:.2f} s, {kept_u} tasks kept")
    print(f"against reading with the standard library's json: one core {t_mine / t_json:.2f}x "
          f"(CPU {c_mine / c_json:.2f}x), {jobs} processes {t_par / t_json:.2f}x")


if __name__ == "__main__":
    main()
