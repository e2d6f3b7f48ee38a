"""Settings: precedence, phases and executors, and a clear exit 78 for every bad value."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from quantshift.config import check_startup, load_settings, load_with_sources
from quantshift.domain import ExecutorKind, Phase
from quantshift.errors import ConfigError
from tests.conftest import clean_env, quantshift_bin


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(__import__("os").environ):
        if key.startswith(("QUANTSHIFT_", "SHADOW_MODE", "APCA_", "CCXT_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    return tmp_path


def test_precedence_defaults_toml_dotenv_environment(home: Path, monkeypatch) -> None:
    (home / "config" / "equity.toml").write_text(
        'phase = "observation"\nsymbols = ["T1", "T2"]\npaper_cash = 5000\n'
        'sizing = "fixed:3"\n[risk]\nmax_trades_per_day = 7\n')
    (home / ".env").write_text("QUANTSHIFT_SYMBOLS=E1\nQUANTSHIFT_PAPER_CASH=6000\n")
    monkeypatch.setenv("QUANTSHIFT_PAPER_CASH", "7000")
    settings, sources = load_with_sources()
    assert settings.phase is Phase.OBSERVATION and sources["phase"].endswith("equity.toml")
    assert settings.symbols == ["E1"] and sources["symbols"] == ".env"
    assert settings.paper_cash == 7000 and sources["paper_cash"] == "environment"
    assert settings.risk_max_trades_per_day == 7
    assert str(settings.sizing) == "fixed:3"
    assert settings.log_dir == Path("logs") and sources["log_dir"] == "default"


def test_bot_selects_its_own_toml(home: Path, monkeypatch) -> None:
    (home / "config" / "crypto.toml").write_text('symbols = ["BTC/USDT"]\n')
    monkeypatch.setenv("QUANTSHIFT_BOT", "crypto")
    s = load_settings()
    assert s.bot == "crypto" and s.symbols == ["BTC/USDT"]
    assert s.ledger_path() == Path("var/crypto-paper.sqlite")
    assert load_settings(bot="equity").symbols != ["BTC/USDT"]


@pytest.mark.parametrize(("phase", "shadow", "expected"), [
    ("observation", None, ExecutorKind.LOG_ONLY), ("0", None, ExecutorKind.LOG_ONLY),
    ("dry_run", None, ExecutorKind.PAPER), ("1", None, ExecutorKind.PAPER),
    ("micro_capital", None, ExecutorKind.LIVE), ("2", None, ExecutorKind.LIVE),
    ("production", None, ExecutorKind.LIVE), ("3", None, ExecutorKind.LIVE),
    ("production", "true", ExecutorKind.LOG_ONLY),
    ("production", "log_only", ExecutorKind.LOG_ONLY),
    ("production", "paper", ExecutorKind.PAPER), ("observation", "paper", ExecutorKind.PAPER),
    ("dry_run", "sandbox", ExecutorKind.SANDBOX), ("observation", "live", ExecutorKind.LIVE),
    ("dry_run", "false", ExecutorKind.PAPER), ("micro_capital", "TRUE", ExecutorKind.LOG_ONLY),
])
def test_every_phase_and_shadow_mode_selects_the_documented_executor(
        home: Path, monkeypatch, phase: str, shadow: str | None, expected: ExecutorKind) -> None:
    monkeypatch.setenv("QUANTSHIFT_PHASE", phase)
    if shadow is not None:
        monkeypatch.setenv("SHADOW_MODE", shadow)
    assert load_settings().executor is expected


@pytest.mark.parametrize(("env", "setting", "allowed"), [
    ({"QUANTSHIFT_PHASE": "prod"}, "QUANTSHIFT_PHASE", "observation|dry_run"),
    ({"SHADOW_MODE": "maybe"}, "SHADOW_MODE", "log_only|paper|sandbox|live"),
    ({"QUANTSHIFT_FEED": "bloomberg"}, "QUANTSHIFT_FEED", "sim"),
    ({"QUANTSHIFT_SIZING": "half"}, "QUANTSHIFT_SIZING", "fixed:QTY"),
    ({"QUANTSHIFT_SIZING": "fraction:1.5"}, "QUANTSHIFT_SIZING", "0 < F <= 1"),
    ({"QUANTSHIFT_PAPER_FILL": "mid"}, "QUANTSHIFT_PAPER_FILL", "close"),
    ({"QUANTSHIFT_PAPER_CASH": "-5"}, "QUANTSHIFT_PAPER_CASH", "greater than 0"),
    ({"QUANTSHIFT_SYMBOLS": ""}, "QUANTSHIFT_SYMBOLS", "at least one symbol"),
    ({"QUANTSHIFT_SIM_INTERVAL": "fast"}, "QUANTSHIFT_SIM_INTERVAL", "number"),
    ({"QUANTSHIFT_BOT": "Equity Bot"}, "QUANTSHIFT_BOT", "lower-case"),
    ({"QUANTSHIFT_STRATEGIES": '[{"name":"nope"}]'}, "QUANTSHIFT_STRATEGIES[0]", "ma_cross"),
    ({"QUANTSHIFT_STRATEGIES": '[{"name":"ma_cross","params":{"fast":50,"slow":10}}]'},
     "QUANTSHIFT_STRATEGIES[0]", "fast (50) must be below slow (10)"),
    ({"QUANTSHIFT_STRATEGIES": '[{"name":"ma_cross","params":{"speed":1}}]'},
     "QUANTSHIFT_STRATEGIES[0]", "allowed: ma, fast, slow, mode"),
    ({"QUANTSHIFT_LOG_JSON": "perhaps"}, "QUANTSHIFT_LOG_JSON", "bool"),
    ({"QUANTSHIFT_ROLE": "leader"}, "QUANTSHIFT_ROLE", "'auto', 'primary' or 'standby'"),
    ({"QUANTSHIFT_LEASE_TTL": "0.2"}, "QUANTSHIFT_LEASE_TTL", "greater than or equal to 1"),
])
def test_invalid_settings_exit_78_with_one_line(tmp_path: Path, env: dict, setting: str,
                                                allowed: str) -> None:
    for cmd in ("run", "config"):
        proc = subprocess.run([quantshift_bin(), cmd], env=clean_env(tmp_path, **env),
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 78, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert setting in lines[0] and allowed in lines[0]
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"SHADOW_MODE": "live"}, "QUANTSHIFT_LIVE_CONFIRM"),
    ({"QUANTSHIFT_PHASE": "production"}, "QUANTSHIFT_LIVE_CONFIRM"),
    ({"QUANTSHIFT_PHASE": "micro_capital", "QUANTSHIFT_LIVE_CONFIRM": "crypto"},
     "QUANTSHIFT_LIVE_CONFIRM"),  # confirmation for another bot is no confirmation
    ({"SHADOW_MODE": "live", "QUANTSHIFT_LIVE_CONFIRM": "equity"}, "no broker configured"),
    ({"SHADOW_MODE": "sandbox"}, "no broker configured"),
    ({"QUANTSHIFT_FEED": "alpaca"}, "APCA_API_KEY_ID"),
    ({"QUANTSHIFT_FEED": "alpaca", "APCA_API_KEY_ID": "k"}, "APCA_API_SECRET_KEY"),
    ({"QUANTSHIFT_FEED": "ccxt"}, "CCXT_EXCHANGE"),
    ({"QUANTSHIFT_FEED": "ccxt", "CCXT_EXCHANGE": "binance", "CCXT_API_URL": "localhost"},
     "CCXT_API_URL"),
    ({"QUANTSHIFT_FEED": "replay"}, "QUANTSHIFT_REPLAY_FILE"),
    ({"QUANTSHIFT_ROLE": "standby"}, "QUANTSHIFT_ROLE"),  # a lease needs Redis
])
def test_unavailable_or_unconfirmed_executors_refuse_to_start(tmp_path: Path, env: dict,
                                                              message: str) -> None:
    proc = subprocess.run([quantshift_bin(), "run"], env=clean_env(tmp_path, **env),
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert len(proc.stderr.strip().splitlines()) == 1
    assert message in proc.stderr
    assert not (tmp_path / "var").exists()  # refused before touching any state


def test_config_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    secret = "unit-test-secret-value-9f2c"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "equity.toml").write_text('phase = "observation"\n')
    env = clean_env(tmp_path, APCA_API_SECRET_KEY=secret, QUANTSHIFT_SYMBOLS="X,Y")
    proc = subprocess.run([quantshift_bin(), "config"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["APCA_API_SECRET_KEY"][1] == "********"
    assert rows["QUANTSHIFT_SYMBOLS"][1:] == ["X,Y", "environment"]
    assert rows["QUANTSHIFT_PHASE"][1] == "observation"
    assert rows["QUANTSHIFT_PHASE"][2].endswith("equity.toml")
    assert rows["executor"][1] == "log_only"
    js = subprocess.run([quantshift_bin(), "config", "--json"], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=30)
    data = orjson.loads(js.stdout)
    assert data["settings"]["APCA_API_SECRET_KEY"]["value"] == "********"
    assert secret not in js.stdout


def test_check_startup_in_process(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHADOW_MODE", "live")
    with pytest.raises(ConfigError) as err:
        check_startup(load_settings())
    assert err.value.setting == "QUANTSHIFT_LIVE_CONFIRM"
    monkeypatch.setenv("SHADOW_MODE", "paper")
    check_startup(load_settings())  # no error


@pytest.mark.parametrize("setting", ["QUANTSHIFT_STATE_DIR", "QUANTSHIFT_LOG_DIR"])
def test_unwritable_directories_exit_78(tmp_path: Path, setting: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = clean_env(tmp_path, **{setting: str(blocker / "sub")})
    proc = subprocess.run([quantshift_bin(), "run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert proc.stderr.count("\n") == 1 and setting in proc.stderr
    assert "not a writable directory" in proc.stderr
