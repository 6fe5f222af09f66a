"""`tracecap service`: the renderers and plans for each platform (tables), the `--dry-run` output of
the real CLI, and a real install against `systemctl --user` when a user manager is reachable (else
the one-sentence failure, exit 1, and nothing written)."""
from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent import service
from agent.errors import UsageError
from agent.service import Host, RemoveFile, RunCommand, WriteFile

TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
REPO = Path(__file__).resolve().parent.parent


def make_host(platform: str, tmp: Path, argv=("/usr/bin/tracecap", "daemon"), env=None) -> Host:
    return Host(platform=platform, home=tmp / "home", user="ACME\\ada" if platform == "windows" else "ada",
                uid=1000, daemon_argv=tuple(argv), env=dict(env or {}), config_home=tmp / "home/.config",
                state_config=tmp / "state/config", logs=tmp / "state/logs")


def unit_lines(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]


# ------------------------------------------------------------------------------------ systemd
@pytest.mark.parametrize("argv, exec_start", [
    (["/usr/bin/tracecap", "daemon"], "/usr/bin/tracecap daemon"),
    (["/home/ada/my tools/bin/tracecap", "daemon"], '"/home/ada/my tools/bin/tracecap" daemon'),
    (["/opt/100%/tracecap", "daemon"], "/opt/100%%/tracecap daemon"),
    # systemd expands $VAR in arguments but never in the executable's path
    (["/opt/x$y/tracecap", "daemon", "$HOME"], "/opt/x$y/tracecap daemon $$HOME"),
    (["/usr/bin/python3", "-m", "agent.cli", "daemon"], "/usr/bin/python3 -m agent.cli daemon"),
    (["/usr/bin/tracecap", 'say "hi"', ""], '/usr/bin/tracecap "say \\"hi\\"" ""'),
])
def test_systemd_exec_start(argv, exec_start):
    assert service.systemd_exec_start(argv) == exec_start


@pytest.mark.parametrize("exe", ["/home/ada/it's/tracecap", '/opt/a"b/tracecap', "/opt/a\\b/tracecap",
                                 "/opt/a\nb/tracecap"])
def test_systemd_refuses_paths_it_cannot_run(exe):
    with pytest.raises(UsageError, match="reinstall tracecap under a plain path"):
        service.systemd_exec_start([exe, "daemon"])


@pytest.mark.parametrize("env, lines", [
    ({}, []),
    ({"TRACECAP_HOME": "/srv/trace"}, ['"TRACECAP_HOME=/srv/trace"']),
    ({"TRACECAP_HOME": "/srv/my trace %h"}, ['"TRACECAP_HOME=/srv/my trace %%h"']),
    ({"TRACECAP_HOME": 'C:\\x"y'}, ['"TRACECAP_HOME=C:\\\\x\\"y"']),
])
def test_systemd_unit_environment(env, lines):
    unit = service.render_systemd_unit(["/usr/bin/tracecap", "daemon"], env)
    assert unit_lines(unit, "Environment") == lines
    assert "$environment" not in unit and "\n\n\n" not in unit


