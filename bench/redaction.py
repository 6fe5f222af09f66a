"""Redaction benchmark: recall, clean lines changed and speed, side by side with detect-secrets.

Takes nothing (run `python bench/redaction.py [--quick]` from the repository root); gives a report on
stdout and a markdown table for the README. Both scanners see the same generated corpus
(`tests/redaction_corpus`), written to files grouped by place (shell, diff, .env, YAML, JSON, logs,
test output, ...), and the same standard-library source lines. A secret counts as found by tracecap
when it no longer appears in the output; by detect-secrets when it reports anything on the secret's
lines (the more generous reading). Speed: wall time for each to process the same files, plus the
median latency of `redact_event` for a typical ~200-byte `shell.start` event.
"""
from __future__ import annotations

import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redaction import Redactor  # noqa: E402
from tests.redaction_corpus.generate import (near_misses, pii_clean_sentences, pii_sentences,  # noqa: E402
                                             positive_samples, stdlib_lines)

EXT = {"shell": ".sh", "diff": ".diff", "env": ".env", "yaml": ".yaml", "json": ".json", "log": ".log",
       "test": ".txt", "toml": ".toml", "ini": ".ini", "source": ".js", "file": ".pem", "xml": ".xml"}
KEY = b"bench-key-0123456789abcdef012345"


def write_corpus(root: Path, samples):
    """Samples grouped into one file per place; returns (files, sample -> (file, first, last line))."""
    by_place = collections.defaultdict(list)
    for s in samples:
        by_place[s.place].append(s)
    files, where = [], {}
    for place, items in by_place.items():
        path = root / f"{place}{EXT.get(place, '.txt')}"
        lines = []
        for s in items:
            first = len(lines) + 1
            lines += s.text.split("\n")
            where[id(s)] = (str(path), first, len(lines))
            lines.append("")
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    return files, where


