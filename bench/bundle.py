"""Bundle codec benchmark: seal throughput, size against JSON lines + gzip -6, decrypt memory.

Run: `python -m bench.bundle [--events N] [--decrypt-gib G]`. Takes nothing but CPU time; prints
ratios against baselines measured in the same run, then a markdown table for the README.
Targets (issue 6): seal >= 100,000 events/s on one core; bundle bytes <= 0.85x JSON lines + gzip -6;
a 1 GiB (uncompressed) bundle decrypts in < 64 MiB max RSS (measured in a child process).
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.bundle import seal_bundle
from schemas.keys import generate_org_keypair, write_org_keypair

def _corpus() -> list[tuple[str, list[str]]]:
    """Real source files to edit: a slice of the Python standard library stands in for a repo."""
    root = Path(json.__file__).resolve().parent.parent
    files = []
    for name in ("argparse.py", "json/decoder.py", "json/encoder.py", "textwrap.py", "shlex.py", "gzip.py",
                 "tempfile.py", "dataclasses.py", "string.py", "fnmatch.py", "csv.py", "queue.py"):
        try:
            files.append((name, (root / name).read_text(encoding="utf-8").splitlines()))
        except OSError:
            continue
    return files


_COMMANDS = ("git status", "git diff", "pytest -q", "pytest -q tests/test_{m}.py", "python -m {m}", "ls",
             "make lint", "rg {w} src", "git add -p", "git commit -m 'fix {w}'", "vim src/{m}.py", "cd ..")


class Workday:
    """A day of work as events: an engineer edits a few real files in bursts (saves with unified diffs
    of real lines, revisiting the same functions), runs commands and tests, commits, types."""

    def __init__(self, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        self.files = _corpus()
        self.focus = self._new_focus()
        self.open_cmd: tuple[int, str] | None = None

    def _new_focus(self) -> tuple[str, list[str], int]:
        name, lines = self.rng.choice(self.files)
        return name, lines, self.rng.randrange(0, max(1, len(lines) - 40))

    def _diff(self) -> tuple[str, str, int]:
        rng = self.rng
        if rng.random() < 0.1:
            self.focus = self._new_focus()
        name, lines, at = self.focus
        at = max(0, min(len(lines) - 12, at + rng.randrange(-6, 7)))
        self.focus = (name, lines, at)
        ctx_before, old = lines[at:at + 3], lines[at + 3:at + 3 + rng.randrange(1, 4)]
        ctx_after = lines[at + 3 + len(old):at + 6 + len(old)]
        new = []
        for line in old:
            words = line.split()
            if words and rng.random() < 0.7:
                w = rng.choice(words)
                line = line.replace(w, rng.choice([w + "_", w.upper(), f"{w}(x)", "self." + w, w[::-1]]), 1)
            new.append(line)
        if rng.random() < 0.4:
            new.append(lines[at] + "  # " + rng.choice(["TODO", "why?", "check this", "fixed"]))
        body = ("".join(f" {c}\n" for c in ctx_before) + "".join(f"-{c}\n" for c in old)
                + "".join(f"+{c}\n" for c in new) + "".join(f" {c}\n" for c in ctx_after))
        n_old = len(ctx_before) + len(old) + len(ctx_after)
        n_new = len(ctx_before) + len(new) + len(ctx_after)
        header = f"--- a/{name}\n+++ b/{name}\n@@ -{at + 1},{n_old} +{at + 1},{n_new} @@\n"
        return name, header + body, sum(len(x) + 1 for x in lines)

    def event(self, seq: int) -> dict:
        rng = self.rng
        ts = 1_700_000_000_000_000_000 + seq * 1_370_000_000 + rng.randrange(1_000_000_000)
        sess = f"zsh-{seq // 2000}"
        if self.open_cmd is not None:
            sid, cmd = self.open_cmd
            self.open_cmd = None
            if cmd.startswith("pytest") and rng.random() < 0.7:
                failed = rng.randrange(0, 3)
                return {"v": 1, "seq": seq, "ts": ts, "kind": "test.run", "source": "tests", "session": sess,
                        "data": {"runner": "pytest", "cmd": cmd, "exit": 1 if failed else 0,
                                 "duration_ms": rng.randrange(300, 20_000), "passed": 212 - failed,
                                 "failed": failed, "skipped": 3,
                                 "failures": [{"name": f"tests/test_decoder.py::test_case_{rng.randrange(40)}",
                                               "message": "AssertionError: assert 'a' == 'b'"}
                                              for _ in range(failed)]}}
            return {"v": 1, "seq": seq, "ts": ts, "kind": "shell.end", "source": "shell", "session": sess,
                    "data": {"id": sid, "exit": rng.choice((0, 0, 0, 1)), "duration_ms": rng.randrange(3, 9000)}}
        r = rng.random()
        if r < 0.4:
            name, diff, size = self._diff()
            return {"v": 1, "seq": seq, "ts": ts, "kind": "file.save", "source": "files", "session": None,
                    "data": {"repo": "/home/ana/src/stdlib-fork", "path": name, "op": "modify", "size": size,
                             "diff": diff}}
        if r < 0.7:
            m = self.focus[0].replace("/", ".").removesuffix(".py")
            cmd = rng.choice(_COMMANDS).format(m=m, w=rng.choice(self.focus[1][self.focus[2]].split() or ["x"]))
            sid = f"{seq:08x}"
            self.open_cmd = (sid, cmd)
            return {"v": 1, "seq": seq, "ts": ts, "kind": "shell.start", "source": "shell", "session": sess,
                    "data": {"id": sid, "cmd": cmd, "cwd": "/home/ana/src/stdlib-fork", "shell": "zsh",
                             "actor": "agent" if rng.random() < 0.3 else "human"}}
        if r < 0.82:
            return {"v": 1, "seq": seq, "ts": ts, "kind": "tool.invocation", "source": "tools", "session": sess,
                    "data": {"exe": "/usr/bin/git", "argv": ["git", rng.choice(["diff", "status", "log"]), "--stat"],
                             "cwd": "/home/ana/src/stdlib-fork", "pid": 20_000 + seq % 5000,
                             "ppid": 19_000 + seq % 300, "duration_ms": rng.randrange(1, 400), "actor": "agent"}}
        if r < 0.85:
            return {"v": 1, "seq": seq, "ts": ts, "kind": "git.commit", "source": "git", "session": None,
                    "data": {"repo": "/home/ana/src/stdlib-fork", "sha": rng.randbytes(20).hex()}}
        return {"v": 1, "seq": seq, "ts": ts, "kind": "input.activity", "source": "input", "session": None,
                "data": {"start": ts - 10_000_000_000, "end": ts, "keys": rng.randrange(300),
                         "clicks": rng.randrange(20), "scrolls": rng.randrange(40)}}


def workday_events(n: int, seed: int = 42) -> list[dict]:
    day = Workday(seed)
    return [day.event(i + 1) for i in range(n)]


class LazyEvents(Sequence):
    """`n` realistic events made on demand, so a 1 GiB bundle never sits in memory."""

    def __init__(self, n: int, pool: int = 4096) -> None:
        self._pool = workday_events(pool)
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            raise TypeError("slicing is not supported")
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        ev = dict(self._pool[i % len(self._pool)])
        ev["seq"] = i + 1
        return ev


def jsonl_gzip_size(events) -> tuple[int, int, float]:
    lines = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in events).encode()
    t = time.perf_counter()
    gz = gzip.compress(lines, compresslevel=6)
    return len(lines), len(gz), time.perf_counter() - t


def seal_to(out, events, device, pub, level=3):
    return seal_bundle(out, events, device_id="bench", device_key=device, recipients=[pub], prev_digest="",
                       level=level)


def bench_seal(n: int) -> dict:
    events = workday_events(n, seed=1)
    device = Ed25519PrivateKey.generate()
    _, pub = generate_org_keypair()
    best = float("inf")
    for _ in range(3):
        buf = io.BytesIO()
        t = time.perf_counter()
        sealed = seal_to(buf, events, device, pub)
        best = min(best, time.perf_counter() - t)
    raw_len, gz_len, gz_time = jsonl_gzip_size(events)
    return {"events": n, "seal_s": best, "events_per_s": n / best, "bundle_bytes": sealed.size,
            "jsonl_bytes": raw_len, "gzip6_bytes": gz_len, "ratio": sealed.size / gz_len,
            "gzip_s": gz_time}


PEAK_RSS_SRC = """
def peak_rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def bench_decrypt_rss(gib: float) -> dict:
    """Seal `gib` GiB of msgpack'd events to a temp file, decrypt it in a child, report its max RSS."""
    device = Ed25519PrivateKey.generate()
    priv, pub = generate_org_keypair()
    pool = LazyEvents(4096)
    import msgpack
    avg = sum(len(msgpack.packb(pool[i])) for i in range(4096)) / 4096
    n = int(gib * (1 << 30) / avg)
    with tempfile.TemporaryDirectory() as d:
        key_path, _ = write_org_keypair(Path(d) / "keys", priv, pub)
        path = Path(d) / "big.tcb"
        t = time.perf_counter()
        with open(path, "wb") as f:
            sealed = seal_to(f, LazyEvents(n), device, pub)
        seal_s = time.perf_counter() - t
        code = ("import sys\nfrom schemas.bundle import open_bundle\nfrom schemas.keys import load_org_private\n"
                f"{PEAK_RSS_SRC}\nk = load_org_private(sys.argv[2]); n = 0\n"
                "with open(sys.argv[1], 'rb') as f:\n    for ev in open_bundle(f, k): n += 1\n"
                "print(n, peak_rss_kib())\n")
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, str(path), str(key_path)], capture_output=True,
                              text=True, timeout=3600)
        open_s = time.perf_counter() - t
        # The child reports its own peak (VmHWM): getrusage's maxrss on Linux carries over the
        # high-water mark from before exec, i.e. this much larger process's pages.
        got, rss_kib = (int(x) for x in proc.stdout.split()) if proc.returncode == 0 else (-1, 0)
        if got != n:
            raise SystemExit(f"decrypt failed: {proc.stderr.strip()}")
    return {"uncompressed_bytes": int(n * avg), "events": n, "bundle_bytes": sealed.size, "seal_s": seal_s,
            "open_s": open_s, "max_rss_mib": rss_kib / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--decrypt-gib", type=float, default=1.0, help="0 skips the decrypt memory run")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says

    s = bench_seal(args.events)
    print(f"seal: {s['events']} events in {s['seal_s']:.3f}s = {s['events_per_s']:,.0f} events/s "
          f"(target >= 100,000: {s['events_per_s'] / 100_000:.2f}x)")
    print(f"size: bundle {s['bundle_bytes']:,} B vs JSON lines {s['jsonl_bytes']:,} B + gzip -6 "
          f"{s['gzip6_bytes']:,} B: ratio {s['ratio']:.3f} (target <= 0.85)")
    rows = [("seal throughput (1 core)", f"{s['events_per_s']:,.0f} events/s", ">= 100,000 events/s"),
            ("bundle size / (JSON lines + gzip -6)", f"{s['ratio']:.3f}", "<= 0.85"),
            ("bundle size / JSON lines", f"{s['bundle_bytes'] / s['jsonl_bytes']:.3f}", "")]
    if args.decrypt_gib > 0:
        r = bench_decrypt_rss(args.decrypt_gib)
        print(f"decrypt: {r['uncompressed_bytes'] / (1 << 30):.2f} GiB uncompressed ({r['events']:,} events, "
              f"bundle {r['bundle_bytes'] / (1 << 20):.1f} MiB) opened in {r['open_s']:.1f}s, "
              f"max RSS {r['max_rss_mib']:.1f} MiB (target < 64 MiB); sealed in {r['seal_s']:.1f}s")
        rows += [(f"decrypt {r['uncompressed_bytes'] / (1 << 30):.2f} GiB bundle, max RSS",
                  f"{r['max_rss_mib']:.1f} MiB", "< 64 MiB"),
                 ("open (verify + decrypt + decode) throughput",
                  f"{r['events'] / r['open_s']:,.0f} events/s", "")]
    print()
    print("| measure | result | target |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