def test_systemd_unit_directives():
    unit = service.render_systemd_unit(["/usr/bin/tracecap", "daemon"], {})
    want = {"ExecStart": "/usr/bin/tracecap daemon", "Restart": "on-failure", "RestartSec": "5s",
            "CPUQuota": "10%", "MemoryMax": "256M", "Nice": "10", "IOSchedulingClass": "idle",
            "StandardError": "journal", "StandardOutput": "journal", "WantedBy": "default.target",
            "Type": "simple"}
    for key, value in want.items():
        assert unit_lines(unit, key) == [value], key
    sections = [line for line in unit.splitlines() if line.startswith("[")]
    assert sections == ["[Unit]", "[Service]", "[Install]"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("dirname", ["plain", "with space", "100%", "x$y"])
def test_systemd_analyze_accepts_the_unit(tmp_path, dirname):
    """systemd's own parser: the unit is valid and ExecStart names the executable that exists."""
    exe = tmp_path / dirname / "tracecap"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "tracecap.service"
    unit.write_text(service.render_systemd_unit([str(exe), "daemon"], {"TRACECAP_HOME": str(tmp_path)}))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    exe.unlink()  # the same unit must now fail, naming the path systemd parsed out of ExecStart
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode != 0 and f"Command {exe} is not executable" in res.stderr


# ------------------------------------------------------------------------------------ launchd
@pytest.mark.parametrize("argv, env", [
    (["/usr/local/bin/tracecap", "daemon"], {}),
    (["/Users/ada/A&B <tools>/tracecap", "daemon"], {"TRACECAP_HOME": "/Users/ada/trace & co"}),
    (["/usr/bin/python3", "-m", "agent.cli", "daemon"], {"TRACECAP_HOME": "/tmp/'q'\"x\""}),
])
def test_launchd_plist(tmp_path, argv, env):
    text = service.render_launchd_plist(argv, env, tmp_path / "logs")
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "dev.tracecap.agent"
    assert plist["ProgramArguments"] == argv
    assert plist.get("EnvironmentVariables", {}) == env
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restart after a crash only
    assert plist["Nice"] == 10 and plist["LowPriorityIO"] is True
    assert plist["StandardErrorPath"] == str(tmp_path / "logs" / "launchd.err.log")


# ------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("argv, env, command, arguments", [
    ([r"C:\Users\ada\.local\bin\tracecap.exe", "daemon"], {},
     r"C:\Users\ada\.local\bin\tracecap.exe", "daemon"),
    ([r"C:\Program Files\Python311\python.exe", "-m", "agent.cli", "daemon"], {},
     r"C:\Program Files\Python311\python.exe", "-m agent.cli daemon"),
    ([r"C:\Program Files\tracecap\tracecap.exe", "daemon"], {"TRACECAP_HOME": r"D:\trace data"},
     r"%SystemRoot%\System32\cmd.exe",
     r'/d /s /c "set "TRACECAP_HOME=D:\trace data"&& "C:\Program Files\tracecap\tracecap.exe" daemon"'),
])
def test_task_xml(argv, env, command, arguments):
    text = service.render_task_xml(argv, env, "ACME\\ada & co")
    assert text.startswith('<?xml version="1.0" encoding="UTF-16"?>')
    root = ET.fromstring(text.encode("utf-16"))
    assert root.find("t:Actions/t:Exec/t:Command", TASK_NS).text == command
    assert root.find("t:Actions/t:Exec/t:Arguments", TASK_NS).text == arguments
    assert root.find("t:Triggers/t:LogonTrigger/t:UserId", TASK_NS).text == "ACME\\ada & co"
    assert root.find("t:Principals/t:Principal/t:LogonType", TASK_NS).text == "InteractiveToken"
    assert root.find("t:Principals/t:Principal/t:RunLevel", TASK_NS).text == "LeastPrivilege"
    assert root.find("t:Settings/t:RestartOnFailure/t:Count", TASK_NS).text == "10"
    assert root.find("t:Settings/t:ExecutionTimeLimit", TASK_NS).text == "PT0S"  # never killed
    assert root.find("t:Settings/t:DisallowStartIfOnBatteries", TASK_NS).text == "false"


# ------------------------------------------------------------------------------------ plans
def _describe(plan) -> list[tuple]:
    out = []
    for step in plan.steps:
        if isinstance(step, WriteFile):
            out.append(("write", step.path, step.encoding))
        elif isinstance(step, RemoveFile):
            out.append(("remove", step.path))
        else:
            out.append(("run",) + step.argv + (() if step.must_succeed else ("(may fail)",)))
    return out


@pytest.mark.parametrize("platform, expected", [
    ("linux", [("write", "home/.config/systemd/user/tracecap.service", "utf-8"),
               ("run", "systemctl", "--user", "daemon-reload"),
               ("run", "systemctl", "--user", "enable", "--now", "tracecap.service")]),
    ("macos", [("write", "home/Library/LaunchAgents/dev.tracecap.agent.plist", "utf-8"),
               ("run", "launchctl", "bootout", "gui/1000/dev.tracecap.agent", "(may fail)"),
               ("run", "launchctl", "enable", "gui/1000/dev.tracecap.agent"),
               ("run", "launchctl", "bootstrap", "gui/1000", "home/Library/LaunchAgents/dev.tracecap.agent.plist")]),
    ("windows", [("write", "state/config/tracecap-task.xml", "utf-16"),
                 ("run", "schtasks", "/Create", "/TN", "tracecap", "/XML", "state/config/tracecap-task.xml", "/F"),
                 ("run", "schtasks", "/Run", "/TN", "tracecap")]),
])
def test_install_plans(tmp_path, platform, expected):
    plan = service.plan_install(make_host(platform, tmp_path))
    rel = [tuple(str(x).replace(str(tmp_path) + os.sep, "").replace(str(tmp_path) + "/", "")
                 for x in row) for row in _describe(plan)]
    assert rel == [tuple(str(x) for x in row) for row in expected]


