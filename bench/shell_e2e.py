"""End to end: commands typed into a hooked interactive bash, all the way into a real daemon's journal.

Starts `tracecap daemon` in a temporary TRACECAP_HOME with a policy that captures only the shell,
runs `tracecap opt-in`, then an interactive bash (`bash -i`, the hook from `tracecap shell-init
bash` in its rc file) fed N commands on its standard input. Measures from the moment the first
command is fed to the moment the journal holds all 2N shell.start/shell.end events, fsynced (the
segments followed from where the last poll left off; the daemon asked for its durable seq), and
separately how long the shell alone took to run them. That figure is bounded by the shell itself
(bash runs 8,000-11,000 hooked commands a second here) and includes the journal's 250 ms reorder
window; the end of a burst is fsynced as soon as it is written.

Then the daemon's side alone: the same N commands, spooled by a hooked bash with nothing reading,
are taken by the shell source with the daemon's redaction and a real journal in one process, timed
from the first read to the last event durable (the journal flushed) and its record erased. This is the rate the daemon can
ingest at, whatever the shell's speed. Prints both against the 20,000 events/s target and a table.
Usage: python bench/shell_e2e.py [N]
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent.control import request  # noqa: E402
from agent.journal import SEG_HEADER, _record_at  # noqa: E402
from agent.paths import StatePaths  # noqa: E402
from schemas.events import decode_event  # noqa: E402

TARGET_EVENTS_PER_S = 20_000
TRACECAP = shutil.which("tracecap", path=os.path.dirname(sys.executable)) or "tracecap"


def _cli(env: dict, *args: str) -> str:
    r = subprocess.run([TRACECAP, *args], env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"tracecap {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def _start_daemon(env: dict, home: Path) -> subprocess.Popen:
    log = open(home / "daemon.stderr", "ab")
    proc = subprocess.Popen([TRACECAP, "daemon"], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}: {(home / 'daemon.stderr').read_text()}")
        if subprocess.run([TRACECAP, "status", "--json"], env=env, capture_output=True,
                          timeout=30, stdin=subprocess.DEVNULL).returncode == 0:
            return proc
        time.sleep(0.1)
    raise TimeoutError("the daemon did not come up within 30 s")


def _wait_shell_running(spool: Path, timeout: float) -> None:
    """The shell source has created its spool directory once it runs."""
    deadline = time.monotonic() + timeout
    while not spool.is_dir():
        if time.monotonic() > deadline:
            raise TimeoutError("the shell source did not start")
        time.sleep(0.05)


class JournalTail:
    """Follows the journal's segments from where it left off, so polling costs only what is new
    (reading every segment from its start on each poll would take a CPU from the daemon). Counts
    the shell events it sees and remembers the highest seq among them."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.base: int | None = None
        self.pos = SEG_HEADER.size
        self.counts = {"shell.start": 0, "shell.end": 0}
        self.last_seq = 0

    def poll(self) -> None:
        bases = sorted(int(p.name[:-4]) for p in self.dir.glob("*.seg") if p.name[:-4].isdigit())
        for base in bases:
            if self.base is not None and base < self.base:
                continue
            if base != self.base:
                self.base, self.pos = base, SEG_HEADER.size
            try:
                with open(self.dir / f"{base:020d}.seg", "rb") as f:
                    f.seek(self.pos)
                    buf = f.read()
            except FileNotFoundError:
                continue
            at = 0
            while (rec := _record_at(buf, at)) is not None:  # stops at a record still being written
                at, payload = rec
                ev = decode_event(payload)
                if ev.kind in self.counts:
                    self.counts[ev.kind] += 1
                    self.last_seq = ev.seq
            self.pos += at


def run(n: int, tmp: Path) -> dict[str, float]:
    home = tmp / "home"
    home.mkdir()
    policy = tmp / "policy.toml"
    policy.write_text('[capture]\nroots = []\nsources = ["shell"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
    env.update(TRACECAP_HOME=str(home), TRACECAP_POLICY=str(policy))
    env.pop("DISPLAY", None)
    paths = StatePaths.from_env(env)
    daemon = _start_daemon(env, home)
    try:
        _cli(env, "opt-in")
        _wait_shell_running(paths.shell_spool, 30)
        rc = tmp / "bashrc"
        rc.write_text("PS1='$ '\nHISTFILE=/dev/null\n" + _cli(env, "shell-init", "bash"))
        script = tmp / "commands"
        script.write_text(":\n" * n + "exit\n")
        with open(script, "rb") as stdin:
            start = time.perf_counter()
            shell = subprocess.run(["bash", "--noprofile", "--rcfile", str(rc), "-i"], env=env,
                                   stdin=stdin, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd=tmp, timeout=600)
            shell_done = time.perf_counter()
        if shell.returncode != 0:
            raise RuntimeError(f"bash exited {shell.returncode}")
        tail = JournalTail(paths.spool)
        deadline = time.monotonic() + 120
        while tail.counts["shell.start"] < n or tail.counts["shell.end"] < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"after 120 s the journal holds {tail.counts} of {n} commands each")
            tail.poll()
            time.sleep(0.01)
        written = time.perf_counter()
        # Written is not yet journaled: readers see a record only once it is fsynced.
        while request(paths.socket, "durable", timeout=10)["durable_seq"] < tail.last_seq:
            if time.monotonic() > deadline:
                raise TimeoutError("after 120 s the last shell event is still not fsynced")
            time.sleep(0.005)
        all_in = time.perf_counter()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
    events = 2 * n
    return {"events": events, "total_s": all_in - start, "shell_s": shell_done - start,
            "written_s": written - start,
            "events_per_s": events / (all_in - start),
            "shell_events_per_s": events / (shell_done - start)}


