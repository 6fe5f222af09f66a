"""Benchmark of `repo.state`: what one state costs, against `git status` on the same repository.

The git source computes a state when a repository is first seen and after each HEAD move: origin,
HEAD, a bounded `git diff HEAD` of tracked files, and one pass of the redactor over that diff. The
baseline, measured in the same run, is one `git status --porcelain`, which many shell prompts run
after every command. Repository: `--files` text files of 40 lines, `--changed` of them modified and
not committed.

Usage: python -m bench.repo_state [--files N] [--changed N] [--rounds N]. Prints a markdown row.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agent.sources.git_state import read_repo_state
from redaction import Redactor

GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@example.com", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                   capture_output=True, timeout=120)


def make_repo(root: Path, files: int, changed: int) -> Path:
    repo = root / "repo"
    for i in range(files):
        f = repo / f"pkg{i % 20}" / f"mod{i}.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(f"value_{i}_{n} = {n} * {i}\n" for n in range(40)))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    git(repo, "remote", "add", "origin", "https://example.com/acme/app.git")
    for i in range(changed):
        with open(repo / f"pkg{i % 20}" / f"mod{i}.py", "a") as fh:
            fh.write(f"added_{i} = True\n")
    return repo


def median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--changed", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    redactor = Redactor.from_policy({}, hmac_key=b"bench-key-0123456789abcdef012345")
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), args.files, args.changed)
        data, _ = read_repo_state(repo, "main", redactor, 1 << 20, 1)  # warm the index and caches
        assert data.get("diff", "").count("diff --git ") == args.changed, data.get("diff_omitted")
        status = median_ms(lambda: subprocess.run(["git", "status", "--porcelain"], cwd=repo,
                                                  capture_output=True, check=True), args.rounds)
        state = median_ms(lambda: read_repo_state(repo, "main", redactor, 1 << 20, 1), args.rounds)
    print(f"| one repo.state, {args.files:,} files, {args.changed} changed | {state:.1f} ms "
          f"(median of {args.rounds}) | {state / status:.2f}x one `git status` ({status:.1f} ms) |")


if __name__ == "__main__":
    main()
