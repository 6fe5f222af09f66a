"""The hooks of real bash, zsh and fish (in tmux) never write into a spool directory that another
user owns or that others may use: another local user who made the directory first, or left it open,
must not get the commands typed."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.test_shell_hooks import SHELLS, Tmux, commands

NOBODY = 65534


def spool_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir())


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("owner,mode", [("self", 0o777), ("self", 0o750), ("other", 0o777)])
def test_hook_writes_nothing_into_a_spool_it_does_not_own_privately(shell, owner, mode, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    if owner == "other":
        if os.geteuid() != 0:
            pytest.skip("making a directory another user owns needs root")
        os.chown(spool, NOBODY, NOBODY)
    os.chmod(spool, mode)
    sh = Tmux(tmp_path, shell, spool)
    try:
        sh.run("echo secret-one")
        sh.run("echo secret-two")
        time.sleep(0.3)
        assert spool_files(spool) == [], f"the {shell} hook wrote into a {owner} {oct(mode)} spool"
    finally:
        sh.close()


@pytest.mark.parametrize("shell", SHELLS)
def test_hook_writes_into_its_own_private_spool(shell, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    sh = Tmux(tmp_path, shell, spool)
    try:
        sh.run("echo hello")
        assert commands(spool) == [("echo hello", 0)]
        for seg in spool.glob("*.rec"):
            assert seg.stat().st_mode & 0o777 == 0o600
    finally:
        sh.close()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("state", ["missing", "open"])
def test_pytest_reports_go_only_into_a_private_directory(shell, state, tmp_path):
    """pytest makes a missing report directory itself, readable by others: the hook asks for a
    report only when the directory is there and private."""
    import sys

    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    reports = tmp_path / "reports"
    if state == "open":
        reports.mkdir(mode=0o755)
        os.chmod(reports, 0o755)
    (tmp_path / "test_a.py").write_text("def test_a():\n    assert 0, 'private detail'\n")
    sh = Tmux(tmp_path, shell, spool, reports=reports)
    try:
        sh.run(f"{sys.executable} -m pytest -q -p no:cacheprovider test_a.py > /dev/null")
        sh.wait_for(lambda: (tmp_path / "spool").exists() and any(
            c.endswith("test_a.py > /dev/null") for c, _ in commands(spool)), timeout=60)
        made = list(reports.glob("*")) if reports.exists() else []
        assert made == [] and (state == "open") == reports.exists(), made
    finally:
        sh.close()


@pytest.mark.parametrize("shell", SHELLS)
def test_every_file_the_hook_makes_is_private_whatever_the_umask(shell, tmp_path):
    """Segments and bash's umask scratch file are 0600 under a umask of 022, across a rotation,
    and the shell's umask is left as the user set it."""
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    sh = Tmux(tmp_path, shell, spool, rc_extra="umask 022", spool_max_bytes=4096)
    try:
        for i in range(12):  # a segment holds about 1 KiB here: several rotations
            sh.run(f"echo {'x' * 200} {i}")
        sh.run(f"umask > {tmp_path / 'umask.txt'}")
        made = sorted(spool.iterdir())
        assert len([p for p in made if p.suffix == ".rec"]) > 1
        if shell == "bash":
            assert [p for p in made if p.suffix == ".umask"]
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in made} == \
            {p.name: "0o600" for p in made}
        assert (tmp_path / "umask.txt").read_text().strip().lstrip("0") == "22"
    finally:
        sh.close()


def test_zsh_without_its_system_module_still_makes_private_segments(tmp_path):
    """Where zsh/system is missing (a minimal zsh build), segments are made by a redirection."""
    mods = tmp_path / "zsh-modules"
    base = Path(os.popen("zsh -fc 'print -r -- $module_path[1]'").read().strip())
    if not (base / "zsh" / "system.so").exists():
        pytest.skip("zsh's modules are not where zsh says")
    (mods / "zsh").mkdir(parents=True)
    for so in (base / "zsh").iterdir():
        if so.name != "system.so":
            (mods / "zsh" / so.name).symlink_to(so)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    sh = Tmux(tmp_path, "zsh", spool, rc_extra=f"umask 022\nmodule_path=({mods})\n"
              f"print -r -- ${{+builtins[sysopen]}} > {tmp_path / 'sysopen.txt'}",
              spool_max_bytes=4096)
    try:
        for i in range(20):  # segments are at least 4 KiB: more than one
            sh.run(f"echo {'x' * 300} {i}")
        assert (tmp_path / "sysopen.txt").read_text().strip() == "0"
        assert commands(spool)[-1] == (f"echo {'x' * 300} 19", 0)
        made = sorted(spool.glob("*.rec"))
        assert len(made) > 1
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in made} == {p.name: "0o600" for p in made}
    finally:
        sh.close()
