"""Score the redaction engine on the blind set: secrets detected per category, look-alikes changed.

Run `python -m tests.redaction_blind.score [--first|--second|--third] [--misses] [--cli]` from the
repository root; every set by default (`generate`, written before the engine was changed,
`fresh`, written after and never used to change it, and `third`, other places again). Each
sample goes through the engine's public entry point (`Redactor.from_policy` with the daemon's
default [redaction] table, then `redact_text`), or with `--cli` through `tracecap redact` itself,
one process per sample. A secret counts as detected when its exact value no longer occurs in the
output; a look-alike counts as changed when the output differs from the input in any way.
`--misses` lists every secret left in and every look-alike changed, with the engine's findings.
"""
from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.redaction_blind import fresh, generate, third  # noqa: E402

SETS = {"first": generate, "second": fresh, "third": third}

KEY = b"blind-set-key-0123456789abcdef01"


@dataclass
class Score:
    found: collections.Counter = field(default_factory=collections.Counter)
    total: collections.Counter = field(default_factory=collections.Counter)
    missed: list = field(default_factory=list)  # (sample, secret, output)
    changed: list = field(default_factory=list)  # (look-alike, output)
    lookalikes: int = 0

    @property
    def recall(self) -> float:
        return sum(self.found.values()) / max(1, sum(self.total.values()))

    @property
    def changed_rate(self) -> float:
        return len(self.changed) / max(1, self.lookalikes)


def engine_redact():
    from agent.policy import DEFAULTS
    from redaction import Redactor

    table = dict(DEFAULTS["redaction"])
    red = Redactor.from_policy(table, hmac_key=KEY, home="/home/alice", username="alice")
    return lambda text: red.redact_text(text).text


def cli_redact():
    exe = shutil.which("tracecap", path=str(Path(sys.executable).parent)) or "tracecap"

    def run(text: str) -> str:
        return subprocess.run([exe, "redact"], input=text.encode(), capture_output=True,
                              check=True, timeout=60).stdout.decode()
    return run


def score(redact, which: str = "first") -> Score:
    sc = Score()
    module = SETS[which]
    for s in module.secret_samples():
        out = redact(s.text)
        for secret in s.secrets:
            sc.total[s.category] += 1
            if secret in out:
                sc.missed.append((s, secret, out))
            else:
                sc.found[s.category] += 1
    items = module.look_alikes()
    sc.lookalikes = len(items)
    for la in items:
        out = redact(la.text)
        if out != la.text:
            sc.changed.append((la, out))
    return sc


def report(sc: Score, misses: bool) -> str:
    lines = ["secrets detected (value gone from the output), per category:"]
    for cat in sorted(sc.total):
        f, t = sc.found[cat], sc.total[cat]
        lines.append(f"  {cat:20s} {f:4d} / {t:4d}  {100 * f / t:5.1f}%")
    lines.append(f"  {'all':20s} {sum(sc.found.values()):4d} / {sum(sc.total.values()):4d}  "
                 f"{100 * sc.recall:5.1f}%")
    by_cat = collections.Counter(la.category for la, _ in sc.changed)
    lines.append(f"look-alikes changed: {len(sc.changed)} of {sc.lookalikes} "
                 f"({100 * sc.changed_rate:.1f}%)" + (f"  {dict(by_cat)}" if by_cat else ""))
    if misses:
        lines.append("\nmissed:")
        for s, secret, out in sc.missed:
            lines.append(f"--- {s.category} {s.name}: {secret[:60]}")
            lines.append(out.rstrip("\n"))
        lines.append("\nlook-alikes changed:")
        for la, out in sc.changed:
            lines.append(f"--- {la.category} {la.name}")
            lines.append(out.rstrip("\n"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    redact = cli_redact() if "--cli" in argv else engine_redact()
    chosen = [w for w in SETS if f"--{w}" in argv] or list(SETS)
    for which in chosen:
        print(f"== {which} set ==")
        print(report(score(redact, which), "--misses" in argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
