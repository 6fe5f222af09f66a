"""Hook overhead per command: bash, zsh and fish, each with and without the tracecap hook.

Runs N commands (`:` / `true`) typed into an interactive shell on a pseudo-terminal, bare and with
the hook from `tracecap shell-init` writing to a real spool directory, for ROUNDS rounds of one bare
and one hooked session, in alternating order, so that a machine getting faster or slower affects
both alike. Where there are two CPUs or more the shell runs on one and this driver on another, and
each session starts with no shell history, which fish would otherwise grow and rewrite from run to
run: on a shared virtual machine that halves the spread between rounds. Prints, per command, the
wall time and the CPU time (user + system) of the shell process, bare and hooked, and the hook's
cost as the median of the rounds' differences with their range (target <= 0.05 ms), and a
markdown table.

Times on a shared virtual machine still drift by tens of percent between runs, so where valgrind is
installed it also counts the user-space instructions each shell executes per command (callgrind,
the difference between a 50- and a 250-command session, bare and hooked): a figure that does not
drift, for comparing hook versions. System calls are not in it.
Usage: python bench/shell_hook.py [N] [ROUNDS]
"""
from __future__ import annotations

import os
import pty
import re
import select
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent.commands.shell import render_hook  # noqa: E402
from agent.sources.shell import parse_segment  # noqa: E402

DONE = "BENCH_DONE_MARK"


def _argv(shell: str, tmp: Path, hooked: bool) -> list[str]:
    hook = tmp / f"hook.{shell}"
    src = f"source {hook}\n" if hooked else ""
    if shell == "bash":
        (tmp / "rc").write_text(f"PS1='$ '\n{src}")
        return ["bash", "--noprofile", "--rcfile", str(tmp / "rc"), "-i"]
    if shell == "zsh":
        (tmp / ".zshrc").write_text(f"PS1='$ '\n{src}")
        return ["zsh", "-i"]
    (tmp / "config.fish").write_text(f"function fish_prompt; echo -n '$ '; end\nfunction fish_greeting; end\n{src}")
    return ["fish", "--no-config", "-C", f"source {tmp / 'config.fish'}"]


