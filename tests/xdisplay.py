"""A real X server for tests and benchmarks: Xvfb with the RECORD extension on a display number it
picks itself (-displayfd), so parallel runs never collide, and with -noreset: by default an X server
resets when its last client disconnects, and a client connecting meanwhile (xdotool polling while
a program starts) is refused with "cannot open display"."""
from __future__ import annotations

import os
import subprocess
import time


def start_xvfb(screen: str = "800x600x24", timeout: float = 15.0) -> tuple[subprocess.Popen, str]:
    """Start Xvfb; return the process and its display name (":N"). Raises RuntimeError if it does
    not report a display within `timeout`."""
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", screen,
                             "+extension", "RECORD", "-nolisten", "tcp", "-noreset"], pass_fds=(w,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    number = b""
    try:
        deadline = time.monotonic() + timeout
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            chunk = os.read(r, 16)
            if not chunk:
                break
            number += chunk
    finally:
        os.close(r)
    if not number.strip():
        xvfb.kill()
        xvfb.wait(10)
        raise RuntimeError("Xvfb did not report a display number")
    return xvfb, ":" + number.decode().strip()
