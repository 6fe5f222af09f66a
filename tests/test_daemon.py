"""The real daemon process: lifecycle, consent gate, control socket, crash durability, policy reload.

Each test starts `tracecap daemon` in a temporary TRACECAP_HOME and drives it with the CLI as a user
would. Capture sources are off here (their own tests run them); this is the spine.
"""
from __future__ import annotations

import os
import stat
import subprocess
import threading
import time

import pytest

from tests.daemon_harness import TRACECAP, forget_window

QUIET = '[capture]\nsources = []\n'


def policy(tmp_path, body=QUIET, name="policy.toml"):
    p = tmp_path / name
    p.write_text(body)
    os.chmod(p, 0o644)
    return p


def wait_events(d, *args, until=lambda evs: bool(evs), timeout=15.0):
    """Events become visible once durable (within reorder_ms + fsync_ms); poll, bounded."""
    deadline = time.monotonic() + timeout
    evs = d.events(*args)
    while not until(evs) and time.monotonic() < deadline:
        time.sleep(0.1)
        evs = d.events(*args)
    return evs


@pytest.fixture
def quiet(tmp_path, daemon_factory):
    return daemon_factory(policy=policy(tmp_path))


def test_status_exit_3_when_not_running(quiet):
    r = quiet.cli("status", check=False)
    assert r.returncode == 3 and "not running" in r.stderr and r.stderr.count("\n") == 1


def test_nothing_is_written_before_opt_in_and_note_fails(quiet):
    quiet.start()
    st = quiet.status()
    assert st["consent"] == "pending" and not st["capturing"]
    r = quiet.cli("note", "hello", check=False)
    assert r.returncode == 1 and "not opted in" in r.stderr
    assert quiet.events() == []
    quiet.cli("opt-in")
    assert quiet.status()["capturing"]
    quiet.cli("note", "task: fix the parser")
    kinds = [e["kind"] for e in quiet.events()]
    assert kinds == ["agent.resume", "user.note"]


def test_event_envelope_matches_contract(quiet):
    quiet.start()
    quiet.cli("opt-in")
    quiet.cli("note", "x")
    e = quiet.events("--kind", "user.note")[0]
    assert list(e) == ["v", "seq", "ts", "kind", "source", "session", "data"]
    assert e["v"] == 1 and e["data"] == {"text": "x"} and abs(e["ts"] - time.time_ns()) < 60e9


