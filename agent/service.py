"""The user service: run `tracecap daemon` at login under the platform's own service manager.

Takes a `Host` (platform, home, user, the command line of the running `tracecap`, the environment to
pass through); gives a `ServicePlan` for install or uninstall (an ordered list of files to write or
remove and commands to run) and a `ServiceStatus` (installed? enabled? active?).

- Linux: a systemd *user* unit in `$XDG_CONFIG_HOME/systemd/user/tracecap.service` (default
  `~/.config`), then `systemctl --user daemon-reload` and `enable --now`.
- macOS: a launchd agent `~/Library/LaunchAgents/dev.tracecap.agent.plist`, loaded with
  `launchctl bootstrap gui/<uid>`.
- Windows: a Task Scheduler task `tracecap` (at logon, restart on failure), registered with
  `schtasks /Create /XML` from a UTF-16 task file kept in the user's config directory.

Promises:
- Planning is pure: `plan_install`, `plan_uninstall` and the renderers read nothing but their
  arguments and the templates in `packaging/templates/` (or `<prefix>/share/tracecap/templates/` in an
  installed copy), so `--dry-run` shows exactly what `apply_plan` would do.
- Nothing is changed before the service manager has answered (`probe_manager`); when it is missing
  or unreachable (containers, CI without a login session) `ServiceManagerUnavailable` says so in one
  sentence and nothing is written.
- Installing a service never records anything by itself: consent stays the user's (`tracecap opt-in`).
- Every command runs with a timeout; a failing one ends in a `RuntimeFailure` naming it.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import re
import string
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence
from xml.sax.saxutils import escape as _xml_escape

from agent.errors import RuntimeFailure, TracecapError, UsageError

UNIT_NAME = "tracecap.service"
LAUNCHD_LABEL = "dev.tracecap.agent"
TASK_NAME = "tracecap"
PASSED_ENV = ("TRACECAP_HOME",)  # the daemon must see the same state directory as the CLI
COMMAND_TIMEOUT = 30.0
PLATFORMS = ("linux", "macos", "windows")


class ServiceManagerUnavailable(RuntimeFailure):
    """systemd/launchd/Task Scheduler is missing or cannot be reached (exit 1)."""


# ----------------------------------------------------------------------------------- plan types
@dataclasses.dataclass(frozen=True)
class WriteFile:
    path: Path
    content: str
    encoding: str = "utf-8"


@dataclasses.dataclass(frozen=True)
class RemoveFile:
    path: Path


@dataclasses.dataclass(frozen=True)
class RunCommand:
    argv: tuple[str, ...]
    must_succeed: bool = True  # False: a step that may fail harmlessly (stopping what is not running)


Action = WriteFile | RemoveFile | RunCommand


@dataclasses.dataclass(frozen=True)
class ServicePlan:
    platform: str
    action: str  # "install" | "uninstall"
    steps: tuple[Action, ...]
    note: str = ""  # one line for the user after the plan ran


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    manager: str  # "systemd" | "launchd" | "task scheduler"
    location: str  # unit file, plist or task name
    installed: bool
    enabled: bool
    active: bool
    detail: str = ""  # the manager's own word for the state (e.g. "active (running)")


@dataclasses.dataclass(frozen=True)
class Host:
    """Everything about this machine and user that the plans depend on."""
    platform: str  # one of PLATFORMS
    home: Path
    user: str  # Windows: DOMAIN\\user, the task's principal
    uid: int | None
    daemon_argv: tuple[str, ...]  # e.g. ("/usr/bin/tracecap", "daemon")
    env: Mapping[str, str]  # variables passed through to the daemon
    config_home: Path  # Linux: XDG_CONFIG_HOME
    state_config: Path  # tracecap's per-user config directory (Windows task file)
    logs: Path  # tracecap's per-user log directory (launchd stdout/stderr)

    @classmethod
    def current(cls) -> "Host":
        from agent.paths import StatePaths

        paths = StatePaths.from_env()
        env = {name: str(Path(os.environ[name]).expanduser().absolute())
               for name in PASSED_ENV if os.environ.get(name)}
        home = Path.home()
        if sys.platform == "win32":
            user = "\\".join(p for p in (os.environ.get("USERDOMAIN"), getpass.getuser()) if p)
        else:
            user = getpass.getuser()
        return cls(platform=platform_name(sys.platform), home=home, user=user,
                   uid=os.getuid() if hasattr(os, "getuid") else None,
                   daemon_argv=tuple(running_tracecap_argv()) + ("daemon",), env=env,
                   config_home=Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config"),
                   state_config=paths.config, logs=paths.logs)


def platform_name(sys_platform: str) -> str:
    if sys_platform.startswith("linux"):
        return "linux"
    if sys_platform == "darwin":
        return "macos"
    if sys_platform in ("win32", "cygwin"):
        return "windows"
    raise UsageError(f"tracecap has no user service for {sys_platform}; start `tracecap daemon` "
                     f"from your login scripts instead")


def running_tracecap_argv(argv0: str | None = None, executable: str | None = None) -> list[str]:
    """The command that started this `tracecap`, absolute, so the service runs the same install.

    A console script (`/usr/bin/tracecap`, `~/.local/bin/tracecap`, `...\\Scripts\\tracecap.exe`)
    is kept as its absolute path without resolving symlinks, so a package upgrade that moves the
    target keeps working. Anything else (`python -m agent.cli`) becomes `python -m agent.cli`.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    name = os.path.basename(argv0).lower()
    if name.startswith("tracecap"):
        for candidate in (argv0, argv0 + ".exe"):
            if os.path.isfile(candidate):
                return [os.path.abspath(candidate)]
    return [os.path.abspath(executable), "-m", "agent.cli"]


