import pytest

from tests.daemon_harness import DaemonProcess


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
