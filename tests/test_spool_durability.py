"""Crashes against the shell spool and the journal, with real processes: a real bash with the hook
in tmux, the real daemon killed with SIGKILL at random moments, `tracecap note` from the CLI.

The promise under test: a command that reached the spool and a note whose `tracecap note` exited 0
are in the journal exactly once, whatever moment the daemon died at, and `seq` strictly increases.
"""
from __future__ import annotations

import collections
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.daemon_harness import TRACECAP, DaemonProcess
from tests.test_shell_hooks import PROMPT, Tmux, records

SHELL_ONLY = '[capture]\nsources = ["shell"]\n'


def policy(tmp_path: Path, body: str = SHELL_ONLY) -> Path:
    p = tmp_path / "policy.toml"
    p.write_text(body)
    os.chmod(p, 0o644)
    return p


def burst(sh: Tmux, names: list[str]) -> None:
    """Type the commands into the shell in one tmux call (each a line of its own)."""
    keys: list[str] = []
    for name in names:
        keys += [f"true {name}", "Enter"]
    sh.keys(*keys)


def wait_until(cond, timeout: float) -> None:
    """Poll `cond`, bounded; the assertions after it say what is missing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        time.sleep(0.2)


def spooled_commands(spool: Path) -> set[str]:
    """The commands still readable in the spool (those not erased yet)."""
    from agent.sources.shell import Start

    return {r.cmd for r in records(spool) if isinstance(r, Start)}


@pytest.fixture
def storm_daemon(tmp_path, daemon_factory):
    d = daemon_factory(policy=policy(tmp_path))
    d.start()
    d.cli("opt-in")
    yield d


def test_kill9_right_after_commands_loses_none_of_them(tmp_path, storm_daemon):
    """Commands read from the spool but not yet fsynced when the daemon dies are read again at the
    next start, not erased: every one of them is journaled, once."""
    d = storm_daemon
    sh = Tmux(tmp_path, "bash", d.home / "run" / "shell")
    try:
        names = [f"quick-{i}" for i in range(40)]
        burst(sh, names)
        sh.wait_for(lambda: (lambda s: f"true {names[-1]}" in s and s.rstrip().endswith(PROMPT))(
            sh.screen()), timeout=30)
        # The daemon reads the spool at once (inotify) and the journal holds events back for its
        # 250 ms reorder window: a kill now finds them read and not yet on disk.
        time.sleep(0.05)
        d.kill9()
        d.start()
        wait_until(lambda: len(d.events("--kind", "shell.end")) >= len(names), 30)
        time.sleep(1.0)
        evs = d.events("--kind", "shell.")
        cmds = collections.Counter(e["data"]["cmd"] for e in evs if e["kind"] == "shell.start")
        assert all(cmds[f"true {n}"] == 1 for n in names), cmds
        ends = collections.Counter(e["data"]["id"] for e in evs if e["kind"] == "shell.end")
        assert len(ends) == len(names) and set(ends.values()) == {1}
    finally:
        sh.close()


def test_kill9_storm_loses_and_doubles_nothing(tmp_path, storm_daemon):
    """Bursts of shell commands and concurrent notes; the daemon is killed with SIGKILL 8 times at
    random moments and restarted each time. Afterwards every command typed and every acknowledged
    note is in the journal exactly once, every shell.start has one shell.end, and seq strictly
    increases."""
    d = storm_daemon
    rng = random.Random(int(os.environ.get("TRACECAP_STORM_SEED", "19")))
    spool = d.home / "run" / "shell"
    sh = Tmux(tmp_path, "bash", spool)
    acked: list[str] = []
    typed: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def noter() -> None:
        i = 0
        while not stop.is_set():
            text = f"note-{i}"
            r = subprocess.run([TRACECAP, "note", text], env=d.env, capture_output=True, text=True,
                               timeout=60)
            if r.returncode == 0:
                with lock:
                    acked.append(text)
            else:
                time.sleep(0.05)
            i += 1

    def typist() -> None:
        b = 0
        while not stop.is_set():
            names = [f"storm-{b}-{k}" for k in range(25)]
            burst(sh, names)
            typed.extend(names)
            b += 1
            time.sleep(rng.uniform(0.3, 1.2))

    threads = [threading.Thread(target=noter, daemon=True), threading.Thread(target=typist, daemon=True)]
    try:
        for t in threads:
            t.start()
        started = time.monotonic()
        for _ in range(8):
            time.sleep(rng.uniform(0.5, 3.0))
            d.kill9()
            time.sleep(rng.uniform(0.0, 0.5))
            d.start(timeout=30)
        stop.set()
        for t in threads:
            t.join(60)
        assert time.monotonic() - started < 90
        # Everything typed has run (the shell is back at its prompt after the last line).
        sh.keys("true storm-end", "Enter")
        sh.wait_for(lambda: (lambda s: "true storm-end" in s and s.rstrip().endswith(PROMPT))(
            sh.screen()), timeout=60)
        typed.append("storm-end")
        want = {f"true {n}" for n in typed}

        def all_in() -> bool:  # every command typed has its start and its end journaled
            evs = d.events("--kind", "shell.")
            starts = {e["data"]["id"]: e["data"]["cmd"] for e in evs if e["kind"] == "shell.start"}
            ends = {e["data"]["id"] for e in evs if e["kind"] == "shell.end"}
            return want <= set(starts.values()) and set(starts) <= ends
        wait_until(all_in, 60)
        time.sleep(1.5)  # anything doubled would show up by now
        d.stop()
        evs = d.events()
    finally:
        stop.set()
        sh.close()
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(set(seqs)), "seq must strictly increase"
    starts = collections.Counter(e["data"]["cmd"] for e in evs if e["kind"] == "shell.start")
    doubled = {c: n for c, n in starts.items() if n > 1}
    assert not doubled, f"commands journaled twice: {doubled}"
    assert want <= set(starts), f"commands lost: {sorted(want - set(starts))[:10]}"
    ids = collections.Counter(e["data"]["id"] for e in evs if e["kind"] == "shell.start")
    ends = collections.Counter(e["data"]["id"] for e in evs if e["kind"] == "shell.end")
    assert set(ends.values()) == {1}, {i: n for i, n in ends.items() if n > 1}
    assert set(ids) == set(ends), "every command has one end"
    notes = collections.Counter(e["data"]["text"] for e in evs if e["kind"] == "user.note")
    assert len(acked) >= 10
    for text in acked:
        assert notes[text] == 1, (text, notes[text])
    assert not spooled_commands(spool), "consumed commands are erased from the spool"


def test_kill9_while_reading_a_full_spool_accounts_for_every_record_once(tmp_path, storm_daemon):
    """With the daemon down the hook drops the oldest records (a small spool) and says how many;
    killed while it reads that spool, and started again, the daemon journals each command and each
    drop total exactly once: commands seen plus records dropped is every record written."""
    d = storm_daemon
    d.stop()
    sh = Tmux(tmp_path, "bash", d.home / "run" / "shell", spool_max_bytes=16384)
    try:
        names = [f"full-{i}-{'y' * 100}" for i in range(160)]
        for k in range(0, len(names), 40):
            burst(sh, names[k:k + 40])
            sh.wait_for(lambda: (lambda s: f"true {names[min(k + 39, len(names) - 1)]}" in s
                                 and s.rstrip().endswith(PROMPT))(sh.screen()), timeout=30)
        for pause in (0.05, 0.15):
            d.start()
            time.sleep(pause)
            d.kill9()
        d.start()
        def accounted(evs: list[dict]) -> int:
            return sum(1 for e in evs if e["kind"] in ("shell.start", "shell.end")) + sum(
                e["data"]["dropped"] for e in evs
                if e["kind"] == "agent.gap" and "shell spool full" in e["data"]["reason"])
        # Every record is read back (a command, its end or a dropped count), then a moment more:
        # anything doubled would show up by then.
        wait_until(lambda: accounted(d.events()) >= 2 * len(names), 30)
        time.sleep(1.0)
        evs = d.events()
    finally:
        sh.close()
    starts = collections.Counter(e["data"]["cmd"] for e in evs if e["kind"] == "shell.start")
    ends = collections.Counter(e["data"]["id"] for e in evs if e["kind"] == "shell.end")
    gaps = [e["data"] for e in evs if e["kind"] == "agent.gap" and "shell spool full" in e["data"]["reason"]]
    assert gaps, "the hook dropped records: a gap says so"
    assert set(starts.values()) == {1} and set(ends.values()) == {1}
    gap_ids = collections.Counter(g["id"] for g in gaps)
    assert set(gap_ids.values()) == {1}, gap_ids
    assert sum(starts.values()) + sum(ends.values()) + sum(g["dropped"] for g in gaps) == 2 * len(names)
