"""`tracecap review [--no-browser]`: the local review page (agent/review/).

Asks the running daemon, over the control socket, for the page's address (which starts the page's
server if it is not running) and opens it in the default browser, or with `--no-browser` prints it.
The address carries the page's token: it is printed only to the user who asked, on their terminal.
Exit 3 when the daemon is not running (the page is served by the daemon).
"""
from __future__ import annotations

import argparse

from agent.errors import DaemonNotRunning


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="open the local page showing everything captured, with pause and forget")
    p.add_argument("--no-browser", action="store_true", help="print the page's URL and exit")
    p.set_defaults(func=cmd_review)


def review_url(timeout: float = 15.0) -> str:
    from agent import control
    from agent.paths import StatePaths

    try:
        return control.request(StatePaths.from_env().socket, "review", timeout=timeout)["url"]
    except DaemonNotRunning:
        raise DaemonNotRunning("the tracecap daemon is not running, and it serves the review page; "
                               "start it with `tracecap daemon` (or `tracecap service install`)") from None


def open_in_browser(url: str) -> bool:
    import webbrowser

    try:
        return bool(webbrowser.open(url, new=2))
    except webbrowser.Error:
        return False


def cmd_review(args: argparse.Namespace) -> int:
    url = review_url()
    if args.no_browser:
        print(url)
        return 0
    if open_in_browser(url):
        print("opened the review page in your browser (it stops after 20 minutes unused; "
              "run `tracecap review` again then)")
    else:
        print(f"no browser could be opened here; open this address yourself:\n{url}")
    return 0
