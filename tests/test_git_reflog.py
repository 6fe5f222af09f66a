"""Reflog lines to git events: the table of what each log's messages mean."""
import pytest

from agent.sources.git_reflog import (ZERO_SHA, ReflogEntry, branch_after, classify,
                                      commit_message, parse_reflog)

A, B = "a" * 40, "b" * 40


def e(msg, old=A, new=B):
    return ReflogEntry(old, new, 1700000000, msg)


@pytest.mark.parametrize("log,msg,kind,action", [
    ("HEAD", "commit: fix parser", "git.commit", "commit"),
    ("HEAD", "commit (initial): start", "git.commit", "initial"),
    ("HEAD", "commit (amend): fix parser", "git.commit", "amend"),
    ("HEAD", "commit (merge): Merge branch 'x'", "git.commit", "merge"),
    ("HEAD", "cherry-pick: port fix", "git.commit", "cherry-pick"),
    ("HEAD", "revert: Revert \"x\"", "git.commit", "revert"),
    ("HEAD", "checkout: moving from main to topic", "git.checkout", None),
    ("HEAD", "reset: moving to HEAD~1", "git.ref", "reset"),
    ("HEAD", "merge topic: Fast-forward", "git.ref", "merge"),
    ("HEAD", "merge topic: Merge made by the 'ort' strategy.", "git.ref", "merge"),
    ("HEAD", "pull: Fast-forward", "git.ref", "pull"),
    ("HEAD", "rebase (start): checkout main", None, None),
    ("HEAD", "rebase (pick): x", None, None),
    ("HEAD", "rebase -i (finish): returning to refs/heads/topic", None, None),
    ("HEAD", "pull --rebase (pick): x", None, None),
    ("refs/heads/x", "branch: Created from main", "git.ref", "branch"),
    ("refs/heads/x", "Branch: renamed refs/heads/a to refs/heads/x", "git.ref", "rename"),
    ("refs/heads/x", "branch: Reset to HEAD~2", "git.ref", "reset"),
    ("refs/heads/x", "rebase (finish): refs/heads/x onto " + A, "git.ref", "rebase"),
    ("refs/heads/x", "rebase -i (finish): refs/heads/x onto " + A, "git.ref", "rebase"),
    ("refs/heads/x", "pull --rebase (finish): refs/heads/x onto " + A, "git.ref", "pull"),
    ("refs/remotes/origin/x", "fetch: fast-forward", "git.ref", "fetch"),
    ("refs/remotes/origin/x", "update by push", "git.ref", "push"),
    ("refs/stash", "WIP on main: 1234 msg", "git.ref", "stash"),
    ("refs/heads/x", "", "git.ref", "update"),
    ("refs/heads/x", "commit: fix parser", None, None),
    ("refs/heads/x", "commit (amend): fix", None, None),
    ("refs/heads/x", "merge topic: Fast-forward", None, None),
    ("refs/heads/x", "reset: moving to HEAD~1", None, None),
    ("refs/heads/x", "pull: Fast-forward", None, None),
    ("refs/heads/x", "cherry-pick: x", None, None),
    ("refs/heads/x", "rebase (pick): x", None, None),
])
def test_classify(log, msg, kind, action):
    found = classify(log, e(msg), "main")
    if kind is None:
        assert found is None
        return
    assert found[0] == kind
    if action is not None:
        assert found[1]["action"] == action


def test_commit_and_checkout_data():
    kind, data = classify("HEAD", e("commit (initial): start", old=ZERO_SHA), "main")
    assert data == {"sha": B, "branch": "main", "message": "start", "parent": None,
                    "action": "initial"}
    kind, data = classify("HEAD", e("checkout: moving from main to v1.0"), "main")
    assert data == {"from": "main", "to": "v1.0", "old": A, "new": B}
    kind, data = classify("HEAD", e("reset: moving to HEAD~1"), None)
    assert data["ref"] == "HEAD"


def test_parse_keeps_partial_line_for_later():
    line = f"{A} {B} T <t@example.com> 1700000000 +0100\tcommit: x\n".encode()
    buf = line + b"garbage line\n" + line[:30]
    entries, used = parse_reflog(buf)
    assert entries == [ReflogEntry(A, B, 1700000000, "commit: x")]
    assert used == len(line) + len(b"garbage line\n")


def test_branch_tracking():
    branches = {"topic", "main"}
    assert branch_after(e("checkout: moving from main to topic"), "main", branches.__contains__) == "topic"
    assert branch_after(e("checkout: moving from main to " + A), "main", branches.__contains__) is None
    assert branch_after(e("rebase (start): checkout main"), "topic", branches.__contains__) is None
    assert branch_after(e("rebase (finish): returning to refs/heads/topic"), None,
                        branches.__contains__) == "topic"
    assert branch_after(e("commit: x"), "main", branches.__contains__) == "main"


def test_commit_message_from_object():
    obj = b"tree " + A.encode() + b"\nauthor T <t> 1 +0000\n\nSubject\n\nBody line\n"
    assert commit_message(obj) == "Subject\n\nBody line"
