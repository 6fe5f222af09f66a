import os
import shutil
from pathlib import Path

import pytest

from agent.paths import _memory_dir
from tests.daemon_harness import DaemonProcess


@pytest.fixture(scope="session", autouse=True)
def _report_dirs_cleaned(tmp_path_factory):
    """Each test's TRACECAP_HOME gets a pytest-report directory in /dev/shm (StatePaths.report_dir);
    those of this session's homes are removed at its end. Only those: /dev/shm is shared by every
    test session of the user, and another session's directory may still be in use by its daemon
    and shells (one removed there takes away the reports its next test runs need)."""
    shm = Path("/dev/shm")
    pattern = f"tracecap-{os.getuid()}-*"
    before = set(shm.glob(pattern)) if shm.is_dir() else set()
    yield
    if not shm.is_dir():
        return
    made = set(shm.glob(pattern)) - before
    if not made:
        return
    base = tmp_path_factory.getbasetemp()
    # The directory of a home is named after a digest of its path (agent.paths._memory_dir);
    # the homes of this session are directories under its base temporary directory.
    ours = {_memory_dir(base)}
    for dirpath, dirs, _files in os.walk(base):
        ours.update(_memory_dir(Path(dirpath) / d) for d in dirs)
    for d in made & ours:
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
