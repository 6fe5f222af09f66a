import os
import shutil
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess


@pytest.fixture(scope="session", autouse=True)
def _report_dirs_cleaned():
    """Each test's TRACECAP_HOME gets a pytest-report directory in /dev/shm (StatePaths.report_dir);
    those this session made are removed at its end."""
    shm = Path("/dev/shm")
    pattern = f"tracecap-{os.getuid()}-*"
    before = set(shm.glob(pattern)) if shm.is_dir() else set()
    yield
    if shm.is_dir():
        for d in set(shm.glob(pattern)) - before:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[DaemonProcess] = []

    def make(home=None, **kw) -> DaemonProcess:
        d = DaemonProcess(home or tmp_path / "home", **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        try:
            d.stop()
        except Exception:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()


from tests.fleet_services import postgres, seaweedfs  # noqa: E402,F401  (session fixtures)
