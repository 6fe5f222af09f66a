"""A policy that validates must also be applicable: `policy check` loads what the daemon would load
(key files, rules, paths), refuses values below their lower bounds, and a daemon given a policy it
cannot apply, live or at start, keeps running with capture off and says why in `status`.

Real `tracecap` processes throughout; every wait is bounded.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.daemon_harness import TRACECAP

QUIET = '[capture]\nsources = []\n'


def run(*args, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
    env.update(env_extra or {})
    return subprocess.run([TRACECAP, *args], capture_output=True, text=True, env=env, timeout=timeout)


def write(path, body):
    path.write_text(body)
    os.chmod(path, 0o644)
    return path


DEEP = "x = " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_TABLES = "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n"

UNAPPLIABLE = {
    "missing key file": ('[upload]\nurl = "http://127.0.0.1:9"\nrecipients = ["{tmp}/gone/org.pub"]\n',
                         "upload.recipients[0]"),
    "not a key file": ('[upload]\nurl = "http://127.0.0.1:9"\nrecipients = ["{tmp}/policy.toml"]\n',
                       "upload.recipients[0]"),
    "deep arrays": (DEEP, "deep"),
    "deep inline tables": (DEEP_TABLES, "deep"),
    "NUL in a root": ('[capture]\nroots = ["/tmp/a\\u0000b"]\n', "capture.roots[0]"),
    "NUL in an exclude": ('[capture]\nexclude = ["a\\u0000"]\n', "capture.exclude[0]"),
    "missing CA bundle": ('[upload]\nurl = "https://127.0.0.1:9"\nca_bundle = "{tmp}/ca.pem"\n',
                          "upload.ca_bundle"),
}

BELOW_BOUNDS = {
    "upload.interval": '[upload]\ninterval = "0s"\n',
    "upload.timeout": '[upload]\ntimeout = "0s"\n',
    "upload.backoff_max": '[upload]\nbackoff_max = "500ms"\n',
    "input.window": '[input]\nwindow = "0ms"\n',
    "input.idle_timeout": '[input]\nidle_timeout = "0s"\n',
    "upload.bundle_bytes": '[upload]\nbundle_bytes = 0\n',
    "spool.max_bytes": '[spool]\nmax_bytes = "0B"\n',
    "spool.segment_bytes": '[spool]\nsegment_bytes = 1\n',
    "shell.spool_max_bytes": '[shell]\nspool_max_bytes = 0\n',
    "redaction.max_scan_bytes": '[redaction]\nmax_scan_bytes = 0\n',
    "capture.debounce_ms": '[capture]\ndebounce_ms = 0\n',
}


@pytest.mark.parametrize("case", sorted(UNAPPLIABLE))
def test_policy_check_refuses_what_the_daemon_could_not_apply(tmp_path, case):
    body, named = UNAPPLIABLE[case]
    p = write(tmp_path / "policy.toml", body.replace("{tmp}", str(tmp_path)))
    r = run("policy", "check", str(p))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert str(p) in r.stderr and named in r.stderr


@pytest.mark.parametrize("key", sorted(BELOW_BOUNDS))
def test_policy_check_refuses_values_below_their_lower_bound(tmp_path, key):
    p = write(tmp_path / "policy.toml", BELOW_BOUNDS[key])
    r = run("policy", "check", str(p))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"key {key}:" in r.stderr and "at least" in r.stderr


def test_lowest_allowed_values_pass(tmp_path):
    p = write(tmp_path / "policy.toml", '[upload]\ninterval = "1s"\nhold = "0s"\ntimeout = "1s"\n'
                                        '[spool]\nmax_bytes = "4KiB"\nsegment_bytes = "1KiB"\n')
    r = run("policy", "check", str(p))
    assert r.returncode == 0, r.stderr


def _wait(d, pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    st = d.status()
    while not pred(st) and time.monotonic() < deadline:
        time.sleep(0.2)
        st = d.status()
    return st


def test_daemon_survives_unappliable_policies_live_and_at_start(tmp_path, daemon_factory):
    p = write(tmp_path / "policy.toml", QUIET)
    d = daemon_factory(policy=p).start()
    d.cli("opt-in")
    assert d.status()["capturing"]
    for case in ("missing key file", "deep arrays", "NUL in a root"):
        body, named = UNAPPLIABLE[case]
        write(p, QUIET + body.replace("{tmp}", str(tmp_path)) if "[capture]" not in body else
              body.replace("{tmp}", str(tmp_path)))
        d.proc.send_signal(1)  # SIGHUP: re-read now
        st = _wait(d, lambda s: not s["capturing"])
        assert d.proc.poll() is None, d.stderr()
        assert not st["capturing"] and "policy refused" in st["reason"] and named in st["reason"], st
        assert "internal error" not in d.stderr()
        write(p, QUIET)
        d.proc.send_signal(1)
        assert _wait(d, lambda s: s["capturing"])["capturing"]
    # At start: the daemon comes up with capture off, the reason in `status`, and recovers live.
    d.stop()
    write(p, UNAPPLIABLE["missing key file"][0].replace("{tmp}", str(tmp_path)))
    d2 = daemon_factory(home=d.home, policy=p).start()
    st = d2.status()
    assert not st["capturing"] and "upload.recipients[0]" in st["reason"]
    assert d2.cli("note", "x", check=False).returncode == 1
    assert "forgot" in d2.cli("forget", "--last", "1h").stdout.lower()  # privacy works regardless
    assert st["policy"]["origin"].startswith(str(p)) and "none applied" in st["policy"]["origin"]
    write(p, QUIET)
    d2.proc.send_signal(1)
    assert _wait(d2, lambda s: s["capturing"])["capturing"]
    assert d2.cli("note", "recovered").returncode == 0
    r = d2.cli("flush", "--timeout", "20")
    assert r.returncode == 0, r.stderr


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_zero_upload_interval_does_not_spin_the_daemon(tmp_path, daemon_factory):
    p = write(tmp_path / "policy.toml", QUIET + '[upload]\ninterval = "0s"\n')
    d = daemon_factory(policy=p).start()
    time.sleep(1.0)
    before = _cpu_seconds(d.proc.pid)
    time.sleep(3.0)
    used = _cpu_seconds(d.proc.pid) - before
    assert used < 0.5, f"the daemon used {used:.2f} CPU-s in 3 s"
    assert "upload.interval" in d.status()["reason"]
