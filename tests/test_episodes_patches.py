"""Rebuilding working trees from repo.state and file.save diffs, and the diffs between them.

Random edit histories are replayed through `TreeTrack`; the base patch (HEAD to the start) and the
patch (start to end) must turn HEAD's text into the start's and the start's into the end's, checked
with the project's diff applier for many histories and with real `git apply` for some."""
from __future__ import annotations

import random
import subprocess

import pytest

from agent.sources.files_diff import apply_unified_diff, unified_diff
from episodes.patches import ChainBroken, TreeTrack, Unrenderable, diff_trees


def _mutate(lines: list[str], rnd: random.Random) -> list[str]:
    lines = list(lines)
    for _ in range(rnd.randint(1, 6)):
        i = rnd.randint(0, len(lines))
        op = rnd.random()
        if op < 0.4 and lines:
            lines[min(i, len(lines) - 1)] = f"changed {rnd.randint(0, 999)}\n"
        elif op < 0.7:
            lines.insert(i, f"new {rnd.randint(0, 999)}\n")
        elif lines:
            del lines[min(i, len(lines) - 1)]
    return lines


def _history(seed: int):
    """(HEAD text, repo.state diff, [save diffs], index of the start, texts after each step)."""
    rnd = random.Random(seed)
    head = [f"line {i}\n" for i in range(rnd.randint(0, 200))]
    if head and rnd.random() < 0.3:
        head[-1] = head[-1].rstrip("\n")
    cur = _mutate(head, rnd) if rnd.random() < 0.6 else head
    texts = ["".join(cur)]
    diffs = []
    for _ in range(rnd.randint(1, 6)):
        new = _mutate(cur, rnd)
        diffs.append(unified_diff("".join(cur), "".join(new), "f.py"))
        texts.append("".join(new))
        cur = new
    state = unified_diff("".join(head), texts[0], "f.py")
    return "".join(head), state, diffs, rnd.randint(0, len(diffs)), texts


def _replay(state: str, diffs: list[str], start: int):
    t = TreeTrack()
    t.repo_state(state, None)
    at_start = t.snapshot()
    for k, d in enumerate(diffs):
        t.save({"path": "f.py", "op": "modify", "base": "previous", "diff": d})
        if k + 1 == start:
            at_start = t.snapshot()
    return at_start, t.snapshot()


@pytest.mark.parametrize("seed", range(150))
def test_base_patch_and_patch_rebuild_the_texts(seed):
    head, state, diffs, start, texts = _history(seed)
    at_start, at_end = _replay(state, diffs, start)
    base = diff_trees(None, at_start).get("f.py", "")
    patch = diff_trees(at_start, at_end).get("f.py", "")
    assert apply_unified_diff(head, base) == texts[start]
    assert apply_unified_diff(texts[start], patch) == texts[-1]


def test_git_apply_takes_them(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for seed in range(8):
        head, state, diffs, start, texts = _history(1000 + seed)
        (tmp_path / "f.py").write_text(head)
        at_start, at_end = _replay(state, diffs, start)
        for patch, want in ((diff_trees(None, at_start).get("f.py", ""), texts[start]),
                            (diff_trees(at_start, at_end).get("f.py", ""), texts[-1])):
            if patch:
                r = subprocess.run(["git", "apply", "-"], input=patch, cwd=tmp_path, capture_output=True, text=True)
                assert r.returncode == 0, (r.stderr, patch)
            assert (tmp_path / "f.py").read_text() == want


def test_new_deleted_and_moved_files():
    t = TreeTrack()
    t.repo_state("diff --git a/gone.py b/gone.py\ndeleted file mode 100644\n--- a/gone.py\n+++ /dev/null\n"
                 "@@ -1,2 +0,0 @@\n-a\n-b\n", None)
    start = t.snapshot()
    t.save({"path": "new.py", "op": "create", "base": "empty", "diff": unified_diff("", "x = 1\n", "new.py")})
    t.save({"path": "moved.py", "op": "move", "from": "new.py", "base": "previous",
            "diff": unified_diff("x = 1\n", "x = 2\n", "moved.py")})
    end = t.snapshot()
    assert diff_trees(None, start) == {"gone.py": "diff --git a/gone.py b/gone.py\ndeleted file mode 100644\n"
                                                  "--- a/gone.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n"}
    assert diff_trees(start, end) == {"moved.py": "diff --git a/moved.py b/moved.py\nnew file mode 100644\n"
                                                  "--- /dev/null\n+++ b/moved.py\n@@ -0,0 +1,1 @@\n+x = 2\n"}


def test_deleting_a_file_never_shown():
    t = TreeTrack()
    t.repo_state("", None)
    t.save({"path": "scratch.py", "op": "delete", "size": 0})  # untracked, made before the state
    assert diff_trees(None, t.snapshot()) == {}
    t.save({"path": "a.py", "op": "modify", "base": "previous", "diff": "--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n-x\n+y\n z\n"})
    start = t.snapshot()
    t.save({"path": "a.py", "op": "delete", "size": 0})  # tracked, its whole text never shown
    with pytest.raises(Unrenderable):
        diff_trees(start, t.snapshot())


@pytest.mark.parametrize("save, reason", [
    ({"path": "a.py", "op": "modify", "chain_break": "overflow_rescan"}, "overflow_rescan"),
    ({"path": "a.py", "op": "modify", "size": 10}, "no_diff"),
    ({"path": "a.py", "op": "modify", "base": "previous", "diff": "--- a/a.py\n+++ b/a.py\n@@ -1,1 +1,1 @@\n-x\n+y\n"},
     None),
])
def test_breaks_are_reported_with_their_reason(save, reason):
    t = TreeTrack()
    t.repo_state("", None)
    t.save(save)
    if reason is None:
        assert diff_trees(None, t.snapshot())["a.py"].endswith("-x\n+y\n")
    else:
        with pytest.raises(ChainBroken) as exc:
            diff_trees(None, t.snapshot())
        assert exc.value.reason == reason


def test_a_diff_that_contradicts_what_was_shown_breaks_the_chain():
    t = TreeTrack()
    t.repo_state("", None)
    t.save({"path": "a.py", "op": "modify", "base": "previous", "diff": "--- a/a.py\n+++ b/a.py\n@@ -1,1 +1,1 @@\n-x\n+y\n"})
    t.save({"path": "a.py", "op": "modify", "base": "previous", "diff": "--- a/a.py\n+++ b/a.py\n@@ -1,1 +1,1 @@\n-x\n+z\n"})
    with pytest.raises(ChainBroken) as exc:
        diff_trees(None, t.snapshot())
    assert exc.value.reason == "diff_mismatch"


def test_a_save_against_head_restarts_that_file():
    t = TreeTrack()
    t.repo_state("diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n-x\n+y\n z\n", None)
    start = t.snapshot()
    t.save({"path": "a.py", "op": "modify", "base": "head", "diff": "--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n x\n-z\n+w\n"})
    assert diff_trees(start, t.snapshot())["a.py"].endswith("@@ -1,2 +1,2 @@\n-y\n-z\n+x\n+w\n")