@pytest.mark.parametrize("platform, expected", [
    ("linux", [("run", "systemctl", "--user", "disable", "--now", "tracecap.service", "(may fail)"),
               ("remove", "home/.config/systemd/user/tracecap.service"),
               ("run", "systemctl", "--user", "daemon-reload"),
               ("run", "systemctl", "--user", "reset-failed", "tracecap.service", "(may fail)")]),
    ("macos", [("run", "launchctl", "bootout", "gui/1000/dev.tracecap.agent", "(may fail)"),
               ("remove", "home/Library/LaunchAgents/dev.tracecap.agent.plist")]),
    ("windows", [("run", "schtasks", "/End", "/TN", "tracecap", "(may fail)"),
                 ("run", "schtasks", "/Delete", "/TN", "tracecap", "/F", "(may fail)"),
                 ("remove", "state/config/tracecap-task.xml")]),
])
def test_uninstall_plans(tmp_path, platform, expected):
    plan = service.plan_uninstall(make_host(platform, tmp_path))
    rel = [tuple(str(x).replace(str(tmp_path) + "/", "") for x in row) for row in _describe(plan)]
    assert rel == [tuple(str(x) for x in row) for row in expected]


def test_changed_unit_restarts_the_running_service(tmp_path):
    host = make_host("linux", tmp_path)
    same = service.render_systemd_unit(host.daemon_argv, host.env)
    restart = ("systemctl", "--user", "try-restart", "tracecap.service")
    assert restart not in [s.argv for s in service.plan_install(host, None).steps if isinstance(s, RunCommand)]
    assert restart not in [s.argv for s in service.plan_install(host, same).steps if isinstance(s, RunCommand)]
    changed = service.plan_install(host, same.replace("daemon", "daemon --old"))
    assert changed.steps[-1] == RunCommand(restart)


def test_render_plan_shows_path_exact_content_and_commands(tmp_path):
    host = make_host("linux", tmp_path, env={"TRACECAP_HOME": "/srv/t"})
    text = service.render_plan(service.plan_install(host))
    unit = service.render_systemd_unit(host.daemon_argv, host.env)
    head = f"--- write {service.unit_path(host)} ({len(unit.encode())} bytes)\n"
    assert text.startswith(head + unit)
    assert text.endswith("--- run: systemctl --user daemon-reload\n"
                         "--- run: systemctl --user enable --now tracecap.service")
    whost = make_host("windows", tmp_path)
    win = service.render_plan(service.plan_install(whost))
    xml = service.render_task_xml(whost.daemon_argv, {}, whost.user)
    path = service.task_xml_path(whost)
    assert win.startswith(f"--- write {path} ({len(xml.encode('utf-16'))} bytes, utf-16)\n{xml}")
    assert f"--- run: schtasks /Create /TN tracecap /XML {path} /F" in win


@pytest.mark.parametrize("text, values, expected", [
    ("a\n$env\nb\n", {"env": ""}, "a\nb\n"),
    ("a\n  $env\nb\n", {"env": "X=1"}, "a\n  X=1\nb\n"),
    ("a $env b\n", {"env": ""}, "a  b\n"),  # only a line holding nothing but the placeholder goes
])
def test_fill_template(text, values, expected):
    assert service.fill_template(text, **values) == expected