def test_second_daemon_exits_1(quiet, daemon_factory):
    quiet.start()
    r = subprocess.run([TRACECAP, "daemon"], env=quiet.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "already running" in r.stderr and "Traceback" not in r.stderr


def test_sigterm_stops_cleanly_with_agent_stop(quiet):
    quiet.start()
    quiet.cli("opt-in")
    assert quiet.stop() == 0
    kinds = [e["kind"] for e in quiet.events()]
    assert kinds[-1] == "agent.stop"
    assert not quiet.socket.exists()


def test_control_socket_permissions(quiet):
    quiet.start()
    assert stat.S_IMODE(quiet.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(quiet.socket.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(quiet.home.stat().st_mode) == 0o700
    for d in ("config", "spool", "outbox", "keys", "logs", "run"):
        assert stat.S_IMODE((quiet.home / d).stat().st_mode) == 0o700, d


def test_control_socket_refuses_other_users(quiet):
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    quiet.start()
    os.chmod(quiet.socket, 0o666)  # even with the file mode opened up, peer credentials decide
    for d in [quiet.socket.parent, *quiet.socket.parent.parents]:
        if str(d) in ("/", "/tmp"):
            break
        os.chmod(d, d.stat().st_mode | 0o011)  # let the other uid reach the socket at all
    code = ("import socket,os,sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "s.sendall(b'{\"op\":\"opt-in\"}\\n'); print(s.recv(4096).decode())\n")
    r = subprocess.run([os.sys.executable, "-c", code, str(quiet.socket)], capture_output=True, text=True,
                       timeout=30)
    assert '"ok":false' in r.stdout and "only the user" in r.stdout
    assert quiet.status()["consent"] == "pending"


def test_stale_socket_and_kill9_leave_no_stale_lock(quiet):
    quiet.start()
    quiet.kill9()
    assert quiet.socket.exists()  # left behind by kill -9
    quiet.start()  # the flock died with the process; the stale socket is replaced
    assert quiet.status()["pid"] == quiet.proc.pid


def test_consent_changes_without_daemon_persist(quiet):
    r = quiet.cli("opt-in")
    assert "saved" in r.stdout
    quiet.start()
    assert quiet.status()["capturing"]
    quiet.cli("opt-out")
    assert not quiet.status()["capturing"]
    quiet.stop()
    quiet.start()
    assert quiet.status()["consent"] == "opted-out"


def test_pause_and_resume_markers_and_expiry(quiet):
    quiet.start()
    quiet.cli("opt-in")
    # Long enough that the two CLI calls below (each a new process) run inside the pause also on
    # a loaded machine; the expiry is then waited for.
    quiet.cli("pause", "4s")
    st = quiet.status()
    assert not st["capturing"] and st["paused_until"]
    assert quiet.cli("note", "while paused", check=False).returncode == 1
    deadline = time.monotonic() + 10
    while not quiet.status()["capturing"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert quiet.status()["capturing"]
    kinds = [e["kind"] for e in wait_events(quiet, until=lambda evs: len(evs) >= 3)]
    assert kinds == ["agent.resume", "agent.pause", "agent.resume"]


def test_disabled_policy_refuses_opt_in(tmp_path, daemon_factory):
    d = daemon_factory(policy=policy(tmp_path, QUIET + '[consent]\nmode = "disabled"\n'))
    d.start()
    r = d.cli("opt-in", check=False)
    assert r.returncode == 2 and "disabled" in r.stderr
    assert not d.status()["capturing"] and d.events() == []


def test_invalid_policy_at_start_keeps_running_with_capture_off(tmp_path, daemon_factory):
    d = daemon_factory(policy=policy(tmp_path, "[capture]\nrootz = []\n"))
    d.start()
    d.cli("opt-in")
    st = d.status()
    assert not st["capturing"] and "capture.rootz" in st["reason"] and "Traceback" not in d.stderr()


def test_unwritable_state_dir_is_one_sentence(tmp_path):
    if os.getuid() == 0:
        target = "/proc/tracecap-cannot-exist"
    else:
        target = str(tmp_path / "ro" / "home")
        (tmp_path / "ro").mkdir(mode=0o500)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
    env["TRACECAP_HOME"] = target
    r = subprocess.run([TRACECAP, "daemon"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "TRACECAP_HOME" in r.stderr and "Traceback" not in r.stderr


def test_policy_change_applied_live_and_recorded(tmp_path, daemon_factory):
    p = policy(tmp_path)
    d = daemon_factory(policy=p)
    d.start()
    d.cli("opt-in")
    p.write_text(QUIET + '[redaction]\ncontent = "metadata"\n')
    deadline = time.monotonic() + 10
    while d.status()["content"] != "metadata" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.status()["content"] == "metadata"
    ev = wait_events(d, "--kind", "agent.policy")
    assert ev and ev[-1]["data"]["digest"] == d.status()["policy"]["digest"]
    # A policy that stops being safe (writable by others) turns capture off and says why.
    os.chmod(p, 0o666)
    p.write_text(QUIET + '[redaction]\ncontent = "full"\n')
    deadline = time.monotonic() + 10
    while d.status()["capturing"] and time.monotonic() < deadline:
        time.sleep(0.2)
    st = d.status()
    assert not st["capturing"] and "writable by other users" in st["reason"]
    os.chmod(p, 0o644)
    deadline = time.monotonic() + 10
    while not d.status()["capturing"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.status()["capturing"]


def test_kill9_during_concurrent_notes_loses_no_acknowledged_note(tmp_path, daemon_factory):
    """Several processes write notes; the daemon is kill -9'd mid-stream and restarted. Every note
    whose `tracecap note` exited 0 is in `tracecap log --json` exactly once, seq strictly increasing."""
    d = daemon_factory(policy=policy(tmp_path))
    d.start()
    d.cli("opt-in")
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            text = f"w{w}-{i}"
            r = subprocess.run([TRACECAP, "note", text], env=d.env, capture_output=True, text=True,
                               timeout=30)
            if r.returncode == 0:
                with lock:
                    acked.append(text)
            i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    def acked_reach(n: int, within: float) -> None:  # by progress, not by the clock: a loaded
        deadline = time.monotonic() + within       # machine acknowledges fewer notes a second
        while time.monotonic() < deadline:
            with lock:
                if len(acked) >= n:
                    return
            time.sleep(0.05)

    for t in threads:
        t.start()
    acked_reach(12, 30)
    d.kill9()
    time.sleep(0.5)
    with lock:
        before = len(acked)
    d.start()
    acked_reach(before + 10, 30)
    stop.set()
    for t in threads:
        t.join(60)
    d.stop()
    events = d.events()
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    notes = [e["data"]["text"] for e in events if e["kind"] == "user.note"]
    assert len(acked) > 20
    for text in acked:
        assert notes.count(text) == 1, text


def test_forget_removes_recent_events_with_and_without_daemon(tmp_path, daemon_factory):
    p = policy(tmp_path, QUIET + '[upload]\nhold = "1h"\n')
    d = daemon_factory(policy=p)
    d.start()
    d.cli("opt-in")
    d.cli("note", "old")
    time.sleep(2.5)
    began = time.monotonic()
    d.cli("note", "secret plan A")
    d.cli("note", "secret plan B")
    d.cli("flush", check=False)  # seals a bundle that the hold keeps in the outbox
    last = forget_window(began)
    r = d.cli("forget", "--last", f"{last}s")
    assert "forgot 2 events" in r.stdout
    notes = [e["data"]["text"] for e in d.events("--kind", "user.note")]
    assert notes == ["old"]
    fg = d.events("--kind", "agent.forget")[-1]["data"]
    assert fg["count"] == 2 and fg["to"] - fg["from"] == last * 10**9
    d.stop()
    r = d.cli("forget", "--last", "1h")  # no daemon: works on the state directly
    assert "forgot" in r.stdout
    assert [e["data"]["text"] for e in d.events("--kind", "user.note")] == []
