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


class XorgLoop:
    """Icon updates and docking on pystray's own X event loop (its `xorg` backend).

    Updates: pystray carries a cross-thread update to its loop over the loop's own Xlib connection
    and then blocks on a queue for the reply; python-xlib connections are not safe to share
    between threads, and a lost reply leaves the status thread blocked for good (the icon then
    stops changing). Instead `update` keeps the latest snapshot and pokes the icon window with a
    ClientMessage of our own atom over a second, private connection; the loop's handler applies
    the snapshot in the loop's thread, where pystray's setters run directly.

    Docking: pystray's `visible = True` asks the tray to dock the icon twice in a row (once to
    draw it, once to show it), from the setup thread, which may run before the loop has noted its
    own thread; a tray host given the second request while embedding the first can leave the
    icon undocked, and nothing asks again. `show` instead asks once, from the loop. pystray also
    asks only when the icon is shown: started before the desktop's tray (a login race) or outliving
    it (the panel restarts), the icon would never appear. The system tray spec has a new tray
    announce itself with a MANAGER message to the root window; on it the icon asks that tray.

    Must be made before `icon.run()`, in the thread that will run the loop."""

    def __init__(self, icon: Any, apply: Any) -> None:
        import Xlib.X
        import Xlib.display

        self.icon, self.apply = icon, apply
        display = icon._display
        self._refresh = display.intern_atom("_TRACECAP_TRAY_REFRESH")
        self._show = display.intern_atom("_TRACECAP_TRAY_SHOW")
        self._manager = display.intern_atom("MANAGER")
        display.screen().root.change_attributes(event_mask=Xlib.X.StructureNotifyMask)
        display.flush()
        self._latest: list[Any] = []
        self._lock = threading.Lock()
        self._original = icon._message_handlers.get(Xlib.X.ClientMessage)
        icon._message_handlers[Xlib.X.ClientMessage] = self._on_client_message
        icon._message_handlers[Xlib.X.DestroyNotify] = self._on_destroy_notify
        self._sender = Xlib.display.Display()
        self._window = self._sender.create_resource_object("window", icon._window.id)

    def show(self) -> None:
        """Dock the icon: from any thread."""
        self._poke(self._show)

    def update(self, snap: Any) -> None:
        """Show the snapshot: from any thread; only the latest one counts."""
        with self._lock:
            self._latest[:] = [snap]
        self._poke(self._refresh)

    def _poke(self, atom: int) -> None:
        import Xlib.X
        import Xlib.protocol.event

        with self._lock:
            event = Xlib.protocol.event.ClientMessage(window=self._window, client_type=atom,
                                                      data=(32, [0, 0, 0, 0, 0]))
            self._window.send_event(event, event_mask=Xlib.X.NoEventMask)
            self._sender.flush()

    # In the loop's thread:

    def _on_client_message(self, event: Any) -> None:
        kind = event.client_type
        if kind == self._refresh:
            with self._lock:
                snap = self._latest.pop() if self._latest else None
            if snap is not None:
                self.apply(snap)
        elif kind == self._show:
            self.icon._icon_valid = True
            self.icon._visible = True
            self._dock()
        elif kind == self._manager:
            if self.icon._visible and event.data[1][1] == self.icon._net_system_tray_sx:
                self._dock()
        elif self._original is not None:
            self._original(event)

    def _on_destroy_notify(self, event: Any) -> None:
        # The tray went away. (pystray's own handler reads the id of a tray it may no longer
        # have, which ends the loop.)
        gone = self.icon._systray_manager
        if gone is not None and event.window.id == gone.id:
            self._dock()

    def _dock(self) -> None:
        self.icon._systray_manager = None
        try:
            self.icon._assert_docked()
        except AssertionError:  # no tray now: the next one's MANAGER message docks the icon
            pass


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

    loop = XorgLoop(icon, apply_xorg) if _is_xorg(icon) else None
    on_change = loop.update if loop is not None else apply

    def setup(icon: Any) -> None:
        if loop is not None:
            loop.show()
        else:
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