# ------------------------------------------------------------------------------------ status parsing
@pytest.mark.parametrize("show, installed, enabled, active", [
    ("LoadState=not-found\nUnitFileState=\nActiveState=inactive\nSubState=dead\nFragmentPath=\n",
     False, False, False),
    ("LoadState=loaded\nUnitFileState=disabled\nActiveState=inactive\nSubState=dead\n"
     "FragmentPath=/usr/lib/systemd/user/tracecap.service\n", True, False, False),
    ("LoadState=loaded\nUnitFileState=enabled\nActiveState=active\nSubState=running\n"
     "FragmentPath=/home/ada/.config/systemd/user/tracecap.service\n", True, True, True),
    ("LoadState=loaded\nUnitFileState=enabled\nActiveState=failed\nSubState=failed\nFragmentPath=/x\n",
     True, True, False),
])
def test_systemd_status(show, installed, enabled, active):
    st = service.systemd_status(service.parse_systemctl_show(show), Path("/default"))
    assert (st.installed, st.enabled, st.active) == (installed, enabled, active)


LAUNCHCTL_PRINT = """gui/501/dev.tracecap.agent = {
\tactive count = 1
\tpath = /Users/ada/Library/LaunchAgents/dev.tracecap.agent.plist
\tstate = running
\tprogram = /usr/local/bin/tracecap
}
"""


@pytest.mark.parametrize("rc, out, disabled, plist, expected", [
    (0, LAUNCHCTL_PRINT, 'disabled services = {\n\t"com.other" => disabled\n}\n', True, (True, True, True)),
    (0, LAUNCHCTL_PRINT.replace("running", "not running"), "", True, (True, True, False)),
    (0, LAUNCHCTL_PRINT, '\t"dev.tracecap.agent" => disabled\n', True, (True, False, True)),
    (113, "", "", False, (False, False, False)),
])
def test_launchd_status(tmp_path, rc, out, disabled, plist, expected):
    path = tmp_path / "dev.tracecap.agent.plist"
    if plist:
        path.write_text("<plist/>")
    st = service.launchd_status(rc, out, disabled, path)
    assert (st.installed, st.enabled, st.active) == expected


@pytest.mark.parametrize("rc, xml, csv, expected", [
    (0, "<Task><Settings><Enabled>true</Enabled></Settings></Task>", '"\\tracecap","N/A","Running"\n',
     (True, True, True)),
    (0, "<Task><Settings><Enabled>false</Enabled></Settings></Task>", '"\\tracecap","N/A","Disabled"\n',
     (True, False, False)),
    (0, "<Task><Settings><Enabled>true</Enabled></Settings></Task>", '"\\tracecap","N/A","Ready"\n',
     (True, True, False)),
    (1, "", "", (False, False, False)),
])
def test_task_status(rc, xml, csv, expected):
    st = service.task_status(rc, xml, csv)
    assert (st.installed, st.enabled, st.active) == expected


@pytest.mark.parametrize("name, kind", [
    ("tracecap", "script"), ("tracecap.exe", "script"), ("cli.py", "module"), ("pytest", "module"),
])
def test_running_tracecap_argv(tmp_path, name, kind):
    script = tmp_path / "bin" / name
    script.parent.mkdir()
    script.write_text("")
    argv = service.running_tracecap_argv(str(script), "/usr/bin/python3")
    if kind == "script":
        assert argv == [str(script)]
    else:
        assert argv == ["/usr/bin/python3", "-m", "agent.cli"]
    # Windows console scripts may be named without their .exe in argv[0]
    if name == "tracecap.exe":
        assert service.running_tracecap_argv(str(script)[:-4], "python") == [str(script)]


def test_running_tracecap_keeps_symlinks(tmp_path):
    target = tmp_path / "opt" / "tracecap"
    target.parent.mkdir()
    target.write_text("")
    link = tmp_path / "tracecap"
    link.symlink_to(target)
    assert service.running_tracecap_argv(str(link), "python") == [str(link)]


# ------------------------------------------------------------------------------------ the CLI
def _cli_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACECAP_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home/.config"),
               TRACECAP_HOME=str(tmp_path / "state"))
    env.update(extra)
    return env


def _cli(args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(REPO))


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CLI is exercised on Linux")
def test_cli_dry_run_prints_exactly_what_install_would_write(tmp_path):
    env = _cli_env(tmp_path)
    (tmp_path / "home").mkdir()
    before = _files_under(tmp_path)
    res = _cli(["service", "install", "--dry-run"], env)
    assert res.returncode == 0, res.stderr
    unit = service.render_systemd_unit([sys.executable, "-m", "agent.cli", "daemon"],
                                       {"TRACECAP_HOME": str(tmp_path / "state")})
    path = tmp_path / "home/.config/systemd/user/tracecap.service"
    assert f"--- write {path} ({len(unit.encode())} bytes)\n{unit}--- end of {path}\n" in res.stdout
    assert "--- run: systemctl --user enable --now tracecap.service" in res.stdout
    for action in ("uninstall", "status"):
        res = _cli(["service", action, "--dry-run"], env)
        assert res.returncode == 0 and "systemctl --user" in res.stdout, res.stderr
    assert _files_under(tmp_path) == before  # nothing changed


