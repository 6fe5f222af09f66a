"""The .deb end to end: `packaging/build-deb.sh` builds it, `dpkg -i` installs it on this machine, the
installed `/usr/bin/tracecap` runs (version, policy check of the example, a real daemon answering
`status`), files and modes are as documented, the maintainer scripts enabled nothing, and
`dpkg --purge` removes /opt/tracecap while an admin's own files in /etc/tracecap stay.

Needs root and dpkg (CI has both); skips with the reason otherwise, and never replaces a tracecap
already installed on the machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parent.parent
OPT = Path("/opt/tracecap")
BIN = Path("/usr/bin/tracecap")
ETC = Path("/etc/tracecap")
UNIT = Path("/usr/lib/systemd/user/tracecap.service")
WANTS = Path("/etc/systemd/user/default.target.wants/tracecap.service")
AUTOSTART = Path("/etc/xdg/autostart/tracecap-tray.desktop")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "installing a .deb needs root"
    for tool in ("dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (install dpkg-dev)"
    res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "tracecap"], capture_output=True, text=True)
    if "installed" in res.stdout and "not-installed" not in res.stdout:
        return "a tracecap package is already installed on this machine; not replacing it"
    if OPT.exists():
        return f"{OPT} exists and does not belong to a tracecap package; not replacing it"
    return None


def run(argv, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def user_env(tmp: Path) -> dict:
    """A user's environment with nothing of the build or test virtual environment in it."""
    home = tmp / "user"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "TRACECAP_HOME": str(home / "tracecap-state")}


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    res = run(["bash", str(REPO / "packaging/build-deb.sh")], timeout=300,
              env=dict(os.environ, TRACECAP_DEB_OUT=str(out)))
    assert res.returncode == 0, res.stderr[-3000:]
    build_s = time.monotonic() - t0
    debs = list(out.glob("*.deb"))
    assert len(debs) == 1, debs
    print(f"build-deb.sh: {build_s:.1f} s, {debs[0].stat().st_size / 2**20:.1f} MiB")
    return debs[0]


