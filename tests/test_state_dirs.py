"""State directories another local user made first, or can write or read, are refused at start.

A real second user (created here with useradd, removed afterwards) makes the directories in a
world-writable, sticky directory as an attacker would in /tmp; the real `tracecap daemon` is then
started for root (the user under attack here) and must exit 1 with one sentence, before it writes
anything there. Bounded: each daemon start is given 20 s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.daemon_harness import TRACECAP
from tests.local_users import other_user, run_as


@pytest.fixture
def shared():
    """A /tmp-like directory (mode 1777) both users can reach."""
    d = Path(tempfile.mkdtemp(prefix="tracecap-shared-", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mallory():
    with other_user("tcmal") as u:
        yield u


def daemon_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACECAP_", "XDG_"))}
    pol = tmp_path / "policy.toml"
    pol.write_text('[capture]\nsources = []\n')
    os.chmod(pol, 0o644)
    env["TRACECAP_POLICY"] = str(pol)
    env.update(extra)
    return env


def start_refused(env: dict) -> subprocess.CompletedProcess:
    """`tracecap daemon` must exit by itself; one that keeps running is a failure (killed)."""
    proc = subprocess.Popen([TRACECAP, "daemon"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"the daemon started in a state directory it should have refused: {err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_one_sentence(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_tracecap_home_made_first_by_another_user_is_refused(tmp_path, shared, mallory):
    name, uid, _ = mallory
    home = shared / "tracecap-home"
    assert run_as(name, ["mkdir", "-m", "0777", str(home)]).returncode == 0
    assert run_as(name, ["mkdir", "-m", "0777", str(home / "spool")]).returncode == 0
    r = start_refused(daemon_env(tmp_path, TRACECAP_HOME=str(home)))
    assert_one_sentence(r, str(home), f"uid {uid}")
    assert sorted(p.name for p in home.iterdir()) == ["spool"]  # nothing of ours written there
    # The CLI's own use of state (opt-in without a daemon) refuses it the same way.
    r = subprocess.run([TRACECAP, "opt-in"], env=daemon_env(tmp_path, TRACECAP_HOME=str(home)),
                       capture_output=True, text=True, timeout=30)
    assert_one_sentence(r, f"uid {uid}")


def test_runtime_dir_made_first_by_another_user_is_refused(tmp_path, shared, mallory):
    """No TRACECAP_HOME: platformdirs' directories, the runtime one in a shared XDG_RUNTIME_DIR."""
    name, uid, _ = mallory
    assert run_as(name, ["mkdir", "-m", "0700", str(shared / "tracecap")]).returncode == 0
    mine = tmp_path / "me"
    env = daemon_env(tmp_path, HOME=str(mine), XDG_STATE_HOME=str(mine / "state"),
                     XDG_CONFIG_HOME=str(mine / "config"), XDG_RUNTIME_DIR=str(shared))
    r = start_refused(env)
    assert_one_sentence(r, str(shared / "tracecap"), f"uid {uid}")


@pytest.mark.parametrize("sub,mode,why", [("spool", 0o770, "written by other users"),
                                          ("outbox", 0o703, "written by other users"),
                                          ("keys", 0o755, "read by other users"),
                                          ("run", 0o750, "read by other users")])
def test_own_state_directories_open_to_others_are_refused(tmp_path, sub, mode, why):
    home = tmp_path / "home"
    (home / sub).mkdir(parents=True)
    os.chmod(home / sub, mode)
    r = start_refused(daemon_env(tmp_path, TRACECAP_HOME=str(home)))
    assert_one_sentence(r, str(home / sub), why, "chmod 700")


def test_a_symlink_where_a_state_directory_belongs_is_refused(tmp_path, shared, mallory):
    name, _, _ = mallory
    elsewhere = shared / "theirs"
    assert run_as(name, ["mkdir", "-m", "0777", str(elsewhere)]).returncode == 0
    home = tmp_path / "home"
    home.mkdir()
    (home / "outbox").symlink_to(elsewhere)
    r = start_refused(daemon_env(tmp_path, TRACECAP_HOME=str(home)))
    assert_one_sentence(r, str(home / "outbox"), "symbolic link")


def test_a_fresh_home_readable_by_others_is_made_private_and_used(tmp_path, daemon_factory):
    home = tmp_path / "fresh"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    pol = tmp_path / "policy.toml"
    pol.write_text('[capture]\nsources = []\n')
    os.chmod(pol, 0o644)
    d = daemon_factory(home=home, policy=pol).start()
    assert d.status()["policy"]["error"] is None
    assert (home.stat().st_mode & 0o777) == 0o700
    for sub in ("spool", "outbox", "keys", "run", "config"):
        assert ((home / sub).stat().st_mode & 0o777) == 0o700
