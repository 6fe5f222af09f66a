"""Hook overhead per command: bash, zsh and fish, each with and without the tracecap hook.

Runs N commands (`:` / `true`) typed into an interactive shell on a pseudo-terminal, bare and with
the hook from `tracecap shell-init` writing to a real spool directory, alternating the two for
ROUNDS rounds so that a machine getting faster or slower affects both alike. Prints, per command,
the best wall time and the best CPU time (user + system) of the shell process for each, and the
differences (the hook's cost; target <= 0.05 ms), as ratios and a markdown table.

Times on a shared virtual machine drift by tens of percent between runs, so where valgrind is
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


def _prepare(shell: str, tmp: Path) -> tuple[Path, dict[str, str]]:
    """A fresh spool directory with the hook written for it, and the shells' environment."""
    spool = tmp / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir()
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
    pid, master = pty.fork()
    if pid == 0:
        os.chdir(tmp)
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
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rows = []
    for shell in ("bash", "zsh", "fish"):
        if shutil.which(shell) is None:
            print(f"{shell}: not installed, skipped")
            continue
        best = {False: [float("inf")] * 2, True: [float("inf")] * 2}
        with tempfile.TemporaryDirectory() as d:
            for _ in range(rounds):
                for hooked in (False, True):
                    got = run_once(shell, n, hooked, Path(d))
                    best[hooked] = [min(a, b) for a, b in zip(best[hooked], got)]
        (bare, bare_cpu), (hook, hook_cpu) = best[False], best[True]
        per = [x / n * 1e3 for x in (bare, hook, bare_cpu, hook_cpu)]
        rows.append((shell, *per))
        print(f"{shell}: wall bare {per[0]:.4f} hooked {per[1]:.4f} added {per[1] - per[0]:.4f} "
              f"ms/cmd ({hook / bare:.2f}x); cpu bare {per[2]:.4f} hooked {per[3]:.4f} added "
              f"{per[3] - per[2]:.4f} ms/cmd ({hook_cpu / bare_cpu:.2f}x)")
    print(f"\n{n} commands per run, best of {rounds} alternating runs\n")
    print("| shell | bare ms/cmd | hooked ms/cmd | added ms/cmd | shell CPU added ms/cmd "
          "| target <= 0.05 ms |")
    print("|---|---|---|---|---|---|")
    for shell, b, h, bc, hc in rows:
        print(f"| {shell} | {b:.4f} | {h:.4f} | {h - b:.4f} | {hc - bc:.4f} "
              f"| {'met' if h - b <= 0.05 else 'not met'} |")
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