# ----------------------------------------------------------------------------------- templates
def template_dirs() -> list[Path]:
    """Where the templates are: the source tree's `packaging/templates`, then the installed copy."""
    checkout = Path(__file__).resolve().parent.parent
    installed = Path(sys.prefix) / "share" / "tracecap" / "templates"
    if (checkout / "pyproject.toml").is_file():  # a source checkout (editable install)
        return [checkout / "packaging" / "templates", installed]
    return [installed]


def load_template(name: str) -> str:
    for d in template_dirs():
        path = d / name
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise RuntimeFailure(f"the service template {name} is missing from this tracecap installation "
                         f"(looked in {', '.join(str(d) for d in template_dirs())}); reinstall tracecap")


def fill_template(text: str, **values: str) -> str:
    """`string.Template` substitution; a line holding only a placeholder whose value is empty is
    dropped, so optional blocks (an environment) leave no blank line behind."""
    for name, value in values.items():
        if not value:
            text = re.sub(rf"^[ \t]*\${name}[ \t]*\n", "", text, flags=re.M)
    return string.Template(text).substitute(values)


# ----------------------------------------------------------------------------------- quoting
_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./$-]+$")
_SYSTEMD_UNSAFE_EXE = re.compile(r"[\x00-\x1f\x7f\"'\\]")


