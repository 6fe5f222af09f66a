"""Rebuild a repository's working tree from captured events, as a data team would: a fresh clone
at the last `repo.state`'s head, `git apply` of its diff, then every later `file.save` diff of that
repo in `seq` order. Used by the tests to check the chain promise; no tests here."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent.sources.files_diff import apply_unified_diff


class ChainBroken(AssertionError):
    pass


def _git(cwd: Path, *args: str, input: str | None = None) -> str:
    env = dict(os.environ, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    # Bytes, not text mode: text mode would turn CRLF into LF.
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True,
                       input=input.encode("utf-8") if input is not None else None, timeout=60)
    if r.returncode != 0:
        raise ChainBroken(f"git {' '.join(args)}: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout.decode("utf-8")


def last_state(events: list[dict], repo: str) -> tuple[dict, list[dict]]:
    """The last repo.state of `repo` and the saves of `repo` after it, in seq order."""
    events = sorted(events, key=lambda e: e["seq"])
    states = [i for i, e in enumerate(events) if e["kind"] == "repo.state" and e["data"]["repo"] == repo]
    if not states:
        raise ChainBroken(f"no repo.state for {repo}")
    i = states[-1]
    saves = [e for e in events[i + 1:] if e["kind"] == "file.save" and e["data"]["repo"] == repo]
    return events[i], saves


def replay(origin: Path, events: list[dict], repo: str, into: Path) -> Path:
    """The tree the events describe for `repo`, rebuilt in `into` from a clone of `origin`."""
    state, saves = last_state(events, repo)
    data = state["data"]
    if "diff" not in data:
        raise ChainBroken(f"repo.state seq {state['seq']} left its diff out: {data.get('diff_omitted')}")
    _git(into.parent, "clone", "-q", "--no-checkout", str(origin), into.name)
    _git(into, "checkout", "-q", "--detach", data["head"])
    if data["diff"]:
        _git(into, "apply", "--whitespace=nowarn", "-", input=data["diff"])
    for e in saves:
        d = e["data"]
        if d.get("chain_break"):
            raise ChainBroken(f"save seq {e['seq']} of {d['path']} breaks the chain: {d['chain_break']}")
        target = into / d["path"]
        if d["op"] == "delete":
            target.unlink(missing_ok=True)
            continue
        src = into / d.get("from", d["path"])
        if d["base"] == "previous":
            if not src.exists():
                raise ChainBroken(f"save seq {e['seq']}: no previous version of {src.name}")
            base = src.read_bytes().decode("utf-8")
        elif d["base"] == "head":
            base = _git(into, "show", f"{data['head']}:{d.get('from', d['path'])}")
        else:
            base = ""
        text = apply_unified_diff(base, d["diff"])
        if d["op"] == "move" and src.exists():
            src.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8"))
    return into


def tree(root: Path, skip: tuple[str, ...] = (".git", "__pycache__", ".pytest_cache")) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [n for n in dirnames if n not in skip]
        for f in files:
            p = Path(dirpath) / f
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out
