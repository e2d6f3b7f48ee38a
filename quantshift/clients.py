"""Construction of the venues' SDK clients, shared by the feeds and the executors."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

# load_markets as one call on a binance-shaped API (spot only, no currency or margin calls).
_CCXT_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                "fetchMargins": False, "warnOnFetchOpenOrdersWithoutSymbol": False},
}


def replace_hosts(urls: Any, base: str) -> Any:
    """Every URL in a (nested) ccxt ``urls['api']`` dict, moved to ``base``'s scheme and host."""
    target = urlsplit(base)
    if isinstance(urls, dict):
        return {k: replace_hosts(v, base) for k, v in urls.items()}
    if isinstance(urls, str) and "://" in urls:
        parts = urlsplit(urls)
        return parts._replace(scheme=target.scheme, netloc=target.netloc).geturl()
    return urls


def ccxt_exchange(exchange_id: str, *, key: str | None = None, secret: str | None = None,
                  password: str | None = None, api_url: str | None = None,
                  sandbox: bool = False, timeout: float = 10.0) -> Any:
    """An async ccxt exchange; ``api_url`` replaces every API host (an emulator or a proxy)."""
    import ccxt.async_support as ccxt

    cls = getattr(ccxt, exchange_id, None)
    if cls is None:
        raise ValueError(f"ccxt has no exchange {exchange_id!r}")
    config: dict[str, Any] = {
        "enableRateLimit": api_url is None, "timeout": int(timeout * 1000),
        "options": dict(_CCXT_OPTIONS.get(exchange_id, {})),
    }
    if key:
        config["apiKey"] = key
    if secret:
        config["secret"] = secret
    if password:
        config["password"] = password
    exchange = cls(config)
    if api_url:
        moved = replace_hosts(exchange.urls["api"], api_url)
        exchange.urls["api"] = moved
        # set_sandbox_mode copies urls['test'] over urls['api']: keep both on the override.
        exchange.urls["test"] = moved
    if sandbox:
        exchange.set_sandbox_mode(True)
    return exchange
