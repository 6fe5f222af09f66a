"""CLI command groups. Each module exposes `register(sub)` where `sub` is the argparse
sub-parsers object of `tracecap`; it adds its parsers and sets `func=handler` on each, where
`handler(args) -> int` returns the exit code and raises `agent.errors.*` for user-facing errors.
`agent.cli` imports each module listed in `COMMAND_MODULES`, lazily importing heavy libraries
inside handlers so `tracecap --version` and the shell hook stay fast.
"""
COMMAND_MODULES = (
    "agent.commands.core",
    "agent.commands.shell",
    "agent.commands.bundle",
    "agent.commands.redact",
    "agent.commands.collector",
    "agent.commands.service",
    "agent.commands.tray",
    "agent.commands.episodes",
    "agent.commands.review",
)
