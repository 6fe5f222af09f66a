"""Unified diffs: made from redacted text, applied back exactly; the bounded version cache."""
import pytest
from hypothesis import given, settings, strategies as st

from agent.sources.files_diff import (PatchError, VersionCache, apply_unified_diff, decode_text,
                                      split_lines, unified_diff)

PAIRS = [
    ("", ""), ("", "a\n"), ("a\n", ""), ("a", "a\n"), ("a\n", "a"), ("a\nb\nc\n", "a\nB\nc\n"),
    ("x\r\ny\r\n", "x\r\nz\r\n"), ("one\x0ctwo\u2028three\n", "one\x0ctwo\u2028THREE\n"),
    ("\n".join(map(str, range(100))) + "\n", "\n".join(map(str, range(3, 103)))),
    ("héllo wörld\n", "héllo wörld 🌍\n"),
]


@pytest.mark.parametrize("old,new", PAIRS)
def test_apply_inverts_diff(old, new):
    assert apply_unified_diff(old, unified_diff(old, new, "f.txt")) == new


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a\n", "b\n", "c", "\n", "d\r\n", "é\n"]), max_size=12),
       st.lists(st.sampled_from(["a\n", "b\n", "c", "\n", "e\n", "é\n"]), max_size=12))
def test_apply_inverts_diff_for_any_texts(a, b):
    old, new = "".join(a), "".join(b)
    assert apply_unified_diff(old, unified_diff(old, new, "p")) == new


def test_diff_format_is_what_patch_expects():
    d = unified_diff("a\nb", "a\nc", "src/x.py")
    assert d == ("--- a/src/x.py\n+++ b/src/x.py\n@@ -1,2 +1,2 @@\n a\n-b\n"
                 "\\ No newline at end of file\n+c\n\\ No newline at end of file\n")
    assert unified_diff("same\n", "same\n", "p") == ""


def test_a_diff_that_does_not_fit_is_refused():
    with pytest.raises(PatchError):
        apply_unified_diff("x\n", unified_diff("a\n", "b\n", "p"))


def test_split_lines_only_on_newline():
    assert split_lines("a\x0cb\u2028c\nd") == ["a\x0cb\u2028c\n", "d"]


def test_binary_is_not_text():
    assert decode_text(b"abc\0def") is None
    assert decode_text(b"\xff\xfe bad utf8") is None
    assert decode_text("ok ü".encode()) == "ok ü"


def test_version_cache_stays_within_budget_lru():
    c = VersionCache(10)
    c.put("a", "aaaa")
    c.put("b", "bbbb")
    assert c.get("a") == "aaaa"  # a is now the most recent
    c.put("c", "cccc")
    assert "b" not in c and c.get("a") == "aaaa" and c.get("c") == "cccc"
    assert c.bytes == 8
    c.put("big", "x" * 11)  # larger than the whole budget: not kept, nothing evicted
    assert "big" not in c and len(c) == 2
    c.put("u", "ü" * 5)  # counted in UTF-8 bytes: 10
    assert c.bytes <= 10 and c.get("u") == "ü" * 5
