"""`tracecap service install|uninstall|status [--dry-run]`: the daemon as a user service.

Glue over `agent.service`, which plans and runs everything: systemd user unit (Linux), launchd agent
(macOS), Task Scheduler task (Windows). `--dry-run` prints each file it would write (path and exact
content) and each command it would run, and changes nothing. `status` answers installed? enabled?
active? and exits 0; when the service manager is missing or unreachable it says so in one sentence
and exits 1. Installing the service never opts anyone in: consent stays with `tracecap opt-in`.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("service", help="run the daemon at login as a user service "
                                       "(systemd, launchd, Task Scheduler)")
    ssub = p.add_subparsers(dest="service_cmd", metavar="ACTION", required=True)
    for name, helptext, func in (
            ("install", "install and start the user service (does not opt you in)", cmd_install),
            ("uninstall", "stop and remove the user service (keeps your state and consent)",
             cmd_uninstall),
            ("status", "is the service installed, enabled, active?", cmd_status)):
        c = ssub.add_parser(name, help=helptext)
        c.add_argument("--dry-run", action="store_true",
                       help="print what would be written and run, change nothing")
        c.set_defaults(func=func)


def cmd_install(args: argparse.Namespace) -> int:
    from agent import service

    host = service.Host.current()
    existing = service.read_existing(host)
    plan = service.plan_install(host, existing)
    if args.dry_run:
        print("tracecap service install --dry-run: would do the following and changes nothing.")
        print(service.render_plan(plan))
        return 0
    service.probe_manager(host)
    for line in service.apply_plan(plan):
        print(line)
    print("the tracecap service is installed and started; it records nothing until you run "
          "`tracecap opt-in`")
    if plan.note:
        print(plan.note)
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from agent import service

    host = service.Host.current()
    plan = service.plan_uninstall(host)
    if args.dry_run:
        print("tracecap service uninstall --dry-run: would do the following and changes nothing.")
        print(service.render_plan(plan))
        return 0
    service.probe_manager(host)
    for line in service.apply_plan(plan):
        print(line)
    print("the tracecap service is removed; your captured data, keys and consent are kept "
          "(`tracecap daemon` still runs the agent by hand)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent import service

    host = service.Host.current()
    if args.dry_run:
        print("tracecap service status --dry-run: would run these read-only commands.")
        for argv in service.status_commands(host):
            print(f"--- run: {' '.join(argv)}")
        return 0
    st = service.query_status(host)
    print(service.render_status(st))
    if not st.installed:
        print("next step: `tracecap service install` to start the agent at login")
    elif not st.active:
        print(f"next step: `tracecap service install` to start it again; {service.fix_hint(host.platform)}")
    return 0