def systemd_quote(arg: str, *, executable: bool = False) -> str:
    """One ExecStart word, quoted when it holds spaces. `%` (specifiers) is doubled everywhere;
    `$` (variable expansion) only in arguments, since systemd does not expand the executable."""
    escaped = arg.replace("%", "%%") if executable else arg.replace("%", "%%").replace("$", "$$")
    if arg and _SYSTEMD_PLAIN.match(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_exec_start(argv: Sequence[str]) -> str:
    """The ExecStart value for `argv`. systemd refuses executables whose path holds quotes,
    backslashes or control characters, so those are a `UsageError` here, not a unit that never runs."""
    if _SYSTEMD_UNSAFE_EXE.search(argv[0]):
        raise UsageError(f"systemd cannot run {argv[0]!r} (quotes, backslashes or control characters "
                         f"in the path); reinstall tracecap under a plain path")
    return " ".join([systemd_quote(argv[0], executable=True)] + [systemd_quote(a) for a in argv[1:]])


def systemd_environment(env: Mapping[str, str]) -> str:
    """`Environment="NAME=value"` lines (`%` escaped: systemd expands specifiers there too)."""
    lines = []
    for name in sorted(env):
        value = env[name].replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
        lines.append(f'Environment="{name}={value}"')
    return "\n".join(lines)


def xml_text(text: str) -> str:
    return _xml_escape(text, {'"': "&quot;", "'": "&apos;"})


def windows_command_line(argv: Sequence[str]) -> str:
    return subprocess.list2cmdline(list(argv))


# ----------------------------------------------------------------------------------- renderers
def render_systemd_unit(daemon_argv: Sequence[str], env: Mapping[str, str]) -> str:
    return fill_template(load_template(UNIT_NAME),
                         exec_start=systemd_exec_start(daemon_argv),
                         environment=systemd_environment(env))


def render_launchd_plist(daemon_argv: Sequence[str], env: Mapping[str, str], logs: Path) -> str:
    args = "\n".join(f"\t\t<string>{xml_text(a)}</string>" for a in daemon_argv)
    if env:
        pairs = "\n".join(f"\t\t<key>{xml_text(k)}</key>\n\t\t<string>{xml_text(env[k])}</string>"
                          for k in sorted(env))
        environment = f"\t<key>EnvironmentVariables</key>\n\t<dict>\n{pairs}\n\t</dict>"
    else:
        environment = ""
    return fill_template(load_template(f"{LAUNCHD_LABEL}.plist"),
                         program_arguments=args, environment=environment,
                         stdout_path=xml_text(str(logs / "launchd.out.log")),
                         stderr_path=xml_text(str(logs / "launchd.err.log")))


def render_task_xml(daemon_argv: Sequence[str], env: Mapping[str, str], user: str) -> str:
    if env:
        # Task Scheduler has no per-task environment: set it in cmd.exe just before the daemon.
        sets = "&& ".join(f'set "{k}={env[k]}"' for k in sorted(env))
        command = r"%SystemRoot%\System32\cmd.exe"
        arguments = f'/d /s /c "{sets}&& {windows_command_line(daemon_argv)}"'
    else:
        command, arguments = daemon_argv[0], windows_command_line(daemon_argv[1:])
    return fill_template(load_template("tracecap-task.xml"),
                         user=xml_text(user), command=xml_text(command), arguments=xml_text(arguments))


# ----------------------------------------------------------------------------------- plans
def unit_path(host: Host) -> Path:
    return host.config_home / "systemd" / "user" / UNIT_NAME


def plist_path(host: Host) -> Path:
    return host.home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def task_xml_path(host: Host) -> Path:
    return host.state_config / "tracecap-task.xml"


def service_file(host: Host) -> Path:
    """The file that defines the service: unit, plist, or the task XML kept for schtasks."""
    return {"linux": unit_path, "macos": plist_path, "windows": task_xml_path}[host.platform](host)


def read_existing(host: Host) -> str | None:
    path = service_file(host)
    try:
        return path.read_text(encoding="utf-16" if host.platform == "windows" else "utf-8")
    except (OSError, UnicodeError):
        return None


def _launchd_domain(host: Host) -> str:
    return f"gui/{host.uid}"


def plan_install(host: Host, existing: str | None = None) -> ServicePlan:
    """`existing`: the service file as it is on disk now (None: absent); a changed unit restarts."""
    if host.platform == "linux":
        unit = render_systemd_unit(host.daemon_argv, host.env)
        steps: list[Action] = [WriteFile(unit_path(host), unit),
                               RunCommand(("systemctl", "--user", "daemon-reload")),
                               RunCommand(("systemctl", "--user", "enable", "--now", UNIT_NAME))]
        if existing is not None and existing != unit:
            steps.append(RunCommand(("systemctl", "--user", "try-restart", UNIT_NAME)))
        return ServicePlan("linux", "install", tuple(steps),
                           note=f"logs: `journalctl --user -u tracecap` and {host.logs / 'tracecap.log'}")
    if host.platform == "macos":
        path = plist_path(host)
        domain = _launchd_domain(host)
        return ServicePlan("macos", "install", (
            WriteFile(path, render_launchd_plist(host.daemon_argv, host.env, host.logs)),
            RunCommand(("launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"), must_succeed=False),
            RunCommand(("launchctl", "enable", f"{domain}/{LAUNCHD_LABEL}")),
            RunCommand(("launchctl", "bootstrap", domain, str(path))),
        ), note=f"logs: {host.logs / 'tracecap.log'}")
    if host.platform == "windows":
        path = task_xml_path(host)
        return ServicePlan("windows", "install", (
            WriteFile(path, render_task_xml(host.daemon_argv, host.env, host.user), "utf-16"),
            RunCommand(("schtasks", "/Create", "/TN", TASK_NAME, "/XML", str(path), "/F")),
            RunCommand(("schtasks", "/Run", "/TN", TASK_NAME)),
        ), note=f"logs: {host.logs / 'tracecap.log'}")
    raise UsageError(f"unknown platform {host.platform!r}")


def plan_uninstall(host: Host) -> ServicePlan:
    if host.platform == "linux":
        return ServicePlan("linux", "uninstall", (
            RunCommand(("systemctl", "--user", "disable", "--now", UNIT_NAME), must_succeed=False),
            RemoveFile(unit_path(host)),
            RunCommand(("systemctl", "--user", "daemon-reload")),
            RunCommand(("systemctl", "--user", "reset-failed", UNIT_NAME), must_succeed=False),
        ))
    if host.platform == "macos":
        return ServicePlan("macos", "uninstall", (
            RunCommand(("launchctl", "bootout", f"{_launchd_domain(host)}/{LAUNCHD_LABEL}"),
                       must_succeed=False),
            RemoveFile(plist_path(host)),
        ))
    if host.platform == "windows":
        return ServicePlan("windows", "uninstall", (
            RunCommand(("schtasks", "/End", "/TN", TASK_NAME), must_succeed=False),
            RunCommand(("schtasks", "/Delete", "/TN", TASK_NAME, "/F"), must_succeed=False),
            RemoveFile(task_xml_path(host)),
        ))
    raise UsageError(f"unknown platform {host.platform!r}")


def render_plan(plan: ServicePlan) -> str:
    """What `--dry-run` prints: each file's path and exact content, each command, in order."""
    out = []
    for step in plan.steps:
        if isinstance(step, WriteFile):
            enc = "" if step.encoding == "utf-8" else f", {step.encoding}"
            out.append(f"--- write {step.path} ({len(step.content.encode(step.encoding))} bytes{enc})")
            out.append(step.content.rstrip("\n"))
            out.append(f"--- end of {step.path}")
        elif isinstance(step, RemoveFile):
            out.append(f"--- remove {step.path}")
        else:
            line = windows_command_line(step.argv) if plan.platform == "windows" else _shell_line(step.argv)
            out.append(f"--- run: {line}" + ("" if step.must_succeed else "   (allowed to fail)"))
    return "\n".join(out)


def _shell_line(argv: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


# ----------------------------------------------------------------------------------- running
Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one service-manager command; a missing program or a timeout is one sentence."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ServiceManagerUnavailable(_missing_manager(argv[0])) from None
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"`{_shell_line(argv)}` did not answer within {timeout:.0f} s; "
                             f"check the service manager and try again") from None


def _missing_manager(program: str) -> str:
    if program == "systemctl":
        return ("systemctl was not found, so this system has no systemd user services; start the "
                "agent with `tracecap daemon` (for example from your session's autostart)")
    return (f"{program} was not found, so tracecap cannot register a user service here; start the "
            f"agent with `tracecap daemon` instead")


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return "no message"


def probe_manager(host: Host, run: Runner = run_command) -> None:
    """Raise `ServiceManagerUnavailable` unless the user's service manager answers."""
    if host.platform == "linux":
        res = run(("systemctl", "--user", "show", "--property=Version"))
        if res.returncode != 0:
            raise ServiceManagerUnavailable(
                f"the systemd user manager is not reachable ({_first_line(res.stderr)}), as in "
                f"containers and CI without a login session; run `tracecap daemon` instead")
    elif host.platform == "macos":
        res = run(("launchctl", "print", _launchd_domain(host)))
        if res.returncode != 0:
            raise ServiceManagerUnavailable(
                f"launchd has no GUI session for this user ({_first_line(res.stderr)}); run "
                f"`tracecap service install` from a desktop login, or `tracecap daemon` instead")
    elif host.platform == "windows":
        res = run(("schtasks", "/Query", "/FO", "CSV", "/NH"))
        if res.returncode != 0:
            raise ServiceManagerUnavailable(
                f"Task Scheduler is not reachable ({_first_line(res.stderr)}); run `tracecap daemon` "
                f"instead")


def apply_plan(plan: ServicePlan, run: Runner = run_command) -> list[str]:
    """Carry out the plan in order; returns one line per step done. A required command that fails
    raises `RuntimeFailure` naming it and what it said."""
    done = []
    for step in plan.steps:
        if isinstance(step, WriteFile):
            step.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = step.path.with_name(step.path.name + ".tmp")
            tmp.write_text(step.content, encoding=step.encoding)
            os.replace(tmp, step.path)
            done.append(f"wrote {step.path}")
        elif isinstance(step, RemoveFile):
            try:
                step.path.unlink()
                done.append(f"removed {step.path}")
            except FileNotFoundError:
                pass
        else:
            res = run(step.argv)
            if res.returncode != 0 and step.must_succeed:
                raise RuntimeFailure(f"`{_shell_line(step.argv)}` failed: "
                                     f"{_first_line(res.stderr or res.stdout)}; "
                                     f"{fix_hint(plan.platform)}")
            if res.returncode == 0:
                done.append(f"ran {_shell_line(step.argv)}")
    return done


def fix_hint(platform: str) -> str:
    return {"linux": "see `systemctl --user status tracecap` and `journalctl --user -u tracecap`",
            "macos": "see `launchctl print gui/$(id -u)/dev.tracecap.agent`",
            "windows": "see `schtasks /Query /TN tracecap /V /FO LIST`"}[platform]


# ----------------------------------------------------------------------------------- status
def status_commands(host: Host) -> list[tuple[str, ...]]:
    if host.platform == "linux":
        return [("systemctl", "--user", "show", UNIT_NAME, "--property=LoadState",
                 "--property=UnitFileState", "--property=ActiveState", "--property=SubState",
                 "--property=FragmentPath")]
    if host.platform == "macos":
        return [("launchctl", "print", f"{_launchd_domain(host)}/{LAUNCHD_LABEL}"),
                ("launchctl", "print-disabled", _launchd_domain(host))]
    return [("schtasks", "/Query", "/TN", TASK_NAME, "/XML"),
            ("schtasks", "/Query", "/TN", TASK_NAME, "/FO", "CSV", "/NH")]


def parse_systemctl_show(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def systemd_status(props: Mapping[str, str], default_path: Path) -> ServiceStatus:
    installed = props.get("LoadState") == "loaded"
    return ServiceStatus(
        manager="systemd", location=props.get("FragmentPath") or str(default_path),
        installed=installed,
        enabled=installed and props.get("UnitFileState") in ("enabled", "enabled-runtime", "linked",
                                                             "linked-runtime"),
        active=props.get("ActiveState") == "active",
        detail=f"{props.get('ActiveState', 'unknown')} ({props.get('SubState', 'unknown')}), "
               f"unit file {props.get('UnitFileState') or 'absent'}")


def launchd_status(print_rc: int, print_out: str, disabled_out: str, path: Path) -> ServiceStatus:
    """From `launchctl print gui/<uid>/<label>` (rc 0 when loaded) and `print-disabled gui/<uid>`."""
    state = re.search(r"^\s*state = (\S+)", print_out, re.M)
    disabled = re.search(rf'"{re.escape(LAUNCHD_LABEL)}"\s*=>\s*(true|disabled)', disabled_out)
    loaded = print_rc == 0
    return ServiceStatus(manager="launchd", location=str(path), installed=path.is_file(),
                         enabled=loaded and not disabled, active=bool(state and state.group(1) == "running"),
                         detail=f"state {state.group(1) if state else 'not loaded'}")


def task_status(xml_rc: int, xml_out: str, csv_out: str) -> ServiceStatus:
    """From `schtasks /Query /TN tracecap /XML` (the definition) and `/FO CSV /NH` (the state).
    The CSV's status column is localised; "Running" is the English word."""
    installed = xml_rc == 0
    enabled_tag = re.search(r"<Settings>.*?<Enabled>(true|false)</Enabled>", xml_out, re.S)
    enabled = installed and (enabled_tag is None or enabled_tag.group(1) == "true")
    fields = re.findall(r'"([^"]*)"', csv_out.splitlines()[0] if csv_out.strip() else "")
    state = fields[2] if len(fields) >= 3 else "unknown"
    return ServiceStatus(manager="task scheduler", location=f"task {TASK_NAME}", installed=installed,
                         enabled=enabled, active=installed and state == "Running",
                         detail=f"status {state}")


def query_status(host: Host, run: Runner = run_command) -> ServiceStatus:
    probe_manager(host, run)
    cmds = status_commands(host)
    if host.platform == "linux":
        res = run(cmds[0])
        if res.returncode != 0:
            raise ServiceManagerUnavailable(f"`{_shell_line(cmds[0])}` failed: {_first_line(res.stderr)}; "
                                            f"run `tracecap daemon` instead")
        return systemd_status(parse_systemctl_show(res.stdout), unit_path(host))
    if host.platform == "macos":
        printed, disabled = run(cmds[0]), run(cmds[1])
        return launchd_status(printed.returncode, printed.stdout, disabled.stdout, plist_path(host))
    xml, csv = run(cmds[0]), run(cmds[1])
    return task_status(xml.returncode, xml.stdout, csv.stdout if csv.returncode == 0 else "")


def render_status(st: ServiceStatus) -> str:
    yn = {True: "yes", False: "no"}
    return "\n".join([f"tracecap service ({st.manager}: {st.location})",
                      f"  installed: {yn[st.installed]}",
                      f"  enabled:   {yn[st.enabled]}",
                      f"  active:    {yn[st.active]}" + (f"  [{st.detail}]" if st.detail else "")])


# ----------------------------------------------------------------------------------- first run
def next_step(st: ServiceStatus | None, platform: str) -> str:
    """The one next step when the daemon does not answer, given the service's state (None: no
    service manager here)."""
    if st is None:
        return "next step: start it with `tracecap daemon` (no user service manager here)"
    if not st.installed:
        return ("next step: start it with `tracecap service install` (runs at login) or "
                "`tracecap daemon` (this terminal)")
    if not st.active:
        return (f"next step: the tracecap service is installed but not running ({st.detail}); "
                f"{fix_hint(platform)}, then `tracecap service install` starts it again")
    return ("next step: the tracecap service is starting; run `tracecap status` again in a few "
            "seconds, or see `tracecap service status`")


def next_step_for_this_host(timeout: float = 5.0) -> str:
    """`next_step` for this user, asking the service manager with a short timeout; never raises."""
    try:
        host = Host.current()
        st = query_status(host, lambda argv: run_command(argv, timeout))
    except TracecapError:
        return next_step(None, "")
    return next_step(st, host.platform)
