"""Building the venues' SDK clients, pointed at the real endpoints or at an override.

Shared by the feeds and the broker adapters so that every client of a venue is built the
same way: same endpoints, same credentials handling, same timeouts.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr

from quantshift.domain import NS_PER_SECOND, Bar
from quantshift.errors import ConfigError

# Alpaca's own endpoints, used when no override is configured.
ALPACA_PAPER_URL = "https://paper-api.alpaca.markets"
ALPACA_LIVE_URL = "https://api.alpaca.markets"
ALPACA_DATA_URL = "https://data.alpaca.markets"
ALPACA_STREAM_URL = "wss://stream.data.alpaca.markets/v2/{feed}"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]+")


def reveal(value: SecretStr | str | None) -> str:
    """The plain text of a credential (empty when unset); never log the result."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def dt_to_ns(dt: datetime) -> int:
    """An aware datetime (naive = UTC) as integer nanoseconds since the epoch, exactly."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000


def ns_to_dt(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


# -- alpaca ---------------------------------------------------------------------------------
def from_alpaca(bar: Any) -> Bar:
    """An alpaca-py ``Bar`` model as our Bar (``ts`` = the bar's start, ns UTC)."""
    return Bar(bar.symbol, dt_to_ns(bar.timestamp), float(bar.open), float(bar.high),
               float(bar.low), float(bar.close), float(bar.volume))


def alpaca_stream_url(stream_url: str | None, data_feed: str) -> str:
    return stream_url or ALPACA_STREAM_URL.format(feed=data_feed)


def _api_root(url: str | None) -> str | None:
    """An override as alpaca-py wants it: without a trailing ``/v2`` (the SDK adds it)."""
    if not url:
        return None
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v2") else url


def alpaca_trading_client(key: str, secret: str, trading_url: str | None, paper: bool = True
                          ) -> Any:
    from alpaca.trading.client import TradingClient

    return TradingClient(key, secret, paper=paper, url_override=_api_root(trading_url))


def alpaca_data_client(key: str, secret: str, data_url: str | None) -> Any:
    from alpaca.data.historical import StockHistoricalDataClient

    return StockHistoricalDataClient(key, secret, url_override=_api_root(data_url))


def alpaca_timeframe(bar_seconds: float) -> Any:
    """The alpaca-py TimeFrame of a bar length (minutes, hours or a day).

    Alpaca itself has no second bars; a whole number of seconds below a minute becomes a
    ``<n>Sec`` timeframe that only a local emulator understands.
    """
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

    seconds = int(bar_seconds)
    if seconds != bar_seconds or seconds <= 0:
        raise ValueError(f"alpaca bars must be a whole number of seconds, got {bar_seconds}")
    if seconds == 86_400:
        return TimeFrame(1, TimeFrameUnit.Day)
    if seconds % 3_600 == 0 and seconds < 86_400:
        return TimeFrame(seconds // 3_600, TimeFrameUnit.Hour)
    if seconds % 60 == 0 and seconds < 3_600:
        return TimeFrame(seconds // 60, TimeFrameUnit.Minute)
    if seconds >= 60:
        raise ValueError(f"no alpaca timeframe for {bar_seconds} s bars")

    class SecondsTimeFrame(TimeFrame):
        def __init__(self, amount: int) -> None:  # TimeFrame's validation knows no seconds
            self.amount_value = amount
            self.unit_value = TimeFrameUnit.Minute

        @property
        def value(self) -> str:
            return f"{self.amount_value}Sec"

    return SecondsTimeFrame(seconds)


# -- ccxt -----------------------------------------------------------------------------------
def ccxt_timeframe(bar_seconds: float) -> str:
    """``1`` → ``"1s"``, ``60`` → ``"1m"``, ``300`` → ``"5m"``, ``3600`` → ``"1h"``,
    ``86400`` → ``"1d"``; a length that is not a whole number of one unit is refused."""
    seconds = int(bar_seconds)
    if seconds == bar_seconds and seconds > 0:
        if seconds == 86_400:
            return "1d"
        if seconds % 3_600 == 0 and seconds < 86_400:
            return f"{seconds // 3_600}h"
        if seconds % 60 == 0 and seconds < 3_600:
            return f"{seconds // 60}m"
        if seconds < 60:
            return f"{seconds}s"
    raise ValueError(f"no ccxt timeframe for {bar_seconds} s bars")


def rebase_url(url: str, base: str) -> str:
    """``url`` with its scheme and host replaced by ``base`` (a ws URL keeps a ws scheme)."""
    base = base.rstrip("/")
    if url.startswith(("ws://", "wss://")):
        base = re.sub(r"^http", "ws", base)
    return _ORIGIN.sub(lambda _m: base, url, count=1)


def rebase_urls(node: Any, base: str) -> Any:
    """A copy of a (nested) ``urls['api']`` value with every URL string rebased."""
    if isinstance(node, dict):
        return {k: rebase_urls(v, base) for k, v in node.items()}
    if isinstance(node, list):
        return [rebase_urls(v, base) for v in node]
    if isinstance(node, str) and _ORIGIN.match(node):
        return rebase_url(node, base)
    return node


# Keep binance's load_markets to one public call (no sapi/futures fan-out).
_EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                "fetchMargins": False, "defaultType": "spot",
                "warnOnFetchOpenOrdersWithoutSymbol": False},
    "binanceus": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                  "fetchMargins": False, "defaultType": "spot"},
}