def ingest(n: int, tmp: Path) -> dict[str, float]:
    """The daemon's ingest path over a spool of n commands a hooked bash wrote: seconds and rate."""
    import logging

    from agent.commands.shell import render_hook
    from agent.journal import Journal
    from agent.policy import builtin_policy, load_hmac_key
    from agent.sources.base import DurableAcks, SourceContext
    from agent.sources.shell import ShellSource
    from redaction import Redactor

    paths = StatePaths.from_env({"TRACECAP_HOME": str(tmp / "ingest-home")}).ensure()
    policy = builtin_policy()
    rc = tmp / "ingest-bashrc"
    rc.write_text("PS1='$ '\nHISTFILE=/dev/null\n" + render_hook(
        "bash", spool=str(paths.shell_spool), ignore_space=True, pytest_junit=True,
        spool_max_bytes=policy.size("shell.spool_max_bytes")))
    script = tmp / "ingest-commands"
    script.write_text(":\n" * n + "exit\n")
    with open(script, "rb") as stdin:
        subprocess.run(["bash", "--noprofile", "--rcfile", str(rc), "-i"], stdin=stdin, cwd=tmp,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=True)
    redactor = Redactor.from_policy(policy.data["redaction"], hmac_key=load_hmac_key(policy, paths),
                                    home=str(Path.home()))
    journal = Journal(paths.spool)
    journal.start()

    def emit(kind, data, *, ts=None, session=None, source=None):
        red = redactor.redact_event(kind, data)
        if red is not None:
            journal.append(kind, source or "shell", session, red, ts)

    # As the daemon wires it: records are erased once the journal says their events are durable.
    acks = DurableAcks(mark=journal.mark, reached=lambda m: journal.durable_mark >= m,
                       subscribe=journal.add_listener, unsubscribe=journal.remove_listener,
                       flush=journal.flush, held=lambda: journal.disk_full)
    ctx = SourceContext(name="shell", policy=policy, paths=paths, emit=emit, capturing=lambda: True,
                        log=logging.getLogger("bench"), set_state=lambda s: None, redactor=redactor,
                        acks=acks)
    source = ShellSource(ctx)
    start = time.perf_counter()
    got = source.drain()
    journal.flush()
    source.drain()  # erases what is now durable
    took = time.perf_counter() - start
    if source.unacked:
        raise RuntimeError("durable records were not erased")
    journal.stop()
    if got < 2 * n:  # and the start of `exit`
        raise RuntimeError(f"the shell source took {got} events of {2 * n}")
    return {"events": got, "s": took, "events_per_s": got / took}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as d:
        r = run(n, Path(d))
    with tempfile.TemporaryDirectory() as d:
        g = ingest(n, Path(d))
    ratio = r["events_per_s"] / TARGET_EVENTS_PER_S
    print(f"{n} commands, {r['events']} shell events: in the journal {r['total_s']:.2f} s after the "
          f"first command ({r['events_per_s']:,.0f} events/s, {ratio:.2f}x the "
          f"{TARGET_EVENTS_PER_S:,}/s target); the shell alone took {r['shell_s']:.2f} s "
          f"({r['shell_events_per_s']:,.0f} events/s); all written {r['written_s']:.2f} s after the "
          f"first command\n")
    print("| commands | events | first command to all journaled | events/s | vs 20,000/s target "
          "| shell alone | shell events/s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {n} | {r['events']} | {r['total_s']:.2f} s | {r['events_per_s']:,.0f} | {ratio:.2f}x "
          f"| {r['shell_s']:.2f} s | {r['shell_events_per_s']:,.0f} |")
    gratio = g["events_per_s"] / TARGET_EVENTS_PER_S
    print(f"\ndaemon ingest of the same {n} commands spooled: {g['events']} events durable in "
          f"{g['s']:.2f} s ({g['events_per_s']:,.0f} events/s, {gratio:.2f}x the target)\n")
    print("| spooled commands | events | read to durable | events/s | vs 20,000/s target |")
    print("|---|---|---|---|---|")
    print(f"| {n} | {g['events']} | {g['s']:.2f} s | {g['events_per_s']:,.0f} | {gratio:.2f}x |")


if __name__ == "__main__":
    main()