def _user_manager_reachable(env: dict) -> bool:
    if shutil.which("systemctl") is None:
        return False
    res = subprocess.run(["systemctl", "--user", "show", "--property=Version"], capture_output=True,
                         env=env, timeout=30)
    return res.returncode == 0


def _one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd is Linux only")
def test_service_install_with_systemd_user_manager_or_one_sentence(tmp_path):
    """The real thing when `systemctl --user` answers; otherwise (containers, CI) exit 1 with one
    sentence that names `tracecap daemon`, and no unit file written."""
    real_env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
    if not _user_manager_reachable(real_env):
        env = _cli_env(tmp_path)
        for action in ("install", "status", "uninstall"):
            res = _cli(["service", action], env)
            assert res.returncode == 1, (action, res.stdout, res.stderr)
            line = _one_sentence(res.stderr)
            assert line.startswith("tracecap: ") and "`tracecap daemon`" in line, line
            assert "systemd" in line or "systemctl" in line
        assert not (tmp_path / "home/.config/systemd").exists()
        return
    # A reachable user manager: install for this user for real, with state kept under tmp_path.
    unit = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd/user/tracecap.service"
    if unit.exists():
        pytest.skip(f"a tracecap service is already installed for this user ({unit}); not touching it")
    env = dict(real_env, TRACECAP_HOME=str(tmp_path / "state"))
    try:
        res = _cli(["service", "install"], env)
        assert res.returncode == 0, res.stderr
        assert unit.is_file() and f'TRACECAP_HOME={tmp_path / "state"}' in unit.read_text()
        deadline = time.monotonic() + 20
        while True:
            res = _cli(["service", "status"], env)
            assert res.returncode == 0, res.stderr
            if "active:    yes" in res.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "installed: yes" in res.stdout and "enabled:   yes" in res.stdout, res.stdout
        assert "active:    yes" in res.stdout, res.stdout
        st = _cli(["status", "--json"], env)  # the service's daemon answers on the tmp state's socket
        assert st.returncode == 0, st.stderr
    finally:
        res = _cli(["service", "uninstall"], env)
    assert res.returncode == 0, res.stderr
    assert not unit.exists()
    res = _cli(["service", "status"], env)
    assert "installed: no" in res.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd is Linux only")
def test_missing_systemctl_is_one_sentence(tmp_path):
    empty = tmp_path / "emptybin"
    empty.mkdir()
    env = _cli_env(tmp_path, PATH=str(empty))
    res = _cli(["service", "status"], env)
    assert res.returncode == 1
    line = _one_sentence(res.stderr)
    assert "systemctl was not found" in line and "`tracecap daemon`" in line


def _st(installed, enabled, active):
    return service.ServiceStatus("systemd", "/u", installed, enabled, active, "failed (failed)")


@pytest.mark.parametrize("st, expected", [
    (None, "`tracecap daemon`"),
    (_st(False, False, False), "`tracecap service install` (runs at login)"),
    (_st(True, True, False), "installed but not running (failed (failed)); see `systemctl --user status"),
    (_st(True, False, False), "installed but not running"),
    (_st(True, True, True), "is starting"),
])
def test_first_run_next_step(st, expected):
    text = service.next_step(st, "linux")
    assert text.startswith("next step: ") and expected in text
    assert "`tracecap " in text  # every message names the command that fixes it


def test_first_run_next_step_here_never_raises(tmp_path):
    env = _cli_env(tmp_path, PATH=str(tmp_path))  # no systemctl at all
    res = subprocess.run([sys.executable, "-c", "from agent.service import next_step_for_this_host as n; "
                          "print(n())"], capture_output=True, text=True, env=env, timeout=30, cwd=str(REPO))
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.strip() == service.next_step(None, "")
