"""Where orders go is decided by the endpoint, not by the label (SHADOW_MODE)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from quantshift.app import build_engine, make_venue, open_journal
from quantshift.config import check_startup
from quantshift.domain import ExecutorKind
from quantshift.endpoints import Why, classify, describe, executor_kind, host_of, is_loopback
from quantshift.errors import ConfigError
from quantshift.execution.broker import BrokerExecutor
from quantshift.settings import Settings
from tests.conftest import clean_env, quantshift_bin

LIVE, PAPER = ["api.alpaca.markets"], ["paper-api.alpaca.markets"]
SANDBOX = ExecutorKind.SANDBOX


@pytest.mark.parametrize(("url", "paper", "why"), [
    ("https://api.alpaca.markets", False, Why.LIVE_HOST),
    ("https://API.Alpaca.Markets./v2", False, Why.LIVE_HOST),
    ("https://paper-api.alpaca.markets", True, Why.PAPER_HOST),
    ("http://127.0.0.1:8801", True, Why.LOOPBACK),
    ("http://127.8.9.10", True, Why.LOOPBACK),
    ("http://[::1]:8801", True, Why.LOOPBACK),
    ("http://[::ffff:127.0.0.1]:8801", True, Why.LOOPBACK),
    ("http://localhost:8801", True, Why.LOOPBACK),
    ("http://192.0.2.2:8801", False, Why.UNKNOWN),  # another machine: it may forward anywhere
    ("https://alpaca-proxy.example", False, Why.UNKNOWN),
    ("http://localhost.example.com", False, Why.UNKNOWN),
    ("http://127.0.0.1.example.com", False, Why.UNKNOWN),
    ("http://0.0.0.0:8801", False, Why.UNKNOWN),
])
def test_the_host_decides(url: str, paper: bool, why: Why) -> None:
    endpoint = classify(url, LIVE, PAPER)
    assert (endpoint.paper, endpoint.why) == (paper, why)


def test_only_a_declared_unknown_host_becomes_paper() -> None:
    declared = ["192.0.2.2", "api.alpaca.markets"]
    assert classify("http://192.0.2.2:8801", LIVE, PAPER, declared).why is Why.DECLARED
    assert classify("http://192.0.2.3:8801", LIVE, PAPER, declared).why is Why.UNKNOWN
    # A venue's own live host stays live whatever the operator declares.
    assert not classify("https://api.alpaca.markets", LIVE, PAPER, declared).paper


def test_a_sandbox_at_a_live_endpoint_runs_live_and_live_stays_live() -> None:
    live, paper = classify("https://api.alpaca.markets", LIVE, PAPER), \
        classify("http://127.0.0.1:1", LIVE, PAPER)
    assert executor_kind(SANDBOX, live) is ExecutorKind.LIVE
    assert executor_kind(SANDBOX, paper) is SANDBOX
    assert executor_kind(ExecutorKind.LIVE, paper) is ExecutorKind.LIVE
    assert executor_kind(ExecutorKind.PAPER, None) is ExecutorKind.PAPER
    assert describe(SANDBOX, paper) == "paper/testnet: loopback"
    assert describe(ExecutorKind.LIVE, live) == "LIVE, real money: the venue's live host"
    assert "live executor" in describe(ExecutorKind.LIVE, paper)


def test_hosts_and_loopback_without_any_lookup() -> None:
    assert host_of("wss://Stream.Example.com:443/ws") == "stream.example.com"
    assert host_of("http://[::1") == ""
    assert not is_loopback("") and not is_loopback("example.com")


def _alpaca(**kw: Any) -> Settings:
    return Settings(feed="alpaca", apca_api_key_id="k", apca_api_secret_key="s", **kw)


def _ccxt(**kw: Any) -> Settings:
    return Settings(feed="ccxt", ccxt_exchange="binance", **kw)


@pytest.mark.parametrize(("settings", "kind", "host"), [
    (lambda: _alpaca(shadow_mode="sandbox"), SANDBOX, "paper-api.alpaca.markets"),
    (lambda: _alpaca(shadow_mode="live"), ExecutorKind.LIVE, "api.alpaca.markets"),
    (lambda: _alpaca(shadow_mode="sandbox", apca_api_base_url="https://api.alpaca.markets"),
     ExecutorKind.LIVE, "api.alpaca.markets"),
    (lambda: _alpaca(shadow_mode="sandbox", apca_api_base_url="http://192.0.2.2:8801"),
     ExecutorKind.LIVE, "192.0.2.2"),
    (lambda: _alpaca(shadow_mode="sandbox", apca_api_base_url="http://192.0.2.2:8801",
                     endpoint_is_paper="192.0.2.9, 192.0.2.2"), SANDBOX, "192.0.2.2"),
    (lambda: _ccxt(shadow_mode="sandbox"), SANDBOX, "testnet.binancefuture.com"),
    (lambda: _ccxt(shadow_mode="sandbox", ccxt_api_url="https://api.binance.com"),
     ExecutorKind.LIVE, "api.binance.com"),
    (lambda: _ccxt(shadow_mode="sandbox", ccxt_api_url="wss://fstream.binance.com"),
     ExecutorKind.LIVE, "fstream.binance.com"),  # a websocket host of urls['api'] too
    (lambda: _ccxt(shadow_mode="sandbox", ccxt_api_url="https://testnet.binance.vision"),
     SANDBOX, "testnet.binance.vision"),
    (lambda: _ccxt(shadow_mode="sandbox", ccxt_api_url="http://127.0.0.1:8802"),
     SANDBOX, "127.0.0.1"),
    (lambda: _ccxt(shadow_mode="sandbox", ccxt_api_url="https://ccxt-proxy.example"),
     ExecutorKind.LIVE, "ccxt-proxy.example"),
])
def test_the_executor_that_runs_is_the_classified_one(clean: Path, settings: Any,
                                                      kind: ExecutorKind, host: str) -> None:
    s = settings()
    assert s.executor is kind and s.endpoint() is not None and s.endpoint().host == host
    assert s.ledger_path().name == f"equity-{kind.value}.sqlite"  # live never in sandbox's


def test_an_unconfirmed_live_endpoint_is_refused_naming_it(clean: Path) -> None:
    with pytest.raises(ConfigError) as info:
        check_startup(_alpaca(shadow_mode="sandbox", apca_api_base_url="https://api.alpaca.markets"))
    assert info.value.setting == "QUANTSHIFT_LIVE_CONFIRM"
    assert "api.alpaca.markets, a live endpoint" in info.value.message
    with pytest.raises(ConfigError) as info:
        check_startup(_ccxt(shadow_mode="sandbox", ccxt_api_url="http://192.0.2.2:8802"))
    assert "192.0.2.2" in info.value.message
    assert "QUANTSHIFT_ENDPOINT_IS_PAPER" in info.value.message
    with pytest.raises(ConfigError) as info:  # live at a paper host still needs it
        check_startup(_alpaca(shadow_mode="live", apca_api_base_url="http://127.0.0.1:8801"))
    assert info.value.setting == "QUANTSHIFT_LIVE_CONFIRM" and "127.0.0.1" in info.value.message
    check_startup(_alpaca(shadow_mode="live", apca_api_base_url="http://127.0.0.1:8801",
                          live_confirm="equity"))
    check_startup(_ccxt(shadow_mode="sandbox", ccxt_api_url="http://192.0.2.2:8802",
                        endpoint_is_paper="192.0.2.2"))


def test_a_ccxt_sandbox_the_exchange_lacks_is_refused(clean: Path) -> None:
    with pytest.raises(ConfigError) as info:
        check_startup(Settings(feed="ccxt", ccxt_exchange="kraken", shadow_mode="sandbox"))
    assert info.value.setting == "SHADOW_MODE" and "no sandbox/testnet of kraken" in \
        info.value.message


@pytest.mark.parametrize("value", ["http://192.0.2.2", "192.0.2.2:8801", "a b"])
def test_the_declared_paper_hosts_are_hosts(clean: Path, value: str) -> None:
    with pytest.raises(ValueError, match="without scheme or port"):
        Settings(endpoint_is_paper=value)


def test_the_venue_and_the_start_up_line_follow_the_endpoint(clean: Path) -> None:
    # Confirmed: a "sandbox" at Alpaca's live host is built and announced as live.
    s = _alpaca(shadow_mode="sandbox", apca_api_base_url="https://api.alpaca.markets",
                live_confirm="equity", state_dir=clean / "var")
    venue = make_venue(s, SANDBOX)
    assert venue._paper is False  # type: ignore[attr-defined]
    journal = open_journal(s)
    try:
        async def commit() -> None:
            journal.flush()

        engine = build_engine(s, journal, executor=SANDBOX, durable=commit)
        executor = engine.executor
        assert isinstance(executor, BrokerExecutor) and executor.kind is ExecutorKind.LIVE
        assert executor.description == ("orders go to alpaca (LIVE, real money: the venue's "
                                         "live host) at https://api.alpaca.markets")
    finally:
        journal.close()
    loop = _ccxt(shadow_mode="sandbox", ccxt_api_url="http://127.0.0.1:8802")
    assert make_venue(loop, SANDBOX).endpoint_label == "paper/testnet: loopback"


@pytest.mark.process
def test_config_shows_where_orders_go(tmp_path: Path) -> None:
    env = clean_env(tmp_path, QUANTSHIFT_FEED="alpaca", APCA_API_KEY_ID="k",
                    APCA_API_SECRET_KEY="s", SHADOW_MODE="sandbox",
                    APCA_API_BASE_URL="http://127.0.0.1:8801")
    proc = subprocess.run([quantshift_bin(), "config"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "alpaca (paper/testnet: loopback) at http://127.0.0.1:8801" in proc.stdout
