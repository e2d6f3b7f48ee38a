"""Every bad setting stops `quantshift run` the same way: exit 78, one line naming it.

From the environment, the env file and the TOML file alike; numbers must be finite and
in range, JSON must be JSON, files must be UTF-8 text, names must be settings.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import clean_env, quantshift_bin

NOT_UTF8 = b"QUANTSHIFT_PHASE=dry_run\n# caf\xe9 \xff\xfe\n"

# (where the value is: env / env file / toml, its text, the setting the line names,
# a phrase of the message)
CASES: list[tuple[str, str | bytes, str, str]] = [
    ("env", "QUANTSHIFT_STRATEGIES=[{\"name\": \"ma_cross\",", "QUANTSHIFT_STRATEGIES",
     "not valid JSON"),
    ("env", "QUANTSHIFT_PAPER_CASH=inf", "QUANTSHIFT_PAPER_CASH", "finite"),
    ("env", "QUANTSHIFT_PAPER_CASH=-inf", "QUANTSHIFT_PAPER_CASH", "finite"),
    ("env", "QUANTSHIFT_PAPER_CASH=1e309", "QUANTSHIFT_PAPER_CASH", "finite"),
    ("env", "QUANTSHIFT_PAPER_CASH=1e13", "QUANTSHIFT_PAPER_CASH", "less than or equal"),
    ("env", "QUANTSHIFT_SIM_INTERVAL=nan", "QUANTSHIFT_SIM_INTERVAL", "finite"),
    ("env", "QUANTSHIFT_RECONCILE_INTERVAL=inf", "QUANTSHIFT_RECONCILE_INTERVAL", "finite"),
    ("env", "QUANTSHIFT_SNAPSHOT_INTERVAL=1e309", "QUANTSHIFT_SNAPSHOT_INTERVAL", "finite"),
    ("env", "QUANTSHIFT_STALE_BARS=inf", "QUANTSHIFT_STALE_BARS", "finite"),
    ("env", "QUANTSHIFT_LATE_BARS=-1", "QUANTSHIFT_LATE_BARS", "greater than or equal"),
    ("env", "QUANTSHIFT_VERSIONS_FROM=file", "QUANTSHIFT_VERSIONS_FROM", "'journal' or"),
    ("env", "QUANTSHIFT_RISK_MAX_EXPOSURE=inf", "QUANTSHIFT_RISK_MAX_EXPOSURE", "finite"),
    ("env", "QUANTSHIFT_RISK_MAX_DAILY_LOSS=nan", "QUANTSHIFT_RISK_MAX_DAILY_LOSS", "finite"),
    ("env", "QUANTSHIFT_RISK_MAX_OPEN_POSITIONS=1e309", "QUANTSHIFT_RISK_MAX_OPEN_POSITIONS",
     "integer"),
    ("env", "QUANTSHIFT_RISK_LOSS_COOLDOWN_SECONDS=1e12", "QUANTSHIFT_RISK_LOSS_COOLDOWN_SECONDS",
     "less than or equal"),
    ("env", "QUANTSHIFT_TRIGGER_DAILY_LOSS=inf", "QUANTSHIFT_TRIGGER_DAILY_LOSS", "finite"),
    ("env", "QUANTSHIFT_TRIGGER_INTERVAL=-inf", "QUANTSHIFT_TRIGGER_INTERVAL", "finite"),
    ("env", "QUANTSHIFT_SIM_SEED=99999999999999999999999", "QUANTSHIFT_SIM_SEED",
     "less than or equal"),
    ("env", "SHADOW_MDD_TOLERANCE=inf", "SHADOW_MDD_TOLERANCE", "finite"),
    ("env", "QUANTSHIFT_PHSE=observation", "QUANTSHIFT_PHSE", "did you mean QUANTSHIFT_PHASE?"),
    ("env", "QUANTSHIFT_FEED=ccxt\nCCXT_EXCHANGE=binanse", "CCXT_EXCHANGE",
     "'binanse' is not an exchange of ccxt"),
    # The endpoint, not SHADOW_MODE, says where orders go (nothing is dialled to know it).
    ("env", "QUANTSHIFT_FEED=alpaca\nAPCA_API_KEY_ID=k\nAPCA_API_SECRET_KEY=s\n"
     "SHADOW_MODE=sandbox\nAPCA_API_BASE_URL=https://api.alpaca.markets",
     "QUANTSHIFT_LIVE_CONFIRM", "orders would go to api.alpaca.markets, a live endpoint"),
    ("env", "QUANTSHIFT_FEED=ccxt\nCCXT_EXCHANGE=binance\nSHADOW_MODE=sandbox\n"
     "CCXT_API_URL=http://192.0.2.2:8802", "QUANTSHIFT_LIVE_CONFIRM",
     "name 192.0.2.2 in QUANTSHIFT_ENDPOINT_IS_PAPER"),
    ("env", "QUANTSHIFT_FEED=alpaca\nAPCA_API_KEY_ID=k\nAPCA_API_SECRET_KEY=s\n"
     "SHADOW_MODE=live\nAPCA_API_BASE_URL=http://127.0.0.1:8801", "QUANTSHIFT_LIVE_CONFIRM",
     "orders to 127.0.0.1, paper/testnet: loopback"),
    ("env", "QUANTSHIFT_ENDPOINT_IS_PAPER=https://192.0.2.2", "QUANTSHIFT_ENDPOINT_IS_PAPER",
     "without scheme or port"),
    ("env file", "QUANTSHIFT_PAPER_CASH=nan", "QUANTSHIFT_PAPER_CASH", "finite"),
    ("env file", "QUANTSHIFT_STRATEGIES=[{bad", "QUANTSHIFT_STRATEGIES", "not valid JSON (in "),
    ("env file", "QUANTSHIFT_RISK_MAX_EXPOSUR=5", "QUANTSHIFT_RISK_MAX_EXPOSUR",
     "did you mean QUANTSHIFT_RISK_MAX_EXPOSURE?"),
    ("env file", NOT_UTF8, "bot.env", "not UTF-8"),
    ("toml", "paper_cash = inf", "QUANTSHIFT_PAPER_CASH", "finite"),
    ("toml", "sim_interval = 1e309", "QUANTSHIFT_SIM_INTERVAL", "finite"),
    ("toml", "[risk]\nmax_exposure = nan", "QUANTSHIFT_RISK_MAX_EXPOSURE", "finite"),
    ("toml", "[trigger]\ndaily_loss = -inf", "QUANTSHIFT_TRIGGER_DAILY_LOSS", "finite"),
    ("toml", "[risk]\nmax_exposur = 5", "[risk] max_exposur", "did you mean max_exposure?"),
    ("toml", 'phse = "observation"', "phse", "did you mean phase?"),
    ("toml", b'phase = "dry_run"\n# caf\xe9\n', "equity.toml", "not UTF-8"),
]


def _run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([quantshift_bin(), "run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=20)


def _assert_one_line(proc: subprocess.CompletedProcess[str], setting: str, phrase: str) -> None:
    assert proc.returncode == 78, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("quantshift: invalid setting "), lines[0]
    named, message = lines[0].removeprefix("quantshift: invalid setting ").split(": ", 1)
    assert named == setting or named.endswith(f"/{setting}"), lines[0]  # a file: its path
    assert phrase in message, lines[0]


@pytest.mark.process
@pytest.mark.parametrize(("where", "text", "setting", "phrase"), CASES,
                         ids=[f"{c[0]}:{c[2]}:{c[3][:12]}" for c in CASES])
def test_a_bad_setting_exits_78_with_one_line_naming_it(tmp_path: Path, where: str,
                                                        text: str | bytes, setting: str,
                                                        phrase: str) -> None:
    # Should a regression let the daemon start, its HTTP clients meet a closed local port,
    # never a real venue (the endpoint cases name Alpaca's live host).
    env = clean_env(tmp_path, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
                    NO_PROXY="")
    if where == "env":
        assert isinstance(text, str)
        env.update(line.split("=", 1) for line in text.splitlines())  # type: ignore[misc]
    elif where == "env file":
        env["QUANTSHIFT_ENV_FILE"] = str(tmp_path / "bot.env")
        data = text if isinstance(text, bytes) else (text + "\n").encode()
        (tmp_path / "bot.env").write_bytes(data)
    else:
        (tmp_path / "config").mkdir()
        data = text if isinstance(text, bytes) else (text + "\n").encode()
        (tmp_path / "config" / "equity.toml").write_bytes(data)
    proc = _run(tmp_path, env)
    _assert_one_line(proc, setting, phrase)
    assert not (tmp_path / "var").exists()  # refused before touching any state


@pytest.mark.process
def test_a_port_in_use_is_one_line_and_nothing_logged(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run(tmp_path, clean_env(tmp_path, QUANTSHIFT_HTTP_PORT=str(port)))
    _assert_one_line(proc, "QUANTSHIFT_HTTP_PORT", f"127.0.0.1:{port} is already in use")
    assert not list((tmp_path / "logs").glob("*.log"))  # refused before the logging began


@pytest.mark.process
def test_an_address_not_of_this_machine_is_one_line(tmp_path: Path) -> None:
    proc = _run(tmp_path, clean_env(tmp_path, QUANTSHIFT_HTTP_HOST="192.0.2.77",
                                    QUANTSHIFT_HTTP_PORT="8729"))
    _assert_one_line(proc, "QUANTSHIFT_HTTP_HOST", "cannot listen on 192.0.2.77:8729")