@pytest.fixture(scope="module")
def installed(deb):
    res = run(["dpkg", "-i", str(deb)], timeout=180, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    assert res.returncode == 0, res.stdout + res.stderr
    yield res
    if run(["dpkg-query", "-W", "tracecap"]).returncode == 0:
        run(["dpkg", "--purge", "tracecap"], timeout=120)


def test_package_name_and_control(deb):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert deb.name == f"tracecap_{version}_{arch}.deb"
    fields = dict(re.findall(r"^(\S+): (.*)$", run(["dpkg-deb", "-f", str(deb)]).stdout, re.M))
    assert fields["Package"] == "tracecap" and fields["Version"] == version
    assert re.fullmatch(r"python3\.\d+, libc6", fields["Depends"]), fields["Depends"]
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines()
    assert listing and all(" root/root " in line for line in listing)  # --root-owner-group
    assert not any(line.endswith("/etc/tracecap/policy.toml") for line in listing)  # personal mode


def test_installed_tracecap_version(installed, tmp_path):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    res = run([str(BIN), "--version"], env=user_env(tmp_path), cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"tracecap {version}"
    assert "tracecap: per user: `tracecap service install`" in installed.stdout


def test_installed_policy_check_of_the_example(installed, tmp_path):
    env = user_env(tmp_path)
    example = ETC / "policy.toml.example"
    if not (ETC / "org.pub").exists():  # check loads the key files it names: not installed yet
        res = run([str(BIN), "policy", "check", str(example)], env=env, cwd="/")
        assert res.returncode == 2 and "/etc/tracecap/org.pub does not exist" in res.stderr, res.stderr
    res = run([str(BIN), "keys", "generate", "--out", str(tmp_path / "org")], env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    mine = tmp_path / "policy.toml"
    mine.write_text(example.read_text().replace("/etc/tracecap/org.pub", str(tmp_path / "org" / "org.pub")))
    res = run([str(BIN), "policy", "check", str(mine)], env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout
    assert not (ETC / "policy.toml").exists()
    show = run([str(BIN), "policy", "show", "--json"], env=env, cwd="/")
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["origin"] == "built-in default (personal mode)"  # none in force


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_files_and_modes(installed):
    assert BIN.is_symlink() and os.readlink(BIN) == str(OPT / "bin/tracecap")
    for d in (OPT, ETC, UNIT.parent):
        st = d.stat()
        assert (st.st_uid, st.st_gid, _mode(d)) == (0, 0, 0o755), d
    for f in (ETC / "policy.toml.example", UNIT):
        st = f.stat()
        assert (st.st_uid, _mode(f)) == (0, 0o644), f
    assert _mode(OPT / "bin/tracecap") == 0o755
    assert (OPT / "bin/tracecap").read_text().splitlines()[0] == f"#!{OPT}/bin/python"
    unit = UNIT.read_text()
    for line in ("ExecStart=/usr/bin/tracecap daemon", "Restart=on-failure", "CPUQuota=10%",
                 "MemoryMax=256M", "Nice=10", "IOSchedulingClass=idle", "StandardError=journal",
                 "WantedBy=default.target"):
        assert line in unit.splitlines(), line
    writable = [p for p in OPT.rglob("*") if not p.is_symlink() and _mode(p) & 0o022]
    assert writable == []
    staged = run(["grep", "-rlIF", "tracecap-deb.", str(OPT)])
    assert staged.stdout == ""  # no path of the build's staging tree survives in the venv
    if (REPO / "packaging/autostart/tracecap-tray.desktop").exists():
        assert AUTOSTART.read_bytes() == (REPO / "packaging/autostart/tracecap-tray.desktop").read_bytes()
    assert not WANTS.exists()  # postinst enabled nothing


def test_installed_service_dry_run_uses_the_packaged_templates(installed, tmp_path):
    env = user_env(tmp_path)
    res = run([str(BIN), "service", "install", "--dry-run"], env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    assert "ExecStart=/usr/bin/tracecap daemon" in res.stdout
    assert f'Environment="TRACECAP_HOME={env["TRACECAP_HOME"]}"' in res.stdout
    assert not (Path(env["HOME"]) / ".config").exists()


def test_installed_daemon_runs_and_records_nothing_without_consent(installed, tmp_path):
    """The packaged venv is complete: the daemon starts, answers `status`, and stops on SIGTERM."""
    env = user_env(tmp_path)
    proc = subprocess.Popen([str(BIN), "daemon"], env=env, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            st = run([str(BIN), "status", "--json"], env=env, cwd="/", timeout=20)
            if st.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.3)
        assert st.returncode == 0, (st.stderr, proc.poll())
        status = json.loads(st.stdout)
        assert status["consent"] != "opted-in" and not status["capturing"]
        assert status["logs"].startswith(env["TRACECAP_HOME"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, proc.stderr.read()


def test_purge_removes_the_package_and_keeps_admin_and_user_files(installed, tmp_path):
    """Runs last in this module: purge, then check what is gone and what stays."""
    admin_key = ETC / "org.pub"
    user_state = Path(user_env(tmp_path)["HOME"]) / ".local/state/tracecap/keep"
    user_state.parent.mkdir(parents=True)
    user_state.write_text("a user's captured state")
    admin_key.write_text("an admin's org public key\n")
    made_wants = not WANTS.parent.exists()
    WANTS.parent.mkdir(parents=True, exist_ok=True)
    WANTS.symlink_to(UNIT)  # as `systemctl --global enable tracecap.service` would
    try:
        res = run(["dpkg", "--purge", "tracecap"], timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        for gone in (OPT, BIN, UNIT, ETC / "policy.toml.example", AUTOSTART):
            assert not os.path.lexists(gone), gone
        assert not os.path.lexists(WANTS)  # no dangling fleet-wide enablement
        assert admin_key.read_text() == "an admin's org public key\n"
        assert user_state.read_text() == "a user's captured state"
        assert run(["dpkg-query", "-W", "tracecap"]).returncode != 0
    finally:
        admin_key.unlink(missing_ok=True)
        if ETC.exists() and not any(ETC.iterdir()):
            ETC.rmdir()
        if os.path.lexists(WANTS):
            WANTS.unlink()
        if made_wants and WANTS.parent.exists() and not any(WANTS.parent.iterdir()):
            WANTS.parent.rmdir()
