"""A misspelt setting is refused, naming it and the closest valid name; no valid one is."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from quantshift.config import env_name, load_settings
from quantshift.errors import ConfigError
from quantshift.setting_names import NOT_IN_THE_MODEL, env_names, toml_names
from quantshift.settings import Settings
from tests.conftest import ROOT, clean_env, quantshift_bin


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith(("QUANTSHIFT_", "SHADOW_MODE", "APCA_", "CCXT_", "TELEGRAM_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    return tmp_path


def _refused(setting: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.setting == setting, info.value
    return info.value


def test_an_unknown_variable_in_the_environment_is_refused(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("QUANTSHIFT_PHSE", "observation")
    err = _refused("QUANTSHIFT_PHSE")
    assert err.message == "unknown setting; did you mean QUANTSHIFT_PHASE?"


def test_the_prefix_on_a_setting_with_a_name_of_its_own_is_caught(home: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("QUANTSHIFT_SHADOW_MODE", "live")  # read as SHADOW_MODE, never this
    assert _refused("QUANTSHIFT_SHADOW_MODE").message.endswith("did you mean SHADOW_MODE?")


def test_other_programs_variables_in_the_environment_are_theirs(home: Path,
                                                                monkeypatch) -> None:
    for key in ("APCA_SOMETHING_ELSE", "CCXT_DEBUG", "SHADOW_COPY", "TELEGRAM_X", "PHASE"):
        monkeypatch.setenv(key, "1")
    for key in NOT_IN_THE_MODEL:  # read by config.py and the scripts, not by the model
        monkeypatch.setenv(key, str(home / "absent"))
    assert load_settings().bot == "equity"


def test_every_key_of_the_env_file_is_checked(home: Path, monkeypatch) -> None:
    env = home / "bot.env"
    monkeypatch.setenv("QUANTSHIFT_ENV_FILE", str(env))
    env.write_text("SHADOW_MODE=paper\nAPCA_API_KEY_ID=k\nTELEGRAM_API_URL=http://127.0.0.1:9\n"
                   "SHADOW_ALPHA=0.1\nCCXT_WEBSOCKET=off\nquantshift_symbols=A,B\n")
    assert load_settings().symbols == ["A", "B"]
    env.write_text("QUANTSHIFT_PHSE=observation\n")
    assert _refused("QUANTSHIFT_PHSE").message == (f"unknown setting in {env}; did you mean "
                                                   "QUANTSHIFT_PHASE?")
    env.write_text("PHASE=observation\n")  # in the env file every name is ours
    assert _refused("PHASE").message.endswith("did you mean QUANTSHIFT_PHASE?")
    env.write_text("APCA_API_SECRET=x\n")
    assert _refused("APCA_API_SECRET").message.endswith("did you mean APCA_API_SECRET_KEY?")


def test_the_toml_files_keys_and_tables_are_checked(home: Path) -> None:
    toml = home / "config" / "equity.toml"
    toml.write_text('phse = "observation"\n')
    assert _refused("phse").message == f"unknown setting in {Path('config/equity.toml')}; " \
                                       "did you mean phase?"
    toml.write_text('phase = "observation"\n[risk]\nmax_exposur = 5\n')
    assert _refused("[risk] max_exposur").message.endswith("did you mean max_exposure?")
    toml.write_text("[trigger]\ndaily_los = 5\n")
    assert _refused("[trigger] daily_los").message.endswith("did you mean daily_loss?")
    toml.write_text("risk = 5\n")
    assert "expected a table" in _refused("[risk]").message
    toml.write_text('phase = "observation"\nshadow_mode = "paper"\n[risk]\nmax_exposure = 5\n'
                    "[trigger]\ndaily_loss = 7\n")
    s = load_settings()
    assert (s.risk_max_exposure, s.trigger_daily_loss, s.shadow_mode) == (5, 7, "paper")


def test_a_name_that_may_be_a_secret_is_never_shown(home: Path, monkeypatch) -> None:
    env = home / "bot.env"
    monkeypatch.setenv("QUANTSHIFT_ENV_FILE", str(env))
    secret = "Zq8wXk2pLm5vRt7y"
    for text in (f"{secret}\n", f"sk-{secret}=1\n", f"QUANTSHIFT_API_TOKN={secret}\n"):
        env.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings()
        assert secret not in str(info.value), text


def test_every_field_of_the_model_is_a_valid_name() -> None:
    # A field added later is known at once: the names come from the model itself.
    tables = toml_names()
    for field in Settings.model_fields:
        assert env_name(field) in env_names(), field
        assert field in tables[""], field
        for table in ("risk", "trigger"):
            if field.startswith(f"{table}_"):
                assert field.removeprefix(f"{table}_") in tables[table]


def test_every_quantshift_variable_the_project_uses_is_valid() -> None:
    name = re.compile(r"QUANTSHIFT_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_<])")  # not a prefix in prose
    files = [ROOT / ".env.example"] + [
        path for folder in ("quantshift", "scripts", "tests", "bench", "systemd", "config")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix in ("", ".py", ".sh", ".service", ".toml")]
    used = {n for path in files for n in name.findall(path.read_text())}
    misspelt_here = {"QUANTSHIFT_PHSE", "QUANTSHIFT_API_TOKN", "QUANTSHIFT_SHADOW_MODE",
                     "QUANTSHIFT_RISK_MAX_EXPOSUR"}  # the tests of misspelt names
    assert not used - env_names() - misspelt_here


@pytest.mark.parametrize(("where", "expected"), [
    ("environment", "QUANTSHIFT_PHSE: unknown setting; did you mean QUANTSHIFT_PHASE?"),
    ("env file", "QUANTSHIFT_PHSE: unknown setting in "),
    ("toml", "max_exposur: unknown setting in "),
])
@pytest.mark.parametrize("command", ["run", "config", "status", "safe-to-restart", "halt"])
def test_every_command_that_loads_settings_stops_with_78(tmp_path: Path, where: str,
                                                         expected: str, command: str) -> None:
    env = clean_env(tmp_path)
    if where == "environment":
        env["QUANTSHIFT_PHSE"] = "observation"
    elif where == "env file":
        env["QUANTSHIFT_ENV_FILE"] = str(tmp_path / "bot.env")
        (tmp_path / "bot.env").write_text("QUANTSHIFT_PHSE=observation\n")
    else:
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "equity.toml").write_text("[risk]\nmax_exposur = 5\n")
    proc = subprocess.run([quantshift_bin(), command], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
    assert proc.stderr.startswith("quantshift: invalid setting ")
    assert not (tmp_path / "var").exists()
