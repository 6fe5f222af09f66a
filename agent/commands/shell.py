"""`tracecap shell-init bash|zsh|fish`: print the shell hook for `eval "$(tracecap shell-init bash)"`.

Takes the shell name, the state paths and the effective policy; gives the hook text on stdout with
the spool directory and the shell policy (`shell.ignore_space`, `shell.pytest_junit`,
`shell.spool_max_bytes`) baked in, so the hook never asks anyone anything at run time. Promise: the
printed text only defines functions and variables and registers hooks; it runs no command, and it
is the same for the same inputs (`render_hook` is pure).
"""
from __future__ import annotations

import argparse
from importlib import resources

SHELLS = ("bash", "zsh", "fish")

# The hook keeps this many segment files per shell session; a segment holds at most
# spool_max_bytes / SEGMENTS bytes, so one session's unconsumed spool stays under spool_max_bytes.
SEGMENTS = 4
MIN_SEGMENT_BYTES = 4096


def _quote_posix(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _quote_fish(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def segment_bytes(spool_max_bytes: int) -> int:
    return max(MIN_SEGMENT_BYTES, spool_max_bytes // SEGMENTS)


def hook_template(shell: str) -> str:
    return resources.files("agent").joinpath("shell", f"hook.{shell}").read_text(encoding="utf-8")


def render_hook(shell: str, *, spool: str, ignore_space: bool, pytest_junit: bool,
                spool_max_bytes: int, template: str | None = None, reports: str | None = None) -> str:
    """The hook for `shell` with its settings substituted. Pure apart from reading the template.
    `reports`: where pytest's reports go (StatePaths.report_dir); the spool when not given."""
    if shell not in SHELLS:
        raise ValueError(f"unknown shell {shell!r}")
    text = hook_template(shell) if template is None else template
    quote = _quote_fish if shell == "fish" else _quote_posix
    # PYTEST_ADDOPTS is split by pytest with shlex; the hook single-quotes the report path, which
    # cannot work for a spool path that itself holds a single quote.
    reports = spool if reports is None else reports
    junit = pytest_junit and "'" not in reports
    values = {
        "@SPOOL@": quote(spool),
        "@REPORTS@": quote(reports),
        "@IGNORE_SPACE@": "1" if ignore_space else "0",
        "@PYTEST_JUNIT@": "1" if junit else "0",
        "@SEGMENT_BYTES@": str(segment_bytes(spool_max_bytes)),
        "@SEGMENTS@": str(SEGMENTS),
    }
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def _shell_init(args: argparse.Namespace) -> int:
    from agent.paths import StatePaths
    from agent.policy import load_effective_policy

    policy = load_effective_policy()
    shell = policy.data["shell"]
    paths = StatePaths.from_env()
    text = render_hook(
        args.shell,
        spool=str(paths.shell_spool),
        reports=str(paths.report_dir()),
        ignore_space=bool(shell["ignore_space"]),
        pytest_junit=bool(shell["pytest_junit"]),
        spool_max_bytes=policy.size("shell.spool_max_bytes"),
    )
    print(text, end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shell-init", help="print the shell hook: eval \"$(tracecap shell-init bash)\"")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=_shell_init)
