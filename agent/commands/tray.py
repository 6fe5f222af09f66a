"""`tracecap tray`: puts `agent.tray` on the desktop's system tray with pystray.

Takes the user's state paths (for the control socket and the log folder); gives an icon that shows
recording / paused / off / error and a menu built by `agent.tray.build_menu`. This module is only
glue: every decision and every action lives in `agent.tray`, which needs no display.

pystray picks and imports its backend (and connects to the display) when it is imported, so it is
imported here, inside the handler, and only after checking that there is a display: without one the
command exits 1 with one sentence. Plain X11 trays (pystray's `xorg` backend) have no menus and
ignore transparency: there a left click opens the same menu as a small popup window, and the icon
is drawn on a dark tile.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from agent.errors import RuntimeFailure

# Plain X11 trays copy the icon's RGB and drop alpha, so give them a tile that suits dark panels.
X11_TILE = (43, 43, 43)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tray", help="the tray icon: whether you are recorded, and quick controls")
    p.add_argument("--interval", type=float, default=3.0, metavar="SECONDS",
                   help="how often to ask the daemon for its state (2-5 s; default 3)")
    p.set_defaults(func=cmd_tray)


def load_pystray() -> Any:
    """Import pystray, or say in one sentence why there is no tray to put an icon on."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        raise RuntimeFailure("no graphical display (DISPLAY is not set); run `tracecap tray` "
                             "from your desktop session")
    try:
        import pystray
    except Exception as exc:  # pystray raises whatever its backend's display connection raises
        raise RuntimeFailure(f"no system tray backend could start on this display ({exc}); run "
                             f"`tracecap tray` from a desktop session with a system tray") from None
    return pystray


def _pystray_items(pystray: Any, entries: list) -> list:
    items = []
    for e in entries:
        if e.items:
            items.append(pystray.MenuItem(e.label, pystray.Menu(*_pystray_items(pystray, list(e.items))),
                                          enabled=e.enabled))
            continue
        kwargs: dict[str, Any] = {"enabled": e.enabled, "default": e.default}
        if e.checked is not None:
            kwargs["checked"] = lambda _item, v=e.checked: v
        action = e.action if e.action is not None else (lambda: None)
        items.append(pystray.MenuItem(e.label, _noargs(action), **kwargs))
    return items


def _noargs(action: Any) -> Any:
    # pystray passes (icon, item) to actions by their arity; ours take none.
    def run(_icon: Any, _item: Any) -> None:
        action()
    return run


def _select_clicks(icon: Any) -> None:
    # pystray's xorg backend handles ButtonPress but creates its window with only Exposure and
    # StructureNotify in the event mask, so the X server never delivers a click; ask for them.
    window = getattr(icon, "_window", None)
    if window is None:
        return
    import Xlib.X

    window.change_attributes(event_mask=Xlib.X.ExposureMask | Xlib.X.StructureNotifyMask
                             | Xlib.X.ButtonPressMask)
    icon._display.flush()


def _is_xorg(icon: Any) -> bool:
    return type(icon).__module__.endswith("._xorg")


def _xorg_update_channel(icon: Any, apply: Any) -> Any:
    """Run icon updates on pystray's own X event loop.

    pystray's xorg backend carries a cross-thread update to its loop over the loop's own Xlib
    connection and then blocks on a queue for the reply; python-xlib connections are not safe to
    share between threads, and a lost reply leaves the status thread blocked for good (the icon
    then stops changing). Instead the status thread keeps the latest snapshot and pokes the icon
    window with a ClientMessage of our own atom over a second, private connection; the loop's
    handler applies the snapshot in the loop's thread, where pystray's setters run directly.
    Must be called before `icon.run()`, from the thread that will run the loop."""
    import Xlib.X
    import Xlib.display
    import Xlib.protocol.event

    atom = icon._display.intern_atom("_TRACECAP_TRAY_REFRESH")
    latest: list[Any] = []
    lock = threading.Lock()
    original = icon._message_handlers.get(Xlib.X.ClientMessage)

    def on_client_message(event: Any) -> None:
        if event.client_type != atom:
            if original is not None:
                original(event)
            return
        with lock:
            snap = latest.pop() if latest else None
        if snap is not None:
            apply(snap)

    icon._message_handlers[Xlib.X.ClientMessage] = on_client_message
    sender = Xlib.display.Display()
    window = sender.create_resource_object("window", icon._window.id)

    def on_change(snap: Any) -> None:
        with lock:
            latest[:] = [snap]
        event = Xlib.protocol.event.ClientMessage(window=window, client_type=atom,
                                                  data=(32, [0, 0, 0, 0, 0]))
        window.send_event(event, event_mask=Xlib.X.NoEventMask)
        sender.flush()

    return on_change


