"""The issue's targets on the generated corpus: recall per detector and clean lines changed."""
from __future__ import annotations

import collections
import time

import pytest

from redaction import Redactor
from tests.redaction_corpus.generate import near_misses, positive_samples, stdlib_lines

KEY = b"k" * 32
RECALL_TARGET = {"known": 0.99, "context": 0.95, "pii": 0.95}


@pytest.fixture(scope="module")
def red():
    return Redactor.from_policy({"ip_addresses": True, "phone_numbers": True}, hmac_key=KEY,
                                home="/home/alice", username="alice")


def test_recall_per_detector_meets_the_targets(red):
    hit, total, cats = collections.Counter(), collections.Counter(), {}
    for s in positive_samples():
        out = red.redact_text(s.text).text
        total[s.detector] += 1
        cats[s.detector] = s.category
        hit[s.detector] += all(secret not in out for secret in s.secrets)
    assert len(total) >= 40
    low = {d: f"{hit[d]}/{total[d]}" for d in total if hit[d] / total[d] < RECALL_TARGET[cats[d]]}
    assert not low, f"detectors under their recall target: {low}"


def test_near_misses_come_through_unchanged(red):
    changed = [line for line in near_misses() if red.redact_text(line).text != line]
    assert changed == []


def test_clean_standard_library_lines_are_almost_never_changed(red):
    lines = stdlib_lines()
    assert len(lines) > 20000
    changed = [line for line in lines if red.redact_text(line).text != line]
    assert len(changed) / len(lines) <= 0.005, changed[:20]


def test_a_typical_command_event_is_fast(red):
    data = {"id": "7f3a", "cmd": "cd ~/src/project && python -m pytest tests/test_parser.py -k 'not slow' -x "
            "--maxfail=3 && git commit -am 'fix the parser for nested brackets'", "cwd": "/home/alice/src/project",
            "shell": "bash", "actor": "human"}
    for _ in range(200):
        red.redact_event("shell.start", data)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        red.redact_event("shell.start", data)
    per_event = (time.perf_counter() - t0) / n
    # The target is 20 us (bench/redaction.py measures it); the bound here leaves room for a busy CI host.
    assert per_event < 200e-6