def detect_secrets_scan(files):
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    with default_settings():
        coll = SecretsCollection()
        t0 = time.perf_counter()
        for f in files:
            coll.scan_file(str(f))
        elapsed = time.perf_counter() - t0
    flagged = collections.defaultdict(set)
    for filename, secret in coll:
        flagged[filename].add(secret.line_number)
    return flagged, elapsed


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    red = Redactor.from_policy({"ip_addresses": True, "phone_numbers": True}, hmac_key=KEY,
                               home="/home/alice", username="alice")
    samples = positive_samples(per_format=4 if quick else 12)
    clean = stdlib_lines(max_files=30 if quick else 120)
    misses = near_misses()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files, where = write_corpus(root, samples)
        clean_file = root / "clean.py"
        clean_file.write_text("\n".join(clean) + "\n")
        miss_file = root / "near_misses.txt"
        miss_file.write_text("\n".join(misses) + "\n")
        all_files = [*files, clean_file, miss_file]
        ds_flagged, ds_time = detect_secrets_scan(all_files)

        t0 = time.perf_counter()
        for f in all_files:
            red.redact_text(f.read_text())
        ours_file_time = time.perf_counter() - t0
        total_bytes = sum(f.stat().st_size for f in all_files)

    t0 = time.perf_counter()
    ours_out = [red.redact_text(s.text).text for s in samples]
    ours_clean = [red.redact_text(line).text for line in clean]
    ours_lines_time = time.perf_counter() - t0

    rows = collections.OrderedDict()
    for s, out in zip(samples, ours_out):
        path, first, last = where[id(s)]
        r = rows.setdefault(s.detector, {"cat": s.category, "n": 0, "ours": 0, "ds": 0})
        r["n"] += 1
        r["ours"] += all(x not in out for x in s.secrets)
        r["ds"] += any(first <= ln <= last for ln in ds_flagged.get(path, ()))
    ours_clean_changed = sum(a != b for a, b in zip(clean, ours_clean))
    ds_clean_changed = len(ds_flagged.get(str(clean_file), ()))
    ours_miss_changed = sum(red.redact_text(m).text != m for m in misses)
    ds_miss_changed = len(ds_flagged.get(str(miss_file), ()))
    pii_found, pii_total = collections.Counter(), collections.Counter()
    for text, kind, value in pii_sentences():
        pii_total[kind] += 1
        pii_found[kind] += value not in red.redact_text(text).text
    clean_sentences = pii_clean_sentences()
    pii_clean_changed = sum(red.redact_text(t).text != t for t in clean_sentences)

    event = {"id": "7f3a", "cmd": "cd ~/src/project && python -m pytest tests/test_parser.py -k 'not slow' -x "
             "--maxfail=3 && git commit -am 'fix the parser for nested brackets'", "cwd": "/home/alice/src/project",
             "shell": "bash", "actor": "human"}
    event_bytes = sum(len(v) for v in event.values())
    # Every command differs, as in life (the redactor skips short texts it last found clean, such as
    # shell and actor, and remembers those where it found only the user's home, such as cwd): each
    # event gets its own command text and id.
    rounds, n = (7 if quick else 21), 2000
    events = [dict(event, id=f"7f3a:{i}", cmd=f"{event['cmd']} {i}") for i in range((rounds + 1) * n)]
    for ev in events[:n]:
        red.redact_event("shell.start", ev)
    batches = []
    for r in range(1, rounds + 1):
        batch = events[r * n:(r + 1) * n]
        t0 = time.perf_counter()
        for ev in batch:
            red.redact_event("shell.start", ev)
        batches.append((time.perf_counter() - t0) / n)
    latency_us = statistics.median(batches) * 1e6

    print("detector                        category  n     tracecap   detect-secrets")
    for name, r in rows.items():
        print(f"{name:<31} {r['cat']:<9} {r['n']:<5} {r['ours'] / r['n']:>8.1%}   {r['ds'] / r['n']:>8.1%}")
    cats = collections.defaultdict(lambda: [0, 0, 0])
    for r in rows.values():
        c = cats[r["cat"]]
        c[0] += r["n"]
        c[1] += r["ours"]
        c[2] += r["ds"]
    speedup = ds_time / ours_file_time
    print()
    print(f"corpus: {len(samples)} secrets in {len(files)} files, {len(clean)} stdlib lines, "
          f"{len(misses)} near misses, {total_bytes / 1e6:.2f} MB")
    print(f"tracecap: {ours_file_time:.3f} s on the files ({total_bytes / ours_file_time / 1e6:.1f} MB/s); "
          f"{ours_lines_time:.3f} s line by line")
    print(f"detect-secrets: {ds_time:.3f} s on the files ({total_bytes / ds_time / 1e6:.2f} MB/s)")
    print(f"speed ratio tracecap / detect-secrets: {speedup:.1f}x (target >= 10x)")
    print(f"typical shell.start event ({event_bytes} bytes of strings): {latency_us:.1f} us median "
          f"(target <= 20 us)")
    print()
    print("| measure | tracecap | detect-secrets | target |")
    print("|---|---|---|---|")
    for cat, label, target in (("known", "recall, known-format tokens", ">= 99%"),
                               ("context", "recall, assignments / URLs / headers / flags", ">= 95%"),
                               ("pii", "recall, personal data", "")):
        n, ours, ds = cats[cat]
        if n:
            print(f"| {label} ({n}) | {ours / n:.1%} | {ds / n:.1%} | {target} |")
    print(f"| clean stdlib lines changed ({len(clean)}) | {ours_clean_changed / len(clean):.3%} | "
          f"{ds_clean_changed / len(clean):.3%} | <= 0.1% |")
    for kind in sorted(pii_total):
        print(f"| personal data in labelled sentences: {kind} ({pii_total[kind]}) | "
              f"{pii_found[kind] / pii_total[kind]:.1%} | n/a | >= 95% |")
    print(f"| sentences without personal data changed ({len(clean_sentences)}) | {pii_clean_changed} | n/a | 0 |")
    print(f"| near misses changed ({len(misses)}) | {ours_miss_changed} | {ds_miss_changed} | 0 |")
    print(f"| throughput on the corpus files | {total_bytes / ours_file_time / 1e6:.1f} MB/s | "
          f"{total_bytes / ds_time / 1e6:.2f} MB/s | >= 10x ({speedup:.0f}x) |")
    print(f"| typical 200-byte command event | {latency_us:.1f} us | n/a | <= 20 us |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
