"""The policy cannot be swapped between its check and its read, nor kept where others could swap it.

A real second local user (useradd, removed afterwards) runs a rename-swap loop in the policy's
directory, putting its own policy (consent opt-out: capture without asking) in place and the
admin's back, thousands of times a second. Loading must never yield the foreign policy; the policy
is refused outright because others can write its directory (sticky or not), and a symbolic link
or a directory another user owns are refused too. Bounded: the swap loop runs until the test is
done with it, at most 30 s.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agent.policy import PolicyError, load_policy_file
from tests.daemon_harness import TRACECAP, DaemonProcess
from tests.local_users import PYTHON, other_user, popen_as, run_as

GOOD = '[capture]\nsources = []\n[consent]\nmode = "opt-in"\n'
FOREIGN = '[capture]\nsources = []\n[consent]\nmode = "opt-out"\n'

SWAP = r'''
import os, sys, time
d = sys.argv[1]
p, spare, foreign = (os.path.join(d, n) for n in ("policy.toml", ".admin.toml", "foreign.toml"))
open(os.path.join(d, "swapping"), "w").close()
end = time.monotonic() + float(sys.argv[2])
done = os.path.join(d, "done")
while time.monotonic() < end and not os.path.exists(done):
    try:
        os.rename(p, spare)
        os.rename(foreign, p)
        os.rename(p, foreign)
        os.rename(spare, p)
    except OSError:
        pass
'''


@pytest.fixture
def mallory():
    with other_user("tcswp") as u:
        yield u


@pytest.fixture
def shared():
    d = Path(tempfile.mkdtemp(prefix="tracecap-policy-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def test_rename_swap_loop_never_gets_a_foreign_policy_applied(shared, mallory, tmp_path):
    name, uid, gid = mallory
    if run_as(name, [PYTHON, "-c", "pass"]).returncode != 0:
        pytest.skip(f"{PYTHON} cannot be run by a second user here")
    os.chmod(shared, 0o777)  # a directory others can write
    policy = _write(shared / "policy.toml", GOOD)
    foreign = _write(shared / "foreign.toml", FOREIGN)
    os.chown(foreign, uid, gid)
    foreign_digest = hashlib.sha256(FOREIGN.encode()).hexdigest()
    script = _write(shared / "swap.py", SWAP)
    d = DaemonProcess(tmp_path / "home", policy=policy)
    swapper = popen_as(name, [PYTHON, str(script), str(shared), "30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (shared / "swapping").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (shared / "swapping").exists(), "the swap loop did not start"
        # The loader, as the daemon runs it, thousands of times against the loop.
        applied = refused = 0
        reasons = set()
        end = time.monotonic() + 4
        while time.monotonic() < end:
            try:
                pol = load_policy_file(policy)
            except (PolicyError, OSError) as exc:  # OSError: how a racy loader failed
                refused += 1
                reasons.add(str(exc))
                continue
            applied += pol.digest == foreign_digest
        assert applied == 0, f"a foreign policy was loaded {applied} times"
        assert refused > 100 and any("which other users can write" in r for r in reasons), sorted(reasons)[:3]
        # The daemon, reloading on SIGHUP while the loop runs, never runs the foreign policy.
        # (However slowly a loaded machine starts the daemon: the loop runs until ten reloads are seen.)
        d.start()
        seen = []
        while swapper.poll() is None and len(seen) < 10:
            d.proc.send_signal(1)
            st = d.status()
            seen.append((st["policy"]["digest"], st["capturing"], st["reason"]))
            time.sleep(0.2)
        (shared / "done").touch()
        assert seen and all(dig != foreign_digest and not cap for dig, cap, _ in seen)
        assert len(seen) > 5 and all("policy refused" in reason for _, _, reason in seen), seen[-3:]
        assert any("which other users can write" in reason for _, _, reason in seen), seen[-3:]
    finally:
        try:
            os.killpg(swapper.pid, 9)  # runuser and the loop it runs
        except ProcessLookupError:
            pass
        swapper.wait(10)
        d.stop()


def test_sticky_directory_is_refused_saying_why(shared, tmp_path):
    os.chmod(shared, 0o1777)
    policy = _write(shared / "policy.toml", GOOD)
    d = DaemonProcess(tmp_path / "home", policy=policy).start()
    try:
        reason = d.status()["reason"]
        assert "other users can write" in reason and "sticky bit" in reason and "/etc/tracecap" in reason
    finally:
        d.stop()
    # `policy check` of the policy in force refuses it the same way; a draft elsewhere is content only.
    r = d.cli("policy", "check", str(policy), check=False)
    assert r.returncode == 2 and "sticky bit" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    env = {k: v for k, v in d.env.items() if k != "TRACECAP_POLICY"}
    r = subprocess.run([TRACECAP, "policy", "check", str(policy)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_symlink_and_foreign_directory_are_refused(shared, mallory, tmp_path):
    name, uid, _ = mallory
    os.chmod(shared, 0o755)
    real = _write(shared / "real.toml", GOOD)
    link = shared / "policy.toml"
    link.symlink_to(real)
    with pytest.raises(PolicyError, match="symbolic link"):
        load_policy_file(link)
    theirs = shared / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, uid, uid)  # as if they had made it
    assert run_as(name, ["test", "-O", str(theirs)]).returncode == 0
    inside = _write(theirs / "policy.toml", GOOD)  # root's own file, in a directory they own
    with pytest.raises(PolicyError, match=f"owned by uid {uid}"):
        load_policy_file(inside)
    fifo = shared / "fifo.toml"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy_file(fifo)
    assert time.monotonic() - t0 < 2


def test_directory_is_judged_even_when_the_file_is_missing_at_that_instant(shared):
    """A swap loop renames the policy away and back: the directory check must not depend on the
    file being there when it runs, or a loader that found it missing then opened it a moment later
    would read a policy from a directory others can write without ever checking that directory."""
    os.chmod(shared, 0o777)
    with pytest.raises(PolicyError, match="other users can write"):
        load_policy_file(shared / "policy.toml")


def test_a_missing_policy_in_a_directory_others_can_write_is_no_default(shared):
    """The built-in default stands in for a policy file that is not there; not where another user
    could have renamed it away a moment before the look."""
    from agent.policy import load_effective_policy

    os.chmod(shared, 0o777)
    with pytest.raises(PolicyError, match="other users can write"):
        load_effective_policy({"TRACECAP_POLICY": str(shared / "policy.toml")})