def _ccxt_class(exchange_id: str, pro: bool) -> Any:
    """The ccxt.pro class of an exchange when ``pro`` and ccxt.pro has it (REST and
    websockets), else the async one."""
    import ccxt.async_support as ccxt_async

    if pro:
        try:
            import ccxt.pro as ccxt_pro
        except ImportError:  # a ccxt without its websocket half
            ccxt_pro = None
        cls = getattr(ccxt_pro, exchange_id, None)
        if isinstance(cls, type):
            return cls
    cls = getattr(ccxt_async, exchange_id, None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"unknown ccxt exchange {exchange_id!r}")
    return cls


@dataclass(frozen=True, slots=True)
class CcxtHosts:
    """An exchange's own endpoints as ccxt knows them: ``urls['api']`` (live) and
    ``urls['test']`` (its sandbox/testnet, which ``set_sandbox_mode`` switches to)."""

    live: frozenset[str] = frozenset()
    paper: frozenset[str] = frozenset()
    live_url: str | None = None  # the first REST URL of each, as the venue shows it
    paper_url: str | None = None


def _urls(node: Any, hostname: str) -> list[str]:
    if isinstance(node, dict):
        return [u for v in node.values() for u in _urls(v, hostname)]
    if isinstance(node, list):
        return [u for v in node for u in _urls(v, hostname)]
    if isinstance(node, str) and _ORIGIN.match(node):
        return [node.replace("{hostname}", hostname)]  # bybit, okx: 'https://api.{hostname}'
    return []


@functools.cache
def ccxt_hosts(exchange_id: str) -> CcxtHosts:
    """The hosts of an exchange (websockets included), read from ccxt without a network
    call; empty for an exchange ccxt does not have (check_startup refuses it)."""
    from urllib.parse import urlsplit

    try:
        exchange = _ccxt_class(exchange_id, pro=True)({})
    except (ValueError, TypeError):
        return CcxtHosts()
    hostname = str(getattr(exchange, "hostname", "") or "")
    api = _urls(exchange.urls.get("api"), hostname)
    test = _urls(exchange.urls.get("test"), hostname)

    def hosts(urls: list[str]) -> frozenset[str]:
        return frozenset(h.lower() for h in (urlsplit(u).hostname for u in urls) if h)

    def first_rest(urls: list[str]) -> str | None:
        return next((u for u in urls if u.startswith("http")), None)

    return CcxtHosts(hosts(api), hosts(test), first_rest(api), first_rest(test))


def ccxt_streams(exchange: Any, mode: str, feature: str) -> bool:
    """Whether to use the exchange's ``feature`` websocket (``watchOHLCV``, ``watchOrders``)
    under ``CCXT_WEBSOCKET`` ``mode``: ``auto`` where ccxt offers it, ``on`` or a
    ConfigError naming the setting, ``off`` never."""
    offered = bool((getattr(exchange, "has", None) or {}).get(feature))
    if mode == "on" and not offered:
        raise ConfigError("CCXT_WEBSOCKET", f"{exchange.id} offers no {feature} websocket "
                                            "through ccxt; use auto or off to poll instead")
    return offered and mode != "off"


def ccxt_exchange(exchange_id: str, key: str = "", secret: str = "", password: str = "",
                  api_url: str | None = None, sandbox: bool = False, timeout: float = 10.0,
                  options: dict[str, Any] | None = None, pro: bool = False) -> Any:
    """An async ccxt exchange (ccxt.pro's where ``pro`` and it has one); ``api_url``
    replaces every API host, websockets included (an emulator, a proxy)."""
    cls = _ccxt_class(exchange_id, pro)
    config: dict[str, Any] = {
        # The client-side limiter only slows a local emulator down; keep it for real venues.
        "enableRateLimit": not api_url,
        "timeout": int(timeout * 1000),
        "options": {**_EXCHANGE_OPTIONS.get(exchange_id, {}), **(options or {})},
    }
    if key:
        config["apiKey"] = key
    if secret:
        config["secret"] = secret
    if password:
        config["password"] = password
    exchange = cls(config)
    if api_url:
        urls = exchange.urls
        api = rebase_urls(urls.get("api"), api_url)
        urls["api"] = api
        if "test" in urls:
            test = rebase_urls(urls["test"], api_url)
            # set_sandbox_mode copies 'test' over 'api': the sandbox path must land here too.
            if isinstance(api, dict) and isinstance(test, dict):
                test = {**api, **test}
            urls["test"] = test
        elif sandbox:
            urls["test"] = api
    if sandbox:
        exchange.set_sandbox_mode(True)
    return exchange