def cmd_tray(args: argparse.Namespace) -> int:
    from agent.paths import StatePaths
    from agent.tray import TrayController, build_menu, icon_image

    if not 0.5 <= args.interval <= 60:
        from agent.errors import UsageError

        raise UsageError("--interval must be between 0.5 and 60 seconds")
    pystray = load_pystray()
    paths = StatePaths.from_env()
    ctl = TrayController(paths.socket, logs_dir=paths.logs)
    stop = threading.Event()
    has_menu = bool(getattr(pystray.Icon, "HAS_MENU", True))
    tile = None if has_menu else X11_TILE

    def quit_tray() -> None:
        stop.set()
        icon.stop()

    def menu_items() -> list:
        return _pystray_items(pystray, build_menu(ctl, quit_tray))

    if has_menu:
        menu = pystray.Menu(lambda: iter(menu_items()))
    else:
        popup = PopupMenu(lambda: build_menu(ctl, quit_tray))
        menu = pystray.Menu(pystray.MenuItem("menu", _noargs(popup.show), default=True,
                                             visible=False))
    icon = pystray.Icon("tracecap", icon_image(ctl.snapshot.state, background=tile),
                        ctl.snapshot.tooltip, menu=menu)
    if not has_menu:
        _select_clicks(icon)

    def apply(snap: Any) -> None:
        icon.icon = icon_image(snap.state, background=tile)
        icon.title = snap.tooltip
        if has_menu:
            icon.update_menu()

    def apply_xorg(snap: Any) -> None:
        # pystray's xorg `icon.icon = ...` re-sends SYSTEM_TRAY_REQUEST_DOCK on every change, and a
        # tray host re-embedding an already docked icon may squeeze it to a sliver; redraw in place.
        icon._icon = icon_image(snap.state, background=tile)
        icon._icon_valid = True
        icon._icon_data = None
        icon._draw()
        icon.title = snap.tooltip

    on_change = _xorg_update_channel(icon, apply_xorg) if _is_xorg(icon) else apply

    def setup(icon: Any) -> None:
        icon.visible = True
        threading.Thread(target=ctl.watch, args=(stop, on_change, args.interval),
                         name="tray-status", daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: quit_tray())
    try:
        icon.run(setup=setup)
    finally:
        stop.set()
    return 0


class PopupMenu:
    """The tray menu as a Tk popup at the pointer, for trays without menus (plain X11).

    `show()` returns at once: the popup runs in its own thread (Tk objects stay in the thread that
    made them), one at a time, and the chosen action runs in that thread after the popup closes,
    so the tray's X event loop is never blocked."""

    # Tk unmaps a popup menu before it invokes the picked item's command; closing the Tk root on
    # that Unmap at once would lose the pick, so wait a moment first.
    CLOSE_DELAY_MS = 150

    def __init__(self, entries: Any) -> None:
        self.entries = entries
        self._busy = threading.Lock()

    def show(self) -> None:
        if not self._busy.acquire(blocking=False):
            return
        threading.Thread(target=self._run, name="tray-popup", daemon=True).start()

    def _run(self) -> None:
        chosen: list = []
        try:
            import tkinter as tk

            root = tk.Tk()
            root.withdraw()
            menu = self._build(tk, root, root, self.entries(), chosen)
            menu.bind("<Unmap>", lambda _e: root.after(self.CLOSE_DELAY_MS, root.destroy))
            x, y = root.winfo_pointerxy()
            menu.tk_popup(x, y)
            root.mainloop()
        except Exception as exc:  # no Tk, or the display went away: the icon itself lives on
            print(f"tracecap tray: cannot show the menu: {exc}", file=sys.stderr)
        finally:
            self._busy.release()
        for action in chosen:
            action()

    def _build(self, tk: Any, root: Any, parent: Any, entries: list, chosen: list) -> Any:
        menu = tk.Menu(parent, tearoff=False)
        for e in entries:
            state = "normal" if e.enabled else "disabled"
            if e.items:
                menu.add_cascade(label=e.label, menu=self._build(tk, root, menu, list(e.items), chosen),
                                 state=state)
                continue

            def pick(a: Any = e.action) -> None:
                if a is not None:
                    chosen.append(a)
                root.after_idle(root.destroy)

            if e.checked is not None:
                var = tk.BooleanVar(master=root, value=e.checked)
                menu.add_checkbutton(label=e.label, variable=var, command=pick, state=state)
                keep = getattr(menu, "_tracecap_vars", [])  # a collected BooleanVar unsets itself
                keep.append(var)
                menu._tracecap_vars = keep
            else:
                menu.add_command(label=e.label, command=pick, state=state)
        return menu