def _cpus() -> tuple[set[int], set[int]] | None:
    """(this driver's CPUs, the shell's CPU) when there are two or more to split, else None."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    return ({cpus[0]}, {cpus[-1]}) if len(cpus) >= 2 else None


def _prepare(shell: str, tmp: Path) -> tuple[Path, dict[str, str]]:
    """A fresh spool directory with the hook written for it, no shell history, and the shells'
    environment."""
    spool = tmp / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    shutil.rmtree(tmp / ".local", ignore_errors=True)  # fish's history
    for name in (".bash_history", ".zsh_history"):
        (tmp / name).unlink(missing_ok=True)
    spool.mkdir(mode=0o700)  # as the daemon makes it: the hooks write into nothing else
    (tmp / f"hook.{shell}").write_text(render_hook(shell, spool=str(spool), ignore_space=True,
                                                   pytest_junit=True, spool_max_bytes=1 << 30))
    env = {"HOME": str(tmp), "ZDOTDIR": str(tmp), "TERM": "xterm", "PATH": os.environ["PATH"],
           "LANG": "C.UTF-8"}
    return spool, env


def run_once(shell: str, n: int, hooked: bool, tmp: Path) -> tuple[float, float]:
    """Seconds of wall time and of the shell's CPU time to run n commands in one interactive
    shell session."""
    spool, env = _prepare(shell, tmp)
    argv = _argv(shell, tmp, hooked)
    # forkpty: the shell gets the pty as its controlling terminal, as under a terminal emulator;
    # fish runs its interactive reader (and so its preexec/postexec events) only with one.
    split = _cpus()
    pid, master = pty.fork()
    if pid == 0:
        os.chdir(tmp)
        if split:
            os.sched_setaffinity(0, split[1])
        os.execvpe(argv[0], argv, env)
    cmd = ":\n" if shell != "fish" else "true\n"
    out = bytearray()

    def read_until(marker: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while marker not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{shell}: no {marker!r} in {bytes(out[-300:])!r}")
            r, _, _ = select.select([master], [], [], left)
            if r:
                try:
                    out.extend(os.read(master, 65536))
                except OSError:
                    break

    # The markers are printed in lower case so the terminal's echo of the typed line cannot match.
    os.write(master, b"echo READY_MARK | tr A-Z a-z\n")
    read_until(b"ready_mark", 20)
    out.clear()

    def feed() -> None:
        # A pty's input queue is small: write in pieces while the main thread drains output.
        for _ in range(n):
            os.write(master, cmd.encode())
        os.write(master, f"echo {DONE} | tr A-Z a-z\n".encode())

    start = time.perf_counter()
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    read_until(DONE.lower().encode(), 20 + n * 0.02)
    elapsed = time.perf_counter() - start
    writer.join(timeout=10)
    os.kill(pid, 9)
    _, _, usage = os.wait4(pid, 0)
    os.close(master)
    if hooked:
        records = sum(len(parse_segment(p.read_bytes(), None)[0]) for p in spool.glob("*.rec"))
        if records < 2 * n:
            raise RuntimeError(f"{shell}: the hook wrote {records} records for {n} commands")
    return elapsed, usage.ru_utime + usage.ru_stime


def instructions(shell: str, hooked: bool, tmp: Path, n: int) -> int:
    """User-space instructions (callgrind Ir) of an interactive shell session of n commands."""
    _spool, env = _prepare(shell, tmp)
    out = tmp / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            *_argv(shell, tmp, hooked)]
    pid, master = pty.fork()
    if pid == 0:
        os.chdir(tmp)
        os.execvpe(argv[0], argv, env)
    buf = bytearray()

    def until(marker: bytes, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while marker not in buf and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    buf.extend(os.read(master, 65536))
                except OSError:
                    return

    os.write(master, b"echo READY_MARK | tr A-Z a-z\n")
    until(b"ready_mark")
    for _ in range(n):  # one at a time, each after its prompt: the same work in every session
        buf.clear()
        os.write(master, b":\n" if shell != "fish" else b"true\n")
        until(b"$ ")
    os.write(master, b"exit\n")
    os.waitpid(pid, 0)
    os.close(master)
    m = re.search(rb"^(?:summary|totals): *([0-9]+)", out.read_bytes(), re.M)
    if m is None:
        raise RuntimeError(f"{shell}: no callgrind totals")
    return int(m[1])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    split = _cpus()
    if split:
        os.sched_setaffinity(0, split[0])
    print(f"driver on CPU {sorted(split[0])}, shells on CPU {sorted(split[1])}" if split
          else "one CPU: the driver and the shells share it")
    rows = []
    for shell in ("bash", "zsh", "fish"):
        if shutil.which(shell) is None:
            print(f"{shell}: not installed, skipped")
            continue
        per: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        with tempfile.TemporaryDirectory() as d:
            for r in range(rounds):
                for hooked in ((False, True) if r % 2 == 0 else (True, False)):
                    wall, cpu = run_once(shell, n, hooked, Path(d))
                    per[hooked].append((wall / n * 1e3, cpu / n * 1e3))
        added = [(h[0] - b[0], h[1] - b[1]) for b, h in zip(per[False], per[True])]
        med = [statistics.median(x[i] for x in per[k]) for k in (False, True) for i in (0, 1)]
        wall_add = sorted(a[0] for a in added)
        cpu_add = sorted(a[1] for a in added)
        row = (shell, med[0], med[2], statistics.median(wall_add), wall_add[0], wall_add[-1],
               statistics.median(cpu_add))
        rows.append(row)
        print(f"{shell}: bare {med[0]:.4f} ms/cmd, hooked {med[2]:.4f}; added (median of {rounds} "
              f"rounds) wall {row[3]:+.4f} ms/cmd (range {row[4]:+.4f} to {row[5]:+.4f}), shell CPU "
              f"{row[6]:+.4f} ms/cmd; hooked/bare {med[2] / med[0]:.2f}x")
    print(f"\n{n} commands per session, {rounds} rounds of a bare and a hooked session\n")
    print("| shell | bare ms/cmd | hooked ms/cmd | added ms/cmd (median, range) "
          "| shell CPU added ms/cmd | target <= 0.05 ms |")
    print("|---|---|---|---|---|---|")
    for shell, b, h, add, lo, hi, cpu in rows:
        print(f"| {shell} | {b:.4f} | {h:.4f} | {add:+.4f} ({lo:+.4f} to {hi:+.4f}) | {cpu:+.4f} "
              f"| {'met' if add <= 0.05 else 'not met'} |")
    if shutil.which("valgrind") is None:
        print("\nvalgrind is not installed: no instruction counts")
        return
    print("\n| shell | instructions per command, bare | hooked | added by the hook |")
    print("|---|---|---|---|")
    for shell, *_ in rows:
        with tempfile.TemporaryDirectory() as d:
            per = {}
            for hooked in (False, True):
                per[hooked] = (instructions(shell, hooked, Path(d), 250)
                               - instructions(shell, hooked, Path(d), 50)) / 200
        print(f"| {shell} | {per[False]:,.0f} | {per[True]:,.0f} | {per[True] - per[False]:,.0f} |")

if __name__ == "__main__":
    main()
