"""Architecture names and the COMPRESSC_* configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressc.cache.arch import KNOWN_ARCHS, arch_to_cc, normalize_arch, sm_number
from compressc.config import Config, ConfigError


@pytest.mark.parametrize("spelling", ["sm90", "sm_90", "sm_90a", "90a", "90", "SM_90A", " sm90 "])
def test_hopper_spellings_mean_sm_90a(spelling: str) -> None:
    assert normalize_arch(spelling) == "sm_90a"


@pytest.mark.parametrize("spelling", ["sm100", "sm_100a", "100a", "100"])
def test_blackwell_spellings_mean_sm_100a(spelling: str) -> None:
    assert normalize_arch(spelling) == "sm_100a"


@pytest.mark.parametrize("arch", KNOWN_ARCHS)
def test_known_archs_are_canonical(arch: str) -> None:
    assert normalize_arch(arch) == arch


@pytest.mark.parametrize("bad", ["sm_91", "sm_90f", "hopper", "", "sm_103", "sm_9"])
def test_unknown_arch_names_the_argument_and_the_accepted_spellings(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        normalize_arch(bad)
    assert f"unknown GPU architecture {bad!r}" in str(err.value)
    assert "sm_90a, sm_100a, sm_100f, sm_103a, sm_120a" in str(err.value)


def test_compute_capability() -> None:
    assert arch_to_cc("sm_90a") == (9, 0)
    assert arch_to_cc("sm100") == (10, 0)
    assert arch_to_cc("sm_103a") == (10, 3)
    assert arch_to_cc("sm_120a") == (12, 0)
    assert arch_to_cc("sm_80") == (8, 0)
    assert sm_number("sm_100f") == 100


def test_config_defaults() -> None:
    config = Config.from_env({})
    assert config.cache_dir == Path("~/.cache/compressc").expanduser()
    assert config.no_jit is False
    assert config.jobs >= 1


def test_config_honours_xdg_cache_home() -> None:
    assert Config.from_env({"XDG_CACHE_HOME": "/xdg"}).cache_dir == Path("/xdg/compressc")
    both = {"XDG_CACHE_HOME": "/xdg", "COMPRESSC_CACHE_DIR": "/mine"}
    assert Config.from_env(both).cache_dir == Path("/mine")  # the compressc variable wins
    # the XDG spec: a relative XDG_CACHE_HOME is invalid and ignored
    assert Config.from_env({"XDG_CACHE_HOME": "rel"}).cache_dir == Path("~/.cache/compressc").expanduser()


def test_runtime_reads_the_same_cache_dir_as_the_cli() -> None:
    from compressc.runtime.resolve import settings_from_environ

    assert settings_from_environ({"XDG_CACHE_HOME": "/xdg"}) == (Path("/xdg/compressc"), True)


def test_config_reads_every_variable() -> None:
    env = {"COMPRESSC_CACHE_DIR": "/x/cache", "COMPRESSC_NO_JIT": "Yes", "COMPRESSC_JOBS": "3"}
    assert Config.from_env(env) == Config(cache_dir=Path("/x/cache"), no_jit=True, jobs=3)
    assert Config.from_env({"COMPRESSC_NO_JIT": "off"}).no_jit is False


def test_config_bad_bool_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"COMPRESSC_NO_JIT='maybe' is not a boolean: use one of 1, true"):
        Config.from_env({"COMPRESSC_NO_JIT": "maybe"})


@pytest.mark.parametrize("jobs", ["0", "-2", "many"])
def test_config_bad_jobs_names_the_variable(jobs: str) -> None:
    with pytest.raises(ConfigError, match=rf"COMPRESSC_JOBS='{jobs}' is not a positive integer"):
        Config.from_env({"COMPRESSC_JOBS": jobs})
