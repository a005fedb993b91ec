"""Where the default cache goes when HOME is empty or the uid has no home (issue 17, item 6)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from compressc import config
from compressc.config import Config, ConfigError, default_cache_dir


def test_empty_home_is_not_the_file_system_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_passwd_home", lambda: "/home/alice")
    assert Config.from_env({"HOME": ""}).cache_dir == Path("/home/alice/.cache/compressc")
    assert Config.from_env({"HOME": "/h"}).cache_dir == Path("/h/.cache/compressc")


def test_xdg_cache_home_wins_when_absolute() -> None:
    assert default_cache_dir({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/compressc")
    assert default_cache_dir({"XDG_CACHE_HOME": "rel", "HOME": "/h"}) == Path("/h/.cache/compressc")


def test_a_uid_without_a_home_gets_a_private_temp_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_passwd_home", lambda: "")
    monkeypatch.setattr(config.tempfile, "gettempdir", lambda: str(tmp_path))
    path = default_cache_dir({"HOME": ""})
    assert path == tmp_path / f"compressc-cache-{os.getuid()}"
    assert path.is_dir() and path.stat().st_mode & 0o777 == 0o700


def test_a_temp_cache_owned_by_another_uid_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_passwd_home", lambda: "/")
    monkeypatch.setattr(config.tempfile, "gettempdir", lambda: str(tmp_path))
    foreign = tmp_path / f"compressc-cache-{os.getuid()}"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)  # CI runs as root (issue 17, item 7)
    with pytest.raises(ConfigError) as err:
        default_cache_dir({})
    assert str(err.value) == (
        f"this process has no home directory and {foreign} belongs to uid 65534, not {os.getuid()}: "
        "set COMPRESSC_CACHE_DIR to a directory you own"
    )


def test_the_cli_of_a_uid_without_a_home_ends_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from compressc.cli import main

    def no_entry(uid: int):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(config.pwd, "getpwuid", no_entry)  # as for `docker run -u 54321`
    monkeypatch.setattr(config.tempfile, "gettempdir", lambda: str(tmp_path))
    for name in ("HOME", "XDG_CACHE_HOME", "COMPRESSC_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["cache", "verify"])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert result.output == f"0 entries OK in {tmp_path}/compressc-cache-{os.getuid()}\n"
    assert not Path("/.cache/compressc").exists()


@pytest.fixture(autouse=True)
def _no_root_cache():
    """A test that wrote /.cache/compressc would pass the assertions above on the next run."""
    existed = Path("/.cache/compressc").exists()
    yield
    if not existed:
        shutil.rmtree("/.cache/compressc", ignore_errors=True)
