"""`compressc show-config`: versions, GPU, cache, the COMPRESSC_* variables and the packs."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from compressc import __version__, show_config
from compressc.cli import main
from compressc.config import ENV_TABLE


class _EP:
    def __init__(self, name: str, value: object) -> None:
        self.name, self.value, self._value = name, f"{name}:ROOT", value

    def load(self) -> object:
        if isinstance(self._value, Exception):
            raise self._value
        return self._value


def _pack(root: Path, version: str, archs: list[str]) -> Path:
    root.mkdir()
    info = {
        "format": 1,
        "name": f"pack-{root.name}",
        "compressc_version": version,
        "archs": archs,
        "kernels": {"c4a_h512_q64_r64_bf16@sm_90a": {}},
    }
    (root / "pack.json").write_text(json.dumps(info))
    return root


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(show_config, "gpu", lambda: {"device": "none (test)"})


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["show-config", *args], env=env)


def test_text_report_names_every_version_and_variable(no_gpu, tmp_path):
    result = run(env={"COMPRESSC_CACHE_DIR": str(tmp_path), "COMPRESSC_NO_JIT": "1"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"compressc:          {__version__}" in out
    assert f"torch:              {importlib.metadata.version('torch')}" in out
    assert f"cuda-bindings:      {importlib.metadata.version('cuda-bindings')}" in out
    assert "nvidia-cutlass-dsl:" in out and "cutlass-dsl flavor:" in out and "nvjitlink api:" in out
    assert f"dir:   {tmp_path}\nstate: writable\njit:   off" in out
    assert re.search(r"^COMPRESSC_NO_JIT: +1$", out, re.M)
    for name, _, meaning in ENV_TABLE:
        assert f"{name:<24} {meaning}" in out


def test_json_report(no_gpu, tmp_path):
    result = run("--json", env={"XDG_CACHE_HOME": str(tmp_path), "COMPRESSC_CACHE_DIR": ""})
    doc = json.loads(result.output)
    assert doc["versions"]["compressc"] == __version__
    assert doc["cache"] == {
        "dir": str(tmp_path / "compressc"),
        "jit": "on",
        "state": "does not exist yet (the first build creates it)",
    }
    assert [v["name"] for v in doc["variables"]] == [name for name, _, _ in ENV_TABLE]
    assert doc["gpu"] == {"device": "none (test)"}


def test_a_typo_in_a_variable_is_flagged(no_gpu):
    out = run(env={"COMPRESSC_NOJIT": "1"}).output
    assert "warning: COMPRESSC_NOJIT is not a variable compressc reads" in out


def test_a_bad_value_is_reported_not_raised(no_gpu):
    result = run(env={"COMPRESSC_JOBS": "many"})
    assert result.exit_code == 0
    assert "state: error: COMPRESSC_JOBS='many' is not a positive integer" in result.output


def test_packs_say_whether_they_match(no_gpu, tmp_path, monkeypatch):
    eps = [
        _EP("a_ok", str(_pack(tmp_path / "ok", __version__, ["sm_90a"]))),
        _EP("b_old", str(_pack(tmp_path / "old", "0.0.1", ["sm_90a"]))),
        _EP("c_broken", ImportError("no module named pack_c")),
    ]
    monkeypatch.setattr(show_config, "entry_points", lambda group: eps)
    out = run().output
    assert f"pack-ok {__version__} (sm_90a; 1 kernels) {tmp_path / 'ok'}: OK" in out
    assert f"built for compressc 0.0.1, this is {__version__}: it is skipped" in out
    assert "c_broken: NOT USABLE: cannot load: no module named pack_c" in out
    rows = show_config.packs("sm_100a")
    assert rows[0]["matches"] is False and rows[0]["problem"] == "no kernels for this GPU's sm_100a"
    family = [_EP("f", str(_pack(tmp_path / "fam", __version__, ["sm_100f"])))]
    monkeypatch.setattr(show_config, "entry_points", lambda group: family)
    assert show_config.packs("sm_103a")[0]["matches"] is True  # an "f" target runs on later minors
    assert show_config.packs("sm_90a")[0]["matches"] is False


def test_main_help_lists_every_variable_and_show_config():
    out = CliRunner().invoke(main, ["--help"]).output
    assert "compressc show-config" in out
    for name, _, meaning in ENV_TABLE:
        assert f"{name:<24} {meaning}" in out
